/**
 * "Submit as job": the notebook toolbar button and the dialog that submits the notebook as a
 * batch job (POST jobs), prefilled from the notebook (its name, its first `%gpu N` line and
 * its cell tagged `parameters`). The notebook is saved first: the job runs the saved file.
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { Dialog, showErrorMessage, ToolbarButton } from '@jupyterlab/apputils';
import { DocumentRegistry } from '@jupyterlab/docregistry';
import { INotebookModel, NotebookPanel } from '@jupyterlab/notebook';
import { IDisposable } from '@lumino/disposable';
import { Widget } from '@lumino/widgets';

import {
  DLInfraApiError,
  Job,
  JobBackends,
  JobRequest,
  JobSubmission,
  SchedulingPolicyDoc
} from './api';
import { basename, h } from './dom';
import { jobIcon } from './icons';
import { notifySubmitted } from './jobs';
import { DLInfraModel } from './model';
import { TOOLBAR_ITEM } from './toolbar';

export const SUBMIT_TOOLBAR_ITEM = 'dlinfraSubmitJob';

/** The toolbar button "Submit as job" of every notebook, next to the GPUs button. */
export class SubmitJobToolbarExtension
  implements DocumentRegistry.IWidgetExtension<NotebookPanel, INotebookModel>
{
  constructor(
    private _app: JupyterFrontEnd,
    private _model: DLInfraModel
  ) {}

  createNew(panel: NotebookPanel): IDisposable {
    const button = new ToolbarButton({
      className: 'jp-DLInfra-submitJob',
      icon: jobIcon,
      label: 'Submit as job',
      tooltip: 'Run this notebook as a batch job (it is saved first)',
      onClick: () => void openSubmitDialog(this._app, this._model, panel)
    });
    button.node.setAttribute('data-dlinfra', 'submit-job');
    if (
      !panel.toolbar.insertAfter(TOOLBAR_ITEM, SUBMIT_TOOLBAR_ITEM, button) &&
      !panel.toolbar.insertAfter('cellType', SUBMIT_TOOLBAR_ITEM, button)
    ) {
      panel.toolbar.insertItem(11, SUBMIT_TOOLBAR_ITEM, button);
    }
    return button;
  }
}

/* ---------------------------------------------------------------- notebook defaults */

/** What the dialog is prefilled with, read from the notebook. */
export interface INotebookDefaults {
  /** The notebook's name without `.ipynb`. */
  name: string;
  /** From the first `%gpu N` line of the code cells, else 0. */
  gpus: number;
  /** From that line's `--model NAME`, else null. */
  model: string | null;
  /** From that line's `--nodes K` (a distributed job), else null. */
  nodes: number | null;
  /** From the cell tagged `parameters` when its lines are simple assignments, else {}. */
  parameters: Record<string, unknown>;
  /** Whether a `parameters` cell was found, and whether it could be read. */
  parametersCell: 'none' | 'read' | 'unread';
}

const GPU_LINE = /^\s*%gpu\s+(\d+)\b(.*)$/;
const MODEL_OPTION = /(?:^|\s)--model(?:=|\s+)(\S+)/;
const NODES_OPTION = /(?:^|\s)--nodes(?:=|\s+)(\d+)\b/;

/** Read the defaults of the submit dialog from a notebook's cells. */
export function notebookDefaults(path: string, cells: Iterable<ICellLike>): INotebookDefaults {
  const defaults: INotebookDefaults = {
    name: basename(path).replace(/\.ipynb$/i, ''),
    gpus: 0,
    model: null,
    nodes: null,
    parameters: {},
    parametersCell: 'none'
  };
  let gpuFound = false;
  for (const cell of cells) {
    const source = cell.source;
    if (!gpuFound && cell.type === 'code') {
      for (const line of source.split('\n')) {
        const match = GPU_LINE.exec(line);
        if (match) {
          gpuFound = true;
          defaults.gpus = Number(match[1]);
          defaults.model = MODEL_OPTION.exec(match[2])?.[1] ?? null;
          const nodes = NODES_OPTION.exec(match[2])?.[1];
          defaults.nodes = nodes ? Number(nodes) : null;
          break;
        }
      }
    }
    const isParameters = cell.type === 'code' && cell.tags.includes('parameters');
    if (defaults.parametersCell === 'none' && isParameters) {
      const parsed = parseAssignments(source);
      defaults.parametersCell = parsed ? 'read' : 'unread';
      defaults.parameters = parsed ?? {};
    }
  }
  return defaults;
}

