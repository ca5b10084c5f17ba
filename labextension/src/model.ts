/**
 * The one model of the extension: it follows the live event stream (falling back to polling
 * the REST API), keeps utilisation history per GPU, knows which allocations belong to this
 * Lab's kernels, and tells the widgets through Lumino signals. Widgets only render it.
 */
import { ServiceManager } from '@jupyterlab/services';
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

import {
  Allocation,
  Cluster,
  ClusterGpu,
  DLInfraApiError,
  FairShare,
  Hint,
  IDLInfraClient,
  isActiveJob,
  isJobGroup,
  IWarning,
  Job,
  JobBackends,
  jobIdOfKernel,
  JobRequest,
  JobSubmission,
  KeepResult,
  KernelIdle,
  Me,
  Notice,
  PolicyDoc,
  PolicyView,
  SchedulingPolicyDoc,
  SchedulingView,
  SimulationResult,
  Snapshot
} from './api';

/** How the model gets its data. */
export type ConnectionMode = 'connecting' | 'stream' | 'polling';

/** An allocation of one of this Lab's kernels, with what the Lab knows of the kernel. */
export interface IMyAllocation {
  allocation: Allocation;
  /** The notebook (session path) the kernel serves, when known. */
  path: string | null;
  /** The session's name or the kernelspec name, when known. */
  kernelName: string | null;
  /** The kernel's idle state, when the reclaim policy has judged it. */
  idle: KernelIdle | null;
  /** Suggestions about how the kernel uses its GPUs. */
  hints: Hint[];
}

/** A successful keep: the kernel's new idle state, and how it was asked for. */
export interface IKept {
  kernelId: string;
  result: KeepResult;
  /** The notebook the kernel serves, when known. */
  path: string | null;
  /** The notice whose Keep button was used, or null (the sidebar's button). */
  noticeId: number | null;
}

/** An allocation whose request failed, with the reason. */
export interface IFailure {
  allocation: Allocation;
  path: string | null;
}

export namespace DLInfraModel {
  export interface IOptions {
    client: IDLInfraClient;
    serviceManager: ServiceManager.IManager;
    /** Seconds between REST polls when the event stream is not available. */
    refreshInterval?: number;
    /** Utilisation samples kept per GPU for the sparklines. */
    sparklinePoints?: number;
  }
}

const MAX_BACKOFF_MS = 60_000;
const FIRST_BACKOFF_MS = 2_000;
/** How long a grant/failure seen in snapshots waits for a matching notice before being reported. */
const NOTICE_GRACE_MS = 1_500;

/** Jobs are fetched at most this often (a burst of snapshots makes one fetch). */
const JOBS_MIN_INTERVAL_MS = 1_000;

/**
 * The fair-share standing is read again at most this often when the queue or the grants changed
 * (a grant, a release, a new request: rank and GPUs held move)...
 */
const FAIRSHARE_MIN_INTERVAL_MS = 1_000;
/** ...and this often otherwise (recent use grows while GPUs are held, and decays). */
const FAIRSHARE_IDLE_INTERVAL_MS = 30_000;

/** Reasons for which an ended request is not a failure: the user or the kernel ended it. */
const USER_END = /released by|kernel shut down|kernel restarted/i;
/** How long notices about a kernel that left this Lab still count as this Lab's (reclaimed). */
const RECENT_KERNEL_MS = 10 * 60_000;

export class DLInfraModel implements IDisposable {
  constructor(options: DLInfraModel.IOptions) {
    this.client = options.client;
    this._services = options.serviceManager;
    this._refreshInterval = Math.max(1, options.refreshInterval ?? 2);
    this._sparklinePoints = Math.max(2, options.sparklinePoints ?? 60);
    this._services.kernels.runningChanged.connect(this._onRunningChanged, this);
    this._services.sessions.runningChanged.connect(this._onRunningChanged, this);
  }

  readonly client: IDLInfraClient;

  /* ---------------------------------------------------------------- signals */

