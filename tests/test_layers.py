"""The import graph of the package (read with ast, nothing imported) against the layer order of
docs/ARCHITECTURE.md ("Layers"): no import circles between modules, and no module imports
one of a higher layer.

Every ``import``/``from ... import`` counts: top-level and inside functions alike (a lazy
import is still a dependency). Imports under ``if TYPE_CHECKING:`` are exempt: they never run
and only name types for annotations.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "dsbackup"

# Lowest first. A module may import modules of its own group and of lower layers; groups on
# the same layer (migration, scheduler) may not import each other.
LAYERS: list[tuple[str, ...]] = [
    ("base",),
    ("storage",),
    ("datastores",),
    ("pipeline",),
    ("archive",),
    ("compat",),
    ("engine",),
    ("migration", "scheduler"),
    ("cli",),
]
# The base modules at the package root; every other root module must be a program.
BASE = {"dsbackup", "dsbackup._ext", "dsbackup._forkfds", "dsbackup._lazy", "dsbackup._libc", "dsbackup._plain",
        "dsbackup._version",
        "dsbackup.allocator", "dsbackup.blockcheck", "dsbackup.diskspace", "dsbackup.errors",
        "dsbackup.metadata", "dsbackup.multiformats", "dsbackup.poolmap",
        "dsbackup.background", "dsbackup.filemodes", "dsbackup.keys", "dsbackup.patterns", "dsbackup.codec",
        "dsbackup.workers"}
PROGRAMS = {"dsbackup.__main__", "dsbackup.demo", "dsbackup.datasets"}  # the cli group: entry
# points and the generated data sets of the demo, tests and benchmarks
SUBPACKAGES = {"storage", "datastores", "pipeline", "archive", "compat", "engine", "migration", "scheduler",
               "cli"}


def modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


MODULES = modules()


def group(mod: str) -> str:
    if mod in BASE or mod.startswith("dsbackup._ext."):
        return "base"
    if mod in PROGRAMS:
        return "cli"
    parts = mod.split(".")
    if len(parts) > 2 or (len(parts) == 2 and parts[1] in SUBPACKAGES):
        assert parts[1] in SUBPACKAGES, f"{mod}: a subpackage without a layer"
        return parts[1]
    raise AssertionError(f"{mod}: a module at the package root that is neither base nor a program")


def layer(g: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if g in names)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(node: ast.AST):
    """Import nodes under ``node``, skipping ``if TYPE_CHECKING:`` bodies."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for sub in child.orelse:
                yield from _imports_of(sub)
            continue
        yield from _imports_of(child)


def _imports_of(node: ast.AST):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    yield from _imports(node)


def _resolve(name: str) -> str | None:
    """The package module that importing ``name`` runs (its longest existing prefix)."""
    if name.startswith("dsbackup._ext"):
        return "dsbackup._ext"
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(mod: str) -> dict[str, int]:
    """The package modules ``mod`` imports -> the line of the first such import."""
    path = MODULES[mod]
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out: dict[str, int] = {}
    for node in _imports(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            if node.level:
                base = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                src = ".".join(base + ([node.module] if node.module else []))
            else:
                src = node.module or ""
            # ``from pkg import name``: the submodule pkg.name when there is one
            targets = [f"{src}.{a.name}" if f"{src}.{a.name}" in MODULES else src
                       for a in node.names]
        for t in targets:
            if t == "dsbackup" or t.startswith("dsbackup."):
                r = _resolve(t)
                if r and r != mod:
                    out.setdefault(r, node.lineno)
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(GRAPH):
        if root in index:
            continue
        work = [(root, iter(sorted(GRAPH[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(GRAPH.get(w, {})))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_graph_is_read() -> None:
    assert len(MODULES) > 100
    assert "dsbackup.archive.reader" in GRAPH["dsbackup.engine.restore"]
    # a function-level import counts, a TYPE_CHECKING one does not
    assert "dsbackup.archive.chain" in GRAPH["dsbackup.archive.reader"]
    assert "dsbackup.archive.reader" not in GRAPH["dsbackup.archive.chain"]
    assert "dsbackup.engine.incremental" in GRAPH["dsbackup.engine.backup"]


def test_no_import_cycles() -> None:
    cycles = _cycles()
    detail = ["  " + " <-> ".join(c) for c in cycles]
    assert not cycles, "import cycles:\n" + "\n".join(detail)


def test_every_module_has_a_layer() -> None:
    for m in MODULES:
        layer(group(m))


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_no_upward_or_sideways_import(mod: str) -> None:
    g = group(mod)
    bad = []
    for target, line in GRAPH[mod].items():
        tg = group(target)
        if tg != g and layer(tg) >= layer(g):
            bad.append(f"{MODULES[mod].relative_to(PKG.parent)}:{line}: {mod} ({g}) imports "
                       f"{target} ({tg})")
    assert not bad, "\n".join(bad)


def test_the_documented_order_is_this_one() -> None:
    doc = (PKG.parents[1] / "docs" / "ARCHITECTURE.md").read_text()
    section = doc.split("## Layers", 1)[1].split("\n## ", 1)[0]
    for m in sorted(BASE | PROGRAMS):
        short = m.removeprefix("dsbackup.").removeprefix("dsbackup")
        if short:
            assert f"`{short}" in section, f"{m} is not named in docs/ARCHITECTURE.md Layers"
    for names in LAYERS:
        for n in names:
            assert n in section


# What the command line may import: the public API (the package `dsbackup`, whose names are
# imported lazily, and the facades of the two subsystems it re-exports from,
# `dsbackup.scheduler` and `dsbackup.migration`), its own helpers, and the base modules other
# than the native code (docs/ARCHITECTURE.md, "The command line and the public API").
CLI_MAY_IMPORT = {"dsbackup", "dsbackup.scheduler", "dsbackup.migration", "dsbackup.storage"} | (
    BASE - {"dsbackup._ext", "dsbackup._libc"})


@pytest.mark.parametrize("mod", sorted(m for m in MODULES if m.startswith("dsbackup.cli")))
def test_the_cli_imports_only_the_public_api(mod: str) -> None:
    bad = [f"{MODULES[mod].relative_to(PKG.parent)}:{line}: {mod} imports {target}"
           for target, line in sorted(GRAPH[mod].items())
           if target not in CLI_MAY_IMPORT and not target.startswith("dsbackup.cli")]
    assert not bad, "\n".join(bad)


def test_every_module_is_named_in_the_architecture() -> None:
    doc = (PKG.parents[1] / "docs" / "ARCHITECTURE.md").read_text()
    section = doc.split("## Modules", 1)[1].split("\n## ", 1)[0]
    missing = [str(p.relative_to(PKG)) for p in sorted(PKG.rglob("*.py"))
               if f"`{p.relative_to(PKG)}`" not in section]
    assert not missing, "not named in docs/ARCHITECTURE.md, Modules: " + ", ".join(missing)