/** The little of a cell `notebookDefaults` reads. */
export interface ICellLike {
  type: string;
  source: string;
  tags: string[];
}

function cellsOf(panel: NotebookPanel): ICellLike[] {
  const cells: ICellLike[] = [];
  const model = panel.content.model;
  if (!model) {
    return cells;
  }
  for (const cell of model.cells) {
    const tags = cell.getMetadata('tags');
    cells.push({
      type: cell.type,
      source: cell.sharedModel.getSource(),
      tags: Array.isArray(tags) ? tags.filter((t): t is string => typeof t === 'string') : []
    });
  }
  return cells;
}

/**
 * The `name = literal` lines of a parameters cell as a JSON object (Python literals: numbers,
 * strings, True/False/None, lists, tuples and dicts of them; comments and blank lines are
 * skipped), or null when some line is anything else.
 */
export function parseAssignments(source: string): Record<string, unknown> | null {
  const result: Record<string, unknown> = {};
  for (const raw of source.split('\n')) {
    const line = raw.replace(/\r$/, '');
    if (!line.trim() || line.trim().startsWith('#')) {
      continue;
    }
    const match = /^([A-Za-z_][A-Za-z0-9_]*)\s*(?::[^=]*)?=(?!=)(.*)$/.exec(line);
    if (!match) {
      return null;
    }
    try {
      result[match[1]] = new LiteralParser(match[2]).parseAll();
    } catch {
      return null;
    }
  }
  return result;
}

/** A parser of one Python literal (and an optional trailing comment). */
class LiteralParser {
  constructor(private _text: string) {}

  parseAll(): unknown {
    const value = this._value();
    this._space();
    if (this._pos < this._text.length && this._text[this._pos] !== '#') {
      throw new Error('trailing text');
    }
    return value;
  }

