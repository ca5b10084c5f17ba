/**
 * Batch jobs in the Lab: the commands that open a job's log, outputs and report, cancel and
 * re-run jobs, and the log viewer `dlinfra-job-log-<id>` that follows a job's log live. The
 * sidebar's Jobs section and the notifications call these commands.
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { Notification, showErrorMessage, WidgetTracker } from '@jupyterlab/apputils';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import {
  DLInfraApiError,
  isActiveJob,
  isJobGroup,
  Job,
  JobOutputFormat,
  JobLogChunk,
  JobState,
  JobSubmission
} from './api';
import { duration, h } from './dom';
import { jobIcon } from './icons';
import { JobsModel } from './model';

export namespace JobCommandIDs {
  /** Submit the current notebook as a batch job (the submit dialog). */
  export const submit = 'dlinfra:submit-job';
  /** Open the log viewer of a job: args `{id}`. */
  export const openLog = 'dlinfra:open-job-log';
  /** Open a job's output in the Lab: args `{id, format: 'notebook' | 'html' | 'script'}`. */
  export const openOutput = 'dlinfra:open-job-output';
  /** Cancel a job: args `{id}`. */
  export const cancel = 'dlinfra:cancel-job';
  /** Run a job again: args `{id}`. */
  export const rerun = 'dlinfra:rerun-job';
}

/** The id of a job's log viewer in the main area. */
export function jobLogId(jobId: number): string {
  return `dlinfra-job-log-${jobId}`;
}

/** Seconds between log reads while the job writes; reads follow at once while text is left. */
const LOG_POLL_MS = 1000;
/** Slower while the job waits to start. */
const LOG_QUEUED_POLL_MS = 2500;
const LOG_MAX_BACKOFF_MS = 30_000;
/** Within this many pixels of the end, the view follows new text. */
const STICK_PX = 24;

/** The log viewer of one job: reads the log from offsets until it is complete. */
export class JobLogView extends Widget {
  constructor(model: JobsModel, jobId: number) {
    super();
    this._model = model;
    this.jobId = jobId;
    this.id = jobLogId(jobId);
    this.addClass('jp-DLInfra-jobLogView');
    this.node.dataset.jobId = String(jobId);
    this.title.icon = jobIcon;
    this.title.closable = true;
    this._name = h('span', { class: 'jp-DLInfra-jobLogName' });
    this._state = h('span', { class: 'jp-DLInfra-jobLogState' });
    this._status = h('span', { class: 'jp-DLInfra-jobLogStatus', role: 'status' });
    this._error = h('div', { class: 'jp-DLInfra-jobLogError', role: 'alert', hidden: true });
    this._text = h('pre', {
      class: 'jp-DLInfra-jobLogText',
      tabindex: 0,
      'aria-label': `Log of job ${jobId}`
    });
    this._text.addEventListener('scroll', this._onScroll);
    // A distributed job's ranks: the job's log (the launcher's and rank 0's) or one rank's own.
    this._rankSelect = h('select', {
      class: 'jp-DLInfra-jobLogRank jp-mod-styled',
      'aria-label': 'Which log to show',
      hidden: true
    });
    this._rankSelect.addEventListener('change', this._onRank);
    this.node.append(
      h(
        'div',
        { class: 'jp-DLInfra-jobLogHeader' },
        this._name,
        this._state,
        this._rankSelect,
        this._status
      ),
      this._error,
      this._text
    );
    model.changed.connect(this._renderHeader, this);
    this._renderHeader();
    void this._poll();
  }

  readonly jobId: number;

  /** Whether the whole log has been read (the job ended and nothing is left). */
  get complete(): boolean {
    return this._complete;
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    if (this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
    }
    this._text.removeEventListener('scroll', this._onScroll);
    this._rankSelect.removeEventListener('change', this._onRank);
    this._model.changed.disconnect(this._renderHeader, this);
    super.dispose();
  }

  /** Read on at once (when the log was complete, from where it stopped). */
  refresh(): void {
    if (this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
    }
    this._complete = false;
    this._stopped = false;
    void this._poll();
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    if (this._stick) {
      this._text.scrollTop = this._text.scrollHeight;
    }
  }

