/**
 * The "Cluster" section of a large cluster (more than LARGE_CLUSTER GPUs): a summary (free,
 * held, idle, yours, parked, by model), a search and filters, and one compact row per node, a
 * cell per GPU, of which only the rows in view are in the page (a list of 1,024 nodes keeps some
 * thirty rows in the DOM and draws again as it scrolls). The view lasts across updates, so that
 * the scroll position, the search and the focus stay; an update costs a pass over the GPUs and
 * the rows in view, not the DOM of the whole cluster.
 */
import { Cluster, ClusterGpu, isJudged } from '../api';
import { h, pct } from '../dom';
import { LedgerModel } from '../model';

/** Above this many GPUs the sidebar shows the cluster as a list of nodes, not as cards. */
export const LARGE_CLUSTER = 64;
/** A node row's height (px): fixed, so that the rows in view follow from the scroll offset. */
const ROW_PX = 22;
/** Rows drawn beyond the view on each side, so that a scroll shows no gap. */
const OVERSCAN = 6;

type Filter = 'all' | 'free' | 'mine' | 'idle' | 'busy';

/** `parked`: a parked kernel's GPU nobody borrows (free to lend to preemptible jobs only). */
type GpuState = 'free' | 'held' | 'mine' | 'idle' | 'outside' | 'parked';

interface IRow {
  name: string;
  gpus: ClusterGpu[];
  states: GpuState[];
  free: number;
}

export class ClusterListView {
  constructor() {
    this._search = h('input', {
      type: 'search',
      class: 'jp-DLInfra-clusterSearch',
      placeholder: 'Search nodes or users',
      'aria-label': 'Search nodes or users'
    });
    this._filter = h(
      'select',
      { class: 'jp-DLInfra-clusterFilter', 'aria-label': 'Show' },
      ...(['all', 'free', 'mine', 'idle', 'busy'] as Filter[]).map(f =>
        h('option', { value: f }, f === 'all' ? 'All nodes' : `With ${f === 'mine' ? 'yours' : f} GPUs`)
      )
    );
    this._model = h('select', { class: 'jp-DLInfra-clusterModel', 'aria-label': 'Model' });
    this._summary = h('div', { class: 'jp-DLInfra-clusterSummary', role: 'status' });
    this._count = h('p', { class: 'jp-DLInfra-clusterCount' });
    this._spacer = h('div', { class: 'jp-DLInfra-nodeListSpacer' });
    this._rows = h('div', { class: 'jp-DLInfra-nodeRows', role: 'list' });
    this._list = h(
      'div',
      { class: 'jp-DLInfra-nodeList', tabindex: 0, 'aria-label': 'Nodes' },
      this._spacer,
      this._rows
    );
    this.node = h(
      'div',
      { class: 'jp-DLInfra-clusterLarge' },
      this._summary,
      h('div', { class: 'jp-DLInfra-clusterControls' }, this._search, this._filter, this._model),
      this._count,
      this._list
    );
    this._search.addEventListener('input', () => this._select());
    this._filter.addEventListener('change', () => this._select());
    this._model.addEventListener('change', () => this._select());
    this._list.addEventListener('scroll', () => this._drawRows());
  }

  readonly node: HTMLElement;

  /** Show ``cluster`` (``me``: the user's name, whose GPUs are "yours"). */
  update(cluster: Cluster, ledger: LedgerModel, me: string | null): void {
    const mine = ledger.kernels.runningKernelIds();
    const rows: IRow[] = [];
    const byModel = new Map<string, { total: number; free: number }>();
    let free = 0;
    let held = 0;
    let idle = 0;
    let yours = 0;
    let parked = 0;
    for (const node of cluster.nodes) {
      const states: GpuState[] = [];
      let nodeFree = 0;
      for (const gpu of node.gpus) {
        const state = gpuState(gpu, ledger, mine, me);
        states.push(state);
        const model = byModel.get(gpu.model) ?? { total: 0, free: 0 };
        model.total += 1;
        if (state === 'free') {
          free += 1;
          nodeFree += 1;
          model.free += 1;
        } else if (state === 'parked') {
          parked += 1;
        } else if (state !== 'outside') {
          held += 1;
        }
        idle += state === 'idle' ? 1 : 0;
        yours += state === 'mine' || (state === 'idle' && gpu.holder?.user === me) ? 1 : 0;
        byModel.set(gpu.model, model);
      }
      rows.push({ name: node.name, gpus: node.gpus, states, free: nodeFree });
    }
    this._all = rows;
    const simulated = cluster.simulated || cluster.provider.simulated;
    this._summary.replaceChildren(
      simulated
        ? h(
            'p',
            { class: 'jp-DLInfra-simulatedNote' },
            h('span', { class: 'jp-DLInfra-simulatedBadge' }, 'simulated'),
            ' These GPUs are simulated, not real hardware.'
          )
        : '',
      h(
        'p',
        { class: 'jp-DLInfra-clusterTotals' },
        h('span', { 'data-count': 'gpus' }, `${cluster.gpu_count.toLocaleString()} GPUs`),
        ' · ',
        h('span', { 'data-count': 'free', class: 'jp-mod-free' }, `${free.toLocaleString()} free`),
        ' · ',
        h('span', { 'data-count': 'held' }, `${held.toLocaleString()} held`),
        ' · ',
        h('span', { 'data-count': 'idle', class: 'jp-mod-idle' }, `${idle.toLocaleString()} idle`),
        ' · ',
        h(
          'span',
          { 'data-count': 'mine', class: 'jp-mod-mine' },
          `${yours.toLocaleString()} yours`
        ),
        ...(parked > 0
          ? [
              ' · ',
              h(
                'span',
                {
                  'data-count': 'parked',
                  class: 'jp-mod-parked',
                  title:
                    "Parked kernels' GPUs nobody borrows: free to lend to preemptible jobs " +
                    'only'
                },
                `${parked.toLocaleString()} parked`
              )
            ]
          : [])
      ),
      h(
        'ul',
        { class: 'jp-DLInfra-clusterModels' },
        [...byModel.entries()]
          .sort()
          .map(([model, n]) =>
            h('li', { 'data-model': model }, `${model}: ${n.free} of ${n.total} free`)
          )
      )
    );
    const models = [...byModel.keys()].sort();
    if (JSON.stringify(models) !== this._models) {
      this._models = JSON.stringify(models);
      const chosen = this._model.value;
      this._model.replaceChildren(
        h('option', { value: '' }, 'All models'),
        ...models.map(m => h('option', { value: m }, m))
      );
      this._model.value = models.includes(chosen) ? chosen : '';
    }
    this._select();
  }

