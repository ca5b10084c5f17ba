/**
 * The sidebar's "Cluster" section: a card per GPU, by node, with utilisation, memory, a
 * sparkline (not in the compact view), what holds it and its marks (idle, borrowed, being
 * preempted, in use outside the ledger, and a parked kernel's: parked and free to lend, or on
 * loan, from the GPU's `parked_for`).
 */
import { ClusterGpu, Holder, isJudged, OutsideLedger } from '../api';
import { clock, gib, h, meter, pct, sparkline } from '../dom';
import { JobsModel, LedgerModel } from '../model';
import { parkBadgeTitle } from '../park';
import { holderName, IRendered, onLoanBadge, schedBadges } from './common';

export function renderCluster(ledger: LedgerModel, jobs: JobsModel, compact: boolean): IRendered {
  const cluster = ledger.cluster;
  if (!cluster) {
    return {
      signature: 'loading',
      nodes: [h('p', { class: 'jp-DLInfra-empty' }, ledger.error ? 'No data.' : 'Loading…')]
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
            // a parked kernel's GPU nobody borrows is free to lend, not free
            ` ${node.gpus.filter(g => !g.holder && !g.parked_for).length} of ${
              node.gpus.length
            } free`
          )
        ),
        h(
          'div',
          { class: 'jp-DLInfra-gpuGrid' },
          node.gpus.map(gpu => {
            history[gpu.uuid] = ledger.history(gpu.uuid);
            return gpuCard(ledger, jobs, gpu, compact);
          })
        )
      )
    );
  }
  const running = [...ledger.kernels.runningKernelIds()].sort();
  const idle = cluster.nodes.flatMap(n =>
    n.gpus.map(g => {
      const state = g.holder ? ledger.idleOf(g.holder.kernel_id) : null;
      return isJudged(state) ? [state.state, state.reclaim_at] : null;
    })
  );
  const marks = cluster.nodes.flatMap(n =>
    n.gpus.map(g => {
      const a = g.holder ? ledger.allocationById(g.holder.allocation_id) : null;
      const parked = g.parked_for ?? null;
      return [
        a ? [a.borrowed ?? false, a.preempted_for ?? null, a.on_loan ?? false] : null,
        parked
          ? [
              ledger.allocationById(parked.allocation_id)?.park ?? null,
              holderName(ledger, jobs, parked.kernel_id)
            ]
          : null
      ];
    })
  );
  const holderNames = cluster.nodes.flatMap(n =>
    n.gpus.map(g => (g.holder ? holderName(ledger, jobs, g.holder.kernel_id) : null))
  );
  return { signature: JSON.stringify([cluster, history, running, idle, marks, holderNames]), nodes };
}

function gpuCard(
  ledger: LedgerModel,
  jobs: JobsModel,
  gpu: ClusterGpu,
  compact: boolean
): HTMLElement {
  const holder = gpu.holder;
  // a GPU of a parked kernel (anyone's): lent to a job (its holder), or free to lend, until
  // that kernel resumes
  const parked = gpu.parked_for ?? null;
  const parkedName = parked ? whose(ledger, jobs, parked) : null;
  let holderText = parkedName ? `free to lend · parked: ${parkedName}` : 'free';
  if (holder) {
    holderText = whose(ledger, jobs, holder);
  }
  const outside = holder ? null : gpu.outside_ledger ?? null;
  const memPercent =
    typeof gpu.memory_used_bytes === 'number' && gpu.memory_total_bytes > 0
      ? (100 * gpu.memory_used_bytes) / gpu.memory_total_bytes
      : null;
  const mine = holder ? ledger.kernels.runningKernelIds().has(holder.kernel_id) : false;
  const idle = holder ? ledger.idleOf(holder.kernel_id) : null;
  const idleState = isJudged(idle) && idle.state !== 'active' ? idle.state : null;
  const values = ledger.history(gpu.uuid);
  const grant = holder ? ledger.allocationById(holder.allocation_id) : null;
  // its holder is on loan (the grant says so too, when this Lab knows it)
  let marks: HTMLElement[] = [];
  if (grant) {
    marks = schedBadges(grant, parkedName);
  } else if (holder && parked) {
    marks = [onLoanBadge(parkedName)];
  }
  if (parked && !holder) {
    const park = ledger.allocationById(parked.allocation_id)?.park ?? null;
    marks.push(
      h(
        'span',
        {
          class: 'jp-DLInfra-schedBadge jp-DLInfra-parkedMark',
          title: `Parked: ${parkedName}. ${
            park
              ? parkBadgeTitle(park)
              : 'Its GPUs are lent to preemptible jobs until its next cell takes them back'
          }`
        },
        'parked'
      )
    );
  }
  const label = `GPU ${gpu.index}, ${gpu.model}${gpu.simulated ? ', simulated' : ''}, ${
    holder ? `held by ${holderText}` : holderText
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
      // free to lend is not free: only preemptible jobs may borrow it
      class: `jp-DLInfra-gpuCard ${
        holder ? 'jp-mod-held' : parked ? 'jp-mod-lendable' : 'jp-mod-free'
      }${mine ? ' jp-mod-mine' : ''}${
        idleState === 'warned' ? ' jp-mod-idleWarned' : idleState === 'idle' ? ' jp-mod-idle' : ''
      }${outside ? ' jp-mod-outsideLedger' : ''}${parked ? ' jp-mod-parked' : ''}`,
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
      compact
        ? `${gib(gpu.memory_used_bytes)} GiB`
        : `${gib(gpu.memory_used_bytes)} / ${gib(gpu.memory_total_bytes)} GiB`
    ),
    compact
      ? null
      : sparkline(
          values,
          ledger.sparklinePoints,
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

/** Who holds a GPU (or, for `parked_for`, which parked kernel it returns to), in words. */
function whose(ledger: LedgerModel, jobs: JobsModel, holder: Holder): string {
  const name = holderName(ledger, jobs, holder.kernel_id, holder.path, holder.kernel_name);
  return `${holder.user} · ${name}`;
}

/** "in use outside the ledger by mallory": work on a GPU that nobody holds in the ledger. */
function outsideText(outside: OutsideLedger): string {
  const pods = outside.pods ?? [];
  if (pods.length) {
    return `kept for other pods: ${pods.join(', ')}`;
  }
  return `in use outside the ledger${outside.users.length ? ` by ${outside.users.join(', ')}` : ''}`;
}

function outsideTitle(outside: OutsideLedger): string {
  const pods = outside.pods ?? [];
  if (pods.length) {
    return (
      'Pods that jupyter-dlinfra did not start use GPUs of this node, so the ledger grants ' +
      `this one to nobody while they run: ${pods.join(', ')}.`
    );
  }
  const processes = outside.processes.map(
    p => `pid ${p.pid} (${p.user ?? 'owner unknown'}, ${gib(p.memory_used_bytes)} GiB)`
  );
  return (
    'The ledger says this GPU is free, yet it is busy: someone uses it without asking for it ' +
    `(%gpu, a GPU kernel or a job). ${processes.length ? `Processes: ${processes.join('; ')}.` : 'Its processes cannot be listed from here.'}`
  );
}
