"""The architecture, enforced: each foreign library has one home, and the pure core stays pure.

Reads every `sd_batch/**/*.py` with `ast` (nothing is imported), so lazy imports inside
functions count too, as do `importlib.import_module("x")` and `__import__("x")`.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sd_batch"

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
#: The pure core: no processes, no network, and no edge module behind its back.
PURE = ("sd_batch/lang/*.py", "sd_batch/vm/spec.py", "sd_batch/vm/values.py",
        "sd_batch/vm/domain_xml.py", "sd_batch/placement*.py", "sd_batch/placement/plan.py",
        "sd_batch/vm/site_policy.py", "sd_batch/hypervisor/types.py", "sd_batch/condor/syntax.py",
        "sd_batch/ledger/types.py")
IMPURE_STDLIB = frozenset({"subprocess", "socket"})
EDGES = frozenset({"sd_batch.hypervisor.connection", "sd_batch.hypervisor.storage", "sd_batch.ledger.store",
                   "sd_batch.ledger.schema", "sd_batch.staging", "sd_batch.cli.main",
                   "sd_batch.helper.service", "sd_batch.helper.client"})


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
                names = [f"{prefix}.{node.module}" if node.module else prefix]
                if not node.module:  # `from . import x` imports the module x
                    names = [f"{prefix}.{alias.name}" for alias in node.names]
                yield from (Import(rel, node.lineno, name) for name in names)
            elif node.module:
                yield Import(rel, node.lineno, node.module)
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
def all_imports() -> tuple[Import, ...]:
    return tuple(imp for path in sorted(PACKAGE.rglob("*.py")) for imp in imports_of(path))


def pure_files() -> list[Path]:
    root = PACKAGE.parent
    return sorted({path for pattern in PURE for path in root.glob(pattern)})


@pytest.mark.parametrize("library", sorted(HOMES))
def test_each_foreign_library_is_imported_in_its_one_module(library: str) -> None:
    strays = [str(i) for i in all_imports() if i.top == library and i.file != HOMES[library]]
    assert strays == [], f"only {HOMES[library]} may import {library}"


def test_the_pure_core_starts_no_process_and_opens_no_socket() -> None:
    files = pure_files()
    assert files, "the pure modules moved: update PURE"
    strays = [str(i) for p in files for i in imports_of(p) if i.top in IMPURE_STDLIB]
    assert strays == []


def test_the_pure_core_imports_no_edge_module() -> None:
    strays = [str(i) for p in pure_files() for i in imports_of(p) if i.module in EDGES]
    assert strays == []


def test_the_walker_sees_lazy_relative_and_dynamic_imports() -> None:
    """The checks above are only as good as this reader of imports."""
    hypervisor = {i.module for i in imports_of(PACKAGE / "hypervisor.py")}
    assert {"libvirt", "tenacity", "sd_batch.errors"} <= hypervisor  # lazy ones included
    code = (
        "from .. import spec\n"
        "from .model import Component\n"
        "def late():\n"
        "    import importlib, subprocess\n"
        "    importlib.import_module('x')\n"
        "    __import__('y')\n"
    )
    found = [str(i) for i in imports_in(code, "sd_batch/lang/sample.py", "sd_batch.lang")]
    assert found == [
        "sd_batch/lang/sample.py:1: import sd_batch.vm.spec",
        "sd_batch/lang/sample.py:2: import sd_batch.lang.model",
        "sd_batch/lang/sample.py:4: import importlib",
        "sd_batch/lang/sample.py:4: import subprocess",
        "sd_batch/lang/sample.py:5: import x",
        "sd_batch/lang/sample.py:6: import y",
    ]
