/**
 * Notifications through JupyterLab's Notification API: notices from the live stream, grants
 * and failures of this Lab's requests, and warnings with action buttons.
 */
import { Notification } from '@jupyterlab/apputils';
import type { CommandRegistry } from '@lumino/commands';

import { isJudged, IWarning, Job, jobIdOfKernel, Notice } from './api';
import { basename, clock, gpus } from './dom';
import { JobCommandIDs } from './jobs';
import { DLInfraModel, IFailure, IKept, IMyAllocation } from './model';

const AUTO_CLOSE_MS = 8000;

/** How long the notification of a job that did not fail stays (it offers "Open log"). */
const JOB_AUTO_CLOSE_MS = 15000;

function notify(
  level: 'info' | 'warning' | 'error',
  message: string,
  actions: Notification.IAction[] = [],
  autoClose?: number | false
): string {
  const options = {
    autoClose:
      autoClose ?? (actions.length > 0 || level === 'error' ? (false as const) : AUTO_CLOSE_MS),
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

/** The "Open log" action of a job's notification, carried out in the Lab. */
function openLogAction(commands: CommandRegistry, jobId: number): Notification.IAction {
  return {
    label: 'Open log',
    caption: `Open the log of job ${jobId}`,
    displayType: 'accent',
    callback: () => {
      commands
        .execute(JobCommandIDs.openLog, { id: jobId })
        .catch(error => failed('Cannot open the log', error));
    }
  };
}

/**
 * Connect the model's notices, grants, failures and warnings to notifications. With
 * `commands`, the notices of ended jobs offer "Open log".
 */
export function connectNotifications(
  model: DLInfraModel,
  commands: CommandRegistry | null = null
): void {
  /** The idle warnings on screen, by kernel, and whether the model has shown it warned since. */
  const idleWarnings = new Map<string, { id: string; sawWarned: boolean }>();
  const dismissWarning = (kernelId: string) => {
    const shown = idleWarnings.get(kernelId);
    if (shown) {
      idleWarnings.delete(kernelId);
      Notification.dismiss(shown.id);
    }
  };

  model.noticeReceived.connect((_, notice: Notice) => {
    if (notice.kind === 'job_ended') {
      // "Open log" is the Lab's own action: nothing to POST to the server.
      const jobId = jobIdOfKernel(notice.kernel_id);
      notify(
        notice.level,
        notice.message,
        jobId !== null && commands ? [openLogAction(commands, jobId)] : [],
        notice.level === 'error' ? false : JOB_AUTO_CLOSE_MS
      );
      return;
    }
    const actions: Notification.IAction[] = (notice.actions ?? []).map(action => ({
      label: action.label,
      caption:
        action.id === 'keep' ? 'Hold the idle GPUs longer instead of losing them' : action.label,
      displayType: 'accent',
      callback: () => {
        // The toast closes; a keep confirms itself through `model.kept`.
        if (notice.kernel_id) {
          idleWarnings.delete(notice.kernel_id);
        }
        model.noticeAction(notice, action.id).catch(error => failed(`${action.label} failed`, error));
      }
    }));
    if (notice.kind === 'idle_reclaimed' && notice.kernel_id) {
      dismissWarning(notice.kernel_id);
    }
    const id = notify(notice.level, notice.message, actions);
    if (notice.kind === 'idle_warning' && notice.kernel_id) {
      dismissWarning(notice.kernel_id);
      idleWarnings.set(notice.kernel_id, { id, sawWarned: false });
    }
  });

  model.kept.connect((_, kept: IKept) => {
    dismissWarning(kept.kernelId);
    const where = kept.path ? basename(kept.path) : `kernel ${kept.kernelId.slice(0, 8)}`;
    const result = kept.result;
    let message = `Kept the GPUs of ${where}`;
    if (isJudged(result)) {
      if (result.hold_until) {
        message += ` until ${clock(result.hold_until)}`;
      }
      message += ` (${result.keeps_left} keep${result.keeps_left === 1 ? '' : 's'} left).`;
    } else {
      message += '.';
    }
    Notification.success(message, { autoClose: AUTO_CLOSE_MS });
  });

  // A warning whose kernel is busy again (or gone) no longer needs its Keep button.
  model.changed.connect(() => {
    for (const [kernelId, shown] of [...idleWarnings]) {
      const idle = model.idleOf(kernelId);
      const held = model.allocationOfKernel(kernelId)?.state === 'granted';
      if (isJudged(idle) && idle.state === 'warned' && held) {
        shown.sawWarned = true;
      } else if (shown.sawWarned) {
        dismissWarning(kernelId);
      }
    }
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

  // Without the live stream no notice says a job ended: the model sees it in the job list.
  model.jobEnded.connect((_, job: Job) => {
    const level = job.state === 'succeeded' ? 'info' : job.state === 'failed' ? 'error' : 'warning';
    let message = `Job ${job.id} (${job.name}) ${job.state}`;
    if (job.reason) {
      message += `: ${job.reason}`;
    }
    notify(
      level,
      message,
      commands ? [openLogAction(commands, job.id)] : [],
      level === 'error' ? false : JOB_AUTO_CLOSE_MS
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