  /** Emitted whenever the data (or the Lab's running kernels) changed. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }
  /** A notice from the stream for one of this Lab's kernels (or for no kernel). */
  get noticeReceived(): ISignal<this, Notice> {
    return this._noticeReceived;
  }
  /** A queued request of this Lab's kernels became granted. */
  get granted(): ISignal<this, IMyAllocation> {
    return this._granted;
  }
  /** A request of this Lab's kernels ended without being granted, not by the user. */
  get failed(): ISignal<this, IFailure> {
    return this._failed;
  }
  /** The connection mode changed (stream, polling, connecting). */
  get modeChanged(): ISignal<this, ConnectionMode> {
    return this._modeChanged;
  }
  /** GPUs of this Lab's kernels were kept (from the sidebar or a notice's Keep button). */
  get kept(): ISignal<this, IKept> {
    return this._kept;
  }
  /** The reclaim policy was (re)read or changed through `loadPolicy` or `savePolicy`. */
  get policyChanged(): ISignal<this, PolicyView> {
    return this._policyChanged;
  }
  /** The scheduling policy was (re)read or changed (`loadScheduling`, `saveScheduling`). */
  get schedulingChanged(): ISignal<this, SchedulingView> {
    return this._schedulingChanged;
  }
  /** The user's fair-share standing was read again and differs (see `fairShare`). */
  get fairShareChanged(): ISignal<this, void> {
    return this._fairShareChanged;
  }
  /** The user's batch jobs changed (see `jobs`). */
  get jobsChanged(): ISignal<this, void> {
    return this._jobsChanged;
  }
  /**
   * A job of the user ended while the live stream was not available (with the stream, its
   * `job_ended` notice says so through `noticeReceived`).
   */
  get jobEnded(): ISignal<this, Job> {
    return this._jobEnded;
  }
  /** Warnings with action buttons (see `IDLInfraClient.warn`). */
  get warningRaised(): ISignal<IDLInfraClient, IWarning> {
    return this.client.warningRaised;
  }

  /* ---------------------------------------------------------------- state */

  get cluster(): Cluster | null {
    return this._cluster;
  }
  /** Queued allocations of every node, in serving order. */
  get queue(): Allocation[] {
    return this._queue;
  }
  /** Active (queued and granted) allocations, with live metrics. */
  get allocations(): Allocation[] {
    return this._allocations;
  }
  get simulated(): boolean {
    return this._simulated;
  }
  get mode(): ConnectionMode {
    return this._mode;
  }
  /** The last error met while fetching, or null. */
  get error(): string | null {
    return this._error;
  }
  /** When the data was last updated (ms since epoch), or null before the first data. */
  get updatedAt(): number | null {
    return this._updatedAt;
  }
  get isDisposed(): boolean {
    return this._isDisposed;
  }
  /** Who the server says the user is (after `loadMe`), or null. */
  get me(): Me | null {
    return this._me;
  }
  /** The reclaim policy as last read or saved (after `loadPolicy`), or null. */
  get policy(): PolicyView | null {
    return this._policy;
  }
  /** The scheduling policy as last read or saved (after `loadScheduling`), or null. */
  get scheduling(): SchedulingView | null {
    return this._scheduling;
  }

  /* ---------------------------------------------------------------- fair share */

  /** The user's fair-share standing as last read, or null before the first answer. */
  get fairShare(): FairShare | null {
    return this._fairShare;
  }
  /** Whether the server ranks by fair share: null before it answered, false when it cannot. */
  get fairShareAvailable(): boolean | null {
    return this._fairShareAvailable;
  }
  /** The last error met while reading the fair-share standing, or null. */
  get fairShareError(): string | null {
    return this._fairShareError;
  }

  /**
   * Read the fair-share standing now (GET fairshare). A call while one is under way waits for
   * it and reads again after it.
   */
  refreshFairShare(): Promise<void> {
    if (this._fairShareInFlight) {
      this._fairShareForce = true;
      return this._fairShareInFlight;
    }
    if (this._fairShareTimer !== null) {
      clearTimeout(this._fairShareTimer);
      this._fairShareTimer = null;
    }
    this._fairShareInFlight = this._fetchFairShare().finally(() => {
      this._fairShareInFlight = null;
      if (this._isDisposed) {
        return;
      }
      if (this._fairShareForce) {
        this._fairShareForce = false;
        this._fairShareAgain = false;
        void this.refreshFairShare();
      } else if (this._fairShareAgain) {
        this._fairShareAgain = false;
        this._scheduleFairShare();
      }
    });
    return this._fairShareInFlight;
  }

  /* ---------------------------------------------------------------- batch jobs */

  /** The user's jobs, newest first (empty before the first answer). */
  get jobs(): Job[] {
    return this._jobs;
  }
  /** Whether the server runs batch jobs: null before it answered, false when it does not. */
  get jobsAvailable(): boolean | null {
    return this._jobsAvailable;
  }
  /** The last error met while reading the jobs, or null. */
  get jobsError(): string | null {
    return this._jobsError;
  }
  /** When the jobs were last read (ms since epoch), or null. */
  get jobsFetchedAt(): number | null {
    return this._jobsFetchedAt;
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
    if (job.state === 'running' && this._jobsFetchedAt !== null) {
      return job.duration_s + Math.max(0, now - this._jobsFetchedAt) / 1000;
    }
    return job.duration_s;
  }

  get refreshInterval(): number {
    return this._refreshInterval;
  }
  set refreshInterval(seconds: number) {
    const value = Math.max(1, Number(seconds) || 2);
    if (value === this._refreshInterval) {
      return;
    }
    this._refreshInterval = value;
    if (this._pollTimer !== null) {
      this._stopPolling();
      this._schedulePoll();
    }
  }

