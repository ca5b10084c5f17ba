/**
 * The reclaim policy's overrides per user and per group, one card each: who (a user or a
 * group, by name), exempt or not, and the fields that differ from the default (blank: the
 * default's). Its value is the policy's `users` and `groups`; a card with no name, a name given
 * twice or a field that is not a number raises a FormError naming the field
 * (`users.alice.reclaim_after`), as the server's own errors do.
 */
import { PolicyFields, PolicyOverride } from '../api';
import { h } from '../dom';
import { FormError } from './form';

type NumberField = Exclude<keyof PolicyFields, 'action'>;
type Kind = 'users' | 'groups';

const NUMBERS: Array<{ name: NumberField; label: string }> = [
  { name: 'idle_util_percent', label: 'Idle below (%)' },
  { name: 'idle_after', label: 'Idle after (s)' },
  { name: 'warn_after', label: 'Warn after (s)' },
  { name: 'reclaim_after', label: 'Reclaim after (s)' },
  { name: 'keep_extension', label: 'Keep holds for (s)' },
  { name: 'max_keeps', label: 'Keeps allowed' }
];
const ACTIONS = ['release', 'shutdown', 'notify', 'park'];

interface ICard {
  node: HTMLElement;
  kind: HTMLSelectElement;
  name: HTMLInputElement;
  exempt: HTMLInputElement;
  numbers: Record<NumberField, HTMLInputElement>;
  action: HTMLSelectElement;
  remove: HTMLButtonElement;
}

export interface IOverrides {
  users: Record<string, PolicyOverride>;
  groups: Record<string, PolicyOverride>;
}

export class OverridesEditor {
  constructor() {
    this._cards = h('div', { class: 'jp-DLInfra-overrideCards' });
    this._add = h(
      'button',
      { type: 'button', class: 'jp-DLInfra-overrideAdd jp-Button jp-mod-minimal' },
      'Add an override'
    );
    this._add.addEventListener('click', () => this._card('users', '', {}).name.focus());
    this.node = h(
      'div',
      { class: 'jp-DLInfra-overrides', id: 'dlinfra-policy-overrides' },
      this._cards,
      this._add
    );
  }

  readonly node: HTMLElement;

  get value(): IOverrides {
    const found: IOverrides = { users: {}, groups: {} };
    for (const card of this._list) {
      const kind = card.kind.value as Kind;
      const name = card.name.value.trim();
      const override: PolicyOverride = {};
      if (card.exempt.checked) {
        override.exempt = true;
      }
      for (const spec of NUMBERS) {
        const raw = card.numbers[spec.name].value.trim();
        if (!raw) {
          continue;
        }
        const value = Number(raw);
        if (!isFinite(value)) {
          throw new FormError(`${kind}.${name || '?'}.${spec.name}`, 'must be a number');
        }
        override[spec.name] = value;
      }
      if (card.action.value) {
        override.action = card.action.value as PolicyFields['action'];
      }
      if (!name) {
        if (Object.keys(override).length === 0) {
          continue; // an empty card is no override
        }
        throw new FormError(kind, `an override has no ${kind === 'users' ? 'user' : 'group'} name`);
      }
      if (name in found[kind]) {
        throw new FormError(`${kind}.${name}`, `${name} has two overrides`);
      }
      found[kind][name] = override;
    }
    return found;
  }

  set value(overrides: IOverrides) {
    this._cards.replaceChildren();
    this._list = [];
    for (const kind of ['users', 'groups'] as Kind[]) {
      for (const [name, override] of Object.entries(overrides[kind] ?? {}).sort(([a], [b]) =>
        a.localeCompare(b)
      )) {
        this._card(kind, name, override);
      }
    }
  }

  set disabled(disabled: boolean) {
    this._disabled = disabled;
    this._add.disabled = disabled;
    for (const card of this._list) {
      this._disable(card);
    }
  }