  private async _poll(): Promise<void> {
    this._timer = null;
    if (this.isDisposed || this._complete || this._reading) {
      return;
    }
    this._reading = true;
    let delay: number;
    const shown = this._shown;
    try {
      const chunk = await this._model.client.jobLog(this.jobId, this._offset, this._rank);
      if (this.isDisposed) {
        return;
      }
      // Another rank's log chosen meanwhile: this answer is not for it; read that one now.
      delay = shown === this._shown ? this._take(chunk) : 0;
    } catch (error) {
      if (this.isDisposed) {
        return;
      }
      delay = shown === this._shown ? this._failed(error) : 0;
    } finally {
      this._reading = false;
    }
    this._renderHeader();
    if (!this._complete && !this.isDisposed) {
      this._timer = window.setTimeout(() => void this._poll(), delay);
    }
  }

  /** Show a piece of the log; the delay before the next read. */
  private _take(chunk: JobLogChunk): number {
    this._failures = 0;
    this._setError(null);
    if (chunk.size < this._offset) {
      // The log started over: read it again from its beginning.
      this._text.replaceChildren();
      this._offset = 0;
      return 0;
    }
    if (chunk.text) {
      this._append(chunk.text);
    }
    this._offset = chunk.next_offset;
    this._size = chunk.size;
    this._logState = chunk.state;
    this._complete = chunk.complete;
    if (chunk.next_offset < chunk.size) {
      return 0;
    }
    return chunk.state === 'queued' ? LOG_QUEUED_POLL_MS : LOG_POLL_MS;
  }

  /** Say why a read failed; the delay before the next one. */
  private _failed(error: unknown): number {
    const message = (error as Error).message ?? String(error);
    if (error instanceof DLInfraApiError && error.status >= 400 && error.status < 500) {
      // No such job, or not the user's: reading again will not help.
      this._setError(message);
      this._complete = true;
      this._stopped = true;
      return LOG_POLL_MS;
    }
    this._failures++;
    const delay = Math.min(LOG_MAX_BACKOFF_MS, LOG_POLL_MS * 2 ** this._failures);
    this._setError(`${message} (trying again in ${Math.round(delay / 1000)} s)`);
    return delay;
  }

  /** Show the job's log (`''`) or rank R's own, from its beginning. */
  private _onRank = (): void => {
    const value = this._rankSelect.value;
    this._rank = value === '' ? null : Number(value);
    this._shown++;
    if (this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
    }
    this._text.replaceChildren();
    this._text.setAttribute(
      'aria-label',
      this._rank === null ? `Log of job ${this.jobId}` : `Log of rank ${this._rank} of job ${this.jobId}`
    );
    this._offset = 0;
    this._size = 0;
    this._complete = false;
    this._stopped = false;
    this._stick = true;
    this._setError(null);
    // a read under way sees the change and reads the chosen log when it returns
    if (!this._reading) {
      void this._poll();
    }
  };

  private _renderRanks(worldSize: number, roles: Job['roles']): void {
    if (this._rankSelect.options.length === worldSize + 1) {
      return;
    }
    // A job with roles: "rank 3 (worker 2)".
    const labels: string[] = [];
    for (const role of roles ?? []) {
      for (let replica = 0; replica < role.replicas; replica++) {
        labels.push(`${role.name} ${replica}`);
      }
    }
    this._rankSelect.replaceChildren(
      h('option', { value: '' }, 'job (rank 0 and the launcher)'),
      ...Array.from({ length: worldSize }, (_, r) =>
        h('option', { value: String(r) }, labels[r] ? `rank ${r} (${labels[r]})` : `rank ${r}`)
      )
    );
    this._rankSelect.value = this._rank === null ? '' : String(this._rank);
    this._rankSelect.hidden = false;
  }

  private _append(text: string): void {
    this._text.append(document.createTextNode(text));
    if (this._stick) {
      this._text.scrollTop = this._text.scrollHeight;
    }
  }

  private _onScroll = (): void => {
    const pre = this._text;
    if (pre.clientHeight === 0) {
      return; // hidden: keep following as before
    }
    this._stick = pre.scrollHeight - pre.scrollTop - pre.clientHeight <= STICK_PX;
  };

