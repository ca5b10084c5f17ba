/**
 * The sidebar's "Jobs" section: the user's batch jobs (every active one, then the newest ended
 * ones), a sweep's jobs together, each with its GPUs, run time, class, marks and buttons (log,
 * outputs, cancel, re-run).
 */
import { showErrorMessage } from '@jupyterlab/apputils';
import type { CommandRegistry } from '@lumino/commands';

import { Allocation, isActiveJob, Job } from '../api';
import { clock, gpus, h } from '../dom';
import { JobCommandIDs, jobDurationText } from '../jobs';
import { JobsModel, LedgerModel } from '../model';
import { estimateNode, IRendered, schedBadges } from './common';

/** The most jobs the Jobs section lists (active ones are always listed). */
export const MAX_JOBS_SHOWN = 20;

/**
 * @param withCommands - whether the job commands (log, outputs) can be run: without them the
 *   jobs offer Cancel and Re-run only.
 */
export function renderJobs(jobs: JobsModel, ledger: LedgerModel, withCommands: boolean): IRendered {
  if (jobs.available === false) {
    return {
      signature: 'unavailable',
      nodes: [h('p', { class: 'jp-DLInfra-empty' }, 'This server does not run batch jobs.')]
    };
  }
  const all = jobs.jobs;
  const error = jobs.error
    ? h('p', { class: 'jp-DLInfra-jobsError', role: 'alert' }, `Cannot read the jobs: ${jobs.error}`)
    : null;
  if (all.length === 0) {
    const nodes: Node[] = error ? [error] : [];
    nodes.push(
      h(
        'p',
        { class: 'jp-DLInfra-empty' },
        jobs.available === null && !jobs.error
          ? 'Loading…'
          : 'No jobs yet. Use "Submit as job" in a notebook\'s toolbar.'
      )
    );
    return { signature: JSON.stringify(['none', jobs.available, jobs.error]), nodes };
  }
  // Every active job, then the newest ended ones up to the limit (newest first throughout).
  const active = all.filter(j => isActiveJob(j.state)).length;
  let endedLeft = Math.max(0, MAX_JOBS_SHOWN - active);
  const shown = all.filter(j => isActiveJob(j.state) || endedLeft-- > 0);
  const hidden = all.length - shown.length;

  // Jobs of one sweep together, where the newest of them is.
  const groups = new Map<string, Job[]>();
  for (const job of shown) {
    if (job.group_id) {
      const members = groups.get(job.group_id) ?? [];
      members.push(job);
      groups.set(job.group_id, members);
    }
  }
  const render = (job: Job) => jobItem(jobs, ledger, job, withCommands);
  const items: Node[] = [];
  const placed = new Set<string>();
  for (const job of shown) {
    const members = job.group_id ? groups.get(job.group_id) ?? [] : [];
    if (job.group_id && members.length > 1) {
      if (!placed.has(job.group_id)) {
        placed.add(job.group_id);
        items.push(jobGroup(job.group_id, members, render));
      }
    } else {
      items.push(render(job));
    }
  }
  const signature = JSON.stringify([
    shown.map(j => ({ ...j, duration_s: j.state === 'running' ? null : j.duration_s })),
    shown.map(j => {
      const a = isActiveJob(j.state) ? ledger.allocationById(j.allocation_id) : null;
      return a
        ? [
            a.state,
            a.borrowed,
            a.preempted_for,
            a.estimated_start,
            a.estimate_basis,
            a.position,
            a.priority_class
          ]
        : null;
    }),
    hidden,
    jobs.error,
    withCommands
  ]);
  const nodes: Node[] = [];
  if (error) {
    nodes.push(error);
  }
  nodes.push(h('ul', { class: 'jp-DLInfra-list jp-DLInfra-jobList' }, items));
  if (hidden > 0) {
    nodes.push(
      h(
        'p',
        { class: 'jp-DLInfra-empty jp-DLInfra-jobsMore' },
        `${hidden} older job${hidden === 1 ? '' : 's'} not shown.`
      )
    );
  }
  return { signature, nodes };
}

/** Refresh the durations of running jobs under `root`; returns how many there are. */
export function tickJobs(jobs: JobsModel, root: HTMLElement): number {
  const live = root.querySelectorAll<HTMLElement>('.jp-DLInfra-jobDuration[data-live]');
  const now = Date.now();
  live.forEach(el => {
    const job = jobs.jobById(Number(el.dataset.jobId));
    if (job) {
      const text = jobDurationText(jobs, job, now);
      if (el.textContent !== text) {
        el.textContent = text;
      }
    }
  });
  return live.length;
}

