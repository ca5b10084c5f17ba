/**
 * The admin panel `dlinfra-admin`: the idle-reclaim policy as a form (PUT policy), its source
 * and recent changes, a dry run of the policy in the form over the recorded usage
 * (POST policy/simulate), and the scheduling policy (PUT scheduling, see `scheduling`).
 * Only added for admins (GET me); the server enforces it either way.
 */
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { PolicyDoc, PolicyFields, PolicyView, SimulationResult } from '../api';
import { basename, clock, duration, h } from '../dom';
import { policyIcon } from '../icons';
import { AdminModel } from '../model/admin';
import {
  canonical,
  configuredNote,
  durationNote,
  errorMessage,
  fieldControl,
  labelledField,
  numberValue,
  PolicyForm,
  section
} from './form';
import { OverridesEditor } from './overridesEditor';
import { SchedulingEditor } from './scheduling';

export const ADMIN_PANEL_ID = 'dlinfra-admin';

type NumberField = Exclude<keyof PolicyFields, 'action'>;

interface IFieldSpec {
  name: NumberField;
  label: string;
  help: string;
  /** Whether the value is a number of seconds (shown as a duration too). */
  seconds: boolean;
  max?: number;
  step?: number;
}

const FIELDS: IFieldSpec[] = [
  {
    name: 'idle_util_percent',
    label: 'Idle below (%)',
    help: 'A GPU under this utilisation is idle. 0 switches detection off.',
    seconds: false,
    max: 100
  },
  {
    name: 'idle_after',
    label: 'Idle after (s)',
    help: 'Idle this long before a kernel shows as idle. 0 switches detection off.',
    seconds: true
  },
  {
    name: 'warn_after',
    label: 'Warn after (s)',
    help: 'Idle this long before the owner is warned. 0 switches warnings and reclaim off.',
    seconds: true
  },
  {
    name: 'reclaim_after',
    label: 'Reclaim after (s)',
    help: 'Idle this long before the GPUs are reclaimed. 0 switches reclaim off (warnings only).',
    seconds: true
  },
  {
    name: 'keep_extension',
    label: 'Keep holds for (s)',
    help: 'Each Keep holds the GPUs this much longer. 0 disables keeping.',
    seconds: true
  },
  {
    name: 'max_keeps',
    label: 'Keeps allowed',
    help: 'Keeps per idle stretch. 0 disables keeping.',
    seconds: false,
    step: 1
  }
];

const ACTIONS: Array<{ value: PolicyFields['action']; help: string }> = [
  { value: 'release', help: 'restart the kernel without GPUs' },
  { value: 'shutdown', help: 'shut the kernel down' },
  { value: 'notify', help: 'take nothing, only report' },
  {
    value: 'park',
    help: 'park the GPU memory in host memory and lend the GPUs until the next cell'
  }
];