  private _setError(message: string | null): void {
    this._error.hidden = !message;
    this._error.textContent = message ?? '';
  }

  private _renderHeader(): void {
    if (this.isDisposed) {
      return;
    }
    const job = this._model.jobById(this.jobId);
    if (job?.world_size) {
      this._renderRanks(job.world_size, job.roles);
    }
    const state: JobState | null = job?.state ?? this._logState;
    const name = job ? `${job.name} (job #${job.id})` : `Job #${this.jobId}`;
    this.title.label = job ? `Log: ${job.name} #${job.id}` : `Log: job ${this.jobId}`;
    this.title.caption = job ? `Log of job ${job.id}: ${job.path}` : `Log of job ${this.jobId}`;
    this._name.textContent = name;
    this._name.title = job ? `${name}: ${job.path}` : name;
    this._state.textContent = state ?? '';
    this._state.hidden = !state;
    if (state) {
      this._state.dataset.state = state;
    }
    const size = formatBytes(this._size);
    let status: string;
    if (this._stopped) {
      status = 'stopped';
    } else if (this._complete) {
      status = `complete · ${size}`;
    } else if (state === 'queued' && this._size === 0) {
      status = 'waiting for the job to start…';
    } else {
      status = `following · ${size}`;
    }
    this._status.textContent = status;
    this.node.dataset.complete = String(this._complete);
    // A job the list says ended may have written its last lines since: read them.
    if (job && !isActiveJob(job.state) && !this._complete && !this._reading && this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = window.setTimeout(() => void this._poll(), 0);
    }
  }

  private _model: JobsModel;
  private _name: HTMLElement;
  private _state: HTMLElement;
  private _status: HTMLElement;
  private _error: HTMLElement;
  private _text: HTMLPreElement;
  private _rankSelect: HTMLSelectElement;
  /** The rank whose own log is shown; null: the job's. */
  private _rank: number | null = null;
  /** Counts the changes of the log shown: a read begun before one is not shown. */
  private _shown = 0;
  private _offset = 0;
  private _size = 0;
  private _logState: JobState | null = null;
  private _complete = false;
  private _stopped = false;
  private _reading = false;
  private _failures = 0;
  private _stick = true;
  private _timer: number | null = null;
}

function formatBytes(bytes: number): string {
  if (bytes < 1024) {
    return `${bytes} B`;
  }
  if (bytes < 1024 ** 2) {
    return `${(bytes / 1024).toFixed(1)} KiB`;
  }
  return `${(bytes / 1024 ** 2).toFixed(1)} MiB`;
}

/** Words for a job's output kinds. */
const OUTPUT_WORDS: Record<JobOutputFormat, string> = {
  notebook: 'executed notebook',
  html: 'HTML report',
  script: 'script',
  log: 'log'
};

function jobIdArg(args: { [key: string]: unknown }): number {
  const id = Number(args.id);
  if (!Number.isInteger(id) || id <= 0) {
    throw new Error(`a job id is needed, not ${JSON.stringify(args.id)}`);
  }
  return id;
}

function message(error: unknown): string {
  return (error as Error)?.message ?? String(error);
}

/**
 * Tell the user a submission was made: "Job N submitted" (or the jobs of a sweep), with an
 * "Open log" action.
 */
export function notifySubmitted(
  app: JupyterFrontEnd,
  answer: JobSubmission,
  rerunOf: number | null = null
): void {
  const jobs = isJobGroup(answer) ? answer.jobs : [answer];
  if (jobs.length === 0) {
    Notification.warning('The sweep made no job.', { autoClose: 8000 });
    return;
  }
  const first = jobs[0];
  let text: string;
  if (isJobGroup(answer)) {
    const ids = jobs.map(j => j.id);
    text = `Jobs ${ids.join(', ')} submitted (a sweep of ${jobs.length})`;
  } else {
    text = `Job ${first.id} submitted`;
    if (rerunOf !== null) {
      text += ` (a re-run of job ${rerunOf})`;
    }
  }
  if (first.reason && !isJobGroup(answer)) {
    text += `: ${first.reason}`;
  }
  Notification.success(text, {
    autoClose: 10_000,
    actions: [
      {
        label: 'Open log',
        caption: `Follow the log of job ${first.id}`,
        displayType: 'accent',
        callback: () => void app.commands.execute(JobCommandIDs.openLog, { id: first.id })
      }
    ]
  });
}

