/**
 * The model of the extension: it follows the live event stream (falling back to polling the
 * REST API), keeps utilisation history per GPU, knows which allocations belong to this Lab's
 * kernels, and tells the widgets through Lumino signals. Widgets only render it.
 *
 * `DLInfraModel` builds the parts, wires them and answers for all of them; a widget that needs
 * one part takes that part (`model.parts.ledger`, `.jobs`, `.fairShare`, `.admin`). The parts,
 * each depending only on those listed before it:
 *   connection  the stream, and REST polling while it is away;
 *   kernels     this Lab's running kernels and sessions;
 *   ledger      GPUs, allocations, queue, idle states and hints, and the GPU actions;
 *   jobs        the user's batch jobs;
 *   fairShare   the user's fair-share standing;
 *   admin       who the user is, and the reclaim and scheduling policies;
 *   notices     the stream's notices for this Lab, and its requests' grants and failures.
 */
import { ServiceManager } from '@jupyterlab/services';
import { IDisposable } from '@lumino/disposable';
import { ISignal } from '@lumino/signaling';

import {
  Allocation,
  Cluster,
  ClusterGpu,
  FairShare,
  Hint,
  IDLInfraClient,
  IWarning,
  Job,
  JobBackends,
  JobRequest,
  JobSubmission,
  KeepResult,
  KernelIdle,
  Me,
  Notice,
  ParkAnswer,
  PolicyDoc,
  PolicyView,
  SchedulingPolicyDoc,
  SchedulingView,
  SimulationResult
} from '../api';
import { AdminModel } from './admin';
import { Connection, ConnectionMode } from './connection';
import { FairShareModel } from './fairshare';
import { JobsModel } from './jobs';
import { LabKernels } from './kernels';
import { IKept, IMyAllocation, LedgerModel } from './ledger';
import { IFailure, NoticesModel } from './notices';
import { UsageModel } from './usage';

export { AdminModel } from './admin';
export { Connection } from './connection';
export type { ConnectionMode } from './connection';
export { FairShareModel } from './fairshare';
export { JobsModel } from './jobs';
export { LabKernels } from './kernels';
export { LedgerModel, MAX_QUEUE_SHOWN, QUEUE_PAGE } from './ledger';
export type { IKept, IMyAllocation, ISnapshotApplied } from './ledger';
export { NoticesModel } from './notices';
export { UsageModel } from './usage';
export type { IFailure } from './notices';

export namespace DLInfraModel {
  export interface IOptions {
    client: IDLInfraClient;
    serviceManager: ServiceManager.IManager;
    /** Seconds between REST polls when the event stream is not available. */
    refreshInterval?: number;
    /** Utilisation samples kept per GPU for the sparklines. */
    sparklinePoints?: number;
  }

  /** The parts the model is made of. */
  export interface IParts {
    readonly kernels: LabKernels;
    readonly ledger: LedgerModel;
    readonly jobs: JobsModel;
    readonly fairShare: FairShareModel;
    readonly admin: AdminModel;
    readonly notices: NoticesModel;
    readonly usage: UsageModel;
  }
}

export class DLInfraModel implements IDisposable {
  constructor(options: DLInfraModel.IOptions) {
    const client = options.client;
    this.client = client;
    this._connection = new Connection(client, options.refreshInterval ?? 2);
    const kernels = new LabKernels(options.serviceManager);
    const ledger = new LedgerModel({
      client,
      kernels,
      connection: this._connection,
      sparklinePoints: options.sparklinePoints
    });
    const jobs = new JobsModel(client, ledger);
    const fairShare = new FairShareModel(client, ledger);
    const admin = new AdminModel(client, ledger, fairShare);
    const notices = new NoticesModel({ client, kernels, ledger, jobs, admin });
    const usage = new UsageModel(client);
    this.parts = { kernels, ledger, jobs, fairShare, admin, notices, usage };
  }

  readonly client: IDLInfraClient;
  readonly parts: DLInfraModel.IParts;

  /** Start following the server: one REST read of each part at once, and the event stream. */
  start(): void {
    if (this._started) {
      return;
    }
    this._started = true;
    const { ledger, jobs, fairShare, notices, usage } = this.parts;
    void ledger.refresh();
    void jobs.refresh();
    void fairShare.refresh();
    void usage.refresh();
    this._connection.start({
      snapshot: snapshot => ledger.applyLive(snapshot),
      notice: notice => notices.receive(notice),
      poll: () => ledger.refresh()
    });
  }

