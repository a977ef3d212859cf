"""Link-time evaluation of function-phase calls: functions, schemas and assertions.

A schema (predicates.sf: `PrimSchema extends Schema { sfClass extends String {...} }`) checks
the component that holds it, entry by entry, with SmartFrog's `CheckSchemaElement` meaning:
- presence: a missing attribute is an error unless the entry is `optional`;
- type: the value's Java class must be one of `class` (`"anyClass"` takes any) - an integer
  is `java.lang.Integer`, `42L` a Long, `1.5` a Float, NULL `SFNull`, `[| |]` a Vector...;
- binding: `"lazy"` wants a LAZY reference, `"eager"` a value, `"anyBinding"` either.
Errors name the attribute checked (its path) and the class expected. A static schema or
assertion that holds leaves nothing behind (the attribute is removed, like SmartFrog's temporary
values); a dynamic one (the default) stays, as a LAZY check for the running component.
May import: errors, lang.model, lang.javaview, lang.functions, lang.phases.
"""

from __future__ import annotations

from typing import Any

from ..errors import DescriptionError, FunctionFailed, ResolutionError
from . import functions
from .javaview import is_instance, java_class, java_text
from .model import Component, Reference
from .phases import REMOVED, FunctionCall

_SKIP = frozenset({"sfFunctionClass"})
_NOT_ELEMENTS = frozenset({"sfFunctionClass", "sfAssertionPhase", "sfSchemaDescription"})


def evaluate_call(evaluator: Any, call: FunctionCall, holder: Component, name: str) -> Any:
    """(value, deferred) of CALL written as attribute NAME of HOLDER.

    An error met inside (a bad reference among a function's arguments) is named after the
    attribute the call computes, as SmartFrog's `attribute: throw1` does.
    """
    if call.lazy or (call.kind != "function" and not evaluator.check_assertions):
        return call, True
    try:
        return _evaluate(evaluator, call, holder, name)
    except DescriptionError as exc:
        where = holder.attribute_path(name)
        if exc.path is None and not exc.message.startswith(where):
            exc.message, exc.path = f"{where}: {exc.message}", where
        raise


def _evaluate(evaluator: Any, call: FunctionCall, holder: Component, name: str) -> Any:
    node = call.fresh(holder, name, evaluator.budget)
    evaluator.scratch.append(node)
    if call.kind == "function":
        return _function(evaluator, call, node, holder, name)
    if call.kind == "schema":
        for entry in list(node.attributes):
            if entry not in _NOT_ELEMENTS:
                _check_element(evaluator, node, entry, holder, name)
        return _after_check(evaluator, call, node)
    for entry in list(node.attributes):  # assertions
        if entry.startswith("sf"):
            continue
        value, deferred = evaluator.value_of(node, entry)
        if not deferred and value is not True:
            raise _error(
                evaluator,
                call,
                f"{holder.attribute_path(name)}: assertion {entry} "
                f"evaluates to {java_text(value)}, not true",
            )
    return _after_check(evaluator, call, node)


def _after_check(evaluator: Any, call: FunctionCall, node: Component) -> Any:
    """A static check (`sfAssertionPhase "static"`, as PrimSchema says) leaves nothing; a
    dynamic one (the default) stays in the tree as a LAZY check, as SmartFrog keeps it for
    the running component to check again."""
    phase = "dynamic"
    if "sfAssertionPhase" in node.attributes:
        phase, _deferred = evaluator.value_of(node, "sfAssertionPhase")
    return (REMOVED, False) if phase in ("static", "staticLazy") else (call, True)


def _arguments(evaluator: Any, node: Component) -> tuple[dict[str, Any], bool]:
    args: dict[str, Any] = {}
    for key in list(node.attributes):
        if key in _SKIP:
            continue
        value, deferred = evaluator.value_of(node, key)
        if deferred:
            return args, True
        if value is REMOVED or key not in node.attributes:
            continue
        value = node.attributes[key].value
        if isinstance(value, Component):
            errors: list[DescriptionError] = []
            evaluator.evaluate_tree(value, errors)
            if errors:
                raise errors[0]
        args[key] = value
    return args, False


def _function(
    evaluator: Any, call: FunctionCall, node: Component, holder: Component, name: str
) -> Any:
    args, deferred = _arguments(evaluator, node)
    if deferred:
        return call, True
    try:
        result = functions.call(node.get("sfFunctionClass"), args)
    except FunctionFailed as exc:
        raise _error(evaluator, call, f"{holder.attribute_path(name)}: {exc.message}") from None
    if isinstance(result, (str, bytes, list, tuple)):  # counted like any value made at link
        evaluator.budget.value(len(result), call.loc)
    return result, False


def _check_element(
    evaluator: Any, schema: Component, entry: str, holder: Component, schema_name: str
) -> None:
    call = schema.attributes[entry].value
    if not isinstance(call, FunctionCall):  # phases.py made every entry a call
        raise TypeError(f"schema entry {entry} is {type(call).__name__}, not a call")
    element = call.fresh(schema, entry, evaluator.budget)
    evaluator.scratch.append(element)
    params, _deferred = _arguments(evaluator, element)
    target = params.get("name", entry)
    description = params.get("description") or ""
    shown = f"'{target} ({description})'" if description else f"'{target}'"
    where = holder.attribute_path(str(target))
    binding = params.get("binding", "anyBinding")
    if binding not in ("anyBinding", "eager", "lazy"):
        raise _error(
            evaluator,
            call,
            f"{where}: error in schema {schema_name}: binding not "
            f"valid value for attribute {shown}",
        )
    if target not in holder.attributes:
        if params.get("optional") is True:
            return
        raise _error(
            evaluator,
            call,
            f"{where}: error in schema {schema_name}: non-optional attribute {shown} is missing",
        )
    value, deferred = evaluator.value_of(holder, target)
    expected = params.get("class", "anyClass")
    classes = expected if isinstance(expected, list) else [expected]
    if deferred or isinstance(value, Reference):
        if binding == "eager" and "anyClass" not in classes:
            raise _error(
                evaluator,
                call,
                f"{where}: error in schema {schema_name}: (lazy) "
                f"reference value for non-reference eager attribute {shown}",
            )
        return
    if binding == "lazy":
        raise _error(
            evaluator,
            call,
            f"{where}: error in schema {schema_name}: non-reference "
            f"value found for lazy attribute {shown}",
        )
    if "anyClass" in classes or any(is_instance(value, str(c)) for c in classes):
        return
    wanted = java_text(expected)
    raise _error(
        evaluator,
        call,
        f"{where}: error in schema {schema_name}: wrong class found "
        f"for attribute {shown}, expected: {wanted}, found: {java_class(value)}",
        holder.location_of(target),
        hint=f"the schema entry is at {call.loc}",
    )


def _error(
    evaluator: Any, call: FunctionCall, message: str, loc: Any = None, hint: str | None = None
) -> DescriptionError:
    """MESSAGE starts with the attribute path it is about; LOC is where that was written."""
    loc = loc or call.loc
    return ResolutionError(
        message,
        loc=loc,
        path=message.split(": ")[0],
        hint=hint,
        source_line=evaluator.sources.source_line(loc),
    )
