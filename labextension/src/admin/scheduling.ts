/**
 * The "Scheduling" part of the admin panel: the scheduling policy as a form (priority classes,
 * the kernel and job classes, fair share, shares, quotas, borrowing, preemption, reservations,
 * starvation limit) saved with PUT scheduling, its source, and its recent changes. It renders
 * the model's `scheduling` and hands Save back to the model; the server validates and its
 * message (which names the field first) is shown next to the form.
 */
import {
  DLInfraApiError,
  PriorityClassSpec,
  SchedulingPolicyDoc,
  SchedulingView
} from '../api';
import { Attrs, duration, h } from '../dom';
import { AdminModel } from '../model/admin';
import {
  canonical,
  configuredNote,
  durationNote,
  errorMessage,
  fieldControl,
  FormError,
  labelledField,
  numberValue,
  PolicyForm,
  section
} from './form';
import { MapEditor } from './mapEditor';

type NumberField = 'half_life' | 'default_share' | 'reservations' | 'starvation_limit';
type BoolField = 'fair_share' | 'borrowing' | 'preemption';
type MapField = 'user_shares' | 'group_shares' | 'user_quotas' | 'group_quotas';
type ClassField = 'kernel_class' | 'job_class';

interface INumberSpec {
  name: NumberField;
  label: string;
  help: string;
  /** Whether the value is a number of seconds (shown as a duration too). */
  seconds: boolean;
  step?: number;
}

const NUMBERS: INumberSpec[] = [
  {
    name: 'half_life',
    label: 'Half-life (s)',
    help: 'Past GPU use counts half as much after this long. More than 0.',
    seconds: true
  },
  {
    name: 'default_share',
    label: 'Default share',
    help: 'The share of a user or group not listed below. More than 0.',
    seconds: false
  },
  {
    name: 'reservations',
    label: 'Reservations',
    help:
      'Blocked requests that keep the free GPUs they could use in each pass, so that large ' +
      'requests are not starved by small ones. 0: pure backfill.',
    seconds: false,
    step: 1
  },
  {
    name: 'starvation_limit',
    label: 'Starvation limit (s)',
    help: 'A request waiting this long goes ahead of fair-share order in its class. 0: never.',
    seconds: true
  }
];

const BOOLS: Array<{ name: BoolField; label: string; help: string }> = [
  {
    name: 'fair_share',
    label: 'Fair share',
    help:
      'Within a class, serve users (and groups with a share) with less recent GPU use per ' +
      'share first. Off: first come, first served.'
  },
  {
    name: 'borrowing',
    label: 'Borrowing',
    help:
      'Jobs of a preemptible class may go beyond their quota on GPUs nobody within quota ' +
      'wants; borrowed GPUs are the first taken back.'
  },
  {
    name: 'preemption',
    label: 'Preemption',
    help:
      'Stop and requeue preemptible jobs of a lower class, or holding borrowed GPUs, for a ' +
      'waiting request. Off: nothing is ever preempted.'
  }
];

const MAPS: Array<{ name: MapField; label: string; help: string }> = [
  {
    name: 'user_shares',
    label: 'User shares',
    help: 'Fair-share weight per user: name → number above 0.'
  },
  {
    name: 'group_shares',
    label: 'Group shares',
    help:
      'Fair-share weight per group (an account): name → number above 0. A user is in the ' +
      'account of the first of their groups, alphabetically, that has a share.'
  },
  {
    name: 'user_quotas',
    label: 'User quotas',
    help: 'GPUs a user may hold at once: name → whole number.'
  },
  {
    name: 'group_quotas',
    label: 'Group quotas',
    help: 'GPUs the members of a group may hold together: name → whole number.'
  }
];

const CLASS_FIELDS: Array<{ name: ClassField; label: string; help: string }> = [
  {
    name: 'kernel_class',
    label: 'Kernel class',
    help: "The class of a kernel's %gpu request that names none. Must not be preemptible."
  },
  {
    name: 'job_class',
    label: 'Job class',
    help: 'The class of a batch job submitted without one.'
  }
];

/** One row of the classes table. */
interface IClassRow {
  row: HTMLTableRowElement;
  name: HTMLInputElement;
  priority: HTMLInputElement;
  preemptible: HTMLInputElement;
  /** The name it had before the last edit. */
  prev: string;
}

/**
 * The scheduling sections of the admin panel: `sections` are added to the panel's body, and
 * `load` is called when the panel is shown.
 */
