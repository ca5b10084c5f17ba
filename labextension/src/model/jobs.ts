/**
 * The user's batch jobs: read again when the ledger moves (at most once a second), changed at
 * once by a submit, cancel or re-run, and the end of a job seen in the list while the live
 * stream is away (with the stream, a `job_ended` notice says so).
 */
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

import {
  DLInfraApiError,
  IDLInfraClient,
  isActiveJob,
  isJobGroup,
  Job,
  JobBackends,
  JobRequest,
  JobSubmission
} from '../api';
import { ISnapshotApplied, LedgerModel } from './ledger';

/** Jobs are fetched at most this often (a burst of snapshots makes one fetch). */
const JOBS_MIN_INTERVAL_MS = 1_000;

export class JobsModel implements IDisposable {
  constructor(client: IDLInfraClient, ledger: LedgerModel) {
    this.client = client;
    this._ledger = ledger;
    ledger.applied.connect(this._onApplied, this);
  }

  readonly client: IDLInfraClient;

  /** The user's batch jobs changed (see `jobs`). */
  get changed(): ISignal<this, void> {
    return this._changed;
  }
  /**
   * A job of the user ended while the live stream was not available (with the stream, its
   * `job_ended` notice says so).
   */
  get jobEnded(): ISignal<this, Job> {
    return this._jobEnded;
  }

  /** The user's jobs, newest first (empty before the first answer). */
  get jobs(): Job[] {
    return this._jobs;
  }
  /** Whether the server runs batch jobs: null before it answered, false when it does not. */
  get available(): boolean | null {
    return this._available;
  }
  /** The last error met while reading the jobs, or null. */
  get error(): string | null {
    return this._error;
  }
  /** When the jobs were last read (ms since epoch), or null. */
  get fetchedAt(): number | null {
    return this._fetchedAt;
  }
  get isDisposed(): boolean {
    return this._isDisposed;
  }

  /** The user's queued and running jobs, newest first. */
  activeJobs(): Job[] {
    return this._jobs.filter(j => isActiveJob(j.state));
  }

  /** One of the user's jobs by id, when known. */
  jobById(jobId: number): Job | null {
    return this._jobs.find(j => j.id === jobId) ?? null;
  }

  /**
   * How long a job has run, in seconds, at `now` (ms since epoch): the server's figure, counted
   * on from when it was read for a running job; null before it starts.
   */
  jobDuration(job: Job, now = Date.now()): number | null {
    if (typeof job.duration_s !== 'number') {
      return null;
    }
    if (job.state === 'running' && this._fetchedAt !== null) {
      return job.duration_s + Math.max(0, now - this._fetchedAt) / 1000;
    }
    return job.duration_s;
  }

  /**
   * Read the user's jobs now (GET jobs?state=all). A call while one is under way waits for it
   * and reads again after it.
   */
  refresh(): Promise<void> {
    if (this._inFlight) {
      this._again = true;
      return this._inFlight;
    }
    if (this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
    }
    this._inFlight = this._fetch().finally(() => {
      this._inFlight = null;
      if (this._again) {
        this._again = false;
        this.refreshSoon();
      }
    });
    return this._inFlight;
  }

  /** Read the jobs soon: at once, or when the last read is a second old. */
  refreshSoon(): void {
    if (this._timer !== null || this._isDisposed || this._available === false) {
      return;
    }
    if (this._inFlight) {
      this._again = true;
      return;
    }
    const wait = Math.max(0, this._lastFetch + JOBS_MIN_INTERVAL_MS - Date.now());
    this._timer = window.setTimeout(() => {
      this._timer = null;
      void this.refresh();
    }, wait);
  }

  /** GET backends: where jobs can run, and the default. */
  async backends(): Promise<JobBackends> {
    return this.client.backends();
  }

  /**
   * Submit a notebook as a batch job (POST jobs): the job, or a sweep's group. Rejects with
   * the server's message (400 says what is wrong with the notebook or the fields).
   */
  async submitJob(request: JobRequest): Promise<JobSubmission> {
    const answer = await this.client.submitJob(request);
    this._available = true;
    this._upsert(isJobGroup(answer) ? answer.jobs : [answer]);
    return answer;
  }

