/**
 * The sidebar's "Your fair share" section: the user's fair-share factor, recent use, quota,
 * rank among the users waiting, and account.
 */
import { FairShare, Standing } from '../api';
import { duration, gpus, h } from '../dom';
import { FairShareModel } from '../model';
import { IRendered } from './common';

export function renderFairShare(fairShare: FairShareModel): IRendered {
  if (fairShare.available === false) {
    return {
      signature: 'unavailable',
      nodes: [
        h('p', { class: 'jp-DLInfra-empty' }, 'This server does not rank requests by fair share.')
      ]
    };
  }
  const fs = fairShare.standing;
  const error = fairShare.error
    ? h(
        'p',
        { class: 'jp-DLInfra-fairShareError', role: 'alert' },
        `Cannot read your fair share: ${fairShare.error}`
      )
    : null;
  if (!fs) {
    return {
      signature: JSON.stringify(['none', fairShare.error]),
      nodes: [error ?? h('p', { class: 'jp-DLInfra-empty' }, 'Loading…')]
    };
  }
  const nodes: Node[] = error ? [error, fairShareView(fs)] : [fairShareView(fs)];
  return { signature: JSON.stringify([fs, fairShare.error]), nodes };
}

/** The words for a fair-share factor (1: no recent use, 0.5: used exactly the share). */
function factorWords(factor: number): string {
  if (factor >= 0.995) {
    return 'no recent use';
  }
  if (factor > 0.55) {
    return 'under your share';
  }
  if (factor >= 0.45) {
    return 'about your share';
  }
  return 'over your share';
}

/** The caller's fair-share standing, quota and rank. */
function fairShareView(fs: FairShare): HTMLElement {
  const you: Standing | null = fs.you;
  const factor = you?.factor ?? 1;
  const usage = you?.usage_gpu_hours ?? 0;
  const held = you?.held ?? 0;
  const rank = you?.rank ?? null;
  const row = (label: string, cls: string, value: string | number, text: string, title = '') => [
    h('dt', {}, label),
    h('dd', { class: cls, 'data-value': value, title: title || null }, text)
  ];
  const hours = Math.round(usage * 100) / 100;
  const rows: HTMLElement[] = [
    ...row(
      'Factor',
      'jp-DLInfra-fairShareFactor',
      factor,
      `${factor.toFixed(2)} · ${factorWords(factor)}`,
      '1 = no recent GPU use, 0.5 = used exactly your share, towards 0 = far over it. ' +
        'Within a priority class, users with less use per share are served first ' +
        '(GPUs held now count against them too).'
    ),
    ...row(
      'Recent use',
      'jp-DLInfra-fairShareUsage',
      hours,
      `${hours} GPU-h`,
      `Your past GPU use, counting half as much after ${duration(fs.half_life)}`
    ),
    ...row(
      'Quota',
      'jp-DLInfra-fairShareQuota',
      fs.quota ?? '',
      fs.quota === null
        ? `no limit · holding ${gpus(held)}`
        : held > fs.quota
          ? `holding ${gpus(held)}, over a quota of ${fs.quota}`
          : `holding ${held} of ${gpus(fs.quota)}`,
      'GPUs you may hold at once (borrowed GPUs of preemptible jobs may go beyond it)'
    )
  ];
  if (rank !== null) {
    rows.push(
      ...row(
        'Rank',
        'jp-DLInfra-fairShareRank',
        rank,
        `#${rank} among users waiting`,
        'Your place among the users with waiting requests (1 is served first, within a class)'
      )
    );
  }
  if (you && you.account) {
    rows.push(
      ...row(
        'Account',
        'jp-DLInfra-fairShareAccount',
        you.account,
        `${you.account} (share ${you.account_share})`
      )
    );
  }
  return h(
    'div',
    {
      class: `jp-DLInfra-fairShare${fs.fair_share ? '' : ' jp-mod-off'}`,
      'data-user': fs.user,
      'data-factor': factor
    },
    fs.fair_share
      ? null
      : h(
          'p',
          { class: 'jp-DLInfra-fairShareOff' },
          'Fair share is off: within a class, requests are served first come, first served.'
        ),
    h('dl', { class: 'jp-DLInfra-fairShareStats' }, rows),
    h(
      'p',
      { class: 'jp-DLInfra-fairShareHelp' },
      you
        ? `Your share is ${you.share}; past use counts half after ${duration(fs.half_life)}.`
        : `No recent GPU use: you go first within your class. ` +
            `Past use counts half after ${duration(fs.half_life)}.`
    )
  );
}