  get sparklinePoints(): number {
    return this._sparklinePoints;
  }
  set sparklinePoints(points: number) {
    this._sparklinePoints = Math.max(2, Math.floor(Number(points) || 60));
    for (const entry of this._history.values()) {
      entry.values.splice(0, Math.max(0, entry.values.length - this._sparklinePoints));
    }
    this._changed.emit();
  }

  /** The last utilisation samples of a GPU, oldest first. */
  history(uuid: string): number[] {
    return this._history.get(uuid)?.values ?? [];
  }

  /** A kernel's idle state, when the reclaim policy has judged it. */
  idleOf(kernelId: string): KernelIdle | null {
    return this._idle.get(kernelId) ?? null;
  }

  /** A kernel's usage hints (empty when none). */
  hintsOf(kernelId: string): Hint[] {
    return this._hints.get(kernelId) ?? [];
  }

  /** A GPU of the cluster by UUID. */
  gpu(uuid: string): ClusterGpu | null {
    return this._gpus.get(uuid) ?? null;
  }

  /** The ids of the kernels running in this Lab. */
  runningKernelIds(): Set<string> {
    const ids = new Set<string>();
    for (const kernel of this._services.kernels.running()) {
      ids.add(kernel.id);
    }
    return ids;
  }

  /** The session (notebook path and name) of one of this Lab's kernels. */
  sessionOfKernel(kernelId: string): { path: string; name: string; kernelName: string } | null {
    for (const session of this._services.sessions.running()) {
      if (session.kernel?.id === kernelId) {
        return { path: session.path, name: session.name, kernelName: session.kernel.name };
      }
    }
    return null;
  }

  /** Whether an allocation belongs to one of this Lab's kernels. */
  isMine(allocation: Allocation): boolean {
    return this.runningKernelIds().has(allocation.kernel_id);
  }

  /** Active allocations of this Lab's kernels, granted first, then queued by position. */
  myAllocations(): IMyAllocation[] {
    const running = this.runningKernelIds();
    const mine = this._active().filter(a => running.has(a.kernel_id));
    mine.sort((a, b) => {
      if (a.state !== b.state) {
        return a.state === 'granted' ? -1 : 1;
      }
      return (a.position ?? 0) - (b.position ?? 0) || a.id - b.id;
    });
    return mine.map(allocation => this._describe(allocation));
  }

  /** An active (queued or granted) allocation by id, when known. */
  allocationById(allocationId: number | null | undefined): Allocation | null {
    if (allocationId === null || allocationId === undefined) {
      return null;
    }
    return this._allocations.find(a => a.id === allocationId) ?? null;
  }

  /** The active allocation of a kernel, or null. */
  allocationOfKernel(kernelId: string): Allocation | null {
    return this._active().find(a => a.kernel_id === kernelId) ?? null;
  }

  /** Mean utilisation (0-100) of an allocation's GPUs, null when nothing is sampled. */
  meanUtilisation(allocation: Allocation): number | null {
    const values: number[] = [];
    for (const gpu of allocation.gpus) {
      const value = gpu.utilization_percent ?? this._gpus.get(gpu.uuid)?.utilization_percent;
      if (typeof value === 'number') {
        values.push(value);
      }
    }
    return values.length ? values.reduce((s, v) => s + v, 0) / values.length : null;
  }

  /* ---------------------------------------------------------------- actions */

  /** Start following the server: one REST fetch at once, and the event stream. */
  start(): void {
    if (this._started) {
      return;
    }
    this._started = true;
    void this.refresh();
    void this.refreshJobs();
    void this.refreshFairShare();
    this._connect();
  }

  /** Fetch cluster, allocations and queue through the REST API once. */
  async refresh(): Promise<void> {
    try {
      const [cluster, allocations, queue] = await Promise.all([
        this.client.cluster(),
        this.client.allocations(),
        this.client.queue()
      ]);
      if (this._isDisposed) {
        return;
      }
      this._error = null;
      this._apply({
        seq: -1,
        at: new Date().toISOString(),
        cluster,
        allocations,
        queue,
        simulated: cluster.simulated
      });
      if (this._mode !== 'stream') {
        // Without the stream nothing says when jobs change: follow them while some are active.
        if (!this._jobsLoaded || this.activeJobs().length > 0) {
          this._scheduleJobs();
        }
        this._scheduleFairShare();
        await this._pollIdle();
      }
    } catch (error) {
      if (this._isDisposed) {
        return;
      }
      this._error = (error as Error).message ?? String(error);
      this._changed.emit();
    }
  }

  async requestGpus(
    kernelId: string,
    count: number,
    model?: string | null,
    priorityClass?: string | null
  ): Promise<Allocation> {
    const allocation = await this.client.requestGpus(kernelId, count, model, priorityClass);
    void this.refresh();
    return allocation;
  }