/**
 * Register the job commands (log, output, cancel, re-run); the submit command is registered
 * with the notebook tracker in the plugin. Log viewers are tracked (and restored with the
 * layout when a restorer is given).
 */
export function registerJobCommands(
  app: JupyterFrontEnd,
  model: JobsModel
): WidgetTracker<JobLogView> {
  const tracker = new WidgetTracker<JobLogView>({ namespace: 'dlinfra-job-log' });

  app.commands.addCommand(JobCommandIDs.openLog, {
    label: args => (args.id ? `Open the Log of Job ${args.id}` : 'Open a Job Log'),
    caption: 'Follow the log of a batch job live',
    icon: jobIcon,
    execute: async args => {
      const id = jobIdArg(args);
      let view = tracker.find(w => w.jobId === id);
      if (!view || view.isDisposed) {
        view = new JobLogView(model, id);
        app.shell.add(view, 'main');
        await tracker.add(view);
      } else if (!view.complete) {
        view.refresh();
      }
      app.shell.activateById(view.id);
      return view;
    }
  });

  app.commands.addCommand(JobCommandIDs.openOutput, {
    label: args => {
      const format = (args.format as JobOutputFormat) ?? 'notebook';
      return `Open the ${OUTPUT_WORDS[format] ?? format} of Job ${args.id ?? ''}`.trim();
    },
    caption: "Open a batch job's output in the Lab",
    execute: async args => {
      const id = jobIdArg(args);
      const format = ((args.format as string) || 'notebook') as JobOutputFormat;
      if (!(format in OUTPUT_WORDS)) {
        throw new Error(`unknown output format ${JSON.stringify(format)}`);
      }
      let job = model.jobById(id);
      if (!job || !job.outputs[format]) {
        try {
          job = await model.client.job(id);
        } catch (error) {
          await showErrorMessage('Cannot open the job output', message(error));
          return;
        }
      }
      const path = job.outputs[format];
      if (!path) {
        Notification.warning(
          `Job ${id} has no ${OUTPUT_WORDS[format]} yet (it is ${job.state}).`,
          { autoClose: 8000 }
        );
        return;
      }
      if (format === 'log') {
        return app.commands.execute(JobCommandIDs.openLog, { id });
      }
      const open: { path: string; factory?: string } = { path };
      if (format === 'html' && app.docRegistry.getWidgetFactory('HTML Viewer')) {
        open.factory = 'HTML Viewer';
      }
      return app.commands.execute('docmanager:open', open);
    }
  });

  app.commands.addCommand(JobCommandIDs.cancel, {
    label: args => (args.id ? `Cancel Job ${args.id}` : 'Cancel a Job'),
    caption: 'Cancel a batch job: a queued one ends at once, a running one shortly after',
    execute: async args => {
      const id = jobIdArg(args);
      try {
        return await model.cancelJob(id);
      } catch (error) {
        await showErrorMessage(`Cannot cancel job ${id}`, message(error));
        return null;
      }
    }
  });

  app.commands.addCommand(JobCommandIDs.rerun, {
    label: args => (args.id ? `Re-run Job ${args.id}` : 'Re-run a Job'),
    caption: 'Submit a batch job again, with the same notebook and fields',
    execute: async args => {
      const id = jobIdArg(args);
      try {
        const job = await model.rerunJob(id);
        notifySubmitted(app, job, id);
        return job;
      } catch (error) {
        await showErrorMessage(`Cannot re-run job ${id}`, message(error));
        return null;
      }
    }
  });

  return tracker;
}

/** A job's run time for people ("running 2 min 5 s" while it runs). */
export function jobDurationText(model: JobsModel, job: Job, now = Date.now()): string {
  const seconds = model.jobDuration(job, now);
  if (seconds === null) {
    return '';
  }
  return duration(seconds, '0 s');
}