export class DLInfraAdminPanel extends Widget {
  constructor(model: AdminModel) {
    super();
    this.model = model;
    this.id = ADMIN_PANEL_ID;
    this.addClass('jp-DLInfra-sidebar');
    this.addClass('jp-DLInfra-admin');
    this.title.icon = policyIcon;
    this.title.caption = 'GPU policy: reclaim and scheduling (admin)';
    this.node.setAttribute('role', 'region');
    this.node.setAttribute('aria-label', 'GPU policy');

    const refresh = h(
      'button',
      {
        type: 'button',
        class: 'jp-DLInfra-refresh jp-DLInfra-policyRefresh jp-Button jp-mod-minimal',
        title: 'Read the policies again',
        'aria-label': 'Read the reclaim and scheduling policies again'
      },
      '↻'
    );
    refresh.addEventListener('click', () => {
      void this.load(true);
      void this._scheduling.load(true);
    });
    this._scheduling = new SchedulingEditor(model);

    // The form: one input per field, named like the policy's fields.
    this._formNode = h('form', { class: 'jp-DLInfra-policyForm', 'aria-label': 'Reclaim policy' });
    this._form = new PolicyForm<PolicyDoc, PolicyView>({
      stem: 'policy',
      form: this._formNode,
      dirtyNode: this.node,
      readOnlyNote: 'Only admins may change the policy.',
      revertTitle: 'Put the saved policy back in the form',
      fieldPattern: /^([A-Za-z_][\w.]*):/,
      showValue: Private.changeValue,
      current: () => this.model.policy,
      read: () => this.model.loadPolicy(),
      write: changes => this.model.savePolicy(changes),
      diff: policy => this._changes_(policy),
      fill: view => this._fill(view),
      target: field => this._target(field),
      loadError: error => `Cannot read the reclaim policy: ${errorMessage(error)}`
    });
    for (const spec of FIELDS) {
      const id = `dlinfra-policy-${spec.name}`;
      const input = fieldControl('input', id, spec.name, {
        type: 'number',
        min: 0,
        max: spec.max,
        step: spec.step ?? 'any',
        required: true,
        class: 'jp-mod-styled jp-DLInfra-policyInput'
      });
      const shown = durationNote();
      const configured = configuredNote();
      this._inputs[spec.name] = input;
      this._durations[spec.name] = shown;
      this._configuredNotes[spec.name] = configured;
      input.addEventListener('input', () => this._showDuration(spec));
      this._formNode.append(
        labelledField({
          name: spec.name,
          id,
          label: spec.label,
          controls: [input, shown],
          help: [spec.help, configured]
        })
      );
    }
    this._action = fieldControl(
      'select',
      'dlinfra-policy-action',
      'action',
      { class: 'jp-mod-styled jp-DLInfra-policyInput' },
      ACTIONS.map(a => h('option', { value: a.value, title: a.help }, a.value))
    );
    this._actionConfigured = configuredNote();
    this._overrides = new OverridesEditor();
    this._formNode.append(
      labelledField({
        name: 'action',
        id: 'dlinfra-policy-action',
        label: 'Action',
        controls: [this._action],
        help: [
          `What a reclaim does: ${ACTIONS.map(a => `${a.value}, ${a.help}`).join('; ')}.`,
          this._actionConfigured
        ]
      }),
      labelledField({
        name: 'overrides',
        id: 'dlinfra-policy-overrides',
        label: 'Overrides',
        controls: [this._overrides.node],
        help: [
          'Per user and per group: exempt from reclaim, or fields that differ from the ' +
            'default (blank: the default). A user gets their groups\' overrides in ' +
            'alphabetical order, then their own.'
        ],
        wide: true
      }),
      ...this._form.tail
    );

    // The dry run.
    this._hours = h('input', {
      type: 'number',
      name: 'simulate_hours',
      id: 'dlinfra-simulate-hours',
      min: 0.1,
      step: 'any',
      value: 24,
      class: 'jp-mod-styled jp-DLInfra-simulateHours'
    });
    this._hours.addEventListener('keydown', event => {
      if (event.key === 'Enter') {
        event.preventDefault();
        void this.simulate();
      }
    });
    this._simulate = h(
      'button',
      {
        type: 'button',
        class: 'jp-DLInfra-simulate jp-Button jp-mod-styled jp-mod-accept',
        title: 'Replay the recorded usage through the policy in the form'
      },
      'Dry run'
    );
    this._simulate.addEventListener('click', () => void this.simulate());
    this._simulateError = h('div', {
      class: 'jp-DLInfra-simulateError',
      role: 'alert',
      hidden: true
    });
    this._result = h('div', { class: 'jp-DLInfra-simulateResult', 'aria-live': 'polite' });

    this._body = h(
      'div',
      { class: 'jp-DLInfra-adminBody' },
      section('policy', 'Idle GPU reclaim', this._form.source, this._form.note, this._formNode),
      section('changes', 'Recent changes', this._form.changes),
      section(
        'simulate',
        'Dry run',
        h(
          'p',
          { class: 'jp-DLInfra-policyHelp' },
          'What the policy in the form (saved or not) would have done over the recorded usage.'
        ),
        h(
          'div',
          { class: 'jp-DLInfra-simulateControls' },
          h('label', { for: 'dlinfra-simulate-hours' }, 'Last'),
          this._hours,
          h('span', {}, 'hours'),
          this._simulate
        ),
        this._simulateError,
        this._result
      ),
      ...this._scheduling.sections
    );
    this.node.append(
      h(
        'header',
        { class: 'jp-DLInfra-header' },
        h(
          'div',
          { class: 'jp-DLInfra-headerRow' },
          h('h2', { class: 'jp-DLInfra-title' }, 'GPU policy'),
          refresh
        )
      ),
      this._form.loadErrorNode,
      this._body
    );
    model.policyChanged.connect(this._onPolicyChanged, this);
  }

  readonly model: AdminModel;

  /** Read the policy (again); `force` replaces unsaved edits too. */
  load(force = false): Promise<void> {
    return this._form.load(force);
  }

  /** Send the fields changed in the form (PUT policy) and show the answer. */
  save(): Promise<void> {
    return this._form.save();
  }

