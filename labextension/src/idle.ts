/**
 * Rendering of idle-reclaim states: the badge of a kernel whose GPUs are idle ("Idle 12 min")
 * or about to be reclaimed ("Reclaim in 4:59"), shared by the widgets.
 */
import { IdleInfo, KernelIdle, isJudged } from './api';
import { clock, countdown, elapsed, h } from './dom';

/** What the policy will do, in words. */
export const ACTION_WORDS: Record<string, string> = {
  release: 'the kernel will be restarted without GPUs',
  shutdown: 'the kernel will be shut down',
  notify: 'nothing will be taken: the policy only reports',
  park: 'the GPUs will be parked (their memory kept in host memory) until the next cell'
};

/** Whether an idle state shows a badge. */
export function hasBadge(idle: KernelIdle | null | undefined): idle is IdleInfo {
  return isJudged(idle) && idle.state !== 'active';
}

/** The badge's text at `now` (ms since epoch). */
export function idleBadgeText(idle: IdleInfo, now = Date.now()): string {
  switch (idle.state) {
    case 'warned':
      if (idle.reclaim_at) {
        return `Reclaim in ${countdown(Date.parse(idle.reclaim_at) - now)}`;
      }
      return idle.idle_since ? `Idle ${elapsed(idle.idle_since, now)} · warned` : 'Idle · warned';
    case 'idle': {
      const text = idle.idle_since ? `Idle ${elapsed(idle.idle_since, now)}` : 'Idle';
      const held = idle.hold_until && Date.parse(idle.hold_until) > now;
      return held ? `${text} · kept until ${clock(idle.hold_until)}` : text;
    }
    case 'reclaimed':
      // `notify` takes nothing: the GPUs stay, the reclaim is only reported.
      return idle.action === 'notify' ? 'Idle · reclaim reported' : 'Reclaimed';
    default:
      return '';
  }
}

/** The badge's tooltip: what happens when. */
export function idleBadgeTitle(idle: IdleInfo): string {
  const parts: string[] = [];
  if (idle.idle_since) {
    parts.push(`GPUs idle since ${clock(idle.idle_since)}`);
  }
  if (typeof idle.last_util === 'number') {
    parts.push(`last utilisation ${Math.round(idle.last_util)}%`);
  }
  if (idle.state === 'warned' && idle.reclaim_at) {
    parts.push(`reclaim at ${clock(idle.reclaim_at)}: ${ACTION_WORDS[idle.action] ?? idle.action}`);
  } else if (idle.state === 'idle' && idle.warn_at) {
    parts.push(`warning at ${clock(idle.warn_at)}`);
  }
  if (idle.hold_until) {
    parts.push(`kept until ${clock(idle.hold_until)}`);
  }
  if (idle.state !== 'reclaimed') {
    parts.push(`${idle.keeps_left} keep${idle.keeps_left === 1 ? '' : 's'} left`);
  }
  return parts.join('; ');
}

/**
 * The badge of a kernel (`.jp-DLInfra-idleBadge` with `jp-DLInfra-idleBadge-<state>`), or null
 * when its GPUs are in use or it is exempt. Its text is refreshed with `refreshBadges`.
 */
export function idleBadge(kernelId: string, idle: KernelIdle | null): HTMLElement | null {
  if (!hasBadge(idle)) {
    return null;
  }
  return h(
    'span',
    {
      class: `jp-DLInfra-idleBadge jp-DLInfra-idleBadge-${idle.state}`,
      'data-kernel-id': kernelId,
      'data-state': idle.state,
      'data-reclaim-at': idle.reclaim_at,
      role: idle.state === 'warned' ? 'timer' : null,
      title: idleBadgeTitle(idle)
    },
    idleBadgeText(idle)
  );
}

/** Refresh the text of the badges under `root`; returns how many there are. */
export function refreshBadges(
  root: HTMLElement,
  idleOf: (kernelId: string) => KernelIdle | null
): number {
  const badges = root.querySelectorAll<HTMLElement>('.jp-DLInfra-idleBadge[data-kernel-id]');
  const now = Date.now();
  badges.forEach(badge => {
    const idle = idleOf(badge.dataset.kernelId ?? '');
    if (hasBadge(idle)) {
      const text = idleBadgeText(idle, now);
      if (badge.textContent !== text) {
        badge.textContent = text;
      }
    }
  });
  return badges.length;
}
