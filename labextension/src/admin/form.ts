/**
 * What the admin panel's policy forms (idle reclaim in `panel`, scheduling in
 * `scheduling`) have in common: their sections, labelled fields and value checks, and a
 * `PolicyForm` for the source, the recent changes and the load, save, revert, status and error
 * plumbing around a form. The classes are named after a stem (`policy`, `sched`):
 * `jp-DLInfra-${stem}Save`, `jp-DLInfra-${stem}Error`, ...
 */
import { DLInfraApiError, PolicyChange, Timestamp } from '../api';
import { Attrs, Child, clock, h } from '../dom';

/** A form value that cannot be sent; `field` names it like the server's messages do. */
export class FormError extends Error {
  constructor(
    readonly field: string,
    message: string
  ) {
    super(`${field}: ${message}`);
  }
}

/** An error's message for people. */
export function errorMessage(error: unknown): string {
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

/** A number field's value; throws a FormError naming `field` when it is not a number. */
export function numberValue(input: HTMLInputElement, field: string): number {
  const raw = input.value.trim();
  const value = Number(raw);
  if (!raw || !isFinite(value)) {
    throw new FormError(field, 'must be a number');
  }
  return value;
}

/* ------------------------------------------------------------------ rendering */

/** A section of the admin panel, headed `heading`. */
export function section(key: string, heading: string, ...children: Node[]): HTMLElement {
  const headingId = `dlinfra-admin-${key}-heading`;
  return h(
    'section',
    { class: `jp-DLInfra-section jp-DLInfra-section-${key}`, 'aria-labelledby': headingId },
    h('h3', { id: headingId, class: 'jp-DLInfra-sectionHeading' }, heading),
    ...children
  );
}

/** A field's control, with the id `id` and described by the field's help (`${id}-help`). */
export function fieldControl<K extends 'input' | 'select' | 'textarea'>(
  tag: K,
  id: string,
  name: string,
  attrs: Attrs,
  ...children: Array<Child | Child[]>
): HTMLElementTagNameMap[K] {
  const { type, ...rest } = attrs;
  return h(tag, { type, name, id, ...rest, 'aria-describedby': `${id}-help` }, ...children);
}

/** Where a field shows a number of seconds as a duration. */
export function durationNote(): HTMLElement {
  return h('span', { class: 'jp-DLInfra-policyDuration', 'aria-hidden': 'true' });
}

/** Where a field's help says what the server configuration has, when that differs. */
export function configuredNote(): HTMLElement {
  return h('span', { class: 'jp-DLInfra-policyConfigured' });
}

export interface IFieldOptions {
  /** The field's name, as the policy document has it (`data-field`). */
  name: string;
  /** Its control's id, which the label is for; its help has the id `${id}-help`. */
  id: string;
  label: string;
  /** The control and what stands beside it. */
  controls: Child[];
  help: Child[];
  /** Label, control and help one under another, the control as it is (not in a row). */
  wide?: boolean;
  /** More classes of the field. */
  className?: string;
}

/** A labelled field of a policy form: label, control (in a row) and help. */
export function labelledField(options: IFieldOptions): HTMLElement {
  const { name, id, label, controls, help, wide = false, className } = options;
  const classes = ['jp-DLInfra-policyField'];
  if (wide) {
    classes.push('jp-DLInfra-policyField-wide');
  }
  if (className) {
    classes.push(className);
  }
  return h(
    'div',
    { class: classes.join(' '), 'data-field': name },
    h('label', { for: id, class: 'jp-DLInfra-policyLabel' }, label),
    wide ? controls : h('div', { class: 'jp-DLInfra-policyControl' }, controls),
    h('div', { id: `${id}-help`, class: 'jp-DLInfra-policyHelp' }, help)
  );
}

/** How a value of a field is shown in the recent changes. */
export type ShowValue = (field: string, value: unknown) => string;

/**
 * One recorded change, `jp-DLInfra-${stem}Change`; its field, old and new value have the
 * stem's classes too (the old and new value the `policy` ones as well).
 */
export function changeItem(c: PolicyChange, stem: string, show: ShowValue): HTMLElement {
  const old = show(c.field, c.old);
  const now = show(c.field, c.new);
  const classes = (part: string) =>
    stem === 'policy'
      ? `jp-DLInfra-policy${part}`
      : `jp-DLInfra-policy${part} jp-DLInfra-${stem}${part}`;
  return h(
    'li',
    { class: `jp-DLInfra-${stem}Change`, 'data-seq': c.seq, 'data-field': c.field },
    h(
      'div',
      { class: 'jp-DLInfra-policyChangeHeader' },
      h('span', { class: 'jp-DLInfra-policyChangeWho' }, c.who),
      h('time', { class: 'jp-DLInfra-policyChangeAt', datetime: c.at, title: c.at }, clock(c.at))
    ),
    h(
      'div',
      { class: 'jp-DLInfra-policyChangeWhat' },
      h('code', { class: `jp-DLInfra-${stem}ChangeField` }, c.field),
      ' ',
      h('span', { class: classes('ChangeOld'), title: old }, old),
      ' → ',
      h('span', { class: classes('ChangeNew'), title: now }, now)
    )
  );
}

/* ------------------------------------------------------------------ the form */

/** What a policy form shows of a policy as read or saved. */
export interface IPolicyView<D> {
  policy: D;
  /** `api` when set through PUT, `config` when it is the server configuration's. */
  source: 'api' | 'config';
  updated_at: Timestamp | null;
  updated_by: string | null;
  /** Whether the caller may change it (an admin). */
  editable: boolean;
  /** The most recent changes, newest first. */
  changes?: PolicyChange[];
}

export interface IPolicyFormOptions<D, V extends IPolicyView<D>> {
  /** The stem of the classes of the form's parts. */
  stem: string;
  /** The form, which gets the parts of `tail` appended by its owner. */
  form: HTMLFormElement;
  /** The element marked `jp-mod-dirty` while the form holds unsaved changes. */
  dirtyNode: HTMLElement;
  /** Shown instead of editing to those who may not change the policy. */
  readOnlyNote: string;
  /** The Revert button's title. */
  revertTitle: string;
  /** Finds the field a server message names first (group 1). */
  fieldPattern: RegExp;
  /** How recorded values are shown in the recent changes. */
  showValue: ShowValue;
  /** The policy as last read or saved, or null. */
  current(): V | null;
  /** Read the policy. */
  read(): Promise<V>;
  /** Save changes; the answer is the policy saved. */
  write(changes: Partial<D>): Promise<V>;
  /** The fields of the form that differ from `policy`; throws a FormError for bad values. */
  diff(policy: D): Partial<D>;
  /** Put a policy's values in the form's fields. */
  fill(view: V): void;
  /** The control a field (path) names, to mark invalid. */
  target(field: string): Element | null | undefined;
  /** What the load error says. */
  loadError(error: unknown): string;
  /** Called when a load fails before any policy was read. */
  unread?(): void;
}

/**
 * The plumbing of a policy form: a load error, the policy's source, a note for those who may
 * not edit, the error, Save, Revert and status of the form, and the list of recent changes.
 */
export class PolicyForm<D, V extends IPolicyView<D>> {
  constructor(options: IPolicyFormOptions<D, V>) {
    this._options = options;
    const { stem, form } = options;
    this.loadErrorNode = h('div', {
      class: `jp-DLInfra-error jp-DLInfra-${stem}LoadError`,
      role: 'alert',
      hidden: true
    });
    this.source = h('p', { class: `jp-DLInfra-${stem}Source` }, 'Loading…');
    this.note = h(
      'p',
      { class: `jp-DLInfra-empty jp-DLInfra-${stem}Note`, hidden: true },
      options.readOnlyNote
    );
    this._error = h('div', { class: `jp-DLInfra-${stem}Error`, role: 'alert', hidden: true });
    this._status = h('span', { class: `jp-DLInfra-${stem}Status`, role: 'status' });
    this._save = h(
      'button',
      { type: 'submit', class: `jp-DLInfra-${stem}Save jp-Button jp-mod-styled jp-mod-accept` },
      'Save'
    );
    this._revert = h(
      'button',
      {
        type: 'button',
        class: `jp-DLInfra-${stem}Revert jp-Button jp-mod-styled jp-mod-reject`,
        title: options.revertTitle
      },
      'Revert'
    );
    this.tail = [
      this._error,
      h('div', { class: 'jp-DLInfra-policyButtons' }, this._save, this._revert, this._status)
    ];
    this.changes = h('ul', { class: `jp-DLInfra-list jp-DLInfra-${stem}Changes` });

    form.addEventListener('submit', event => {
      event.preventDefault();
      void this.save();
    });
    form.addEventListener('input', () => this.setDirty(true));
    this._revert.addEventListener('click', () => {
      const view = options.current();
      if (view) {
        this.show(view);
      }
    });
  }

  /** Says why the policy cannot be read (hidden when it can). */
  readonly loadErrorNode: HTMLElement;
  /** Where the policy comes from. */
  readonly source: HTMLElement;
  /** Shown to those who may not change the policy. */
  readonly note: HTMLElement;
  /** The end of the form: its error, then Save, Revert and the status. */
  readonly tail: HTMLElement[];
  /** The recent changes. */
  readonly changes: HTMLElement;

  /** Whether the form holds changes not saved. */
  get dirty(): boolean {
    return this._dirty;
  }

  /** Read the policy (again); `force` replaces unsaved edits too. */
  async load(force = false): Promise<void> {
    const options = this._options;
    try {
      const view = await options.read();
      this.loadErrorNode.hidden = true;
      if (force || !this._dirty) {
        this.show(view);
      }
    } catch (error) {
      this.loadErrorNode.hidden = false;
      this.loadErrorNode.textContent = options.loadError(error);
      if (!options.current()) {
        this.source.textContent = '';
        options.unread?.();
      }
    }
  }

  /** Send the fields changed in the form and show the answer. */
  async save(): Promise<void> {
    const options = this._options;
    const view = options.current();
    if (!view || this._busy) {
      return;
    }
    this.showError(null);
    let changes: Partial<D>;
    try {
      changes = options.diff(view.policy);
    } catch (error) {
      this.showError(error);
      return;
    }
    if (Object.keys(changes).length === 0) {
      this._status.textContent = 'Nothing to save: the form matches the policy.';
      this.setDirty(false);
      return;
    }
    this._busy = true;
    this._save.disabled = true;
    this._status.textContent = 'Saving…';
    try {
      const answer = await options.write(changes);
      this.show(answer);
      this._status.textContent = `Saved ${Object.keys(changes).join(', ')}.`;
    } catch (error) {
      this._status.textContent = '';
      this.showError(error);
    } finally {
      this._busy = false;
      this._save.disabled = !(options.current()?.editable ?? false);
    }
  }

  /** Show a policy read or saved elsewhere, unless the form is being edited or saved. */
  changed(view: V): void {
    if (!this._dirty && !this._busy) {
      this.show(view);
    }
  }

  /** Show a policy in the form, with its source and its recent changes. */
  show(view: V): void {
    const options = this._options;
    options.fill(view);
    this._save.disabled = !view.editable;
    this._revert.disabled = !view.editable;
    this.note.hidden = view.editable;
    this.showError(null);
    this.setDirty(false);

    this.source.replaceChildren(
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
    this.source.dataset.source = view.source;

    const changes = view.changes ?? [];
    this.changes.replaceChildren(
      ...(changes.length
        ? changes.map(c => changeItem(c, options.stem, options.showValue))
        : [h('li', { class: 'jp-DLInfra-empty' }, 'No change through the API yet.')])
    );
  }

  /** Show an error of the form (or clear it with null), marking the field it names. */
  showError(error: unknown): void {
    const options = this._options;
    for (const el of options.form.querySelectorAll('[aria-invalid]')) {
      el.removeAttribute('aria-invalid');
    }
    if (error === null) {
      this._error.hidden = true;
      this._error.textContent = '';
      return;
    }
    const message = errorMessage(error);
    this._error.hidden = false;
    this._error.textContent = message;
    const field =
      error instanceof FormError ? error.field : options.fieldPattern.exec(message)?.[1] ?? '';
    options.target(field)?.setAttribute('aria-invalid', 'true');
  }

  /** Mark the form as holding unsaved changes, or not. */
  setDirty(dirty: boolean): void {
    this._dirty = dirty;
    this._options.dirtyNode.classList.toggle('jp-mod-dirty', dirty);
    if (dirty) {
      this._status.textContent = 'Unsaved changes.';
    }
  }

  private _options: IPolicyFormOptions<D, V>;
  private _error: HTMLElement;
  private _status: HTMLElement;
  private _save: HTMLButtonElement;
  private _revert: HTMLButtonElement;
  private _dirty = false;
  private _busy = false;
}
