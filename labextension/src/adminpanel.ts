/**
 * The admin panel `dlinfra-admin`: the idle-reclaim policy as a form (PUT policy), its source
 * and recent changes, a dry run of the policy in the form over the recorded usage
 * (POST policy/simulate), and the scheduling policy (PUT scheduling, see `adminscheduling`).
 * Only added for admins (GET me); the server enforces it either way.
 */
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import {
  DLInfraApiError,
  PolicyChange,
  PolicyDoc,
  PolicyFields,
  PolicyView,
  SimulationResult
} from './api';
import { SchedulingEditor } from './adminscheduling';
import { basename, clock, duration, h } from './dom';
import { policyIcon } from './icons';
import { DLInfraModel } from './model';

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
  { value: 'notify', help: 'take nothing, only report' }
];

/** A form value that cannot be sent; `field` names it like the server's messages do. */
class FormError extends Error {
  constructor(
    readonly field: string,
    message: string
  ) {
    super(`${field}: ${message}`);
  }
}

export class DLInfraAdminPanel extends Widget {
  constructor(model: DLInfraModel) {
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
    this._loadError = h('div', {
      class: 'jp-DLInfra-error jp-DLInfra-policyLoadError',
      role: 'alert',
      hidden: true
    });
    this._source = h('p', { class: 'jp-DLInfra-policySource' }, 'Loading…');

    // The form: one input per field, named like the policy's fields.
    this._form = h('form', { class: 'jp-DLInfra-policyForm', 'aria-label': 'Reclaim policy' });
    for (const spec of FIELDS) {
      const id = `dlinfra-policy-${spec.name}`;
      const input = h('input', {
        type: 'number',
        name: spec.name,
        id,
        min: 0,
        max: spec.max,
        step: spec.step ?? 'any',
        required: true,
        class: 'jp-mod-styled jp-DLInfra-policyInput',
        'aria-describedby': `${id}-help`
      });
      const shown = h('span', { class: 'jp-DLInfra-policyDuration', 'aria-hidden': 'true' });
      const configured = h('span', { class: 'jp-DLInfra-policyConfigured' });
      this._inputs[spec.name] = input;
      this._durations[spec.name] = shown;
      this._configuredNotes[spec.name] = configured;
      input.addEventListener('input', () => this._showDuration(spec));
      this._form.append(
        h(
          'div',
          { class: 'jp-DLInfra-policyField', 'data-field': spec.name },
          h('label', { for: id, class: 'jp-DLInfra-policyLabel' }, spec.label),
          h('div', { class: 'jp-DLInfra-policyControl' }, input, shown),
          h('div', { id: `${id}-help`, class: 'jp-DLInfra-policyHelp' }, spec.help, configured)
        )
      );
    }
    this._action = h(
      'select',
      {
        name: 'action',
        id: 'dlinfra-policy-action',
        class: 'jp-mod-styled jp-DLInfra-policyInput',
        'aria-describedby': 'dlinfra-policy-action-help'
      },
      ACTIONS.map(a => h('option', { value: a.value, title: a.help }, a.value))
    );
    this._actionConfigured = h('span', { class: 'jp-DLInfra-policyConfigured' });
    this._overrides = h('textarea', {
      name: 'overrides',
      id: 'dlinfra-policy-overrides',
      class: 'jp-mod-styled jp-DLInfra-policyOverrides',
      rows: 6,
      spellcheck: 'false',
      'aria-describedby': 'dlinfra-policy-overrides-help'
    });
    this._error = h('div', { class: 'jp-DLInfra-policyError', role: 'alert', hidden: true });
    this._status = h('span', { class: 'jp-DLInfra-policyStatus', role: 'status' });
    this._save = h(
      'button',
      { type: 'submit', class: 'jp-DLInfra-policySave jp-Button jp-mod-styled jp-mod-accept' },
      'Save'
    );
    this._revert = h(
      'button',
      {
        type: 'button',
        class: 'jp-DLInfra-policyRevert jp-Button jp-mod-styled jp-mod-reject',
        title: 'Put the saved policy back in the form'
      },
      'Revert'
    );
    this._form.append(
      h(
        'div',
        { class: 'jp-DLInfra-policyField', 'data-field': 'action' },
        h('label', { for: 'dlinfra-policy-action', class: 'jp-DLInfra-policyLabel' }, 'Action'),
        h('div', { class: 'jp-DLInfra-policyControl' }, this._action),
        h(
          'div',
          { id: 'dlinfra-policy-action-help', class: 'jp-DLInfra-policyHelp' },
          `What a reclaim does: ${ACTIONS.map(a => `${a.value}, ${a.help}`).join('; ')}.`,
          this._actionConfigured
        )
      ),
      h(
        'div',
        { class: 'jp-DLInfra-policyField jp-DLInfra-policyField-wide', 'data-field': 'overrides' },
        h(
          'label',
          { for: 'dlinfra-policy-overrides', class: 'jp-DLInfra-policyLabel' },
          'Overrides (JSON)'
        ),
        this._overrides,
        h(
          'div',
          { id: 'dlinfra-policy-overrides-help', class: 'jp-DLInfra-policyHelp' },
          'Per user and per group: ',
          h(
            'code',
            {},
            '{"users": {"alice": {"reclaim_after": 7200}}, "groups": {"staff": {"exempt": true}}}'
          ),
          '.'
        )
      ),
      this._error,
      h('div', { class: 'jp-DLInfra-policyButtons' }, this._save, this._revert, this._status)
    );
    this._form.addEventListener('submit', event => {
      event.preventDefault();
      void this.save();
    });
    this._form.addEventListener('input', () => this._setDirty(true));
    this._revert.addEventListener('click', () => {
      if (this.model.policy) {
        this._fill(this.model.policy);
      }
    });

    this._changes = h('ul', { class: 'jp-DLInfra-list jp-DLInfra-policyChanges' });

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
      this._section(
        'policy',
        'Idle GPU reclaim',
        this._source,
        h(
          'p',
          { class: 'jp-DLInfra-empty jp-DLInfra-policyNote', hidden: true },
          'Only admins may change the policy.'
        ),
        this._form
      ),
      this._section('changes', 'Recent changes', this._changes),
      this._section(
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
      this._loadError,
      this._body
    );
    model.policyChanged.connect(this._onPolicyChanged, this);
  }

