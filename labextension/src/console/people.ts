/**
 * The console's People: everyone's usage over a period as a table sortable by any column, and
 * one person's detail (their figures, the hint for them, what they hold and wait for now) under
 * it when their row is chosen.
 */
import { Widget } from '@lumino/widgets';

import { Allocation, IDLInfraClient, Job, UsageFigures, UsageReport } from '../api';
import { gpuHours, h, share } from '../dom';
import { topHint } from '../sidebar/usage';
import { figureList, waitWords } from './figures';

/** A person's latest jobs listed in their detail. */
const MAX_JOBS = 10;

type Row = UsageFigures & { key: string; held: number; quota: number | null };

interface IColumn {
  key: string;
  label: string;
  value: (r: Row) => number | string;
  text: (r: Row) => string;
  title: string;
}

const COLUMNS: IColumn[] = [
  { key: 'user', label: 'Person', value: r => r.key, text: r => r.key, title: 'User name' },
  {
    key: 'gpu_hours',
    label: 'GPU-h',
    value: r => r.gpu_hours,
    text: r => gpuHours(r.gpu_hours),
    title: 'GPUs granted x hours held'
  },
  {
    key: 'efficiency',
    label: 'Busy',
    value: r => r.efficiency ?? -1,
    text: r => share(r.efficiency),
    title: 'Utilisation-weighted GPU-hours over held GPU-hours'
  },
  {
    key: 'idle_gpu_hours',
    label: 'Idle GPU-h',
    value: r => r.idle_gpu_hours,
    text: r => gpuHours(r.idle_gpu_hours),
    title: 'Held GPU-hours under the idle threshold'
  },
  {
    key: 'reclaimed_gpu_hours',
    label: 'Reclaimed',
    value: r => r.reclaimed_gpu_hours,
    text: r => gpuHours(r.reclaimed_gpu_hours),
    title: 'Idle GPU-hours the idle reclaim put an end to'
  },
  {
    key: 'wait_p95_s',
    label: 'Wait p95',
    value: r => r.wait_p95_s ?? -1,
    text: r => waitWords(r.wait_p95_s),
    title: '95th percentile of the waits of their requests granted in the period'
  },
  {
    key: 'held',
    label: 'Holding / quota',
    value: r => (r.quota ? r.held / r.quota : r.held > 0 ? 0.0001 * r.held : 0),
    text: r => (r.quota === null ? `${r.held} / no limit` : `${r.held} / ${r.quota}`),
    title: 'GPUs held now, of the user quota (the scheduling policy)'
  },
  {
    key: 'jobs_failed',
    label: 'Jobs failed',
    value: r => r.jobs_failed,
    text: r => `${r.jobs_failed} of ${r.jobs_succeeded + r.jobs_failed + r.jobs_cancelled}`,
    title: 'Jobs that failed, of those that ended in the period'
  }
];

export class PeopleTab extends Widget {
  constructor(client: IDLInfraClient) {
    super();
    this.id = 'dlinfra-console-people';
    this.title.label = 'People';
    this.addClass('jp-DLInfra-consoleTab');
    this._client = client;
    this._period = h(
      'select',
      { class: 'jp-DLInfra-consolePeriod', 'aria-label': 'Period' },
      h('option', { value: '7d' }, 'Last 7 days'),
      h('option', { value: '30d' }, 'Last 30 days'),
      h('option', { value: '1d' }, 'Last 24 hours')
    );
    this._period.addEventListener('change', () => void this.refresh());
    const csv = h('a', { class: 'jp-DLInfra-consoleCsv', download: 'dlinfra-usage-by-user.csv' }, 'CSV');
    this._csv = csv;
    this._table = h('table', { class: 'jp-DLInfra-peopleTable' });
    this._detail = h('div', { class: 'jp-DLInfra-personDetail', 'aria-live': 'polite' });
    this.node.append(
      h('div', { class: 'jp-DLInfra-consoleBar' }, this._period, csv),
      this._table,
      this._detail
    );
    this._table.addEventListener('click', this._onClick);
  }

  async refresh(): Promise<void> {
    const since = this._period.value;
    this._csv.setAttribute('href', this._client.usageReportUrl({ since, by: 'user', format: 'csv' }));
    try {
      const [report, standing, scheduling] = await Promise.all([
        this._client.usageReport({ since, by: 'user', step: 'day' }),
        this._client.fairShare().catch(() => null),
        this._client.scheduling().catch(() => null)
      ]);
      const held = new Map((standing?.users ?? []).map(s => [s.user, s.held]));
      const policy = scheduling?.policy ?? null;
      this._report = report;
      this._rows = report.rows.map(r => ({
        ...r,
        held: held.get(r.key) ?? 0,
        quota: policy ? (policy.user_quotas[r.key] ?? policy.default_user_quota) : null
      }));
    } catch (error) {
      this._table.replaceChildren(
        h('caption', { class: 'jp-DLInfra-error', role: 'alert' }, `Cannot read the usage report: ${String(error)}`)
      );
      return;
    }
    this._draw();
    if (this._chosen) {
      void this._showPerson(this._chosen);
    }
  }

