"""Budgets: the most work one description may ask for, counted while the work is done.

A few bytes of SmartFrog can ask for exponential work: forty prototypes that each extend the
previous one twice, a string or vector doubled forty times by `++` or `<>`, thirty files that
each include the next twice. So every kind of work that can outgrow the text is counted where it
happens, and checked *before* the big thing is built; an overrun is a `BudgetExceeded` naming the
budget and the place in the description that asked for it. `Budgets` is the value (generous
defaults for `sd validate`, the site's `[policy]` for jobs), `Budget` the counter that one
resolution ticks. Resolution phases tick it in a few named calls (`component`, `copy`,
`attributes`, `value`, `include`, `nesting`, `work`, `record`), nothing else.
May import: errors, lang.syntax, stdlib.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

from ..errors import BudgetExceeded, DescriptionError, DescriptionErrors, SourceLocation
from .syntax import IfExpr, ListExpr, OpExpr

MIB = 1024**2
#: Nesting levels one component counts for (a vector, list or operator counts one).
COMPONENT_LEVELS = 2
#: Values that nest (vectors, `[ ]` lists, operators, IF): their depth counts against `depth`.
NESTING = frozenset({list, ListExpr, OpExpr, IfExpr})


@dataclass(frozen=True, slots=True)
class Budgets:
    """The most one description may cost. The defaults (`sd validate`, pools, the web) are
    thousands of times what a real description needs (a few dozen components) and stop a bomb
    in well under a second and 100 MB; jobs get the site's `[policy]` (`JOB_BUDGETS` unless
    set). A 10 MB generated description needs more (`sd validate --budget`)."""

    #: Components created, copies by `extends` and by links to components included.
    components: int = 100_000
    #: Attributes created, copies included.
    attributes: int = 1_000_000
    #: Characters of one computed string, or items of one computed vector.
    value_length: int = 1_000_000
    #: Characters and vector items of every computed or copied value together.
    value_total: int = 20_000_000
    #: `#include` expansions (a file included twice counts twice).
    includes: int = 10_000
    #: Levels of components, vectors, lists and operators nested in one another (a component
    #: counts `COMPONENT_LEVELS`: every phase recurses through it, and Python's stack holds
    #: ~1000 frames, so 250 components deep is what resolution and rendering can take).
    depth: int = 500
    #: Errors reported before resolution stops (and says there are more).
    errors: int = 100
    #: Bytes of description text read, every file together (parsed, a byte of text can cost
    #: ~120 bytes of memory and ~5 us: references in a list, one-character attributes).
    source_bytes: int = 4 * MIB
    #: Wall-clock seconds of parsing and resolution.
    seconds: float = 120.0
    #: Where these are set, for the message: `[policy]` (the site config's key names it),
    #: an option (`--budget`: `NAME=N` follows it), or None (built in).
    origin: str | None = None

    def __post_init__(self) -> None:
        for name in BUDGET_NAMES:
            if getattr(self, name) <= 0:
                raise ValueError(f"budget {name} must be positive")


#: Budget fields and the `[policy]` key that sets each (site config).
POLICY_KEYS = {
    "components": "max_components",
    "attributes": "max_attributes",
    "value_length": "max_value_length",
    "value_total": "max_value_total",
    "includes": "max_includes",
    "depth": "max_depth",
    "errors": "max_errors",
    "source_bytes": "max_source_bytes",
    "seconds": "max_description_seconds",
}
BUDGET_NAMES = tuple(f.name for f in fields(Budgets) if f.name != "origin")

#: A job's description (its own files and the site templates it includes): far above what a
#: one-VM description needs (a few dozen components), far below what hurts a worker.
JOB_BUDGETS = Budgets(
    components=20_000,
    attributes=200_000,
    value_length=100_000,
    value_total=2_000_000,
    includes=1_000,
    depth=100,
    errors=20,
    source_bytes=2 * MIB,
    seconds=20.0,
    origin="[policy]",
)

_WHAT = {
    "components": "description too large: more than {} components",
    "attributes": "description too large: more than {} attributes",
    "value_length": "value too large: more than {} characters or vector items",
    "value_total": "description too large: more than {} characters and vector items in values",
    "includes": "description too large: more than {} #include expansions",
    "depth": "description too deeply nested: more than {} levels (a component counts two)",
    "source_bytes": "description too large: more than {} bytes of text",
    "seconds": "description too slow to resolve: more than {} seconds",
}
#: How much `work` passes between two looks at the clock.
_CLOCK_EVERY = 4096


class _Overrun(Exception):
    """Carries a `DescriptionError` that ends resolution at once: out of the resolver's
    `except DescriptionError` (which collects errors and goes on with siblings), caught and
    re-raised as the error by `enforced` or `Budget.reporting`. Private: only this module
    names it (others raise what `Budget.exceeded` returns)."""

    def __init__(self, error: DescriptionError) -> None:
        super().__init__(error.headline())
        self.error = error


class Budget:
    """The counts of one resolution against its `Budgets`."""

    def __init__(
        self,
        budgets: Budgets,
        *,
        quote: Callable[[SourceLocation | None], str | None] = lambda _loc: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budgets = budgets
        #: The source line for a location (the caret excerpt of the error).
        self.quote = quote
        self.clock = clock
        self.deadline = clock() + budgets.seconds
        self.components = 0
        self.attribute_count = 0
        self.value_count = 0
        self.include_count = 0
        self.source_count = 0
        self.suggestions = 0
        self._work = 0
        self._next_look = _CLOCK_EVERY

    # -- the checks ----------------------------------------------------------------------------
    def exceeded(self, name: str, loc: SourceLocation | None) -> _Overrun:
        limit = getattr(self.budgets, name)
        origin = self.budgets.origin
        where = ""
        if origin == "[policy]":
            where = f"; raise [policy] {POLICY_KEYS[name]}"
        elif origin:
            where = f"; raise it with {origin} {name}=N"
        message = f"{_WHAT[name].format(limit)} (budget {name}{where})"
        return _Overrun(BudgetExceeded(message, budget=name, loc=loc, source_line=self.quote(loc)))

    def component(self, loc: SourceLocation | None, attributes: int = 0) -> None:
        """One component (with ATTRIBUTES attributes) is about to be made. The hot path of
        copying: one call, the clock looked at every few thousand."""
        self.components += 1
        self.attribute_count += attributes
        if self.components > self.budgets.components:
            raise self.exceeded("components", loc)
        if self.attribute_count > self.budgets.attributes:
            raise self.exceeded("attributes", loc)
        self._work += 1 + attributes
        if self._work >= self._next_look:
            self.work(0, loc)

    def attributes(self, count: int, loc: SourceLocation | None) -> None:
        self.attribute_count += count
        if self.attribute_count > self.budgets.attributes:
            raise self.exceeded("attributes", loc)

    def value(self, size: int, loc: SourceLocation | None, *, single: bool = True) -> None:
        """A value of SIZE characters or items is about to be computed (SINGLE) or copied."""
        if single and size > self.budgets.value_length:
            raise self.exceeded("value_length", loc)
        self.value_count += size
        if self.value_count > self.budgets.value_total:
            raise self.exceeded("value_total", loc)
        self.work(size >> 6, loc)

    def include(self, loc: SourceLocation | None) -> None:
        self.include_count += 1
        if self.include_count > self.budgets.includes:
            raise self.exceeded("includes", loc)

    def source(self, size: int, loc: SourceLocation | None) -> None:
        """SIZE more bytes of text are about to be read or parsed."""
        if self.source_count + size > self.budgets.source_bytes:
            raise self.exceeded("source_bytes", loc)
        self.source_count += size

    def source_left(self) -> int:
        return self.budgets.source_bytes - self.source_count

    def nesting(self, depth: int, loc: SourceLocation | None) -> None:
        if depth > self.budgets.depth:
            raise self.exceeded("depth", loc)

    def work(self, amount: int, loc: SourceLocation | None) -> None:
        """AMOUNT units of work done; now and then, look at the clock."""
        self._work += amount
        if self._work >= self._next_look:
            self._next_look = self._work + _CLOCK_EVERY
            if self.clock() > self.deadline:
                raise self.exceeded("seconds", loc)

    # -- errors --------------------------------------------------------------------------------
    def record(self, errors: list[DescriptionError], error: DescriptionError) -> None:
        """Add ERROR to ERRORS (once); past the errors budget, stop resolving and report them."""
        if any(e is error for e in errors):
            return
        if len(errors) >= self.budgets.errors:
            raise _Overrun(DescriptionErrors(errors, truncated=True))
        errors.append(error)

    def note(self, warnings: list[DescriptionError], warning: DescriptionError) -> None:
        """Add WARNING to WARNINGS (once), keeping no more than the errors budget."""
        if len(warnings) < self.budgets.errors and not any(w is warning for w in warnings):
            warnings.append(warning)

    @contextmanager
    def reporting(self, errors: list[DescriptionError]) -> Iterator[None]:
        """Around phases that collect ERRORS: a budget exceeded after some errors were found
        is reported first, with them."""
        try:
            yield
        except _Overrun as exc:
            if errors and not isinstance(exc.error, DescriptionErrors):
                raise DescriptionErrors([exc.error, *errors]) from None
            raise exc.error from None

    def may_suggest(self) -> bool:
        """Whether one more "did you mean" search fits: as many as errors can be reported."""
        self.suggestions += 1
        return self.suggestions <= self.budgets.errors


@contextmanager
def enforced() -> Iterator[None]:
    """Around a whole parse and resolution: an overrun leaves as its `DescriptionError`."""
    try:
        yield
    except _Overrun as exc:
        raise exc.error from None


def nesting_depth(value: Any, limit: int) -> int:
    """How deeply VALUE nests vectors, lists and operators (1: not at all), counted without
    recursion and only up to just past LIMIT, so a bomb a million levels deep costs little."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack and deepest <= limit:
        current, depth = stack.pop()
        deepest = max(deepest, depth)
        kind = type(current)
        if kind is list:
            inner: Iterable[Any] = current
        elif kind is ListExpr:
            inner = current.items
        elif kind is OpExpr:
            inner = current.operands
        else:
            inner = (current.cond, current.then, current.otherwise)
        for item in inner:
            if type(item) in NESTING:
                stack.append((item, depth + 1))
    return deepest
