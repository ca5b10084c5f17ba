/**
 * The user's fair-share standing (GET fairshare): read again soon after the queue or the grants
 * change, since rank and GPUs held move with them, and now and then otherwise, since recent use
 * grows while GPUs are held and decays.
 */
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

import { DLInfraApiError, FairShare, IDLInfraClient } from '../api';
import { ISnapshotApplied, LedgerModel } from './ledger';

/**
 * The fair-share standing is read again at most this often when the queue or the grants changed
 * (a grant, a release, a new request: rank and GPUs held move)...
 */
const FAIRSHARE_MIN_INTERVAL_MS = 1_000;
/** ...and this often otherwise (recent use grows while GPUs are held, and decays). */
const FAIRSHARE_IDLE_INTERVAL_MS = 30_000;

export class FairShareModel implements IDisposable {
  constructor(client: IDLInfraClient, ledger: LedgerModel) {
    this._client = client;
    this._ledger = ledger;
    ledger.applied.connect(this._onApplied, this);
  }

  /** The user's fair-share standing was read again and differs (see `standing`). */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** The user's fair-share standing as last read, or null before the first answer. */
  get standing(): FairShare | null {
    return this._standing;
  }
  /** Whether the server ranks by fair share: null before it answered, false when it cannot. */
  get available(): boolean | null {
    return this._available;
  }
  /** The last error met while reading the fair-share standing, or null. */
  get error(): string | null {
    return this._error;
  }
  get isDisposed(): boolean {
    return this._isDisposed;
  }

  /**
   * Read the fair-share standing now (GET fairshare). A call while one is under way waits for
   * it and reads again after it.
   */
  refresh(): Promise<void> {
    if (this._inFlight) {
      this._force = true;
      return this._inFlight;
    }
    if (this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
    }
    this._inFlight = this._fetch().finally(() => {
      this._inFlight = null;
      if (this._isDisposed) {
        return;
      }
      if (this._force) {
        this._force = false;
        this._again = false;
        void this.refresh();
      } else if (this._again) {
        this._again = false;
        this.refreshSoon();
      }
    });
    return this._inFlight;
  }

  /**
   * Read the fair-share standing soon: a second after the last read when the queue or the
   * grants changed since, else when the last read is half a minute old.
   */
  refreshSoon(): void {
    if (this._isDisposed || this._available === false) {
      return;
    }
    const changed = this._queueKey() !== this._key;
    if (this._inFlight) {
      this._again = this._again || changed;
      return;
    }
    const interval = changed ? FAIRSHARE_MIN_INTERVAL_MS : FAIRSHARE_IDLE_INTERVAL_MS;
    const due = Math.max(Date.now(), this._lastFetch + interval);
    if (this._timer !== null) {
      if (this._due <= due) {
        return;
      }
      // A change came while the slow read was pending: read sooner.
      clearTimeout(this._timer);
    }
    this._due = due;
    this._timer = window.setTimeout(() => {
      this._timer = null;
      void this.refresh();
    }, due - Date.now());
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

  /** Follow the ledger: each snapshot of the stream, and REST reads while it is away. */
  private _onApplied(_: LedgerModel, { live }: ISnapshotApplied): void {
    if (live || this._ledger.mode !== 'stream') {
      this.refreshSoon();
    }
  }

  /** What moves ranks and GPUs held: the active requests, their states and places. */
  private _queueKey(): string {
    return JSON.stringify(
      this._ledger.allocations.map(a => [a.id, a.state, a.position, a.count, a.priority_class])
    );
  }

  private async _fetch(): Promise<void> {
    this._lastFetch = Date.now();
    this._key = this._queueKey();
    let signature: string;
    try {
      const answer = await this._client.fairShare();
      if (this._isDisposed) {
        return;
      }
      this._standing = answer;
      this._available = true;
      this._error = null;
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
        this._available = false;
        this._error = null;
        this._standing = null;
      } else {
        this._error = (error as Error).message ?? String(error);
      }
      signature = JSON.stringify(['error', this._available, this._error]);
    }
    if (signature !== this._signature) {
      this._signature = signature;
      this._changed.emit();
    }
  }

  private _client: IDLInfraClient;
  private _ledger: LedgerModel;
  private _standing: FairShare | null = null;
  private _available: boolean | null = null;
  private _error: string | null = null;
  private _signature = '';
  private _key = '';
  private _lastFetch = 0;
  private _timer: number | null = null;
  private _due = 0;
  private _again = false;
  private _force = false;
  private _inFlight: Promise<void> | null = null;
  private _isDisposed = false;
  private _changed = new Signal<this, void>(this);
}