  async release(allocationId: number): Promise<void> {
    this._releasing.add(allocationId);
    try {
      await this.client.release(allocationId);
    } finally {
      void this.refresh();
    }
  }

  /** Carry out a notice's action (for `keep`, the kernel's new idle state is applied). */
  async noticeAction(notice: Notice, actionId: string): Promise<unknown> {
    const answer = await this.client.noticeAction(notice.id, actionId);
    if (actionId === 'keep' && Private.isKeepResult(answer)) {
      this._onKept(answer, notice.id);
    }
    void this.refresh();
    return answer;
  }

  /**
   * Keep a kernel's idle GPUs longer (POST kernels/<id>/keep). Rejects with the server's
   * reason (409) when there is nothing to keep or no keep is left.
   */
  async keep(kernelId: string): Promise<KeepResult> {
    const result = await this.client.keep(kernelId);
    this._onKept(result, null);
    return result;
  }

  /** Ask the server who the user is and whether they are an admin (GET me). */
  async loadMe(): Promise<Me> {
    this._me = await this.client.me();
    return this._me;
  }

  /** Read the reclaim policy, its source and its recent changes (GET policy). */
  async loadPolicy(): Promise<PolicyView> {
    return this._setPolicy(await this.client.policy());
  }

  /**
   * Change the reclaim policy (PUT policy, admins only): fields left out keep their values.
   * Rejects with the server's message (400 `bad_policy` names the field first).
   */
  async savePolicy(changes: Partial<PolicyDoc>): Promise<PolicyView> {
    return this._setPolicy(await this.client.setPolicy(changes));
  }

  /** Read the scheduling policy, its source and its recent changes (GET scheduling). */
  async loadScheduling(): Promise<SchedulingView> {
    return this._setScheduling(await this.client.scheduling());
  }

  /**
   * Change the scheduling policy (PUT scheduling, admins only): fields left out keep their
   * values. Rejects with the server's message (400 `bad_policy` names the field first, such as
   * `classes.batch.priority: ...`).
   */
  async saveScheduling(changes: Partial<SchedulingPolicyDoc>): Promise<SchedulingView> {
    const view = this._setScheduling(await this.client.setScheduling(changes));
    // Quotas, shares and classes move ranks and positions: read them again soon.
    void this.refresh();
    void this.refreshFairShare();
    return view;
  }

  /** What a policy (the saved one, changed by `policy`) would have done over the last hours. */
  async simulatePolicy(
    hours: number,
    policy?: Partial<PolicyDoc> | null
  ): Promise<SimulationResult> {
    return this.client.simulatePolicy(hours, policy);
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
    this._jobsAvailable = true;
    this._upsertJobs(isJobGroup(answer) ? answer.jobs : [answer]);
    return answer;
  }

  /** Cancel a job (DELETE jobs/<id>): a queued one ends at once, a running one shortly after. */
  async cancelJob(jobId: number): Promise<Job> {
    const job = await this.client.cancelJob(jobId);
    this._upsertJobs([job]);
    return job;
  }

  /** Run a job again with the same notebook and fields (POST jobs/<id>/rerun): the new job. */
  async rerunJob(jobId: number): Promise<Job> {
    const job = await this.client.rerunJob(jobId);
    this._upsertJobs([job]);
    return job;
  }

  /**
   * Read the user's jobs now (GET jobs?state=all). A call while one is under way waits for it
   * and reads again after it.
   */
  refreshJobs(): Promise<void> {
    if (this._jobsInFlight) {
      this._jobsAgain = true;
      return this._jobsInFlight;
    }
    if (this._jobsTimer !== null) {
      clearTimeout(this._jobsTimer);
      this._jobsTimer = null;
    }
    this._jobsInFlight = this._fetchJobs().finally(() => {
      this._jobsInFlight = null;
      if (this._jobsAgain) {
        this._jobsAgain = false;
        this._scheduleJobs();
      }
    });
    return this._jobsInFlight;
  }

