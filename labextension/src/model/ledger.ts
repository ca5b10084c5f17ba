/**
 * The ledger as this Lab sees it: the cluster's GPUs (with a utilisation history per GPU for
 * the sparklines), the active allocations and the queue, and the idle state and hints of
 * kernels, from the stream's snapshots or REST reads; and the GPU actions (request, release,
 * keep, park and resume, a notice's buttons).
 *
 * A snapshot holds the granted allocations (parked ones too, with their `park`; each GPU of the
 * cluster names the parked grant it returns to in `parked_for`) and the first page of the queue
 * only (its size does not grow with the queue). When more wait than that page lists, the user's
 * own requests further down are read through REST (GET allocations?user=) as the ledger moves,
 * at most once a second, and so are further pages of the queue once "Show more" asked for them.
 */
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

import {
  Allocation,
  Cluster,
  ClusterGpu,
  DLInfraApiError,
  Hint,
  IDLInfraClient,
  KeepResult,
  KernelIdle,
  Notice,
  ParkAnswer,
  Snapshot
} from '../api';
import { Connection, ConnectionMode } from './connection';
import { LabKernels } from './kernels';

/** Waiting requests a snapshot lists (the server's page), and how many more "Show more" reads. */
export const QUEUE_PAGE = 50;
/** The most waiting requests the model lists (the server's largest page). */
export const MAX_QUEUE_SHOWN = 1000;
/** The user's own active allocations read beyond a snapshot's page (the oldest ones). */
export const OWN_PAGE = 100;
/** What is read beyond a snapshot is read again at most this often (a burst makes one read). */
const FOLLOW_MIN_INTERVAL_MS = 1_000;

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

/** A snapshot was applied: from the stream (`live`) or from a REST read. */
export interface ISnapshotApplied {
  live: boolean;
}

export namespace LedgerModel {
  export interface IOptions {
    client: IDLInfraClient;
    kernels: LabKernels;
    /** Says whether the stream is there (REST reads do more without it). */
    connection: Connection;
    /** Utilisation samples kept per GPU for the sparklines. */
    sparklinePoints?: number;
  }
}

export class LedgerModel implements IDisposable {
  constructor(options: LedgerModel.IOptions) {
    this.client = options.client;
    this.kernels = options.kernels;
    this._connection = options.connection;
    this._sparklinePoints = Math.max(2, options.sparklinePoints ?? 60);
    this.kernels.runningChanged.connect(this._emitChanged, this);
    this._connection.modeChanged.connect(this._emitChanged, this);
  }

  readonly client: IDLInfraClient;
  readonly kernels: LabKernels;

  /** Emitted whenever the data, the connection mode or the Lab's running kernels changed. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }
  /** GPUs of this Lab's kernels were kept (from the sidebar or a notice's Keep button). */
  get kept(): ISignal<this, IKept> {
    return this._kept;
  }
  /**
   * A snapshot was applied (before `changed` says so): the other parts follow it (the requests'
   * transitions, when to read the jobs and the fair-share standing again).
   */
  get applied(): ISignal<this, ISnapshotApplied> {
    return this._applied;
  }
  /** The connection mode changed (stream, polling, connecting). */
  get modeChanged(): ISignal<Connection, ConnectionMode> {
    return this._connection.modeChanged;
  }

