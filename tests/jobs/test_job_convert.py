"""Notebook -> job conversion: reading and checking, the %gpu request, parameters, the snapshot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat import NotebookNode

from jupyter_dlinfra.core.errors import InvalidRequest
from jupyter_dlinfra.jobs import convert
from jupyter_dlinfra.jobs.convert import (
    INJECTED_TAG,
    GpuLine,
    NotebookError,
    ParameterError,
    gpu_request,
    prepare,
    read_notebook,
    snapshot,
)

KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def notebook(*cells: NotebookNode, kernel: dict[str, str] | None = None) -> NotebookNode:
    nb = nbformat.v4.new_notebook(cells=list(cells))
    nb.metadata["kernelspec"] = kernel or KERNELSPEC
    return nb


def code(source: str, *tags: str) -> NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def md(source: str) -> NotebookNode:
    return nbformat.v4.new_markdown_cell(source)


def as_json(nb: NotebookNode) -> dict[str, Any]:
    return json.loads(nbformat.writes(nb))  # type: ignore[no-any-return]


def ready(nb: NotebookNode, **parameters: Any) -> convert.Prepared:
    return prepare(nb, parameters=parameters, max_parameter_bytes=64 * 1024)


def test_public_api_is_pinned() -> None:
    assert sorted(convert.__all__) == sorted(
        [
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
    )


def test_errors_are_bad_requests_with_their_own_reason() -> None:
    assert issubclass(NotebookError, InvalidRequest)
    assert issubclass(ParameterError, InvalidRequest)
    assert NotebookError("x").reason == "bad_notebook"
    assert ParameterError("x").reason == "bad_parameters"


# -- read_notebook ------------------------------------------------------------------------------


def test_reads_a_current_notebook_from_bytes_or_text() -> None:
    raw = nbformat.writes(notebook(md("# title"), code("x = 1")))
    for given in (raw, raw.encode()):
        nb = read_notebook(given, max_bytes=10**6)
        assert (nb.nbformat, nb.nbformat_minor) == (4, 5)
        assert [c.cell_type for c in nb.cells] == ["markdown", "code"]
        assert nb.cells[1].source == "x = 1"


def test_an_older_v4_notebook_gets_cell_ids() -> None:
    data = as_json(notebook(code("x = 1"), code("y = 2")))
    data["nbformat_minor"] = 2
    for cell in data["cells"]:
        del cell["id"]
    nb = read_notebook(json.dumps(data), max_bytes=10**6)
    assert nb.nbformat_minor == 5
    ids = [cell.id for cell in nb.cells]
    assert all(ids) and len(set(ids)) == 2
    nbformat.validate(nb)


def test_duplicate_cell_ids_are_repaired() -> None:
    data = as_json(notebook(code("x = 1"), code("y = 2")))
    data["cells"][1]["id"] = data["cells"][0]["id"]
    nb = read_notebook(json.dumps(data), max_bytes=10**6)
    assert nb.cells[0].id != nb.cells[1].id


def test_a_v3_notebook_is_upgraded() -> None:
    v3 = nbformat.v3.new_notebook(
        worksheets=[
            nbformat.v3.new_worksheet(cells=[nbformat.v3.new_code_cell(input="%gpu 2\nprint(1)")])
        ]
    )
    nb = read_notebook(nbformat.writes(v3, version=3), max_bytes=10**6)
    assert (nb.nbformat, nb.nbformat_minor) == (4, 5)
    assert nb.cells[0].source == "%gpu 2\nprint(1)"
    assert gpu_request(nb) == GpuLine(count=2, model=None, cell_index=0, line_no=1)


def test_size_limit_names_both_sizes() -> None:
    raw = nbformat.writes(notebook(code("x = 'é' * 10")))
    size = len(raw.encode())
    read_notebook(raw, max_bytes=size)
    with pytest.raises(NotebookError) as err:
        read_notebook(raw, max_bytes=size - 1)
    assert f"{size:,} bytes" in str(err.value)
    assert f"at most {size - 1:,} bytes" in str(err.value)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff\xfe{}", "not UTF-8 text (byte 0"),
        ('{"cells": [', "not valid JSON: Expecting value at line 1, column 12"),
        ("[1, 2]", "not a JSON object"),
        ('{"cells": []}', "no 'nbformat' version"),
        ('{"nbformat": "4", "cells": []}', "no 'nbformat' version"),
        ('{"nbformat": 2, "cells": []}', "nbformat 2 notebooks are not supported"),
        ('{"nbformat": 4, "nbformat_minor": 5, "metadata": {}}', "has no list of 'cells'"),
        ('{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [1]}', "cell 1 is not"),
    ],
)
def test_unreadable_notebooks_say_why(raw: str | bytes, message: str) -> None:
    with pytest.raises(NotebookError) as err:
        read_notebook(raw, max_bytes=10**6)
    assert message in str(err.value)


def test_schema_errors_point_at_the_cell() -> None:
    data = as_json(notebook(md("a"), code("x = 1"), code("y")))
    del data["cells"][2]["source"]
    with pytest.raises(NotebookError) as err:
        read_notebook(json.dumps(data), max_bytes=10**6)
    assert str(err.value) == (
        "the notebook is not valid nbformat: cell 3: 'source' is a required property"
    )


def test_schema_errors_inside_a_cell_name_the_field() -> None:
    data = as_json(notebook(md("a"), code("x = 1")))
    data["cells"][1]["outputs"] = [{"output_type": "stream", "text": "hi"}]
    with pytest.raises(NotebookError) as err:
        read_notebook(json.dumps(data), max_bytes=10**6)
    assert str(err.value) == (
        "the notebook is not valid nbformat: cell 2, outputs[0]: 'name' is a required property"
    )


def test_an_unknown_cell_type_is_named() -> None:
    data = as_json(notebook(md("a"), code("x = 1")))
    data["cells"][1]["cell_type"] = "kode"
    with pytest.raises(NotebookError, match="cell 2: cell_type 'kode' is not one of"):
        read_notebook(json.dumps(data), max_bytes=10**6)


def test_notebook_metadata_errors_name_the_field() -> None:
    data = as_json(notebook(code("x = 1")))
    data["metadata"]["kernelspec"] = {"name": "python3"}
    with pytest.raises(NotebookError, match="metadata, kernelspec: 'display_name' is a required"):
        read_notebook(json.dumps(data), max_bytes=10**6)


# -- gpu_request --------------------------------------------------------------------------------


def test_no_gpu_line_means_no_request() -> None:
    assert gpu_request(notebook(code("x = 1"), md("%gpu 4"))) is None


def test_finds_the_first_request_with_its_model_and_place() -> None:
    nb = notebook(
        md("%gpu 8 in markdown does not count"),
        code("# %gpu 7 in a comment does not count\n%gpu\n%gpu release\n%gpu keep"),
        code("import os\n%gpu 2 --model A100 --timeout 60\nx = 1"),
        code("%gpu 4"),
    )
    assert gpu_request(nb) == GpuLine(count=2, model="A100", cell_index=2, line_no=2)


def test_a_request_names_its_nodes_for_a_distributed_job() -> None:
    nb = notebook(code("%gpu 16 --nodes 2\nimport torch"))
    assert gpu_request(nb) == GpuLine(count=16, model=None, nodes=2, cell_index=0, line_no=1)
    ready = prepare(nb, parameters={}, max_parameter_bytes=1024)
    assert (ready.gpus, ready.nodes) == (16, 2)
    assert ready.notebook.cells[0].source.startswith("# %gpu 16 --nodes 2  -- applied by the job")


def test_profile_and_other_cell_magics_are_not_requests() -> None:
    nb = notebook(
        code("%gpu profile 30"),
        code("%%gpu profile\ntrain()"),
        code("%%bash\n%gpu 3\necho not python"),
        code("%gpus 3\n%gpu_other 1"),
        code("if True:\n    %gpu 1 --model 'H100 80GB'"),
    )
    assert gpu_request(nb) == GpuLine(count=1, model="H100 80GB", cell_index=4, line_no=2)


def test_a_bad_gpu_line_is_refused_with_its_place() -> None:
    nb = notebook(code("x = 1"), code("y = 2\n%gpu two"))
    with pytest.raises(NotebookError) as err:
        gpu_request(nb)
    assert "cell 2, line 2: '%gpu two' is not a valid %gpu line" in str(err.value)
    assert "expected a number of GPUs" in str(err.value)


# -- prepare ------------------------------------------------------------------------------------


def test_every_gpu_line_is_neutralised() -> None:
    nb = notebook(
        code("%gpu 2 --model A100\nimport os\r\n%gpu\n"),
        code("%gpu 4\n%gpu release\n%gpu profile 10"),
        code("%%gpu profile\ntrain = 1"),
        code("for _ in range(1):\n    %gpu keep\nx = 1"),
        code("%%bash\n%gpu 3"),
    )
    got = ready(nb)
    assert (got.gpus, got.model) == (2, "A100")
    sources = [cell.source for cell in got.notebook.cells]
    assert sources[0] == (
        "# %gpu 2 --model A100  -- applied by the job: its GPUs are granted at launch\n"
        "import os\r\n"
        "# %gpu  -- skipped in a job\n"
    )
    assert sources[1] == (
        "# %gpu 4  -- skipped in a job: it gets the GPUs of the notebook's first %gpu request\n"
        "# %gpu release  -- skipped in a job\n"
        "# %gpu profile 10  -- skipped in a job"
    )
    assert sources[2] == (
        "# %%gpu profile  -- skipped in a job: the cell runs without profiling\ntrain = 1"
    )
    # a comment alone would leave the loop without a body
    assert sources[3] == "for _ in range(1):\n    pass  # %gpu keep  -- skipped in a job\nx = 1"
    assert sources[4] == "%%bash\n%gpu 3"
    assert gpu_request(got.notebook) is None
    compile(got.script, "script.py", "exec")


def test_no_gpu_line_means_no_gpus() -> None:
    got = ready(notebook(code("x = 1")))
    assert (got.gpus, got.model) == (0, None)


def test_parameters_go_right_after_the_parameters_cell() -> None:
    nb = notebook(
        md("# Training"),
        code("import math"),
        code("lr = 0.1\nepochs = 1\nname = 'x'", "parameters"),
        code("print(lr)"),
    )
    got = ready(nb, lr=0.01, epochs=3, flags={"amp": True, "tags": ["a", None]}, name="run-1")
    cells = got.notebook.cells
    assert len(cells) == 5
    injected = cells[3]
    assert injected.cell_type == "code"
    assert injected.metadata["tags"] == [INJECTED_TAG]
    assert injected.source == (
        "# Parameters injected by the job, overriding those of cell 3\n"
        "lr = 0.01\n"
        "epochs = 3\n"
        "flags = {'amp': True, 'tags': ['a', None]}\n"
        "name = 'run-1'"
    )
    assert cells[4].source == "print(lr)"
    namespace: dict[str, Any] = {}
    exec(injected.source, namespace)
    assert namespace["flags"] == {"amp": True, "tags": ["a", None]}
    assert got.parameters == {
        "lr": 0.01,
        "epochs": 3,
        "flags": {"amp": True, "tags": ["a", None]},
        "name": "run-1",
    }
    nbformat.validate(got.notebook)


def test_without_a_parameters_cell_they_come_first() -> None:
    got = ready(notebook(code("print(lr)")), lr=0.5)
    first = got.notebook.cells[0]
    assert first.metadata["tags"] == [INJECTED_TAG]
    assert "no cell tagged 'parameters'" in first.source
    assert first.source.endswith("\nlr = 0.5")
    assert got.notebook.cells[1].source == "print(lr)"


def test_an_earlier_injection_is_replaced() -> None:
    nb = notebook(
        code("lr = 0.1", "parameters"),
        code("lr = 0.2", INJECTED_TAG),
        code("print(lr)"),
    )
    got = ready(nb, lr=0.3)
    assert [c.source.splitlines()[-1] for c in got.notebook.cells] == [
        "lr = 0.1",
        "lr = 0.3",
        "print(lr)",
    ]


def test_no_parameters_no_injected_cell() -> None:
    nb = notebook(code("lr = 0.1", "parameters"), code("print(lr)"))
    got = ready(nb)
    assert len(got.notebook.cells) == 2
    assert got.parameters == {}


def test_tuples_become_lists_as_json_would_give_them() -> None:
    got = ready(notebook(code("x")), sizes=(1, 2))
    assert got.parameters == {"sizes": [1, 2]}
    assert "sizes = [1, 2]" in got.notebook.cells[0].source


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"1x": 1}, "parameter name '1x' is not a Python identifier"),
        ({"learning-rate": 1}, "parameter name 'learning-rate' is not a Python identifier"),
        ({"class": 1}, "parameter name 'class' is a Python keyword"),
        ({"_secret": 1}, "parameter name '_secret' starts with '_'"),
        ({"lr": object()}, "parameter 'lr' is not a JSON value"),
        ({"lr": math.nan}, "parameter 'lr' is not a JSON value"),
        ({"lr": {1j: 2}}, "parameter 'lr' is not a JSON value"),
        ({"blob": "x" * 200}, "the parameters take 212 bytes as JSON; a job takes at most 100"),
    ],
)
def test_bad_parameters_are_refused(parameters: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError) as err:
        prepare(notebook(code("x")), parameters=parameters, max_parameter_bytes=100)
    assert message in str(err.value)


def test_deeply_nested_parameters_are_refused() -> None:
    value: Any = 1
    for _ in range(convert.MAX_PARAMETER_DEPTH + 1):
        value = [value]
    with pytest.raises(ParameterError, match="nested more than"):
        ready(notebook(code("x")), deep=value)


def test_the_input_notebook_is_not_mutated() -> None:
    output = nbformat.v4.new_output("stream", name="stdout", text="old\n")
    nb = notebook(
        code("%gpu 2\nlr = 0.1", "parameters"),
        nbformat.v4.new_code_cell("print(lr)", outputs=[output], execution_count=7),
    )
    nb.metadata["widgets"] = {"state": {}}
    before = nbformat.writes(nb)
    got = ready(nb, lr=0.5)
    assert nbformat.writes(nb) == before
    assert got.notebook is not nb
    # the job makes its own outputs
    assert got.notebook.cells[2].outputs == []
    assert got.notebook.cells[2].execution_count is None
    assert "widgets" not in got.notebook.metadata


def test_the_script_has_the_code_and_the_injected_parameters() -> None:
    nb = notebook(
        md("# Train"),
        code("%gpu 1\nlr = 0.1", "parameters"),
        code("%matplotlib inline\nprint(f'lr={lr}')"),
    )
    script = ready(nb, lr=0.5).script
    assert "print(f'lr={lr}')" in script
    assert "lr = 0.5" in script
    assert "# %gpu 1  -- applied by the job" in script
    assert "get_ipython().run_line_magic('matplotlib', 'inline')" in script
    assert script.index("lr = 0.1") < script.index("lr = 0.5") < script.index("print(f'lr")


def test_any_kernel_is_accepted_and_recorded() -> None:
    nb = notebook(code("x <- 1"), kernel={"name": "ir", "display_name": "R", "language": "R"})
    assert ready(nb).kernel_name == "ir"
    bare = nbformat.v4.new_notebook(cells=[code("x = 1")])
    assert ready(bare).kernel_name == "python3"


def test_an_old_minor_version_can_be_prepared_directly() -> None:
    nb = notebook(code("x = 1"))
    nb.nbformat_minor = 4
    del nb.cells[0]["id"]
    got = ready(nb, lr=1)
    assert got.notebook.nbformat_minor == 5
    nbformat.validate(got.notebook)


# -- snapshot -----------------------------------------------------------------------------------


def test_snapshot_writes_what_the_runner_needs(tmp_path: Path) -> None:
    got = ready(notebook(code("%gpu 2 --model A100\nlr = 0.1", "parameters")), lr=0.5)
    jobdir = tmp_path / "jobs" / "1-train"
    snapshot(got, jobdir, spec={"job_id": 1, "cwd": "/data/project", "timeout": 600})
    assert sorted(p.name for p in jobdir.iterdir()) == ["input.ipynb", "script.py", "spec.json"]
    written = nbformat.read(jobdir / "input.ipynb", as_version=4)
    nbformat.validate(written)
    assert nbformat.writes(written) == nbformat.writes(got.notebook)
    assert (jobdir / "script.py").read_text() == got.script
    assert json.loads((jobdir / "spec.json").read_text()) == {
        "job_id": 1,
        "cwd": "/data/project",
        "timeout": 600,
        "kernel_name": "python3",
        "gpus": 2,
        "model": "A100",
        "parameters": {"lr": 0.5},
    }


def test_snapshot_defaults_cwd_to_the_job_dir_and_the_caller_wins(tmp_path: Path) -> None:
    got = ready(notebook(code("x = 1")))
    snapshot(got, tmp_path, spec={"kernel_name": "python3-2gpu"})
    spec = json.loads((tmp_path / "spec.json").read_text())
    assert spec["cwd"] == str(tmp_path)
    assert spec["kernel_name"] == "python3-2gpu"
    assert spec["timeout"] is None


@pytest.mark.parametrize("name", ["ddp.ipynb", "accelerate.ipynb"])
def test_the_distributed_examples_ask_for_two_ranks(name: str) -> None:
    path = Path(__file__).parents[2] / "docs" / "examples" / name
    nb = convert.read_notebook(path.read_bytes(), max_bytes=2**20)
    ready = prepare(nb, parameters={}, max_parameter_bytes=1024)
    assert (ready.gpus, ready.nodes) == (2, 1)
    # they read the ranks' environment (or let Accelerate read it), and compile
    source = "\n".join(c.source for c in ready.notebook.cells if c.cell_type == "code")
    assert "LOCAL_RANK" in source or "Accelerator()" in source
    compile(ready.script, name, "exec")