export class SchedulingEditor {
  constructor(model: AdminModel) {
    this.model = model;

    // No browser validation: the server judges the values and names the field it refuses.
    this._formNode = h('form', {
      class: 'jp-DLInfra-schedForm',
      'aria-label': 'Scheduling policy',
      novalidate: true
    });
    this._form = new PolicyForm<SchedulingPolicyDoc, SchedulingView>({
      stem: 'sched',
      form: this._formNode,
      dirtyNode: this._formNode,
      readOnlyNote: 'Only admins may change the scheduling policy.',
      revertTitle: 'Put the saved scheduling policy back in the form',
      fieldPattern: /^([A-Za-z_][\w.-]*):/,
      showValue: Private.changeValue,
      current: () => this.model.scheduling,
      read: () => this.model.loadScheduling(),
      write: changes => this.model.saveScheduling(changes),
      diff: policy => this._changes_(policy),
      fill: view => this._fill(view),
      target: field => this._target(field),
      loadError: error =>
        error instanceof DLInfraApiError && error.status === 404 && error.reason === 'not_found'
          ? 'This server has no scheduling policy (priority classes, fair share, quotas).'
          : `Cannot read the scheduling policy: ${errorMessage(error)}`,
      unread: () => {
        this._formNode.hidden = true;
      }
    });

    // Priority classes: one row each.
    this._classBody = h('tbody', {});
    this._addClass = h(
      'button',
      {
        type: 'button',
        class: 'jp-DLInfra-schedClassAdd jp-Button jp-mod-styled jp-mod-minimal',
        title: 'Add a priority class'
      },
      '+ Add class'
    );
    this._addClass.addEventListener('click', () => {
      const row = this._appendClass('', { priority: 0, preemptible: true });
      this._classesChanged();
      this._form.setDirty(true);
      row.name.focus();
    });
    this._formNode.append(
      h(
        'div',
        { class: 'jp-DLInfra-policyField jp-DLInfra-policyField-wide', 'data-field': 'classes' },
        h(
          'span',
          { class: 'jp-DLInfra-policyLabel', id: 'dlinfra-sched-classes-label' },
          'Classes'
        ),
        h(
          'table',
          {
            class: 'jp-DLInfra-schedClasses',
            'aria-labelledby': 'dlinfra-sched-classes-label',
            'aria-describedby': 'dlinfra-sched-classes-help'
          },
          h(
            'thead',
            {},
            h(
              'tr',
              {},
              h('th', { scope: 'col' }, 'Name'),
              h('th', { scope: 'col' }, 'Priority'),
              h('th', { scope: 'col', title: 'Preemptible' }, 'Preempt.'),
              h('th', { scope: 'col' }, h('span', { class: 'jp-DLInfra-visuallyHidden' }, 'Remove'))
            )
          ),
          this._classBody
        ),
        h(
          'div',
          { id: 'dlinfra-sched-classes-help', class: 'jp-DLInfra-policyHelp' },
          this._addClass,
          ' Higher priority is served first, whatever the fair share. The jobs of a ' +
            'preemptible class may be stopped and queued again for a higher class; ' +
            'kernels never are.'
        )
      )
    );

    for (const spec of CLASS_FIELDS) {
      const select = this._field(spec, 'select', {
        class: 'jp-mod-styled jp-DLInfra-policyInput jp-DLInfra-schedInput'
      });
      select.addEventListener('change', () => (select.title = select.value));
      this._classSelects[spec.name] = select;
    }
    for (const spec of BOOLS) {
      this._bools[spec.name] = this._field(spec, 'input', {
        type: 'checkbox',
        class: 'jp-DLInfra-schedInput jp-DLInfra-schedCheck'
      });
    }
    for (const spec of NUMBERS) {
      const shown = durationNote();
      const input = this._field(
        spec,
        'input',
        {
          type: 'number',
          min: 0,
          step: spec.step ?? 'any',
          required: true,
          class: 'jp-mod-styled jp-DLInfra-policyInput jp-DLInfra-schedInput'
        },
        shown
      );
      this._numbers[spec.name] = input;
      this._durations[spec.name] = shown;
      input.addEventListener('input', () => this._showDuration(spec));
    }
    this._defaultQuota = this._field(
      {
        name: 'default_user_quota',
        label: 'Default user quota',
        help: 'GPUs one user may hold at once unless listed in user quotas. Empty: no limit.'
      },
      'input',
      {
        type: 'number',
        min: 0,
        step: 1,
        placeholder: 'no limit',
        class: 'jp-mod-styled jp-DLInfra-policyInput jp-DLInfra-schedInput'
      }
    );
    for (const spec of MAPS) {
      const id = `dlinfra-sched-${spec.name}`;
      const editor = new MapEditor({
        name: spec.name,
        id,
        key: spec.name.startsWith('user') ? 'user' : 'group',
        unit: spec.name.endsWith('quotas') ? 'GPUs' : 'share',
        whole: spec.name.endsWith('quotas')
      });
      editor.node.setAttribute('aria-describedby', `${id}-help`);
      this._maps[spec.name] = editor;
      this._formNode.append(
        labelledField({
          name: spec.name,
          id,
          label: spec.label,
          controls: [editor.node],
          help: [spec.help],
          wide: true,
          className: 'jp-DLInfra-schedField'
        })
      );
    }
    this._formNode.append(...this._form.tail);
    this._formNode.addEventListener('change', () => this._form.setDirty(true));
    this._classBody.addEventListener('click', event => {
      const remove = (event.target as HTMLElement).closest<HTMLButtonElement>(
        '.jp-DLInfra-schedClassRemove'
      );
      if (!remove || remove.disabled) {
        return;
      }
      const index = this._classRows.findIndex(r => r.row.contains(remove));
      if (index >= 0) {
        this._classRows[index].row.remove();
        this._classRows.splice(index, 1);
        this._classesChanged();
        this._form.setDirty(true);
      }
    });
    this._classBody.addEventListener('input', event => {
      const target = event.target as HTMLElement;
      const row = this._classRows.find(r => r.name === target);
      if (!row) {
        return;
      }
      // A renamed class stays the kernel's or the jobs' class when it was.
      const renamed = row.name.value.trim();
      if (renamed) {
        for (const spec of CLASS_FIELDS) {
          const select = this._classSelects[spec.name];
          if (row.prev && select.value === row.prev) {
            select.append(h('option', { value: renamed }, renamed));
            select.value = renamed;
          }
        }
        row.prev = renamed;
      }
      this._classesChanged();
    });

    this.sections = [
      section(
        'scheduling',
        'Scheduling',
        this._form.loadErrorNode,
        this._form.source,
        this._form.note,
        this._formNode
      ),
      section('schedulingChanges', 'Scheduling changes', this._form.changes)
    ];
    model.schedulingChanged.connect(this._onSchedulingChanged, this);
  }

