/**
 * The user's own usage of the last seven days (GET reports/usage?user=<me>): read at start, then
 * every few minutes, since GPU-hours grow while GPUs are held and the week moves on.
 */
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

import { DLInfraApiError, IDLInfraClient, UsageFigures } from '../api';

/** How far back "My usage" looks. */
export const USAGE_SINCE = '7d';
/** How often it is read again (reports are worked out per hour; a few minutes is fresh). */
const USAGE_INTERVAL_MS = 5 * 60_000;

export class UsageModel implements IDisposable {
  constructor(client: IDLInfraClient) {
    this._client = client;
  }

  /** The usage was read again and differs. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }
  /** The user's figures of the last seven days, null before the first answer. */
  get figures(): UsageFigures | null {
    return this._figures;
  }
  /** The idle threshold (%) behind the idle GPU-hours, as the server said. */
  get idlePercent(): number | null {
    return this._idlePercent;
  }
  /** Whether the server has usage reports: null before it answered, false when it has none. */
  get available(): boolean | null {
    return this._available;
  }
  get error(): string | null {
    return this._error;
  }
  get isDisposed(): boolean {
    return this._isDisposed;
  }

  /** Read the user's usage now, and again every few minutes. */
  async refresh(): Promise<void> {
    if (this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
    }
    let signature: string;
    try {
      if (this._user === null) {
        this._user = (await this._client.me()).user;
      }
      const report = await this._client.usageReport({ since: USAGE_SINCE, user: this._user });
      if (this._isDisposed) {
        return;
      }
      this._figures = report.total;
      this._idlePercent = report.idle_util_percent;
      this._available = true;
      this._error = null;
      signature = JSON.stringify([report.total, report.idle_util_percent]);
    } catch (error) {
      if (this._isDisposed) {
        return;
      }
      if (error instanceof DLInfraApiError && error.status === 404) {
        // a server from before usage reports: stop asking
        this._available = false;
        this._error = null;
      } else {
        this._error = (error as Error).message ?? String(error);
      }
      signature = JSON.stringify(['error', this._available, this._error]);
    }
    if (this._available !== false) {
      this._timer = window.setTimeout(() => void this.refresh(), USAGE_INTERVAL_MS);
    }
    if (signature !== this._signature) {
      this._signature = signature;
      this._changed.emit();
    }
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

  private _client: IDLInfraClient;
  private _user: string | null = null;
  private _figures: UsageFigures | null = null;
  private _idlePercent: number | null = null;
  private _available: boolean | null = null;
  private _error: string | null = null;
  private _signature = '';
  private _timer: number | null = null;
  private _isDisposed = false;
  private _changed = new Signal<this, void>(this);
}
