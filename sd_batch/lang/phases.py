"""SmartFrog's function phase: components that carry `phase.function` become calls.

After type and place resolution, every component holding an attribute `phase.function` is
replaced, children first, by what the named construct makes of it (SmartFrog's `Phase` visitor
with its `ConstructFunction`, `ConstructSchema` and `ConstructAssertions` actions):
- a function call (`sum extends Function {...}`): evaluated at link time (functions.py);
- a schema (`PrimSchema extends Schema {...}`): every entry must itself be a call (a schema
  element); at link time each is checked against the component holding the schema (type,
  presence, binding: schemas.py) and the schema attribute then disappears, as SmartFrog's
  temporary values do;
- assertions: every entry must evaluate to true; the attribute then disappears.
Prototypes outside sfConfig are transformed too but never evaluated, as in SmartFrog.
May import: errors, lang.model, lang.resolve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import DescriptionError, ResolutionError, SourceLocation
from .budget import Budget
from .model import Component
from .resolve import Node, copy_node

PHASE_FUNCTION = "phase.function"
#: The value of an attribute that disappears once evaluated (a static schema that held).
REMOVED = object()
_SF = "org.smartfrog.sfcore.languages.sf."
CONSTRUCTS = {
    _SF + "ConstructFunction": "function",
    _SF + "ConstructSchema": "schema",
    _SF + "ConstructAssertions": "assertions",
}


@dataclass(frozen=True, eq=False)
class FunctionCall:
    """A component turned into a call by the function phase; its value is computed at link."""

    node: Node
    kind: str  # "function", "schema" or "assertions"
    lazy: bool
    loc: SourceLocation | None

    @property
    def construct(self) -> str:
        """The Java class SmartFrog names for this kind of call (what `phase.function` said)."""
        return next(name for name, kind in CONSTRUCTS.items() if kind == self.kind)

    def fresh(self, holder: Component, name: str, budget: Budget) -> Node:
        """A copy to evaluate inside HOLDER (a call may be evaluated in several places),
        counted against BUDGET as every copy is."""
        node = copy_node(self.node, budget, self.loc)
        node.parent, node.name = holder, name
        return node


def function_phase(root: Node, sources: Any, *, made: bool = False) -> list[DescriptionError]:
    """Replace every `phase.function` component under ROOT by its call, children first.

    Only a file that says `phase.` (or an `extends` of a `[ ]` list: MADE) can hold one: the
    others skip the walk over the tree (a substring search of the text is far cheaper).
    """
    errors: list[DescriptionError] = []
    if made or any("phase." in source.text for source in sources.files.values()):
        _transform(root, sources, errors)
    return errors


def _transform(node: Node, sources: Any, errors: list[DescriptionError]) -> None:
    for name, attr in list(node.attributes.items()):
        child = attr.value
        if not isinstance(child, Node):
            continue
        _transform(child, sources, errors)
        action = child.attributes.get(PHASE_FUNCTION)
        if action is None:
            continue
        try:
            node.set(name, _construct(child, action.value, sources), attr.loc)
        except DescriptionError as exc:
            errors.append(exc)


def _construct(node: Node, action: Any, sources: Any) -> FunctionCall:
    kind = CONSTRUCTS.get(action) if isinstance(action, str) else None
    loc = node.location_of(PHASE_FUNCTION)
    if kind is None:
        raise ResolutionError(
            f"{node.path}: phase.function names {action!r}, a construct sd-batch does not have",
            loc=loc,
            source_line=sources.source_line(loc),
            hint="known: " + ", ".join(CONSTRUCTS),
        )
    del node.attributes[PHASE_FUNCTION]
    lazy = node.get("sfFunctionLazy") is True
    if kind == "schema":
        for name, attr in node.attributes.items():
            if name in ("sfAssertionPhase", "sfSchemaDescription"):
                continue
            if not (isinstance(attr.value, FunctionCall) and attr.value.kind == "function"):
                raise ResolutionError(
                    f"{node.path}: element {name} of the schema must be a component description "
                    "(a schema element such as Compulsory, Optional or Integer)",
                    loc=attr.loc or node.loc,
                    source_line=sources.source_line(attr.loc or node.loc),
                )
            element = copy_node(attr.value.node, sources.budget, attr.loc)
            element.set("name", name, attr.loc)  # SmartFrog's sfAddParameter("name", key)
            node.set(name, FunctionCall(element, "function", False, attr.value.loc), attr.loc)
    return FunctionCall(node, kind, lazy, node.loc)


#: SmartFrog's default phases (SFComponentDescriptionImpl.sfGetPhases, this revision: no
#: "predicate" phase; schemas are checked when link resolution evaluates them).
DEFAULT_PHASES = ("type", "place", "function", "sfConfig", "link")
#: Phases sd-batch runs; "print" only prints in SmartFrog and changes nothing.
KNOWN_PHASES = frozenset({*DEFAULT_PHASES, "print"})


def phase_list(root: Node, sources: Any) -> tuple[str, ...]:
    """The top level's `phaseList` (removed, as SmartFrog does), or the default phases.

    sd always runs type and place first (its tree is built by them) and function before link;
    a list may leave out function, sfConfig or link, and each phase named must be one we know.
    """
    attr = root.attributes.pop("phaseList", None)
    if attr is None:
        return DEFAULT_PHASES
    names = attr.value
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise ResolutionError(
            "phaseList must be a primitive vector of phase names",
            loc=attr.loc,
            source_line=sources.source_line(attr.loc),
            hint='write phaseList [|"type", "place", "function", "sfConfig", "link"|]',
        )
    return tuple(names)


def other_phases(root: Node, phases: tuple[str, ...], sources: Any) -> list[DescriptionError]:
    """A phase of the list sd does not know acts on components carrying `phase.NAME` (as
    SmartFrog's generic Phase visitor does): none may carry one, since we have no action."""
    wanted = {f"phase.{name}" for name in phases if name not in KNOWN_PHASES}
    errors: list[DescriptionError] = []
    if not wanted:
        return errors
    stack: list[Component] = [root]
    while stack:
        node = stack.pop()
        for name, attr in node.attributes.items():
            if name in wanted:
                errors.append(
                    ResolutionError(
                        f"{node.path}: {name} names {attr.value!r}: sd-batch has no action for "
                        f"phase {name.removeprefix('phase.')}",
                        loc=attr.loc,
                        source_line=sources.source_line(attr.loc),
                        hint="known phases: " + ", ".join(sorted(KNOWN_PHASES)),
                    )
                )
            elif isinstance(attr.value, Component):
                stack.append(attr.value)
    return errors
