/**
 * The one typed client of the jupyter-dlinfra REST API (see api/openapi.yaml) and of its
 * live event stream. Everything that talks to the server goes through here.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';
import { IDisposable } from '@lumino/disposable';
import { Token } from '@lumino/coreutils';
import { ISignal, Signal } from '@lumino/signaling';
import { applyDelta, StreamGap } from './delta';

/* ------------------------------------------------------------------ JSON shapes */

/** An ISO 8601 time in UTC. */
export type Timestamp = string;

/** Where the server reads its GPUs from. */
export interface Provider {
  /** `nvml`, `simulated` or `none`. */
  name: string;
  simulated: boolean;
  /** Why this provider was chosen, or why it reports nothing. */
  reason: string;
}

/** The allocation holding a GPU, and its kernel. */
export interface Holder {
  allocation_id: number;
  kernel_id: string;
  user: string;
  kernel_name: string | null;
  path: string | null;
  since: Timestamp | null;
}

/** One GPU of the cluster. */
export interface ClusterGpu {
  uuid: string;
  index: number;
  model: string;
  memory_total_bytes: number;
  simulated: boolean;
  holder: Holder | null;
  /**
   * The parked kernel's grant this GPU returns to when that kernel resumes (while it is
   * `parked` or `resuming`): the GPU is then lent to `holder` (a preemptible job whose grant is
   * `on_loan`), or, with no holder, free to lend to such jobs only (not counted in the
   * cluster's `free_count`). Null when not parked (absent on servers without parking).
   */
  parked_for?: Holder | null;
  utilization_percent: number | null;
  memory_used_bytes: number | null;
  sampled_at: Timestamp | null;
  /** Work on a GPU that nobody holds in the ledger (someone bypassing it); null: none. */
  outside_ledger?: OutsideLedger | null;
}

/** What runs on a GPU the ledger says is free: its compute processes and their owners, or
 * (on Kubernetes) the pods not started by jupyter-dlinfra it is kept out for. */
export interface OutsideLedger {
  processes: { pid: number; user: string | null; memory_used_bytes: number }[];
  users: string[];
  pods?: string[];
}

/** One node of the cluster. */
export interface ClusterNode {
  name: string;
  gpus: ClusterGpu[];
}

/** GET dlinfra/api/cluster */
export interface Cluster {
  provider: Provider;
  simulated: boolean;
  nodes: ClusterNode[];
  gpu_count: number;
  free_count: number;
  queue_length: number;
}

/** One GPU of an allocation (metrics only in GET answers, null until sampled). */
export interface AllocationGpu {
  uuid: string;
  index: number | null;
  model: string | null;
  simulated: boolean;
  utilization_percent?: number | null;
  memory_used_bytes?: number | null;
  sampled_at?: Timestamp | null;
}

export type AllocationState = 'queued' | 'granted' | 'released' | 'cancelled';

/**
 * Why a queued request waits, as a code (`waiting_reason` says it in words):
 * - `quota`: granting it would pass the user's or a group's quota;
 * - `priority`: the GPUs it could use are kept for higher-class requests ahead of it;
 * - `fair_share`: ...kept for requests of users with less recent GPU use;
 * - `order`: ...kept for earlier requests of the same standing;
 * - `no_free_gpu`: not enough GPUs (of its model, on its node) are free at all;
 * - `preempting`: lower-priority jobs are being stopped for it;
 * - `starting`: GPUs are free for it; the next pass grants them;
 * - `cluster`: Kubernetes places it (a pod kernel on a team gateway); the reason is the
 *   scheduler's own words about the pod.
 */
export type WaitingCode =
  | 'quota'
  | 'priority'
  | 'fair_share'
  | 'order'
  | 'no_free_gpu'
  | 'preempting'
  | 'starting'
  | 'cluster';

/** Who made a request: a kernel's `%gpu` (or the toolbar), or a batch job. */
export type AllocationKind = 'kernel' | 'job';

/** One request for GPUs by one kernel, through its whole life. */
export interface Allocation {
  id: number;
  kernel_id: string;
  user: string;
  node: string;
  count: number;
  model: string | null;
  state: AllocationState;
  gpus: AllocationGpu[];
  cuda_visible_devices: string;
  created_at: Timestamp;
  granted_at: Timestamp | null;
  ended_at: Timestamp | null;
  end_reason: string | null;
  /** 1-based place in the order of service (queued requests only). */
  position: number | null;
  /** Why it waits, in words (queued requests only). */
  waiting_reason: string | null;
  /*
   * The scheduling fields below are absent on servers without priority classes and fair share.
   */
  /** Why it waits, as a code (null unless queued). */
  waiting_code?: WaitingCode | string | null;
  /** When it may start: an estimate from typical durations, null when there is none. */
  estimated_start?: Timestamp | null;
  /** What the estimate rests on: `history` (recent holding times) or `default`. */
  estimate_basis?: 'history' | 'default' | string | null;
  /** The same in words, to follow the estimate ("from recent holding times"). */
  estimate_note?: string | null;
  /** The priority class it is served in (such as `interactive` or `batch`). */
  priority_class?: string | null;
  kind?: AllocationKind | string;
  /** Granted beyond a quota (on GPUs nobody within quota wanted): the first taken back. */
  borrowed?: boolean;
  /** Set once the scheduler preempted this grant, for the request of that id. */
  preempted_for?: number | null;
  /** Why it is being preempted, in words. */
  preempt_reason?: string | null;
  /** `pool`: the ledger admits it on any one node (Kubernetes); `cluster`: a Kubernetes
   * scheduler places it (with Kueue or `admission: false`). */
  placement?: 'ledger' | 'pool' | 'cluster';
  /** Nodes a request of the pool is not granted on (an earlier grant there was handed back). */
  avoid?: string[];
  /**
   * A kernel's grant whose GPU memory is parked in host memory (its `gpus` are the ones it
   * returns to; while `parked` or `resuming` they are lent or free to lend); null when not
   * parked (absent on servers without parking).
   */
  park?: ParkState | null;
  /** Granted on a parked kernel's GPUs: preempted as soon as that kernel resumes. */
  on_loan?: boolean;
  simulated: boolean;
}

