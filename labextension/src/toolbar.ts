/**
 * The notebook toolbar button "GPUs": asks the ledger for GPUs for this notebook's kernel
 * (the same ledger as `%gpu`), or releases them when the kernel holds some.
 */
import { Dialog, showDialog, showErrorMessage, ToolbarButton } from '@jupyterlab/apputils';
import { DocumentRegistry } from '@jupyterlab/docregistry';
import { INotebookModel, NotebookPanel } from '@jupyterlab/notebook';
import { IDisposable } from '@lumino/disposable';
import { Widget } from '@lumino/widgets';

import { Allocation } from './api';
import { gpus, h, startsIn } from './dom';
import { gpuIcon } from './icons';
import { LedgerModel } from './model';
import { parkBadgeText, parkBadgeTitle } from './park';

export const TOOLBAR_ITEM = 'dlinfraGpus';

/** The widget extension adding the button to every notebook's toolbar. */
export class GpuToolbarExtension
  implements DocumentRegistry.IWidgetExtension<NotebookPanel, INotebookModel>
{
  constructor(private _model: LedgerModel) {}

  createNew(panel: NotebookPanel): IDisposable {
    const button = new ToolbarButton({
      className: 'jp-DLInfra-toolbarButton',
      icon: gpuIcon,
      label: 'GPUs',
      tooltip: "Request or release GPUs for this notebook's kernel",
      onClick: () => void openGpuDialog(this._model, panel)
    });
    button.node.setAttribute('data-dlinfra', 'toolbar');
    // Before the spacer, after the kernel controls of the default toolbar.
    if (!panel.toolbar.insertAfter('cellType', TOOLBAR_ITEM, button)) {
      panel.toolbar.insertItem(10, TOOLBAR_ITEM, button);
    }
    return button;
  }
}

/** The request form: count and optional model. */
class RequestForm extends Widget {
  constructor(models: string[]) {
    super();
    this.addClass('jp-DLInfra-requestForm');
    this._count = h('input', {
      type: 'number',
      min: 1,
      step: 1,
      value: 1,
      id: 'dlinfra-request-count',
      class: 'jp-mod-styled jp-DLInfra-requestCount',
      'aria-label': 'Number of GPUs'
    });
    this._gpuModel = h('input', {
      type: 'text',
      id: 'dlinfra-request-model',
      class: 'jp-mod-styled jp-DLInfra-requestModel',
      placeholder: 'any model',
      list: 'dlinfra-request-models',
      'aria-label': 'GPU model (optional)'
    });
    this.node.append(
      h('label', { for: 'dlinfra-request-count' }, 'Number of GPUs'),
      this._count,
      h('label', { for: 'dlinfra-request-model' }, 'GPU model (optional)'),
      this._gpuModel,
      h('datalist', { id: 'dlinfra-request-models' }, models.map(m => h('option', { value: m })))
    );
  }

  getValue(): { count: number; model: string | null } {
    return {
      count: Math.floor(Number(this._count.value)),
      model: this._gpuModel.value.trim() || null
    };
  }

  /** Focus the count when the dialog opens. */
  onAfterAttach(): void {
    requestAnimationFrame(() => {
      this._count.focus();
      this._count.select();
    });
  }

  private _count: HTMLInputElement;
  private _gpuModel: HTMLInputElement;
}

function body(...children: Array<Node | string>): Widget {
  const widget = new Widget();
  widget.addClass('jp-DLInfra-dialogBody');
  widget.node.append(...children);
  return widget;
}

function describeGrant(a: Allocation): Node[] {
  const park = a.park
    ? [
        h(
          'p',
          { class: 'jp-DLInfra-parkNote' },
          `${parkBadgeText(a.park)}: ${parkBadgeTitle(a.park)}.`
        )
      ]
    : [];
  return [
    h('p', {}, `Granted ${gpus(a.gpus.length)}${a.simulated ? ' (simulated)' : ''}:`),
    ...park,
    h(
      'ul',
      { class: 'jp-DLInfra-uuidList' },
      a.gpus.map(g => h('li', {}, h('code', {}, g.uuid), ` (GPU ${g.index ?? '?'}, ${g.model ?? ''})`))
    )
  ];
}

/** The dialog behind the toolbar button. */
export async function openGpuDialog(model: LedgerModel, panel: NotebookPanel): Promise<void> {
  await panel.sessionContext.ready;
  const kernelId = panel.sessionContext.session?.kernel?.id;
  if (!kernelId) {
    await showDialog({
      title: 'GPUs',
      body: 'This notebook has no running kernel. Start one, then ask for GPUs.',
      buttons: [Dialog.okButton()]
    });
    return;
  }
  const current = model.allocationOfKernel(kernelId);
  if (current) {
    const granted = current.state === 'granted';
    const result = await showDialog({
      title: granted ? 'GPUs of this kernel' : 'Waiting for GPUs',
      body: body(
        ...(granted
          ? describeGrant(current)
          : [
              h('p', {}, `Queued at position ${current.position ?? '?'} for ${gpus(current.count)}.`),
              h('p', {}, current.waiting_reason ?? ''),
              h(
                'p',
                { class: 'jp-DLInfra-requestEstimate' },
                current.priority_class ? `Class ${current.priority_class}; ` : '',
                startsIn(current.estimated_start)
              )
            ])
      ),
      buttons: [
        Dialog.cancelButton({ label: 'Close' }),
        Dialog.warnButton({ label: granted ? 'Release' : 'Leave queue' })
      ]
    });
    if (result.button.accept) {
      try {
        await model.release(current.id);
      } catch (error) {
        await showErrorMessage('Cannot release the GPUs', (error as Error).message ?? String(error));
      }
    }
    return;
  }

  const models = [...new Set(model.cluster?.nodes.flatMap(n => n.gpus.map(g => g.model)) ?? [])];
  const result = await showDialog({
    title: 'Request GPUs for this kernel',
    body: new RequestForm(models),
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Request' })],
    focusNodeSelector: 'input'
  });
  if (!result.button.accept || !result.value) {
    return;
  }
  const { count, model: gpuModel } = result.value;
  if (!Number.isInteger(count) || count < 1) {
    await showErrorMessage('Cannot request GPUs', 'Ask for at least 1 GPU.');
    return;
  }
  let allocation: Allocation;
  try {
    allocation = await model.requestGpus(kernelId, count, gpuModel);
  } catch (error) {
    await showErrorMessage('Cannot request GPUs', (error as Error).message ?? String(error));
    return;
  }
  await showDialog({
    title: allocation.state === 'granted' ? 'GPUs granted' : 'Request queued',
    body: body(
      ...(allocation.state === 'granted'
        ? describeGrant(allocation)
        : [
            h('p', {}, `Queued at position ${allocation.position ?? '?'} for ${gpus(allocation.count)}.`),
            h('p', {}, allocation.waiting_reason ?? ''),
            h(
              'p',
              { class: 'jp-DLInfra-requestEstimate' },
              allocation.priority_class ? `Class ${allocation.priority_class}; ` : '',
              startsIn(allocation.estimated_start)
            )
          ])
    ),
    buttons: [Dialog.okButton()]
  });
}