  readonly model: DLInfraModel;

  /** Read the policy (again); `force` replaces unsaved edits too. */
  async load(force = false): Promise<void> {
    try {
      const view = await this.model.loadPolicy();
      this._loadError.hidden = true;
      if (force || !this._dirty) {
        this._fill(view);
      }
    } catch (error) {
      this._loadError.hidden = false;
      this._loadError.textContent = `Cannot read the reclaim policy: ${Private.message(error)}`;
      if (!this.model.policy) {
        this._source.textContent = '';
      }
    }
  }

  /** Send the fields changed in the form (PUT policy) and show the answer. */
  async save(): Promise<void> {
    const view = this.model.policy;
    if (!view || this._busy) {
      return;
    }
    this._showError(null);
    let changes: Partial<PolicyDoc>;
    try {
      changes = this._changes_(view.policy);
    } catch (error) {
      this._showError(error);
      return;
    }
    if (Object.keys(changes).length === 0) {
      this._status.textContent = 'Nothing to save: the form matches the policy.';
      this._setDirty(false);
      return;
    }
    this._busy = true;
    this._save.disabled = true;
    this._status.textContent = 'Saving…';
    try {
      const answer = await this.model.savePolicy(changes);
      this._fill(answer);
      this._status.textContent = `Saved ${Object.keys(changes).join(', ')}.`;
    } catch (error) {
      this._status.textContent = '';
      this._showError(error);
    } finally {
      this._busy = false;
      this._save.disabled = !(this.model.policy?.editable ?? false);
    }
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
        this._simulateError.textContent = Private.message(error);
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
      this._simulateError.textContent = Private.message(error);
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

  private _section(key: string, heading: string, ...children: Node[]): HTMLElement {
    const headingId = `dlinfra-admin-${key}-heading`;
    return h(
      'section',
      { class: `jp-DLInfra-section jp-DLInfra-section-${key}`, 'aria-labelledby': headingId },
      h('h3', { id: headingId, class: 'jp-DLInfra-sectionHeading' }, heading),
      ...children
    );
  }

  private _onPolicyChanged(_: DLInfraModel, view: PolicyView): void {
    if (!this._dirty && !this._busy) {
      this._fill(view);
    }
  }

  /** Show a policy in the form, with its source and its recent changes. */
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
    this._overrides.value = JSON.stringify(
      { users: policy.users ?? {}, groups: policy.groups ?? {} },
      null,
      2
    );
    this._overrides.disabled = !view.editable;
    this._overrides.removeAttribute('aria-invalid');
    this._save.disabled = !view.editable;
    this._revert.disabled = !view.editable;
    this._node('.jp-DLInfra-policyNote').hidden = view.editable;
    this._showError(null);
    this._setDirty(false);

    this._source.replaceChildren(
      ...(view.source === 'api'
        ? [
            'Set through the API',
            view.updated_by ? ` by ${view.updated_by}` : '',
            view.updated_at
              ? h(
                  'time',
                  { datetime: view.updated_at, title: view.updated_at },
                  ` at ${clock(view.updated_at)}`
                )
              : '',
            '.'
          ]
        : ['From the server configuration (not changed through the API).'])
    );
    this._source.dataset.source = view.source;

    const changes = view.changes ?? [];
    this._changes.replaceChildren(
      ...(changes.length
        ? changes.map(c => this._change(c))
        : [h('li', { class: 'jp-DLInfra-empty' }, 'No change through the API yet.')])
    );
  }