/**
 * Where a parked grant stands: `parking` (being checkpointed; it still holds its GPUs),
 * `parked` (its GPU memory waits in host memory; its GPUs are lent to preemptible jobs),
 * `resuming` (its kernel wants them back; the jobs on them are being stopped), `restoring`
 * (its GPUs are back; its process is being restored).
 */
export interface ParkState {
  state: 'parking' | 'parked' | 'resuming' | 'restoring';
  /** When it was parked; null while parking. */
  since: Timestamp | null;
  /** Why it was parked, in words ("parked: idle for 12 min ..."). */
  reason: string | null;
  /** GPU memory the host keeps for it; null while parking. */
  bytes: number | null;
}

/** POST dlinfra/api/kernels/<id>/park and .../resume: the grant as it now stands. */
export interface ParkAnswer {
  parked?: boolean;
  allocation: Allocation;
  simulated?: boolean;
}

/** GET dlinfra/api/allocations: a page of them, oldest first. */
export interface AllocationList {
  allocations: Allocation[];
  /** How many match in all (absent on old servers, which list them all at once). */
  total?: number;
  offset?: number;
  limit?: number;
  /** Where the next page starts, or null after the last. */
  next_offset?: number | null;
  simulated: boolean;
}

/** Which allocations GET dlinfra/api/allocations lists. */
export interface AllocationFilter {
  kernelId?: string;
  user?: string;
  state?: 'active' | 'granted' | 'all';
}

/** The largest page GET dlinfra/api/allocations gives. */
export const ALLOCATIONS_PAGE_MAX = 1000;

/** GET dlinfra/api/queue: a page of the waiting requests, in the order of service. */
export interface Queue {
  queue: Allocation[];
  /** How many wait in all (absent on old servers, which list the whole queue). */
  total?: number;
  offset?: number;
  limit?: number;
  /** Where the next page starts, or null after the last. */
  next_offset?: number | null;
  simulated: boolean;
}

/** Every error answer of the API. */
export interface ApiErrorBody {
  message: string;
  reason: string;
}

/* ---------------------------------------------------------------- idle reclaim */

/** Where a kernel holding GPUs stands with idle reclaim. */
export type IdleState = 'active' | 'idle' | 'warned' | 'reclaimed';

/** What the policy does when a kernel's idle GPUs are reclaimed. */
export type ReclaimAction = 'release' | 'shutdown' | 'notify' | 'park';

/** The idle state of a kernel the reclaim policy judges. */
export interface IdleInfo {
  state: IdleState;
  /** Since when all the kernel's GPUs have been idle (null when active). */
  idle_since: Timestamp | null;
  /** When the owner was warned, null before. */
  warned_at: Timestamp | null;
  /** When the owner will be warned, null when the policy does not warn or the kernel is active. */
  warn_at: Timestamp | null;
  /** When the GPUs will be reclaimed, null when the policy does not reclaim or nothing is idle. */
  reclaim_at: Timestamp | null;
  /** A "keep" holds the GPUs until then. */
  hold_until: Timestamp | null;
  /** How many more keeps the policy allows in this idle stretch. */
  keeps_left: number;
  action: ReclaimAction;
  /** The last utilisation seen (the busiest of the kernel's GPUs, %). */
  last_util: number | null;
}

/** The idle state of a kernel whose user (or group) is exempt from reclaim. */
export interface IdleExempt {
  state: 'exempt';
}

export type KernelIdle = IdleInfo | IdleExempt;

/** Whether an idle state is judged by a policy (not exempt). */
export function isJudged(idle: KernelIdle | null | undefined): idle is IdleInfo {
  return !!idle && idle.state !== 'exempt';
}

/** A suggestion about how a kernel uses its GPUs ("memory held, no compute", ...). */
export interface Hint {
  code: string;
  message: string;
}

/** POST dlinfra/api/kernels/<id>/keep (and the `keep` notice action). */
export type KeepResult = { kernel_id: string } & KernelIdle;

/** GET dlinfra/api/me */
export interface Me {
  user: string;
  /** Set when the caller is a kernel (kernel token), null for people. */
  kernel_id: string | null;
  groups: string[];
  admin: boolean;
  simulated: boolean;
}

/** The thresholds of the reclaim policy; times in seconds, 0 switches a stage off. */
export interface PolicyFields {
  /** A GPU under this utilisation (%) is idle; 0 switches detection off. */
  idle_util_percent: number;
  /** Idle this long before the kernel shows as idle; 0 switches detection off. */
  idle_after: number;
  /** Idle this long before the owner is warned; 0 switches warnings and reclaim off. */
  warn_after: number;
  /** Idle this long before the GPUs are reclaimed; 0 switches reclaim off. */
  reclaim_after: number;
  action: ReclaimAction;
  /** Each keep holds the GPUs this much longer; 0 disables keeping. */
  keep_extension: number;
  /** Keeps allowed per idle stretch; 0 disables keeping. */
  max_keeps: number;
}

/** What differs for one user or group: some fields, or an exemption. */
export type PolicyOverride = Partial<PolicyFields> & { exempt?: boolean };

/** The whole reclaim policy: the default and overrides per user and per group. */
export interface PolicyDoc extends PolicyFields {
  users: Record<string, PolicyOverride>;
  groups: Record<string, PolicyOverride>;
}

