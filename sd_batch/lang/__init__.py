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
from dataclasses import dataclass, field
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
    """SmartFrog's phases in order (those the description's sfPhases keeps): type, place, the
    other tree phases and function, then sfConfig's own (follow it, link it, its TBDs)."""
    from .phases import phase_list
    from .resolve import TreeBuilder, TypeResolver

    root = TreeBuilder(sources).root(parsed.items, parsed.name)
    phases = phase_list(root, sources)
    run = _Pass(root, sources, TypeResolver(root, sources))
    tbds: list[tuple[str, SourceLocation | None]] = []
    with sources.budget.reporting(run.errors):
        _type_phase(run)
        _place_phase(run)
        _tree_phases(run, phases)
        sfconfig = _sfconfig_phase(run) if "sfConfig" in phases else None
        if not run.errors and "link" in phases:
            tbds = _link_phase(run, sfconfig, environ, properties, complete=complete)
    if run.errors:
        raise run.errors[0] if len(run.errors) == 1 else DescriptionErrors(run.errors)
    return Description(
        root=root,
        sfconfig=sfconfig,
        warnings=tuple(run.warnings),
        tbds=tuple(tbds),
        files=tuple(sources.files),
    )


@dataclass
class _Pass:
    """One resolution under way: the tree, its sources, its type resolver, and the problems
    found so far. A problem under sfConfig is an error; elsewhere (a prototype that sfConfig
    may never use) only a warning."""

    root: Node
    sources: SourceSet
    types: TypeResolver
    errors: list[DescriptionError] = field(default_factory=list)
    warnings: list[DescriptionError] = field(default_factory=list)

    def report(self, problem: DescriptionError, *, in_sfconfig: bool) -> None:
        if in_sfconfig:
            self.sources.budget.record(self.errors, problem)
        else:
            self.sources.budget.note(self.warnings, problem)


def _type_phase(run: _Pass) -> None:
    """Type resolution (phase 2, `extends`) of every top-level component, then of the values
    the top level places elsewhere (`a:b extends C;`)."""
    from .resolve import Node

    for name, child in list(run.root.children()):
        if not isinstance(child, Node):
            raise TypeError(f"{name}: the tree builder made a {type(child).__name__}")
        in_sfconfig = name == SF_CONFIG
        try:
            run.types.resolve(child, run.errors if in_sfconfig else None)
        except DescriptionError as exc:
            run.report(exc, in_sfconfig=in_sfconfig)
    for placement in run.root.placements:
        if isinstance(placement.value, Node):
            placement.value.parent = run.root
            try:
                run.types.resolve(placement.value)
            except DescriptionError as exc:
                run.report(exc, in_sfconfig=False)


def _place_phase(run: _Pass) -> None:
    """Place resolution (phase 3); a path-named attribute that finds no place is an error in
    sfConfig and a warning elsewhere."""
    for holder, placement in run.types.place(run.root):
        where = holder.path or "the top level"
        error = ResolutionError(
            f"cannot place {':'.join(placement.name)}: no component "
            f"{':'.join(placement.name[:-1])} in {where}",
            loc=placement.loc,
            source_line=run.sources.source_line(placement.loc),
            hint="a path-named attribute overrides a value inside an existing component",
        )
        in_sfconfig = holder.path.split(":")[0] == SF_CONFIG if holder.path else False
        run.report(error, in_sfconfig=in_sfconfig)


def _tree_phases(run: _Pass, phases: tuple[str, ...]) -> None:
    """The phases the description's sfPhases adds, then function resolution when it is kept."""
    from .phases import function_phase, other_phases

    problems = other_phases(run.root, phases, run.sources)
    if "function" in phases:
        problems += function_phase(run.root, run.sources, made=run.types.made_functions)
    for problem in problems:
        run.report(problem, in_sfconfig=problem.message.split(":")[0] == SF_CONFIG)


def _sfconfig_phase(run: _Pass) -> Component | None:
    """sfConfig, what gets deployed: a component (one a reference names is copied into its
    place), else None, with an error when sfConfig is there but no component."""
    sfconfig = run.root.get(SF_CONFIG)
    if isinstance(sfconfig, Reference) and not (sfconfig.lazy or sfconfig.data):
        sfconfig = _follow_sfconfig(sfconfig, run)
    if SF_CONFIG not in run.root or isinstance(sfconfig, Component):
        return sfconfig if isinstance(sfconfig, Component) else None
    loc = run.root.location_of(SF_CONFIG)
    run.report(
        ResolutionError(
            "sfConfig must be a Component Description, found "
            + ("a function" if hasattr(sfconfig, "kind") else "a simple value"),
            loc=loc,
            hint="write sfConfig extends Compound { ... }",
            source_line=run.sources.source_line(loc),
        ),
        in_sfconfig=True,
    )
    return None


def _follow_sfconfig(ref: Reference, run: _Pass) -> Any:
    """`sfConfig testX;`: SmartFrog's sfConfig phase resolves the reference and deploys the
    component it names; sd puts a copy of it in sfConfig's place."""
    from .resolve import Node, copy_node

    try:
        target = run.types.follow(ref, run.root, set())
    except DescriptionError as exc:
        run.errors.append(exc)
        return None
    if not isinstance(target, Node):
        return target  # the caller says it is no component description
    clone = copy_node(target, run.sources.budget, ref.loc)
    run.root.set(SF_CONFIG, clone, run.root.location_of(SF_CONFIG))
    return clone


def _link_phase(
    run: _Pass,
    sfconfig: Component | None,
    environ: Mapping[str, str] | None,
    properties: Mapping[str, str] | None,
    *,
    complete: bool,
) -> list[tuple[str, SourceLocation | None]]:
    """Link resolution (references, PROPERTY, ENVPROPERTY, assertions) of sfConfig, then its
    TBDs: errors when COMPLETE, else returned for the caller to show. A library (no sfConfig)
    is evaluated leniently, to show its prototypes as they would be used."""
    from .evaluate import Evaluator, find_tbds, tbd_errors
    from .resolve import Node

    evaluator = Evaluator(run.root, run.sources, environ=environ, properties=properties)
    if sfconfig is None:
        # SmartFrog links sfConfig only: what fails here is no problem of the library (a
        # prototype may read a property its user sets), and schemas are not checked.
        evaluator.check_assertions = False
        for _name, child in list(run.root.children()):
            if not (isinstance(child, Node) and child.error is not None):
                evaluator.evaluate_tree(child, [], warnings=True)
        return []
    evaluator.evaluate_tree(sfconfig, run.errors)
    if not complete:
        return find_tbds(sfconfig)
    for error in tbd_errors(sfconfig, run.sources):
        run.report(error, in_sfconfig=True)
    return []
