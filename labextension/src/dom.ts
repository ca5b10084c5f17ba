/**
 * Small rendering helpers shared by the widgets: DOM construction and formatting.
 */

/** The attributes of an element: false, null and undefined ones are left out, true is ''. */
export type Attrs = Record<string, string | number | boolean | null | undefined>;
/** A child of an element: false, null and undefined are left out. */
export type Child = Node | string | null | undefined | false;

/** Create an element with attributes (`class`, `aria-*`, `data-*`, ...) and children. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: Array<Child | Child[]>
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) {
      continue;
    }
    el.setAttribute(key, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

function append(el: Element, children: Array<Child | Child[]>): void {
  for (const child of children) {
    if (Array.isArray(child)) {
      append(el, child);
    } else if (child !== null && child !== undefined && child !== false) {
      el.append(child);
    }
  }
}

const SVG_NS = 'http://www.w3.org/2000/svg';

/**
 * A sparkline of values between 0 and 100, oldest first, drawn from the right edge with room
 * for `capacity` samples, so that it fills up as samples come.
 */
export function sparkline(
  values: number[],
  capacity: number,
  width = 120,
  height = 24,
  label = ''
): SVGSVGElement {
  const svg = document.createElementNS(SVG_NS, 'svg');
  svg.setAttribute('class', 'jp-DLInfra-sparkline');
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', label);
  const title = document.createElementNS(SVG_NS, 'title');
  title.textContent = label;
  svg.appendChild(title);
  if (values.length > 0) {
    const n = Math.min(values.length, Math.max(2, capacity));
    const shown = values.slice(values.length - n);
    const step = width / (Math.max(2, capacity) - 1);
    const y = (v: number) =>
      (height - 1 - (Math.max(0, Math.min(100, v)) / 100) * (height - 2)).toFixed(1);
    const x = (i: number) => (width - (n - 1 - i) * step).toFixed(1);
    const points = shown.map((v, i) => `${x(i)},${y(v)}`);
    if (n === 1) {
      points.unshift(`${(width - step).toFixed(1)},${y(shown[0])}`);
    }
    const first = points[0].split(',')[0];
    const area = document.createElementNS(SVG_NS, 'polygon');
    area.setAttribute('class', 'jp-DLInfra-sparklineArea');
    area.setAttribute('points', `${first},${height} ${points.join(' ')} ${width},${height}`);
    svg.appendChild(area);
    const line = document.createElementNS(SVG_NS, 'polyline');
    line.setAttribute('class', 'jp-DLInfra-sparklineLine');
    line.setAttribute('points', points.join(' '));
    svg.appendChild(line);
  }
  return svg;
}

/** A labelled meter (`role="progressbar"`) with its text value. */
export function meter(
  kind: 'util' | 'mem',
  label: string,
  percent: number | null,
  text: string
): HTMLElement {
  const value = percent === null ? null : Math.max(0, Math.min(100, percent));
  const level = value === null ? '' : value >= 90 ? 'jp-mod-high' : value >= 60 ? 'jp-mod-medium' : '';
  return h(
    'div',
    { class: `jp-DLInfra-meter jp-DLInfra-meter-${kind}` },
    h('span', { class: 'jp-DLInfra-meterLabel', 'aria-hidden': 'true' }, label),
    h(
      'div',
      {
        class: `jp-DLInfra-bar ${level}`,
        role: 'progressbar',
        'aria-label': label,
        'aria-valuemin': 0,
        'aria-valuemax': 100,
        'aria-valuenow': value === null ? null : Math.round(value),
        'aria-valuetext': text
      },
      h('div', { class: 'jp-DLInfra-barFill', style: `width: ${value ?? 0}%` })
    ),
    h('span', { class: 'jp-DLInfra-meterValue' }, text)
  );
}

/** Bytes as GiB with one decimal. */
export function gib(bytes: number | null | undefined): string {
  if (typeof bytes !== 'number') {
    return '–';
  }
  return (bytes / 2 ** 30).toFixed(1);
}

/** A percentage without decimals, or an en dash when unknown. */
export function pct(value: number | null | undefined): string {
  return typeof value === 'number' ? `${Math.round(value)}%` : '–';
}

/** GPU-hours in words: one decimal, none from 100 on. */
export function gpuHours(value: number): string {
  return value >= 100 ? value.toFixed(0) : value.toFixed(1);
}

