"""`make lab` and `make test` install into .venv only when what the install consumes changed,
and `make lab` leaves the checkout as it found it.

The scripts run in a copy of the checkout's install inputs whose .venv/bin/python notes pip's
calls instead of making them (and hands everything else to this interpreter), and whose
.venv/bin/jupyter notes its arguments.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import install_state  # noqa: E402

sys.path.pop(0)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    scripts = ("scripts/venv.sh", "scripts/install_state.py", "scripts/lab.sh")
    for name in (*install_state.INPUTS, *scripts):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name)
        elif source.exists():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(
        "#!/bin/sh\n"
        'if [ "$1 $2" = "-m pip" ]; then\n'
        '    shift 2; echo "$*" >> "$(dirname "$0")/pip.log"; exit 0\n'
        "fi\n"
        f'exec "{sys.executable}" "$@"\n'
    )
    python.chmod(0o755)
    jupyter = root / ".venv" / "bin" / "jupyter"
    jupyter.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$(dirname "$0")/jupyter.args"\n')
    jupyter.chmod(0o755)
    return root


def pip_calls(root: Path, extra: str) -> list[str]:
    """Source venv.sh for ``extra`` and return the pip commands it ran."""
    log = root / ".venv" / "bin" / "pip.log"
    log.unlink(missing_ok=True)
    subprocess.run(
        ["bash", "-c", f"source scripts/venv.sh {extra}"], cwd=root, check=True, timeout=60
    )
    return log.read_text().splitlines() if log.exists() else []


def test_the_install_runs_once_then_only_after_a_change(checkout: Path) -> None:
    first = pip_calls(checkout, "lab")
    assert first[-1] == "install --quiet -e .[lab]"
    assert install_state.why_install("lab", checkout) is None
    # a restart: nothing changed, nothing installed
    assert pip_calls(checkout, "lab") == []

    # `make test` wants another extra: one install, after which both hold
    assert pip_calls(checkout, "test")[-1] == "install --quiet -e .[test]"
    assert pip_calls(checkout, "lab") == [] and pip_calls(checkout, "test") == []

    source = checkout / "labextension" / "src" / "index.ts"
    source.write_text(source.read_text() + "\n// changed\n")
    assert install_state.why_install("lab", checkout) is not None
    assert pip_calls(checkout, "lab")[-1] == "install --quiet -e .[lab]"
    assert pip_calls(checkout, "lab") == []
    # the other extra was installed from older sources: it installs again too
    assert pip_calls(checkout, "test")[-1] == "install --quiet -e .[test]"


@pytest.mark.parametrize(
    "changed", ["pyproject.toml", "kernels/python3-1gpu/kernel.json", "labextension/yarn.lock"]
)
def test_each_input_of_the_install_counts(checkout: Path, changed: str) -> None:
    install_state.record("lab", checkout)
    assert install_state.why_install("lab", checkout) is None
    with (checkout / changed).open("a") as f:
        f.write("\n")
    assert install_state.why_install("lab", checkout) is not None


def test_a_python_source_change_needs_no_install(checkout: Path) -> None:
    # the install is editable: the server imports the checkout's code
    install_state.record("lab", checkout)
    (checkout / "jupyter_dlinfra" / "kernel").mkdir(parents=True)
    (checkout / "jupyter_dlinfra" / "kernel" / "magics.py").write_text("# changed\n")
    assert install_state.why_install("lab", checkout) is None


def test_make_lab_keeps_notebooks_and_jobs_out_of_the_checkout(
    checkout: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "DLINFRA_SIMULATED_GPUS": "2"}
    subprocess.run(["bash", "scripts/lab.sh"], cwd=checkout, env=env, check=True, timeout=60)
    args = (checkout / ".venv" / "bin" / "jupyter.args").read_text().splitlines()
    assert args[0] == "lab"
    root = [a.partition("=")[2] for a in args if a.startswith("--ServerApp.root_dir=")]
    # the server's root holds new notebooks, checkpoints and (DLInfra.jobs_dir) job directories
    assert root == [str(home / "dlinfra-notebooks")] and Path(root[0]).is_dir()

    # a folder of one's own, relative to where make lab was called
    env["DLINFRA_LAB_DIR"] = "notebooks"
    lab = checkout / "scripts" / "lab.sh"
    subprocess.run(["bash", str(lab)], cwd=tmp_path, env=env, check=True, timeout=60)
    args = (checkout / ".venv" / "bin" / "jupyter.args").read_text().splitlines()
    assert f"--ServerApp.root_dir={tmp_path / 'notebooks'}" in args


@pytest.mark.parametrize(
    "path",
    [
        "Untitled.ipynb",
        "Untitled1.ipynb",
        "untitled.txt",
        "Untitled Folder/notes.md",
        ".ipynb_checkpoints/Untitled-checkpoint.ipynb",
        "binder/.ipynb_checkpoints/demo-checkpoint.ipynb",
        "dlinfra-jobs/1-train-2d1983/spec.json",
        ".virtual_documents/Untitled.ipynb",
    ],
)
def test_what_jupyterlab_writes_in_the_checkout_is_ignored(path: str) -> None:
    # should Lab run in the checkout after all (DLINFRA_LAB_DIR=. make lab)
    found = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=REPO)
    assert found.returncode == 0, f"{path} is not ignored by git"


def test_the_checkouts_own_notebooks_are_not_ignored() -> None:
    found = subprocess.run(
        ["git", "check-ignore", "--no-index", "-q", "binder/demo.ipynb"], cwd=REPO
    )
    assert found.returncode == 1
