/**
 * The "GPUs" left sidebar: a header (connection, summary, refresh) over six sections, each
 * rendered by its own module: cluster, this Lab's kernels, jobs, the queue, the user's fair
 * share and their usage of the last week. The widget re-renders a section when its signature changes, counts badges down each
 * second, and hands button clicks back to the model.
 */
import type { CommandRegistry } from '@lumino/commands';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { h } from '../dom';
import { gpuIcon } from '../icons';
import { refreshBadges } from '../idle';
import { DLInfraModel } from '../model';
import { renderCluster } from './cluster';
import { ClusterListView, LARGE_CLUSTER } from './clusterList';
import { IRendered, tickEstimates } from './common';
import { renderFairShare } from './fairshare';
import { onJobButton, renderJobs, tickJobs } from './jobs';
import { onKeep, onParkButton, onRelease, renderMine } from './mine';
import { onQueueMore, renderQueue } from './queue';
import { renderUsage } from './usage';

export { MAX_JOBS_SHOWN } from './jobs';

export const SIDEBAR_ID = 'dlinfra-sidebar';

type SectionKey = 'cluster' | 'mine' | 'jobs' | 'queue' | 'fairshare' | 'usage';

export class DLInfraSidebar extends Widget {
  /**
   * @param commands - runs the job commands (log, outputs, cancel, re-run); without it the
   *   Jobs section offers Cancel and Re-run only.
   */
  constructor(model: DLInfraModel, commands: CommandRegistry | null = null) {
    super();
    this.model = model;
    this._commands = commands;
    this.id = SIDEBAR_ID;
    this.addClass('jp-DLInfra-sidebar');
    this.title.icon = gpuIcon;
    this.title.caption = 'GPUs';
    this.node.setAttribute('role', 'region');
    this.node.setAttribute('aria-label', 'GPUs');

    this._status = h('span', { class: 'jp-DLInfra-connection', role: 'status' });
    this._summary = h('span', { class: 'jp-DLInfra-summary' });
    const refresh = h(
      'button',
      {
        type: 'button',
        class: 'jp-DLInfra-refresh jp-Button jp-mod-minimal',
        title: 'Refresh now',
        'aria-label': 'Refresh the GPU view now'
      },
      '↻'
    );
    refresh.addEventListener('click', () => {
      void this.model.refresh();
      void this.model.refreshJobs();
    });
    this._error = h('div', { class: 'jp-DLInfra-error', role: 'alert', hidden: true });
    this.node.append(
      h(
        'header',
        { class: 'jp-DLInfra-header' },
        h(
          'div',
          { class: 'jp-DLInfra-headerRow' },
          h('h2', { class: 'jp-DLInfra-title' }, 'GPUs'),
          this._status,
          refresh
        ),
        this._summary
      ),
      this._error
    );
    this._sections = {
      cluster: this._section('cluster', 'Cluster', {}),
      mine: this._section('mine', 'My kernels', {}),
      jobs: this._section('jobs', 'Jobs', {}, 'jp-DLInfra-jobs'),
      queue: this._section('queue', 'Queue', { 'aria-live': 'polite', 'aria-relevant': 'all' }),
      fairshare: this._section('fairshare', 'Your fair share', {}, 'jp-DLInfra-fairShareSection'),
      usage: this._section('usage', 'My usage · 7 days', {})
    };
    this.node.addEventListener('click', this._onClick);
    model.changed.connect(this._render, this);
    model.jobsChanged.connect(this._render, this);
    model.fairShareChanged.connect(this._render, this);
    model.parts.usage.changed.connect(this._render, this);
  }

  readonly model: DLInfraModel;

  /** Show the link to the admin console (admins), which runs ``open``. */
  showConsoleLink(open: () => void): void {
    if (this.node.querySelector('.jp-DLInfra-consoleLink')) {
      return;
    }
    const link = h(
      'button',
      {
        type: 'button',
        class: 'jp-DLInfra-consoleLink jp-Button jp-mod-minimal',
        title: "Everyone's usage, charts, and the reclaim and scheduling policies"
      },
      'Admin console'
    );
    link.addEventListener('click', open);
    this._summary.after(link);
  }

