"""The SmartFrog description language: parse, resolve, render.

Public surface: `load_file` / `load_text` (parse + resolve into a `Description`), `parse_file`
(syntax only), and the model types. Resolution follows SmartFrog's phase order: includes, type
(`extends`), place (`a:b 5;`), function and link (sfConfig only), then the TBD check.
Depends only on lark (in `parser.py`) and `sd_batch.errors`; knows nothing about VMs, nor the
site: callers pass the include folders (the component library, `COMPONENT_LIBRARY_DIR`, is the
language's own).

Layer: pure core.
May import: errors, the standard library, lark (in `parser` only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DescriptionError, DescriptionErrors, ResolutionError, SourceLocation
from .budget import JOB_BUDGETS, Budgets, enforced
from .model import TBD, Attribute, Component, Double, Long, Reference, RefPart

#: The component library shipped with the language (`components.sf`), searched after the
#: caller's include folders. The language's own data, so no site config is needed to find it.
COMPONENT_LIBRARY_DIR = Path(__file__).resolve().parent

if TYPE_CHECKING:  # imported lazily at run time: they bring in lark
    from .includes import SourceSet
    from .resolve import Node, TypeResolver
    from .syntax import SourceFile

__all__ = [
    "TBD",
    "Attribute",
    "Budgets",
    "Component",
    "Description",
    "Double",
    "JOB_BUDGETS",
    "Long",
    "RefPart",
    "Reference",
    "SF_CONFIG",
    "load_file",
    "load_text",
    "parse_file",
    "parse_text",
]

SF_CONFIG = "sfConfig"


@dataclass(frozen=True)
class Description:
    """A resolved description: the whole top level, its `sfConfig`, and what was noticed."""

    root: Component
    sfconfig: Component | None
    #: Problems in prototypes outside sfConfig that nothing under sfConfig uses.
    warnings: tuple[DescriptionError, ...]
    #: Attributes under sfConfig still TBD (only non-empty when loaded with `complete=False`).
    tbds: tuple[tuple[str, SourceLocation | None], ...]
    files: tuple[str, ...]


def parse_text(text: str, filename: str = "<text>") -> None:
    """Check syntax only (no includes followed); raises DescriptionSyntaxError."""
    from .parser import parse_text as _parse

    _parse(text, filename)


def parse_file(path: str | Path, *, budgets: Budgets | None = None) -> None:
    """Check one file's syntax only; raises DescriptionError when it cannot be read or parsed."""
    from .includes import SourceSet

    with enforced():
        SourceSet((), budgets=budgets or Budgets()).read(Path(path))


def _search_path(include_dirs: Sequence[Path | str]) -> tuple[Path, ...]:
    return (*(Path(d) for d in include_dirs), COMPONENT_LIBRARY_DIR)


def load_file(
    path: str | Path,
    *,
    include_dirs: Sequence[Path | str] = (),
    environ: Mapping[str, str] | None = None,
    properties: Mapping[str, str] | None = None,
    complete: bool = True,
    display_root: Path | None = None,
    budgets: Budgets | None = None,
) -> Description:
    """Parse and resolve a description file. `include_dirs` come before our component library.

    Files under DISPLAY_ROOT are named relative to it in messages. BUDGETS bound the work
    (`Budgets()`'s generous defaults when None; a job gets its site's `[policy]`).
    """
    from .includes import SourceSet
    from .parser import gc_paused

    sources = SourceSet(
        _search_path(include_dirs), display_root=display_root, budgets=budgets or Budgets()
    )
    with enforced(), gc_paused():
        shown = None if display_root is not None else str(path)
        parsed = sources.read(Path(path), display=shown)
        return _resolve(parsed, sources, environ=environ, properties=properties, complete=complete)


def load_text(
    text: str,
    filename: str = "<text>",
    *,
    include_dirs: Sequence[Path | str] = (),
    environ: Mapping[str, str] | None = None,
    properties: Mapping[str, str] | None = None,
    complete: bool = True,
    budgets: Budgets | None = None,
) -> Description:
    """Parse and resolve description text; FILENAME only names it in messages and includes."""
    from .includes import SourceSet
    from .parser import gc_paused

    sources = SourceSet(_search_path(include_dirs), budgets=budgets or Budgets())
    with enforced(), gc_paused():
        parsed = sources.parse(text, filename)
        return _resolve(parsed, sources, environ=environ, properties=properties, complete=complete)


def _follow_sfconfig(ref: Reference, root: Any, types: Any, errors: list[DescriptionError]) -> Any:
    """`sfConfig testX;`: SmartFrog's sfConfig phase resolves the reference and deploys the
    component it names; sd puts a copy of it in sfConfig's place."""
    from .resolve import Node, copy_node

    try:
        target = types.follow(ref, root, set())
    except DescriptionError as exc:
        errors.append(exc)
        return None
    if not isinstance(target, Node):
        return target  # the check below says it is no component description
    clone = copy_node(target, types.sources.budget, ref.loc)
    root.set(SF_CONFIG, clone, root.location_of(SF_CONFIG))
    return clone