  readonly model: AdminModel;
  /** The sections to show: the form, then the recent changes. */
  readonly sections: HTMLElement[];

  /** Read the policy (again); `force` replaces unsaved edits too. */
  load(force = false): Promise<void> {
    return this._form.load(force);
  }

  /** Send the fields changed in the form (PUT scheduling) and show the answer. */
  save(): Promise<void> {
    return this._form.save();
  }

  dispose(): void {
    this.model.schedulingChanged.disconnect(this._onSchedulingChanged, this);
  }

  /* ---------------------------------------------------------------- rendering */

  /**
   * A labelled field for `spec` with a control made of `tag` and `attrs` (and `extra` beside
   * it), added to the form; its help notes the configured value when it differs.
   */
  private _field<K extends 'input' | 'select'>(
    spec: { name: string; label: string; help: string },
    tag: K,
    attrs: Attrs,
    extra: HTMLElement | null = null
  ): HTMLElementTagNameMap[K] {
    const id = `dlinfra-sched-${spec.name}`;
    const control = fieldControl(tag, id, spec.name, attrs);
    const configured = configuredNote();
    this._configuredNotes[spec.name] = configured;
    this._formNode.append(
      labelledField({
        name: spec.name,
        id,
        label: spec.label,
        controls: [control, extra],
        help: [spec.help, configured],
        className: 'jp-DLInfra-schedField'
      })
    );
    return control;
  }

  private _onSchedulingChanged(_: AdminModel, view: SchedulingView): void {
    this._form.changed(view);
  }

  /** Put a policy's values in the form's fields. */
  private _fill(view: SchedulingView): void {
    const policy = view.policy;
    const configured = view.configured;
    const editable = view.editable;
    this._formNode.hidden = false;

    this._classBody.replaceChildren();
    this._classRows = [];
    const classes = Object.entries(policy.classes ?? {}).sort(
      ([a, x], [b, y]) => y.priority - x.priority || (a < b ? -1 : a > b ? 1 : 0)
    );
    for (const [name, spec] of classes) {
      this._appendClass(name, spec);
    }
    this._addClass.disabled = !editable;
    this._classesChanged({ kernel_class: policy.kernel_class, job_class: policy.job_class });
    for (const spec of CLASS_FIELDS) {
      const select = this._classSelects[spec.name];
      select.disabled = !editable;
      this._configured(spec.name, configured?.[spec.name], policy[spec.name]);
    }
    for (const spec of BOOLS) {
      const input = this._bools[spec.name];
      input.checked = !!policy[spec.name];
      input.disabled = !editable;
      this._configured(spec.name, configured?.[spec.name], policy[spec.name]);
    }
    for (const spec of NUMBERS) {
      const input = this._numbers[spec.name];
      input.value = String(policy[spec.name]);
      input.disabled = !editable;
      this._showDuration(spec);
      this._configured(spec.name, configured?.[spec.name], policy[spec.name]);
    }
    this._defaultQuota.value =
      policy.default_user_quota === null ? '' : String(policy.default_user_quota);
    this._defaultQuota.disabled = !editable;
    this._configured(
      'default_user_quota',
      configured?.default_user_quota,
      policy.default_user_quota
    );
    for (const spec of MAPS) {
      const editor = this._maps[spec.name];
      editor.value = policy[spec.name] ?? {};
      editor.disabled = !editable;
    }
  }

