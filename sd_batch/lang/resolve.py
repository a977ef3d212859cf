"""Resolution phases 1-3, as SmartFrog orders them: includes, type (`extends`) and place.

Type resolution copies each prototype's fully resolved attributes, left to right, then the
component's own; a redefined attribute keeps its first position and its value is replaced whole
(nested components are never merged). Place resolution then moves path-named attributes
(`inner:y 20;`) into the component they name, in passes until nothing moves. Problems inside
`sfConfig` are errors; problems in prototypes outside it are kept and only become errors when
something under `sfConfig` uses that prototype (a library may hold prototypes whose parts a
user did not include). Function and link resolution live in `evaluate.py`.
May import: errors, lang.model, lang.syntax, lang.includes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import (
    CyclicReference,
    DescriptionError,
    IncludeError,
    ResolutionError,
    SourceLocation,
    UnresolvedReference,
)
from .budget import COMPONENT_LEVELS, NESTING, Budget, nesting_depth
from .includes import SourceSet, include_error
from .model import Attribute, Component, Reference
from .suggest import suggest
from .syntax import AttrDef, Body, ComponentExpr, Include, ListExpr, NullProto

SF_CONFIG = "sfConfig"


class State(enum.Enum):
    NEW = 0  # prototypes not applied yet
    APPLYING = 1  # prototypes being applied (a lookup landing here is a cycle)
    APPLIED = 2  # own attributes final; children may still be unresolved
    CHILDREN = 3  # resolving children (copying this as a prototype now is a cycle)
    DONE = 4
    BROKEN = 5  # failed; `error` says why


@dataclass(eq=False)
class Node(Component):
    """A component during resolution: its pending prototypes and path-named attributes."""

    protos: tuple[Any, ...] = ()
    placements: list[AttrDef] = field(default_factory=list)
    state: State = State.NEW
    error: DescriptionError | None = None


# -- building the tree from syntax -----------------------------------------------------------------
class TreeBuilder:
    """Syntax -> a tree of Nodes, expanding includes where they stand (phase 1)."""

    def __init__(self, sources: SourceSet) -> None:
        self.sources = sources
        self.budget = sources.budget
        #: The files being included, outermost first: (real path, name as shown).
        self.chain: list[tuple[str, str]] = []
        #: How deeply the component being built is nested (levels), and the most allowed.
        self.depth = 0
        self.max_depth = sources.budget.budgets.depth

    @staticmethod
    def _real(name: str) -> str:
        """One spelling per file (`./a.sf`, `/x/../a.sf`), so a cycle is seen at once."""
        try:
            return str(Path(name).resolve())
        except (OSError, ValueError):
            return name

    def root(self, items: Iterable[AttrDef | Include], filename: str) -> Node:
        node = Node(state=State.APPLIED)
        self.chain.append((self._real(filename), filename))
        try:
            items = tuple(items)
            self.budget.attributes(len(items), None)
            self._fill(node, items)
        finally:
            self.chain.pop()
        return node

    def _fill(self, node: Node, items: tuple[AttrDef | Include, ...]) -> None:
        """ITEMS into NODE (the caller has counted them)."""
        for item in items:
            if isinstance(item, Include):
                self._include(node, item)
            elif len(item.name) > 1:
                value = self.value(item.value, item.loc)
                node.placements.append(AttrDef(item.name, value, item.loc))
            else:
                node.set(item.name[0], self.value(item.value, item.loc), item.loc)

    def _include(self, node: Node, include: Include) -> None:
        path = self.sources.locate(include)
        if path is None:
            if include.optional:
                return
            raise include_error(include, self.sources)
        self.budget.include(include.loc)
        name = self.sources.display_name(path)
        real = [key for key, _shown in self.chain]
        if self._real(name) in real:
            start = real.index(self._real(name))
            cycle = " -> ".join([*(shown for _key, shown in self.chain[start:]), name])
            raise IncludeError(
                f'include cycle: "{include.path}" is already being included',
                loc=include.loc,
                hint=f"chain: {cycle}",
                source_line=self.sources.source_line(include.loc),
            )
        parsed = self.sources.files.get(name) or self.sources.read(path, loc=include.loc)
        self.chain.append((self._real(name), name))
        try:
            self.budget.attributes(len(parsed.items), include.loc)
            self._fill(node, parsed.items)
        finally:
            self.chain.pop()

    def value(self, value: Any, loc: SourceLocation | None = None) -> Any:
        if isinstance(value, ComponentExpr):
            self.budget.component(value.loc)
            protos: list[Any] = []
            for proto in value.protos:
                protos.append(self.body(proto) if isinstance(proto, Body) else proto)
            return Node(
                loc=value.loc,
                protos=tuple(protos),
                is_lazy=value.modifier == "LAZY",
                is_data=value.modifier == "DATA",
            )
        if type(value) in NESTING:  # syntax holds no component below these: kept as is
            depth = self.depth + nesting_depth(value, self.max_depth - self.depth)
            if depth > self.max_depth:
                self.budget.nesting(depth, getattr(value, "loc", loc))
        return value

    def body(self, body: Body) -> Node:
        self.depth += COMPONENT_LEVELS
        if self.depth > self.max_depth:
            self.budget.nesting(self.depth, body.loc)
        self.budget.component(body.loc, len(body.items))
        node = Node(loc=body.loc, state=State.APPLIED)
        try:
            self._fill(node, body.items)
        finally:
            self.depth -= COMPONENT_LEVELS
        return node


# -- copying -----------------------------------------------------------------------------------
def copy_value(value: Any, budget: Budget, loc: SourceLocation | None) -> Any:
    if isinstance(value, Node):
        return copy_node(value, budget, loc)
    if isinstance(value, list):
        budget.value(len(value), loc, single=False)
        return [copy_value(v, budget, loc) for v in value]
    return value


def copy_node(node: Node, budget: Budget, loc: SourceLocation | None) -> Node:
    """A deep copy: references inside are resolved relative to wherever the copy is put.

    Counted against BUDGET as it goes (LOC: what asked for the copy), since copies are how
    prototypes extending each other twice grow exponentially."""
    budget.component(loc, len(node.attributes) + len(node.placements))
    clone = Node(
        loc=node.loc,
        is_data=node.is_data,
        is_lazy=node.is_lazy,
        protos=node.protos,
        state=node.state,
        error=node.error,
    )
    clone.attributes, clone.placements = copy_contents(node, clone, budget, loc)
    return clone


def copy_contents(
    node: Node, parent: Node, budget: Budget, loc: SourceLocation | None
) -> tuple[dict[str, Attribute], list[AttrDef]]:
    """NODE's attributes and path-named attributes, deep-copied, nested components under
    PARENT (`extends` takes these of a prototype: no copy of the prototype itself is made).
    The caller has counted them."""
    attributes: dict[str, Attribute] = {}
    for name, attr in node.attributes.items():
        value = attr.value
        if isinstance(value, Node):
            child = copy_node(value, budget, loc)
            child.parent, child.name = parent, name
            attributes[name] = Attribute(name, child, attr.loc)
        elif isinstance(value, list):
            attributes[name] = Attribute(name, copy_value(value, budget, loc), attr.loc)
        else:  # immutable: the (frozen) attribute itself can be shared
            attributes[name] = attr
    placements = [AttrDef(p.name, copy_value(p.value, budget, loc), p.loc) for p in node.placements]
    return attributes, placements


def ancestors(node: Component | None) -> Iterator[Component]:
    while node is not None:
        yield node
        node = node.parent


@dataclass(frozen=True, slots=True)
class AttributeSlot:
    """Where a reference part landed on an attribute: its name in the component holding it."""

    scope: Component
    name: str


ErrorFactory = Callable[..., DescriptionError]


def locate_part(
    node: Component,
    part: Any,
    ref: Reference,
    root: Component,
    error: ErrorFactory,
    *,
    here_hint: bool,
    budget: Budget,
) -> AttributeSlot | Component | None:
    """The tree walk of one reference part, shared by type resolution and evaluation.

    ATTRIB and HERE land on an attribute (returned as its slot: the caller reads the raw value
    or evaluates it); PARENT, ROOT and THIS land on a component; other kinds (PROPERTY, HOST...)
    are the caller's (None). Unknown names raise UnresolvedReference with a hint (none for an
    OPTIONAL reference: its error is never shown).
    """
    kind, name = part.kind, part.name
    hint = not ref.optional
    if kind == "ATTRIB":
        for scope in ancestors(node):
            if name in scope.attributes:
                return AttributeSlot(scope, name)
        raise error(
            UnresolvedReference,
            f"unknown reference ATTRIB {name}",
            ref.loc,
            hint=suggest(name, node, budget) if hint else None,
        )
    if kind == "HERE":
        if name in node.attributes:
            return AttributeSlot(node, name)
        where = node.path or "the top level"
        raise error(
            UnresolvedReference,
            f"unknown reference {ref.path_text()}: no attribute {name} in {where}",
            ref.loc,
            hint=suggest(name, node, budget) if here_hint and hint else None,
        )
    if kind == "PARENT":
        if node.parent is None:
            raise error(
                UnresolvedReference,
                f"reference {ref} has no parent",
                ref.loc,
                hint="the top level has no PARENT",
            )
        return node.parent
    if kind == "ROOT":
        return root
    if kind == "THIS":
        return node
    return None


# -- type and place resolution (phases 2 and 3) ---------------------------------------------------
class TypeResolver:
    def __init__(self, root: Node, sources: SourceSet) -> None:
        self.root = root
        self.sources = sources
        self.budget = sources.budget
        #: Components whose prototypes are being applied, outermost first (to name a cycle).
        self.applying: list[Node] = []
        #: An `extends` of a `[ ]` list made a vector function (the function phase must run).
        self.made_functions = False

    def _error(
        self, cls: type[DescriptionError], message: str, loc: Any, **kw: Any
    ) -> DescriptionError:
        return cls(message, loc=loc, source_line=self.sources.source_line(loc), **kw)

    # ---- phase 2 ----
    def apply(self, node: Node) -> None:
        """Apply NODE's prototypes, so its own attributes are final."""
        if node.state is State.BROKEN:
            if node.error is None:
                raise ValueError(f"{node.path}: broken, but no error was kept")
            raise node.error
        if node.state is not State.NEW:
            if node.state is State.APPLYING:
                cycle = self.applying[self.applying.index(node) :] + [node]
                raise self._error(
                    CyclicReference,
                    "cyclic prototype: " + " extends ".join(n.path or "ROOT" for n in cycle),
                    node.loc,
                )
            return
        node.state = State.APPLYING
        self.applying.append(node)
        try:
            merged: dict[str, Attribute] = {}
            placements: list[AttrDef] = []
            for proto in node.protos:
                if isinstance(proto, NullProto):
                    continue
                if isinstance(proto, Node):  # an inline { ... } body: used once, no copy needed
                    attributes, places = proto.attributes, proto.placements
                else:
                    target = self.prototype(proto, node)
                    count = len(target.attributes) + len(target.placements)
                    self.budget.attributes(count, proto.loc)
                    attributes, places = copy_contents(target, node, self.budget, proto.loc)
                merged.update(attributes)
                placements.extend(places)
            node.attributes = merged
            for name, attr in merged.items():
                if isinstance(attr.value, Component):
                    attr.value.parent, attr.value.name = node, name
            node.placements = placements + node.placements
            node.protos = ()
            node.state = State.APPLIED
        except DescriptionError as exc:
            node.state, node.error = State.BROKEN, exc
            raise
        finally:
            self.applying.pop()

    def resolve(self, node: Node, collect: list[DescriptionError] | None = None) -> None:
        """Fully type-resolve NODE and everything under it.

        With COLLECT, a failing child is recorded there and its siblings still resolve, so one
        run reports every broken component (used for sfConfig; prototypes fail at first error).
        """
        self.apply(node)
        if node.state in (State.DONE, State.CHILDREN):
            return
        node.state = State.CHILDREN
        children = [child for _name, child in node.children()]
        for placement in node.placements:
            if isinstance(placement.value, Node):
                placement.value.parent = node
                children.append(placement.value)
        failed: DescriptionError | None = None
        for child in children:
            if not isinstance(child, Node):
                raise TypeError(f"{node.path}: the tree builder made a {type(child).__name__}")
            try:
                self.resolve(child, collect)
            except DescriptionError as exc:
                if collect is None:
                    node.state, node.error = State.BROKEN, exc
                    raise
                self.budget.record(collect, exc)
                failed = exc
        if failed is not None:
            node.state, node.error = State.BROKEN, failed
            raise failed
        node.state = State.DONE

    def prototype(self, ref: Reference, user: Node) -> Node:
        """The component an `extends` reference names, fully resolved, ready to copy."""
        target = self.follow(ref, user, set())
        if isinstance(target, ListExpr):
            self.made_functions = True
            return list_as_vector_function(target)
        if not isinstance(target, Node):
            raise self._error(
                ResolutionError,
                f"prototype {ref.path_text()} is not a component",
                ref.loc,
                hint="extends takes component descriptions (or NULL)",
            )
        if target is user:
            raise self._error(
                CyclicReference, f"cyclic prototype: {ref.path_text()} extends itself", ref.loc
            )
        if target.state is State.CHILDREN or any(a is target for a in ancestors(user)):
            raise self._error(
                CyclicReference,
                f"cyclic prototype: {ref.path_text()} contains the component that extends it",
                ref.loc,
            )
        try:
            self.resolve(target)
        except DescriptionError as exc:
            if target.path and target.path.split(":")[0] != SF_CONFIG:
                cause = exc  # name the first problem, not every prototype on the way to it
                while isinstance(cause.__cause__, DescriptionError):
                    cause = cause.__cause__
                raise self._error(
                    ResolutionError,
                    f"prototype {target.path} cannot be used: {cause.headline()}",
                    ref.loc,
                ) from cause
            raise
        return target

    def follow(self, ref: Reference, start: Component, seen: set[int]) -> Any:
        """Where a prototype reference points, during type resolution (no values evaluated)."""
        if id(ref) in seen:
            raise self._error(CyclicReference, f"cyclic reference {ref}", ref.loc)
        seen.add(id(ref))
        current: Any = start
        holder: Component = start
        for index, part in enumerate(ref.parts):
            if index > 0:
                current = self._deref(current, holder, seen)
                if not isinstance(current, Component):
                    previous = ref.parts[index - 1].name or ref.parts[index - 1].kind
                    raise self._error(
                        UnresolvedReference,
                        f"unknown reference {ref.path_text()}: {previous} is not a component",
                        ref.loc,
                    )
                if isinstance(current, Node):
                    self.apply(current)
            current, holder = self.step(current, part, ref, first=index == 0)
        return self._deref(current, holder, seen)

    def _deref(self, value: Any, holder: Component, seen: set[int]) -> Any:
        if isinstance(value, Reference):
            return self.follow(value, holder, seen)
        return value

    def step(
        self, node: Component, part: Any, ref: Reference, *, first: bool
    ) -> tuple[Any, Component]:
        """One reference part from NODE: the value found and the component holding it."""
        found = locate_part(
            node, part, ref, self.root, self._error, here_hint=first, budget=self.budget
        )
        if isinstance(found, AttributeSlot):
            return found.scope.attributes[found.name].value, found.scope
        if found is None:
            raise self._error(
                ResolutionError, f"{part.kind} references cannot name a prototype", ref.loc
            )
        return found, found

    # ---- phase 3 ----
    def place(self, scope: Node) -> list[tuple[Node, AttrDef]]:
        """Move path-named attributes into place; returns those that found no target."""
        while True:
            moved = False
            pending: list[tuple[Node, AttrDef]] = []
            walked = 0  # a pass per placement waiting for another: quadratic at worst, so timed
            for node in walk_nodes(scope):
                walked += 1
                if not node.placements:
                    continue
                keep: list[AttrDef] = []
                for placement in node.placements:
                    target = node_at(node, placement.name[:-1])
                    if target is None:
                        keep.append(placement)
                        pending.append((node, placement))
                        continue
                    target.set(placement.name[-1], placement.value, placement.loc)
                    moved = True
                node.placements = keep
            self.budget.work(walked, scope.loc)
            if not moved:
                return pending


def list_as_vector_function(items: ListExpr) -> Node:
    """`[a, b]` as SmartFrog's parser makes it: a `vector` function component (so `x extends
    hosts`, hosts being a list, makes x that list once the function phase has run)."""
    node = Node(loc=items.loc, state=State.DONE)
    node.set("phase.function", "org.smartfrog.sfcore.languages.sf.ConstructFunction", items.loc)
    node.set("sfFunctionClass", "org.smartfrog.sfcore.languages.sf.functions.Vector", items.loc)
    for index, item in enumerate(items.items):
        node.set(f"unique{index}", item, items.loc)
    return node


def walk_nodes(node: Node) -> Iterator[Node]:
    """NODE and every Node under it (placed values too), depth first, parents first."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current  # the caller may add to current before its children are listed
        nested = [a.value for a in current.attributes.values() if isinstance(a.value, Node)]
        nested.extend(p.value for p in current.placements if isinstance(p.value, Node))
        stack.extend(reversed(nested))


def node_at(node: Component, path: tuple[str, ...]) -> Component | None:
    for name in path:
        value = node.get(name)
        if not isinstance(value, Component):
            return None
        node = value
    return node
