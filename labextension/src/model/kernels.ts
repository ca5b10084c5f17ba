/**
 * The kernels and sessions running in this Lab: the server's allocations name kernels by id,
 * and these say which of them are this Lab's and which notebook each serves.
 */
import { ServiceManager } from '@jupyterlab/services';
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

/** How long notices about a kernel that left this Lab still count as this Lab's (reclaimed). */
const RECENT_KERNEL_MS = 10 * 60_000;

export class LabKernels implements IDisposable {
  constructor(services: ServiceManager.IManager) {
    this._services = services;
    services.kernels.runningChanged.connect(this._onRunningChanged, this);
    services.sessions.runningChanged.connect(this._onRunningChanged, this);
  }

  /** The Lab's running kernels or sessions changed. */
  get runningChanged(): ISignal<this, void> {
    return this._runningChanged;
  }

  get isDisposed(): boolean {
    return this._isDisposed;
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

  /** Note the kernels running in this Lab now, forgetting those gone for a while. */
  remember(): void {
    const now = Date.now();
    for (const id of this.runningKernelIds()) {
      this._recent.set(id, now);
    }
    for (const [id, seen] of this._recent) {
      if (now - seen > RECENT_KERNEL_MS) {
        this._recent.delete(id);
      }
    }
  }

  /**
   * Whether a kernel ran in this Lab when last remembered, or within ten minutes before: a
   * reclaim may shut a kernel down before its notice comes.
   */
  isRecent(kernelId: string): boolean {
    return this._recent.has(kernelId);
  }

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    this._services.kernels.runningChanged.disconnect(this._onRunningChanged, this);
    this._services.sessions.runningChanged.disconnect(this._onRunningChanged, this);
    Signal.clearData(this);
  }

  private _onRunningChanged(): void {
    this.remember();
    this._runningChanged.emit();
  }

  private _services: ServiceManager.IManager;
  private _recent = new Map<string, number>();
  private _isDisposed = false;
  private _runningChanged = new Signal<this, void>(this);
}
