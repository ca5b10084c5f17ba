/**
 * The sidebar's "My usage" section: the user's last seven days (GPU-hours held, how busy, how
 * idle) and the one hint that matters most for them.
 */
import { UsageFigures } from '../api';
import { gpuHours, h, share } from '../dom';
import { UsageModel } from '../model/usage';
import { IRendered } from './common';

/** Below this share of held time busy, a week's use is called out (and above it praised). */
const LOW_EFFICIENCY = 0.25;
/** Above this share of held time idle, the idle hours are the hint. */
const HIGH_IDLE = 0.3;

export function renderUsage(usage: UsageModel): IRendered {
  if (usage.available === false) {
    return {
      signature: 'unavailable',
      nodes: [h('p', { class: 'jp-DLInfra-empty' }, 'This server keeps no usage reports.')]
    };
  }
  const figures = usage.figures;
  const error = usage.error
    ? h('p', { class: 'jp-DLInfra-usageError', role: 'alert' }, `Cannot read your usage: ${usage.error}`)
    : null;
  if (!figures) {
    return {
      signature: JSON.stringify(['none', usage.error]),
      nodes: [error ?? h('p', { class: 'jp-DLInfra-empty' }, 'Loading…')]
    };
  }
  const view = usageView(figures, usage.idlePercent ?? 5);
  return {
    signature: JSON.stringify([figures, usage.idlePercent, usage.error]),
    nodes: error ? [error, view] : [view]
  };
}

/** The hint that matters most for a week like this one, in words. */
export function topHint(f: UsageFigures, idlePercent: number): { code: string; text: string } {
  if (f.gpu_hours <= 0) {
    return { code: 'none', text: 'No GPUs held in the last 7 days.' };
  }
  if (f.reclaimed_gpu_hours > 0) {
    return {
      code: 'reclaimed',
      text:
        `The idle reclaim took back GPUs of yours after ${gpuHours(f.reclaimed_gpu_hours)} idle ` +
        'GPU-hours: release them yourself with %gpu release when you pause.'
    };
  }
  if (f.observed_gpu_hours <= 0) {
    return {
      code: 'unobserved',
      text: 'No utilisation was sampled yet for the GPUs you held: figures come within minutes.'
    };
  }
  const idleShare = f.idle_gpu_hours / f.gpu_hours;
  if (idleShare > HIGH_IDLE) {
    return {
      code: 'idle',
      text:
        `${Math.round(idleShare * 100)} % of the time you held GPUs they sat under ` +
        `${idlePercent} %: release them between experiments (%gpu release), or run long ` +
        'trainings as jobs.'
    };
  }
  if (f.efficiency !== null && f.efficiency < LOW_EFFICIENCY) {
    return {
      code: 'low',
      text:
        `Your GPUs were busy ${Math.round(f.efficiency * 100)} % of the time you held them: ` +
        '%gpu profile in a busy cell shows what holds them back.'
    };
  }
  return { code: 'good', text: 'Your GPUs were put to good use.' };
}

function usageView(f: UsageFigures, idlePercent: number): HTMLElement {
  const row = (label: string, cls: string, value: string | number, text: string, title: string) => [
    h('dt', {}, label),
    h('dd', { class: cls, 'data-value': value, title }, text)
  ];
  const efficiency = share(f.efficiency);
  const hint = topHint(f, idlePercent);
  return h(
    'div',
    { class: 'jp-DLInfra-usage' },
    h(
      'dl',
      { class: 'jp-DLInfra-usageStats' },
      ...row(
        'Held',
        'jp-DLInfra-usageHeld',
        f.gpu_hours,
        `${gpuHours(f.gpu_hours)} GPU-h`,
        'GPUs you held x hours, over the last 7 days'
      ),
      ...row(
        'Busy',
        'jp-DLInfra-usageEfficiency',
        f.efficiency ?? '',
        efficiency,
        'How busy your GPUs were while you held them (utilisation-weighted; time nobody ' +
          'sampled counts as not busy)'
      ),
      ...row(
        'Idle',
        'jp-DLInfra-usageIdle',
        f.idle_gpu_hours,
        `${gpuHours(f.idle_gpu_hours)} GPU-h`,
        `Held GPU-hours under ${idlePercent} % utilisation`
      )
    ),
    h('p', { class: 'jp-DLInfra-usageHint', 'data-hint': hint.code }, hint.text)
  );
}
