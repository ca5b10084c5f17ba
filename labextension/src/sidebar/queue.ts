/**
 * The sidebar's "Queue" section: every waiting request of the cluster in serving order, with
 * its class, who asked, why it waits and when it may start.
 */
import { gpus, h } from '../dom';
import { JobsModel, LedgerModel } from '../model';
import { classBadge, estimateNode, holderName, IRendered } from './common';

export function renderQueue(ledger: LedgerModel, jobs: JobsModel): IRendered {
  const queue = ledger.queue;
  if (queue.length === 0) {
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