/** One recorded change of the policy. */
export interface PolicyChange {
  seq: number;
  at: Timestamp;
  who: string;
  field: string;
  old: unknown;
  new: unknown;
}

/** GET and PUT dlinfra/api/policy */
export interface PolicyView {
  policy: PolicyDoc;
  /** `api` when set through PUT, `config` when it is the server configuration's. */
  source: 'api' | 'config';
  updated_at: Timestamp | null;
  updated_by: string | null;
  /** The policy of the server configuration. */
  configured: PolicyDoc;
  /** Whether the caller may change it (an admin). */
  editable: boolean;
  /** The most recent changes, newest first. */
  changes: PolicyChange[];
  simulated: boolean;
}

/** One kernel a dry run would have warned or reclaimed. */
export interface SimulatedKernel {
  kernel_id: string;
  user: string;
  path: string | null;
  gpus: number;
  warnings: number;
  reclaims: number;
  false_reclaims: number;
  recovered_gpu_hours: number;
  idle_gpu_hours: number;
}

/** POST dlinfra/api/policy/simulate */
export interface SimulationResult {
  hours: number;
  since: Timestamp;
  until: Timestamp;
  policy: PolicyDoc;
  kernels_seen: number;
  held_gpu_hours: number;
  idle_gpu_hours: number;
  recovered_gpu_hours: number;
  recovered_pct: number;
  warnings: number;
  reclaims: number;
  false_reclaims: number;
  kernels: SimulatedKernel[];
  simulated?: boolean;
}

/* ---------------------------------------------------------------- scheduling */

/** One priority class of the scheduling policy. */
export interface PriorityClassSpec {
  /** Higher is served first: classes are strict tiers, fair share orders within one. */
  priority: number;
  /** Its batch jobs may be stopped and requeued for a higher class (kernels never are). */
  preemptible: boolean;
}

/** The scheduling policy: priority classes, fair share, quotas, borrowing and preemption. */
export interface SchedulingPolicyDoc {
  /** Class name -> class. */
  classes: Record<string, PriorityClassSpec>;
  /** The class of a kernel's `%gpu` request (never preemptible). */
  kernel_class: string;
  /** The class of a job submitted without one. */
  job_class: string;
  /** Order users within a class by recent GPU use per share (off: first come, first served). */
  fair_share: boolean;
  /** Seconds after which past GPU use counts half as much. */
  half_life: number;
  /** The share of a user or group not listed. */
  default_share: number;
  user_shares: Record<string, number>;
  group_shares: Record<string, number>;
  /** GPUs one user may hold at once; null: no limit. */
  default_user_quota: number | null;
  user_quotas: Record<string, number>;
  group_quotas: Record<string, number>;
  /** Over-quota work of a preemptible class may use GPUs nobody within quota wants. */
  borrowing: boolean;
  /** Stop preemptible jobs of lower classes, and borrowed GPUs, for a waiting claim. */
  preemption: boolean;
  /** Blocked requests that keep free GPUs for themselves in each pass; 0: pure backfill. */
  reservations: number;
  /** Seconds after which a waiting request goes ahead of fair-share order; 0: never. */
  starvation_limit: number;
}

/** GET and PUT dlinfra/api/scheduling */
export interface SchedulingView {
  policy: SchedulingPolicyDoc;
  /** `api` when set through PUT, `config` when it is the server configuration's. */
  source: 'api' | 'config';
  updated_at: Timestamp | null;
  updated_by: string | null;
  /** The policy of the server configuration. */
  configured: SchedulingPolicyDoc;
  /** Whether the caller may change it (an admin). */
  editable: boolean;
  /** The most recent changes, newest first (fields such as `classes.batch.priority`). */
  changes: PolicyChange[];
  simulated?: boolean;
}

/** One user's fair-share standing. */
export interface Standing {
  user: string;
  /** The fair-share account (a group with a share), or '' for none. */
  account: string;
  /** Recent GPU use, decayed by the half-life (GPUs held now count too). */
  usage_gpu_hours: number;
  /** GPUs held now. */
  held: number;
  share: number;
  account_share: number;
  /** 0 to 1: 1 = no recent use, 0.5 = used exactly the share, towards 0 = far over it. */
  factor: number;
  /** 1-based rank among users with waiting requests (lower is served first), or null. */
  rank: number | null;
}

/** GET dlinfra/api/fairshare */
export interface FairShare {
  user: string;
  /** The caller's standing, null when the ledger has no record of them (no recent use). */
  you: Standing | null;
  /** Everyone's standing (admins only, else null). */
  users: Standing[] | null;
  /** Whether fair share orders requests within a class. */
  fair_share: boolean;
  /** Seconds after which past use counts half as much. */
  half_life: number;
  /** GPUs the caller may hold at once, null: no limit. */
  quota: number | null;
  simulated?: boolean;
}

/** The figures of one row of a usage report (GET reports/usage); see docs/reports.md. */
export interface UsageFigures {
  gpu_hours: number;
  busy_gpu_hours: number;
  observed_gpu_hours: number;
  /** busy over held, 0 to 1; null when nothing was held. */
  efficiency: number | null;
  idle_gpu_hours: number;
  reclaimed_gpu_hours: number;
  grants: number;
  wait_p50_s: number | null;
  wait_p95_s: number | null;
  jobs_succeeded: number;
  jobs_failed: number;
  jobs_cancelled: number;
  series: { start: string; gpu_hours: number; busy_gpu_hours: number; idle_gpu_hours: number }[];
}

/** GET dlinfra/api/reports/usage */
export interface UsageReport {
  since: string;
  until: string;
  by: string;
  step: string;
  /** Whose usage: null for everyone's (admins). */
  user: string | null;
  idle_util_percent: number;
  rows: (UsageFigures & { key: string })[];
  total: UsageFigures;
  simulated?: boolean;
}

