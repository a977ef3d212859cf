"""SmartFrog's standard functions (`functions.sf`), under SmartFrog's Java class names.

A component carrying `phase.function "...ConstructFunction"` (every prototype of functions.sf
does, through `Function`) becomes a call in the function phase (phases.py); at link time its
attributes are evaluated and the function named by `sfFunctionClass` turns them into the value
of the attribute. The implementations follow SmartFrog's classes of the same name: n-ary
operators fold over the attributes in order, binary ones read `left`/`right`, unary `data`.
May import: errors, lang.model, lang.javaview.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import FunctionFailed
from .javaview import java_class, java_text
from .model import Component, Double, Long

PACKAGE = "org.smartfrog.sfcore.languages.sf.functions."
#: The longest text or vector a function may make: `formatString` repeats its arguments (a
#: format of many `$0` times a long s0 is quadratic) and chains of `concat` double.
MAX_RESULT = 1_000_000


Args = dict[str, Any]


def _number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FunctionFailed(f"illegal numeric parameter: {java_class(value)} ({java_text(value)})")
    return value


def _arith(a: Any, b: Any, op: Callable[[Any, Any], Any]) -> Any:
    """Java's numeric promotion: Double > Float > Long > Integer (Long with Float gives Float)."""
    a, b = _number(a), _number(b)
    if isinstance(a, Double) or isinstance(b, Double):
        return Double(op(float(a), float(b)))
    if isinstance(a, float) or isinstance(b, float):
        return float(op(float(a), float(b)))
    result = op(int(a), int(b))
    if isinstance(a, Long) or isinstance(b, Long):
        return Long(_wrap(result, 64))
    return _wrap(result, 32)


def _wrap(value: int, bits: int) -> int:
    """Java integer overflow wraps around."""
    half = 1 << (bits - 1)
    return (value + half) % (1 << bits) - half


def _java_div(a: int, b: int) -> int:
    if b == 0:
        raise FunctionFailed("division by zero")
    quotient = abs(a) // abs(b)
    return quotient if (a >= 0) == (b >= 0) else -quotient


def _java_mod(a: int, b: int) -> int:
    if b == 0:
        raise FunctionFailed("division by zero")
    return a - b * _java_div(a, b)


def _fold(op: Callable[[Any, Any], Any]) -> Callable[[Args], Any]:
    def run(args: Args) -> Any:
        result: Any = None
        for value in args.values():
            result = value if result is None else op(result, value)
        return result

    return run


def _binary(op: Callable[[Any, Any], Any]) -> Callable[[Args], Any]:
    def run(args: Args) -> Any:
        for side in ("left", "right"):
            if args.get(side) is None:
                raise FunctionFailed(f"missing parameter {side}")
        return op(args["left"], args["right"])

    return run


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise FunctionFailed(f"illegal boolean parameter: {java_class(value)} ({java_text(value)})")
    return value


def _not(args: Args) -> bool:
    if args.get("data") is None:
        raise FunctionFailed("missing parameter data")
    return not _boolean(args["data"])


def _compare(test: Callable[[float, float], bool]) -> Callable[[Args], Any]:
    return _binary(lambda a, b: test(_number(a), _number(b)))


def _vector(args: Args) -> list[Any]:
    return list(args.values())  # NULL too: Java's context holds SFNull, never null


def _append(args: Args) -> list[Any]:
    return [item for value in args.values() if isinstance(value, list) for item in value]


def _format(args: Args) -> str:
    text = str(args.get("format") or "")
    for index in range(10):
        value = args.get(f"s{index}")
        shown = java_text(value) if value is not None else "null"
        marker = f"${index}"
        if len(text) + text.count(marker) * len(shown) > MAX_RESULT:  # before building it
            raise FunctionFailed(f"formatString would make more than {MAX_RESULT} characters")
        text = text.replace(marker, shown)
    return text


