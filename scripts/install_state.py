"""Whether .venv needs `pip install -e .[EXTRA]` again (venv.sh asks before each install).

An editable install imports the Python code from the checkout, so only what the install itself
consumes calls for another: the package's metadata and dependencies (pyproject.toml), the files
it copies into the environment (kernelspecs, server config) and the JupyterLab extension it
builds (labextension/). After an install, ``record`` keeps a digest of those files and the extras
installed with them in .venv; ``check`` compares. Standard library only: it runs before the
environment has anything.

    python3 scripts/install_state.py check EXTRA    # exit 0: up to date; 1: prints why not
    python3 scripts/install_state.py record EXTRA   # after a successful install
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: what the install reads from the checkout: files, or folders taken whole
INPUTS = (
    "pyproject.toml",
    "kernels",
    "jupyter-config",
    "labextension/src",
    "labextension/style",
    "labextension/schema",
    "labextension/package.json",
    "labextension/yarn.lock",
    "labextension/.yarnrc.yml",
    "labextension/tsconfig.json",
    "labextension/install.json",
)
STAMP = "dlinfra-install.json"


def digest(root: Path = ROOT) -> str:
    """One hash over the names and contents of every input file (missing ones count too)."""
    h = hashlib.sha256()
    for name in INPUTS:
        path = root / name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            h.update(file.relative_to(root).as_posix().encode() + b"\0")
            h.update(file.read_bytes() if file.is_file() else b"<missing>")
            h.update(b"\0")
    return h.hexdigest()


def _stamp(venv: Path) -> dict[str, object]:
    try:
        found = json.loads((venv / STAMP).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def why_install(extra: str, root: Path = ROOT, venv: Path | None = None) -> str | None:
    """Why the install must run for ``extra``; None when the last one still holds."""
    stamp = _stamp(venv or root / ".venv")
    if not stamp:
        return "not installed yet"
    if stamp.get("digest") != digest(root):
        return "pyproject.toml, the kernelspecs or the JupyterLab extension's sources changed"
    if extra not in (stamp.get("extras") or []):
        return f"the [{extra}] extra is not installed yet"
    return None


def record(extra: str, root: Path = ROOT, venv: Path | None = None) -> None:
    """Note an install of ``extra`` from the checkout as it is now."""
    venv = venv or root / ".venv"
    now = digest(root)
    stamp = _stamp(venv)
    # an install from the same sources adds its extra to the ones installed before
    extras = set(stamp.get("extras") or []) if stamp.get("digest") == now else set()
    extras.add(extra)
    (venv / STAMP).write_text(json.dumps({"digest": now, "extras": sorted(extras)}) + "\n")


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("check", "record"):
        print(__doc__, file=sys.stderr)
        return 2
    command, extra = argv
    if command == "record":
        record(extra)
        return 0
    why = why_install(extra)
    if why is None:
        return 0
    print(why)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