/** One GPU of a kernel's latest reading. */
export interface UsageGpu {
  uuid: string;
  held: boolean;
  utilization_percent: number | null;
  memory_used_bytes: number | null;
  memory_total_bytes: number | null;
}

/** GET dlinfra/api/kernels/<id>/usage */
export interface KernelUsage {
  kernel_id: string;
  user: string;
  held: string[];
  at: Timestamp | null;
  at_epoch: number | null;
  gpus: UsageGpu[];
  gpu_util_mean: number | null;
  memory_share: number | null;
  cpu_percent: number | null;
  processes: unknown;
  executing: boolean | null;
  hints: Hint[];
  idle: KernelIdle | null;
  /** The kernel's parked grant (absent on servers without parking); `held` leaves it out. */
  parked?: { allocation_id: number; park: ParkState } | null;
  simulated?: boolean;
}

/* ---------------------------------------------------------------- live stream */

/** `event: snapshot` of the live stream. */
export interface Snapshot {
  seq: number;
  at: Timestamp;
  cluster: Cluster;
  /**
   * The ledger's change counter: it moves with every change, not with telemetry (absent on old
   * servers).
   */
  version?: number;
  /** The first waiting requests (a page), in the order of service. */
  queue: Allocation[];
  /** How many wait in all (absent on old servers, whose `queue` is the whole queue). */
  queue_length?: number;
  /**
   * The granted allocations, with live GPU metrics (old servers: the queued ones too); queued
   * requests further down than `queue` lists are read through `GET allocations?user=`.
   */
  allocations: Allocation[];
  simulated: boolean;
  /** Idle states by kernel id (kernels the reclaim policy has judged); absent on old servers. */
  idle?: Record<string, KernelIdle>;
  /** Usage hints by kernel id; absent on old servers. */
  hints?: Record<string, Hint[]>;
}

/** The data of a `delta` event: what changed since snapshot `base` (see `applyDelta`). */
export interface SnapshotDelta {
  seq: number;
  base: number;
  at: Timestamp;
  version: number;
  /** The cluster's fields but its nodes. */
  cluster: Omit<Cluster, 'nodes'>;
  /** GPU entries to put, by node name. */
  gpus: Record<string, ClusterGpu[]>;
  /** UUIDs of GPUs no longer present, by node name. */
  gpus_gone: Record<string, string[]>;
  /** The ids of the queue's first page in order, and its entries that are new or changed;
   *  absent when the page stayed. */
  queue_order?: number[];
  queue_put?: Allocation[];
  queue_length: number;
  /** Granted allocations to put, and the ids of those no longer granted. */
  allocations: Allocation[];
  allocations_gone: number[];
  simulated: boolean;
  /** Absent when unchanged. */
  idle?: Record<string, KernelIdle>;
  hints?: Record<string, Hint[]>;
}

/** An action button offered by a notice. */
export interface NoticeAction {
  id: string;
  label: string;
}

/** The job id of a ledger holder named `job-<id>` (a batch job's GPUs), or null. */
export function jobIdOfKernel(kernelId: string | null | undefined): number | null {
  const match = /^job-(\d+)$/.exec(kernelId ?? '');
  return match ? Number(match[1]) : null;
}

/** `event: notice` of the live stream. */
export interface Notice {
  id: number;
  /** `job_ended` notices name the job in `kernel_id` (`job-<id>`); see `jobIdOfKernel`. */
  kind:
    | 'granted'
    | 'ended'
    | 'warning'
    | 'idle_warning'
    | 'idle_reclaimed'
    | 'job_ended'
    | string;
  level: 'info' | 'warning' | 'error';
  user: string | null;
  kernel_id: string | null;
  allocation_id: number | null;
  message: string;
  actions: NoticeAction[];
}

/**
 * A warning with action buttons, raised by the client (for example by idle reclaim):
 * each action, when chosen, is POSTed to its `url` (relative to the server's base URL, or
 * absolute).
 */
export interface IWarning {
  message: string;
  level?: 'info' | 'warning' | 'error';
  kernelId?: string | null;
  actions?: Array<{ label: string; url: string; body?: unknown }>;
}

/* ------------------------------------------------------------------ batch jobs */

/** Where a batch job is in its life. */
export type JobState = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';

/** Whether a job state is active (queued or running). */
export function isActiveJob(state: JobState | string): boolean {
  return state === 'queued' || state === 'running';
}

/** The files a job produces, relative to the server's root (null while not produced yet). */
export interface JobOutputs {
  notebook: string | null;
  html: string | null;
  script: string | null;
  log: string | null;
}

/** The kinds of output a job produces (GET jobs/<id>/output?format=...). */
export type JobOutputFormat = keyof JobOutputs;