/** A share (0 to 1) as a whole percentage, '–' for none. */
export function share(value: number | null): string {
  return value === null ? '–' : `${Math.round(value * 100)} %`;
}

/** The file name of a path. */
export function basename(path: string): string {
  const parts = path.split('/');
  return parts[parts.length - 1] || path;
}

/** "3 s", "4 min", "2 h" since an ISO time. */
export function since(iso: string | null | undefined): string {
  if (!iso) {
    return '';
  }
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (!isFinite(seconds)) {
    return '';
  }
  if (seconds < 60) {
    return `${Math.round(seconds)} s`;
  }
  if (seconds < 3600) {
    return `${Math.round(seconds / 60)} min`;
  }
  return `${(seconds / 3600).toFixed(1)} h`;
}

/** "GPU" or "GPUs". */
export function gpus(count: number): string {
  return `${count} GPU${count === 1 ? '' : 's'}`;
}

/** A number of seconds for people: "45 s", "30 min", "1 h 30 min", "off" for 0. */
export function duration(seconds: number | null | undefined, zero = 'off'): string {
  if (typeof seconds !== 'number' || !isFinite(seconds)) {
    return '–';
  }
  if (seconds <= 0) {
    return zero;
  }
  if (seconds < 60) {
    return `${Math.round(seconds)} s`;
  }
  if (seconds < 3600) {
    const m = Math.floor(seconds / 60);
    const s = Math.round(seconds - m * 60);
    return s && m < 10 ? `${m} min ${s} s` : `${m} min`;
  }
  const hours = Math.floor(seconds / 3600);
  const m = Math.round((seconds - hours * 3600) / 60);
  return m ? `${hours} h ${m} min` : `${hours} h`;
}

/** Milliseconds left as a countdown: "4:59", "1:02:03" ("0:00" once passed). */
export function countdown(ms: number): string {
  const total = Math.max(0, Math.ceil(ms / 1000));
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const seconds = total % 60;
  const ss = String(seconds).padStart(2, '0');
  return hours > 0 ? `${hours}:${String(minutes).padStart(2, '0')}:${ss}` : `${minutes}:${ss}`;
}

/** An ISO time as local wall-clock time ("14:05"), with the date when not today. */
export function clock(iso: string | null | undefined): string {
  if (!iso) {
    return '';
  }
  const date = new Date(iso);
  if (isNaN(date.getTime())) {
    return '';
  }
  const time = date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  const today = new Date();
  return date.toDateString() === today.toDateString()
    ? time
    : `${date.toLocaleDateString([], { month: 'short', day: 'numeric' })} ${time}`;
}

/** A short elapsed time since an ISO time, floored: "45 s", "12 min", "1 h 5 min". */
export function elapsed(iso: string | null | undefined, now = Date.now()): string {
  if (!iso) {
    return '';
  }
  const seconds = Math.max(0, (now - Date.parse(iso)) / 1000);
  if (!isFinite(seconds)) {
    return '';
  }
  if (seconds < 60) {
    return `${Math.floor(seconds)} s`;
  }
  if (seconds < 3600) {
    return `${Math.floor(seconds / 60)} min`;
  }
  const hours = Math.floor(seconds / 3600);
  const minutes = Math.floor((seconds % 3600) / 60);
  return minutes ? `${hours} h ${minutes} min` : `${hours} h`;
}

/**
 * When a queued request may start, for people, from its estimated start (ISO, or null when
 * the server has none): "starts in ~12 min", "starts in ~2 h 5 min", "start time unknown".
 */
export function startsIn(iso: string | null | undefined, now = Date.now()): string {
  const at = iso ? Date.parse(iso) : NaN;
  if (!isFinite(at)) {
    return 'start time unknown';
  }
  const seconds = (at - now) / 1000;
  if (seconds < 60) {
    return 'starts in <1 min';
  }
  if (seconds < 3600) {
    return `starts in ~${Math.round(seconds / 60)} min`;
  }
  if (seconds < 48 * 3600) {
    const total = Math.round(seconds / 60);
    const hours = Math.floor(total / 60);
    const minutes = total % 60;
    return minutes ? `starts in ~${hours} h ${minutes} min` : `starts in ~${hours} h`;
  }
  return `starts in ~${Math.round(seconds / 86400)} days`;
}
