"""The core stays pure: no Jupyter, tornado, traitlets or IPython, and a pinned public surface."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import jupyter_dlinfra.core

CORE_DIR = Path(jupyter_dlinfra.core.__file__).resolve().parent
FORBIDDEN = {"jupyter_server", "jupyter_client", "tornado", "traitlets", "IPython", "ipykernel"}

#: the public names of ``jupyter_dlinfra.core``; change deliberately, with the API docs
PUBLIC_API = [
    "Allocation",
    "AllocationState",
    "Clock",
    "Conflict",
    "Gpu",
    "IdleBook",
    "IdlePolicy",
    "IdleState",
    "InvalidRequest",
    "KernelRecord",
    "Ledger",
    "LedgerError",
    "LedgerEvent",
    "ManualClock",
    "NotFound",
    "PermissionDenied",
    "Phase",
    "PolicyError",
    "PriorityClass",
    "ReclaimAction",
    "ReclaimPolicy",
    "ReplayReport",
    "SCHEMA_VERSION",
    "SchedulingPolicy",
    "Store",
    "SystemClock",
    "Unsatisfiable",
    "UsageSeries",
    "model_matches",
    "replay",
]

CORE_FILES = sorted(CORE_DIR.rglob("*.py"))


def _imported_modules(tree: ast.AST) -> list[str]:
    """Absolute module names imported anywhere in the tree (also inside functions)."""
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append(node.args[0].value)
    return found


def test_core_files_are_found() -> None:
    names = {p.name for p in CORE_FILES}
    assert {"__init__.py", "clock.py", "errors.py", "ledger.py", "models.py", "store.py"} <= names


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(CORE_DIR)))
def test_core_module_imports_nothing_from_jupyter(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bad = sorted({name for name in _imported_modules(tree) if name.split(".")[0] in FORBIDDEN})
    assert bad == [], f"{path.name} imports {', '.join(bad)}"


def test_importing_the_core_loads_no_jupyter_module() -> None:
    code = (
        "import json, sys; import jupyter_dlinfra.core; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(json.loads(out.stdout))
    assert loaded & FORBIDDEN == set()


def test_public_api_is_pinned() -> None:
    exported = jupyter_dlinfra.core.__all__
    assert sorted(PUBLIC_API) == PUBLIC_API
    assert len(exported) == len(set(exported))
    assert sorted(exported) == sorted(PUBLIC_API)
    for name in exported:
        assert hasattr(jupyter_dlinfra.core, name), name