/** Run a job button's command (or the model's action without commands). */
export function onJobButton(
  jobs: JobsModel,
  commands: CommandRegistry | null,
  button: HTMLButtonElement
): void {
  const id = Number(button.dataset.jobId);
  if (!Number.isInteger(id) || button.disabled) {
    return;
  }
  const cls = button.classList;
  const fail = (what: string) => (error: unknown) => {
    button.disabled = false;
    void showErrorMessage(what, (error as Error)?.message ?? String(error));
  };
  if (cls.contains('jp-DLInfra-jobLog')) {
    void commands?.execute(JobCommandIDs.openLog, { id });
  } else if (cls.contains('jp-DLInfra-jobOutput')) {
    void commands?.execute(JobCommandIDs.openOutput, { id, format: 'notebook' });
  } else if (cls.contains('jp-DLInfra-jobReport')) {
    void commands?.execute(JobCommandIDs.openOutput, { id, format: 'html' });
  } else if (cls.contains('jp-DLInfra-jobCancel')) {
    button.disabled = true;
    if (commands) {
      void commands.execute(JobCommandIDs.cancel, { id }).then(() => (button.disabled = false));
    } else {
      jobs.cancelJob(id).catch(fail(`Cannot cancel job ${id}`));
    }
  } else if (cls.contains('jp-DLInfra-jobRerun')) {
    button.disabled = true;
    if (commands) {
      void commands.execute(JobCommandIDs.rerun, { id }).then(() => (button.disabled = false));
    } else {
      jobs.rerunJob(id).catch(fail(`Cannot re-run job ${id}`));
    }
  }
}

function jobGroup(
  groupId: string,
  members: Job[],
  render: (job: Job) => HTMLElement
): HTMLElement {
  const counts = new Map<string, number>();
  for (const job of members) {
    counts.set(job.state, (counts.get(job.state) ?? 0) + 1);
  }
  const summary = [...counts].map(([state, n]) => `${n} ${state}`).join(', ');
  // Sweep jobs are named "name[k=v,...]": the group shows the shared name.
  const base = members[members.length - 1].name.replace(/\[[^\]]*\]$/, '');
  const headingId = `dlinfra-job-group-${groupId.replace(/[^A-Za-z0-9_-]/g, '_')}`;
  return h(
    'li',
    { class: 'jp-DLInfra-jobGroup', 'data-group-id': groupId, 'aria-labelledby': headingId },
    h(
      'div',
      { class: 'jp-DLInfra-jobGroupHeader', id: headingId, title: `Sweep ${groupId}` },
      h(
        'span',
        { class: 'jp-DLInfra-jobGroupName', title: `Sweep of ${members.length} · ${base}` },
        `Sweep of ${members.length} · ${base}`
      ),
      h('span', { class: 'jp-DLInfra-jobGroupSummary' }, summary)
    ),
    h('ul', { class: 'jp-DLInfra-list jp-DLInfra-jobGroupList' }, members.map(render))
  );
}

