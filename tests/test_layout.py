"""The package keeps its shape: imports point one way, and the kernel's side stays light.

The import graph is read from the source (every ``import``, at module level, inside functions and
under ``if TYPE_CHECKING:``), so a layer crossed in a type hint or a late import counts too: each
is a dependency that a reader has to follow. The rules are data below; changing them is a design
decision, to make in docs/architecture.md first.
"""

from __future__ import annotations

import ast
import itertools
import json
import subprocess
import sys
import textwrap
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path

import jupyter_dlinfra

PACKAGE = "jupyter_dlinfra"
PACKAGE_DIR = Path(jupyter_dlinfra.__file__).resolve().parent

#: the rooms of the package from the bottom up: a room imports only from rooms below its own
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"core"}),
    frozenset({"telemetry", "kube", "backends", "provisioning", "jobs", "checkpoint"}),
    frozenset({"server"}),
    frozenset({"gateway"}),
    frozenset({"cli"}),
)
#: imports between rooms of one layer: job backends run on the Kubernetes plumbing, the
#: cluster's telemetry tells our pods from others' by its labels, and a backend that runs a job's
#: nodes itself (Kubernetes) reads and gathers their statuses as the in-job launcher writes
#: them (jobs/nodes.py, standard library only)
SIDEWAYS: frozenset[tuple[str, str]] = frozenset(
    {("backends", "kube"), ("telemetry", "kube"), ("backends", "jobs")}
)
#: the modules of kernel/ that each room may import (kernel/ runs in the user's kernel; what it
#: shares with the server side is named here, one module at a time)
KERNEL_USERS: Mapping[str, frozenset[str]] = {
    # the job converter reads a notebook's %gpu line with the kernel's own grammar
    "jobs": frozenset({"jupyter_dlinfra.kernel.grammar"}),
    # idle warnings carry the same coaching hints as %gpu profile
    "server": frozenset({"jupyter_dlinfra.kernel.coaching"}),
    # one stdlib REST client under both the kernel's and the command line's, and one way
    # to say the API's times
    "cli": frozenset({"jupyter_dlinfra.kernel.client", "jupyter_dlinfra.kernel.times"}),
}
#: top-level modules that import nothing of ours, so that any room may use them
LEAVES = frozenset({"jupyter_dlinfra.kernel_pod", "jupyter_dlinfra._version"})
#: what a kernel/ module may import of ours outside kernel/
KERNEL_MAY_IMPORT = frozenset({PACKAGE, "jupyter_dlinfra._version"})
#: the test harness and stand-ins: they may import anything, nothing imports them
TESTING = "testing"
#: the extension's entry hooks (``_jupyter_server_extension_points``, ``load_ipython_extension``)
#: import the rooms they start, late; they are the package's door, not a room
EXEMPT = frozenset({PACKAGE})
CORE_FORBIDDEN = frozenset(
    {"jupyter_server", "jupyter_client", "tornado", "traitlets", "IPython", "ipykernel"}
)
#: third-party packages that kernel/ may import (besides the standard library)
KERNEL_THIRD_PARTY = frozenset({"IPython"})
#: loaded into a kernel, these mean the server side came along
SERVER_SIDE = frozenset({"sqlalchemy", "jupyter_server", "tornado"})

Graph = dict[str, set[str]]


def modules_of(package_dir: Path, package: str) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    found: dict[str, Path] = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join((package, *parts))] = path
    return found