  private _value(): unknown {
    this._space();
    const c = this._text[this._pos];
    if (c === undefined) {
      throw new Error('no value');
    }
    if (c === '[') {
      return this._sequence('[', ']');
    }
    if (c === '(') {
      return this._sequence('(', ')');
    }
    if (c === '{') {
      return this._dict();
    }
    if (c === '"' || c === "'") {
      return this._string(false);
    }
    if ((c === 'r' || c === 'R') && /['"]/.test(this._text[this._pos + 1] ?? '')) {
      this._pos++;
      return this._string(true);
    }
    const word = /^(True|False|None)\b/.exec(this._text.slice(this._pos));
    if (word) {
      this._pos += word[1].length;
      return word[1] === 'True' ? true : word[1] === 'False' ? false : null;
    }
    return this._number();
  }

  private _number(): number {
    const rest = this._text.slice(this._pos);
    const hex = /^[-+]?0[xX][0-9a-fA-F_]+\b/.exec(rest);
    if (hex) {
      this._pos += hex[0].length;
      const sign = hex[0].startsWith('-') ? -1 : 1;
      return sign * parseInt(hex[0].replace(/^[-+]?0[xX]/, '').replace(/_/g, ''), 16);
    }
    const match = /^[-+]?(?:\d[\d_]*\.?[\d_]*|\.\d[\d_]*)(?:[eE][-+]?\d+)?(?![\w.])/.exec(rest);
    if (!match) {
      throw new Error('not a literal');
    }
    this._pos += match[0].length;
    const value = Number(match[0].replace(/_/g, ''));
    if (!Number.isFinite(value)) {
      throw new Error('not a finite number');
    }
    return value;
  }

  private _string(raw: boolean): string {
    const quote = this._text[this._pos];
    if (this._text.startsWith(quote.repeat(3), this._pos)) {
      throw new Error('triple-quoted strings are not read');
    }
    this._pos++;
    let out = '';
    while (this._pos < this._text.length) {
      const c = this._text[this._pos++];
      if (c === quote) {
        return out;
      }
      if (c !== '\\') {
        out += c;
        continue;
      }
      const e = this._text[this._pos++];
      if (e === undefined) {
        break;
      }
      if (raw) {
        out += '\\' + e;
        continue;
      }
      const simple: Record<string, string> = {
        n: '\n',
        t: '\t',
        r: '\r',
        '0': '\0',
        '\\': '\\',
        "'": "'",
        '"': '"',
        a: '\x07',
        b: '\b',
        f: '\f',
        v: '\v'
      };
      if (e in simple) {
        out += simple[e];
      } else if (e === 'x' || e === 'u' || e === 'U') {
        const n = e === 'x' ? 2 : e === 'u' ? 4 : 8;
        const hex = this._text.slice(this._pos, this._pos + n);
        if (!new RegExp(`^[0-9a-fA-F]{${n}}$`).test(hex)) {
          throw new Error('bad escape');
        }
        out += String.fromCodePoint(parseInt(hex, 16));
        this._pos += n;
      } else {
        out += '\\' + e;
      }
    }
    throw new Error('unterminated string');
  }

  private _sequence(open: string, close: string): unknown[] {
    this._pos++; // the opening bracket
    const items: unknown[] = [];
    let comma = false;
    for (;;) {
      this._space();
      if (this._text[this._pos] === close) {
        this._pos++;
        // "(1)" is a number in parentheses, "(1,)" a tuple
        if (open === '(' && items.length === 1 && !comma) {
          return items[0] as unknown[];
        }
        return items;
      }
      if (items.length > 0) {
        if (this._text[this._pos] !== ',') {
          throw new Error('expected a comma');
        }
        this._pos++;
        comma = true;
        this._space();
        if (this._text[this._pos] === close) {
          continue;
        }
      }
      items.push(this._value());
      comma = false;
    }
  }

  private _dict(): Record<string, unknown> {
    this._pos++; // {
    const out: Record<string, unknown> = {};
    let first = true;
    for (;;) {
      this._space();
      if (this._text[this._pos] === '}') {
        this._pos++;
        return out;
      }
      if (!first) {
        if (this._text[this._pos] !== ',') {
          throw new Error('expected a comma');
        }
        this._pos++;
        this._space();
        if (this._text[this._pos] === '}') {
          continue;
        }
      }
      const key = this._value();
      if (typeof key !== 'string' && typeof key !== 'number') {
        throw new Error('keys must be strings or numbers');
      }
      this._space();
      if (this._text[this._pos] !== ':') {
        throw new Error('expected a colon');
      }
      this._pos++;
      out[String(key)] = this._value();
      first = false;
    }
  }

  private _space(): void {
    while (this._pos < this._text.length && /[ \t]/.test(this._text[this._pos])) {
      this._pos++;
    }
  }

  private _pos = 0;
}

/* ---------------------------------------------------------------- the form */

namespace SubmitForm {
  export interface IOptions {
    path: string;
    defaults: INotebookDefaults;
    backends: JobBackends | null;
    /** Why the backends could not be read, when they could not. */
    backendsError: string | null;
    /** The scheduling policy (its classes and default job class), null when not read. */
    scheduling: SchedulingPolicyDoc | null;
    /** Why the scheduling policy could not be read, when it could not (null: no classes). */
    schedulingError: string | null;
    /** The user's active jobs, for "run after". */
    activeJobs: Job[];
    /** GPU models of the cluster, suggested for the model field. */
    models: string[];
    /** Whether the notebook has unsaved changes. */
    dirty: boolean;
  }
}

/** A field's error: which control, and what is wrong. */
class FieldError extends Error {
  constructor(
    readonly control: HTMLElement,
    message: string
  ) {
    super(message);
  }
}

/**
 * A whole-number field: undefined when empty, else its value within `min` (and `max`), or a
 * `FieldError` that says what it must be.
 */
function wholeNumber(
  input: HTMLInputElement,
  label: string,
  min: number,
  max?: number
): number | undefined {
  const raw = input.value.trim();
  if (!raw) {
    if (input.validity.badInput) {
      // the browser keeps what is not a number to itself: value is '' then
      throw new FieldError(input, `${label} must be a whole number.`);
    }
    return undefined;
  }
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || (max !== undefined && n > max)) {
    const range = max === undefined ? `, ${min} or more` : ` from ${min} to ${max}`;
    throw new FieldError(input, `${label} must be a whole number${range}, not ${raw}.`);
  }
  return n;
}