function jobItem(jobs: JobsModel, ledger: LedgerModel, job: Job, withCommands: boolean): HTMLElement {
  const active = isActiveJob(job.state);
  const button = (kind: string, label: string, title: string, extra = '') =>
    h(
      'button',
      {
        type: 'button',
        class: `jp-DLInfra-${kind} jp-DLInfra-jobButton jp-Button jp-mod-styled${extra}`,
        'data-job-id': job.id,
        'data-focus-key': `${kind}-${job.id}`,
        title,
        'aria-label': `${title} (job ${job.id}, ${job.name})`
      },
      label
    );
  const buttons: HTMLElement[] = [];
  if (withCommands) {
    buttons.push(button('jobLog', 'Log', 'Follow the log'));
    if (job.outputs.notebook) {
      buttons.push(button('jobOutput', 'Notebook', 'Open the executed notebook'));
    }
    if (job.outputs.html) {
      buttons.push(button('jobReport', 'Report', 'Open the HTML report'));
    }
  }
  if (active) {
    buttons.push(
      button(
        'jobCancel',
        'Cancel',
        job.state === 'running' ? 'Stop the job' : 'Take the job out of the queue',
        ' jp-mod-warn'
      )
    );
  } else {
    buttons.push(
      button('jobRerun', 'Re-run', 'Submit the job again, with the same fields', ' jp-mod-accept')
    );
  }

  const reasonText =
    job.reason ||
    (job.state === 'failed' && job.error
      ? `failed${job.failed_cell ? ` in cell ${job.failed_cell}` : ''}: ${job.error}`
      : '');
  const meta: Array<Node | string> = [];
  // The job's GPU request while it is active: its class, place and marks.
  const grant = active ? ledger.allocationById(job.allocation_id) : null;
  meta.push(
    h(
      'span',
      { class: 'jp-DLInfra-jobGpus' },
      job.gpus > 0 ? `${gpus(job.gpus)}${job.model ? ` ${job.model}` : ''}` : 'no GPU'
    )
  );
  if (job.world_size) {
    // A distributed job: its ranks (or its roles' processes), started and stopped together.
    const shape =
      job.roles && job.roles.length > 0
        ? job.roles.map(r => `${r.name} ×${r.replicas}`).join(', ')
        : `${job.nodes ?? 1} node${(job.nodes ?? 1) === 1 ? '' : 's'} × ${job.gpus_per_node} ranks`;
    meta.push(
      h('span', { class: 'jp-DLInfra-jobRanks', title: `${job.world_size} processes` }, shape)
    );
  }
  const durationText = jobDurationText(jobs, job);
  if (durationText || job.state === 'running') {
    meta.push(
      h(
        'span',
        {
          class: 'jp-DLInfra-jobDuration',
          'data-job-id': job.id,
          'data-live': job.state === 'running' ? 'true' : null,
          title: job.started_at ? `Started at ${clock(job.started_at)}` : null
        },
        durationText
      )
    );
  } else {
    meta.push(h('span', { class: 'jp-DLInfra-jobCreated' }, `submitted ${clock(job.created_at)}`));
  }
  if (job.backend) {
    meta.push(h('span', { class: 'jp-DLInfra-jobBackend', title: `on ${job.node}` }, job.backend));
  }
  // A job submitted without a class runs in the policy's job class, which its request names.
  const klass = job.priority_class || grant?.priority_class || null;
  if (klass) {
    meta.push(
      h(
        'span',
        { class: 'jp-DLInfra-jobClass', 'data-class': klass, title: `Priority class ${klass}` },
        klass
      )
    );
  }
  const attempts = job.attempts ?? 0;
  if (attempts > 0) {
    meta.push(
      h(
        'span',
        {
          class: 'jp-DLInfra-jobAttempts',
          'data-attempts': attempts,
          title: `Preempted and queued again ${attempts} time${attempts === 1 ? '' : 's'}`
        },
        `preempted ${attempts === 1 ? 'once' : `${attempts} times`}`
      )
    );
  }
  if (job.after.length > 0) {
    meta.push(h('span', { class: 'jp-DLInfra-jobAfter' }, `after #${job.after.join(', #')}`));
  }
  const paramsText = Object.entries(job.parameters ?? {})
    .map(([k, v]) => `${k}=${JSON.stringify(v)}`)
    .join(', ');
  const marks = schedBadges(grant);
  return h(
    'li',
    {
      class: `jp-DLInfra-job jp-mod-${job.state}`,
      'data-job-id': job.id,
      'data-state': job.state,
      'data-group-id': job.group_id
    },
    h(
      'div',
      { class: 'jp-DLInfra-jobHeader' },
      h(
        'span',
        {
          class: 'jp-DLInfra-jobName',
          title: job.path.includes(job.name) ? job.path : `${job.name} (${job.path})`
        },
        job.name
      ),
      h('span', { class: 'jp-DLInfra-jobId' }, `#${job.id}`),
      h(
        'span',
        { class: `jp-DLInfra-jobState jp-DLInfra-jobState-${job.state}`, 'data-state': job.state },
        job.state
      )
    ),
    h('div', { class: 'jp-DLInfra-jobMeta' }, meta),
    marks.length > 0 ? h('div', { class: 'jp-DLInfra-schedBadges' }, marks) : null,
    paramsText ? h('div', { class: 'jp-DLInfra-jobParams', title: paramsText }, paramsText) : null,
    reasonText ? h('div', { class: 'jp-DLInfra-jobReason', title: reasonText }, reasonText) : null,
    grant && grant.state === 'queued' ? estimateNode(grant) : clusterEstimate(job, grant),
    h('div', { class: 'jp-DLInfra-jobActions' }, buttons)
  );
}

/** The estimate of a queued job whose backend places its GPUs (SLURM's own), if it has one. */
function clusterEstimate(job: Job, grant: Allocation | null): HTMLElement | null {
  if (grant || job.state !== 'queued' || !job.estimated_start) {
    return null;
  }
  return estimateNode({
    estimated_start: job.estimated_start,
    estimate_note: `${job.backend}'s own estimate`,
    estimate_basis: job.backend
  });
}
