/**
 * The sidebar's "Queue" section: the waiting requests of the cluster in serving order, with
 * their class, who asked, why they wait and when they may start. A long queue shows its first
 * page and how many more wait, with "Show more" to list the next page too.
 */
import { showErrorMessage } from '@jupyterlab/apputils';

import { gpus, h } from '../dom';
import { JobsModel, LedgerModel, MAX_QUEUE_SHOWN, QUEUE_PAGE } from '../model';
import { classBadge, estimateNode, holderName, IRendered } from './common';

export function renderQueue(ledger: LedgerModel, jobs: JobsModel): IRendered {
  const queue = ledger.queue;
  const waiting = ledger.queueLength;
  if (waiting === 0) {
    return { signature: 'empty', nodes: [h('p', { class: 'jp-DLInfra-empty' }, 'No request waits.')] };
  }
  const nodesShown = new Set(queue.map(a => a.node)).size > 1;
  const rows = queue.map(a => {
    const session = ledger.kernels.sessionOfKernel(a.kernel_id);
    const who = `${a.user} · ${holderName(ledger, jobs, a.kernel_id)}`;
    return {
      a,
      who,
      mine: session !== null
    };
  });
  const signature = JSON.stringify([
    waiting,
    ledger.queueExtended,
    ...rows.map(r => [
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
  ]);
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
  const more = moreLine(ledger, queue.length, waiting);
  return { signature, nodes: more ? [list, more] : [list] };
}

/** "and 9,950 more waiting", with Show more (the next page) and, once used, Show fewer. */
function moreLine(ledger: LedgerModel, shown: number, waiting: number): HTMLElement | null {
  const more = waiting - shown;
  if (more <= 0 && !ledger.queueExtended) {
    return null;
  }
  const button = (kind: 'More' | 'Fewer', label: string, title: string) =>
    h(
      'button',
      {
        type: 'button',
        class: `jp-DLInfra-queue${kind} jp-Button jp-mod-styled jp-mod-reject`,
        'data-focus-key': `queue${kind}`,
        title
      },
      label
    );
  return h(
    'div',
    { class: 'jp-DLInfra-queueMoreLine' },
    more > 0
      ? h(
          'span',
          { class: 'jp-DLInfra-empty jp-DLInfra-queueRest', 'data-rest': more },
          `and ${more.toLocaleString()} more waiting`
        )
      : null,
    more > 0 && shown < MAX_QUEUE_SHOWN
      ? button('More', 'Show more', `List the next ${Math.min(QUEUE_PAGE, more)} waiting requests too`)
      : null,
    ledger.queueExtended
      ? button('Fewer', 'Show fewer', `List the first ${QUEUE_PAGE} waiting requests only`)
      : null
  );
}

/** List the next page of the queue (its Show more button was pressed). */
export function onQueueMore(ledger: LedgerModel, button: HTMLButtonElement): void {
  if (button.disabled) {
    return;
  }
  button.disabled = true;
  ledger.showMoreQueue().catch(error => {
    button.disabled = false;
    void showErrorMessage('Cannot read the queue', (error as Error).message ?? String(error));
  });
}