/** The body of the submit dialog. */
class SubmitForm extends Widget implements Dialog.IBodyWidget<JobSubmission | null> {
  constructor(options: SubmitForm.IOptions) {
    super();
    this.addClass('jp-DLInfra-submitForm');
    const d = options.defaults;
    this._path = options.path;
    const field = (
      name: string,
      label: string,
      control: HTMLElement,
      help?: Node | string | null,
      wide = false,
      target: HTMLElement = control
    ) => {
      const id = `dlinfra-submit-${name}`;
      target.id = id;
      return h(
        'div',
        { class: `jp-DLInfra-submitField${wide ? ' jp-mod-wide' : ''}`, 'data-field': name },
        h('label', { for: id, class: 'jp-DLInfra-submitLabel' }, label),
        control,
        help ? h('div', { class: 'jp-DLInfra-submitHelp' }, help) : null
      );
    };

    this._name = h('input', {
      type: 'text',
      name: 'name',
      class: 'jp-mod-styled',
      value: d.name,
      placeholder: d.name || 'job name',
      spellcheck: 'false'
    });
    this._gpus = h('input', {
      type: 'number',
      name: 'gpus',
      class: 'jp-mod-styled',
      min: 0,
      step: 1,
      value: d.gpus
    });
    this._nodes = h('input', {
      type: 'number',
      name: 'nodes',
      class: 'jp-mod-styled',
      min: 1,
      step: 1,
      value: d.nodes ?? '',
      placeholder: 'one process'
    });
    this._gpuModel = h('input', {
      type: 'text',
      name: 'model',
      class: 'jp-mod-styled',
      value: d.model ?? '',
      placeholder: 'any model',
      list: 'dlinfra-submit-models',
      spellcheck: 'false'
    });
    this._priority = h('input', {
      type: 'number',
      name: 'priority',
      class: 'jp-mod-styled',
      min: -1000,
      max: 1000,
      step: 1,
      value: 0
    });
    this._class = h('select', {
      name: 'priority_class',
      class: 'jp-mod-styled jp-DLInfra-submitClass'
    });
    const scheduling = options.scheduling;
    const classes = scheduling
      ? Object.entries(scheduling.classes).sort(
          ([a, x], [b, y]) => y.priority - x.priority || (a < b ? -1 : a > b ? 1 : 0)
        )
      : [];
    if (scheduling && classes.length > 0) {
      for (const [name, spec] of classes) {
        const isDefault = name === scheduling.job_class;
        const option = h(
          'option',
          {
            value: name,
            'data-priority': spec.priority,
            'data-preemptible': spec.preemptible ? 'true' : 'false',
            title: spec.preemptible
              ? 'Its jobs may be stopped and queued again for a higher class'
              : 'Its jobs are never preempted'
          },
          `${name} (priority ${spec.priority}${spec.preemptible ? ', preemptible' : ''})` +
            (isDefault ? ' (default)' : '')
        );
        option.selected = isDefault;
        this._class.append(option);
      }
    } else {
      this._class.append(h('option', { value: '' }, 'the server default'));
      this._class.disabled = true;
    }
    this._backend = h('select', { name: 'backend', class: 'jp-mod-styled' });
    const backends = options.backends;
    if (backends && backends.backends.length > 0) {
      for (const b of backends.backends) {
        const unavailable = !b.available;
        const option = h(
          'option',
          {
            value: b.name,
            disabled: unavailable,
            title: unavailable
              ? b.reason || 'not available'
              : b.places_gpus
                ? 'The GPU ledger places the job\'s GPUs'
                : 'The backend places the job\'s GPUs'
          },
          `${b.name}${b.name === backends.default ? ' (default)' : ''}` +
            (unavailable ? ' (unavailable)' : '')
        );
        option.selected = b.name === backends.default;
        this._backend.append(option);
      }
    } else {
      this._backend.append(h('option', { value: '' }, 'the server default'));
    }
    this._after = h('input', {
      type: 'text',
      name: 'after',
      class: 'jp-mod-styled',
      placeholder: 'job ids, e.g. 12, 13',
      spellcheck: 'false'
    });
    const afterRow = h('div', { class: 'jp-DLInfra-submitAfter' }, this._after);
    if (options.activeJobs.length > 0) {
      const pick = h(
        'select',
        {
          name: 'afterJob',
          class: 'jp-mod-styled jp-DLInfra-submitAfterPick',
          'aria-label': 'Add one of your active jobs to wait for'
        },
        h('option', { value: '' }, 'add an active job…'),
        options.activeJobs.map(j => h('option', { value: j.id }, `#${j.id} ${j.name} (${j.state})`))
      );
      pick.addEventListener('change', () => {
        const id = pick.value;
        if (id) {
          const ids = this._after.value.split(/[\s,]+/).filter(Boolean);
          if (!ids.includes(id)) {
            ids.push(id);
          }
          this._after.value = ids.join(', ');
          pick.value = '';
        }
      });
      afterRow.append(pick);
    }
    this._parameters = h('textarea', {
      name: 'parameters',
      class: 'jp-mod-styled jp-DLInfra-submitJson',
      rows: 4,
      spellcheck: 'false'
    });
    this._parameters.value = JSON.stringify(d.parameters, null, 2);
    this._sweep = h('textarea', {
      name: 'sweep',
      class: 'jp-mod-styled jp-DLInfra-submitJson',
      rows: 2,
      spellcheck: 'false',
      placeholder: '{"lr": [0.1, 0.01]}'
    });
    this._error = h('div', { class: 'jp-DLInfra-submitError', role: 'alert', hidden: true });
    this.node.addEventListener('input', () => this._explainInvalid());

    const paramsHelp =
      d.parametersCell === 'read'
        ? 'A JSON object, read from the cell tagged "parameters": these values replace it.'
        : d.parametersCell === 'unread'
          ? 'A JSON object. The cell tagged "parameters" is not simple name = value lines: ' +
            'write the values here.'
          : 'A JSON object of values for the cell tagged "parameters" (the notebook has none).';

    this.node.append(
      h(
        'p',
        { class: 'jp-DLInfra-submitNote' },
        'Runs ',
        h('code', { class: 'jp-DLInfra-submitPath', title: options.path }, options.path),
        ' as a batch job, as saved on disk. ',
        options.dirty
          ? h('strong', {}, 'The notebook has unsaved changes: it is saved when you submit.')
          : 'The notebook is saved when you submit.'
      ),
      field('name', 'Name', this._name),
      field('gpus', 'GPUs', this._gpus, d.gpus > 0 ? 'From the notebook\'s %gpu line.' : null),
      field(
        'nodes',
        'Nodes',
        this._nodes,
        'Run as ranks, one per GPU, over this many nodes, with torchrun\'s environment ' +
          '(RANK, WORLD_SIZE, MASTER_ADDR...). Empty: one process with all the GPUs.'
      ),
      field('model', 'GPU model', this._gpuModel),
      h(
        'datalist',
        { id: 'dlinfra-submit-models' },
        options.models.map(m => h('option', { value: m }))
      ),
      field(
        'priority_class',
        'Class',
        this._class,
        options.schedulingError
          ? `Cannot read the priority classes: ${options.schedulingError}`
          : classes.length > 0
            ? 'Higher classes are served first; jobs of a preemptible class may be stopped ' +
              'and queued again for a higher one.'
            : null
      ),
      field(
        'priority',
        'Priority',
        this._priority,
        '-1000 to 1000; higher runs first among your jobs of a class.'
      ),
      field(
        'backend',
        'Backend',
        this._backend,
        options.backendsError ? `Cannot read the backends: ${options.backendsError}` : null
      ),
      field('after', 'Run after', afterRow, 'Jobs that must succeed first.', false, this._after),
      field('parameters', 'Parameters', this._parameters, paramsHelp, true),
      field(
        'sweep',
        'Sweep',
        this._sweep,
        'Optional JSON object of name → list of values: one job per combination.',
        true
      ),
      this._error
    );
  }

