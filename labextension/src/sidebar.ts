/**
 * The "GPUs" left sidebar: cluster, this Lab's kernels and the queue. It renders the model
 * (on `model.changed`) and hands button clicks back to it.
 */
import { showErrorMessage } from '@jupyterlab/apputils';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { Allocation, ClusterGpu, isJudged } from './api';
import { basename, clock, gib, gpus, h, meter, pct, sparkline } from './dom';
import { gpuIcon } from './icons';
import { idleBadge, refreshBadges } from './idle';
import { DLInfraModel, IMyAllocation } from './model';

export const SIDEBAR_ID = 'dlinfra-sidebar';

type SectionKey = 'cluster' | 'mine' | 'queue';

export class DLInfraSidebar extends Widget {
  constructor(model: DLInfraModel) {
    super();
    this.model = model;
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
    refresh.addEventListener('click', () => void this.model.refresh());
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
      queue: this._section('queue', 'Queue', { 'aria-live': 'polite', 'aria-relevant': 'all' })
    };
    this.node.addEventListener('click', this._onClick);
    model.changed.connect(this._render, this);
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

  /** Count the idle badges down each second while some are shown. */
  private _tickBadges(): void {
    const shown = this.isVisible
      ? refreshBadges(this._sections.mine, id => this.model.idleOf(id))
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

  private _section(key: SectionKey, heading: string, attrs: Record<string, string>): HTMLElement {
    const headingId = `dlinfra-${key}-heading`;
    const body = h('div', { class: 'jp-DLInfra-sectionBody', ...attrs });
    this.node.append(
      h(
        'section',
        { class: `jp-DLInfra-section jp-DLInfra-section-${key}`, 'aria-labelledby': headingId },
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
    this._update('queue', () => this._renderQueue());
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
    return { signature: JSON.stringify([cluster, history, running, idle]), nodes };
  }

  private _gpuCard(gpu: ClusterGpu): HTMLElement {
    const holder = gpu.holder;
    let holderText = 'free';
    if (holder) {
      // This Lab's own sessions give the notebook path relative to the Lab's root.
      const local = this.model.sessionOfKernel(holder.kernel_id);
      const where = local?.path ?? holder.path ?? holder.kernel_name ?? holder.kernel_id.slice(0, 8);
      holderText = `${holder.user} · ${where}`;
    }
    const memPercent =
      typeof gpu.memory_used_bytes === 'number' && gpu.memory_total_bytes > 0
        ? (100 * gpu.memory_used_bytes) / gpu.memory_total_bytes
        : null;
    const mine = holder ? this.model.runningKernelIds().has(holder.kernel_id) : false;
    const idle = holder ? this.model.idleOf(holder.kernel_id) : null;
    const idleState = isJudged(idle) && idle.state !== 'active' ? idle.state : null;
    const values = this.model.history(gpu.uuid);
    const label = `GPU ${gpu.index}, ${gpu.model}${gpu.simulated ? ', simulated' : ''}, ${
      holder ? `held by ${holderText}` : 'free'
    }, utilisation ${pct(gpu.utilization_percent)}${
      idleState === 'warned' ? ', idle: about to be reclaimed' : idleState === 'idle' ? ', idle' : ''
    }`;
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
        }`,
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
        h('span', { class: 'jp-DLInfra-gpuModel' }, gpu.model),
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
      )
    );
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
        h('span', { class: 'jp-DLInfra-myName', title: entry.path ?? a.kernel_id }, name),
        button
      ),
      h(
        'div',
        { class: 'jp-DLInfra-myState' },
        state,
        a.simulated ? h('span', { class: 'jp-DLInfra-simulatedBadge' }, 'simulated') : null
      ),
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
        : h('div', { class: 'jp-DLInfra-waitingReason' }, a.waiting_reason ?? ''),
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
      const who = session ? `${a.user} · ${session.path}` : `${a.user} · kernel ${a.kernel_id.slice(0, 8)}`;
      return {
        a,
        who,
        mine: session !== null
      };
    });
    const signature = JSON.stringify(rows.map(r => [r.a.id, r.a.position, r.a.waiting_reason, r.who, r.a.count, r.a.model]));
    const list = h(
      'ol',
      { class: 'jp-DLInfra-list jp-DLInfra-queueList' },
      rows.map(({ a, who, mine }) =>
        h(
          'li',
          {
            class: `jp-DLInfra-queueEntry${mine ? ' jp-mod-mine' : ''}`,
            'data-allocation-id': a.id,
            'data-position': a.position ?? ''
          },
          h(
            'div',
            { class: 'jp-DLInfra-queueHeader' },
            h(
              'span',
              { class: 'jp-DLInfra-queuePosition', 'aria-label': `position ${a.position ?? '?'}` },
              `#${a.position ?? '?'}`
            ),
            h(
              'span',
              { class: 'jp-DLInfra-queueCount' },
              `${gpus(a.count)}${a.model ? ` ${a.model}` : ''}${nodesShown ? ` on ${a.node}` : ''}`
            )
          ),
          h('div', { class: 'jp-DLInfra-queueWho', title: who }, who),
          h('div', { class: 'jp-DLInfra-waitingReason' }, a.waiting_reason ?? '')
        )
      )
    );
    return { signature, nodes: [list] };
  }

  /* ---------------------------------------------------------------- events */

  private _onClick = (event: MouseEvent): void => {
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

  private _status: HTMLElement;
  private _summary: HTMLElement;
  private _error: HTMLElement;
  private _sections: Record<SectionKey, HTMLElement>;
  private _signatures: Partial<Record<SectionKey, string>> = {};
  private _rendered = false;
  private _ticker: number | null = null;
}

/** An allocation's GPUs as "GPU 0, GPU 3". */
export function gpuList(allocation: Allocation): string {
  return allocation.gpus.map(g => `GPU ${g.index ?? '?'}`).join(', ');
}
