/**
 * Rendering of parked grants, shared by the widgets: a kernel whose GPU memory waits in host
 * memory while its GPUs are lent to preemptible jobs, until its next cell (or Resume) takes them
 * back. The badge says "Parked" (or "Parking…", "Resuming…") in words, not by colour alone.
 */
import { Allocation, ParkState } from './api';
import { clock, elapsed, gib, h } from './dom';

/** Whether a grant's GPUs are out of its hands now (lent, or free to lend). */
export function isAway(a: Pick<Allocation, 'state' | 'park'> | null | undefined): boolean {
  const state = a?.state === 'granted' ? a.park?.state : undefined;
  return state === 'parked' || state === 'resuming';
}

/** The badge's text: "Parked · 1.0 GiB", "Parking…", "Resuming…". */
export function parkBadgeText(park: ParkState): string {
  switch (park.state) {
    case 'parking':
      return 'Parking…';
    case 'parked':
      return typeof park.bytes === 'number' ? `Parked · ${gib(park.bytes)} GiB` : 'Parked';
    default:
      return 'Resuming…';
  }
}

/** The badge's tooltip: why, since when, how much host memory, and what happens next. */
export function parkBadgeTitle(park: ParkState, now = Date.now()): string {
  const parts: string[] = [];
  if (park.reason) {
    parts.push(park.reason);
  }
  if (park.since) {
    parts.push(`since ${clock(park.since)} (${elapsed(park.since, now)} ago)`);
  }
  if (typeof park.bytes === 'number') {
    parts.push(`${gib(park.bytes)} GiB of GPU memory kept in host memory`);
  }
  switch (park.state) {
    case 'parking':
      parts.push('its GPU memory is being copied to host memory');
      break;
    case 'parked':
      parts.push(
        'its GPUs are lent to preemptible jobs until its next cell (or Resume) takes them back'
      );
      break;
    case 'resuming':
      parts.push('taking its GPUs back: the jobs that borrowed them are being stopped');
      break;
    default:
      parts.push('its GPUs are back: its GPU memory is being restored');
  }
  return parts.join('; ');
}

/** The badge of a parked grant (`.jp-DLInfra-parkBadge`), or null when it is not parked. */
export function parkBadge(a: Allocation): HTMLElement | null {
  const park = a.state === 'granted' ? a.park : null;
  if (!park) {
    return null;
  }
  const shown = park.state === 'restoring' ? 'resuming' : park.state;
  return h(
    'span',
    {
      class: `jp-DLInfra-parkBadge jp-DLInfra-parkBadge-${shown}`,
      'data-park-state': park.state,
      title: parkBadgeTitle(park)
    },
    parkBadgeText(park)
  );
}
