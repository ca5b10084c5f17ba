"""A notebook becomes a batch job: read and check it, find its GPU request, inject parameters.

Pure functions, no server: the server calls them at submission, so everything a person got wrong
(a broken notebook, a bad parameter) is refused then, with a message that says what to fix, as a
:class:`~jupyter_dlinfra.core.errors.InvalidRequest` (HTTP 400 at the boundary).

- :func:`read_notebook` checks the size, the JSON and the nbformat schema, and upgrades to v4.5.
- :func:`gpu_request` finds the notebook's first ``%gpu N [--model M] [--nodes K]`` line: the
  job's GPUs (and, with ``--nodes``, its ranks: ``jobs/shape.py``).
- :func:`prepare` returns a new notebook for the job: every ``%gpu`` line neutralised (the job's
  GPUs are granted at launch, and there is no ledger to talk to from inside a job), parameters
  injected papermill-style, outputs of the interactive session dropped, and the Python script.
- :func:`snapshot` writes the job directory that the in-job runner (``runner.py``) needs.

Only lines that IPython runs as the ``%gpu`` magic count: a ``%gpu`` at the start of a line of a
code cell (after indentation), and ``%%gpu`` as a cell's first line. Comments do not count, nor do
the bodies of other cell magics (``%%bash``, ``%%writefile``: not Python). A ``%gpu`` line inside
a triple-quoted string is taken as a magic; IPython would not run it, but such notebooks are rare
enough not to warrant tokenising every cell.
"""

from __future__ import annotations

import contextlib
import copy
import json
import keyword
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
from nbformat import NotebookNode
from nbformat.validator import normalize

from jupyter_dlinfra.core.errors import InvalidRequest
from jupyter_dlinfra.jobs.runner import JobDir, write_atomic
from jupyter_dlinfra.kernel.grammar import Command, UsageError, parse_line

__all__ = [
    "DEFAULT_KERNEL",
    "DEFAULT_MAX_NOTEBOOK_BYTES",
    "DEFAULT_MAX_PARAMETER_BYTES",
    "INJECTED_TAG",
    "MAX_PARAMETER_DEPTH",
    "PARAMETERS_TAG",
    "GpuLine",
    "NotebookError",
    "ParameterError",
    "Prepared",
    "gpu_request",
    "prepare",
    "read_notebook",
    "snapshot",
]

DEFAULT_MAX_NOTEBOOK_BYTES = 16 * 2**20
DEFAULT_MAX_PARAMETER_BYTES = 64 * 2**10
#: Python's parser gives up on literals nested much deeper than this (about 200 brackets)
MAX_PARAMETER_DEPTH = 64
DEFAULT_KERNEL = "python3"
PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"

_CELL_TYPES = ("code", "markdown", "raw")
_LINE_MAGIC = re.compile(r"^(?P<indent>[ \t]*)%gpu(?=\s|$)(?P<args>.*)$")
_CELL_MAGIC = re.compile(r"^[ \t]*%%(?P<name>\w+)(?P<args>.*)$")
_MESSAGE_CHARS = 300


class NotebookError(InvalidRequest):
    """The notebook cannot be run as a job; ``str()`` says where and why."""

    reason = "bad_notebook"


class ParameterError(InvalidRequest):
    """A parameter override is not usable; ``str()`` names the parameter."""

    reason = "bad_parameters"


@dataclass(frozen=True, kw_only=True)
class GpuLine:
    """A ``%gpu N`` request found in a notebook."""

    count: int
    model: str | None
    #: ``--nodes K``: the job's ranks span K nodes (see ``jobs/shape.py``); None: not said
    nodes: int | None = None
    #: position in ``nb.cells``, from 0 (messages say ``cell {cell_index + 1}``)
    cell_index: int
    #: line within the cell's source, from 1
    line_no: int


@dataclass(frozen=True, kw_only=True)
class Prepared:
    """A notebook made ready to run as a job; ``notebook`` is a new object, never the input."""

    notebook: NotebookNode
    #: from the notebook's first ``%gpu N`` line; 0 when it has none
    gpus: int
    model: str | None
    #: that line's ``--nodes`` (a distributed job), None when it says none
    nodes: int | None = None
    #: the validated parameters, as JSON gives them back (tuples are lists)
    parameters: Mapping[str, Any]
    #: the prepared notebook as a Python script (nbconvert's PythonExporter), for people to read
    script: str
    kernel_name: str


