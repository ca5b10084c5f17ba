/**
 * The console's History: the audit trail of policy changes, the reclaim policy's and the
 * scheduling policy's together, newest first: when, who, what, from what to what.
 */
import { Widget } from '@lumino/widgets';

import { PolicyChange } from '../api';
import { h } from '../dom';
import { AdminModel } from '../model/admin';

function shown(value: unknown): string {
  if (value === null || value === undefined) {
    return '–';
  }
  return typeof value === 'string' ? value : JSON.stringify(value);
}

export class HistoryTab extends Widget {
  constructor(admin: AdminModel) {
    super();
    this.id = 'dlinfra-console-history';
    this.title.label = 'History';
    this.addClass('jp-DLInfra-consoleTab');
    this._admin = admin;
    admin.policyChanged.connect(this._draw, this);
    admin.schedulingChanged.connect(this._draw, this);
  }

  async refresh(): Promise<void> {
    await Promise.allSettled([this._admin.loadPolicy(), this._admin.loadScheduling()]);
    this._draw();
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._admin.policyChanged.disconnect(this._draw, this);
    this._admin.schedulingChanged.disconnect(this._draw, this);
    super.dispose();
  }

  private _draw(): void {
    const changes: (PolicyChange & { policy: string })[] = [
      ...(this._admin.policy?.changes ?? []).map(c => ({ ...c, policy: 'reclaim' })),
      ...(this._admin.scheduling?.changes ?? []).map(c => ({ ...c, policy: 'scheduling' }))
    ].sort((a, b) => String(b.at).localeCompare(String(a.at)));
    const rows = changes.map(c =>
      h(
        'tr',
        { class: 'jp-DLInfra-historyRow', 'data-policy': c.policy, 'data-field': c.field },
        h('td', {}, String(c.at).replace('T', ' ').slice(0, 19)),
        h('td', {}, c.who),
        h('td', {}, c.policy),
        h('td', {}, c.field),
        h('td', { class: 'jp-DLInfra-historyOld' }, shown(c.old)),
        h('td', { class: 'jp-DLInfra-historyNew' }, shown(c.new))
      )
    );
    this.node.replaceChildren(
      h(
        'table',
        { class: 'jp-DLInfra-historyTable' },
        h('caption', {}, 'Changes to the policies, newest first'),
        h(
          'thead',
          {},
          h('tr', {}, ...['When (UTC)', 'Who', 'Policy', 'Field', 'Was', 'Became'].map(t => h('th', { scope: 'col' }, t)))
        ),
        h(
          'tbody',
          {},
          rows.length ? rows : h('tr', {}, h('td', { colspan: 6 }, 'No change yet: the configured policies apply.'))
        )
      )
    );
  }

  private _admin: AdminModel;
}
