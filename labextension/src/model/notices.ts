/**
 * What this Lab is told about its own kernels and jobs: the stream's notices that concern them
 * (each once, though a reconnected stream repeats them), and the grants and failures of its
 * requests seen between successive snapshots when no notice says so first.
 */
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

import { Allocation, IDLInfraClient, jobIdOfKernel, Notice } from '../api';
import { AdminModel } from './admin';
import { JobsModel } from './jobs';
import { LabKernels } from './kernels';
import { IMyAllocation, LedgerModel } from './ledger';

/** An allocation whose request failed, with the reason. */
export interface IFailure {
  allocation: Allocation;
  path: string | null;
}

export namespace NoticesModel {
  export interface IOptions {
    client: IDLInfraClient;
    kernels: LabKernels;
    ledger: LedgerModel;
    /** Says whose jobs the `job_ended` notices are about, and reads them again. */
    jobs: JobsModel;
    /** Who the user is (`me`), once read. */
    admin: AdminModel;
  }
}

/** How long a grant/failure seen in snapshots waits for a matching notice before being reported. */
const NOTICE_GRACE_MS = 1_500;

/** Reasons for which an ended request is not a failure: the user or the kernel ended it. */
const USER_END = /released by|kernel shut down|kernel restarted/i;

export class NoticesModel implements IDisposable {
  constructor(options: NoticesModel.IOptions) {
    this._client = options.client;
    this._kernels = options.kernels;
    this._ledger = options.ledger;
    this._jobs = options.jobs;
    this._admin = options.admin;
    this._ledger.applied.connect(this._trackTransitions, this);
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
  get isDisposed(): boolean {
    return this._isDisposed;
  }

  /** Take a notice from the stream: passed on when it concerns this Lab. */
  receive(notice: Notice): void {
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
      const me = this._admin.me;
      const mine =
        (jobId !== null && this._jobs.jobById(jobId) !== null) ||
        (me !== null && notice.user === me.user);
      this._jobs.refreshSoon();
      if (mine) {
        this._noticeReceived.emit(notice);
      }
      return;
    }
    // A reclaim may shut the kernel down before its notice comes: recent kernels count too.
    this._kernels.remember();
    const mine = notice.kernel_id === null || this._kernels.isRecent(notice.kernel_id);
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

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    for (const timer of this._pendingReports.values()) {
      clearTimeout(timer);
    }
    Signal.clearData(this);
  }

  /** Find grants and failures of this Lab's requests between successive snapshots. */
  private _trackTransitions(): void {
    const running = this._kernels.runningKernelIds();
    const active = new Map(this._ledger.allocations.map(a => [a.id, a]));
    for (const [id, before] of this._tracked) {
      const now = active.get(id);
      if (now) {
        if (before.state === 'queued' && now.state === 'granted') {
          this._report(id, () => this._granted.emit(this._ledger.describe(now)));
        }
        continue;
      }
      // It ended: find out how, unless the user released it from here.
      const releasedHere = this._ledger.takeRelease(id);
      if (before.state === 'queued' && !releasedHere) {
        const path = this._kernels.sessionOfKernel(before.kernel_id)?.path ?? null;
        this._client
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
    }
    this._tracked.clear();
    for (const a of this._ledger.allocations) {
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

  private _client: IDLInfraClient;
  private _kernels: LabKernels;
  private _ledger: LedgerModel;
  private _jobs: JobsModel;
  private _admin: AdminModel;
  private _tracked = new Map<number, Allocation>();
  private _noticed = new Set<number>();
  private _seenNotices = new Set<string>();
  private _pendingReports = new Map<number, number>();
  private _isDisposed = false;
  private _noticeReceived = new Signal<this, Notice>(this);
  private _granted = new Signal<this, IMyAllocation>(this);
  private _failed = new Signal<this, IFailure>(this);
}