  /** Apply the search and the filters, then draw the rows in view. */
  private _select(): void {
    const words = this._search.value.trim().toLowerCase();
    const filter = this._filter.value as Filter;
    const model = this._model.value;
    this._shown = this._all.filter(row => {
      if (model && !row.gpus.some(g => g.model === model)) {
        return false;
      }
      if (filter === 'free' && row.free === 0) {
        return false;
      }
      if (filter === 'mine' && !row.states.includes('mine')) {
        return false;
      }
      if (filter === 'idle' && !row.states.includes('idle')) {
        return false;
      }
      if (filter === 'busy' && !row.states.some(s => s === 'held' || s === 'mine')) {
        return false;
      }
      if (!words) {
        return true;
      }
      return (
        row.name.toLowerCase().includes(words) ||
        row.gpus.some(
          g =>
            g.holder?.user.toLowerCase().includes(words) ||
            g.parked_for?.user.toLowerCase().includes(words)
        )
      );
    });
    this._count.textContent =
      this._shown.length === this._all.length
        ? `${this._all.length.toLocaleString()} nodes`
        : `${this._shown.length.toLocaleString()} of ${this._all.length.toLocaleString()} nodes`;
    this._spacer.style.height = `${this._shown.length * ROW_PX}px`;
    this._drawn = '';
    this._drawRows();
  }

  /** Draw the rows in view (and a few beyond), nothing else. */
  private _drawRows(): void {
    const height = this._list.clientHeight || 320;
    const first = Math.max(Math.floor(this._list.scrollTop / ROW_PX) - OVERSCAN, 0);
    const last = Math.min(Math.ceil((this._list.scrollTop + height) / ROW_PX) + OVERSCAN, this._shown.length);
    const slice = this._shown.slice(first, last);
    const key = `${first}:${slice.length}`;
    if (key === this._drawn) {
      return;
    }
    this._drawn = key;
    this._rows.style.transform = `translateY(${first * ROW_PX}px)`;
    this._rows.replaceChildren(...slice.map(row => nodeRow(row)));
  }

  private _search: HTMLInputElement;
  private _filter: HTMLSelectElement;
  private _model: HTMLSelectElement;
  private _summary: HTMLElement;
  private _count: HTMLElement;
  private _spacer: HTMLElement;
  private _rows: HTMLElement;
  private _list: HTMLElement;
  private _all: IRow[] = [];
  private _shown: IRow[] = [];
  private _models = '';
  private _drawn = '';
}

function gpuState(
  gpu: ClusterGpu,
  ledger: LedgerModel,
  mine: Set<string>,
  me: string | null
): GpuState {
  const holder = gpu.holder;
  if (!holder) {
    return gpu.parked_for ? 'parked' : gpu.outside_ledger ? 'outside' : 'free';
  }
  const idle = ledger.idleOf(holder.kernel_id);
  if (isJudged(idle) && idle.state !== 'active') {
    return 'idle';
  }
  return mine.has(holder.kernel_id) || (me !== null && holder.user === me) ? 'mine' : 'held';
}

function nodeRow(row: IRow): HTMLElement {
  return h(
    'div',
    { class: 'jp-DLInfra-nodeRow', role: 'listitem', 'data-node': row.name },
    h('span', { class: 'jp-DLInfra-nodeRowName', title: row.name }, row.name),
    h(
      'span',
      { class: 'jp-DLInfra-nodeCells' },
      row.gpus.map((gpu, i) =>
        h('span', {
          class: `jp-DLInfra-cell jp-mod-${row.states[i]}`,
          'data-index': gpu.index,
          style: gpu.holder ? `--jp-dlinfra-util: ${Math.round(gpu.utilization_percent ?? 0)}%` : null,
          title: `GPU ${gpu.index} (${gpu.model}): ${cellText(gpu, row.states[i])}, ${pct(
            gpu.utilization_percent
          )}`
        })
      )
    ),
    h('span', { class: 'jp-DLInfra-nodeRowFree' }, `${row.free} free`)
  );
}

/** A cell's holder in words: who holds it (on loan from a parked kernel), or its state. */
function cellText(gpu: ClusterGpu, state: GpuState): string {
  const holder = gpu.holder;
  const parked = gpu.parked_for ?? null;
  const parkedBy = parked ? `${parked.user} · ${parked.path ?? parked.kernel_id}` : '';
  if (holder) {
    const text = `${holder.user} · ${holder.path ?? holder.kernel_id}`;
    return parked ? `${text}, on loan from ${parkedBy} (parked)` : text;
  }
  return parked ? `free to lend · parked: ${parkedBy}` : state;
}
