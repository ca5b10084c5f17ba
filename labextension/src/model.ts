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
  IDLInfraClient,
  IWarning,
  Notice,
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

/** Reasons for which an ended request is not a failure: the user or the kernel ended it. */
const USER_END = /released by|kernel shut down|kernel restarted/i;

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
    } catch (error) {
      if (this._isDisposed) {
        return;
      }
      this._error = (error as Error).message ?? String(error);
      this._changed.emit();
    }
  }

  async requestGpus(kernelId: string, count: number, model?: string | null): Promise<Allocation> {
    const allocation = await this.client.requestGpus(kernelId, count, model);
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

  /** Carry out a notice's action. */
  async noticeAction(notice: Notice, actionId: string): Promise<void> {
    await this.client.noticeAction(notice.id, actionId);
    void this.refresh();
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
        byId.set(a.id, { ...byId.get(a.id)!, position: a.position, waiting_reason: a.waiting_reason });
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
                this._granted.emit({ allocation: ended, path, kernelName: null })
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
    const mine = notice.kernel_id === null || this.runningKernelIds().has(notice.kernel_id);
    if (!mine) {
      return;
    }
    if (notice.allocation_id !== null && notice.kind !== 'warning') {
      this._noticed.add(notice.allocation_id);
    }
    this._noticeReceived.emit(notice);
  }

  private _describe(allocation: Allocation): IMyAllocation {
    const session = this.sessionOfKernel(allocation.kernel_id);
    return {
      allocation,
      path: session?.path ?? null,
      kernelName: session?.kernelName ?? null
    };
  }

  private _active(): Allocation[] {
    return this._allocations;
  }

  private _onRunningChanged(): void {
    this._changed.emit();
  }

  private _services: ServiceManager.IManager;
  private _cluster: Cluster | null = null;
  private _queue: Allocation[] = [];
  private _allocations: Allocation[] = [];
  private _gpus = new Map<string, ClusterGpu>();
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
  private _changed = new Signal<this, void>(this);
  private _noticeReceived = new Signal<this, Notice>(this);
  private _granted = new Signal<this, IMyAllocation>(this);
  private _failed = new Signal<this, IFailure>(this);
  private _modeChanged = new Signal<this, ConnectionMode>(this);
}
