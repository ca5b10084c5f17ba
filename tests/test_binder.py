"""The Binder demo files: a valid notebook, and a start script that turns simulation on."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import nbformat

BINDER = Path(__file__).resolve().parent.parent / "binder"


def test_demo_notebook_is_valid_and_uses_gpu_magic() -> None:
    nb = nbformat.read(BINDER / "demo.ipynb", as_version=4)
    nbformat.validate(nb)
    sources = [c.source for c in nb.cells if c.cell_type == "code"]
    assert "%gpu 2" in sources and "%gpu release" in sources


def test_start_script_simulates_gpus_unless_told_otherwise() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLINFRA_")}
    out = subprocess.run(
        [str(BINDER / "start"), "env"], capture_output=True, text=True, check=True, env=env
    ).stdout
    assert "DLINFRA_SIMULATED_GPUS=8" in out.splitlines()
    env["DLINFRA_SIMULATED_GPUS"] = "2"
    out = subprocess.run(
        [str(BINDER / "start"), "env"], capture_output=True, text=True, check=True, env=env
    ).stdout
    assert "DLINFRA_SIMULATED_GPUS=2" in out.splitlines()


def test_post_build_installs_the_package_with_lab() -> None:
    post_build = BINDER / "postBuild"
    assert os.access(post_build, os.X_OK)
    assert 'pip install --no-cache-dir ".[lab]"' in post_build.read_text()
