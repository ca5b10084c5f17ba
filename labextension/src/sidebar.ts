/**
 * The "GPUs" left sidebar: cluster, this Lab's kernels and the queue. It renders the model
 * (on `model.changed`) and hands button clicks back to it.
 */
import { showErrorMessage } from '@jupyterlab/apputils';
import type { CommandRegistry } from '@lumino/commands';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import {
  Allocation,
  ClusterGpu,
  FairShare,
  isActiveJob,
  isJudged,
  Job,
  jobIdOfKernel,
  OutsideLedger,
  Standing
} from './api';
import { basename, clock, duration, gib, gpus, h, meter, pct, sparkline, startsIn } from './dom';
import { gpuIcon } from './icons';
import { idleBadge, refreshBadges } from './idle';
import { JobCommandIDs, jobDurationText } from './jobs';
import { DLInfraModel, IMyAllocation } from './model';

export const SIDEBAR_ID = 'dlinfra-sidebar';

/** The most jobs the Jobs section lists (active ones are always listed). */
export const MAX_JOBS_SHOWN = 20;

type SectionKey = 'cluster' | 'mine' | 'jobs' | 'queue' | 'fairshare';

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
      fairshare: this._section('fairshare', 'Your fair share', {}, 'jp-DLInfra-fairShareSection')
    };
    this.node.addEventListener('click', this._onClick);
    model.changed.connect(this._render, this);
    model.jobsChanged.connect(this._render, this);
    model.fairShareChanged.connect(this._render, this);
  }

  readonly model: DLInfraModel;

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
    const shown = this.isVisible
      ? refreshBadges(this._sections.mine, id => this.model.idleOf(id)) +
        this._tickJobs() +
        this._tickEstimates()
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

  /** Refresh the durations of running jobs; returns how many there are. */
  private _tickJobs(): number {
    const live = this._sections.jobs.querySelectorAll<HTMLElement>(
      '.jp-DLInfra-jobDuration[data-live]'
    );
    const now = Date.now();
    live.forEach(el => {
      const job = this.model.jobById(Number(el.dataset.jobId));
      if (job) {
        const text = jobDurationText(this.model, job, now);
        if (el.textContent !== text) {
          el.textContent = text;
        }
      }
    });
    return live.length;
  }

  /** Refresh the "starts in ~N min" of queued requests; returns how many there are. */
  private _tickEstimates(): number {
    const shown = this.node.querySelectorAll<HTMLElement>(
      '.jp-DLInfra-estimatedStart[data-estimated-start]'
    );
    const now = Date.now();
    shown.forEach(el => {
      const text = startsIn(el.dataset.estimatedStart, now);
      if (el.textContent !== text) {
        el.textContent = text;
      }
    });
    return shown.length;
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

  /* ---------------------------------------------------------------- rendering */

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

    this._update('cluster', () => this._renderCluster());
    this._update('mine', () => this._renderMine());
    this._update('jobs', () => this._renderJobs());
    this._update('queue', () => this._renderQueue());
    this._update('fairshare', () => this._renderFairShare());
    this._tickBadges();
  }

  /** Replace a section's content when what it shows changed, keeping keyboard focus. */
  private _update(key: SectionKey, render: () => { signature: string; nodes: Node[] }): void {
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

  private _renderCluster(): { signature: string; nodes: Node[] } {
    const cluster = this.model.cluster;
    if (!cluster) {
      return {
        signature: 'loading',
        nodes: [h('p', { class: 'jp-DLInfra-empty' }, this.model.error ? 'No data.' : 'Loading…')]
      };
    }
    const nodes: Node[] = [];
    if (cluster.simulated || cluster.provider.simulated) {
      nodes.push(
        h(
          'p',
          { class: 'jp-DLInfra-simulatedNote' },
          h('span', { class: 'jp-DLInfra-simulatedBadge' }, 'simulated'),
          ' These GPUs are simulated, not real hardware.'
        )
      );
    }
    if (cluster.gpu_count === 0) {
      nodes.push(
        h(
          'p',
          { class: 'jp-DLInfra-empty jp-DLInfra-providerReason' },
          `No GPUs (provider ${cluster.provider.name}): ${cluster.provider.reason}`
        )
      );
    }
    const history: Record<string, number[]> = {};
    for (const node of cluster.nodes) {
      nodes.push(
        h(
          'div',
          { class: 'jp-DLInfra-node', 'data-node': node.name },
          h(
            'h4',
            { class: 'jp-DLInfra-nodeHeading' },
            node.name,
            h(
              'span',
              { class: 'jp-DLInfra-nodeCount' },
              ` ${node.gpus.filter(g => !g.holder).length} of ${node.gpus.length} free`
            )
          ),
          h(
            'div',
            { class: 'jp-DLInfra-gpuGrid' },
            node.gpus.map(gpu => {
              history[gpu.uuid] = this.model.history(gpu.uuid);
              return this._gpuCard(gpu);
            })
          )
        )
      );
    }
    const running = [...this.model.runningKernelIds()].sort();
    const idle = cluster.nodes.flatMap(n =>
      n.gpus.map(g => {
        const state = g.holder ? this.model.idleOf(g.holder.kernel_id) : null;
        return isJudged(state) ? [state.state, state.reclaim_at] : null;
      })
    );
    const marks = cluster.nodes.flatMap(n =>
      n.gpus.map(g => {
        const a = g.holder ? this.model.allocationById(g.holder.allocation_id) : null;
        return a ? [a.borrowed ?? false, a.preempted_for ?? null] : null;
      })
    );
    const holderNames = cluster.nodes.flatMap(n =>
      n.gpus.map(g => (g.holder ? this._holderName(g.holder.kernel_id) : null))
    );
    return { signature: JSON.stringify([cluster, history, running, idle, marks, holderNames]), nodes };
  }

  private _gpuCard(gpu: ClusterGpu): HTMLElement {
    const holder = gpu.holder;
    let holderText = 'free';
    if (holder) {
      holderText = `${holder.user} · ${this._holderName(holder.kernel_id, holder.path, holder.kernel_name)}`;
    }
    const outside = holder ? null : gpu.outside_ledger ?? null;
    const memPercent =
      typeof gpu.memory_used_bytes === 'number' && gpu.memory_total_bytes > 0
        ? (100 * gpu.memory_used_bytes) / gpu.memory_total_bytes
        : null;
    const mine = holder ? this.model.runningKernelIds().has(holder.kernel_id) : false;
    const idle = holder ? this.model.idleOf(holder.kernel_id) : null;
    const idleState = isJudged(idle) && idle.state !== 'active' ? idle.state : null;
    const values = this.model.history(gpu.uuid);
    const grant = holder ? this.model.allocationById(holder.allocation_id) : null;
    const marks = schedBadges(grant);
    const label = `GPU ${gpu.index}, ${gpu.model}${gpu.simulated ? ', simulated' : ''}, ${
      holder ? `held by ${holderText}` : 'free'
    }${outside ? `, ${outsideText(outside)}` : ''}, utilisation ${pct(gpu.utilization_percent)}${
      idleState === 'warned' ? ', idle: about to be reclaimed' : idleState === 'idle' ? ', idle' : ''
    }${marks.map(m => `, ${m.textContent}`).join('')}`;
    let idleMark: HTMLElement | null = null;
    if (idleState === 'warned' && isJudged(idle)) {
      idleMark = h(
        'span',
        {
          class: 'jp-DLInfra-gpuIdleMark',
          title: idle.reclaim_at
            ? `Idle: its GPUs will be reclaimed at ${clock(idle.reclaim_at)}`
            : 'Idle: its owner was warned'
        },
        'idle'
      );
    }
    return h(
      'div',
      {
        class: `jp-DLInfra-gpuCard ${holder ? 'jp-mod-held' : 'jp-mod-free'}${mine ? ' jp-mod-mine' : ''}${
          idleState === 'warned' ? ' jp-mod-idleWarned' : idleState === 'idle' ? ' jp-mod-idle' : ''
        }${outside ? ' jp-mod-outsideLedger' : ''}`,
        'data-uuid': gpu.uuid,
        'data-index': gpu.index,
        'data-idle-state': idleState,
        role: 'group',
        'aria-label': label,
        title: gpu.uuid
      },
      h(
        'div',
        { class: 'jp-DLInfra-gpuHeader' },
        h('span', { class: 'jp-DLInfra-gpuIndex' }, `GPU ${gpu.index}`),
        h('span', { class: 'jp-DLInfra-gpuModel', title: gpu.model }, gpu.model),
        idleMark,
        gpu.simulated
          ? h(
              'span',
              { class: 'jp-DLInfra-simulatedBadge', title: 'Simulated GPU, not real hardware' },
              'simulated'
            )
          : null
      ),
      meter('util', 'Util', gpu.utilization_percent, pct(gpu.utilization_percent)),
      meter(
        'mem',
        'Mem',
        memPercent,
        this.compact
          ? `${gib(gpu.memory_used_bytes)} GiB`
          : `${gib(gpu.memory_used_bytes)} / ${gib(gpu.memory_total_bytes)} GiB`
      ),
      this.compact
        ? null
        : sparkline(
            values,
            this.model.sparklinePoints,
            120,
            22,
            `Utilisation of GPU ${gpu.index}, last ${values.length} samples`
          ),
      h(
        'div',
        { class: `jp-DLInfra-holder${holder ? '' : ' jp-mod-free'}`, title: holderText },
        holderText
      ),
      outside
        ? h(
            'div',
            { class: 'jp-DLInfra-outsideLedger', role: 'note', title: outsideTitle(outside) },
            outsideText(outside)
          )
        : null,
      marks.length > 0 ? h('div', { class: 'jp-DLInfra-schedBadges' }, marks) : null
    );
  }

  /**
   * What holds a GPU, in words: a batch job as "job #N (name)", else the notebook (this Lab's
   * sessions give its path relative to the Lab's root), else the kernelspec or kernel id.
   */
  private _holderName(kernelId: string, path?: string | null, kernelName?: string | null): string {
    const jobId = jobIdOfKernel(kernelId);
    if (jobId !== null) {
      const job = this.model.jobById(jobId);
      return `job #${jobId}${job ? ` (${job.name})` : ''}`;
    }
    const local = this.model.sessionOfKernel(kernelId);
    return local?.path ?? path ?? kernelName ?? `kernel ${kernelId.slice(0, 8)}`;
  }

  private _renderMine(): { signature: string; nodes: Node[] } {
    const mine = this.model.myAllocations();
    if (mine.length === 0) {
      return {
        signature: 'none',
        nodes: [
          h(
            'p',
            { class: 'jp-DLInfra-empty' },
            "This Lab's kernels hold no GPUs. Run ",
            h('code', {}, '%gpu 1'),
            ' in a notebook or use its GPUs toolbar button.'
          )
        ]
      };
    }
    const signature = JSON.stringify(
      mine.map(m => [m, m.allocation.gpus.map(g => this.model.gpu(g.uuid)?.utilization_percent)])
    );
    return { signature, nodes: [h('ul', { class: 'jp-DLInfra-list' }, mine.map(m => this._mine(m)))] };
  }

  private _mine(entry: IMyAllocation): HTMLElement {
    const a = entry.allocation;
    const name = entry.path ? basename(entry.path) : entry.kernelName ?? `kernel ${a.kernel_id.slice(0, 8)}`;
    const granted = a.state === 'granted';
    const state = granted
      ? `${gpus(a.gpus.length)} · ${pct(this.model.meanUtilisation(a))}`
      : `queued #${a.position ?? '?'} for ${gpus(a.count)}${a.model ? ` (${a.model})` : ''}`;
    const marks = schedBadges(a);
    const button = h(
      'button',
      {
        type: 'button',
        class: 'jp-DLInfra-release jp-Button jp-mod-styled jp-mod-warn',
        'data-allocation-id': a.id,
        'data-focus-key': `release-${a.id}`,
        'aria-label': granted
          ? `Release the ${gpus(a.gpus.length)} of ${name}`
          : `Leave the queue: cancel the request of ${name}`,
        title: granted ? 'Give the GPUs back to the ledger' : 'Cancel this request'
      },
      granted ? 'Release' : 'Cancel'
    );
    const idle = entry.idle;
    const badge = granted ? idleBadge(a.kernel_id, idle) : null;
    const keep =
      granted && isJudged(idle) && idle.state === 'warned' && idle.keeps_left > 0
        ? h(
            'button',
            {
              type: 'button',
              class: 'jp-DLInfra-keep jp-Button jp-mod-styled jp-mod-accept',
              'data-kernel-id': a.kernel_id,
              'data-focus-key': `keep-${a.kernel_id}`,
              'aria-label': `Keep the idle GPUs of ${name}`,
              title: `Hold the GPUs longer instead of losing them (${idle.keeps_left} keep${
                idle.keeps_left === 1 ? '' : 's'
              } left)`
            },
            'Keep'
          )
        : null;
    const idleState = isJudged(idle) ? idle.state : idle ? 'exempt' : null;
    return h(
      'li',
      {
        class: `jp-DLInfra-myAllocation jp-mod-${a.state}${
          idleState === 'warned' ? ' jp-mod-idleWarned' : idleState === 'idle' ? ' jp-mod-idle' : ''
        }`,
        'data-allocation-id': a.id,
        'data-kernel-id': a.kernel_id,
        'data-idle-state': idleState
      },
      h(
        'div',
        { class: 'jp-DLInfra-myHeader' },
        h('span', { class: 'jp-DLInfra-myName', title: entry.path ?? `${name} (${a.kernel_id})` }, name),
        button
      ),
      h(
        'div',
        { class: 'jp-DLInfra-myState' },
        state,
        classBadge(a.priority_class),
        a.simulated ? h('span', { class: 'jp-DLInfra-simulatedBadge' }, 'simulated') : null
      ),
      marks.length > 0 ? h('div', { class: 'jp-DLInfra-schedBadges' }, marks) : null,
      badge || keep ? h('div', { class: 'jp-DLInfra-idleRow' }, badge, keep) : null,
      granted
        ? h(
            'ul',
            { class: 'jp-DLInfra-myGpus', 'aria-label': `GPUs of ${name}` },
            a.gpus.map(g => {
              const util = g.utilization_percent ?? this.model.gpu(g.uuid)?.utilization_percent ?? null;
              return h(
                'li',
                { class: 'jp-DLInfra-myGpu', 'data-uuid': g.uuid, title: g.uuid },
                h('span', { class: 'jp-DLInfra-gpuIndex' }, `GPU ${g.index ?? '?'}`),
                h('span', { class: 'jp-DLInfra-gpuModel' }, g.model ?? ''),
                meter('util', 'Util', util, pct(util))
              );
            })
          )
        : h(
            'div',
            { class: 'jp-DLInfra-waiting' },
            h(
              'div',
              { class: 'jp-DLInfra-waitingReason', 'data-waiting-code': a.waiting_code ?? null },
              a.waiting_reason ?? ''
            ),
            estimateNode(a)
          ),
      entry.hints.length > 0
        ? h(
            'ul',
            { class: 'jp-DLInfra-hints', 'aria-label': `Hints for ${name}` },
            entry.hints.map(hint =>
              h('li', { class: 'jp-DLInfra-hint', 'data-code': hint.code }, hint.message)
            )
          )
        : null
    );
  }

  private _renderQueue(): { signature: string; nodes: Node[] } {
    const queue = this.model.queue;
    if (queue.length === 0) {
      return { signature: 'empty', nodes: [h('p', { class: 'jp-DLInfra-empty' }, 'No request waits.')] };
    }
    const nodesShown = new Set(queue.map(a => a.node)).size > 1;
    const rows = queue.map(a => {
      const session = this.model.sessionOfKernel(a.kernel_id);
      const who = `${a.user} · ${this._holderName(a.kernel_id)}`;
      return {
        a,
        who,
        mine: session !== null
      };
    });
    const signature = JSON.stringify(
      rows.map(r => [
        r.a.id,
        r.a.position,
        r.a.waiting_reason,
        r.a.waiting_code,
        r.a.estimated_start,
        r.a.estimate_basis,
        r.a.priority_class,
        r.who,
        r.a.count,
        r.a.model
      ])
    );
    const list = h(
      'ol',
      { class: 'jp-DLInfra-list jp-DLInfra-queueList' },
      rows.map(({ a, who, mine }) =>
        h(
          'li',
          {
            class: `jp-DLInfra-queueEntry${mine ? ' jp-mod-mine' : ''}`,
            'data-allocation-id': a.id,
            'data-position': a.position ?? '',
            'data-class': a.priority_class ?? null,
            'data-waiting-code': a.waiting_code ?? null
          },
          h(
            'div',
            { class: 'jp-DLInfra-queueHeader' },
            h(
              'span',
              { class: 'jp-DLInfra-queuePosition', 'aria-label': `position ${a.position ?? '?'}` },
              `#${a.position ?? '?'}`
            ),
            classBadge(a.priority_class),
            h(
              'span',
              { class: 'jp-DLInfra-queueCount' },
              `${gpus(a.count)}${a.model ? ` ${a.model}` : ''}${nodesShown ? ` on ${a.node}` : ''}`
            )
          ),
          h('div', { class: 'jp-DLInfra-queueWho', title: who }, who),
          h(
            'div',
            { class: 'jp-DLInfra-waitingReason', 'data-waiting-code': a.waiting_code ?? null },
            a.waiting_reason ?? ''
          ),
          estimateNode(a)
        )
      )
    );
    return { signature, nodes: [list] };
  }

  /* ---------------------------------------------------------------- fair share */

  private _renderFairShare(): { signature: string; nodes: Node[] } {
    const model = this.model;
    if (model.fairShareAvailable === false) {
      return {
        signature: 'unavailable',
        nodes: [
          h('p', { class: 'jp-DLInfra-empty' }, 'This server does not rank requests by fair share.')
        ]
      };
    }
    const fs = model.fairShare;
    const error = model.fairShareError
      ? h(
          'p',
          { class: 'jp-DLInfra-fairShareError', role: 'alert' },
          `Cannot read your fair share: ${model.fairShareError}`
        )
      : null;
    if (!fs) {
      return {
        signature: JSON.stringify(['none', model.fairShareError]),
        nodes: [error ?? h('p', { class: 'jp-DLInfra-empty' }, 'Loading…')]
      };
    }
    const nodes: Node[] = error ? [error, fairShareView(fs)] : [fairShareView(fs)];
    return { signature: JSON.stringify([fs, model.fairShareError]), nodes };
  }

  /* ---------------------------------------------------------------- jobs */

  private _renderJobs(): { signature: string; nodes: Node[] } {
    const model = this.model;
    if (model.jobsAvailable === false) {
      return {
        signature: 'unavailable',
        nodes: [h('p', { class: 'jp-DLInfra-empty' }, 'This server does not run batch jobs.')]
      };
    }
    const all = model.jobs;
    const error = model.jobsError
      ? h(
          'p',
          { class: 'jp-DLInfra-jobsError', role: 'alert' },
          `Cannot read the jobs: ${model.jobsError}`
        )
      : null;
    if (all.length === 0) {
      const nodes: Node[] = error ? [error] : [];
      nodes.push(
        h(
          'p',
          { class: 'jp-DLInfra-empty' },
          model.jobsAvailable === null && !model.jobsError
            ? 'Loading…'
            : 'No jobs yet. Use "Submit as job" in a notebook\'s toolbar.'
        )
      );
      return { signature: JSON.stringify(['none', model.jobsAvailable, model.jobsError]), nodes };
    }
    // Every active job, then the newest ended ones up to the limit (newest first throughout).
    const active = all.filter(j => isActiveJob(j.state)).length;
    let endedLeft = Math.max(0, MAX_JOBS_SHOWN - active);
    const shown = all.filter(j => isActiveJob(j.state) || endedLeft-- > 0);
    const hidden = all.length - shown.length;

    // Jobs of one sweep together, where the newest of them is.
    const groups = new Map<string, Job[]>();
    for (const job of shown) {
      if (job.group_id) {
        const members = groups.get(job.group_id) ?? [];
        members.push(job);
        groups.set(job.group_id, members);
      }
    }
    const items: Node[] = [];
    const placed = new Set<string>();
    for (const job of shown) {
      const members = job.group_id ? groups.get(job.group_id) ?? [] : [];
      if (job.group_id && members.length > 1) {
        if (!placed.has(job.group_id)) {
          placed.add(job.group_id);
          items.push(this._jobGroup(job.group_id, members));
        }
      } else {
        items.push(this._job(job));
      }
    }
    const signature = JSON.stringify([
      shown.map(j => ({ ...j, duration_s: j.state === 'running' ? null : j.duration_s })),
      shown.map(j => {
        const a = isActiveJob(j.state) ? model.allocationById(j.allocation_id) : null;
        return a
          ? [
              a.state,
              a.borrowed,
              a.preempted_for,
              a.estimated_start,
              a.estimate_basis,
              a.position,
              a.priority_class
            ]
          : null;
      }),
      hidden,
      model.jobsError,
      !!this._commands
    ]);
    const nodes: Node[] = [];
    if (error) {
      nodes.push(error);
    }
    nodes.push(h('ul', { class: 'jp-DLInfra-list jp-DLInfra-jobList' }, items));
    if (hidden > 0) {
      nodes.push(
        h(
          'p',
          { class: 'jp-DLInfra-empty jp-DLInfra-jobsMore' },
          `${hidden} older job${hidden === 1 ? '' : 's'} not shown.`
        )
      );
    }
    return { signature, nodes };
  }

  private _jobGroup(groupId: string, members: Job[]): HTMLElement {
    const counts = new Map<string, number>();
    for (const job of members) {
      counts.set(job.state, (counts.get(job.state) ?? 0) + 1);
    }
    const summary = [...counts].map(([state, n]) => `${n} ${state}`).join(', ');
    // Sweep jobs are named "name[k=v,...]": the group shows the shared name.
    const base = members[members.length - 1].name.replace(/\[[^\]]*\]$/, '');
    const headingId = `dlinfra-job-group-${groupId.replace(/[^A-Za-z0-9_-]/g, '_')}`;
    return h(
      'li',
      { class: 'jp-DLInfra-jobGroup', 'data-group-id': groupId, 'aria-labelledby': headingId },
      h(
        'div',
        { class: 'jp-DLInfra-jobGroupHeader', id: headingId, title: `Sweep ${groupId}` },
        h(
          'span',
          { class: 'jp-DLInfra-jobGroupName', title: `Sweep of ${members.length} · ${base}` },
          `Sweep of ${members.length} · ${base}`
        ),
        h('span', { class: 'jp-DLInfra-jobGroupSummary' }, summary)
      ),
      h('ul', { class: 'jp-DLInfra-list jp-DLInfra-jobGroupList' }, members.map(j => this._job(j)))
    );
  }

  private _job(job: Job): HTMLElement {
    const active = isActiveJob(job.state);
    const button = (kind: string, label: string, title: string, extra = '') =>
      h(
        'button',
        {
          type: 'button',
          class: `jp-DLInfra-${kind} jp-DLInfra-jobButton jp-Button jp-mod-styled${extra}`,
          'data-job-id': job.id,
          'data-focus-key': `${kind}-${job.id}`,
          title,
          'aria-label': `${title} (job ${job.id}, ${job.name})`
        },
        label
      );
    const commands = this._commands;
    const buttons: HTMLElement[] = [];
    if (commands) {
      buttons.push(button('jobLog', 'Log', 'Follow the log'));
      if (job.outputs.notebook) {
        buttons.push(button('jobOutput', 'Notebook', 'Open the executed notebook'));
      }
      if (job.outputs.html) {
        buttons.push(button('jobReport', 'Report', 'Open the HTML report'));
      }
    }
    if (active) {
      buttons.push(
        button(
          'jobCancel',
          'Cancel',
          job.state === 'running' ? 'Stop the job' : 'Take the job out of the queue',
          ' jp-mod-warn'
        )
      );
    } else {
      buttons.push(
        button('jobRerun', 'Re-run', 'Submit the job again, with the same fields', ' jp-mod-accept')
      );
    }

    const reasonText =
      job.reason ||
      (job.state === 'failed' && job.error
        ? `failed${job.failed_cell ? ` in cell ${job.failed_cell}` : ''}: ${job.error}`
        : '');
    const meta: Array<Node | string> = [];
    // The job's GPU request while it is active: its class, place and marks.
    const grant = active ? this.model.allocationById(job.allocation_id) : null;
    meta.push(
      h(
        'span',
        { class: 'jp-DLInfra-jobGpus' },
        job.gpus > 0 ? `${gpus(job.gpus)}${job.model ? ` ${job.model}` : ''}` : 'no GPU'
      )
    );
    const durationText = jobDurationText(this.model, job);
    if (durationText || job.state === 'running') {
      meta.push(
        h(
          'span',
          {
            class: 'jp-DLInfra-jobDuration',
            'data-job-id': job.id,
            'data-live': job.state === 'running' ? 'true' : null,
            title: job.started_at ? `Started at ${clock(job.started_at)}` : null
          },
          durationText
        )
      );
    } else {
      meta.push(h('span', { class: 'jp-DLInfra-jobCreated' }, `submitted ${clock(job.created_at)}`));
    }
    if (job.backend) {
      meta.push(h('span', { class: 'jp-DLInfra-jobBackend', title: `on ${job.node}` }, job.backend));
    }
    // A job submitted without a class runs in the policy's job class, which its request names.
    const klass = job.priority_class || grant?.priority_class || null;
    if (klass) {
      meta.push(
        h(
          'span',
          { class: 'jp-DLInfra-jobClass', 'data-class': klass, title: `Priority class ${klass}` },
          klass
        )
      );
    }
    const attempts = job.attempts ?? 0;
    if (attempts > 0) {
      meta.push(
        h(
          'span',
          {
            class: 'jp-DLInfra-jobAttempts',
            'data-attempts': attempts,
            title: `Preempted and queued again ${attempts} time${attempts === 1 ? '' : 's'}`
          },
          `preempted ${attempts === 1 ? 'once' : `${attempts} times`}`
        )
      );
    }
    if (job.after.length > 0) {
      meta.push(h('span', { class: 'jp-DLInfra-jobAfter' }, `after #${job.after.join(', #')}`));
    }
    const paramsText = Object.entries(job.parameters ?? {})
      .map(([k, v]) => `${k}=${JSON.stringify(v)}`)
      .join(', ');
    const marks = schedBadges(grant);
    return h(
      'li',
      {
        class: `jp-DLInfra-job jp-mod-${job.state}`,
        'data-job-id': job.id,
        'data-state': job.state,
        'data-group-id': job.group_id
      },
      h(
        'div',
        { class: 'jp-DLInfra-jobHeader' },
        h(
          'span',
          {
            class: 'jp-DLInfra-jobName',
            title: job.path.includes(job.name) ? job.path : `${job.name} (${job.path})`
          },
          job.name
        ),
        h('span', { class: 'jp-DLInfra-jobId' }, `#${job.id}`),
        h(
          'span',
          { class: `jp-DLInfra-jobState jp-DLInfra-jobState-${job.state}`, 'data-state': job.state },
          job.state
        )
      ),
      h('div', { class: 'jp-DLInfra-jobMeta' }, meta),
      marks.length > 0 ? h('div', { class: 'jp-DLInfra-schedBadges' }, marks) : null,
      paramsText ? h('div', { class: 'jp-DLInfra-jobParams', title: paramsText }, paramsText) : null,
      reasonText
        ? h('div', { class: 'jp-DLInfra-jobReason', title: reasonText }, reasonText)
        : null,
      grant && grant.state === 'queued' ? estimateNode(grant) : null,
      h('div', { class: 'jp-DLInfra-jobActions' }, buttons)
    );
  }

  /** Run a job button's command (or the model's action without commands). */
  private _onJobButton(button: HTMLButtonElement): void {
    const id = Number(button.dataset.jobId);
    if (!Number.isInteger(id) || button.disabled) {
      return;
    }
    const cls = button.classList;
    const commands = this._commands;
    const fail = (what: string) => (error: unknown) => {
      button.disabled = false;
      void showErrorMessage(what, (error as Error)?.message ?? String(error));
    };
    if (cls.contains('jp-DLInfra-jobLog')) {
      void commands?.execute(JobCommandIDs.openLog, { id });
    } else if (cls.contains('jp-DLInfra-jobOutput')) {
      void commands?.execute(JobCommandIDs.openOutput, { id, format: 'notebook' });
    } else if (cls.contains('jp-DLInfra-jobReport')) {
      void commands?.execute(JobCommandIDs.openOutput, { id, format: 'html' });
    } else if (cls.contains('jp-DLInfra-jobCancel')) {
      button.disabled = true;
      if (commands) {
        void commands.execute(JobCommandIDs.cancel, { id }).then(() => (button.disabled = false));
      } else {
        this.model.cancelJob(id).catch(fail(`Cannot cancel job ${id}`));
      }
    } else if (cls.contains('jp-DLInfra-jobRerun')) {
      button.disabled = true;
      if (commands) {
        void commands.execute(JobCommandIDs.rerun, { id }).then(() => (button.disabled = false));
      } else {
        this.model.rerunJob(id).catch(fail(`Cannot re-run job ${id}`));
      }
    }
  }

  /* ---------------------------------------------------------------- events */

  private _onClick = (event: MouseEvent): void => {
    const jobButton = (event.target as HTMLElement).closest<HTMLButtonElement>(
      '.jp-DLInfra-jobButton'
    );
    if (jobButton && this.node.contains(jobButton)) {
      this._onJobButton(jobButton);
      return;
    }
    const keep = (event.target as HTMLElement).closest<HTMLButtonElement>('.jp-DLInfra-keep');
    if (keep && this.node.contains(keep)) {
      const kernelId = keep.dataset.kernelId;
      if (!kernelId || keep.disabled) {
        return;
      }
      keep.disabled = true;
      this.model.keep(kernelId).catch(error => {
        keep.disabled = false;
        void showErrorMessage('Cannot keep the GPUs', (error as Error).message ?? String(error));
      });
      return;
    }
    const target = (event.target as HTMLElement).closest<HTMLElement>('.jp-DLInfra-release');
    if (!target || !this.node.contains(target)) {
      return;
    }
    const id = Number(target.dataset.allocationId);
    if (!Number.isFinite(id)) {
      return;
    }
    (target as HTMLButtonElement).disabled = true;
    this.model.release(id).catch(error => {
      (target as HTMLButtonElement).disabled = false;
      void showErrorMessage('Cannot release the GPUs', (error as Error).message ?? String(error));
    });
  };

  private _commands: CommandRegistry | null;
  private _status: HTMLElement;
  private _summary: HTMLElement;
  private _error: HTMLElement;
  private _sections: Record<SectionKey, HTMLElement>;
  private _signatures: Partial<Record<SectionKey, string>> = {};
  private _rendered = false;
  private _ticker: number | null = null;
}

