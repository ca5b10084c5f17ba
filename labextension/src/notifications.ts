/**
 * Notifications through JupyterLab's Notification API: notices from the live stream, grants
 * and failures of this Lab's requests, and warnings with action buttons.
 */
import { Notification } from '@jupyterlab/apputils';

import { IWarning, Notice } from './api';
import { basename, gpus } from './dom';
import { DLInfraModel, IFailure, IMyAllocation } from './model';

const AUTO_CLOSE_MS = 8000;

function notify(
  level: 'info' | 'warning' | 'error',
  message: string,
  actions: Notification.IAction[] = []
): string {
  const options = {
    autoClose: actions.length > 0 || level === 'error' ? (false as const) : AUTO_CLOSE_MS,
    actions
  };
  switch (level) {
    case 'error':
      return Notification.error(message, options);
    case 'warning':
      return Notification.warning(message, options);
    default:
      return Notification.info(message, options);
  }
}

function failed(what: string, error: unknown): void {
  const message = (error as Error)?.message ?? String(error);
  Notification.error(`${what}: ${message}`, { autoClose: false });
}

/** Connect the model's notices, grants, failures and warnings to notifications. */
export function connectNotifications(model: DLInfraModel): void {
  model.noticeReceived.connect((_, notice: Notice) => {
    const actions: Notification.IAction[] = (notice.actions ?? []).map(action => ({
      label: action.label,
      caption: action.label,
      displayType: 'accent',
      callback: () => {
        model.noticeAction(notice, action.id).catch(error => failed(`${action.label} failed`, error));
      }
    }));
    notify(notice.level, notice.message, actions);
  });

  model.granted.connect((_, entry: IMyAllocation) => {
    const a = entry.allocation;
    const where = entry.path ? basename(entry.path) : `kernel ${a.kernel_id.slice(0, 8)}`;
    const uuids = a.gpus.map(g => g.uuid).join(', ');
    notify('info', `Granted ${gpus(a.gpus.length)} to ${where}: ${uuids}`);
  });

  model.failed.connect((_, entry: IFailure) => {
    const a = entry.allocation;
    const where = entry.path ? basename(entry.path) : `kernel ${a.kernel_id.slice(0, 8)}`;
    notify(
      'error',
      `The request of ${where} for ${gpus(a.count)} was cancelled: ${a.end_reason ?? 'no reason given'}`
    );
  });

  model.warningRaised.connect((_, warning: IWarning) => {
    const actions: Notification.IAction[] = (warning.actions ?? []).map(action => ({
      label: action.label,
      displayType: 'accent',
      callback: () => {
        model.client
          .postAction(action.url, action.body)
          .catch(error => failed(`${action.label} failed`, error));
      }
    }));
    notify(warning.level ?? 'warning', warning.message, actions);
  });
}
