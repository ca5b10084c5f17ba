import { LabIcon } from '@jupyterlab/ui-components';

/** A GPU board: the sidebar tab, the toolbar button and the dialogs use it. */
const GPU_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path fill-rule="evenodd" d="M2 5h3v1h14a2 2 0 0 1 2 2v8a2 2 0 0 1-2 2h-3v2h-2v-2H8v2H6v-2H5v-1H3V7H2zm3 3v8h14V8zm2 1.5h10v5H7z"/>
  </g>
</svg>`;

export const gpuIcon = new LabIcon({ name: 'jupyter-dlinfra:gpu', svgstr: GPU_SVG });

/** A clock: the idle-reclaim policy panel. */
const POLICY_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path fill-rule="evenodd" d="M12 2a10 10 0 1 1 0 20 10 10 0 0 1 0-20zm0 2a8 8 0 1 0 0 16 8 8 0 0 0 0-16zm-1 3h2v5.4l3.8 2.3-1 1.7L11 13.6z"/>
  </g>
</svg>`;

export const policyIcon = new LabIcon({ name: 'jupyter-dlinfra:policy', svgstr: POLICY_SVG });

/** A stack of pages with a play mark: batch jobs (toolbar button, log views). */
const JOB_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path fill-rule="evenodd" d="M6 2h9l5 5v13a2 2 0 0 1-2 2H6a2 2 0 0 1-2-2V4a2 2 0 0 1 2-2zm0 2v16h12V8h-4V4zm4 6.5 6 3.5-6 3.5z"/>
  </g>
</svg>`;

export const jobIcon = new LabIcon({ name: 'jupyter-dlinfra:job', svgstr: JOB_SVG });