# -- reading ------------------------------------------------------------------------------------


def read_notebook(raw: bytes | str, *, max_bytes: int) -> NotebookNode:
    """Parse, check and upgrade a notebook file's content to nbformat 4.5 (cells with ids).

    Raises :class:`NotebookError` for anything that is not a notebook Jupyter could open.
    """
    data = raw.encode("utf-8") if isinstance(raw, str) else raw
    if len(data) > max_bytes:
        raise NotebookError(
            f"the notebook is {len(data):,} bytes; a job takes notebooks of at most "
            f"{max_bytes:,} bytes (clearing its outputs usually makes it small enough)"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise NotebookError(
            f"the notebook is not UTF-8 text (byte {err.start} cannot be decoded)"
        ) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise NotebookError(
            f"the notebook is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}"
        ) from None
    except RecursionError:
        raise NotebookError("the notebook is not valid JSON: it is nested too deeply") from None
    major, minor = _check_shape(obj)
    with warnings.catch_warnings():
        # normalize() warns about each id it adds or repairs: that is what we ask of it
        warnings.simplefilter("ignore")
        with contextlib.suppress(Exception):  # the validation below says what is wrong
            _, obj = normalize(obj)
        try:
            nb = nbformat.versions[major].to_notebook_json(obj, minor=minor)
        except Exception as err:
            raise NotebookError(f"the notebook is not valid nbformat: {err}") from None
        _validate(nb)
        # to 4.5 from 3.x and from 4.x alike (convert() leaves a 4.x at its minor version)
        nb = nbformat.v4.upgrade(nb)  # type: ignore[no-untyped-call]
        _validate(nb)
    # the v3 reader's nodes are another class, which convert() keeps
    result: NotebookNode = nbformat.from_dict(nb)  # type: ignore[no-untyped-call]
    return result


def _check_shape(obj: Any) -> tuple[int, int]:
    """What the schema check cannot explain well: the version, and cells that are no cells."""
    if not isinstance(obj, dict):
        raise NotebookError("the notebook is not a JSON object: is this an .ipynb file?")
    major = obj.get("nbformat")
    if isinstance(major, bool) or not isinstance(major, int):
        raise NotebookError("the notebook has no 'nbformat' version number: is it an .ipynb file?")
    if major not in (3, 4):
        raise NotebookError(
            f"nbformat {major} notebooks are not supported (3 and 4 are); "
            "open and save it in a current Jupyter to upgrade it"
        )
    minor = obj.get("nbformat_minor", 0)
    if isinstance(minor, bool) or not isinstance(minor, int) or minor < 0:
        raise NotebookError(f"the notebook's 'nbformat_minor' is {minor!r}, not a whole number")
    if major == 3:
        return major, minor  # v3 nests cells in worksheets; the schema check explains those
    cells = obj.get("cells")
    if not isinstance(cells, list):
        raise NotebookError("the notebook is not valid nbformat: it has no list of 'cells'")
    for i, cell in enumerate(cells):
        if not isinstance(cell, dict):
            raise NotebookError(
                f"the notebook is not valid nbformat: cell {i + 1} is not an object"
            )
        kind = cell.get("cell_type")
        if kind not in _CELL_TYPES:
            raise NotebookError(
                f"the notebook is not valid nbformat: cell {i + 1}: cell_type {kind!r} is not "
                "one of code, markdown, raw"
            )
    return major, minor


def _validate(nb: NotebookNode) -> None:
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as err:
        raise NotebookError(
            f"the notebook is not valid nbformat: {_where(list(err.absolute_path))}"
            f"{_shorten(err.message)}"
        ) from None
    except Exception as err:  # nbformat's own checks fail with KeyError and the like
        raise NotebookError(f"the notebook is not valid nbformat: {_shorten(str(err))}") from None


def _where(path: list[Any]) -> str:
    """``['cells', 2, 'outputs', 0]`` -> ``'cell 3, outputs[0]: '``."""
    if not path:
        return ""
    if path[0] == "cells" and len(path) > 1 and isinstance(path[1], int):
        head, path = f"cell {path[1] + 1}", path[2:]
    else:
        head, path = str(path[0]), path[1:]
    rest = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    return f"{head}, {rest}: " if rest else f"{head}: "


def _shorten(message: str) -> str:
    message = " ".join(message.split())
    return message if len(message) <= _MESSAGE_CHARS else message[: _MESSAGE_CHARS - 3] + "..."


def _kernel_name(nb: NotebookNode) -> str:
    """The kernelspec the notebook was written for (any language; ``python3`` when unset)."""
    spec = nb.get("metadata", {}).get("kernelspec") or {}
    name = spec.get("name") if isinstance(spec, Mapping) else None
    return name if isinstance(name, str) and name else DEFAULT_KERNEL


# -- %gpu lines ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _MagicLine:
    cell_index: int
    #: from 0, in ``source.splitlines(keepends=True)``
    line_index: int
    indent: str
    text: str
    #: None for ``%%gpu`` (a cell magic: only profiling)
    command: Command | None


def _magic_lines(nb: NotebookNode) -> Iterator[_MagicLine]:
    for ci, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        lines = str(cell.source).splitlines(keepends=True)
        first = next((i for i, line in enumerate(lines) if line.strip()), None)
        if first is None:
            continue
        head = _CELL_MAGIC.match(lines[first].rstrip("\r\n"))
        if head is not None:
            if head.group("name") != "gpu":
                continue  # another cell magic's body is not Python (%%bash, %%writefile)
            yield _MagicLine(ci, first, "", lines[first].strip(), None)
        for li, line in enumerate(lines):
            found = _LINE_MAGIC.match(line.rstrip("\r\n"))
            if found is None or (head is not None and li == first):
                continue
            text = line.strip()
            try:
                command = parse_line(found.group("args").strip())
            except UsageError as err:
                raise NotebookError(
                    f"cell {ci + 1}, line {li + 1}: {text!r} is not a valid %gpu line: {err}"
                ) from None
            yield _MagicLine(ci, li, found.group("indent"), text, command)


def gpu_request(nb: NotebookNode) -> GpuLine | None:
    """The notebook's first ``%gpu N`` request (show, release, keep and profile do not count).

    Raises :class:`NotebookError` for a ``%gpu`` line that the magic itself would refuse.
    """
    for found in _magic_lines(nb):
        if found.command is not None and found.command.action == "request":
            return GpuLine(
                count=found.command.count,
                model=found.command.model,
                nodes=found.command.nodes,
                cell_index=found.cell_index,
                line_no=found.line_index + 1,
            )
    return None


def _neutralised(found: _MagicLine, request: GpuLine | None) -> str:
    if found.command is None:
        note = "skipped in a job: the cell runs without profiling"
    elif found.command.action != "request":
        note = "skipped in a job"
    elif request is not None and (found.cell_index, found.line_index + 1) == (
        request.cell_index,
        request.line_no,
    ):
        note = "applied by the job: its GPUs are granted at launch"
    else:
        note = "skipped in a job: it gets the GPUs of the notebook's first %gpu request"
    comment = f"# {found.text}  -- {note}"
    # an indented magic may be a block's only statement: a bare comment would leave it empty
    return f"{found.indent}pass  {comment}" if found.indent else comment


# -- parameters ---------------------------------------------------------------------------------


def _checked_parameters(parameters: Mapping[str, Any], max_bytes: int) -> dict[str, Any]:
    if not isinstance(parameters, Mapping):
        raise ParameterError("parameters must be a JSON object of name: value")
    checked: dict[str, Any] = {}
    for name, value in parameters.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ParameterError(f"parameter name {name!r} is not a Python identifier")
        if keyword.iskeyword(name):
            raise ParameterError(f"parameter name {name!r} is a Python keyword")
        if name.startswith("_"):
            raise ParameterError(
                f"parameter name {name!r} starts with '_': such names are private to Python "
                "and IPython (_, __, _i...)"
            )
        try:
            checked[name] = json.loads(json.dumps(value, allow_nan=False))
        except (TypeError, ValueError):
            raise ParameterError(
                f"parameter {name!r} is not a JSON value (a string, number, true/false, null, "
                "or a list or object of those; NaN and infinity are not JSON)"
            ) from None
        except RecursionError:
            raise ParameterError(f"parameter {name!r} is nested too deeply") from None
        if _depth(checked[name]) > MAX_PARAMETER_DEPTH:
            raise ParameterError(
                f"parameter {name!r} is nested more than {MAX_PARAMETER_DEPTH} levels deep"
            )
    size = len(json.dumps(checked, ensure_ascii=False).encode("utf-8"))
    if size > max_bytes:
        raise ParameterError(
            f"the parameters take {size:,} bytes as JSON; a job takes at most {max_bytes:,} "
            "(pass large inputs as a file path instead)"
        )
    return checked


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
        deepest = max(deepest, level)
    return deepest


def _inject(nb: NotebookNode, parameters: Mapping[str, Any]) -> None:
    # a papermill-run notebook carries its last injection: these values replace it
    nb.cells = [c for c in nb.cells if INJECTED_TAG not in c.get("metadata", {}).get("tags", [])]
    anchor = next(
        (i for i, c in enumerate(nb.cells) if PARAMETERS_TAG in c.metadata.get("tags", [])), None
    )
    if anchor is None:
        header = (
            "# Parameters injected by the job. The notebook has no cell tagged "
            f"{PARAMETERS_TAG!r}, so they come first and its own values may override them."
        )
    else:
        header = f"# Parameters injected by the job, overriding those of cell {anchor + 1}"
    lines = [header, *(f"{name} = {value!r}" for name, value in parameters.items())]
    cell = nbformat.v4.new_code_cell(  # type: ignore[no-untyped-call]
        "\n".join(lines), metadata={"tags": [INJECTED_TAG]}
    )
    nb.cells.insert(0 if anchor is None else anchor + 1, cell)


# -- preparing and writing ----------------------------------------------------------------------


def prepare(
    nb: NotebookNode, *, parameters: Mapping[str, Any], max_parameter_bytes: int
) -> Prepared:
    """The job's notebook: ``%gpu`` lines neutralised, parameters injected, outputs dropped.

    No cell is injected when ``parameters`` is empty. ``nb`` is left as it was.
    Raises :class:`ParameterError` or :class:`NotebookError`.
    """
    checked = _checked_parameters(parameters, max_parameter_bytes)
    out = copy.deepcopy(nb)
    if out.nbformat_minor < 5:  # ids are needed for the injected cell
        out = nbformat.v4.upgrade(out)  # type: ignore[no-untyped-call]
    request = gpu_request(out)
    for found in list(_magic_lines(out)):
        cell = out.cells[found.cell_index]
        lines = str(cell.source).splitlines(keepends=True)
        ending = lines[found.line_index][len(lines[found.line_index].rstrip("\r\n")) :]
        lines[found.line_index] = _neutralised(found, request) + ending
        cell.source = "".join(lines)
    # the job makes its own outputs; stale ones would show in the report under cells not run
    for cell in out.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    out.metadata.pop("widgets", None)
    if checked:
        _inject(out, checked)
    return Prepared(
        notebook=out,
        gpus=request.count if request else 0,
        model=request.model if request else None,
        nodes=request.nodes if request else None,
        parameters=checked,
        script=_script(out),
        kernel_name=_kernel_name(out),
    )


def _script(nb: NotebookNode) -> str:
    from nbconvert import PythonExporter  # imports jinja2 and friends: only when converting

    body, _ = PythonExporter().from_notebook_node(nb)  # type: ignore[no-untyped-call]
    return str(body)


def snapshot(prepared: Prepared, jobdir: Path, *, spec: Mapping[str, Any]) -> None:
    """Write ``input.ipynb``, ``script.py`` and ``spec.json`` into ``jobdir`` (made if missing).

    ``spec.json`` holds ``spec`` plus what the runner needs, unless ``spec`` sets it already:
    ``kernel_name`` (the notebook's), ``cwd`` (default: ``jobdir``; give the notebook's own
    directory so that relative paths in the notebook work), ``timeout`` (per cell, seconds;
    None: none), and for the record ``gpus``, ``model`` and ``parameters``.
    """
    job = JobDir(Path(jobdir))
    job.path.mkdir(parents=True, exist_ok=True)
    full: dict[str, Any] = {
        "kernel_name": prepared.kernel_name,
        "cwd": str(job.path),
        "timeout": None,
        "gpus": prepared.gpus,
        "model": prepared.model,
        "parameters": dict(prepared.parameters),
    }
    full.update(spec)
    write_atomic(job.input, nbformat.writes(prepared.notebook))  # type: ignore[no-untyped-call]
    write_atomic(job.script, prepared.script)
    write_atomic(job.spec, json.dumps(full, indent=2, allow_nan=False) + "\n")
