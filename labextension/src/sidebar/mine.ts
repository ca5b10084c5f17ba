/**
 * The sidebar's "My kernels" section: the requests of this Lab's kernels, granted first, with
 * their GPUs, idle state, hints, and the Release (or Cancel), Keep, Park and Resume buttons.
 */
import { showErrorMessage } from '@jupyterlab/apputils';

import { Allocation, isJudged, jobIdOfKernel } from '../api';
import { basename, gpus, h, meter, pct } from '../dom';
import { idleBadge } from '../idle';
import { IMyAllocation, LedgerModel } from '../model';
import { isAway, parkBadge } from '../park';
import { classBadge, estimateNode, IRendered, schedBadges } from './common';

export function renderMine(ledger: LedgerModel): IRendered {
  const mine = ledger.myAllocations();
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
    mine.map(m => [
      m,
      m.allocation.gpus.map(g => {
        const gpu = ledger.gpu(g.uuid);
        return [gpu?.utilization_percent, gpu?.holder?.allocation_id];
      }),
      ledger.parkPending(m.allocation.kernel_id)
    ])
  );
  return {
    signature,
    nodes: [h('ul', { class: 'jp-DLInfra-list' }, mine.map(m => myAllocation(ledger, m)))]
  };
}

/** Keep a kernel's idle GPUs (its Keep button was pressed). */
export function onKeep(ledger: LedgerModel, keep: HTMLButtonElement): void {
  const kernelId = keep.dataset.kernelId;
  if (!kernelId || keep.disabled) {
    return;
  }
  keep.disabled = true;
  ledger.keep(kernelId).catch(error => {
    keep.disabled = false;
    void showErrorMessage('Cannot keep the GPUs', (error as Error).message ?? String(error));
  });
}

/** Park a kernel's GPUs, or take them back (its Park or Resume button was pressed). */
export function onParkButton(ledger: LedgerModel, button: HTMLButtonElement): void {
  const kernelId = button.dataset.kernelId;
  if (!kernelId || button.disabled) {
    return;
  }
  const resume = button.classList.contains('jp-DLInfra-resume');
  button.disabled = true;
  (resume ? ledger.resume(kernelId) : ledger.park(kernelId)).catch(error => {
    button.disabled = false;
    void showErrorMessage(
      resume ? 'Cannot resume the GPUs' : 'Cannot park the GPUs',
      (error as Error).message ?? String(error)
    );
  });
}

/** Release a grant or cancel a queued request (its button was pressed). */
export function onRelease(ledger: LedgerModel, target: HTMLElement): void {
  const id = Number(target.dataset.allocationId);
  if (!Number.isFinite(id)) {
    return;
  }
  (target as HTMLButtonElement).disabled = true;
  ledger.release(id).catch(error => {
    (target as HTMLButtonElement).disabled = false;
    void showErrorMessage('Cannot release the GPUs', (error as Error).message ?? String(error));
  });
}

function myAllocation(ledger: LedgerModel, entry: IMyAllocation): HTMLElement {
  const a = entry.allocation;
  const name = entry.path ? basename(entry.path) : entry.kernelName ?? `kernel ${a.kernel_id.slice(0, 8)}`;
  const granted = a.state === 'granted';
  // a parked kernel's GPUs are lent or free to lend: their load is not its own
  const away = isAway(a);
  const park = granted ? parkBadge(a) : null;
  const state = granted
    ? away
      ? gpus(a.gpus.length)
      : `${gpus(a.gpus.length)} · ${pct(ledger.meanUtilisation(a))}`
    : `queued #${a.position ?? '?'} for ${gpus(a.count)}${a.model ? ` (${a.model})` : ''}`;
  const marks = schedBadges(a);
  // the server refuses to release a parked grant: Resume comes first
  const button = park ? null : h(
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
  const parking = granted ? parkButton(ledger, a, name) : null;
  const idle = park ? null : entry.idle;
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
      }${park ? ' jp-mod-parked' : ''}`,
      'data-allocation-id': a.id,
      'data-kernel-id': a.kernel_id,
      'data-idle-state': idleState,
      'data-park-state': park ? a.park?.state : null
    },
    h(
      'div',
      { class: 'jp-DLInfra-myHeader' },
      h('span', { class: 'jp-DLInfra-myName', title: entry.path ?? `${name} (${a.kernel_id})` }, name),
      parking,
      button
    ),
    h(
      'div',
      { class: 'jp-DLInfra-myState' },
      state,
      park,
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
            const util = g.utilization_percent ?? ledger.gpu(g.uuid)?.utilization_percent ?? null;
            if (away) {
              // what the GPU does meanwhile, in the room of its model and meter
              return h(
                'li',
                {
                  class: 'jp-DLInfra-myGpu jp-mod-away',
                  'data-uuid': g.uuid,
                  title: `${g.uuid}${g.model ? ` (${g.model})` : ''}`
                },
                h('span', { class: 'jp-DLInfra-gpuIndex' }, `GPU ${g.index ?? '?'}`),
                lentTo(ledger, a, g.uuid)
              );
            }
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

/** The Park button of a grant held now, the Resume button of a parked one, or none. */
function parkButton(ledger: LedgerModel, a: Allocation, name: string): HTMLElement | null {
  const pending = ledger.parkPending(a.kernel_id);
  const state = a.park?.state ?? null;
  const resume = pending === 'resume' || (pending === null && state === 'parked');
  if (!resume && (state !== null || (a.placement && a.placement !== 'ledger'))) {
    // parking, resuming or restoring: the badge says so; pod kernels are not parked here
    return null;
  }
  const count = gpus(a.gpus.length);
  const kind = resume ? 'resume' : 'park';
  let label = resume ? 'Resume' : 'Park';
  if (pending !== null) {
    label = pending === 'park' ? 'Parking…' : 'Resuming…';
  }
  return h(
    'button',
    {
      type: 'button',
      class: `jp-DLInfra-parkButton jp-DLInfra-${kind} jp-Button jp-mod-styled${
        resume ? ' jp-mod-accept' : ''
      }`,
      'data-kernel-id': a.kernel_id,
      'data-focus-key': `${kind}-${a.kernel_id}`,
      disabled: pending !== null,
      'aria-label': resume
        ? `Resume: take the parked ${count} of ${name} back`
        : `Park the ${count} of ${name}: keep its GPU memory in host memory and lend the ` +
          'GPUs until its next cell',
      title: resume
        ? 'Take the GPUs back now (the jobs that borrowed them are stopped)'
        : 'Copy the GPU memory to host memory and lend the GPUs to preemptible jobs; the ' +
          'next cell takes them back, variables intact'
    },
    label
  );
}

/** What a parked grant's GPU does meanwhile: lent to a job, or free to lend. */
function lentTo(ledger: LedgerModel, a: Allocation, uuid: string): HTMLElement {
  const holder = ledger.gpu(uuid)?.holder ?? null;
  if (!holder || holder.allocation_id === a.id) {
    return h(
      'span',
      {
        class: 'jp-DLInfra-lentTo jp-mod-free',
        title: 'Lent to the next preemptible job that asks'
      },
      'free to lend'
    );
  }
  const jobId = jobIdOfKernel(holder.kernel_id);
  const who = jobId !== null ? `job #${jobId}` : `${holder.user}'s kernel`;
  return h(
    'span',
    {
      class: 'jp-DLInfra-lentTo',
      'data-allocation-id': holder.allocation_id,
      title: `On loan to ${who} (${holder.user}): stopped when this kernel takes its GPUs back`
    },
    `on loan to ${who}`
  );
}