def _resolve(name: str, modules: Mapping[str, Path]) -> str:
    """The module that importing ``name`` runs last: ``a.b.c`` when it is a module, else the
    closest package or module above it (``from a.b import function`` names ``a.b``)."""
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports_of(module: str, path: Path, modules: Mapping[str, Path], package: str) -> set[str]:
    """The modules of ``package`` that ``module`` imports anywhere in its source."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    named: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            named.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            # `from pkg import submodule` imports the submodule; `from mod import name` the module
            named.extend(
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                for alias in node.names
            )
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            named.append(node.args[0].value)
    return {
        _resolve(name, modules)
        for name in named
        if name == package or name.startswith(package + ".")
    }


def import_graph(package_dir: Path, package: str) -> Graph:
    modules = modules_of(package_dir, package)
    return {name: imports_of(name, path, modules, package) for name, path in modules.items()}


def _strongly_connected(graph: Graph) -> list[list[str]]:
    """Tarjan's components of more than one module, or of one that imports itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _shortest_cycle(graph: Graph, members: Iterable[str]) -> list[str]:
    """A shortest cycle through the first module of a component, as a chain back to it."""
    inside = set(members)
    start = min(inside)
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for succ in sorted(graph[node] & inside):
            if succ == start:
                chain = [node]
                while chain[-1] != start:
                    chain.append(came_from[chain[-1]])
                return [*reversed(chain), start]
            if succ not in came_from:
                came_from[succ] = node
                queue.append(succ)
    raise AssertionError(f"no cycle through {start}")  # a component always has one


def cycles(graph: Graph) -> list[str]:
    """One readable chain per knot of circles, ``a -> b -> a``, with the other modules caught in
    the same knot (each of them is on a circle through ``a``)."""
    found = []
    for component in _strongly_connected(graph):
        chain = _shortest_cycle(graph, component)
        others = sorted(set(component) - set(chain))
        found.append(" -> ".join(chain) + (f" (also in it: {', '.join(others)})" if others else ""))
    return found


def room_of(module: str) -> str:
    """``core`` for ``jupyter_dlinfra.core.books.ledger``; a top-level module is its own room."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


_LAYER_OF = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}


def why_not(importer: str, imported: str) -> str | None:
    """Why ``importer`` may not import ``imported`` (both ours), or None when it may."""
    source, target = room_of(importer), room_of(imported)
    if importer in EXEMPT:
        return None
    if importer in LEAVES:
        return f"{importer} is a leaf: it imports nothing of ours"
    if source == TESTING:
        return None
    if target == TESTING:
        return "nothing outside testing/ imports the test harness"
    if source == "kernel":
        if target == "kernel" or imported in KERNEL_MAY_IMPORT:
            return None
        return "kernel/ runs in the user's kernel: it imports nothing of ours outside kernel/"
    if source == target or imported in LEAVES or imported == PACKAGE:
        return None
    if target == "kernel":
        shared = sorted(KERNEL_USERS.get(source, frozenset()))
        if imported in shared:
            return None
        if shared:
            return f"of kernel/, {source}/ may import only {', '.join(shared)} (KERNEL_USERS)"
        return f"{source}/ imports nothing of kernel/ (KERNEL_USERS)"
    for room in (source, target):
        if room not in _LAYER_OF:
            return f"{room} has no layer: place it in LAYERS (tests/test_layout.py)"
    if _LAYER_OF[target] < _LAYER_OF[source] or (source, target) in SIDEWAYS:
        return None
    if _LAYER_OF[target] == _LAYER_OF[source]:
        return f"{source}/ and {target}/ are one layer: import sideways only as SIDEWAYS lists"
    return f"{source}/ is below {target}/: imports point downward"


def layering_violations(graph: Graph) -> list[str]:
    return [
        f"{importer} -> {imported}: {why}"
        for importer in sorted(graph)
        for imported in sorted(graph[importer])
        if (why := why_not(importer, imported)) is not None
    ]


def third_party_imports(path: Path) -> set[str]:
    """Top-level names of everything not ours that a module imports, anywhere in it."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found - {PACKAGE, "__future__"}


# -- the checks over the package ----------------------------------------------------------------

GRAPH = import_graph(PACKAGE_DIR, PACKAGE)
MODULES = modules_of(PACKAGE_DIR, PACKAGE)


def test_the_package_has_no_import_circle() -> None:
    found = cycles(GRAPH)
    assert found == [], "import circles:\n  " + "\n  ".join(found)


def test_packages_import_only_downward() -> None:
    found = layering_violations(GRAPH)
    assert found == [], "imports against the layers:\n  " + "\n  ".join(found)


def test_core_imports_nothing_of_jupyter() -> None:
    found = [
        f"{name} imports {', '.join(sorted(bad))}"
        for name, path in MODULES.items()
        if room_of(name) == "core" and (bad := third_party_imports(path) & CORE_FORBIDDEN)
    ]
    assert found == [], "core/ is pure Python:\n  " + "\n  ".join(found)


