/**
 * Who the user is (GET me), and the two policies admins edit: idle reclaim (GET/PUT policy,
 * with its dry run) and scheduling (GET/PUT scheduling). The server enforces who may change
 * them; reading the scheduling policy is open to all (the submit dialog offers its classes).
 */
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

import {
  IDLInfraClient,
  Me,
  PolicyDoc,
  PolicyView,
  SchedulingPolicyDoc,
  SchedulingView,
  SimulationResult
} from '../api';
import { FairShareModel } from './fairshare';
import { LedgerModel } from './ledger';

export class AdminModel implements IDisposable {
  /**
   * @param ledger, fairShare - read again after the scheduling policy changed, since quotas,
   *   shares and classes move ranks and positions.
   */
  constructor(client: IDLInfraClient, ledger: LedgerModel, fairShare: FairShareModel) {
    this._client = client;
    this._ledger = ledger;
    this._fairShare = fairShare;
  }

  /** The reclaim policy was (re)read or changed through `loadPolicy` or `savePolicy`. */
  get policyChanged(): ISignal<this, PolicyView> {
    return this._policyChanged;
  }
  /** The scheduling policy was (re)read or changed (`loadScheduling`, `saveScheduling`). */
  get schedulingChanged(): ISignal<this, SchedulingView> {
    return this._schedulingChanged;
  }

  /** Who the server says the user is (after `loadMe`), or null. */
  get me(): Me | null {
    return this._me;
  }
  /** The reclaim policy as last read or saved (after `loadPolicy`), or null. */
  get policy(): PolicyView | null {
    return this._policy;
  }
  /** The scheduling policy as last read or saved (after `loadScheduling`), or null. */
  get scheduling(): SchedulingView | null {
    return this._scheduling;
  }
  get isDisposed(): boolean {
    return this._isDisposed;
  }

  /** Ask the server who the user is and whether they are an admin (GET me). */
  async loadMe(): Promise<Me> {
    this._me = await this._client.me();
    return this._me;
  }

  /** Read the reclaim policy, its source and its recent changes (GET policy). */
  async loadPolicy(): Promise<PolicyView> {
    return this._setPolicy(await this._client.policy());
  }

  /**
   * Change the reclaim policy (PUT policy, admins only): fields left out keep their values.
   * Rejects with the server's message (400 `bad_policy` names the field first).
   */
  async savePolicy(changes: Partial<PolicyDoc>): Promise<PolicyView> {
    return this._setPolicy(await this._client.setPolicy(changes));
  }

  /** What a policy (the saved one, changed by `policy`) would have done over the last hours. */
  async simulatePolicy(
    hours: number,
    policy?: Partial<PolicyDoc> | null
  ): Promise<SimulationResult> {
    return this._client.simulatePolicy(hours, policy);
  }

  /** Read the scheduling policy, its source and its recent changes (GET scheduling). */
  async loadScheduling(): Promise<SchedulingView> {
    return this._setScheduling(await this._client.scheduling());
  }

  /**
   * Change the scheduling policy (PUT scheduling, admins only): fields left out keep their
   * values. Rejects with the server's message (400 `bad_policy` names the field first, such as
   * `classes.batch.priority: ...`).
   */
  async saveScheduling(changes: Partial<SchedulingPolicyDoc>): Promise<SchedulingView> {
    const view = this._setScheduling(await this._client.setScheduling(changes));
    // Quotas, shares and classes move ranks and positions: read them again soon.
    void this._ledger.refresh();
    void this._fairShare.refresh();
    return view;
  }

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    Signal.clearData(this);
  }

  private _setPolicy(view: PolicyView): PolicyView {
    this._policy = view;
    if (!this._isDisposed) {
      this._policyChanged.emit(view);
    }
    return view;
  }

  private _setScheduling(view: SchedulingView): SchedulingView {
    this._scheduling = view;
    if (!this._isDisposed) {
      this._schedulingChanged.emit(view);
    }
    return view;
  }

  private _client: IDLInfraClient;
  private _ledger: LedgerModel;
  private _fairShare: FairShareModel;
  private _me: Me | null = null;
  private _policy: PolicyView | null = null;
  private _scheduling: SchedulingView | null = null;
  private _isDisposed = false;
  private _policyChanged = new Signal<this, PolicyView>(this);
  private _schedulingChanged = new Signal<this, SchedulingView>(this);
}
