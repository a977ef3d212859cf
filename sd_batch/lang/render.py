"""Resolved trees back to text: SmartFrog syntax (re-parses to the same tree) or JSON-ready data.

Text output always writes `;` after simple values, so it is also valid for SmartFrog's own parser.
Anonymous attributes (`--`) are written as `--` again.
May import: lang.formatting, lang.model, lang.syntax.
"""

from __future__ import annotations

from typing import Any

from .formatting import format_name
from .model import TBD, Component, Double, FreeVar, Long, Reference, literal_text
from .syntax import IfExpr, ListExpr, OpExpr


def is_anonymous(name: str) -> bool:
    return name.startswith("--")


def render_value(value: Any, indent: int = 0) -> str:
    """One value as SmartFrog text (components span several lines at INDENT)."""
    text = literal_text(value)
    if text is not None:
        return text
    if isinstance(value, list):
        return _render_vector(value, indent)
    if isinstance(value, Component):
        return render_component(value, indent)
    return _render_expression(value, indent)


def _render_vector(value: list[Any], indent: int) -> str:
    """`[| 1, 2 |]` when it holds only literals (a vector), else `[a, (b + 1)]` (a list)."""
    if all(_is_literal(v) for v in value):
        return "[|" + ", ".join(render_value(v) for v in value) + "|]"
    return "[" + ", ".join(render_value(v, indent) for v in value) + "]"


def _render_expression(value: Any, indent: int) -> str:
    """A list expression, an operator expression or an IF, as written."""
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
    if isinstance(value, FreeVar):
        return str(value)
    construct = getattr(value, "construct", None)  # a function-phase call (phases.py)
    if construct is not None:
        call = Component(loc=value.node.loc)
        call.set("phase.function", construct)
        for name, attr in value.node.attributes.items():
            call.set(name, attr.value, attr.loc)
        return render_component(call, indent)
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
    if isinstance(value, (ListExpr, OpExpr, IfExpr, FreeVar)):
        return {"$expr": render_value(value)}
    if getattr(value, "construct", None) is not None:  # a function call kept LAZY (phases.py)
        return {"$expr": render_value(value)}
    if isinstance(value, (Long, Double)):
        return int(value) if isinstance(value, Long) else float(value)
    return value
