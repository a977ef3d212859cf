"""The architecture, enforced: the layers, no cycles, each foreign library in one home, a pure core.

Reads every `sd_batch/**/*.py` with `ast` (nothing is imported), so imports inside functions and
under `TYPE_CHECKING` count too, as do `importlib.import_module("x")` and `__import__("x")`.
`PACKAGES` is the one table of the layers: every package of sd_batch, its layer, and the packages
it may import. An import may point down a layer, or sideways to a package the table names; never
up, and never in a circle (between packages, or between modules).
"""

from __future__ import annotations

import ast
import builtins
import functools
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sd_batch"

#: The layers, bottom first (DESIGN.md "Layers").
LAYERS = ("pure core", "edge", "orchestration", "face")
CORE, EDGE, ORCHESTRATION, FACE = LAYERS

#: Every package (or top-level module) of sd_batch -> its layer and the packages it may import.
#: The package `sd_batch` itself (its version, a logging handler) may be imported by anyone.
TABLE: dict[str, tuple[str, str]] = {
    "errors": (CORE, ""),
    "data": (CORE, ""),
    "lang": (CORE, "errors"),
    "vm": (CORE, "errors lang"),
    "placement": (CORE, "errors lang vm"),
    "condor": (EDGE, "errors vm"),  # vm: sizing.Resources, the requests and slot it reads
    "config": (EDGE, "errors data lang vm placement"),
    "guest": (EDGE, "errors config"),
    "staging": (EDGE, "errors guest"),
    "ledger": (EDGE, "errors vm config"),
    "hypervisor": (EDGE, "errors lang vm placement config ledger"),
    "deploy": (ORCHESTRATION, "errors lang vm placement config hypervisor ledger"),
    "batch": (
        ORCHESTRATION,
        "errors lang vm placement condor config guest staging hypervisor ledger deploy",
    ),
    "localrun": (ORCHESTRATION, "errors data condor"),
    "helper": (FACE, "errors data lang condor config guest staging hypervisor deploy batch"),
    "cli": (FACE, "errors data lang placement config hypervisor deploy localrun web"),
    "web": (FACE, "errors lang vm placement config hypervisor deploy"),
}
PACKAGES = {name: (layer, frozenset(may.split())) for name, (layer, may) in TABLE.items()}

#: A foreign library -> the one module allowed to import it.
HOMES: dict[str, str] = {
    "libvirt": "sd_batch/hypervisor/connection.py",
    "libvirt_qemu": "sd_batch/hypervisor/connection.py",
    "libvirt_lxc": "sd_batch/hypervisor/connection.py",
    "libvirtaio": "sd_batch/hypervisor/connection.py",
    "lark": "sd_batch/lang/parser.py",
    "htcondor": "sd_batch/condor/jobad.py",
    "htcondor2": "sd_batch/condor/jobad.py",
    "classad": "sd_batch/condor/jobad.py",
    "classad2": "sd_batch/condor/jobad.py",
}
#: Pure modules: no processes, no network, and nothing impure of sd_batch behind their back. The
#: pure core packages, and the pure value modules of a few edges.
PURE = (
    "sd_batch/errors.py",
    "sd_batch/lang/*.py",
    "sd_batch/vm/*.py",
    "sd_batch/placement/*.py",
    "sd_batch/hypervisor/types.py",
    "sd_batch/condor/syntax.py",
    "sd_batch/ledger/types.py",
    "sd_batch/guest/contract.py",
)
IMPURE_STDLIB = frozenset({"subprocess", "socket"})


@dataclass(frozen=True, slots=True)
class Import:
    file: str  # relative to the repository, with '/'
    line: int
    module: str  # absolute dotted name

    @property
    def top(self) -> str:
        return self.module.split(".")[0]

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: import {self.module}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> Iterator[Import]:
    """Every module PATH imports, at any depth, with relative imports made absolute."""
    package = module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    rel = path.relative_to(PACKAGE.parent).as_posix()
    return imports_in(path.read_text(encoding="utf-8"), rel, package)