/** A request's priority class as a small tag, or null when it has none. */
function classBadge(klass: string | null | undefined): HTMLElement | null {
  if (!klass) {
    return null;
  }
  return h(
    'span',
    { class: 'jp-DLInfra-classBadge', 'data-class': klass, title: `Priority class ${klass}` },
    klass
  );
}

/** The "being preempted" and "borrowed" marks of a grant (none for other states). */
function schedBadges(a: Allocation | null): HTMLElement[] {
  const marks: HTMLElement[] = [];
  if (!a || a.state !== 'granted') {
    return marks;
  }
  if (a.preempted_for !== null && a.preempted_for !== undefined) {
    marks.push(
      h(
        'span',
        {
          class: 'jp-DLInfra-schedBadge jp-DLInfra-preemptedBadge',
          'data-preempted-for': a.preempted_for,
          title: a.preempt_reason
            ? `Being stopped and queued again: ${a.preempt_reason}`
            : `Being stopped and queued again for request ${a.preempted_for}`
        },
        'being preempted'
      )
    );
  }
  if (a.borrowed) {
    marks.push(
      h(
        'span',
        {
          class: 'jp-DLInfra-schedBadge jp-DLInfra-borrowedBadge',
          title:
            'Granted beyond a quota, on GPUs nobody within quota wanted: ' +
            'the first taken back when others wait'
        },
        'borrowed'
      )
    );
  }
  return marks;
}