  get mode(): ConnectionMode {
    return this._connection.mode;
  }
  get cluster(): Cluster | null {
    return this._cluster;
  }
  /**
   * Queued allocations of every node, in serving order: the first page, and the pages after
   * it that `showMoreQueue` asked for.
   */
  get queue(): Allocation[] {
    return this._queue;
  }
  /** How many requests wait in all (more than `queue` lists when the queue is long). */
  get queueLength(): number {
    return Math.max(this._queueLength, this._queue.length);
  }
  /** Whether `showMoreQueue` asked for more than the first page. */
  get queueExtended(): boolean {
    return this._queueExtra > 0;
  }
  /** Active (queued and granted) allocations, with live metrics. */
  get allocations(): Allocation[] {
    return this._allocations;
  }
  get simulated(): boolean {
    return this._simulated;
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

  /** Whether an allocation belongs to one of this Lab's kernels. */
  isMine(allocation: Allocation): boolean {
    return this.kernels.runningKernelIds().has(allocation.kernel_id);
  }

  /** Active allocations of this Lab's kernels, granted first, then queued by position. */
  myAllocations(): IMyAllocation[] {
    const running = this.kernels.runningKernelIds();
    const mine = this._allocations.filter(a => running.has(a.kernel_id));
    mine.sort((a, b) => {
      if (a.state !== b.state) {
        return a.state === 'granted' ? -1 : 1;
      }
      return (a.position ?? 0) - (b.position ?? 0) || a.id - b.id;
    });
    return mine.map(allocation => this.describe(allocation));
  }

  /** An allocation with what this Lab knows of its kernel. */
  describe(allocation: Allocation): IMyAllocation {
    const session = this.kernels.sessionOfKernel(allocation.kernel_id);
    return {
      allocation,
      path: session?.path ?? null,
      kernelName: session?.kernelName ?? null,
      idle: this.idleOf(allocation.kernel_id),
      hints: this.hintsOf(allocation.kernel_id)
    };
  }

  /** An active (queued or granted) allocation by id, when known. */
  allocationById(allocationId: number | null | undefined): Allocation | null {
    if (allocationId === null || allocationId === undefined) {
      return null;
    }
    return this._allocations.find(a => a.id === allocationId) ?? null;
  }

  /** Whether a park (`park`) or a resume (`resume`) of the kernel was asked from here and waits. */
  parkPending(kernelId: string): 'park' | 'resume' | null {
    return this._parkPending.get(kernelId) ?? null;
  }

  /** The active allocation of a kernel, or null. */
  allocationOfKernel(kernelId: string): Allocation | null {
    return this._allocations.find(a => a.kernel_id === kernelId) ?? null;
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

  /**
   * Whether the user released this allocation from here, forgetting it: its end is then no
   * failure to report.
   */
  takeRelease(allocationId: number): boolean {
    return this._releasing.delete(allocationId);
  }

  /* ---------------------------------------------------------------- actions */

  /**
   * Fetch what a snapshot holds through the REST API once (the cluster, the granted
   * allocations, the first page of the queue), and what is read beyond it.
   */
  async refresh(): Promise<void> {
    try {
      const [cluster, allocations, page] = await Promise.all([
        this.client.cluster(),
        this.client.allocations({ state: 'granted' }),
        this.client.queuePage({ limit: QUEUE_PAGE })
      ]);
      if (this._isDisposed) {
        return;
      }
      this._error = null;
      this._apply(
        {
          seq: -1,
          at: new Date().toISOString(),
          cluster,
          allocations,
          queue: page.queue,
          queue_length: page.total ?? cluster.queue_length,
          simulated: cluster.simulated
        },
        false
      );
      if (this._truncated() || this._queueExtra > 0) {
        await this._follow();
      }
      if (this.mode !== 'stream') {
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

  /** Apply a snapshot from the stream. */
  applyLive(snapshot: Snapshot): void {
    this._error = null;
    this._apply(snapshot, true);
    if (this._version === null || this._version !== this._followedVersion) {
      this._followSoon();
    }
  }

  /**
   * List the next page of the queue too (GET queue?offset=&limit=), read again as the ledger
   * moves; rejects with the server's message.
   */
  async showMoreQueue(): Promise<void> {
    const room = MAX_QUEUE_SHOWN - this._queueHead.length;
    this._queueExtra = Math.max(0, Math.min(this._queueExtra + QUEUE_PAGE, room));
    await this._readMore();
  }

  /** List the first page of the queue only again. */
  showLessQueue(): void {
    this._queueExtra = 0;
    this._queueMore = [];
    this._compose();
    this._changed.emit();
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
    if (actionId === 'keep' && isKeepResult(answer)) {
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

  /**
   * Park a kernel's GPUs now (POST kernels/<id>/park): its GPU memory goes to host memory and
   * its GPUs are lent until its next cell. Rejects with the server's reason (409) when it
   * cannot be parked.
   */
  park(kernelId: string): Promise<ParkAnswer> {
    return this._parkStep(kernelId, 'park', () => this.client.park(kernelId));
  }

  /** Start taking a parked kernel's GPUs back (POST kernels/<id>/resume). */
  resume(kernelId: string): Promise<ParkAnswer> {
    return this._parkStep(kernelId, 'resume', () => this.client.resume(kernelId));
  }

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    if (this._followTimer !== null) {
      clearTimeout(this._followTimer);
      this._followTimer = null;
    }
    Signal.clearData(this);
  }

  /* ---------------------------------------------------------------- applying data */

  private _apply(snapshot: Snapshot, live: boolean): void {
    this.kernels.remember();
    // REST answers carry no idle states: keep the stream's (or the last poll's) until replaced.
    if (snapshot.idle) {
      this._idle = new Map(Object.entries(snapshot.idle));
    }
    if (snapshot.hints) {
      this._hints = new Map(Object.entries(snapshot.hints));
    }
    this._cluster = snapshot.cluster;
    this._simulated = snapshot.simulated;
    this._queueHead = snapshot.queue ?? [];
    // Old servers send the whole queue and every active allocation, and no count.
    this._queueLength = snapshot.queue_length ?? this._queueHead.length;
    this._granted = snapshot.allocations ?? [];
    if (live) {
      this._version = snapshot.version ?? null;
    }
    if (!this._truncated()) {
      this._own = [];
    } else {
      // Ours that just left the page stay until the next read of our own says where they are.
      const known = new Set([...this._queueHead, ...this._granted, ...this._own].map(a => a.id));
      for (const a of this._allocations) {
        if (a.state === 'queued' && !known.has(a.id) && this._ours(a)) {
          this._own.push(a);
        }
      }
    }
    this._compose();
    this._updatedAt = Date.now();

    this._gpus.clear();
    for (const node of snapshot.cluster?.nodes ?? []) {
      for (const gpu of node.gpus) {
        this._gpus.set(gpu.uuid, gpu);
        this._record(gpu);
      }
    }
    this._applied.emit({ live });
    this._changed.emit();
  }

  /** Whether more wait than the snapshot's page lists. */
  private _truncated(): boolean {
    return this._queueLength > this._queueHead.length;
  }

  /** Whether an allocation is the user's (or, before we know who that is, this Lab's). */
  private _ours(a: Allocation): boolean {
    return this._me !== null ? a.user === this._me : this.isMine(a);
  }

  /** The queue and the active allocations from the last snapshot and what was read beyond it. */
  private _compose(): void {
    const queue: Allocation[] = [];
    const inQueue = new Set<number>();
    for (const a of [...this._queueHead, ...this._queueMore]) {
      if (!inQueue.has(a.id)) {
        inQueue.add(a.id);
        queue.push(a);
      }
    }
    this._queue = queue;
    const byId = new Map<number, Allocation>();
    if (this._truncated()) {
      // Beyond the page the snapshot cannot say: our own requests as last read. (With the
      // whole queue in the snapshot, one of them that it does not list has ended.)
      for (const a of this._own) {
        if (a.state === 'queued') {
          byId.set(a.id, a);
        }
      }
    }
    // The snapshot's grants are all the grants (parked ones too), and its queue is fresher
    // than our last read.
    for (const a of this._granted) {
      byId.set(a.id, a);
    }
    for (const a of queue) {
      if (byId.get(a.id)?.state !== 'granted') {
        byId.set(a.id, a);
      }
    }
    this._allocations = [...byId.values()].filter(
      a => a.state === 'queued' || a.state === 'granted'
    );
  }

  /** Read what lies beyond the snapshot soon: at once, or when the last read is a second old. */
  private _followSoon(): void {
    if (this._isDisposed || !(this._truncated() || this._queueExtra > 0)) {
      return;
    }
    if (this._followTimer !== null) {
      return;
    }
    if (this._following) {
      this._followAgain = true;
      return;
    }
    const wait = Math.max(0, this._lastFollow + FOLLOW_MIN_INTERVAL_MS - Date.now());
    this._followTimer = window.setTimeout(() => {
      this._followTimer = null;
      void this._follow();
    }, wait);
  }

  /**
   * Read the user's own active allocations (when the snapshot's page leaves some waiting
   * requests out) and the further pages of the queue asked for; failures are tried again with
   * the next snapshot.
   */
  private async _follow(): Promise<void> {
    if (this._following) {
      this._followAgain = true;
      return;
    }
    this._following = true;
    this._lastFollow = Date.now();
    this._followedVersion = this._version;
    try {
      await Promise.all([this._truncated() ? this._readOwn() : null, this._readMore()]);
    } catch {
      this._followedVersion = null;
    } finally {
      this._following = false;
      if (this._followAgain) {
        this._followAgain = false;
        this._followSoon();
      }
    }
  }

  private async _readOwn(): Promise<void> {
    if (this._me === null) {
      const me = await this.client.me();
      this._me = me.user;
    }
    // the oldest page of them: a sweep of thousands is summed up, not listed
    const own = await this.client.allocationsPage({ user: this._me, limit: OWN_PAGE });
    if (this._isDisposed) {
      return;
    }
    this._own = own.allocations;
    this._compose();
    this._changed.emit();
  }

  private async _readMore(): Promise<void> {
    const limit = this._queueExtra;
    if (limit <= 0) {
      return;
    }
    const page = await this.client.queuePage({ offset: this._queueHead.length, limit });
    if (this._isDisposed || this._queueExtra === 0) {
      return;
    }
    this._queueMore = page.queue;
    this._compose();
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

  /** Apply a keep's answer at once (the next snapshot confirms it) and tell the listeners. */
  private _onKept(result: KeepResult, noticeId: number | null): void {
    const { kernel_id: kernelId, ...idle } = result;
    this._idle.set(kernelId, idle as KernelIdle);
    this._changed.emit();
    this._kept.emit({
      kernelId,
      result,
      path: this.kernels.sessionOfKernel(kernelId)?.path ?? null,
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
    const running = this.kernels.runningKernelIds();
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

  private async _parkStep(
    kernelId: string,
    step: 'park' | 'resume',
    call: () => Promise<ParkAnswer>
  ): Promise<ParkAnswer> {
    this._parkPending.set(kernelId, step);
    this._changed.emit();
    try {
      return await call();
    } finally {
      // read the grant as it now stands before the button comes back
      await this.refresh();
      this._parkPending.delete(kernelId);
      this._changed.emit();
    }
  }

  private _emitChanged(): void {
    this._changed.emit();
  }

  private _connection: Connection;
  private _cluster: Cluster | null = null;
  /** The snapshot's page of the queue, what "Show more" read after it, and both together. */
  private _queueHead: Allocation[] = [];
  private _queueMore: Allocation[] = [];
  private _queue: Allocation[] = [];
  private _queueLength = 0;
  /** How many waiting requests after the first page "Show more" asked for. */
  private _queueExtra = 0;
  private _granted: Allocation[] = [];
  /** The user's active allocations as last read (GET allocations?user=). */
  private _own: Allocation[] = [];
  private _me: string | null = null;
  /** The ledger version of the last live snapshot, and of the last read beyond one. */
  private _version: number | null = null;
  private _followedVersion: number | null = null;
  private _followTimer: number | null = null;
  private _following = false;
  private _followAgain = false;
  private _lastFollow = 0;
  private _allocations: Allocation[] = [];
  private _gpus = new Map<string, ClusterGpu>();
  private _idle = new Map<string, KernelIdle>();
  private _hints = new Map<string, Hint[]>();
  private _usageAvailable = true;
  private _history = new Map<string, { sampledAt: string | null; values: number[] }>();
  private _releasing = new Set<number>();
  private _parkPending = new Map<string, 'park' | 'resume'>();
  private _simulated = false;
  private _error: string | null = null;
  private _updatedAt: number | null = null;
  private _sparklinePoints: number;
  private _isDisposed = false;
  private _changed = new Signal<this, void>(this);
  private _kept = new Signal<this, IKept>(this);
  private _applied = new Signal<this, ISnapshotApplied>(this);
}

/** Whether an action's answer is a keep's: a kernel id and an idle state. */
function isKeepResult(value: unknown): value is KeepResult {
  if (!value || typeof value !== 'object') {
    return false;
  }
  const v = value as Record<string, unknown>;
  return typeof v.kernel_id === 'string' && typeof v.state === 'string';
}