def imports_in(source: str, rel: str, package: str) -> Iterator[Import]:
    """The imports of SOURCE, a module of PACKAGE (for relative imports) shown as REL."""
    for node in ast.walk(ast.parse(source, filename=rel)):
        if isinstance(node, ast.Import):
            yield from (Import(rel, node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                prefix = ".".join(base)
                module = f"{prefix}.{node.module}" if node.module else prefix
            else:
                module = node.module or ""
            if module == "sd_batch" or module.startswith("sd_batch."):
                # `from P import x` may import the module P.x: `resolve` tells a name from a module
                yield from (Import(rel, node.lineno, f"{module}.{a.name}") for a in node.names)
            else:
                yield Import(rel, node.lineno, module)
        elif isinstance(node, ast.Call) and _is_dynamic_import(node):
            argument = node.args[0]
            assert isinstance(argument, ast.Constant)
            yield Import(rel, node.lineno, str(argument.value))


def _is_dynamic_import(node: ast.Call) -> bool:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return (
        name in ("import_module", "__import__")
        and bool(node.args)
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    )


@functools.cache
def modules() -> dict[str, Path]:
    """Every module of sd_batch by its dotted name."""
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def resolve(name: str) -> str | None:
    """The module of sd_batch that importing NAME runs (`sd_batch.vm.spec.VMSpec` ->
    `sd_batch.vm.spec`), or None for a name outside sd_batch."""
    if name != "sd_batch" and not name.startswith("sd_batch."):
        return None
    while name not in modules():
        name = name.rpartition(".")[0]
    return name


def package_of(module: str) -> str:
    """`sd_batch.vm.spec` -> `vm`; `sd_batch.errors` -> `errors`; `sd_batch` -> `sd_batch`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "sd_batch"


@functools.cache
def all_imports() -> tuple[Import, ...]:
    return tuple(imp for path in modules().values() for imp in imports_of(path))


@dataclass(frozen=True, slots=True)
class Edge:
    source: str  # module
    target: str  # module
    where: Import

    def __str__(self) -> str:
        return f"{self.where.file}:{self.where.line}: {self.source} imports {self.target}"


@functools.cache
def module_edges() -> tuple[Edge, ...]:
    """Each import of one sd_batch module by another (a module importing itself is no edge)."""
    edges: dict[tuple[str, str], Edge] = {}
    for path in modules().values():
        source = module_name(path)
        for imp in imports_of(path):
            target = resolve(imp.module)
            if target is not None and target != source:
                edges.setdefault((source, target), Edge(source, target, imp))
    return tuple(edges.values())


def find_cycle(graph: Mapping[str, Mapping[str, Edge]]) -> list[Edge]:
    """One cycle of GRAPH (node -> successor -> the edge), as its edges; [] when it has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    nodes: list[str] = []  # the current path
    path: list[Edge] = []  # its edges: path[i] leads from nodes[i] to nodes[i + 1]

    def visit(node: str) -> list[Edge]:
        state[node] = 1
        nodes.append(node)
        for successor, edge in sorted(graph.get(node, {}).items()):
            if state.get(successor) == 1:
                return [*path[nodes.index(successor) :], edge]
            if successor not in state:
                path.append(edge)
                found = visit(successor)
                if found:
                    return found
                path.pop()
        state[node] = 2
        nodes.pop()
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def pure_files() -> list[Path]:
    root = PACKAGE.parent
    return sorted({path for pattern in PURE for path in root.glob(pattern)})


def test_the_table_names_every_package_and_only_packages_that_exist() -> None:
    present = {package_of(name) for name in modules()} - {"sd_batch"}
    assert present == set(PACKAGES), "every package of sd_batch has one row in PACKAGES"


def test_the_table_itself_points_down_or_sideways() -> None:
    upward = [
        f"{name} ({layer}) may import {other} ({PACKAGES[other][0]})"
        for name, (layer, allowed) in PACKAGES.items()
        for other in sorted(allowed)
        if LAYERS.index(PACKAGES[other][0]) > LAYERS.index(layer)
    ]
    assert upward == []


def test_each_package_imports_only_what_its_row_allows() -> None:
    strays = [
        f"{edge} (layer {PACKAGES[package_of(edge.source)][0]} -> "
        f"{PACKAGES[package_of(edge.target)][0]})"
        for edge in module_edges()
        if package_of(edge.source) != package_of(edge.target)
        and package_of(edge.target) != "sd_batch"
        and package_of(edge.target) not in PACKAGES[package_of(edge.source)][1]
    ]
    assert strays == [], "add a package to a row only if the layers allow it:\n" + "\n".join(strays)


def test_no_cycle_between_packages() -> None:
    graph: dict[str, dict[str, Edge]] = defaultdict(dict)
    for edge in module_edges():
        source, target = package_of(edge.source), package_of(edge.target)
        if source != target:
            graph[source].setdefault(target, edge)
    cycle = find_cycle(graph)
    assert cycle == [], "packages in a circle:\n" + "\n".join(map(str, cycle))


def test_no_cycle_between_modules() -> None:
    graph: dict[str, dict[str, Edge]] = defaultdict(dict)
    for edge in module_edges():
        graph[edge.source][edge.target] = edge
    cycle = find_cycle(graph)
    assert cycle == [], "modules in a circle:\n" + "\n".join(map(str, cycle))


@pytest.mark.parametrize("library", sorted(HOMES))
def test_each_foreign_library_is_imported_in_its_one_module(library: str) -> None:
    strays = [str(i) for i in all_imports() if i.top == library and i.file != HOMES[library]]
    assert strays == [], f"only {HOMES[library]} may import {library}"


def test_the_pure_core_starts_no_process_and_opens_no_socket() -> None:
    files = pure_files()
    assert len(files) >= len(PURE), "a pure module moved: update PURE"
    strays = [str(i) for p in files for i in imports_of(p) if i.top in IMPURE_STDLIB]
    assert strays == []


def test_the_pure_modules_import_only_pure_modules() -> None:
    pure = {module_name(p) for p in pure_files()} | {"sd_batch"}
    strays = [
        str(i)
        for p in pure_files()
        for i in imports_of(p)
        if resolve(i.module) not in (None, *pure)
    ]
    assert strays == []


def test_the_walker_sees_lazy_relative_and_dynamic_imports() -> None:
    """The checks above are only as good as this reader of imports."""
    connection = {i.module for i in imports_of(PACKAGE / "hypervisor" / "connection.py")}
    assert {"libvirt", "tenacity", "sd_batch.errors.HypervisorError"} <= connection  # lazy too
    code = (
        "from .. import spec\n"
        "from .model import Component\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from sd_batch.vm import spec\n"
        "def late():\n"
        "    import importlib, subprocess\n"
        "    importlib.import_module('x')\n"
        "    __import__('y')\n"
    )
    found = [str(i) for i in imports_in(code, "sd_batch/lang/sample.py", "sd_batch.lang")]
    assert found == [
        "sd_batch/lang/sample.py:1: import sd_batch.spec",
        "sd_batch/lang/sample.py:2: import sd_batch.lang.model.Component",
        "sd_batch/lang/sample.py:3: import typing",
        "sd_batch/lang/sample.py:5: import sd_batch.vm.spec",
        "sd_batch/lang/sample.py:7: import importlib",
        "sd_batch/lang/sample.py:7: import subprocess",
        "sd_batch/lang/sample.py:8: import x",
        "sd_batch/lang/sample.py:9: import y",
    ]
    assert resolve("sd_batch.vm.spec.VMSpec") == "sd_batch.vm.spec"
    assert resolve("sd_batch.vm") == "sd_batch.vm"
    assert resolve("libvirt") is None


def test_the_cycle_finder_names_the_modules_of_a_circle() -> None:
    def edge(a: str, b: str) -> Edge:
        return Edge(a, b, Import(f"{a}.py", 1, b))

    graph = {
        "a": {"b": edge("a", "b")},
        "b": {"c": edge("b", "c")},
        "c": {"a": edge("c", "a")},
        "d": {"a": edge("d", "a")},
    }
    assert [str(e) for e in find_cycle(graph)] == [
        "a.py:1: a imports b",
        "b.py:1: b imports c",
        "c.py:1: c imports a",
    ]
    assert find_cycle({"a": {"b": edge("a", "b")}, "b": {}}) == []


def test_every_public_exception_is_an_sd_error_in_errors_py() -> None:
    """One hierarchy: a class that derives from an exception lives in errors.py, unless it is a
    module's private signal that never leaves it (`_BadLiteral`)."""
    errors_tree = ast.parse((PACKAGE / "errors.py").read_text(encoding="utf-8"))
    ours = {node.name for node in errors_tree.body if isinstance(node, ast.ClassDef)}
    builtin = {
        name
        for name, value in vars(builtins).items()
        if isinstance(value, type) and issubclass(value, BaseException)
    }
    strays = []
    for path in modules().values():
        if path.name == "errors.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                bases = {
                    b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases
                }
                if bases & (ours | builtin):
                    strays.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.name}")
    assert strays == [], "exceptions belong in sd_batch/errors.py:\n" + "\n".join(strays)


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_private_name_crosses_modules() -> None:
    """`from .x import _y` couples a module to another's insides: make `_y` public, or move it."""
    strays = []
    for path in modules().values():
        rel = path.relative_to(PACKAGE.parent).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            ours = isinstance(node, ast.ImportFrom) and (
                node.level > 0 or (node.module or "").startswith("sd_batch")
            )
            if ours and isinstance(node, ast.ImportFrom):
                names = [a.name for a in node.names if is_private(a.name)]
                strays += [f"{rel}:{node.lineno}: {name}" for name in names]
    assert strays == [], "private names imported from another module:\n" + "\n".join(strays)