/** "starts in ~12 min" (counted down by the sidebar's ticker) or "start time unknown". */
/** "starts in ~12 min · from recent holding times": the estimate and what it rests on. */
function estimateNode(a: Allocation): HTMLElement {
  const iso = a.estimated_start ?? null;
  const note = iso ? a.estimate_note ?? null : null;
  return h(
    'div',
    { class: 'jp-DLInfra-estimate' },
    h(
      'span',
      {
        class: `jp-DLInfra-estimatedStart${iso ? '' : ' jp-mod-unknown'}`,
        'data-estimated-start': iso,
        title: iso
          ? `About ${clock(iso)}${note ? `, ${note}` : ''}: an estimate, not a promise`
          : 'No estimate: the GPUs it waits for have no expected end yet'
      },
      startsIn(iso)
    ),
    note
      ? h(
          'span',
          {
            class: 'jp-DLInfra-estimateBasis',
            'data-basis': a.estimate_basis ?? null,
            title: note
          },
          note
        )
      : null
  );
}

/** "in use outside the ledger by mallory": work on a GPU that nobody holds in the ledger. */
function outsideText(outside: OutsideLedger): string {
  return `in use outside the ledger${outside.users.length ? ` by ${outside.users.join(', ')}` : ''}`;
}

function outsideTitle(outside: OutsideLedger): string {
  const processes = outside.processes.map(
    p => `pid ${p.pid} (${p.user ?? 'owner unknown'}, ${gib(p.memory_used_bytes)} GiB)`
  );
  return (
    'The ledger says this GPU is free, yet it is busy: someone uses it without asking for it ' +
    `(%gpu, a GPU kernel or a job). ${processes.length ? `Processes: ${processes.join('; ')}.` : 'Its processes cannot be listed from here.'}`
  );
}

