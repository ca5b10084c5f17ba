/**
 * The admin console, in the main area: Overview (the cluster's week and its GPUs now), People
 * (everyone's usage, sortable, with each person's detail), Policy (the reclaim and scheduling
 * forms) and History (the audit trail). Opened by a command (palette, launcher, the sidebar's
 * link), for admins only; the server checks every call again.
 */
import { MainAreaWidget } from '@jupyterlab/apputils';
import { IRenderMimeRegistry } from '@jupyterlab/rendermime';
import { Message } from '@lumino/messaging';
import { TabPanel, Widget } from '@lumino/widgets';

import { DLInfraAdminPanel } from '../admin/panel';
import { IDLInfraClient } from '../api';
import { policyIcon } from '../icons';
import { DLInfraModel } from '../model';
import { HistoryTab } from './history';
import { OverviewTab } from './overview';
import { PeopleTab } from './people';

export const CONSOLE_ID = 'dlinfra-console';

export class DLInfraConsole extends TabPanel {
  constructor(client: IDLInfraClient, model: DLInfraModel, rendermime: IRenderMimeRegistry | null) {
    super();
    this.addClass('jp-DLInfra-console');
    this.overview = new OverviewTab(client, model.parts.ledger, rendermime);
    this.people = new PeopleTab(client);
    this.policy = new DLInfraAdminPanel(model.parts.admin);
    this.policy.title.label = 'Policy';
    this.history = new HistoryTab(model.parts.admin);
    for (const tab of [this.overview, this.people, this.policy, this.history]) {
      this.addWidget(tab);
    }
    this.tabBar.node.setAttribute('aria-label', 'Admin console');
    this.currentChanged.connect((_, { currentWidget }) => void this._refresh(currentWidget));
  }

  readonly overview: OverviewTab;
  readonly people: PeopleTab;
  readonly policy: DLInfraAdminPanel;
  readonly history: HistoryTab;

  // read when shown (in the DOM, so that charts get their width), not before
  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    requestAnimationFrame(() => void this.refresh());
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    void this.refresh();
  }

  /** Read what the tab shown now shows. */
  refresh(): Promise<void> {
    return this._refresh(this.currentWidget);
  }

  private async _refresh(tab: Widget | null): Promise<void> {
    if (tab === this.overview) {
      await this.overview.refresh();
    } else if (tab === this.people) {
      await this.people.refresh();
    } else if (tab === this.policy) {
      await this.policy.load();
    } else if (tab === this.history) {
      await this.history.refresh();
    }
  }
}

/** The console in a main-area widget with its toolbar-less frame. */
export function consoleWidget(
  client: IDLInfraClient,
  model: DLInfraModel,
  rendermime: IRenderMimeRegistry | null
): MainAreaWidget<DLInfraConsole> {
  const content = new DLInfraConsole(client, model, rendermime);
  const widget = new MainAreaWidget({ content });
  widget.id = CONSOLE_ID;
  widget.title.label = 'GPU admin console';
  widget.title.icon = policyIcon;
  widget.title.closable = true;
  return widget;
}
