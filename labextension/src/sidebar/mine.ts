/**
 * The sidebar's "My kernels" section: the requests of this Lab's kernels, granted first, with
 * their GPUs, idle state, hints, and the Release (or Cancel) and Keep buttons.
 */
import { showErrorMessage } from '@jupyterlab/apputils';

import { isJudged } from '../api';
import { basename, gpus, h, meter, pct } from '../dom';
import { idleBadge } from '../idle';
import { IMyAllocation, LedgerModel } from '../model';
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
    mine.map(m => [m, m.allocation.gpus.map(g => ledger.gpu(g.uuid)?.utilization_percent)])
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
  const state = granted
    ? `${gpus(a.gpus.length)} · ${pct(ledger.meanUtilisation(a))}`
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
            const util = g.utilization_percent ?? ledger.gpu(g.uuid)?.utilization_percent ?? null;
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