  /** Cancel a job (DELETE jobs/<id>): a queued one ends at once, a running one shortly after. */
  async cancelJob(jobId: number): Promise<Job> {
    const job = await this.client.cancelJob(jobId);
    this._upsert([job]);
    return job;
  }

  /** Run a job again with the same notebook and fields (POST jobs/<id>/rerun): the new job. */
  async rerunJob(jobId: number): Promise<Job> {
    const job = await this.client.rerunJob(jobId);
    this._upsert([job]);
    return job;
  }

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    if (this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
    }
    Signal.clearData(this);
  }

  private _onApplied(_: LedgerModel, { live }: ISnapshotApplied): void {
    if (live) {
      // The ledger's version changes with every job change, and a snapshot follows.
      this.refreshSoon();
    } else if (this._ledger.mode !== 'stream' && (!this._loaded || this.activeJobs().length > 0)) {
      // Without the stream nothing says when jobs change: follow them while some are active.
      this.refreshSoon();
    }
  }

  private async _fetch(): Promise<void> {
    const generation = this._generation;
    this._lastFetch = Date.now();
    try {
      const jobs = await this.client.jobs('all');
      if (this._isDisposed) {
        return;
      }
      if (generation !== this._generation) {
        // A submit, cancel or re-run answered meanwhile: this list may predate it.
        this._again = true;
        return;
      }
      this._available = true;
      this._error = null;
      this._set(jobs);
    } catch (error) {
      if (this._isDisposed) {
        return;
      }
      if (
        error instanceof DLInfraApiError &&
        (error.reason === 'no_jobs' || (error.status === 404 && error.reason === 'not_found'))
      ) {
        // This server runs no batch jobs (or predates them): stop asking.
        this._available = false;
        this._error = null;
        this._jobs = [];
      } else {
        this._error = (error as Error).message ?? String(error);
      }
      this._loaded = true;
      this._signature = '';
      this._changed.emit();
    }
  }

  /** Take a fresh list; tell the listeners when something other than a duration changed. */
  private _set(jobs: Job[]): void {
    const before = new Map(this._jobs.map(j => [j.id, j.state]));
    const first = !this._loaded;
    this._jobs = jobs;
    this._loaded = true;
    this._fetchedAt = Date.now();
    if (!first && this._ledger.mode !== 'stream') {
      for (const job of jobs) {
        const was = before.get(job.id);
        if (was !== undefined && isActiveJob(was) && !isActiveJob(job.state)) {
          this._jobEnded.emit(job);
        }
      }
    }
    const signature = JSON.stringify(
      jobs.map(j => ({ ...j, duration_s: j.state === 'running' ? null : j.duration_s }))
    );
    if (signature !== this._signature) {
      this._signature = signature;
      this._changed.emit();
    }
  }

  /** Apply jobs a submit, cancel or re-run answered, at once; a fresh read follows. */
  private _upsert(jobs: Job[]): void {
    if (this._isDisposed) {
      return;
    }
    this._generation++;
    const byId = new Map(this._jobs.map(j => [j.id, j]));
    for (const job of jobs) {
      byId.set(job.id, job);
    }
    this._jobs = [...byId.values()].sort((a, b) => b.id - a.id);
    this._fetchedAt = Date.now();
    this._signature = '';
    this._changed.emit();
    this.refreshSoon();
  }

  private _ledger: LedgerModel;
  private _jobs: Job[] = [];
  private _loaded = false;
  private _available: boolean | null = null;
  private _error: string | null = null;
  private _fetchedAt: number | null = null;
  private _signature = '';
  private _inFlight: Promise<void> | null = null;
  private _again = false;
  private _timer: number | null = null;
  private _lastFetch = 0;
  private _generation = 0;
  private _isDisposed = false;
  private _changed = new Signal<this, void>(this);
  private _jobEnded = new Signal<this, Job>(this);
}