  private _draw(): void {
    const report = this._report;
    if (!report) {
      return;
    }
    const column = COLUMNS.find(c => c.key === this._sortKey) ?? COLUMNS[1];
    const sign = this._descending ? -1 : 1;
    const rows = [...this._rows].sort((a, b) => {
      const x = column.value(a);
      const y = column.value(b);
      return (x < y ? -1 : x > y ? 1 : 0) * sign || a.key.localeCompare(b.key);
    });
    const header = h(
      'tr',
      {},
      ...COLUMNS.map(c =>
        h(
          'th',
          {
            scope: 'col',
            'aria-sort': c.key === column.key ? (this._descending ? 'descending' : 'ascending') : 'none'
          },
          h(
            'button',
            { type: 'button', class: 'jp-DLInfra-sortButton', 'data-sort': c.key, title: c.title },
            c.label + (c.key === column.key ? (this._descending ? ' ▼' : ' ▲') : '')
          )
        )
      )
    );
    const body = rows.map(r =>
      h(
        'tr',
        {
          class: `jp-DLInfra-personRow${r.key === this._chosen ? ' jp-mod-selected' : ''}`,
          'data-user': r.key,
          tabindex: 0
        },
        ...COLUMNS.map(c => h('td', { 'data-column': c.key }, c.text(r)))
      )
    );
    this._table.replaceChildren(
      h('caption', {}, `${rows.length} people, ${report.since.slice(0, 10)} to ${report.until.slice(0, 10)}`),
      h('thead', {}, header),
      h('tbody', {}, body.length ? body : h('tr', {}, h('td', { colspan: COLUMNS.length }, 'Nobody held GPUs in this period.')))
    );
  }

  private _onClick = (event: MouseEvent): void => {
    const target = event.target as HTMLElement;
    const sort = target.closest<HTMLButtonElement>('.jp-DLInfra-sortButton');
    if (sort) {
      const key = sort.dataset.sort ?? '';
      this._descending = key === this._sortKey ? !this._descending : key !== 'user';
      this._sortKey = key;
      this._draw();
      return;
    }
    const row = target.closest<HTMLElement>('.jp-DLInfra-personRow');
    if (row?.dataset.user) {
      this._chosen = row.dataset.user;
      this._draw();
      void this._showPerson(row.dataset.user);
    }
  };

  private async _showPerson(user: string): Promise<void> {
    const report = this._report;
    const row = report?.rows.find(r => r.key === user);
    if (!report || !row) {
      this._detail.replaceChildren();
      return;
    }
    const hint = topHint(row, report.idle_util_percent);
    let held: Allocation[] = [];
    let jobs: Job[] = [];
    try {
      [held, jobs] = await Promise.all([
        this._client.allocationsPage({ user, state: 'active', limit: 50 }).then(p => p.allocations),
        this._client.jobs('all', user)
      ]);
    } catch {
      held = [];
    }
    if (this._chosen !== user) {
      return;
    }
    const now = held.map(a =>
      h(
        'li',
        { 'data-allocation': a.id },
        `${a.kind === 'job' ? a.kernel_id.replace('-', ' ') : `kernel ${a.kernel_id.slice(0, 8)}`}: ` +
          `${a.count} GPU${a.count === 1 ? '' : 's'} ${a.state === 'granted' ? `on ${a.node}` : `waiting (#${a.position ?? '?'})`}`
      )
    );
    this._detail.replaceChildren(
      h('h3', {}, user),
      figureList(row, report.idle_util_percent),
      h('p', { class: 'jp-DLInfra-usageHint', 'data-hint': hint.code }, hint.text),
      h('h4', {}, 'Holding and waiting now'),
      now.length ? h('ul', { class: 'jp-DLInfra-personAllocations' }, now) : h('p', { class: 'jp-DLInfra-empty' }, 'Nothing.'),
      h('h4', {}, 'Latest jobs'),
      jobs.length
        ? h(
            'ul',
            { class: 'jp-DLInfra-personJobs' },
            jobs.slice(0, MAX_JOBS).map(j =>
              h(
                'li',
                { 'data-job-id': j.id, 'data-state': j.state },
                `#${j.id} ${j.name}: ${j.state}${j.reason ? ` (${j.reason})` : ''}`
              )
            )
          )
        : h('p', { class: 'jp-DLInfra-empty' }, 'No jobs.')
    );
  }

  private _client: IDLInfraClient;
  private _period: HTMLSelectElement;
  private _csv: HTMLElement;
  private _table: HTMLTableElement;
  private _detail: HTMLElement;
  private _report: UsageReport | null = null;
  private _rows: Row[] = [];
  private _sortKey = 'gpu_hours';
  private _descending = true;
  private _chosen: string | null = null;
}