def _resolve(parsed: SourceFile, sources: SourceSet, **options: Any) -> Description:
    try:
        return _resolve_phases(parsed, sources, **options)
    except RecursionError:
        # Every phase recurses: a few hundred levels of nesting, prototypes extending each
        # other or references leading to each other exhaust Python's stack.
        raise ResolutionError(
            f"{parsed.name}: too deeply nested to resolve",
            hint="components, vectors, extends chains or chains of references (a refers to b "
            "refers to c...) go a few hundred levels deep: flatten them",
        ) from None


def _resolve_phases(
    parsed: SourceFile,
    sources: SourceSet,
    *,
    environ: Mapping[str, str] | None,
    properties: Mapping[str, str] | None,
    complete: bool,
) -> Description:
    from .evaluate import Evaluator, find_tbds, tbd_errors
    from .phases import function_phase, other_phases, phase_list
    from .resolve import Node, TreeBuilder, TypeResolver

    budget = sources.budget
    root = TreeBuilder(sources).root(parsed.items, parsed.name)
    phases = phase_list(root, sources)
    types = TypeResolver(root, sources)
    errors: list[DescriptionError] = []
    warnings: list[DescriptionError] = []
    with budget.reporting(errors):
        for name, child in list(root.children()):
            if not isinstance(child, Node):
                raise TypeError(f"{name}: the tree builder made a {type(child).__name__}")
            try:
                types.resolve(child, errors if name == SF_CONFIG else None)
            except DescriptionError as exc:
                if name == SF_CONFIG:
                    budget.record(errors, exc)
                else:
                    budget.note(warnings, exc)
        for placement in root.placements:
            if isinstance(placement.value, Node):
                placement.value.parent = root
                try:
                    types.resolve(placement.value)
                except DescriptionError as exc:
                    budget.note(warnings, exc)
        _place(root, types, sources, errors, warnings)
        problems = other_phases(root, phases, sources)
        if "function" in phases:
            problems += function_phase(root, sources, made=types.made_functions)
        for problem in problems:
            if problem.message.split(":")[0] == SF_CONFIG:
                budget.record(errors, problem)
            else:
                budget.note(warnings, problem)
        sfconfig = root.get(SF_CONFIG) if "sfConfig" in phases else None
        if isinstance(sfconfig, Reference) and not (sfconfig.lazy or sfconfig.data):
            sfconfig = _follow_sfconfig(sfconfig, root, types, errors)
        if "sfConfig" in phases and SF_CONFIG in root and not isinstance(sfconfig, Component):
            budget.record(
                errors,
                ResolutionError(
                    "sfConfig must be a Component Description, found "
                    + ("a function" if hasattr(sfconfig, "kind") else "a simple value"),
                    loc=root.location_of(SF_CONFIG),
                    hint="write sfConfig extends Compound { ... }",
                    source_line=sources.source_line(root.location_of(SF_CONFIG)),
                ),
            )
            sfconfig = None
        tbds: list[tuple[str, SourceLocation | None]] = []
        if not errors and "link" in phases:
            evaluator = Evaluator(root, sources, environ=environ, properties=properties)
            if sfconfig is not None:
                evaluator.evaluate_tree(sfconfig, errors)
                if complete:
                    for error in tbd_errors(sfconfig, sources):
                        budget.record(errors, error)
                else:
                    tbds = find_tbds(sfconfig)
            else:  # a library: resolve what can be, to show prototypes as they would be used.
                # SmartFrog links sfConfig only: what fails here is no problem of the library
                # (a prototype may read a property its user sets), and schemas are not checked.
                evaluator.check_assertions = False
                for _name, child in list(root.children()):
                    if not (isinstance(child, Node) and child.error is not None):
                        evaluator.evaluate_tree(child, [], warnings=True)
    if errors:
        raise errors[0] if len(errors) == 1 else DescriptionErrors(errors)
    return Description(
        root=root,
        sfconfig=sfconfig,
        warnings=tuple(warnings),
        tbds=tuple(tbds),
        files=tuple(sources.files),
    )


def _place(
    root: Node,
    types: TypeResolver,
    sources: SourceSet,
    errors: list[DescriptionError],
    warnings: list[DescriptionError],
) -> None:
    """Place resolution (phase 3); a path-named attribute that finds no place is an error in
    sfConfig and a warning elsewhere."""
    for holder, placement in types.place(root):
        where = holder.path or "the top level"
        error = ResolutionError(
            f"cannot place {':'.join(placement.name)}: no component "
            f"{':'.join(placement.name[:-1])} in {where}",
            loc=placement.loc,
            source_line=sources.source_line(placement.loc),
            hint="a path-named attribute overrides a value inside an existing component",
        )
        in_config = holder.path.split(":")[0] == SF_CONFIG if holder.path else False
        if in_config:
            sources.budget.record(errors, error)
        else:
            sources.budget.note(warnings, error)