  private _change(c: PolicyChange): HTMLElement {
    const old = Private.changeValue(c.field, c.old);
    const now = Private.changeValue(c.field, c.new);
    return h(
      'li',
      { class: 'jp-DLInfra-policyChange', 'data-seq': c.seq, 'data-field': c.field },
      h(
        'div',
        { class: 'jp-DLInfra-policyChangeHeader' },
        h('span', { class: 'jp-DLInfra-policyChangeWho' }, c.who),
        h('time', { class: 'jp-DLInfra-policyChangeAt', datetime: c.at, title: c.at }, clock(c.at))
      ),
      h(
        'div',
        { class: 'jp-DLInfra-policyChangeWhat' },
        h('code', { class: 'jp-DLInfra-policyChangeField' }, c.field),
        ' ',
        h('span', { class: 'jp-DLInfra-policyChangeOld', title: old }, old),
        ' → ',
        h('span', { class: 'jp-DLInfra-policyChangeNew', title: now }, now)
      )
    );
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

  /** Show an error of the form (or clear it with null), marking the field it names. */
  private _showError(error: unknown): void {
    for (const el of this._form.querySelectorAll('[aria-invalid]')) {
      el.removeAttribute('aria-invalid');
    }
    if (error === null) {
      this._error.hidden = true;
      this._error.textContent = '';
      return;
    }
    const message = Private.message(error);
    this._error.hidden = false;
    this._error.textContent = message;
    const field =
      error instanceof FormError ? error.field : /^([A-Za-z_][\w.]*):/.exec(message)?.[1] ?? '';
    const head = field.split('.')[0];
    const target =
      head === 'users' || head === 'groups' || head === 'overrides'
        ? this._overrides
        : head === 'action'
          ? this._action
          : this._inputs[head as NumberField];
    target?.setAttribute('aria-invalid', 'true');
  }

  private _setDirty(dirty: boolean): void {
    this._dirty = dirty;
    this.toggleClass('jp-mod-dirty', dirty);
    if (dirty) {
      this._status.textContent = 'Unsaved changes.';
    }
  }

  /** The fields of the form that differ from `policy`; throws a FormError for bad values. */
  private _changes_(policy: PolicyDoc): Partial<PolicyDoc> {
    const changes: Partial<PolicyDoc> = {};
    for (const spec of FIELDS) {
      const raw = this._inputs[spec.name].value.trim();
      const value = Number(raw);
      if (!raw || !isFinite(value)) {
        throw new FormError(spec.name, 'must be a number');
      }
      if (value !== policy[spec.name]) {
        changes[spec.name] = value;
      }
    }
    if (this._action.value !== policy.action) {
      changes.action = this._action.value as PolicyFields['action'];
    }
    const text = this._overrides.value.trim();
    let overrides: unknown = {};
    if (text) {
      try {
        overrides = JSON.parse(text);
      } catch (error) {
        throw new FormError('overrides', `not valid JSON: ${(error as Error).message}`);
      }
    }
    if (!overrides || typeof overrides !== 'object' || Array.isArray(overrides)) {
      throw new FormError('overrides', 'must be a JSON object such as {"users": {}, "groups": {}}');
    }
    const doc = overrides as Record<string, unknown>;
    const unknown = Object.keys(doc).filter(k => k !== 'users' && k !== 'groups');
    if (unknown.length) {
      throw new FormError('overrides', `holds users and groups only, not ${unknown.join(', ')}`);
    }
    for (const key of ['users', 'groups'] as const) {
      const value = doc[key] ?? {};
      if (!value || typeof value !== 'object' || Array.isArray(value)) {
        throw new FormError(key, 'must be an object of names to overrides');
      }
      if (Private.canonical(value) !== Private.canonical(policy[key] ?? {})) {
        changes[key] = value as PolicyDoc[typeof key];
      }
    }
    return changes;
  }

  private _node(selector: string): HTMLElement {
    return this.node.querySelector<HTMLElement>(selector)!;
  }

  private _scheduling: SchedulingEditor;
  private _body: HTMLElement;
  private _loadError: HTMLElement;
  private _source: HTMLElement;
  private _form: HTMLFormElement;
  private _inputs = {} as Record<NumberField, HTMLInputElement>;
  private _durations = {} as Record<NumberField, HTMLElement>;
  private _configuredNotes = {} as Record<NumberField, HTMLElement>;
  private _action: HTMLSelectElement;
  private _actionConfigured: HTMLElement;
  private _overrides: HTMLTextAreaElement;
  private _error: HTMLElement;
  private _status: HTMLElement;
  private _save: HTMLButtonElement;
  private _revert: HTMLButtonElement;
  private _changes: HTMLElement;
  private _hours: HTMLInputElement;
  private _simulate: HTMLButtonElement;
  private _simulateError: HTMLElement;
  private _result: HTMLElement;
  private _dirty = false;
  private _busy = false;
}

namespace Private {
  export function message(error: unknown): string {
    if (error instanceof DLInfraApiError || error instanceof Error) {
      return error.message;
    }
    return String(error);
  }

  /** JSON with sorted keys, to compare documents whatever their key order. */
  export function canonical(value: unknown): string {
    return JSON.stringify(value, (_key, v: unknown) =>
      v && typeof v === 'object' && !Array.isArray(v)
        ? Object.fromEntries(
            Object.entries(v as Record<string, unknown>).sort(([a], [b]) =>
              a < b ? -1 : a > b ? 1 : 0
            )
          )
        : v
    );
  }

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
