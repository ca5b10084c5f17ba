/**
 * The status bar item `dlinfra:status`: the active notebook's kernel's GPUs and their mean
 * utilisation ("GPU 2 · 37%", "GPU 2 · parked", "GPU queued #2", "GPU –"). Clicking it opens
 * the sidebar.
 */
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import { gpus, pct, startsIn } from './dom';
import { gpuIcon } from './icons';
import { LedgerModel } from './model';
import { parkBadgeTitle } from './park';

export const STATUS_ITEM_ID = 'dlinfra:status';

export class DLInfraStatus extends Widget {
  constructor(model: LedgerModel, tracker: INotebookTracker, onActivate: () => void) {
    super();
    this._model = model;
    this._tracker = tracker;
    this._onActivate = onActivate;
    this.id = 'dlinfra-status';
    this.addClass('jp-DLInfra-status');
    this.addClass('jp-mod-highlighted');
    this.node.setAttribute('role', 'button');
    this.node.tabIndex = 0;
    const icon = document.createElement('span');
    icon.className = 'jp-DLInfra-statusIcon';
    gpuIcon.element({ container: icon, elementPosition: 'center', height: '14px', width: '14px' });
    this._text = document.createElement('span');
    this._text.className = 'jp-DLInfra-statusText';
    this.node.append(icon, this._text);

    this.node.addEventListener('click', this._activate);
    this.node.addEventListener('keydown', this._onKey);
    model.changed.connect(this._render, this);
    tracker.currentChanged.connect(this._onCurrentChanged, this);
    this._onCurrentChanged();
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._model.changed.disconnect(this._render, this);
    this._tracker.currentChanged.disconnect(this._onCurrentChanged, this);
    this._watched?.sessionContext.kernelChanged.disconnect(this._render, this);
    super.dispose();
  }

  private _onCurrentChanged(): void {
    this._watched?.sessionContext.kernelChanged.disconnect(this._render, this);
    this._watched = this._tracker.currentWidget;
    this._watched?.sessionContext.kernelChanged.connect(this._render, this);
    this._render();
  }

  private _render(): void {
    const panel = this._tracker.currentWidget;
    const kernelId = panel?.sessionContext.session?.kernel?.id ?? null;
    const allocation = kernelId ? this._model.allocationOfKernel(kernelId) : null;
    let text = 'GPU –';
    let title = 'This notebook\'s kernel holds no GPUs. Click to open the GPUs panel.';
    let state = 'none';
    const park = allocation?.state === 'granted' ? allocation.park ?? null : null;
    if (allocation && park) {
      const resuming = park.state === 'resuming' || park.state === 'restoring';
      const word = resuming ? 'resuming…' : park.state === 'parking' ? 'parking…' : 'parked';
      text = `GPU ${allocation.gpus.length} · ${word}`;
      title =
        `This notebook's kernel: ${gpus(allocation.gpus.length)}, ${word} ` +
        `(${parkBadgeTitle(park)}). Click to open the GPUs panel.`;
      state = park.state === 'restoring' ? 'resuming' : park.state;
    } else if (allocation?.state === 'granted') {
      const util = this._model.meanUtilisation(allocation);
      text = `GPU ${allocation.gpus.length} · ${pct(util)}`;
      title = `This notebook's kernel holds ${gpus(allocation.gpus.length)} (mean utilisation ${pct(
        util
      )})${allocation.simulated ? ', simulated' : ''}. Click to open the GPUs panel.`;
      state = 'granted';
    } else if (allocation?.state === 'queued') {
      text = `GPU queued #${allocation.position ?? '?'}`;
      const klass = allocation.priority_class ? ` (${allocation.priority_class})` : '';
      title =
        `Waiting for ${gpus(allocation.count)}${klass}: ${allocation.waiting_reason ?? ''}; ` +
        startsIn(allocation.estimated_start);
      state = 'queued';
    }
    this._text.textContent = text;
    this.node.title = title;
    this.node.setAttribute('aria-label', title);
    this.node.dataset.state = state;
  }

  private _activate = (): void => this._onActivate();

  private _onKey = (event: KeyboardEvent): void => {
    if (event.key === 'Enter' || event.key === ' ') {
      event.preventDefault();
      this._onActivate();
    }
  };

  private _model: LedgerModel;
  private _tracker: INotebookTracker;
  private _watched: NotebookPanel | null = null;
  private _text: HTMLElement;
  private _onActivate: () => void;
}
