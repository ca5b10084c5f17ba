/**
 * The one typed client of the jupyter-dlinfra REST API (see api/openapi.yaml) and of its
 * live event stream. Everything that talks to the server goes through here.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';
import { IDisposable } from '@lumino/disposable';
import { Token } from '@lumino/coreutils';
import { ISignal, Signal } from '@lumino/signaling';

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
  utilization_percent: number | null;
  memory_used_bytes: number | null;
  sampled_at: Timestamp | null;
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
  position: number | null;
  waiting_reason: string | null;
  simulated: boolean;
}

/** GET dlinfra/api/allocations */
export interface AllocationList {
  allocations: Allocation[];
  simulated: boolean;
}

/** GET dlinfra/api/queue */
export interface Queue {
  queue: Allocation[];
  simulated: boolean;
}

/** Every error answer of the API. */
export interface ApiErrorBody {
  message: string;
  reason: string;
}

/** `event: snapshot` of the live stream. */
export interface Snapshot {
  seq: number;
  at: Timestamp;
  cluster: Cluster;
  queue: Allocation[];
  /** Active allocations (queued and granted), with live GPU metrics. */
  allocations: Allocation[];
  simulated: boolean;
}

/** An action button offered by a notice. */
export interface NoticeAction {
  id: string;
  label: string;
}

/** `event: notice` of the live stream. */
export interface Notice {
  id: number;
  kind: 'granted' | 'ended' | 'warning' | string;
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
  allocations(options?: {
    kernelId?: string;
    user?: string;
    state?: 'active' | 'all';
  }): Promise<Allocation[]>;
  allocation(allocationId: number): Promise<Allocation>;
  queue(): Promise<Allocation[]>;
  requestGpus(kernelId: string, count: number, model?: string | null): Promise<Allocation>;
  release(allocationId: number): Promise<void>;
  /** POST dlinfra/api/notices/<id>/actions/<action_id> */
  noticeAction(noticeId: number, actionId: string): Promise<void>;
  /** POST to any action URL (relative to the base URL, or absolute). */
  postAction(url: string, body?: unknown): Promise<void>;
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

  async allocations(
    options: { kernelId?: string; user?: string; state?: 'active' | 'all' } = {}
  ): Promise<Allocation[]> {
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
    const q = URLExt.objectToQueryString(query);
    const answer = await this._json<AllocationList>(this.url('allocations') + q);
    return answer.allocations;
  }

  async allocation(allocationId: number): Promise<Allocation> {
    return this._json<Allocation>(this.url('allocations', String(allocationId)));
  }

  async queue(): Promise<Allocation[]> {
    const answer = await this._json<Queue>(this.url('queue'));
    return answer.queue;
  }

  async requestGpus(
    kernelId: string,
    count: number,
    model?: string | null
  ): Promise<Allocation> {
    const body: { kernel_id: string; count: number; model?: string } = {
      kernel_id: kernelId,
      count
    };
    if (model) {
      body.model = model;
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

  async noticeAction(noticeId: number, actionId: string): Promise<void> {
    try {
      await this.postAction(
        this.url('notices', String(noticeId), 'actions', encodeURIComponent(actionId))
      );
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
    source.addEventListener('snapshot', (event: MessageEvent) => {
      try {
        handlers.onSnapshot(JSON.parse(event.data) as Snapshot);
      } catch (error) {
        console.warn('jupyter-dlinfra: bad snapshot event', error);
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
