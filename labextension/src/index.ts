/**
 * jupyter-dlinfra: the JupyterLab side of the GPU ledger. One plugin wires the client, the
 * model and the widgets (sidebar, status bar item, notebook toolbar button, notifications).
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, MainAreaWidget, showErrorMessage } from '@jupyterlab/apputils';
import { ILauncher } from '@jupyterlab/launcher';
import { INotebookTracker } from '@jupyterlab/notebook';
import { IRenderMimeRegistry } from '@jupyterlab/rendermime';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';
import { Signal } from '@lumino/signaling';

import { DLInfraClient, IDLInfraClient } from './api';
import { consoleWidget, DLInfraConsole } from './console';
import { gpuIcon, jobIcon, policyIcon } from './icons';
import { JobCommandIDs, registerJobCommands } from './jobs';
import { DLInfraModel } from './model';
import { connectNotifications } from './notifications';
import { DLInfraSidebar, SIDEBAR_ID } from './sidebar';
import { DLInfraStatus, STATUS_ITEM_ID } from './statusbar';
import { openSubmitDialog, SubmitJobToolbarExtension } from './submit';
import { GpuToolbarExtension } from './toolbar';

export * from './api';
export { DLInfraModel } from './model';
export { JobCommandIDs, jobLogId } from './jobs';
export type { ConnectionMode, IMyAllocation, IFailure, IKept } from './model';

const PLUGIN_ID = 'jupyter-dlinfra:plugin';

namespace CommandIDs {
  export const open = 'dlinfra:open';
  export const refresh = 'dlinfra:refresh';
  export const toggleCompact = 'dlinfra:toggle-compact';
}

/** Registered for admins only (GET me says `admin: true`); the server enforces it anyway. */
const OPEN_ADMIN = 'dlinfra:open-admin';
const OPEN_CONSOLE = 'dlinfra:open-console';
/** The console's tabs, in order (the `tab` argument of OPEN_CONSOLE). */
const CONSOLE_TABS = ['overview', 'people', 'policy', 'history'];

