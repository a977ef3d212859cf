"""Resolution phases 4-5: functions (operators, `[ ]` lists) and links (references), then TBDs.

Evaluation is on demand with memory: an attribute is evaluated when the walk over `sfConfig`
reaches it or when a reference needs it, so chains resolve in any order and a cycle is seen as an
attribute met again while it is being evaluated. LAZY references stay references, and so does
everything that depends on one (`deferred`); `DATA` references are values and never followed.
A non-LAZY reference to a component gets a copy of that component, evaluated where it stands.
May import: errors, lang.model, lang.syntax, lang.resolve.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import (
    CyclicReference,
    DescriptionError,
    ResolutionError,
    TbdError,
    UnresolvedReference,
)
from .budget import Budget
from .includes import SourceSet
from .model import INT_RANGE, TBD, Attribute, Component, Long, Reference
from .phases import REMOVED, FunctionCall
from .resolve import AttributeSlot, Node, ancestors, copy_node, locate_part
from .syntax import ApplyRef, IfExpr, ListExpr, OpExpr

Result = tuple[Any, bool]  # (value, deferred)
#: The values evaluation may change; every other value is already final.
_EXPRESSIONS = (Reference, ListExpr, OpExpr, IfExpr, ApplyRef, FunctionCall)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number_kind(values: list[Any], result: Any) -> Any:
    if isinstance(result, int) and any(isinstance(v, Long) for v in values):
        return Long(result)
    return result


def _java_divide(a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int):
        quotient = abs(a) // abs(b)  # Java integer division truncates toward zero
        return quotient if (a >= 0) == (b >= 0) else -quotient
    return a / b


_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}


class Evaluator:
    """Evaluates references and expressions of one description, remembering every result."""

    def __init__(
        self,
        root: Component,
        sources: SourceSet,
        *,
        environ: Mapping[str, str] | None = None,
        properties: Mapping[str, str] | None = None,
    ) -> None:
        self.root = root
        self.sources = sources
        self.budget: Budget = sources.budget
        self.environ = environ
        self.properties = properties or {}
        self.results: dict[tuple[int, str], Result] = {}
        self.failures: dict[tuple[int, str], DescriptionError] = {}
        self.active: list[tuple[Component, str]] = []
        self.evaluated: set[int] = set()
        #: Components whose evaluate_tree has started and not finished (linking one is a cycle).
        self.in_progress: set[int] = set()
        #: Copies made to evaluate function calls: kept alive, so their ids (the keys of
        #: `results`) are never reused by a later copy.
        self.scratch: list[Component] = []
        #: Check schemas and assertions (not when showing a library's prototypes).
        self.check_assertions = True

    def _error(
        self, cls: type[DescriptionError], message: str, loc: Any, **kw: Any
    ) -> DescriptionError:
        return cls(message, loc=loc, source_line=self.sources.source_line(loc), **kw)

    # -- walking a tree --------------------------------------------------------------------------
    def evaluate_tree(
        self, node: Component, errors: list[DescriptionError], *, warnings: bool = False
    ) -> None:
        """Evaluate every attribute under NODE, collecting one error per failing attribute.

        ERRORS past the errors budget stop resolution; WARNINGS past it are just not kept."""
        if id(node) in self.evaluated:
            return
        self.evaluated.add(id(node))
        self.in_progress.add(id(node))
        self.budget.work(len(node.attributes), node.loc)
        try:
            for name in list(node.attributes):
                try:
                    self.value_of(node, name)
                except DescriptionError as exc:
                    (self.budget.note if warnings else self.budget.record)(errors, exc)
                    continue
                attr = node.attributes.get(name)  # a schema that held is gone
                value = attr.value if attr is not None else None
                if isinstance(value, Component):
                    self.evaluate_tree(value, errors, warnings=warnings)
        finally:
            self.in_progress.discard(id(node))

    def value_of(self, node: Component, name: str) -> Result:
        value = node.attributes[name].value
        if not isinstance(value, _EXPRESSIONS):  # literals and components: nothing to evaluate
            return value, False
        key = (id(node), name)
        if key in self.results:
            return self.results[key]
        if key in self.failures:
            raise self.failures[key]
        for index, (held, held_name) in enumerate(self.active):
            if held is node and held_name == name:
                chain = [h.attribute_path(n) for h, n in self.active[index:]] + [
                    node.attribute_path(name)
                ]
                attr = node.attributes[name]
                raise self._error(
                    CyclicReference, "cyclic reference: " + " -> ".join(chain), self._ref_loc(attr)
                )
        attr = node.attributes[name]
        self.active.append((node, name))
        try:
            if isinstance(attr.value, FunctionCall):
                from .schemas import evaluate_call  # here: only descriptions with functions

                value, deferred = evaluate_call(self, attr.value, node, name)
            else:
                value, deferred = self.evaluate(attr.value, node)
            linked = not deferred and not isinstance(attr.value, FunctionCall)
            if linked and value is not attr.value and isinstance(value, Component):
                value = self._linked_copy(value, node, attr)
        except DescriptionError as exc:
            self.failures[key] = exc
            raise
        finally:
            self.active.pop()
        if value is REMOVED:
            del node.attributes[name]
            self.results[key] = (None, False)
            return self.results[key]
        if not deferred and value is not attr.value:
            node.set(name, value, attr.loc)
        self.results[key] = (node.attributes[name].value, deferred)
        return self.results[key]

    @staticmethod
    def _ref_loc(attr: Attribute) -> Any:
        value = attr.value
        return getattr(value, "loc", None) or attr.loc

    def _linked_copy(self, target: Component, holder: Component, attr: Attribute) -> Component:
        """A non-LAZY link to a component: copy it, evaluated where it stands (as SmartFrog
        resolves the linked description in place, even a prototype outside sfConfig)."""
        if not isinstance(target, Node):
            raise TypeError(f"a link to a {type(target).__name__}, not a tree node")
        if id(target) in self.in_progress or any(a is target for a in ancestors(holder)):
            # The copy would have to hold the attribute being resolved: THIS, PARENT, ROOT...
            inside = [any(a is target for a in ancestors(h)) for h, _n in self.active]
            start = inside.index(True) if True in inside else len(self.active) - 1
            chain = [h.attribute_path(n) for h, n in self.active[start:]]
            raise self._error(
                CyclicReference,
                "cyclic reference: " + " -> ".join([*chain, target.path or "ROOT"]),
                self._ref_loc(attr),
                hint="a link copies the component it names, which here contains the link; "
                "write LAZY to keep it a reference",
            )
        errors: list[DescriptionError] = []
        self.evaluate_tree(target, errors, warnings=True)  # only the first is raised
        if errors:
            raise errors[0]
        clone = copy_node(target, self.budget, self._ref_loc(attr))
        self._mark_evaluated(clone)
        return clone

    def _mark_evaluated(self, node: Component) -> None:
        self.evaluated.add(id(node))
        for _name, child in node.children():
            self._mark_evaluated(child)

    # -- values ------------------------------------------------------------------------------------
    def evaluate(self, value: Any, ctx: Component) -> Result:
        if isinstance(value, Reference):
            return self._reference(value, ctx)
        if isinstance(value, ListExpr):
            items = [self.evaluate(item, ctx) for item in value.items]
            if any(deferred for _v, deferred in items):
                return value, True
            self.budget.value(len(items), value.loc)
            return [v for v, _d in items], False
        if isinstance(value, OpExpr):
            operands = [self.evaluate(item, ctx) for item in value.operands]
            if any(deferred for _v, deferred in operands):
                return value, True
            return self._apply(value, [v for v, _d in operands]), False
        if isinstance(value, IfExpr):
            cond, deferred = self.evaluate(value.cond, ctx)
            if deferred:
                return value, True
            if not isinstance(cond, bool):
                raise self._error(
                    ResolutionError,
                    f"IF needs a boolean condition, got {_describe(cond)}",
                    value.loc,
                )
            return self.evaluate(value.then if cond else value.otherwise, ctx)
        if isinstance(value, ApplyRef):
            raise self._error(
                ResolutionError,
                f"{value.kind} references are not supported by sd-batch",
                value.loc,
                hint="compute the value in the description with operators, or set it directly",
            )
        return value, False

    def _reference(self, ref: Reference, ctx: Component) -> Result:
        if ref.lazy:
            return ref, True
        if ref.data:
            return ref, False
        try:
            target, deferred = self.follow(ref, ctx)
        except UnresolvedReference:
            if not ref.optional:
                raise
            return self.evaluate(ref.default, ctx)
        if deferred:
            return ref, True
        return target, False

    def follow(self, ref: Reference, ctx: Component) -> Result:
        current: Any = ctx
        for index, part in enumerate(ref.parts):
            if index > 0 and not isinstance(current, Component):
                previous = ref.parts[index - 1]
                raise self._error(
                    UnresolvedReference,
                    f"unknown reference {ref.path_text()}: "
                    f"{previous.name or previous.kind} is {_describe(current)}, not a component",
                    ref.loc,
                )
            current, deferred = self._step(current, part, ref, first=index == 0)
            if deferred:
                return None, True
        return current, False

    def _step(self, node: Component, part: Any, ref: Reference, *, first: bool) -> Result:
        found = locate_part(
            node, part, ref, self.root, self._error, here_hint=True, budget=self.budget
        )
        if isinstance(found, AttributeSlot):
            return self.value_of(found.scope, found.name)
        if found is not None:
            return found, False
        kind, name = part.kind, part.name
        if kind in ("PROPERTY", "IPROPERTY"):
            return self._lookup(self.properties, "property", kind, name, ref), False
        if kind in ("ENVPROPERTY", "IENVPROPERTY"):
            if self.environ is None:
                raise self._error(
                    ResolutionError,
                    f"{kind} {name}: environment variables are not available to this description",
                    ref.loc,
                    hint="site policy blanks the host environment for job descriptions",
                )
            return self._lookup(self.environ, "environment variable", kind, name, ref), False
        if kind in ("HOST", "PROCESS"):
            raise self._error(
                ResolutionError,
                f"{ref} names a runtime place and can only be resolved at deploy time",
                ref.loc,
                hint=f"write LAZY {ref}",
            )
        raise self._error(
            ResolutionError, f"CONSTANT {name}: Java constants do not exist in sd-batch", ref.loc
        )

    def _lookup(
        self, table: Mapping[str, str], what: str, kind: str, name: str, ref: Reference
    ) -> Any:
        if name not in table:
            raise self._error(
                UnresolvedReference,
                f"{what} {name} is not set",
                ref.loc,
                hint="use OPTIONAL(default) for a fallback",
            )
        text = table[name]
        if kind.startswith("I"):
            try:
                return int(text)
            except ValueError:
                raise self._error(
                    ResolutionError, f"{what} {name}={text!r} is not an integer", ref.loc
                ) from None
        return text

    # -- operators -------------------------------------------------------------------------------
    def _apply(self, expr: OpExpr, values: list[Any]) -> Any:
        op = expr.op
        if any(v is TBD for v in values):
            raise self._error(
                TbdError,
                f"operator {op} has an operand that is still TBD (to be defined)",
                expr.loc,
                hint="give that attribute a value first",
            )

        def need(check: Callable[[Any], bool], what: str) -> None:
            for v in values:
                if not check(v):
                    raise self._error(
                        ResolutionError,
                        f"operator {op} needs {what}, got {_describe(v)}",
                        expr.loc,
                    )

        if op in ("+", "*"):
            need(_is_number, "numbers")
            fn = operator.add if op == "+" else operator.mul
            result = values[0]
            for value in values[1:]:
                result = self._in_range(fn(result, value), expr)
            return _number_kind(values, result)
        if op in ("-", "/"):
            need(_is_number, "numbers")
            if op == "/" and values[1] == 0:
                raise self._error(ResolutionError, "division by zero", expr.loc)
            result = values[0] - values[1] if op == "-" else _java_divide(*values)
            return _number_kind(values, self._in_range(result, expr))
        if op == "++":
            texts = [self._concat_text(v, expr) for v in values]
            self.budget.value(sum(map(len, texts)), expr.loc)
            return "".join(texts)
        if op == "<>":
            need(lambda v: isinstance(v, list), "vectors")
            self.budget.value(sum(map(len, values)), expr.loc)
            return [item for v in values for item in v]
        if op == "%":
            need(lambda v: isinstance(v, int) and not isinstance(v, bool), "integers")
            if values[1] == 0:
                raise self._error(ResolutionError, "division by zero", expr.loc)
            remainder = values[0] - values[1] * _java_divide(values[0], values[1])
            return _number_kind(values, remainder)
        if op in ("&&", "||", "!", "->"):
            need(lambda v: isinstance(v, bool), "booleans")
            if op == "!":
                return not values[0]
            if op == "->":  # SmartFrog's Implies folds left: (a -> b) -> c
                result = values[0]
                for value in values[1:]:
                    result = (not result) or value
                return result
            return all(values) if op == "&&" else any(values)
        compare = _COMPARISONS[op]
        if op not in ("==", "!="):
            same_kind = all(_is_number(v) for v in values) or all(
                isinstance(v, str) for v in values
            )
            if not same_kind:
                raise self._error(
                    ResolutionError,
                    f"operator {op} compares two numbers or two strings, got "
                    f"{_describe(values[0])} and {_describe(values[1])}",
                    expr.loc,
                )
        return compare(values[0], values[1])

    def _concat_text(self, value: Any, expr: OpExpr) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            return "true" if value else "false"
        if value is None:
            return "NULL"
        if isinstance(value, (list, Component)):  # its text can be far longer than its size
            self.budget.value(_text_size(value, self.budget.budgets.value_length), expr.loc)
        return str(value)

    def _in_range(self, value: Any, expr: OpExpr) -> Any:
        if isinstance(value, int) and value not in INT_RANGE:
            raise self._error(
                ResolutionError, f"operator {expr.op} overflows: integers have 64 bits", expr.loc
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise self._error(
                ResolutionError, f"operator {expr.op} overflows: the result is too large", expr.loc
            )
        return value


def _text_size(value: Any, limit: int) -> int:
    """About how long `str(VALUE)` is, for a vector or component, counted without building it
    (a vector can hold the same long string a thousand times), stopping just past LIMIT."""
    size = 0
    stack = [value]
    while stack and size <= limit:
        current = stack.pop()
        if isinstance(current, str):
            size += len(current) + 4
        elif isinstance(current, list):
            size += 2
            stack.extend(current)
        elif isinstance(current, Component):
            size += 300  # its repr names its place, kind, flags and state
            for name, attr in current.attributes.items():
                size += len(name) + 150  # and the location of each attribute
                stack.append(attr.value)
        else:
            size += 24
    return size


def _describe(value: Any) -> str:
    if value is None:
        return "NULL"
    if value is TBD:
        return "TBD"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if _is_number(value):
        return "a number"
    if isinstance(value, list):
        return "a vector"
    if isinstance(value, Component):
        return "a component"
    return type(value).__name__


def find_tbds(node: Component) -> list[tuple[str, Any]]:
    """Every attribute under NODE still TBD, as (attribute path, location)."""
    found: list[tuple[str, Any]] = []
    for name, attr in node.attributes.items():
        if attr.value is TBD:
            found.append((node.attribute_path(name), attr.loc))
        elif isinstance(attr.value, Component):
            found.extend(find_tbds(attr.value))
    return found


def tbd_errors(node: Component, sources: SourceSet) -> list[DescriptionError]:
    return [
        TbdError(
            f"{path} is still TBD (to be defined)",
            loc=loc,
            path=path,
            hint="give it a value here or in a description that extends this one",
            source_line=sources.source_line(loc),
        )
        for path, loc in find_tbds(node)
    ]
