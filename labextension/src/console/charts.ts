/**
 * Charts of the admin console, drawn by JupyterLab's own Vega-Lite renderer (the rendermime
 * registry's `application/vnd.vegalite.v5+json`): specs built here from the API's figures, a
 * table in their place when the Lab has no such renderer.
 */
import { IRenderMimeRegistry, MimeModel } from '@jupyterlab/rendermime';
import { Panel, Widget } from '@lumino/widgets';

import { ClusterNode, UsageFigures } from '../api';
import { h } from '../dom';

export const VEGALITE_MIME = 'application/vnd.vegalite.v5+json';

type Spec = Record<string, unknown>;

/** Allocated versus busy GPUs per step (GPU-hours per hour: GPUs held on average). */
export function heldVersusBusy(series: UsageFigures['series'], perHours: number): Spec {
  const values = series.flatMap(s => [
    { start: s.start, what: 'allocated', gpus: s.gpu_hours / perHours },
    { start: s.start, what: 'busy', gpus: s.busy_gpu_hours / perHours },
    { start: s.start, what: 'idle', gpus: s.idle_gpu_hours / perHours }
  ]);
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    description: 'GPUs allocated, busy and idle, on average per step',
    width: 'container',
    height: 180,
    data: { values },
    mark: { type: 'line', interpolate: 'step-after' },
    encoding: {
      x: { field: 'start', type: 'temporal', title: null },
      y: { field: 'gpus', type: 'quantitative', title: 'GPUs (average)' },
      color: {
        field: 'what',
        type: 'nominal',
        title: null,
        scale: { domain: ['allocated', 'busy', 'idle'], range: ['#1f77b4', '#2ca02c', '#d62728'] }
      },
      tooltip: [
        { field: 'start', type: 'temporal', title: 'from' },
        { field: 'what', type: 'nominal' },
        { field: 'gpus', type: 'quantitative', format: '.1f' }
      ]
    }
  };
}

/** Idle GPU-hours per day. */
export function idlePerStep(series: UsageFigures['series']): Spec {
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    description: 'Idle GPU-hours per step',
    width: 'container',
    height: 120,
    data: { values: series.map(s => ({ start: s.start, idle: s.idle_gpu_hours })) },
    mark: 'bar',
    encoding: {
      x: { field: 'start', type: 'temporal', timeUnit: 'yearmonthdate', title: null },
      y: { field: 'idle', type: 'quantitative', title: 'idle GPU-hours' },
      color: { value: '#d62728' },
      tooltip: [
        { field: 'start', type: 'temporal', timeUnit: 'yearmonthdate', title: 'day' },
        { field: 'idle', type: 'quantitative', format: '.1f', title: 'idle GPU-hours' }
      ]
    }
  };
}

/** Utilisation of every GPU now: one row per node, one cell per GPU. */
export function utilisationHeatmap(nodes: ClusterNode[]): Spec {
  const values = nodes.flatMap(n =>
    n.gpus.map(g => ({
      node: n.name,
      gpu: g.index,
      util: g.utilization_percent,
      holder: g.holder
        ? `${g.holder.user}${g.parked_for ? ' (on loan)' : ''}`
        : g.parked_for
          ? `free to lend (parked: ${g.parked_for.user})`
          : 'free'
    }))
  );
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    description: 'GPU utilisation now, node by GPU',
    width: 'container',
    height: { step: nodes.length > 64 ? 4 : 14 },
    data: { values },
    mark: 'rect',
    encoding: {
      x: { field: 'gpu', type: 'ordinal', title: 'GPU' },
      y: { field: 'node', type: 'nominal', title: null, axis: nodes.length > 64 ? null : {} },
      color: {
        field: 'util',
        type: 'quantitative',
        title: 'util %',
        scale: { domain: [0, 100], scheme: 'viridis' }
      },
      tooltip: [
        { field: 'node', type: 'nominal' },
        { field: 'gpu', type: 'ordinal' },
        { field: 'util', type: 'quantitative', title: 'util %' },
        { field: 'holder', type: 'nominal' }
      ]
    }
  };
}

/**
 * A box that shows one chart: rendered by the Lab's Vega-Lite renderer when it has one, else a
 * note (the figures stay in the tables).
 */
export class ChartBox extends Panel {
  constructor(rendermime: IRenderMimeRegistry | null, title: string, key: string) {
    super();
    this.addClass('jp-DLInfra-chart');
    this.node.dataset.chart = key;
    this._rendermime = rendermime;
    this.addWidget(new Widget({ node: h('h4', { class: 'jp-DLInfra-chartTitle' }, title) }));
  }

  /** Draw ``spec`` (replacing what was drawn); its JSON is kept on the node for tests. */
  async draw(given: Spec): Promise<void> {
    // 'container' is measured by Vega when the chart is drawn: a tab drawn before it is laid
    // out would get a chart 0 pixels wide, so the box's width is given instead
    const spec =
      given.width === 'container'
        ? { ...given, width: Math.max((this.node.clientWidth || 640) - 120, 240) }
        : given;
    const text = JSON.stringify(spec);
    if (text === this._shown) {
      return;
    }
    this._shown = text;
    this.node.dataset.points = String(((spec.data as { values: unknown[] }).values ?? []).length);
    this._chart?.dispose();
    const rendermime = this._rendermime;
    if (!rendermime || !rendermime.mimeTypes.includes(VEGALITE_MIME)) {
      this._chart = new Widget({
        node: h('p', { class: 'jp-DLInfra-empty' }, 'This Lab has no Vega-Lite renderer to draw charts with.')
      });
      this.addWidget(this._chart);
      return;
    }
    const renderer = rendermime.createRenderer(VEGALITE_MIME);
    this._chart = renderer;
    this.addWidget(renderer);
    await renderer.renderModel(new MimeModel({ data: { [VEGALITE_MIME]: spec } as never }));
  }

  private _rendermime: IRenderMimeRegistry | null;
  private _chart: Widget | null = null;
  private _shown = '';
}