/** The words for a fair-share factor (1: no recent use, 0.5: used exactly the share). */
function factorWords(factor: number): string {
  if (factor >= 0.995) {
    return 'no recent use';
  }
  if (factor > 0.55) {
    return 'under your share';
  }
  if (factor >= 0.45) {
    return 'about your share';
  }
  return 'over your share';
}

/** The caller's fair-share standing, quota and rank. */
function fairShareView(fs: FairShare): HTMLElement {
  const you: Standing | null = fs.you;
  const factor = you?.factor ?? 1;
  const usage = you?.usage_gpu_hours ?? 0;
  const held = you?.held ?? 0;
  const rank = you?.rank ?? null;
  const row = (label: string, cls: string, value: string | number, text: string, title = '') => [
    h('dt', {}, label),
    h('dd', { class: cls, 'data-value': value, title: title || null }, text)
  ];
  const hours = Math.round(usage * 100) / 100;
  const rows: HTMLElement[] = [
    ...row(
      'Factor',
      'jp-DLInfra-fairShareFactor',
      factor,
      `${factor.toFixed(2)} · ${factorWords(factor)}`,
      '1 = no recent GPU use, 0.5 = used exactly your share, towards 0 = far over it. ' +
        'Within a priority class, users with less use per share are served first ' +
        '(GPUs held now count against them too).'
    ),
    ...row(
      'Recent use',
      'jp-DLInfra-fairShareUsage',
      hours,
      `${hours} GPU-h`,
      `Your past GPU use, counting half as much after ${duration(fs.half_life)}`
    ),
    ...row(
      'Quota',
      'jp-DLInfra-fairShareQuota',
      fs.quota ?? '',
      fs.quota === null
        ? `no limit · holding ${gpus(held)}`
        : held > fs.quota
          ? `holding ${gpus(held)}, over a quota of ${fs.quota}`
          : `holding ${held} of ${gpus(fs.quota)}`,
      'GPUs you may hold at once (borrowed GPUs of preemptible jobs may go beyond it)'
    )
  ];
  if (rank !== null) {
    rows.push(
      ...row(
        'Rank',
        'jp-DLInfra-fairShareRank',
        rank,
        `#${rank} among users waiting`,
        'Your place among the users with waiting requests (1 is served first, within a class)'
      )
    );
  }
  if (you && you.account) {
    rows.push(
      ...row(
        'Account',
        'jp-DLInfra-fairShareAccount',
        you.account,
        `${you.account} (share ${you.account_share})`
      )
    );
  }
  return h(
    'div',
    {
      class: `jp-DLInfra-fairShare${fs.fair_share ? '' : ' jp-mod-off'}`,
      'data-user': fs.user,
      'data-factor': factor
    },
    fs.fair_share
      ? null
      : h(
          'p',
          { class: 'jp-DLInfra-fairShareOff' },
          'Fair share is off: within a class, requests are served first come, first served.'
        ),
    h('dl', { class: 'jp-DLInfra-fairShareStats' }, rows),
    h(
      'p',
      { class: 'jp-DLInfra-fairShareHelp' },
      you
        ? `Your share is ${you.share}; past use counts half after ${duration(fs.half_life)}.`
        : `No recent GPU use: you go first within your class. ` +
            `Past use counts half after ${duration(fs.half_life)}.`
    )
  );
}

/** An allocation's GPUs as "GPU 0, GPU 3". */
export function gpuList(allocation: Allocation): string {
  return allocation.gpus.map(g => `GPU ${g.index ?? '?'}`).join(', ');
}