def _if_then_else(args: Args) -> Any:
    for key in ("if", "then", "else"):
        if args.get(key) is None:
            raise FunctionFailed(f"missing parameter {key}")
    return args["then"] if _boolean(args["if"]) else args["else"]


_last = [-1]


def _next(args: Args) -> int:
    base = args.get("base", 0)
    _last[0] = base if base > _last[0] else _last[0] + 1
    return _last[0]


def _random(args: Args) -> Any:
    import random  # here: imported only when a description asks for it (cold start)

    low, high = args.get("min", 0), args.get("max", 10)
    number = random.random()
    if args.get("integer", False):
        return low if high < low else int(number * (high - low + 1)) + low
    return float(number)


def _date(args: Args) -> str:
    """java.util.Date.toString(): `Sat Dec 05 17:09:12 UTC 2026`."""
    import datetime  # here: imported only when a description asks for it (cold start)

    now = datetime.datetime.now(datetime.UTC).astimezone()
    return now.strftime("%a %b %d %H:%M:%S %Z %Y")


def _equal(a: Any, b: Any) -> bool:
    return bool(java_class(a) == java_class(b) and a == b)


#: SmartFrog's function classes we implement, by their Java name.
FUNCTIONS: dict[str, Callable[[Args], Any]] = {
    PACKAGE + "Vector": _vector,
    PACKAGE + "Append": _append,
    PACKAGE + "Concatenate": _fold(lambda a, b: java_text(a) + java_text(b)),
    PACKAGE + "Format": _format,
    PACKAGE + "Sum": _fold(lambda a, b: _arith(a, b, lambda x, y: x + y)),
    PACKAGE + "Product": _fold(lambda a, b: _arith(a, b, lambda x, y: x * y)),
    PACKAGE + "Minus": _binary(lambda a, b: _arith(a, b, lambda x, y: x - y)),
    PACKAGE + "Divide": _binary(
        lambda a, b: _arith(a, b, lambda x, y: x / y if isinstance(x, float) else _java_div(x, y))
    ),
    PACKAGE + "Mod": _binary(lambda a, b: _arith(a, b, _java_mod)),
    PACKAGE + "And": _fold(lambda a, b: _boolean(a) and _boolean(b)),
    PACKAGE + "Or": _fold(lambda a, b: _boolean(a) or _boolean(b)),
    PACKAGE + "Xor": _fold(lambda a, b: _boolean(a) != _boolean(b)),
    PACKAGE + "Implies": _fold(lambda a, b: (not _boolean(a)) or _boolean(b)),
    PACKAGE + "Not": _not,
    PACKAGE + "GE": _compare(lambda a, b: a >= b),
    PACKAGE + "LE": _compare(lambda a, b: a <= b),
    PACKAGE + "GT": _compare(lambda a, b: a > b),
    PACKAGE + "LT": _compare(lambda a, b: a < b),
    PACKAGE + "EQ": _binary(_equal),
    PACKAGE + "NE": _binary(lambda a, b: not _equal(a, b)),
    PACKAGE + "IfThenElse": _if_then_else,
    PACKAGE + "Next": _next,
    PACKAGE + "Random": _random,
    PACKAGE + "Date": _date,
}


def call(class_name: Any, args: Args) -> Any:
    """Run the function SmartFrog names CLASS_NAME on ARGS; FunctionFailed says why not."""
    function = FUNCTIONS.get(class_name) if isinstance(class_name, str) else None
    if function is None:
        known = ", ".join(sorted(name.removeprefix(PACKAGE) for name in FUNCTIONS))
        raise FunctionFailed(
            f"sfFunctionClass {java_text(class_name)!s} is not a function sd-batch implements "
            f"(it has: {known})"
        )
    result = function(args)
    if isinstance(result, (str, list)) and len(result) > MAX_RESULT:
        raise FunctionFailed(f"the result has more than {MAX_RESULT} characters or items")
    if isinstance(result, Component):
        result.parent = None
    return result
