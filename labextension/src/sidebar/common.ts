/**
 * What more than one section of the sidebar shows: a request's class tag, its scheduling marks
 * and its estimated start, and what holds a GPU in words.
 */
import { Allocation, jobIdOfKernel } from '../api';
import { clock, h, startsIn } from '../dom';
import { JobsModel, LedgerModel } from '../model';

/** A section's content, and a signature that changes whenever the content would. */
export interface IRendered {
  signature: string;
  nodes: Node[];
}

/** A request's priority class as a small tag, or null when it has none. */
export function classBadge(klass: string | null | undefined): HTMLElement | null {
  if (!klass) {
    return null;
  }
  return h(
    'span',
    { class: 'jp-DLInfra-classBadge', 'data-class': klass, title: `Priority class ${klass}` },
    klass
  );
}

/**
 * The "being preempted", "borrowed" and "on loan" marks of a grant (none for other states);
 * `lentFrom`: the parked kernel whose GPUs a loan runs on, in words, when known (a GPU's
 * `parked_for`: the grant that holds it is then on loan).
 */
export function schedBadges(a: Allocation | null, lentFrom: string | null = null): HTMLElement[] {
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
  if (a.on_loan || lentFrom !== null) {
    marks.push(onLoanBadge(lentFrom));
  }
  return marks;
}

/**
 * The "on loan" mark of a grant on a parked kernel's GPUs; `lentFrom`: that kernel, in words,
 * when known.
 */
export function onLoanBadge(lentFrom: string | null = null): HTMLElement {
  return h(
    'span',
    {
      class: 'jp-DLInfra-schedBadge jp-DLInfra-onLoanBadge',
      title:
        `On loan from ${lentFrom ? `${lentFrom}, ` : ''}a parked kernel: ` +
        'stopped and queued again as soon as that kernel takes its GPUs back'
    },
    'on loan'
  );
}

/**
 * "starts in ~12 min · from recent holding times": the estimate (counted down by
 * `tickEstimates`) and what it rests on, or "start time unknown".
 */
/** When a queued request or job may start, with what the estimate rests on. */
export function estimateNode(
  a: Pick<Allocation, 'estimated_start' | 'estimate_note' | 'estimate_basis'>
): HTMLElement {
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

/** Refresh the "starts in ~N min" of queued requests under `root`; returns how many there are. */
export function tickEstimates(root: HTMLElement): number {
  const shown = root.querySelectorAll<HTMLElement>(
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

/**
 * What holds a GPU, in words: a batch job as "job #N (name)", else the notebook (this Lab's
 * sessions give its path relative to the Lab's root), else the kernelspec or kernel id.
 */
export function holderName(
  ledger: LedgerModel,
  jobs: JobsModel,
  kernelId: string,
  path?: string | null,
  kernelName?: string | null
): string {
  const jobId = jobIdOfKernel(kernelId);
  if (jobId !== null) {
    const job = jobs.jobById(jobId);
    return `job #${jobId}${job ? ` (${job.name})` : ''}`;
  }
  const local = ledger.kernels.sessionOfKernel(kernelId);
  // an empty name (a kernel the ledger knows without its kernelspec) says nothing
  return local?.path || path || kernelName || `kernel ${kernelId.slice(0, 8)}`;
}