/** A batch job made from a notebook. */
export interface Job {
  id: number;
  name: string;
  user: string;
  /** The notebook, relative to the server's root. */
  path: string;
  backend: string;
  node: string;
  gpus: number;
  /** A distributed job's nodes, ranks per node and ranks in all; null for one process. */
  nodes?: number | null;
  gpus_per_node?: number | null;
  world_size?: number | null;
  /** A job with roles: each role, in rank order (its replicas are consecutive ranks). */
  roles?: Array<{ name: string; replicas: number }> | null;
  model: string | null;
  priority: number;
  /** The scheduling class it runs in (absent on servers without classes). */
  priority_class?: string | null;
  /** Times it was preempted and queued again (absent on servers without preemption). */
  attempts?: number;
  parameters: Record<string, unknown>;
  /** The jobs this one waits for. */
  after: number[];
  /** Jobs of one sweep share a group id. */
  group_id: string | null;
  state: JobState;
  /** Why a queued job waits, or how the job ended, in words (or null). */
  reason: string | null;
  /** A queued job's place in the queue that decides its start (the ledger's, or SLURM's). */
  position?: number | null;
  /** How many compete in that queue, where known. */
  queue_length?: number | null;
  /** That queue's estimate of the start: the ledger's, or SLURM's own (`squeue --start`). */
  estimated_start?: Timestamp | null;
  created_at: Timestamp;
  started_at: Timestamp | null;
  ended_at: Timestamp | null;
  /** Seconds run so far (until now for a running job), null before it starts. */
  duration_s: number | null;
  allocation_id: number | null;
  /** For a failed job: the cell (1-based) that failed, and its error. */
  failed_cell: number | null;
  error: string | null;
  /** The job's directory relative to the server's root, or null. */
  workdir: string | null;
  outputs: JobOutputs;
}

/** What POST jobs answers for a sweep: one job per combination. */
export interface JobGroup {
  group_id: string;
  jobs: Job[];
}

/** The answer of POST jobs: a job, or a sweep's group. */
export type JobSubmission = Job | JobGroup;

/** Whether a submission's answer is a sweep's group. */
export function isJobGroup(value: JobSubmission): value is JobGroup {
  return Array.isArray((value as JobGroup).jobs);
}

/** The body of POST jobs. */
export interface JobRequest {
  /** The notebook, relative to the server's root (the contents API's path). */
  path: string;
  name?: string;
  /** GPUs (0 or more); left out, the notebook's `%gpu` line decides. */
  gpus?: number;
  /** Run as ranks, one per GPU, over this many nodes; left out, the `%gpu` line's `--nodes`. */
  nodes?: number;
  model?: string;
  /** -1000 to 1000. */
  priority?: number;
  /** A class of the scheduling policy; left out, the policy's `job_class`. */
  priority_class?: string;
  parameters?: Record<string, unknown>;
  /** Parameter name -> values: one job per combination. */
  sweep?: Record<string, unknown[]>;
  backend?: string;
  /** Jobs that must succeed first. */
  after?: number[];
}

/** One backend jobs can be submitted to. */
export interface JobBackend {
  name: string;
  /** Whether the ledger places the job's GPUs (the local backend) or the backend does. */
  places_gpus: boolean;
  available: boolean;
  /** Why it is not available. */
  reason?: string | null;
}

/** GET dlinfra/api/backends */
export interface JobBackends {
  default: string;
  backends: JobBackend[];
}

/** GET dlinfra/api/jobs/<id>/log?offset=N: ask again from `next_offset` until `complete`. */
export interface JobLogChunk {
  job_id: number;
  state: JobState;
  offset: number;
  next_offset: number;
  size: number;
  text: string;
  complete: boolean;
}

/* ------------------------------------------------------------------ errors */

/** A failed API call: the HTTP status and the server's `{message, reason}`. */
export class DLInfraApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly reason: string
  ) {
    super(message);
    this.name = 'DLInfraApiError';
  }
}

/* ------------------------------------------------------------------ event stream */

/** Callbacks of an event stream subscription. */
export interface IEventHandlers {
  onOpen?: () => void;
  onSnapshot: (snapshot: Snapshot) => void;
  onNotice?: (notice: Notice) => void;
  /** The stream failed or closed; the subscription is closed already. */
  onError: (error: Event | Error) => void;
}

/* ------------------------------------------------------------------ client */

