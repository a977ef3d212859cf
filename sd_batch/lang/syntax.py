"""Syntax objects: what a `.sf` file says, before includes, prototypes and references are resolved.

The parser's transformer builds only these (shape, no semantics), so every semantic check lives in
the resolver and raises our own errors (lark wraps exceptions raised inside a transformer).
Operator and list expressions also appear in a resolved tree when they depend on a LAZY
reference and so can only be evaluated at deploy time. May import: errors, lang.model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import SourceLocation
from .model import Reference


@dataclass(frozen=True, slots=True)
class AttrDef:
    """`name value` in a component body; `name` is a path for `a:b 5` (place resolution)."""

    name: tuple[str, ...]
    value: Any
    loc: SourceLocation
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Include:
    """`#include "file"` (or `#include?`, where a missing file is no error)."""

    path: str
    optional: bool
    loc: SourceLocation


@dataclass(frozen=True, slots=True)
class Body:
    """A `{ ... }` block: the attributes (and includes) written inline."""

    items: tuple[AttrDef | Include, ...]
    loc: SourceLocation


@dataclass(frozen=True, slots=True)
class NullProto:
    """`extends NULL`: the empty prototype."""

    loc: SourceLocation


#: What may stand after `extends`: prototypes by reference, inline bodies, or NULL.
Proto = Reference | Body | NullProto


@dataclass(frozen=True, slots=True)
class ComponentExpr:
    """`extends [LAZY|DATA] P1, P2 {...}`: applied left to right, later attributes win."""

    protos: tuple[Proto, ...]
    modifier: str | None
    loc: SourceLocation


@dataclass(frozen=True, slots=True)
class ListExpr:
    """`[a, (b + 1)]`: an evaluated list (may hold references and operators)."""

    items: tuple[Any, ...]
    loc: SourceLocation


@dataclass(frozen=True, slots=True)
class OpExpr:
    """`(a + b + c)`, `(a == b)`, `(! a)`: one operator kind per parenthesised level."""

    op: str
    operands: tuple[Any, ...]
    loc: SourceLocation


@dataclass(frozen=True, slots=True)
class IfExpr:
    """`IF c THEN a ELSE b FI`."""

    cond: Any
    then: Any
    otherwise: Any
    loc: SourceLocation


@dataclass(frozen=True, slots=True)
class ApplyRef:
    """`APPLY {...}` / `ASSERT {...}`: parsed so files read, refused at resolution."""

    kind: str
    body: Body
    loc: SourceLocation


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One parsed file: its top-level items and its text (for caret excerpts in errors)."""

    name: str
    items: tuple[AttrDef | Include, ...]
    text: str

    def line(self, number: int) -> str | None:
        lines = self.text.splitlines()
        if 1 <= number <= len(lines):
            return lines[number - 1]
        return None