  /** Replay the recorded usage through the policy in the form (POST policy/simulate). */
  async simulate(): Promise<void> {
    const view = this.model.policy;
    this._simulateError.hidden = true;
    this._simulateError.textContent = '';
    const hours = Number(this._hours.value);
    if (!this._hours.value.trim() || !isFinite(hours) || hours <= 0) {
      this._simulateError.hidden = false;
      this._simulateError.textContent = 'hours: give a number of hours above 0, such as 24.';
      return;
    }
    let draft: Partial<PolicyDoc> = {};
    if (view) {
      try {
        draft = this._changes_(view.policy);
      } catch (error) {
        this._simulateError.hidden = false;
        this._simulateError.textContent = errorMessage(error);
        return;
      }
    }
    this._simulate.disabled = true;
    this._result.setAttribute('aria-busy', 'true');
    try {
      const result = await this.model.simulatePolicy(hours, draft);
      this._result.replaceChildren(...this._renderResult(result, Object.keys(draft)));
    } catch (error) {
      this._simulateError.hidden = false;
      this._simulateError.textContent = errorMessage(error);
    } finally {
      this._simulate.disabled = false;
      this._result.removeAttribute('aria-busy');
    }
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this.model.policyChanged.disconnect(this._onPolicyChanged, this);
    this._scheduling.dispose();
    super.dispose();
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    void this.load();
    void this._scheduling.load();
  }

  /* ---------------------------------------------------------------- rendering */

  private _onPolicyChanged(_: AdminModel, view: PolicyView): void {
    this._form.changed(view);
  }

  /** Put a policy's values in the form's fields. */
  private _fill(view: PolicyView): void {
    const policy = view.policy;
    const configured = view.configured;
    for (const spec of FIELDS) {
      const input = this._inputs[spec.name];
      input.value = String(policy[spec.name]);
      input.disabled = !view.editable;
      input.removeAttribute('aria-invalid');
      this._showDuration(spec);
      const note = this._configuredNotes[spec.name];
      note.textContent =
        configured && configured[spec.name] !== policy[spec.name]
          ? ` Configured: ${Private.fieldValue(spec.name, configured[spec.name])}.`
          : '';
    }
    this._action.value = policy.action;
    this._action.disabled = !view.editable;
    this._action.removeAttribute('aria-invalid');
    this._actionConfigured.textContent =
      configured && configured.action !== policy.action ? ` Configured: ${configured.action}.` : '';
    this._overrides.value = { users: policy.users ?? {}, groups: policy.groups ?? {} };
    this._overrides.disabled = !view.editable;
  }

  private _renderResult(result: SimulationResult, draftFields: string[]): Node[] {
    const stat = (label: string, cls: string, value: number, text: string) => [
      h('dt', {}, label),
      h('dd', { class: cls, 'data-value': value }, text)
    ];
    const hours = (v: number) => `${Private.round(v)} GPU-h`;
    const nodes: Node[] = [
      h(
        'p',
        { class: 'jp-DLInfra-simulateSummary' },
        `Last ${Private.round(result.hours)} h `,
        `(${clock(result.since)} – ${clock(result.until)}), `,
        draftFields.length
          ? `with the form's unsaved ${draftFields.join(', ')}:`
          : 'with the saved policy:'
      ),
      h(
        'dl',
        { class: 'jp-DLInfra-simulateStats' },
        stat(
          'Recovered',
          'jp-DLInfra-simRecovered',
          result.recovered_gpu_hours,
          hours(result.recovered_gpu_hours)
        ),
        stat(
          'Of idle time',
          'jp-DLInfra-simRecoveredPct',
          result.recovered_pct,
          `${Private.round(result.recovered_pct)}%`
        ),
        stat('Idle', 'jp-DLInfra-simIdle', result.idle_gpu_hours, hours(result.idle_gpu_hours)),
        stat('Held', 'jp-DLInfra-simHeld', result.held_gpu_hours, hours(result.held_gpu_hours)),
        stat('Warnings', 'jp-DLInfra-simWarnings', result.warnings, String(result.warnings)),
        stat('Reclaims', 'jp-DLInfra-simReclaims', result.reclaims, String(result.reclaims)),
        stat(
          'False reclaims',
          'jp-DLInfra-simFalseReclaims',
          result.false_reclaims,
          String(result.false_reclaims)
        ),
        stat(
          'Kernels seen',
          'jp-DLInfra-simKernelsSeen',
          result.kernels_seen,
          String(result.kernels_seen)
        )
      )
    ];
    if (result.kernels.length === 0) {
      nodes.push(
        h('p', { class: 'jp-DLInfra-empty' }, 'No kernel would have been warned or reclaimed.')
      );
      return nodes;
    }
    nodes.push(
      h(
        'table',
        { class: 'jp-DLInfra-simulateKernels' },
        h('caption', {}, 'Kernels hit'),
        h(
          'thead',
          {},
          h(
            'tr',
            {},
            h('th', { scope: 'col' }, 'Kernel'),
            h('th', { scope: 'col' }, 'User'),
            h('th', { scope: 'col', title: 'GPUs' }, 'GPUs'),
            h('th', { scope: 'col', title: 'Warnings' }, 'Warn'),
            h('th', { scope: 'col', title: 'Reclaims (false reclaims)' }, 'Recl'),
            h('th', { scope: 'col', title: 'Recovered GPU-hours' }, 'GPU-h')
          )
        ),
        h(
          'tbody',
          {},
          result.kernels.map(k =>
            h(
              'tr',
              { class: 'jp-DLInfra-simulateKernel', 'data-kernel-id': k.kernel_id },
              h(
                'td',
                {
                  class: 'jp-DLInfra-simulateKernelName',
                  title: `${k.path ?? ''} ${k.kernel_id}`.trim()
                },
                k.path ? basename(k.path) : k.kernel_id.slice(0, 8)
              ),
              h('td', {}, k.user),
              h('td', {}, String(k.gpus)),
              h('td', {}, String(k.warnings)),
              h(
                'td',
                {},
                k.false_reclaims ? `${k.reclaims} (${k.false_reclaims})` : String(k.reclaims)
              ),
              h('td', {}, String(Private.round(k.recovered_gpu_hours)))
            )
          )
        )
      )
    );
    return nodes;
  }