/** The client, as other extensions reach it through the `IDLInfraClient` token. */
export interface IDLInfraClient {
  readonly serverSettings: ServerConnection.ISettings;
  cluster(): Promise<Cluster>;
  /** GET dlinfra/api/allocations: every matching one, page after page. */
  allocations(options?: AllocationFilter): Promise<Allocation[]>;
  /** GET dlinfra/api/allocations?offset=&limit=: one page, with the total. */
  allocationsPage(
    options?: AllocationFilter & { offset?: number; limit?: number }
  ): Promise<AllocationList>;
  allocation(allocationId: number): Promise<Allocation>;
  /** GET dlinfra/api/queue: its first page (the server's default limit). */
  queue(): Promise<Allocation[]>;
  /** GET dlinfra/api/queue?offset=&limit=&node=: a page of the queue, with the total. */
  queuePage(options?: { offset?: number; limit?: number; node?: string }): Promise<Queue>;
  /** POST dlinfra/api/allocations; left out, the class is the policy's `kernel_class`. */
  requestGpus(
    kernelId: string,
    count: number,
    model?: string | null,
    priorityClass?: string | null
  ): Promise<Allocation>;
  release(allocationId: number): Promise<void>;
  /**
   * POST dlinfra/api/notices/<id>/actions/<action_id>: the answer's JSON body (for `keep`, a
   * `KeepResult`), or null when it has none.
   */
  noticeAction(noticeId: number, actionId: string): Promise<unknown>;
  /** POST dlinfra/api/kernels/<id>/keep: hold a kernel's idle GPUs longer (409 when it cannot). */
  keep(kernelId: string): Promise<KeepResult>;
  /**
   * POST dlinfra/api/kernels/<id>/park: checkpoint the kernel's GPU memory to the host and
   * lend its GPUs until its next cell (409 with the reason when it cannot be parked).
   */
  park(kernelId: string): Promise<ParkAnswer>;
  /** POST dlinfra/api/kernels/<id>/resume: start taking a parked kernel's GPUs back. */
  resume(kernelId: string): Promise<ParkAnswer>;
  /** GET dlinfra/api/kernels/<id>/usage: the kernel's latest reading, idle state and hints. */
  usage(kernelId: string): Promise<KernelUsage>;
  /** GET dlinfra/api/me */
  me(): Promise<Me>;
  /** GET dlinfra/api/policy */
  policy(): Promise<PolicyView>;
  /** PUT dlinfra/api/policy (admins): fields left out keep their values. */
  setPolicy(changes: Partial<PolicyDoc>): Promise<PolicyView>;
  /** POST dlinfra/api/policy/simulate (admins): what a policy would have done. */
  simulatePolicy(hours: number, policy?: Partial<PolicyDoc> | null): Promise<SimulationResult>;
  /** GET dlinfra/api/scheduling: the scheduling policy, its source and recent changes. */
  scheduling(): Promise<SchedulingView>;
  /**
   * PUT dlinfra/api/scheduling (admins): fields left out keep their values; `classes`, when
   * given, replaces all the classes.
   */
  setScheduling(changes: Partial<SchedulingPolicyDoc>): Promise<SchedulingView>;
  /** GET dlinfra/api/fairshare: the caller's fair-share standing (admins: everyone's). */
  fairShare(): Promise<FairShare>;
  /** GET dlinfra/api/reports/usage: one person's usage (anyone's for admins) since `since`. */
  usageReport(options: {
    since: string;
    user?: string;
    by?: string;
    step?: string;
  }): Promise<UsageReport>;
  /** The URL of a usage report (for a download link: `format: 'csv'`). */
  usageReportUrl(options: { since: string; by?: string; format?: 'json' | 'csv' }): string;
  /** POST to any action URL (relative to the base URL, or absolute). */
  postAction(url: string, body?: unknown): Promise<void>;
  /** GET dlinfra/api/backends: where jobs can run, and the default. */
  backends(): Promise<JobBackends>;
  /** POST dlinfra/api/jobs: a job, or for a sweep its group (400 says what is wrong). */
  submitJob(request: JobRequest): Promise<JobSubmission>;
  /** GET dlinfra/api/jobs: the caller's jobs (admins: `user`'s), newest first. */
  jobs(state?: 'active' | 'ended' | 'all', user?: string): Promise<Job[]>;
  /** GET dlinfra/api/jobs/<id> */
  job(jobId: number): Promise<Job>;
  /** DELETE dlinfra/api/jobs/<id>: cancel (a running job ends shortly after). */
  cancelJob(jobId: number): Promise<Job>;
  /** POST dlinfra/api/jobs/<id>/rerun: the new job. */
  rerunJob(jobId: number): Promise<Job>;
  /** GET dlinfra/api/jobs/<id>/log from a byte offset. */
  jobLog(jobId: number, offset?: number, rank?: number | null): Promise<JobLogChunk>;
  /** The URL of a job's output file (GET dlinfra/api/jobs/<id>/output?format=...). */
  jobOutputUrl(jobId: number, format?: JobOutputFormat): string;
  /** The URL of the live event stream (with the token when one is set). */
  eventsUrl(): string;
  /** Subscribe to the live event stream; dispose to close it. */
  subscribe(handlers: IEventHandlers): IDisposable;
  /** Show a warning with action buttons (see `IWarning`). */
  warn(warning: IWarning): void;
  /** Emitted by `warn`. */
  readonly warningRaised: ISignal<IDLInfraClient, IWarning>;
}

export const IDLInfraClient = new Token<IDLInfraClient>(
  'jupyter-dlinfra:client',
  'The jupyter-dlinfra GPU ledger client: REST calls, the live event stream and warnings.'
);

const API = 'dlinfra/api';

/** The REST and event-stream client. */
export class DLInfraClient implements IDLInfraClient {
  constructor(serverSettings?: ServerConnection.ISettings) {
    this.serverSettings = serverSettings ?? ServerConnection.makeSettings();
  }

  readonly serverSettings: ServerConnection.ISettings;

  get warningRaised(): ISignal<IDLInfraClient, IWarning> {
    return this._warningRaised;
  }

  url(...parts: string[]): string {
    return URLExt.join(this.serverSettings.baseUrl, API, ...parts);
  }

  async cluster(): Promise<Cluster> {
    return this._json<Cluster>(this.url('cluster'));
  }

  async allocations(options: AllocationFilter = {}): Promise<Allocation[]> {
    const found: Allocation[] = [];
    let offset: number | null = 0;
    while (offset !== null) {
      const page: AllocationList = await this.allocationsPage({
        ...options,
        offset,
        limit: ALLOCATIONS_PAGE_MAX
      });
      found.push(...page.allocations);
      // old servers list everything at once and say nothing of pages
      offset = page.next_offset ?? null;
    }
    return found;
  }

  async allocationsPage(
    options: AllocationFilter & { offset?: number; limit?: number } = {}
  ): Promise<AllocationList> {
    const query: Record<string, string> = {};
    if (options.kernelId) {
      query.kernel_id = options.kernelId;
    }
    if (options.user) {
      query.user = options.user;
    }
    if (options.state) {
      query.state = options.state;
    }
    if (options.offset !== undefined) {
      query.offset = String(options.offset);
    }
    if (options.limit !== undefined) {
      query.limit = String(options.limit);
    }
    const q = URLExt.objectToQueryString(query);
    return this._json<AllocationList>(this.url('allocations') + q);
  }

  async allocation(allocationId: number): Promise<Allocation> {
    return this._json<Allocation>(this.url('allocations', String(allocationId)));
  }

  async queue(): Promise<Allocation[]> {
    return (await this.queuePage()).queue;
  }

  async queuePage(
    options: { offset?: number; limit?: number; node?: string } = {}
  ): Promise<Queue> {
    const query: Record<string, string> = {};
    if (options.offset !== undefined) {
      query.offset = String(options.offset);
    }
    if (options.limit !== undefined) {
      query.limit = String(options.limit);
    }
    if (options.node) {
      query.node = options.node;
    }
    return this._json<Queue>(this.url('queue') + URLExt.objectToQueryString(query));
  }