  /** The control a field (`users.alice.reclaim_after`) names, or the editor. */
  target(field: string): HTMLElement {
    const [kind, ...rest] = field.split('.');
    const last = rest[rest.length - 1];
    const isField = NUMBERS.some(n => n.name === last) || last === 'action' || last === 'exempt';
    const name = (isField ? rest.slice(0, -1) : rest).join('.');
    const card = this._list.find(c => c.kind.value === kind && c.name.value.trim() === name);
    if (!card) {
      return this.node;
    }
    if (!isField) {
      return card.name;
    }
    return last === 'action'
      ? card.action
      : last === 'exempt'
        ? card.exempt
        : card.numbers[last as NumberField];
  }

  private _card(kind: Kind, name: string, override: PolicyOverride): ICard {
    const n = ++this._seq;
    const kindSelect = h(
      'select',
      { class: 'jp-mod-styled jp-DLInfra-overrideKind', 'aria-label': `Override ${n}: for a user or a group` },
      h('option', { value: 'users' }, 'User'),
      h('option', { value: 'groups' }, 'Group')
    );
    kindSelect.value = kind;
    const nameInput = h('input', {
      type: 'text',
      class: 'jp-mod-styled jp-DLInfra-overrideName',
      'aria-label': `Override ${n}: name`,
      spellcheck: 'false'
    });
    nameInput.value = name;
    const exempt = h('input', { type: 'checkbox', class: 'jp-DLInfra-overrideExempt' });
    exempt.checked = override.exempt === true;
    const remove = h(
      'button',
      { type: 'button', class: 'jp-DLInfra-overrideRemove jp-Button jp-mod-minimal', title: 'Remove this override' },
      '✕'
    );
    const numbers = {} as Record<NumberField, HTMLInputElement>;
    const fields = NUMBERS.map(spec => {
      const input = h('input', {
        type: 'number',
        min: 0,
        step: 'any',
        placeholder: 'default',
        class: 'jp-mod-styled jp-DLInfra-overrideField',
        'data-field': spec.name,
        'aria-label': `Override ${n}: ${spec.label}`
      });
      const value = override[spec.name];
      input.value = value === undefined || value === null ? '' : String(value);
      numbers[spec.name] = input;
      return h('label', { class: 'jp-DLInfra-overrideLabel' }, spec.label, input);
    });
    const action = h(
      'select',
      { class: 'jp-mod-styled jp-DLInfra-overrideField', 'data-field': 'action', 'aria-label': `Override ${n}: action` },
      h('option', { value: '' }, 'default'),
      ...ACTIONS.map(a => h('option', { value: a }, a))
    );
    action.value = override.action ?? '';
    const node = h(
      'fieldset',
      { class: 'jp-DLInfra-overrideCard' },
      h(
        'div',
        { class: 'jp-DLInfra-overrideHead' },
        kindSelect,
        nameInput,
        h('label', { class: 'jp-DLInfra-overrideLabel' }, exempt, ' exempt'),
        remove
      ),
      h('div', { class: 'jp-DLInfra-overrideFields' }, ...fields, h('label', { class: 'jp-DLInfra-overrideLabel' }, 'Action', action))
    );
    const card: ICard = { node, kind: kindSelect, name: nameInput, exempt, numbers, action, remove };
    remove.addEventListener('click', () => {
      this._list = this._list.filter(c => c !== card);
      node.remove();
      this.node.dispatchEvent(new Event('input', { bubbles: true }));
    });
    this._disable(card);
    this._list.push(card);
    this._cards.append(node);
    return card;
  }

  private _disable(card: ICard): void {
    for (const control of [card.kind, card.name, card.exempt, card.action, card.remove, ...Object.values(card.numbers)]) {
      control.disabled = this._disabled;
    }
  }

  private _cards: HTMLElement;
  private _add: HTMLButtonElement;
  private _list: ICard[] = [];
  private _seq = 0;
  private _disabled = false;
}