  /** The compact view: one line per GPU, no sparklines. */
  get compact(): boolean {
    return this.hasClass('jp-mod-compact');
  }
  set compact(value: boolean) {
    this.toggleClass('jp-mod-compact', value);
    this._signatures = {};
    this._render();
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this.model.changed.disconnect(this._render, this);
    this.model.jobsChanged.disconnect(this._render, this);
    this.model.fairShareChanged.disconnect(this._render, this);
    this.model.parts.usage.changed.disconnect(this._render, this);
    this.node.removeEventListener('click', this._onClick);
    this._stopTicking();
    super.dispose();
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    this._render();
  }

  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    this._stopTicking();
  }

  /**
   * Count the idle badges down, running jobs' durations up and estimated starts down, each
   * second while shown.
   */
  private _tickBadges(): void {
    const { ledger, jobs } = this.model.parts;
    const shown = this.isVisible
      ? refreshBadges(this._sections.mine, id => ledger.idleOf(id)) +
        tickJobs(jobs, this._sections.jobs) +
        tickEstimates(this.node)
      : 0;
    if (shown > 0 && this._ticker === null) {
      this._ticker = window.setInterval(() => this._tickBadges(), 1000);
    } else if (shown === 0) {
      this._stopTicking();
    }
  }

  private _stopTicking(): void {
    if (this._ticker !== null) {
      clearInterval(this._ticker);
      this._ticker = null;
    }
  }

  private _section(
    key: SectionKey,
    heading: string,
    attrs: Record<string, string>,
    extraClass = ''
  ): HTMLElement {
    const headingId = `dlinfra-${key}-heading`;
    const body = h('div', { class: 'jp-DLInfra-sectionBody', ...attrs });
    this.node.append(
      h(
        'section',
        {
          class: `jp-DLInfra-section jp-DLInfra-section-${key}${extraClass ? ` ${extraClass}` : ''}`,
          'aria-labelledby': headingId
        },
        h('h3', { id: headingId, class: 'jp-DLInfra-sectionHeading' }, heading),
        body
      )
    );
    return body;
  }

  private _render(): void {
    if (!this.isVisible && this._rendered) {
      return;
    }
    this._rendered = true;
    const model = this.model;
    const cluster = model.cluster;

    this._status.textContent =
      model.mode === 'stream' ? 'live' : model.mode === 'polling' ? `every ${model.refreshInterval} s` : '…';
    this._status.title =
      model.mode === 'stream'
        ? 'Following the live event stream'
        : model.mode === 'polling'
          ? `The live stream is not available: polling the REST API every ${model.refreshInterval} s`
          : 'Connecting';
    this._status.dataset.mode = model.mode;
    this._summary.textContent = cluster
      ? `${cluster.free_count} of ${cluster.gpu_count} free · ${cluster.queue_length} waiting`
      : '';
    this._error.hidden = !model.error;
    this._error.textContent = model.error ? `Cannot read the GPU ledger: ${model.error}` : '';

    const { ledger, jobs, fairShare, usage } = model.parts;
    if (cluster && cluster.gpu_count > LARGE_CLUSTER) {
      // a large cluster: one lasting view, updated in place (see clusterList.ts)
      if (this._signatures.cluster !== 'large') {
        this._signatures.cluster = 'large';
        this._sections.cluster.replaceChildren(this._clusterList.node);
      }
      const me = model.parts.admin.me?.user ?? fairShare.standing?.user ?? null;
      this._clusterList.update(cluster, ledger, me);
    } else {
      this._update('cluster', () => renderCluster(ledger, jobs, this.compact));
    }
    this._update('mine', () => renderMine(ledger));
    this._update('jobs', () => renderJobs(jobs, ledger, !!this._commands));
    this._update('queue', () => renderQueue(ledger, jobs));
    this._update('fairshare', () => renderFairShare(fairShare));
    this._update('usage', () => renderUsage(usage));
    this._tickBadges();
  }

  /** Replace a section's content when what it shows changed, keeping keyboard focus. */
  private _update(key: SectionKey, render: () => IRendered): void {
    const { signature, nodes } = render();
    if (this._signatures[key] === signature) {
      return;
    }
    this._signatures[key] = signature;
    const body = this._sections[key];
    const active = document.activeElement as HTMLElement | null;
    const focusKey = active && body.contains(active) ? active.dataset.focusKey : undefined;
    body.replaceChildren(...nodes);
    if (focusKey) {
      body.querySelector<HTMLElement>(`[data-focus-key="${focusKey}"]`)?.focus();
    }
  }

  private _onClick = (event: MouseEvent): void => {
    const target = event.target as HTMLElement;
    const { ledger, jobs } = this.model.parts;
    const jobButton = target.closest<HTMLButtonElement>('.jp-DLInfra-jobButton');
    if (jobButton && this.node.contains(jobButton)) {
      onJobButton(jobs, this._commands, jobButton);
      return;
    }
    const keep = target.closest<HTMLButtonElement>('.jp-DLInfra-keep');
    if (keep && this.node.contains(keep)) {
      onKeep(ledger, keep);
      return;
    }
    const park = target.closest<HTMLButtonElement>('.jp-DLInfra-parkButton');
    if (park && this.node.contains(park)) {
      onParkButton(ledger, park);
      return;
    }
    const release = target.closest<HTMLElement>('.jp-DLInfra-release');
    if (release && this.node.contains(release)) {
      onRelease(ledger, release);
      return;
    }
    const more = target.closest<HTMLButtonElement>('.jp-DLInfra-queueMore');
    if (more && this.node.contains(more)) {
      onQueueMore(ledger, more);
      return;
    }
    if (target.closest('.jp-DLInfra-queueFewer')) {
      ledger.showLessQueue();
    }
  };

  private _commands: CommandRegistry | null;
  private _status: HTMLElement;
  private _summary: HTMLElement;
  private _error: HTMLElement;
  private _sections: Record<SectionKey, HTMLElement>;
  private _signatures: Partial<Record<SectionKey, string>> = {};
  private _rendered = false;
  private _ticker: number | null = null;
  private _clusterList = new ClusterListView();
}