  async requestGpus(
    kernelId: string,
    count: number,
    model?: string | null,
    priorityClass?: string | null
  ): Promise<Allocation> {
    const body: { kernel_id: string; count: number; model?: string; priority_class?: string } = {
      kernel_id: kernelId,
      count
    };
    if (model) {
      body.model = model;
    }
    if (priorityClass) {
      body.priority_class = priorityClass;
    }
    return this._json<Allocation>(this.url('allocations'), {
      method: 'POST',
      body: JSON.stringify(body),
      headers: { 'Content-Type': 'application/json' }
    });
  }

  async release(allocationId: number): Promise<void> {
    await this._request(this.url('allocations', String(allocationId)), {
      method: 'DELETE'
    });
  }

  async noticeAction(noticeId: number, actionId: string): Promise<unknown> {
    try {
      const response = await this._request(
        this.url('notices', String(noticeId), 'actions', encodeURIComponent(actionId)),
        {
          method: 'POST',
          body: '{}',
          headers: { 'Content-Type': 'application/json' }
        }
      );
      return await Private.jsonOrNull(response);
    } catch (error) {
      if (error instanceof DLInfraApiError && error.status === 404 && error.reason === 'not_found') {
        throw new DLInfraApiError(
          'the server does not offer notice actions (404)',
          error.status,
          error.reason
        );
      }
      throw error;
    }
  }

  async keep(kernelId: string): Promise<KeepResult> {
    return this._json<KeepResult>(this.url('kernels', encodeURIComponent(kernelId), 'keep'), {
      method: 'POST',
      body: '{}',
      headers: { 'Content-Type': 'application/json' }
    });
  }

  async park(kernelId: string): Promise<ParkAnswer> {
    return this._json<ParkAnswer>(this.url('kernels', encodeURIComponent(kernelId), 'park'), {
      method: 'POST',
      body: '{}',
      headers: { 'Content-Type': 'application/json' }
    });
  }

  async resume(kernelId: string): Promise<ParkAnswer> {
    return this._json<ParkAnswer>(this.url('kernels', encodeURIComponent(kernelId), 'resume'), {
      method: 'POST',
      body: '{}',
      headers: { 'Content-Type': 'application/json' }
    });
  }

  async usage(kernelId: string): Promise<KernelUsage> {
    return this._json<KernelUsage>(this.url('kernels', encodeURIComponent(kernelId), 'usage'));
  }

  async me(): Promise<Me> {
    return this._json<Me>(this.url('me'));
  }

  async policy(): Promise<PolicyView> {
    return this._json<PolicyView>(this.url('policy'));
  }

  async setPolicy(changes: Partial<PolicyDoc>): Promise<PolicyView> {
    return this._json<PolicyView>(this.url('policy'), {
      method: 'PUT',
      body: JSON.stringify(changes),
      headers: { 'Content-Type': 'application/json' }
    });
  }

  async simulatePolicy(
    hours: number,
    policy?: Partial<PolicyDoc> | null
  ): Promise<SimulationResult> {
    const body: { hours: number; policy?: Partial<PolicyDoc> } = { hours };
    if (policy && Object.keys(policy).length > 0) {
      body.policy = policy;
    }
    return this._json<SimulationResult>(this.url('policy', 'simulate'), {
      method: 'POST',
      body: JSON.stringify(body),
      headers: { 'Content-Type': 'application/json' }
    });
  }

  async scheduling(): Promise<SchedulingView> {
    return this._json<SchedulingView>(this.url('scheduling'));
  }

  async setScheduling(changes: Partial<SchedulingPolicyDoc>): Promise<SchedulingView> {
    return this._json<SchedulingView>(this.url('scheduling'), {
      method: 'PUT',
      body: JSON.stringify(changes),
      headers: { 'Content-Type': 'application/json' }
    });
  }

  async fairShare(): Promise<FairShare> {
    return this._json<FairShare>(this.url('fairshare'));
  }

  async usageReport(options: {
    since: string;
    user?: string;
    by?: string;
    step?: string;
  }): Promise<UsageReport> {
    const query = new URLSearchParams({ since: options.since });
    for (const key of ['user', 'by', 'step'] as const) {
      const value = options[key];
      if (value) {
        query.set(key, value);
      }
    }
    return this._json<UsageReport>(`${this.url('reports/usage')}?${query.toString()}`);
  }