  /** Add a row to the classes table. */
  private _appendClass(name: string, spec: PriorityClassSpec): IClassRow {
    const n = ++this._classSeq;
    const editable = this.model.scheduling?.editable ?? true;
    const nameInput = h('input', {
      type: 'text',
      name: 'class_name',
      value: name,
      required: true,
      spellcheck: 'false',
      placeholder: 'name',
      class: 'jp-mod-styled jp-DLInfra-schedClassName',
      'aria-label': `Name of class ${n}`
    });
    const priority = h('input', {
      type: 'number',
      name: 'class_priority',
      value: spec.priority,
      step: 1,
      required: true,
      class: 'jp-mod-styled jp-DLInfra-schedClassPriority',
      'aria-label': `Priority of class ${name || n}`
    });
    const preemptible = h('input', {
      type: 'checkbox',
      name: 'class_preemptible',
      class: 'jp-DLInfra-schedClassPreemptible',
      'aria-label': `Class ${name || n} is preemptible`
    });
    preemptible.checked = !!spec.preemptible;
    const remove = h(
      'button',
      {
        type: 'button',
        class: 'jp-DLInfra-schedClassRemove jp-Button jp-mod-minimal',
        title: 'Remove this class',
        'aria-label': `Remove class ${name || n}`
      },
      '×'
    );
    for (const el of [nameInput, priority, preemptible, remove]) {
      el.disabled = !editable;
    }
    const row = h(
      'tr',
      { class: 'jp-DLInfra-schedClass', 'data-class': name || null },
      h('td', {}, nameInput),
      h('td', {}, priority),
      h('td', { class: 'jp-DLInfra-schedClassCheck' }, preemptible),
      h('td', {}, remove)
    );
    this._classBody.append(row);
    const entry: IClassRow = { row, name: nameInput, priority, preemptible, prev: name };
    this._classRows.push(entry);
    return entry;
  }

  /**
   * Fill the kernel and job class selects with the names in the table, keeping their choice
   * (or choosing `selected`'s).
   */
  private _classesChanged(selected?: Record<ClassField, string>): void {
    const names = [...new Set(this._classRows.map(r => r.name.value.trim()).filter(Boolean))];
    for (const spec of CLASS_FIELDS) {
      const select = this._classSelects[spec.name];
      const current = selected ? selected[spec.name] : select.value;
      const options = names.map(n => h('option', { value: n }, n));
      if (current && !names.includes(current)) {
        // Keep a name the table lost: the server says what is wrong with it.
        options.push(h('option', { value: current }, `${current} (not a class)`));
      }
      select.replaceChildren(...options);
      select.value = current;
      select.title = current;
    }
    // a name wider than its field shows whole in a tooltip
    for (const row of this._classRows) {
      row.name.title = row.name.value.trim();
    }
  }

  private _configured(field: string, configured: unknown, now: unknown): void {
    const note = this._configuredNotes[field];
    if (!note) {
      return;
    }
    note.textContent =
      configured !== undefined && canonical(configured) !== canonical(now)
        ? ` Configured: ${Private.changeValue(field, configured)}.`
        : '';
  }

  private _showDuration(spec: INumberSpec): void {
    const input = this._numbers[spec.name];
    const value = Number(input.value);
    this._durations[spec.name].textContent =
      spec.seconds && input.value.trim() && isFinite(value)
        ? spec.name === 'starvation_limit' && value === 0
          ? 'never'
          : duration(value)
        : '';
  }

