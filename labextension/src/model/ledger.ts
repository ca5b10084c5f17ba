/**
 * The ledger as this Lab sees it: the cluster's GPUs (with a utilisation history per GPU for
 * the sparklines), the active allocations and the queue, and the idle state and hints of
 * kernels, from the stream's snapshots or REST reads; and the GPU actions (request, release,
 * keep, a notice's buttons).
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
  Snapshot
} from '../api';
import { Connection, ConnectionMode } from './connection';
import { LabKernels } from './kernels';

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
      this._apply(
        {
          seq: -1,
          at: new Date().toISOString(),
          cluster,
          allocations,
          queue,
          simulated: cluster.simulated
        },
        false
      );
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

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
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
    this._applied.emit({ live });
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

  private _emitChanged(): void {
    this._changed.emit();
  }

  private _connection: Connection;
  private _cluster: Cluster | null = null;
  private _queue: Allocation[] = [];
  private _allocations: Allocation[] = [];
  private _gpus = new Map<string, ClusterGpu>();
  private _idle = new Map<string, KernelIdle>();
  private _hints = new Map<string, Hint[]>();
  private _usageAvailable = true;
  private _history = new Map<string, { sampledAt: string | null; values: number[] }>();
  private _releasing = new Set<number>();
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