  async postAction(url: string, body?: unknown): Promise<void> {
    const full = /^[a-z]+:\/\//i.test(url)
      ? url
      : url.startsWith(this.serverSettings.baseUrl)
        ? url
        : URLExt.join(this.serverSettings.baseUrl, url.replace(/^\//, ''));
    await this._request(full, {
      method: 'POST',
      body: JSON.stringify(body ?? {}),
      headers: { 'Content-Type': 'application/json' }
    });
  }

  async backends(): Promise<JobBackends> {
    return this._json<JobBackends>(this.url('backends'));
  }

  async submitJob(request: JobRequest): Promise<JobSubmission> {
    return this._json<JobSubmission>(this.url('jobs'), {
      method: 'POST',
      body: JSON.stringify(request),
      headers: { 'Content-Type': 'application/json' }
    });
  }

  async jobs(state: 'active' | 'ended' | 'all' = 'all', user?: string): Promise<Job[]> {
    const q = URLExt.objectToQueryString(user ? { state, user } : { state });
    const answer = await this._json<{ jobs: Job[] }>(this.url('jobs') + q);
    return answer.jobs ?? [];
  }

  async job(jobId: number): Promise<Job> {
    return this._json<Job>(this.url('jobs', String(jobId)));
  }

  async cancelJob(jobId: number): Promise<Job> {
    return this._json<Job>(this.url('jobs', String(jobId)), { method: 'DELETE' });
  }

  async rerunJob(jobId: number): Promise<Job> {
    return this._json<Job>(this.url('jobs', String(jobId), 'rerun'), {
      method: 'POST',
      body: '{}',
      headers: { 'Content-Type': 'application/json' }
    });
  }

  /** `rank`: one rank's own log of a distributed job; left out, the job's. */
  async jobLog(jobId: number, offset = 0, rank: number | null = null): Promise<JobLogChunk> {
    const query: Record<string, string> = { offset: String(Math.max(0, Math.floor(offset))) };
    if (rank !== null) {
      query.rank = String(rank);
    }
    const q = URLExt.objectToQueryString(query);
    return this._json<JobLogChunk>(this.url('jobs', String(jobId), 'log') + q);
  }

  usageReportUrl(options: { since: string; by?: string; format?: 'json' | 'csv' }): string {
    const query: Record<string, string> = { since: options.since };
    if (options.by) {
      query.by = options.by;
    }
    if (options.format) {
      query.format = options.format;
    }
    const token = this.serverSettings.token;
    if (token) {
      query.token = token;
    }
    return this.url('reports', 'usage') + URLExt.objectToQueryString(query);
  }

  jobOutputUrl(jobId: number, format: JobOutputFormat = 'notebook'): string {
    const query: Record<string, string> = { format };
    const token = this.serverSettings.token;
    if (token) {
      query.token = token;
    }
    return this.url('jobs', String(jobId), 'output') + URLExt.objectToQueryString(query);
  }

  eventsUrl(): string {
    const url = this.url('events');
    const token = this.serverSettings.token;
    return token ? url + URLExt.objectToQueryString({ token }) : url;
  }

  subscribe(handlers: IEventHandlers): IDisposable {
    let source: EventSource | null = null;
    let disposed = false;
    const close = () => {
      if (source) {
        source.close();
        source = null;
      }
    };
    const fail = (error: Event | Error) => {
      if (disposed) {
        return;
      }
      close();
      disposed = true;
      handlers.onError(error);
    };
    try {
      source = new EventSource(this.eventsUrl(), { withCredentials: true });
    } catch (error) {
      // Report asynchronously, like a stream that fails to open.
      setTimeout(() => fail(error as Error), 0);
      return { dispose: () => (disposed = true), isDisposed: false } as IDisposable;
    }
    source.onopen = () => handlers.onOpen?.();
    // The browser reconnects by itself after a network error and gives up (CLOSED) on an
    // HTTP error such as 404; either way the owner decides when to try again.
    source.onerror = (event: Event) => fail(event);
    // the stream sends a whole snapshot first, then what each change moved
    let held: Snapshot | null = null;
    source.addEventListener('snapshot', (event: MessageEvent) => {
      try {
        held = JSON.parse(event.data) as Snapshot;
      } catch (error) {
        console.warn('jupyter-dlinfra: bad snapshot event', error);
        return;
      }
      handlers.onSnapshot(held);
    });
    source.addEventListener('delta', (event: MessageEvent) => {
      let moved: Snapshot | null;
      try {
        if (!held) {
          throw new StreamGap('a delta came before the first snapshot');
        }
        moved = applyDelta(held, JSON.parse(event.data) as SnapshotDelta);
      } catch (error) {
        // a change was missed: a new stream begins with a whole snapshot
        console.warn('jupyter-dlinfra: the event stream is opened again:', error);
        fail(error as Error);
        return;
      }
      if (moved) {
        held = moved;
        handlers.onSnapshot(moved);
      }
    });
    source.addEventListener('notice', (event: MessageEvent) => {
      try {
        handlers.onNotice?.(JSON.parse(event.data) as Notice);
      } catch (error) {
        console.warn('jupyter-dlinfra: bad notice event', error);
      }
    });
    const subscription = {
      get isDisposed() {
        return disposed;
      },
      dispose() {
        disposed = true;
        close();
      }
    };
    return subscription;
  }

  warn(warning: IWarning): void {
    this._warningRaised.emit(warning);
  }

  private async _request(url: string, init: RequestInit = {}): Promise<Response> {
    let response: Response;
    try {
      response = await ServerConnection.makeRequest(url, init, this.serverSettings);
    } catch (error) {
      throw new DLInfraApiError(
        `Cannot reach the server: ${(error as Error).message ?? error}`,
        0,
        'network'
      );
    }
    if (!response.ok) {
      let message = `${init.method ?? 'GET'} ${url} failed: ${response.status} ${response.statusText}`;
      let reason = response.status === 404 ? 'not_found' : 'http_error';
      try {
        const body = (await response.json()) as Partial<ApiErrorBody>;
        if (body && typeof body.message === 'string') {
          message = body.message;
        }
        if (body && typeof body.reason === 'string') {
          reason = body.reason;
        }
      } catch {
        // not JSON: keep the status line
      }
      throw new DLInfraApiError(message, response.status, reason);
    }
    return response;
  }

  private async _json<T>(url: string, init: RequestInit = {}): Promise<T> {
    const response = await this._request(url, init);
    return (await response.json()) as T;
  }

  private _warningRaised = new Signal<IDLInfraClient, IWarning>(this);
}

namespace Private {
  /** The JSON body of an answer, or null when it has none (or it is not JSON). */
  export async function jsonOrNull(response: Response): Promise<unknown> {
    const text = await response.text();
    if (!text) {
      return null;
    }
    try {
      return JSON.parse(text) as unknown;
    } catch {
      return null;
    }
  }
}