  /** Show a warning with action buttons (emitted through `warningRaised`). */
  warning(warning: IWarning): void {
    this.client.warn(warning);
  }

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    this._subscription?.dispose();
    this._subscription = null;
    this._stopPolling();
    if (this._reconnectTimer !== null) {
      clearTimeout(this._reconnectTimer);
    }
    for (const timer of this._pendingReports.values()) {
      clearTimeout(timer);
    }
    if (this._jobsTimer !== null) {
      clearTimeout(this._jobsTimer);
      this._jobsTimer = null;
    }
    if (this._fairShareTimer !== null) {
      clearTimeout(this._fairShareTimer);
      this._fairShareTimer = null;
    }
    this._services.kernels.runningChanged.disconnect(this._onRunningChanged, this);
    this._services.sessions.runningChanged.disconnect(this._onRunningChanged, this);
    Signal.clearData(this);
  }

  /* ---------------------------------------------------------------- stream & polling */

  private _connect(): void {
    if (this._isDisposed) {
      return;
    }
    this._reconnectTimer = null;
    if (this._mode !== 'polling') {
      this._setMode('connecting');
    }
    this._subscription = this.client.subscribe({
      onSnapshot: snapshot => {
        if (this._mode !== 'stream') {
          this._setMode('stream');
          this._stopPolling();
        }
        this._backoff = FIRST_BACKOFF_MS;
        this._error = null;
        this._apply(snapshot);
        // The ledger's version changes with every job change, and a snapshot follows.
        this._scheduleJobs();
        this._scheduleFairShare();
      },
      onNotice: notice => this._onNotice(notice),
      onError: () => {
        this._subscription = null;
        if (this._isDisposed) {
          return;
        }
        this._setMode('polling');
        if (this._pollTimer === null) {
          this._schedulePoll();
        }
        this._reconnectTimer = window.setTimeout(() => this._connect(), this._backoff);
        this._backoff = Math.min(this._backoff * 2, MAX_BACKOFF_MS);
      }
    });
  }

  private _schedulePoll(): void {
    this._pollTimer = window.setTimeout(async () => {
      if (this._mode === 'stream' || this._isDisposed) {
        this._pollTimer = null;
        return;
      }
      await this.refresh();
      // (the mode may have changed while fetching)
      if ((this._mode as ConnectionMode) !== 'stream' && !this._isDisposed && this._pollTimer !== null) {
        this._schedulePoll();
      } else {
        this._pollTimer = null;
      }
    }, this._refreshInterval * 1000);
  }

  private _stopPolling(): void {
    if (this._pollTimer !== null) {
      clearTimeout(this._pollTimer);
      this._pollTimer = null;
    }
  }

  private _setMode(mode: ConnectionMode): void {
    if (mode !== this._mode) {
      this._mode = mode;
      this._modeChanged.emit(mode);
      this._changed.emit();
    }
  }

  /* ---------------------------------------------------------------- applying data */

  private _apply(snapshot: Snapshot): void {
    this._rememberRunning();
    // REST answers carry no idle states: keep the stream's (or the last poll's) until replaced.
    if (snapshot.idle) {
      this._idle = new Map(Object.entries(snapshot.idle));
    }
    if (snapshot.hints) {
      this._hints = new Map(Object.entries(snapshot.hints));
    }
    this._cluster = snapshot.cluster;
    this._simulated = snapshot.simulated;
    this._queue = snapshot.queue ?? [];
    // The stream's `allocations` are the active ones; the queue may repeat queued ones.
    const byId = new Map<number, Allocation>();
    for (const a of snapshot.allocations ?? []) {
      byId.set(a.id, a);
    }
    for (const a of this._queue) {
      if (!byId.has(a.id)) {
        byId.set(a.id, a);
      } else if (a.position !== null) {
        // The queue's answer says where the request stands: take its place, reason and estimate.
        byId.set(a.id, {
          ...byId.get(a.id)!,
          position: a.position,
          waiting_reason: a.waiting_reason,
          waiting_code: a.waiting_code,
          estimated_start: a.estimated_start
        });
      }
    }
    this._allocations = [...byId.values()].filter(
      a => a.state === 'queued' || a.state === 'granted'
    );
    this._updatedAt = Date.now();

    this._gpus.clear();
    for (const node of snapshot.cluster?.nodes ?? []) {
      for (const gpu of node.gpus) {
        this._gpus.set(gpu.uuid, gpu);
        this._record(gpu);
      }
    }
    this._trackTransitions();
    this._changed.emit();
  }

  private _record(gpu: ClusterGpu): void {
    if (typeof gpu.utilization_percent !== 'number') {
      return;
    }
    let entry = this._history.get(gpu.uuid);
    if (!entry) {
      entry = { sampledAt: null, values: [] };
      this._history.set(gpu.uuid, entry);
    }
    // One point per telemetry sample, however often we poll.
    if (gpu.sampled_at !== null && gpu.sampled_at === entry.sampledAt) {
      return;
    }
    entry.sampledAt = gpu.sampled_at;
    entry.values.push(gpu.utilization_percent);
    if (entry.values.length > this._sparklinePoints) {
      entry.values.splice(0, entry.values.length - this._sparklinePoints);
    }
  }

  /** Find grants and failures of this Lab's requests between successive snapshots. */
  private _trackTransitions(): void {
    const running = this.runningKernelIds();
    const active = new Map(this._allocations.map(a => [a.id, a]));
    for (const [id, before] of this._tracked) {
      const now = active.get(id);
      if (now) {
        if (before.state === 'queued' && now.state === 'granted') {
          this._report(id, () => this._granted.emit(this._describe(now)));
        }
        continue;
      }
      // It ended: find out how, unless the user released it from here.
      if (before.state === 'queued' && !this._releasing.has(id)) {
        const path = this.sessionOfKernel(before.kernel_id)?.path ?? null;
        this.client
          .allocation(id)
          .then(ended => {
            if (ended.state === 'cancelled' && !USER_END.test(ended.end_reason ?? '')) {
              this._report(id, () => this._failed.emit({ allocation: ended, path }));
            } else if (ended.state === 'released' && ended.granted_at) {
              // Granted and released between two snapshots: the grant did happen.
              this._report(id, () =>
                this._granted.emit({
                  allocation: ended,
                  path,
                  kernelName: null,
                  idle: null,
                  hints: []
                })
              );
            }
          })
          .catch(() => undefined);
      }
      this._releasing.delete(id);
    }
    this._tracked.clear();
    for (const a of this._allocations) {
      if (running.has(a.kernel_id)) {
        this._tracked.set(a.id, a);
      }
    }
  }

  /** Report a transition unless a notice about that allocation comes in the meantime. */
  private _report(allocationId: number, emit: () => void): void {
    if (this._noticed.has(allocationId) || this._pendingReports.has(allocationId)) {
      return;
    }
    const timer = window.setTimeout(() => {
      this._pendingReports.delete(allocationId);
      if (!this._noticed.has(allocationId) && !this._isDisposed) {
        emit();
      }
    }, NOTICE_GRACE_MS);
    this._pendingReports.set(allocationId, timer);
  }

  private _onNotice(notice: Notice): void {
    // A reconnected stream may repeat notices: show each one once.
    const key = `${notice.id}:${notice.kind}:${notice.allocation_id}:${notice.message}`;
    if (this._seenNotices.has(key)) {
      return;
    }
    this._seenNotices.add(key);
    if (this._seenNotices.size > 500) {
      this._seenNotices.delete(this._seenNotices.values().next().value as string);
    }
    if (notice.kind === 'job_ended') {
      // Jobs hold GPUs as `job-<id>`: the notice is the user's when the job is.
      const jobId = jobIdOfKernel(notice.kernel_id);
      const mine =
        (jobId !== null && this.jobById(jobId) !== null) ||
        (this._me !== null && notice.user === this._me.user);
      this._scheduleJobs();
      if (mine) {
        this._noticeReceived.emit(notice);
      }
      return;
    }
    // A reclaim may shut the kernel down before its notice comes: recent kernels count too.
    this._rememberRunning();
    const mine = notice.kernel_id === null || this._recentKernels.has(notice.kernel_id);
    if (!mine) {
      return;
    }
    if (
      notice.allocation_id !== null &&
      notice.kind !== 'warning' &&
      !notice.kind.startsWith('idle_')
    ) {
      this._noticed.add(notice.allocation_id);
    }
    this._noticeReceived.emit(notice);
  }

  private _describe(allocation: Allocation): IMyAllocation {
    const session = this.sessionOfKernel(allocation.kernel_id);
    return {
      allocation,
      path: session?.path ?? null,
      kernelName: session?.kernelName ?? null,
      idle: this.idleOf(allocation.kernel_id),
      hints: this.hintsOf(allocation.kernel_id)
    };
  }

  private _setScheduling(view: SchedulingView): SchedulingView {
    this._scheduling = view;
    if (!this._isDisposed) {
      this._schedulingChanged.emit(view);
    }
    return view;
  }

  private _setPolicy(view: PolicyView): PolicyView {
    this._policy = view;
    if (!this._isDisposed) {
      this._policyChanged.emit(view);
    }
    return view;
  }

  /** Apply a keep's answer at once (the next snapshot confirms it) and tell the listeners. */
  private _onKept(result: KeepResult, noticeId: number | null): void {
    const { kernel_id: kernelId, ...idle } = result;
    this._idle.set(kernelId, idle as KernelIdle);
    this._changed.emit();
    this._kept.emit({
      kernelId,
      result,
      path: this.sessionOfKernel(kernelId)?.path ?? null,
      noticeId
    });
  }

  /**
   * Without the event stream, read the idle state and hints of this Lab's granted kernels
   * through GET kernels/<id>/usage (skipped for good when the server has no idle reclaim).
   */
  private async _pollIdle(): Promise<void> {
    if (!this._usageAvailable) {
      return;
    }
    const running = this.runningKernelIds();
    const kernels = [
      ...new Set(
        this._allocations
          .filter(a => a.state === 'granted' && running.has(a.kernel_id))
          .map(a => a.kernel_id)
      )
    ];
    if (kernels.length === 0) {
      return;
    }
    const answers = await Promise.allSettled(kernels.map(id => this.client.usage(id)));
    if (this._isDisposed) {
      return;
    }
    let changed = false;
    answers.forEach((answer, i) => {
      const kernelId = kernels[i];
      if (answer.status === 'fulfilled') {
        const usage = answer.value;
        if (usage.idle) {
          this._idle.set(kernelId, usage.idle);
        } else {
          this._idle.delete(kernelId);
        }
        this._hints.set(kernelId, usage.hints ?? []);
        changed = true;
      } else {
        const error = answer.reason;
        if (
          error instanceof DLInfraApiError &&
          (error.reason === 'no_reclaim' || (error.status === 404 && error.reason === 'not_found'))
        ) {
          this._usageAvailable = false;
        }
      }
    });
    if (changed) {
      this._changed.emit();
    }
  }

  /** Note the kernels running in this Lab now, forgetting those gone for a while. */
  private _rememberRunning(): void {
    const now = Date.now();
    for (const id of this.runningKernelIds()) {
      this._recentKernels.set(id, now);
    }
    for (const [id, seen] of this._recentKernels) {
      if (now - seen > RECENT_KERNEL_MS) {
        this._recentKernels.delete(id);
      }
    }
  }

  /* ---------------------------------------------------------------- jobs */

  /** Read the jobs soon: at once, or when the last read is a second old. */
  private _scheduleJobs(): void {
    if (this._jobsTimer !== null || this._isDisposed || this._jobsAvailable === false) {
      return;
    }
    if (this._jobsInFlight) {
      this._jobsAgain = true;
      return;
    }
    const wait = Math.max(0, this._jobsLastFetch + JOBS_MIN_INTERVAL_MS - Date.now());
    this._jobsTimer = window.setTimeout(() => {
      this._jobsTimer = null;
      void this.refreshJobs();
    }, wait);
  }

  private async _fetchJobs(): Promise<void> {
    const generation = this._jobsGeneration;
    this._jobsLastFetch = Date.now();
    try {
      const jobs = await this.client.jobs('all');
      if (this._isDisposed) {
        return;
      }
      if (generation !== this._jobsGeneration) {
        // A submit, cancel or re-run answered meanwhile: this list may predate it.
        this._jobsAgain = true;
        return;
      }
      this._jobsAvailable = true;
      this._jobsError = null;
      this._setJobs(jobs);
    } catch (error) {
      if (this._isDisposed) {
        return;
      }
      if (
        error instanceof DLInfraApiError &&
        (error.reason === 'no_jobs' || (error.status === 404 && error.reason === 'not_found'))
      ) {
        // This server runs no batch jobs (or predates them): stop asking.
        this._jobsAvailable = false;
        this._jobsError = null;
        this._jobs = [];
      } else {
        this._jobsError = (error as Error).message ?? String(error);
      }
      this._jobsLoaded = true;
      this._jobsSignature = '';
      this._jobsChanged.emit();
    }
  }

  /** Take a fresh list; tell the listeners when something other than a duration changed. */
  private _setJobs(jobs: Job[]): void {
    const before = new Map(this._jobs.map(j => [j.id, j.state]));
    const first = !this._jobsLoaded;
    this._jobs = jobs;
    this._jobsLoaded = true;
    this._jobsFetchedAt = Date.now();
    if (!first && this._mode !== 'stream') {
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
    if (signature !== this._jobsSignature) {
      this._jobsSignature = signature;
      this._jobsChanged.emit();
    }
  }

  /** Apply jobs a submit, cancel or re-run answered, at once; a fresh read follows. */
  private _upsertJobs(jobs: Job[]): void {
    if (this._isDisposed) {
      return;
    }
    this._jobsGeneration++;
    const byId = new Map(this._jobs.map(j => [j.id, j]));
    for (const job of jobs) {
      byId.set(job.id, job);
    }
    this._jobs = [...byId.values()].sort((a, b) => b.id - a.id);
    this._jobsFetchedAt = Date.now();
    this._jobsSignature = '';
    this._jobsChanged.emit();
    this._scheduleJobs();
  }

  /* ---------------------------------------------------------------- fair share */

  /**
   * Read the fair-share standing soon: a second after the last read when the queue or the
   * grants changed since, else when the last read is half a minute old.
   */
  private _scheduleFairShare(): void {
    if (this._isDisposed || this._fairShareAvailable === false) {
      return;
    }
    const changed = this._queueKey() !== this._fairShareKey;
    if (this._fairShareInFlight) {
      this._fairShareAgain = this._fairShareAgain || changed;
      return;
    }
    const interval = changed ? FAIRSHARE_MIN_INTERVAL_MS : FAIRSHARE_IDLE_INTERVAL_MS;
    const due = Math.max(Date.now(), this._fairShareLastFetch + interval);
    if (this._fairShareTimer !== null) {
      if (this._fairShareDue <= due) {
        return;
      }
      // A change came while the slow read was pending: read sooner.
      clearTimeout(this._fairShareTimer);
    }
    this._fairShareDue = due;
    this._fairShareTimer = window.setTimeout(() => {
      this._fairShareTimer = null;
      void this.refreshFairShare();
    }, due - Date.now());
  }

  /** What moves ranks and GPUs held: the active requests, their states and places. */
  private _queueKey(): string {
    return JSON.stringify(
      this._allocations.map(a => [a.id, a.state, a.position, a.count, a.priority_class])
    );
  }

  private async _fetchFairShare(): Promise<void> {
    this._fairShareLastFetch = Date.now();
    this._fairShareKey = this._queueKey();
    let signature: string;
    try {
      const answer = await this.client.fairShare();
      if (this._isDisposed) {
        return;
      }
      this._fairShare = answer;
      this._fairShareAvailable = true;
      this._fairShareError = null;
      signature = JSON.stringify(answer);
    } catch (error) {
      if (this._isDisposed) {
        return;
      }
      if (
        error instanceof DLInfraApiError &&
        error.status === 404 &&
        error.reason === 'not_found'
      ) {
        // This server predates scheduling: stop asking.
        this._fairShareAvailable = false;
        this._fairShareError = null;
        this._fairShare = null;
      } else {
        this._fairShareError = (error as Error).message ?? String(error);
      }
      signature = JSON.stringify(['error', this._fairShareAvailable, this._fairShareError]);
    }
    if (signature !== this._fairShareSignature) {
      this._fairShareSignature = signature;
      this._fairShareChanged.emit();
    }
  }

  private _active(): Allocation[] {
    return this._allocations;
  }

  private _onRunningChanged(): void {
    this._rememberRunning();
    this._changed.emit();
  }

  private _services: ServiceManager.IManager;
  private _cluster: Cluster | null = null;
  private _queue: Allocation[] = [];
  private _allocations: Allocation[] = [];
  private _gpus = new Map<string, ClusterGpu>();
  private _idle = new Map<string, KernelIdle>();
  private _hints = new Map<string, Hint[]>();
  private _recentKernels = new Map<string, number>();
  private _usageAvailable = true;
  private _me: Me | null = null;
  private _policy: PolicyView | null = null;
  private _scheduling: SchedulingView | null = null;
  private _fairShare: FairShare | null = null;
  private _fairShareAvailable: boolean | null = null;
  private _fairShareError: string | null = null;
  private _fairShareSignature = '';
  private _fairShareKey = '';
  private _fairShareLastFetch = 0;
  private _fairShareTimer: number | null = null;
  private _fairShareDue = 0;
  private _fairShareAgain = false;
  private _fairShareForce = false;
  private _fairShareInFlight: Promise<void> | null = null;
  private _history = new Map<string, { sampledAt: string | null; values: number[] }>();
  private _tracked = new Map<number, Allocation>();
  private _noticed = new Set<number>();
  private _seenNotices = new Set<string>();
  private _releasing = new Set<number>();
  private _pendingReports = new Map<number, number>();
  private _simulated = false;
  private _mode: ConnectionMode = 'connecting';
  private _error: string | null = null;
  private _updatedAt: number | null = null;
  private _refreshInterval: number;
  private _sparklinePoints: number;
  private _started = false;
  private _isDisposed = false;
  private _subscription: IDisposable | null = null;
  private _pollTimer: number | null = null;
  private _reconnectTimer: number | null = null;
  private _backoff = FIRST_BACKOFF_MS;
  private _jobs: Job[] = [];
  private _jobsLoaded = false;
  private _jobsAvailable: boolean | null = null;
  private _jobsError: string | null = null;
  private _jobsFetchedAt: number | null = null;
  private _jobsSignature = '';
  private _jobsInFlight: Promise<void> | null = null;
  private _jobsAgain = false;
  private _jobsTimer: number | null = null;
  private _jobsLastFetch = 0;
  private _jobsGeneration = 0;
  private _jobsChanged = new Signal<this, void>(this);
  private _jobEnded = new Signal<this, Job>(this);
  private _changed = new Signal<this, void>(this);
  private _noticeReceived = new Signal<this, Notice>(this);
  private _granted = new Signal<this, IMyAllocation>(this);
  private _failed = new Signal<this, IFailure>(this);
  private _modeChanged = new Signal<this, ConnectionMode>(this);
  private _kept = new Signal<this, IKept>(this);
  private _policyChanged = new Signal<this, PolicyView>(this);
  private _schedulingChanged = new Signal<this, SchedulingView>(this);
  private _fairShareChanged = new Signal<this, void>(this);
}

namespace Private {
  /** Whether an action's answer is a keep's: a kernel id and an idle state. */
  export function isKeepResult(value: unknown): value is KeepResult {
    if (!value || typeof value !== 'object') {
      return false;
    }
    const v = value as Record<string, unknown>;
    return typeof v.kernel_id === 'string' && typeof v.state === 'string';
  }
}
