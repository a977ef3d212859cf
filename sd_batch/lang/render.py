"""Resolved trees back to text: SmartFrog syntax (re-parses to the same tree) or JSON-ready data.

Text output always writes `;` after simple values, so it is also valid for SmartFrog's own parser.
Anonymous attributes (`--`) are written as `--` again. May import: lang.model, lang.syntax.
"""

from __future__ import annotations

import math
import re
from typing import Any

from .model import KEYWORDS, TBD, Component, Double, Long, Reference
from .syntax import IfExpr, ListExpr, OpExpr

_WORD = re.compile(
    r"[$A-Z_a-z\u00a2-\u00a5\u00aa\u00b5\u00ba\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u00ff]"
    r"[$A-Z_a-z\u00a2-\u00a5\u00aa\u00b5\u00ba\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u00ff0-9._\-+@#~$%^&]*"
)
_STRING_ESCAPES = {
    "\\": "\\\\",
    '"': '\\"',
    "\n": "\\n",
    "\t": "\\t",
    "\r": "\\r",
    "\b": "\\b",
    "\f": "\\f",
}


def is_anonymous(name: str) -> bool:
    return name.startswith("--")


def format_name(name: str) -> str:
    """A name as the grammar accepts it: bare when it is a WORD, quoted otherwise."""
    if _WORD.fullmatch(name) and name not in KEYWORDS:
        return name
    return format_string(name)


def format_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in _STRING_ESCAPES:
            out.append(_STRING_ESCAPES[ch])
        elif ord(ch) < 32 or 0x7F <= ord(ch) < 0xA0:
            out.append(f"\\{ord(ch):03o}" if ord(ch) < 256 else ch)
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _format_float(value: float, suffix: str) -> str:
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{value} has no SmartFrog literal")
    text = repr(float(value))
    if suffix == "D":
        return text + "D"
    return text if ("." in text or "e" in text) else text + ".0"


def render_value(value: Any, indent: int = 0) -> str:
    """One value as SmartFrog text (components span several lines at INDENT)."""
    if value is None:
        return "NULL"
    if value is TBD:
        return "TBD"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, Long):
        return f"{int(value)}L"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Double):
        return _format_float(value, "D")
    if isinstance(value, float):
        return _format_float(value, "")
    if isinstance(value, str):
        return format_string(value)
    if isinstance(value, bytes):
        return "#HEX#" + value.hex() + "#"
    if isinstance(value, list):
        if all(_is_literal(v) for v in value):
            return "[|" + ", ".join(render_value(v) for v in value) + "|]"
        return "[" + ", ".join(render_value(v, indent) for v in value) + "]"
    if isinstance(value, Reference):
        return str(value)
    if isinstance(value, Component):
        return render_component(value, indent)
    if isinstance(value, ListExpr):
        return "[" + ", ".join(render_value(v, indent) for v in value.items) + "]"
    if isinstance(value, OpExpr):
        if value.op == "!":
            return f"(! {render_value(value.operands[0], indent)})"
        return "(" + f" {value.op} ".join(render_value(v, indent) for v in value.operands) + ")"
    if isinstance(value, IfExpr):
        parts = (value.cond, value.then, value.otherwise)
        cond, then, otherwise = (render_value(p, indent) for p in parts)
        return f"IF {cond} THEN {then} ELSE {otherwise} FI"
    raise TypeError(f"cannot render {type(value).__name__}")


def _is_literal(value: Any) -> bool:
    if isinstance(value, list):
        return all(_is_literal(v) for v in value)
    return (
        value is None
        or value is TBD
        or isinstance(value, (str, int, float, bytes))
        or (isinstance(value, Reference) and value.data)
    )


def render_component(component: Component, indent: int = 0) -> str:
    modifier = "LAZY " if component.is_lazy else "DATA " if component.is_data else ""
    lines = [f"extends {modifier}{{"]
    lines.extend(render_attributes(component, indent + 1))
    lines.append("    " * indent + "}")
    return "\n".join(lines)


def render_attributes(component: Component, indent: int = 0) -> list[str]:
    pad = "    " * indent
    lines = []
    for name, value in component.items():
        shown = "--" if is_anonymous(name) else format_name(name)
        if isinstance(value, Component):
            lines.append(f"{pad}{shown} {render_component(value, indent)}")
        else:
            lines.append(f"{pad}{shown} {render_value(value, indent)};")
    return lines


def render_description(name: str, component: Component) -> str:
    """`sfConfig extends { ... }` with a trailing newline: a file that parses again."""
    return f"{format_name(name)} {render_component(component)}\n"


def to_data(value: Any) -> Any:
    """JSON-ready data: components as objects (in order), vectors as arrays, references as $ref."""
    if isinstance(value, Component):
        return {name: to_data(v) for name, v in value.items()}
    if isinstance(value, list):
        return [to_data(v) for v in value]
    if isinstance(value, Reference):
        return {"$ref": str(value)}
    if value is TBD:
        return {"$tbd": True}
    if isinstance(value, bytes):
        return {"$bytes": value.hex()}
    if isinstance(value, (ListExpr, OpExpr, IfExpr)):
        return {"$expr": render_value(value)}
    if isinstance(value, (Long, Double)):
        return int(value) if isinstance(value, Long) else float(value)
    return value