  /** The control a field path names (`classes.batch.priority`, `user_quotas.ann`, ...). */
  private _target(field: string): HTMLElement | null {
    const [head, ...rest] = field.split('.');
    if (head === 'classes') {
      // Class names may hold dots: the last part names the class's field when it is one.
      const last = rest[rest.length - 1];
      const part = last === 'priority' || last === 'preemptible' ? last : null;
      const name = (part ? rest.slice(0, -1) : rest).join('.');
      const row = this._classRows.find(r => r.name.value.trim() === name);
      if (!row) {
        return this._classBody.closest('table');
      }
      return part === 'priority'
        ? row.priority
        : part === 'preemptible'
          ? row.preemptible
          : row.name;
    }
    if (head === 'kernel_class' || head === 'job_class') {
      return this._classSelects[head];
    }
    if (head === 'default_user_quota') {
      return this._defaultQuota;
    }
    if (head in this._maps) {
      const editor = this._maps[head as MapField];
      return rest.length ? editor.target(rest.join('.')) : editor.node;
    }
    if (head in this._bools) {
      return this._bools[head as BoolField];
    }
    if (head in this._numbers) {
      return this._numbers[head as NumberField];
    }
    return null;
  }

  /**
   * The fields of the form that differ from `policy`; throws a FormError for values that cannot
   * be sent (the server judges the rest, and names the field it refuses).
   */
  private _changes_(policy: SchedulingPolicyDoc): Partial<SchedulingPolicyDoc> {
    const changes: Partial<SchedulingPolicyDoc> = {};

    const classes: Record<string, PriorityClassSpec> = {};
    for (const row of this._classRows) {
      const name = row.name.value.trim();
      if (!name) {
        throw new FormError('classes', 'every class needs a name');
      }
      if (name in classes) {
        throw new FormError('classes', `two classes are named ${name}`);
      }
      const raw = row.priority.value.trim();
      const priority = Number(raw);
      if (!raw || !isFinite(priority)) {
        throw new FormError(
          `classes.${name}.priority`,
          'is required (a whole number, higher first)'
        );
      }
      classes[name] = { priority, preemptible: row.preemptible.checked };
    }
    if (canonical(classes) !== canonical(policy.classes ?? {})) {
      // The server replaces all the classes with those given.
      changes.classes = classes;
    }
    for (const spec of CLASS_FIELDS) {
      const value = this._classSelects[spec.name].value;
      if (value !== policy[spec.name]) {
        changes[spec.name] = value;
      }
    }
    for (const spec of BOOLS) {
      const value = this._bools[spec.name].checked;
      if (value !== policy[spec.name]) {
        changes[spec.name] = value;
      }
    }
    for (const spec of NUMBERS) {
      const value = numberValue(this._numbers[spec.name], spec.name);
      if (value !== policy[spec.name]) {
        changes[spec.name] = value;
      }
    }
    const rawQuota = this._defaultQuota.value.trim();
    const quota = rawQuota ? Number(rawQuota) : null;
    if (quota !== null && !isFinite(quota)) {
      throw new FormError(
        'default_user_quota',
        'must be a whole number of GPUs, or empty for no limit'
      );
    }
    if (quota !== policy.default_user_quota) {
      changes.default_user_quota = quota;
    }
    for (const spec of MAPS) {
      const value = this._maps[spec.name].value;
      if (canonical(value) !== canonical(policy[spec.name] ?? {})) {
        changes[spec.name] = value as Record<string, number>;
      }
    }
    return changes;
  }

  private _form: PolicyForm<SchedulingPolicyDoc, SchedulingView>;
  private _formNode: HTMLFormElement;
  private _classBody: HTMLTableSectionElement;
  private _classRows: IClassRow[] = [];
  private _classSeq = 0;
  private _addClass: HTMLButtonElement;
  private _classSelects = {} as Record<ClassField, HTMLSelectElement>;
  private _bools = {} as Record<BoolField, HTMLInputElement>;
  private _numbers = {} as Record<NumberField, HTMLInputElement>;
  private _durations = {} as Record<NumberField, HTMLElement>;
  private _defaultQuota: HTMLInputElement;
  private _maps = {} as Record<MapField, MapEditor>;
  private _configuredNotes: Record<string, HTMLElement> = {};
}

namespace Private {
  const SECONDS = new Set(['half_life', 'starvation_limit']);

  /** A value as recorded: seconds with their duration, null quotas as "no limit". */
  export function changeValue(field: string, value: unknown): string {
    const last = field.split('.').pop() ?? field;
    if (value === null || value === undefined) {
      return last === 'default_user_quota' ? 'no limit' : '–';
    }
    if (typeof value === 'number' && SECONDS.has(last)) {
      if (value === 0) {
        return `0 (${last === 'starvation_limit' ? 'never' : 'off'})`;
      }
      return `${value} (${duration(value)})`;
    }
    return typeof value === 'string' ? value : JSON.stringify(value);
  }
}