  private _showDuration(spec: IFieldSpec): void {
    const input = this._inputs[spec.name];
    const value = Number(input.value);
    const text = !input.value.trim() || !isFinite(value) ? '' : Private.fieldValue(spec.name, value);
    this._durations[spec.name].textContent = spec.seconds || value === 0 ? text : '';
  }

  /** The control a field (path) names, to mark invalid. */
  private _target(field: string): HTMLElement | undefined {
    const head = field.split('.')[0];
    return head === 'users' || head === 'groups' || head === 'overrides'
      ? this._overrides.target(field)
      : head === 'action'
        ? this._action
        : this._inputs[head as NumberField];
  }

  /** The fields of the form that differ from `policy`; throws a FormError for bad values. */
  private _changes_(policy: PolicyDoc): Partial<PolicyDoc> {
    const changes: Partial<PolicyDoc> = {};
    for (const spec of FIELDS) {
      const value = numberValue(this._inputs[spec.name], spec.name);
      if (value !== policy[spec.name]) {
        changes[spec.name] = value;
      }
    }
    if (this._action.value !== policy.action) {
      changes.action = this._action.value as PolicyFields['action'];
    }
    const doc = this._overrides.value;
    for (const key of ['users', 'groups'] as const) {
      if (canonical(doc[key]) !== canonical(policy[key] ?? {})) {
        changes[key] = doc[key];
      }
    }
    return changes;
  }

  private _scheduling: SchedulingEditor;
  private _body: HTMLElement;
  private _form: PolicyForm<PolicyDoc, PolicyView>;
  private _formNode: HTMLFormElement;
  private _inputs = {} as Record<NumberField, HTMLInputElement>;
  private _durations = {} as Record<NumberField, HTMLElement>;
  private _configuredNotes = {} as Record<NumberField, HTMLElement>;
  private _action: HTMLSelectElement;
  private _actionConfigured: HTMLElement;
  private _overrides: OverridesEditor;
  private _hours: HTMLInputElement;
  private _simulate: HTMLButtonElement;
  private _simulateError: HTMLElement;
  private _result: HTMLElement;
}

namespace Private {
  const SECONDS = new Set(['idle_after', 'warn_after', 'reclaim_after', 'keep_extension']);

  /** A field's value for people: durations for times, "off" for 0 where 0 switches off. */
  export function fieldValue(field: string, value: unknown): string {
    if (typeof value !== 'number') {
      return String(value);
    }
    if (SECONDS.has(field)) {
      return value === 0 ? 'off' : `${duration(value)}`;
    }
    if (field === 'idle_util_percent') {
      return value === 0 ? 'off' : `${value}%`;
    }
    if (field === 'max_keeps') {
      return value === 0 ? 'no keeps' : String(value);
    }
    return String(value);
  }

  /** A changed value as recorded: numbers of seconds with their duration, objects as JSON. */
  export function changeValue(field: string, value: unknown): string {
    if (value === null || value === undefined) {
      return '–';
    }
    const last = field.split('.').pop() ?? field;
    if (typeof value === 'number' && SECONDS.has(last) && value > 0) {
      return `${value} (${duration(value)})`;
    }
    return typeof value === 'string' ? value : JSON.stringify(value);
  }

  export function round(value: number): number {
    return Math.round(value * 100) / 100;
  }
}