def test_kernel_imports_only_the_standard_library_and_ipython() -> None:
    allowed = set(sys.stdlib_module_names) | KERNEL_THIRD_PARTY
    found = [
        f"{name} imports {', '.join(sorted(bad))}"
        for name, path in MODULES.items()
        if room_of(name) == "kernel" and (bad := third_party_imports(path) - allowed)
    ]
    assert found == [], "kernel/ is standard library and IPython only:\n  " + "\n  ".join(found)


def test_kernel_modules_load_nothing_of_the_server_side() -> None:
    """Each kernel/ module imported in a fresh interpreter, as a kernel would at ``%gpu``."""
    kernel_modules = sorted(name for name in MODULES if room_of(name) == "kernel")
    assert "jupyter_dlinfra.kernel.magics" in kernel_modules
    # what each import added first is put down to it
    program = textwrap.dedent(
        """
        import importlib, json, sys
        brought = {}
        for name in sys.argv[1:]:
            before = set(sys.modules)
            importlib.import_module(name)
            brought[name] = sorted(set(sys.modules) - before)
        print(json.dumps(brought))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", program, *kernel_modules],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    found = [
        f"importing {name} loads {', '.join(bad)}"
        for name, loaded in json.loads(out.stdout).items()
        if (bad := _server_side(loaded))
    ]
    assert found == [], "kernel/ must stay light in the user's kernel:\n  " + "\n  ".join(found)


def _server_side(loaded: Iterable[str]) -> list[str]:
    """Of the modules a kernel loaded, the server side's: third-party packages by their top-level
    name, ours by module."""
    bad: set[str] = set()
    for module in loaded:
        top = module.split(".")[0]
        if top in SERVER_SIDE:
            bad.add(top)
        elif top == PACKAGE and room_of(module) != "kernel" and module not in KERNEL_MAY_IMPORT:
            bad.add(module)
    return sorted(bad)


# -- the reader of the graph, on a package made for it ------------------------------------------


def _write(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")


def test_the_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    _write(
        tmp_path / "pkg",
        {
            "__init__.py": "",
            "a.py": """
                from __future__ import annotations
                from typing import TYPE_CHECKING
                from . import b
                from .sub import helper as _h
                import pkg.sub.deep
                if TYPE_CHECKING:
                    from pkg.c import Thing
                def late() -> None:
                    from ..outside import nothing  # not ours: above the package
                    from pkg.d import function
                """,
            "b.py": "import os\n",
            "c.py": "from .a import late\n",
            "d.py": "import importlib\nimportlib.import_module('pkg.b')\n",
            "sub/__init__.py": "from .helper import run\n",
            "sub/helper.py": "from .. import c\n",
            "sub/deep.py": "from pkg.sub import helper\nfrom . import missing\n",
        },
    )
    graph = import_graph(tmp_path / "pkg", "pkg")
    assert graph == {
        "pkg": set(),
        "pkg.a": {"pkg.b", "pkg.sub.helper", "pkg.sub.deep", "pkg.c", "pkg.d"},
        "pkg.b": set(),
        "pkg.c": {"pkg.a"},
        "pkg.d": {"pkg.b"},
        "pkg.sub": {"pkg.sub.helper"},
        "pkg.sub.helper": {"pkg.c"},
        "pkg.sub.deep": {"pkg.sub.helper", "pkg.sub"},
    }
    assert cycles(graph) == [
        "pkg.a -> pkg.c -> pkg.a (also in it: pkg.sub, pkg.sub.deep, pkg.sub.helper)"
    ]


def test_a_circle_is_told_as_a_chain() -> None:
    graph: Graph = {"x": {"y"}, "y": {"z"}, "z": {"x", "w"}, "w": set(), "s": {"s"}}
    assert cycles(graph) == ["s -> s", "x -> y -> z -> x"]


def test_the_layer_rules_refuse_what_they_should() -> None:
    refused = {
        ("jupyter_dlinfra.core.store", "jupyter_dlinfra.server.app"),
        ("jupyter_dlinfra.server.app", "jupyter_dlinfra.gateway.app"),
        ("jupyter_dlinfra.kube.api", "jupyter_dlinfra.backends.base"),
        ("jupyter_dlinfra.provisioning.port", "jupyter_dlinfra.kube.api"),
        ("jupyter_dlinfra.kernel.magics", "jupyter_dlinfra.core.models"),
        ("jupyter_dlinfra.kernel.magics", "jupyter_dlinfra.kernel_pod"),
        ("jupyter_dlinfra.jobs.convert", "jupyter_dlinfra.kernel.magics"),
        ("jupyter_dlinfra.server.app", "jupyter_dlinfra.testing.server"),
        ("jupyter_dlinfra.kernel_pod", "jupyter_dlinfra.core.models"),
        ("jupyter_dlinfra.newroom.x", "jupyter_dlinfra.core.models"),
    }
    allowed = {
        ("jupyter_dlinfra.server.app", "jupyter_dlinfra.core.store"),
        ("jupyter_dlinfra.backends.kubernetes", "jupyter_dlinfra.kube.api"),
        ("jupyter_dlinfra.jobs.convert", "jupyter_dlinfra.kernel.grammar"),
        ("jupyter_dlinfra.kernel.magics", "jupyter_dlinfra.kernel.client"),
        ("jupyter_dlinfra.kernel.magics", "jupyter_dlinfra._version"),
        ("jupyter_dlinfra.kube.kernel_pods", "jupyter_dlinfra.kernel_pod"),
        ("jupyter_dlinfra.testing.server", "jupyter_dlinfra.server.app"),
        ("jupyter_dlinfra.cli", "jupyter_dlinfra.gateway.app"),
        ("jupyter_dlinfra", "jupyter_dlinfra.server.app"),
    }
    assert {pair for pair in refused | allowed if why_not(*pair) is None} == allowed


def _python_m_targets() -> set[str]:
    """Modules of ours that the package runs as ``python -m NAME`` (written as list literals)."""
    found: set[str] = set()
    for path in PACKAGE_DIR.rglob("*.py"):
        if "labextension" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.List | ast.Tuple):
                continue
            texts = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
            for flag, name in itertools.pairwise(texts):
                if flag == "-m" and isinstance(name, str) and name.startswith(PACKAGE + "."):
                    found.add(name)
    return found


def test_modules_named_in_strings_exist() -> None:
    """Names the import graph cannot see: ``python -m`` targets and the entry points."""
    import importlib
    import importlib.util

    import tomllib

    targets = _python_m_targets()
    # the scan must find the ones we know of, or it checks nothing
    assert {"jupyter_dlinfra.jobs.runner", "jupyter_dlinfra.kernel_pod"} <= targets
    missing = sorted(t for t in targets if importlib.util.find_spec(t) is None)
    assert missing == [], f"python -m targets that do not exist: {missing}"

    project = tomllib.loads((PACKAGE_DIR.parent / "pyproject.toml").read_text())["project"]
    points = [*project["scripts"].values()]
    points += [v for group in project["entry-points"].values() for v in group.values()]
    ours = [p for p in points if p.startswith(PACKAGE)]
    assert len(ours) >= 6
    broken = []
    for point in ours:
        module, _, attr = point.partition(":")
        try:
            getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            broken.append(f"{point}: {err}")
    assert broken == []


def test_the_core_public_names_have_their_homes() -> None:
    """``jupyter_dlinfra.core`` loads its public names late, from a table of strings."""
    import jupyter_dlinfra.core as core

    homes = core._HOMES
    for module, names in homes.items():
        loaded = __import__(f"{PACKAGE}.core.{module}", fromlist=["_"])
        for name in names:
            assert getattr(core, name) is getattr(loaded, name), f"{name} from core.{module}"
    # bound at import, beside its module of the same name (see core/__init__.py)
    eager = {"ReplayReport", "UsageSeries", "replay"}
    assert sorted(n for names in homes.values() for n in names) == sorted(set(core.__all__) - eager)
    # a submodule named like a public name must not shadow it, loaded before or after
    code = (
        "import jupyter_dlinfra.core as c, jupyter_dlinfra.core.replay; "
        "from jupyter_dlinfra.core import replay; print(callable(c.replay), callable(replay))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]