  /** The submission's answer, once made. */
  result: JobSubmission | null = null;

  getValue(): JobSubmission | null {
    return this.result;
  }

  /** The notebook path the job runs (the contents API's path). */
  get path(): string {
    return this._path;
  }
  set path(value: string) {
    this._path = value;
  }

  /** The request the fields make; throws a `FieldError` naming the field that is wrong. */
  request(): JobRequest {
    for (const control of this.node.querySelectorAll('[aria-invalid]')) {
      control.removeAttribute('aria-invalid');
    }
    const request: JobRequest = { path: this._path };
    const name = this._name.value.trim();
    if (name) {
      request.name = name;
    }
    const gpus = wholeNumber(this._gpus, 'GPUs', 0);
    if (gpus !== undefined) {
      request.gpus = gpus;
    }
    const nodes = wholeNumber(this._nodes, 'Nodes', 1);
    if (nodes !== undefined) {
      request.nodes = nodes;
    }
    const model = this._gpuModel.value.trim();
    if (model) {
      request.model = model;
    }
    const priority = wholeNumber(this._priority, 'Priority', -1000, 1000);
    if (priority !== undefined) {
      request.priority = priority;
    }
    if (this._class.value) {
      request.priority_class = this._class.value;
    }
    if (this._backend.value) {
      request.backend = this._backend.value;
    }
    const after = this._after.value
      .split(/[\s,]+/)
      .map(s => s.replace(/^#/, ''))
      .filter(Boolean);
    if (after.length > 0) {
      const bad = after.find(s => !/^\d+$/.test(s) || Number(s) <= 0);
      if (bad !== undefined) {
        throw new FieldError(this._after, `Run after takes job ids such as 12, 13: not "${bad}".`);
      }
      request.after = [...new Set(after.map(Number))];
    }
    const parameters = this._json(this._parameters, 'Parameters');
    if (parameters !== null && Object.keys(parameters).length > 0) {
      request.parameters = parameters;
    }
    const sweep = this._json(this._sweep, 'Sweep');
    if (sweep !== null && Object.keys(sweep).length > 0) {
      for (const [key, values] of Object.entries(sweep)) {
        if (!Array.isArray(values) || values.length === 0) {
          throw new FieldError(
            this._sweep,
            `Sweep: "${key}" must be a non-empty list of values, such as [1, 2].`
          );
        }
      }
      request.sweep = sweep as Record<string, unknown[]>;
    }
    return request;
  }

  /**
   * While a field is out of its range JupyterLab keeps Submit off (its dialog looks for
   * `:invalid` inputs): say which field and what it must be, as a click on Submit would.
   */
  private _explainInvalid(): void {
    const invalid = this.node.querySelector<HTMLElement>(':invalid');
    if (!invalid) {
      if (this._explaining) {
        this._explaining = false;
        this._error.hidden = true;
        this._error.textContent = '';
        for (const control of this.node.querySelectorAll('[aria-invalid]')) {
          control.removeAttribute('aria-invalid');
        }
      }
      return;
    }
    let message: string;
    try {
      this.request();
      const label = this.node.querySelector(`label[for="${invalid.id}"]`)?.textContent;
      const said = (invalid as HTMLInputElement).validationMessage || 'is not valid';
      message = `${label ?? 'A field'}: ${said}`;
    } catch (error) {
      message = (error as Error).message;
    }
    invalid.setAttribute('aria-invalid', 'true');
    this._explaining = true;
    this._error.hidden = false;
    this._error.textContent = message;
  }

  /** Show an error (the server's message, or a field's), or hide it with null. */
  setError(message: string | null, control?: HTMLElement): void {
    this._explaining = false;
    this._error.hidden = !message;
    this._error.textContent = message ?? '';
    if (control) {
      control.setAttribute('aria-invalid', 'true');
      control.focus();
    }
  }

  setBusy(busy: boolean): void {
    this.node.setAttribute('aria-busy', String(busy));
  }

  protected onAfterAttach(): void {
    requestAnimationFrame(() => {
      this._name.focus();
      this._name.select();
    });
  }

  private _json(control: HTMLTextAreaElement, what: string): Record<string, unknown> | null {
    const text = control.value.trim();
    if (!text) {
      return null;
    }
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (error) {
      throw new FieldError(control, `${what} must be a JSON object: ${(error as Error).message}`);
    }
    if (!value || typeof value !== 'object' || Array.isArray(value)) {
      throw new FieldError(control, `${what} must be a JSON object such as {"lr": 0.1}.`);
    }
    return value as Record<string, unknown>;
  }

  private _path: string;
  private _name: HTMLInputElement;
  private _gpus: HTMLInputElement;
  private _nodes: HTMLInputElement;
  private _gpuModel: HTMLInputElement;
  private _priority: HTMLInputElement;
  private _class: HTMLSelectElement;
  private _backend: HTMLSelectElement;
  private _after: HTMLInputElement;
  private _parameters: HTMLTextAreaElement;
  private _sweep: HTMLTextAreaElement;
  private _error: HTMLElement;
  /** The error shown is why Submit is off (an input out of its range), not the server's. */
  private _explaining = false;
}

/* ---------------------------------------------------------------- the dialog */

/** The index of the Submit button among the dialog's buttons. */
const SUBMIT_INDEX = 1;

/**
 * A dialog that stays open while its Submit button's work runs, and when it fails (showing
 * why in the form); it closes once the work succeeded.
 */
class SubmitDialog extends Dialog<JobSubmission | null> {
  constructor(
    options: Partial<Dialog.IOptions<JobSubmission | null>>,
    private _form: SubmitForm,
    private _submit: () => Promise<boolean>
  ) {
    super(options);
  }

  resolve(index?: number): void {
    const chosen = index ?? SUBMIT_INDEX;
    if (chosen !== SUBMIT_INDEX || this._done) {
      super.resolve(index);
      return;
    }
    if (this._busy) {
      return;
    }
    this._setBusy(true);
    this._submit()
      .catch(error => {
        this._form.setError((error as Error).message ?? String(error));
        return false;
      })
      .then(ok => {
        this._setBusy(false);
        if (ok && !this.isDisposed) {
          this._done = true;
          super.resolve(index);
          if (!this.isDisposed) {
            // (a stale validation state kept it open: the job is submitted all the same)
            this.dispose();
          }
        }
      });
  }

  private _setBusy(busy: boolean): void {
    this._busy = busy;
    if (this.isDisposed) {
      return;
    }
    this._form.setBusy(busy);
    const button = this.node.querySelector<HTMLButtonElement>('.jp-Dialog-button.jp-mod-accept');
    if (button) {
      button.disabled = busy;
    }
  }

  private _busy = false;
  private _done = false;
}

/**
 * Open the submit dialog for a notebook: prefilled from it, saved when submitted, and kept open
 * with the server's message when the submission is refused.
 */
export async function openSubmitDialog(
  app: JupyterFrontEnd,
  model: DLInfraModel,
  panel: NotebookPanel
): Promise<JobSubmission | null> {
  await panel.context.ready;
  let backends: JobBackends | null = null;
  let backendsError: string | null = null;
  // The classes come from the scheduling policy; a server without one offers none.
  const schedulingRead = model.loadScheduling().then(
    view => ({ policy: view.policy, error: null }),
    (error: unknown) => ({
      policy: null,
      error:
        error instanceof DLInfraApiError && error.status === 404 && error.reason === 'not_found'
          ? null
          : (error as Error).message ?? String(error)
    })
  );
  try {
    backends = await model.backends();
  } catch (error) {
    if (
      error instanceof DLInfraApiError &&
      (error.reason === 'no_jobs' || (error.status === 404 && error.reason === 'not_found'))
    ) {
      await showErrorMessage(
        'Cannot submit a job',
        `This server does not run batch jobs: ${error.message}`
      );
      return null;
    }
    backendsError = (error as Error).message ?? String(error);
  }
  const context = panel.context;
  const defaults = notebookDefaults(context.localPath, cellsOf(panel));
  const models = [...new Set(model.cluster?.nodes.flatMap(n => n.gpus.map(g => g.model)) ?? [])];
  const scheduling = await schedulingRead;
  const form = new SubmitForm({
    path: context.localPath,
    defaults,
    backends,
    backendsError,
    scheduling: scheduling.policy,
    schedulingError: scheduling.error,
    activeJobs: model.activeJobs(),
    models,
    dirty: context.model.dirty
  });

  const submit = async (): Promise<boolean> => {
    form.setError(null);
    form.path = context.localPath;
    let request: JobRequest;
    try {
      request = form.request();
    } catch (error) {
      form.setError((error as Error).message, (error as FieldError).control);
      return false;
    }
    if (context.model.dirty) {
      try {
        await context.save();
      } catch (error) {
        form.setError(`Cannot save the notebook: ${(error as Error).message ?? error}`);
        return false;
      }
      // (a rename while saving changes the path)
      request.path = context.localPath;
    }
    try {
      const answer = await model.submitJob(request);
      form.result = answer;
      notifySubmitted(app, answer);
      return true;
    } catch (error) {
      form.setError((error as Error).message ?? String(error));
      return false;
    }
  };

  const dialog = new SubmitDialog(
    {
      title: 'Submit as job',
      body: form,
      buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Submit' })],
      focusNodeSelector: 'input[name=name]',
      hasClose: true
    },
    form,
    submit
  );
  dialog.addClass('jp-DLInfra-submitDialog');
  try {
    await dialog.launch();
  } catch {
    // disposed
  }
  return form.result;
}
