/**
 * How the model hears from the server: the live event stream, and REST polling while the
 * stream is away (it reconnects meanwhile, backing off up to a minute).
 */
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

import { IDLInfraClient, Notice, Snapshot } from '../api';

/** How the model gets its data. */
export type ConnectionMode = 'connecting' | 'stream' | 'polling';

export namespace Connection {
  /** Where what comes in goes. */
  export interface IHandlers {
    /** A snapshot of the ledger from the stream. */
    snapshot(snapshot: Snapshot): void;
    /** A notice from the stream. */
    notice(notice: Notice): void;
    /** Read the REST API once: every `refreshInterval` seconds while the stream is away. */
    poll(): Promise<void>;
  }
}

const MAX_BACKOFF_MS = 60_000;
const FIRST_BACKOFF_MS = 2_000;

export class Connection implements IDisposable {
  /** @param refreshInterval - seconds between REST polls while the stream is away. */
  constructor(client: IDLInfraClient, refreshInterval = 2) {
    this._client = client;
    this._refreshInterval = Math.max(1, refreshInterval);
  }

  /** The mode changed (stream, polling, connecting). */
  get modeChanged(): ISignal<this, ConnectionMode> {
    return this._modeChanged;
  }

  get mode(): ConnectionMode {
    return this._mode;
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

  /** Subscribe to the stream (once), handing what comes in to `handlers`. */
  start(handlers: Connection.IHandlers): void {
    if (this._handlers) {
      return;
    }
    this._handlers = handlers;
    this._connect();
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
    Signal.clearData(this);
  }

  private _connect(): void {
    const handlers = this._handlers;
    if (this._isDisposed || !handlers) {
      return;
    }
    this._reconnectTimer = null;
    if (this._mode !== 'polling') {
      this._setMode('connecting');
    }
    this._subscription = this._client.subscribe({
      onSnapshot: snapshot => {
        if (this._mode !== 'stream') {
          this._setMode('stream');
          this._stopPolling();
        }
        this._backoff = FIRST_BACKOFF_MS;
        handlers.snapshot(snapshot);
      },
      onNotice: notice => handlers.notice(notice),
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
      if (this._mode === 'stream' || this._isDisposed || !this._handlers) {
        this._pollTimer = null;
        return;
      }
      await this._handlers.poll();
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
    }
  }

  private _client: IDLInfraClient;
  private _handlers: Connection.IHandlers | null = null;
  private _mode: ConnectionMode = 'connecting';
  private _refreshInterval: number;
  private _isDisposed = false;
  private _subscription: IDisposable | null = null;
  private _pollTimer: number | null = null;
  private _reconnectTimer: number | null = null;
  private _backoff = FIRST_BACKOFF_MS;
  private _modeChanged = new Signal<this, ConnectionMode>(this);
}
