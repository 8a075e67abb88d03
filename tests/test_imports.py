"""The import graph of mtdiff: no circles, and inference never imports training.

Read from the source with ``ast`` (nothing is imported): every ``import`` and ``from ... import``
statement of a module, at module level or inside a function, is an edge to the mtdiff module it
names; relative imports are resolved to full names, and ``from . import x`` counts as importing
``mtdiff.x`` when that is a module (else the package itself). A package's ``__init__`` is a node of
its own (importing ``mtdiff.data.loader`` is not an edge to ``mtdiff.data``). Imports under
``if TYPE_CHECKING:`` never run and are left out.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import mtdiff

ROOT = "mtdiff"
SRC = Path(mtdiff.__file__).resolve().parent


def module_files(src: Path = SRC, root: str = ROOT) -> dict[str, Path]:
    """Full module name -> file, for every .py file of the package at ``src``."""
    out = {}
    for path in sorted(src.rglob("*.py")):
        parts = (root, *path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    """ids of the statements inside ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``) blocks."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else None
            if name == "TYPE_CHECKING":
                skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def imports_of(name: str, path: Path, modules: dict[str, Path], root: str = ROOT) -> dict[str, int]:
    """The modules of ``modules`` that module ``name`` imports, each with the line of its first import."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _type_checking_blocks(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        while target and target not in modules:  # ``import mtdiff.a.b.attr``-like names: the module part
            target = target.rpartition(".")[0]
        if target and target != name:
            found.setdefault(target, line)

    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == root or alias.name.startswith(root + "."):
                    add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if not (base == root or base.startswith(root + ".")):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if sub in modules else base, node.lineno)
    return found


def import_graph(src: Path = SRC, root: str = ROOT) -> dict[str, dict[str, int]]:
    modules = module_files(src, root)
    return {name: imports_of(name, path, modules, root) for name, path in modules.items()}


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle [a, b, ..., a] through each strongly connected component of more than one module
    (or a module that imports itself); empty when the graph has no cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan, iteratively
        work = [(v, iter(sorted(graph.get(v, ()))))]
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        while work:
            node, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on_stack:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = set()
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.add(w)
                        if w == node:
                            break
                    components.append(comp)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    cycles = []
    for comp in components:
        start = min(comp)
        if len(comp) == 1 and start not in graph.get(start, ()):
            continue
        # the shortest path back to ``start`` inside the component (breadth first)
        prev: dict[str, str] = {}
        frontier, seen, end = [start], {start}, None
        while frontier and end is None:
            nxt = []
            for u in frontier:
                for w in sorted(graph.get(u, ())):
                    if w == start:
                        end = u
                        break
                    if w in comp and w not in seen:
                        seen.add(w)
                        prev[w] = u
                        nxt.append(w)
                if end is not None:
                    break
            frontier = nxt
        path = [end]
        while path[-1] != start:
            path.append(prev[path[-1]])
        cycles.append([*reversed(path), start])
    return sorted(cycles)


def _describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def test_no_import_cycles():
    graph = import_graph()
    assert "mtdiff.data.loader" in graph and graph["mtdiff.data.loader"], "the graph has no edges: the parser is broken"
    cycles = find_cycles(graph)
    assert not cycles, "import cycles among mtdiff's modules:\n" + "\n".join(_describe(c, graph) for c in cycles)


def test_only_train_and_cli_import_train():
    graph = import_graph()
    inside = lambda name, pkg: name == pkg or name.startswith(pkg + ".")  # noqa: E731
    bad = [
        f"{name} imports {target} (line {line})"
        for name, targets in graph.items()
        if not (inside(name, "mtdiff.train") or inside(name, "mtdiff.cli") or name == "mtdiff")
        for target, line in targets.items()
        if inside(target, "mtdiff.train")
    ]
    assert not bad, "inference must not import training:\n" + "\n".join(bad)


def test_importing_the_package_and_loading_a_run_leave_training_unloaded():
    """The package root names ``Trainer`` lazily: importing mtdiff and its inference API loads no training code."""
    code = (
        "import sys, mtdiff, mtdiff.runs, mtdiff.evaluate, mtdiff.report\n"
        "loaded = sorted(m for m in sys.modules if m == 'mtdiff.train' or m.startswith('mtdiff.train.'))\n"
        "assert not loaded, loaded\n"
        "assert mtdiff.Trainer.__module__.startswith('mtdiff.train')\n"
        "assert 'mtdiff.train' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_checker_finds_circles(tmp_path):
    """The checks above on a synthetic package with the circles this test was written against."""
    pkg = tmp_path / "pkg"
    files = {
        "__init__.py": "",
        "low.py": "import os\nfrom pkg import high\n",
        "high.py": "def f():\n    from .sub.deep import g\n",
        "sub/__init__.py": "from . import deep\n",
        "sub/deep.py": (
            "from .. import low\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..other import x\n"
        ),
        "other.py": "from .sub import deep\n",  # imports the module pkg.sub.deep: no cycle through other
        "cli/__init__.py": "",
        "cli/a.py": "from . import b\n",
        "cli/b.py": "def h():\n    from .a import thing\n",
    }
    for rel, text in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    graph = import_graph(pkg, "pkg")
    assert graph["pkg.low"] == {"pkg.high": 2}
    assert graph["pkg.high"] == {"pkg.sub.deep": 2}  # function-level, relative
    assert graph["pkg.sub"] == {"pkg.sub.deep": 1}  # ``from . import deep`` in an __init__
    assert graph["pkg.sub.deep"] == {"pkg.low": 1}  # TYPE_CHECKING left out
    assert graph["pkg.other"] == {"pkg.sub.deep": 1}
    assert find_cycles(graph) == [
        ["pkg.cli.a", "pkg.cli.b", "pkg.cli.a"],
        ["pkg.high", "pkg.sub.deep", "pkg.low", "pkg.high"],
    ]
