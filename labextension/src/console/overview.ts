/**
 * The console's Overview: the week's figures of the whole cluster, allocated versus busy GPUs
 * hour by hour, idle GPU-hours per day, and a heatmap of every GPU's utilisation now.
 */
import { IRenderMimeRegistry } from '@jupyterlab/rendermime';
import { Panel, Widget } from '@lumino/widgets';

import { IDLInfraClient, UsageFigures } from '../api';
import { h } from '../dom';
import { LedgerModel } from '../model/ledger';
import { ChartBox, heldVersusBusy, idlePerStep, utilisationHeatmap } from './charts';
import { figureList } from './figures';

/** The heatmap of utilisation is drawn again at most this often (ms). */
const HEATMAP_EVERY_MS = 10_000;

export class OverviewTab extends Panel {
  constructor(client: IDLInfraClient, ledger: LedgerModel, rendermime: IRenderMimeRegistry | null) {
    super();
    this.id = 'dlinfra-console-overview';
    this.title.label = 'Overview';
    this.addClass('jp-DLInfra-consoleTab');
    this._client = client;
    this._ledger = ledger;
    this._figures = new Widget({ node: h('div', { class: 'jp-DLInfra-consoleFigures' }) });
    this._hourly = new ChartBox(rendermime, 'Allocated, busy and idle GPUs, last 7 days', 'held-busy');
    this._idle = new ChartBox(rendermime, 'Idle GPU-hours per day', 'idle');
    this._heatmap = new ChartBox(rendermime, 'Utilisation of every GPU now', 'heatmap');
    for (const part of [this._figures, this._hourly, this._idle, this._heatmap]) {
      this.addWidget(part);
    }
    ledger.changed.connect(this._heatmapSoon, this);
  }

  /** Read the week's report again and redraw. */
  async refresh(): Promise<void> {
    try {
      const [hourly, daily] = await Promise.all([
        this._client.usageReport({ since: '7d', by: 'class', step: 'hour' }),
        this._client.usageReport({ since: '7d', by: 'class', step: 'day' })
      ]);
      this._showFigures(hourly.total, hourly.idle_util_percent);
      await Promise.all([
        this._hourly.draw(heldVersusBusy(hourly.total.series, 1)),
        this._idle.draw(idlePerStep(daily.total.series))
      ]);
    } catch (error) {
      this._figures.node.replaceChildren(
        h('p', { class: 'jp-DLInfra-error', role: 'alert' }, `Cannot read the usage report: ${String(error)}`)
      );
    }
    await this._drawHeatmap();
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._ledger.changed.disconnect(this._heatmapSoon, this);
    if (this._heatmapTimer !== null) {
      clearTimeout(this._heatmapTimer);
    }
    super.dispose();
  }

  private _showFigures(total: UsageFigures, idlePercent: number): void {
    this._figures.node.replaceChildren(
      h('h3', {}, 'The whole cluster, last 7 days'),
      figureList(total, idlePercent)
    );
  }

  /**
   * Draw the heatmap again after a change of the ledger or its telemetry, at most every
   * HEATMAP_EVERY_MS: the ledger changes with every sample, and at 1,024 nodes a drawing is
   * 8,192 cells.
   */
  private _heatmapSoon(): void {
    if (this._heatmapTimer !== null) {
      return;
    }
    const wait = Math.max(this._heatmapAt + HEATMAP_EVERY_MS - Date.now(), 0);
    this._heatmapTimer = window.setTimeout(() => {
      this._heatmapTimer = null;
      void this._drawHeatmap();
    }, wait);
  }

  private async _drawHeatmap(): Promise<void> {
    const cluster = this._ledger.cluster;
    if (!cluster || !this.isVisible) {
      return;
    }
    this._heatmapAt = Date.now();
    await this._heatmap.draw(utilisationHeatmap(cluster.nodes));
  }

  private _client: IDLInfraClient;
  private _ledger: LedgerModel;
  private _figures: Widget;
  private _hourly: ChartBox;
  private _idle: ChartBox;
  private _heatmap: ChartBox;
  private _heatmapTimer: number | null = null;
  private _heatmapAt = 0;
}
