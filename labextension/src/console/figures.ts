/** The figures of a usage report row, as the console lists them (see docs/reports.md). */
import { UsageFigures } from '../api';
import { gpuHours, h, share } from '../dom';

export function waitWords(seconds: number | null): string {
  if (seconds === null) {
    return '–';
  }
  if (seconds < 120) {
    return `${Math.round(seconds)} s`;
  }
  if (seconds < 7200) {
    return `${Math.round(seconds / 60)} min`;
  }
  return `${(seconds / 3600).toFixed(1)} h`;
}

export function figureList(f: UsageFigures, idlePercent: number): HTMLElement {
  const item = (label: string, key: string, text: string, title: string) => [
    h('dt', {}, label),
    h('dd', { 'data-figure': key, title }, text)
  ];
  return h(
    'dl',
    { class: 'jp-DLInfra-consoleStats' },
    ...item('Held', 'gpu_hours', `${gpuHours(f.gpu_hours)} GPU-h`, 'GPUs granted x hours held'),
    ...item(
      'Busy',
      'efficiency',
      share(f.efficiency),
      'Utilisation-weighted GPU-hours over held GPU-hours'
    ),
    ...item(
      'Idle',
      'idle_gpu_hours',
      `${gpuHours(f.idle_gpu_hours)} GPU-h`,
      `Held GPU-hours under ${idlePercent} % utilisation`
    ),
    ...item(
      'Reclaimed',
      'reclaimed_gpu_hours',
      `${gpuHours(f.reclaimed_gpu_hours)} GPU-h`,
      'Idle GPU-hours of the allocations the idle reclaim ended'
    ),
    ...item(
      'Waits',
      'waits',
      `${f.grants} granted · p50 ${waitWords(f.wait_p50_s)} · p95 ${waitWords(f.wait_p95_s)}`,
      'Requests granted in the period and their waits from request to grant'
    ),
    ...item(
      'Jobs',
      'jobs',
      `${f.jobs_succeeded} succeeded · ${f.jobs_failed} failed · ${f.jobs_cancelled} cancelled`,
      'Jobs that ended in the period'
    )
  );
}
