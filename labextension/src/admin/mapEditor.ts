/**
 * An editor of a map of names to numbers (users' or groups' shares and quotas): one row per
 * name, with Add and Remove, instead of JSON typed into a text area. Its value is the map; a
 * row whose name or number is missing or wrong raises a FormError that names the field
 * (``user_quotas.alice``), as the server's own errors do.
 */
import { h } from '../dom';
import { FormError } from './form';

export interface IMapEditorOptions {
  /** The policy field (``user_quotas``). */
  name: string;
  id: string;
  /** What a key is: ``user`` or ``group``. */
  key: string;
  /** What a value is, in words (``GPUs``, ``share``). */
  unit: string;
  /** Whole numbers only (quotas). */
  whole: boolean;
}

export class MapEditor {
  constructor(options: IMapEditorOptions) {
    this._options = options;
    this._body = h('tbody', {});
    this._add = h(
      'button',
      {
        type: 'button',
        class: 'jp-DLInfra-mapAdd jp-Button jp-mod-minimal',
        'data-map': options.name
      },
      `Add a ${options.key}`
    );
    this._add.addEventListener('click', () => {
      const row = this._row('', null);
      row.key.focus();
    });
    this.node = h(
      'div',
      { class: 'jp-DLInfra-mapEditor', id: options.id, 'data-map': options.name },
      h(
        'table',
        { class: 'jp-DLInfra-mapTable' },
        h(
          'thead',
          {},
          h('tr', {}, h('th', { scope: 'col' }, options.key), h('th', { scope: 'col' }, options.unit), h('th', {}))
        ),
        this._body
      ),
      this._add
    );
  }

  readonly node: HTMLElement;

  get value(): Record<string, number> {
    const found: Record<string, number> = {};
    const { name, key, whole } = this._options;
    for (const row of this._rows) {
      const k = row.key.value.trim();
      const raw = row.value.value.trim();
      if (!k && !raw) {
        continue; // a row left empty is no entry
      }
      if (!k) {
        throw new FormError(name, `a row has ${raw} but no ${key} name`);
      }
      if (k in found) {
        throw new FormError(`${name}.${k}`, `${k} is listed twice`);
      }
      const v = Number(raw);
      if (!raw || !isFinite(v)) {
        throw new FormError(`${name}.${k}`, 'must be a number');
      }
      if (whole && !Number.isInteger(v)) {
        throw new FormError(`${name}.${k}`, 'must be a whole number');
      }
      found[k] = v;
    }
    return found;
  }

  set value(map: Record<string, number>) {
    this._body.replaceChildren();
    this._rows = [];
    for (const [k, v] of Object.entries(map).sort(([a], [b]) => a.localeCompare(b))) {
      this._row(k, v);
    }
  }

  set disabled(disabled: boolean) {
    this._disabled = disabled;
    this._add.disabled = disabled;
    for (const row of this._rows) {
      row.key.disabled = disabled;
      row.value.disabled = disabled;
      row.remove.disabled = disabled;
    }
  }

  /** The input that shows ``key``'s number, or the editor when no row names it. */
  target(key: string): HTMLElement {
    return this._rows.find(r => r.key.value.trim() === key)?.value ?? this.node;
  }

  private _row(k: string, v: number | null): { key: HTMLInputElement; value: HTMLInputElement; remove: HTMLButtonElement } {
    const { name, key, unit, whole } = this._options;
    const keyInput = h('input', {
      type: 'text',
      class: 'jp-mod-styled jp-DLInfra-mapKey',
      name: `${name}.key`,
      'aria-label': `${key} name`,
      spellcheck: 'false'
    });
    keyInput.value = k;
    const valueInput = h('input', {
      type: 'number',
      class: 'jp-mod-styled jp-DLInfra-mapValue',
      name: `${name}.value`,
      min: 0,
      step: whole ? 1 : 'any',
      'aria-label': `${unit} of ${k || `the new ${key}`}`
    });
    valueInput.value = v === null ? '' : String(v);
    const remove = h(
      'button',
      { type: 'button', class: 'jp-DLInfra-mapRemove jp-Button jp-mod-minimal', title: `Remove this ${key}` },
      '✕'
    );
    const row = { key: keyInput, value: valueInput, remove };
    const tr = h(
      'tr',
      { class: 'jp-DLInfra-mapRow' },
      h('td', {}, keyInput),
      h('td', {}, valueInput),
      h('td', {}, remove)
    );
    remove.addEventListener('click', () => {
      this._rows = this._rows.filter(r => r !== row);
      tr.remove();
      // the form hears of the change as of a typed one
      this.node.dispatchEvent(new Event('input', { bubbles: true }));
    });
    for (const input of [keyInput, valueInput, remove]) {
      input.disabled = this._disabled;
    }
    this._rows.push(row);
    this._body.append(tr);
    return row;
  }

  private _options: IMapEditorOptions;
  private _body: HTMLElement;
  private _add: HTMLButtonElement;
  private _rows: { key: HTMLInputElement; value: HTMLInputElement; remove: HTMLButtonElement }[] = [];
  private _disabled = false;
}