  get isDisposed(): boolean {
    return this._isDisposed;
  }

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    this._connection.dispose();
    const { kernels, ledger, jobs, fairShare, admin, notices, usage } = this.parts;
    for (const part of [usage, notices, admin, fairShare, jobs, ledger, kernels]) {
      part.dispose();
    }
  }

  /** Seconds between REST polls while the event stream is not available. */
  get refreshInterval(): number {
    return this._connection.refreshInterval;
  }
  set refreshInterval(seconds: number) {
    this._connection.refreshInterval = seconds;
  }

  /** Show a warning with action buttons (emitted through `warningRaised`). */
  warning(warning: IWarning): void {
    this.client.warn(warning);
  }
  /** Warnings with action buttons (see `IDLInfraClient.warn`). */
  get warningRaised(): ISignal<IDLInfraClient, IWarning> {
    return this.client.warningRaised;
  }

  /* ------------------------------------------------- the ledger (see `LedgerModel`) */

  get changed(): ISignal<LedgerModel, void> {
    return this.parts.ledger.changed;
  }
  get kept(): ISignal<LedgerModel, IKept> {
    return this.parts.ledger.kept;
  }
  get modeChanged(): ISignal<Connection, ConnectionMode> {
    return this._connection.modeChanged;
  }
  get mode(): ConnectionMode {
    return this._connection.mode;
  }
  get cluster(): Cluster | null {
    return this.parts.ledger.cluster;
  }
  get queue(): Allocation[] {
    return this.parts.ledger.queue;
  }
  get allocations(): Allocation[] {
    return this.parts.ledger.allocations;
  }
  get simulated(): boolean {
    return this.parts.ledger.simulated;
  }
  get error(): string | null {
    return this.parts.ledger.error;
  }
  get updatedAt(): number | null {
    return this.parts.ledger.updatedAt;
  }
  get sparklinePoints(): number {
    return this.parts.ledger.sparklinePoints;
  }
  set sparklinePoints(points: number) {
    this.parts.ledger.sparklinePoints = points;
  }
  history(uuid: string): number[] {
    return this.parts.ledger.history(uuid);
  }
  idleOf(kernelId: string): KernelIdle | null {
    return this.parts.ledger.idleOf(kernelId);
  }
  hintsOf(kernelId: string): Hint[] {
    return this.parts.ledger.hintsOf(kernelId);
  }
  gpu(uuid: string): ClusterGpu | null {
    return this.parts.ledger.gpu(uuid);
  }
  isMine(allocation: Allocation): boolean {
    return this.parts.ledger.isMine(allocation);
  }
  myAllocations(): IMyAllocation[] {
    return this.parts.ledger.myAllocations();
  }
  allocationById(allocationId: number | null | undefined): Allocation | null {
    return this.parts.ledger.allocationById(allocationId);
  }
  allocationOfKernel(kernelId: string): Allocation | null {
    return this.parts.ledger.allocationOfKernel(kernelId);
  }
  meanUtilisation(allocation: Allocation): number | null {
    return this.parts.ledger.meanUtilisation(allocation);
  }
  refresh(): Promise<void> {
    return this.parts.ledger.refresh();
  }
  requestGpus(
    kernelId: string,
    count: number,
    model?: string | null,
    priorityClass?: string | null
  ): Promise<Allocation> {
    return this.parts.ledger.requestGpus(kernelId, count, model, priorityClass);
  }
  release(allocationId: number): Promise<void> {
    return this.parts.ledger.release(allocationId);
  }
  noticeAction(notice: Notice, actionId: string): Promise<unknown> {
    return this.parts.ledger.noticeAction(notice, actionId);
  }
  keep(kernelId: string): Promise<KeepResult> {
    return this.parts.ledger.keep(kernelId);
  }
  park(kernelId: string): Promise<ParkAnswer> {
    return this.parts.ledger.park(kernelId);
  }
  resume(kernelId: string): Promise<ParkAnswer> {
    return this.parts.ledger.resume(kernelId);
  }

  /* ------------------------------------------------- this Lab's kernels (see `LabKernels`) */

  runningKernelIds(): Set<string> {
    return this.parts.kernels.runningKernelIds();
  }
  sessionOfKernel(kernelId: string): { path: string; name: string; kernelName: string } | null {
    return this.parts.kernels.sessionOfKernel(kernelId);
  }

  /* ------------------------------------------------- notices (see `NoticesModel`) */

  get noticeReceived(): ISignal<NoticesModel, Notice> {
    return this.parts.notices.noticeReceived;
  }
  get granted(): ISignal<NoticesModel, IMyAllocation> {
    return this.parts.notices.granted;
  }
  get failed(): ISignal<NoticesModel, IFailure> {
    return this.parts.notices.failed;
  }

  /* ------------------------------------------------- batch jobs (see `JobsModel`) */

  get jobsChanged(): ISignal<JobsModel, void> {
    return this.parts.jobs.changed;
  }
  get jobEnded(): ISignal<JobsModel, Job> {
    return this.parts.jobs.jobEnded;
  }
  get jobs(): Job[] {
    return this.parts.jobs.jobs;
  }
  get jobsAvailable(): boolean | null {
    return this.parts.jobs.available;
  }
  get jobsError(): string | null {
    return this.parts.jobs.error;
  }
  get jobsFetchedAt(): number | null {
    return this.parts.jobs.fetchedAt;
  }
  activeJobs(): Job[] {
    return this.parts.jobs.activeJobs();
  }
  jobById(jobId: number): Job | null {
    return this.parts.jobs.jobById(jobId);
  }
  jobDuration(job: Job, now = Date.now()): number | null {
    return this.parts.jobs.jobDuration(job, now);
  }
  refreshJobs(): Promise<void> {
    return this.parts.jobs.refresh();
  }
  backends(): Promise<JobBackends> {
    return this.parts.jobs.backends();
  }
  submitJob(request: JobRequest): Promise<JobSubmission> {
    return this.parts.jobs.submitJob(request);
  }
  cancelJob(jobId: number): Promise<Job> {
    return this.parts.jobs.cancelJob(jobId);
  }
  rerunJob(jobId: number): Promise<Job> {
    return this.parts.jobs.rerunJob(jobId);
  }

  /* ------------------------------------------------- fair share (see `FairShareModel`) */

  get fairShareChanged(): ISignal<FairShareModel, void> {
    return this.parts.fairShare.changed;
  }
  get fairShare(): FairShare | null {
    return this.parts.fairShare.standing;
  }
  get fairShareAvailable(): boolean | null {
    return this.parts.fairShare.available;
  }
  get fairShareError(): string | null {
    return this.parts.fairShare.error;
  }
  refreshFairShare(): Promise<void> {
    return this.parts.fairShare.refresh();
  }

  /* ------------------------------------------------- identity and policies (see `AdminModel`) */

  get policyChanged(): ISignal<AdminModel, PolicyView> {
    return this.parts.admin.policyChanged;
  }
  get schedulingChanged(): ISignal<AdminModel, SchedulingView> {
    return this.parts.admin.schedulingChanged;
  }
  get me(): Me | null {
    return this.parts.admin.me;
  }
  get policy(): PolicyView | null {
    return this.parts.admin.policy;
  }
  get scheduling(): SchedulingView | null {
    return this.parts.admin.scheduling;
  }
  loadMe(): Promise<Me> {
    return this.parts.admin.loadMe();
  }
  loadPolicy(): Promise<PolicyView> {
    return this.parts.admin.loadPolicy();
  }
  savePolicy(changes: Partial<PolicyDoc>): Promise<PolicyView> {
    return this.parts.admin.savePolicy(changes);
  }
  simulatePolicy(hours: number, policy?: Partial<PolicyDoc> | null): Promise<SimulationResult> {
    return this.parts.admin.simulatePolicy(hours, policy);
  }
  loadScheduling(): Promise<SchedulingView> {
    return this.parts.admin.loadScheduling();
  }
  saveScheduling(changes: Partial<SchedulingPolicyDoc>): Promise<SchedulingView> {
    return this.parts.admin.saveScheduling(changes);
  }

  private _connection: Connection;
  private _started = false;
  private _isDisposed = false;
}