const plugin: JupyterFrontEndPlugin<IDLInfraClient> = {
  id: PLUGIN_ID,
  description:
    'GPU ledger sidebar, status bar item, notebook toolbar buttons (GPUs, Submit as job), batch jobs and notifications.',
  autoStart: true,
  provides: IDLInfraClient,
  optional: [
    ISettingRegistry,
    IStatusBar,
    INotebookTracker,
    ILayoutRestorer,
    ICommandPalette,
    IRenderMimeRegistry,
    ILauncher
  ],
  activate: (
    app: JupyterFrontEnd,
    settingRegistry: ISettingRegistry | null,
    statusBar: IStatusBar | null,
    tracker: INotebookTracker | null,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null,
    rendermime: IRenderMimeRegistry | null,
    launcher: ILauncher | null
  ): IDLInfraClient => {
    const client = new DLInfraClient(app.serviceManager.serverSettings);
    const model = new DLInfraModel({ client, serviceManager: app.serviceManager });

    // The job commands first: the sidebar and the notifications run them.
    const jobLogs = registerJobCommands(app, model.parts.jobs);
    restorer?.restore(jobLogs, {
      command: JobCommandIDs.openLog,
      args: view => ({ id: view.jobId }),
      name: view => String(view.jobId)
    });

    const sidebar = new DLInfraSidebar(model, app.commands);
    app.shell.add(sidebar, 'left', { rank: 650 });
    restorer?.add(sidebar, SIDEBAR_ID);
    const openSidebar = () => app.shell.activateById(SIDEBAR_ID);

    if (statusBar && tracker) {
      const item = new DLInfraStatus(model.parts.ledger, tracker, openSidebar);
      const activeChanged = new Signal<DLInfraStatus, void>(item);
      app.shell.currentChanged?.connect(() => activeChanged.emit());
      statusBar.registerStatusItem(STATUS_ITEM_ID, {
        item,
        align: 'left',
        rank: 4,
        isActive: () => !!tracker.currentWidget && app.shell.currentWidget === tracker.currentWidget,
        activeStateChanged: activeChanged
      });
    }

    app.docRegistry.addWidgetExtension('Notebook', new GpuToolbarExtension(model.parts.ledger));
    // After the GPUs button, which it sits next to.
    app.docRegistry.addWidgetExtension('Notebook', new SubmitJobToolbarExtension(app, model));
    connectNotifications(model, app.commands);

    app.commands.addCommand(JobCommandIDs.submit, {
      label: 'Submit Notebook as Job…',
      caption: 'Run the current notebook as a batch job (it is saved first)',
      icon: jobIcon,
      isEnabled: () => !!tracker?.currentWidget,
      execute: async () => {
        const panel = tracker?.currentWidget;
        if (!panel) {
          await showErrorMessage('Cannot submit a job', 'Open a notebook first.');
          return null;
        }
        return openSubmitDialog(app, model, panel);
      }
    });
    app.contextMenu.addItem({
      command: JobCommandIDs.submit,
      selector: '.jp-Notebook',
      rank: 90
    });

    app.commands.addCommand(CommandIDs.open, {
      label: 'Show the GPUs panel',
      icon: gpuIcon,
      execute: openSidebar
    });
    app.commands.addCommand(CommandIDs.refresh, {
      label: 'Refresh the GPU view',
      execute: () => Promise.all([model.refresh(), model.refreshJobs()])
    });
    app.commands.addCommand(CommandIDs.toggleCompact, {
      label: 'Compact GPU view',
      isToggled: () => sidebar.compact,
      execute: async () => {
        if (settings) {
          await settings.set('compact', !sidebar.compact);
        } else {
          sidebar.compact = !sidebar.compact;
        }
      }
    });
    if (palette) {
      for (const command of Object.values(CommandIDs)) {
        palette.addItem({ command, category: 'GPUs' });
      }
      palette.addItem({ command: JobCommandIDs.submit, category: 'GPUs' });
    }

    // The admin console, for admins: ask the server once at start-up.
    let adminConsole: MainAreaWidget<DLInfraConsole> | null = null;
    const openConsole = (tab?: string) => {
      if (!adminConsole || adminConsole.isDisposed) {
        adminConsole = consoleWidget(client, model, rendermime);
        app.shell.add(adminConsole, 'main');
      }
      const index = CONSOLE_TABS.indexOf(tab ?? '');
      if (index >= 0) {
        adminConsole.content.currentIndex = index;
      }
      app.shell.activateById(adminConsole.id);
      return adminConsole;
    };
    const addAdminConsole = () => {
      app.commands.addCommand(OPEN_CONSOLE, {
        label: args => (args.tab ? `GPU Admin Console: ${String(args.tab)}` : 'GPU Admin Console'),
        caption:
          "Who uses the GPUs and how well, everyone's usage, the reclaim and scheduling " +
          'policies and their history (admin)',
        icon: policyIcon,
        execute: args => openConsole(args.tab as string | undefined)
      });
      app.commands.addCommand(OPEN_ADMIN, {
        label: 'Open the GPU policy: reclaim and scheduling (admin)',
        caption:
          'Edit the idle-GPU reclaim policy (and dry-run it over the recorded usage) ' +
          'and the scheduling policy',
        icon: policyIcon,
        execute: () => openConsole('policy')
      });
      palette?.addItem({ command: OPEN_CONSOLE, category: 'GPUs' });
      palette?.addItem({ command: OPEN_ADMIN, category: 'GPUs' });
      launcher?.add({ command: OPEN_CONSOLE, category: 'Other', rank: 50 });
      sidebar.showConsoleLink(() => void openConsole());
    };
    model
      .loadMe()
      .then(me => {
        if (me.admin) {
          addAdminConsole();
        }
      })
      .catch(error => console.info('jupyter-dlinfra: no admin console', error?.message ?? error));

    let settings: ISettingRegistry.ISettings | null = null;
    const applySettings = (s: ISettingRegistry.ISettings) => {
      model.refreshInterval = Number(s.composite.refreshInterval ?? 2);
      model.sparklinePoints = Number(s.composite.sparklinePoints ?? 60);
      sidebar.compact = Boolean(s.composite.compact);
    };
    const start = () => model.start();
    if (settingRegistry) {
      settingRegistry
        .load(PLUGIN_ID)
        .then(s => {
          settings = s;
          applySettings(s);
          s.changed.connect(applySettings);
        })
        .catch(error => console.warn('jupyter-dlinfra: cannot load settings', error))
        .then(start, start);
    } else {
      start();
    }

    return client;
  }
};

export default plugin;
