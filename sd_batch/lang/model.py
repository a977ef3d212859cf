"""The resolved description tree: components, values and the references that stay references.

This is what the rest of sd-batch sees of a description. A `Component` is an ordered mapping of
attribute names to values, remembering where each attribute was written, so `vm/spec.py` and
`vm/site_policy.py` can report `file:line:col` for a bad value long after parsing. Values are
plain Python (`str`, `int`, `float`, `bool`, `None` for NULL, `list` for vectors), plus `Long` /
`Double` (to keep SmartFrog's literal kinds), `TBD`, `Reference` (a LAZY link, resolved at
deploy time) and nested `Component`s. May import: errors, lang.formatting.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import SourceLocation
from .formatting import format_float, format_name, format_string


class Long(int):
    """An integer written with the `L` suffix (`42L`)."""

    __slots__ = ()


#: Integers are Java longs at most: literals and operator results must fit in 64 bits.
INT_RANGE = range(-(2**63), 2**63)


class Double(float):
    """A decimal written with the `D` suffix (`1.5D`): a decimal without suffix is a float."""

    __slots__ = ()


class _Tbd:
    """The single `TBD` placeholder: a value that must be overridden before deployment."""

    _instance: _Tbd | None = None

    def __new__(cls) -> _Tbd:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "TBD"

    def __reduce__(self) -> str:
        return "TBD"


TBD = _Tbd()


@dataclass(frozen=True, slots=True)
class FreeVar:
    """`VAR`: a constraint variable (SmartFrog's constraint solver fills it; sd keeps it)."""

    range: str | None = None
    default: Any = None

    def __str__(self) -> str:
        if self.range is None:
            return "VAR"
        default = self.default
        shown = format_string(default) if isinstance(default, str) else str(default)
        return f"VAR {{{format_string(self.range)}, {shown}}}"


#: Reference part kinds, as SmartFrog's grammar names them.
PART_KINDS = (
    "ROOT",
    "PARENT",
    "THIS",
    "PROCESS",
    "ATTRIB",
    "HERE",
    "HOST",
    "PROPERTY",
    "IPROPERTY",
    "ENVPROPERTY",
    "IENVPROPERTY",
    "CONSTANT",
)
_NAMELESS = frozenset({"ROOT", "PARENT", "THIS", "PROCESS"})


@dataclass(frozen=True, slots=True)
class RefPart:
    """One step of a reference: `ROOT`, `PARENT`, `ATTRIB name`, `HERE name`, ..."""

    kind: str
    name: str | None = None

    def text(self, first: bool) -> str:
        if self.kind in _NAMELESS:
            return self.kind
        if self.name is None:
            raise ValueError(f"a {self.kind} reference part needs a name")
        # A bare word is ATTRIB in first place and HERE after it: print the short form there
        # (only for a word: a quoted name needs its keyword, `ATTRIB "a b"`).
        name = format_name(self.name)
        short = (first and self.kind == "ATTRIB") or (not first and self.kind == "HERE")
        return name if short and name == self.name else f"{self.kind} {name}"


@dataclass(frozen=True, slots=True)
class Reference:
    """A link to another place in the tree, kept as such when LAZY (or depending on a LAZY one)."""

    parts: tuple[RefPart, ...]
    lazy: bool = False
    data: bool = False
    optional: bool = False
    default: Any = None
    loc: SourceLocation | None = field(default=None, compare=False)

    def path_text(self) -> str:
        return ":".join(part.text(i == 0) for i, part in enumerate(self.parts))

    def __str__(self) -> str:
        words = []
        if self.lazy:
            words.append("LAZY")
        if self.data:
            words.append("DATA")
        if self.optional:
            words.append(f"OPTIONAL({literal_text(self.default)})")
        words.append(self.path_text())
        return " ".join(words)


@dataclass(frozen=True, slots=True)
class Attribute:
    """An attribute slot of a resolved component: its value and where it was (last) written."""

    name: str
    value: Any
    loc: SourceLocation | None


@dataclass(eq=False)
class Component:
    """A component description: ordered attributes, each with the place it was written."""

    attributes: dict[str, Attribute] = field(default_factory=dict)
    loc: SourceLocation | None = None
    parent: Component | None = field(default=None, repr=False)
    #: The name under which the parent holds this component (None for the root).
    name: str | None = None
    #: Marked `DATA`: plain data, not a deployable component.
    is_data: bool = False
    #: Marked `LAZY` on its prototype: resolved at deploy time.
    is_lazy: bool = False

    # -- mapping-like access ------------------------------------------------------------------
    def __contains__(self, name: object) -> bool:
        return name in self.attributes

    def __getitem__(self, name: str) -> Any:
        return self.attributes[name].value

    def __iter__(self) -> Iterator[str]:
        return iter(self.attributes)

    def __len__(self) -> int:
        return len(self.attributes)

    def get(self, name: str, default: Any = None) -> Any:
        attr = self.attributes.get(name)
        return default if attr is None else attr.value

    def items(self) -> Iterator[tuple[str, Any]]:
        for name, attr in self.attributes.items():
            yield name, attr.value

    def children(self) -> Iterator[tuple[str, Component]]:
        """The nested components, in order."""
        for name, attr in self.attributes.items():
            if isinstance(attr.value, Component):
                yield name, attr.value

    def location_of(self, name: str) -> SourceLocation | None:
        """Where attribute NAME was written, or where this component was, if it has none."""
        attr = self.attributes.get(name)
        if attr is not None and attr.loc is not None:
            return attr.loc
        return self.loc

    def set(self, name: str, value: Any, loc: SourceLocation | None = None) -> None:
        """Add or replace an attribute; a replaced one keeps its position (SmartFrog's rule)."""
        if isinstance(value, Component):
            value.parent = self
            value.name = name
        self.attributes[name] = Attribute(name, value, loc)

    # -- places in the tree -------------------------------------------------------------------
    @property
    def path(self) -> str:
        """The attribute path from the top level, as SmartFrog writes it: `sfConfig:vms:vm1`."""
        names: list[str] = []
        node: Component | None = self
        while node is not None and node.name is not None:
            names.append(node.name)
            node = node.parent
        return ":".join(reversed(names))

    def attribute_path(self, name: str) -> str:
        return f"{self.path}:{name}" if self.path else name

    def root(self) -> Component:
        node = self
        while node.parent is not None:
            node = node.parent
        return node


#: The values written as a keyword (compared by identity: 1 is not true).
_CONSTANT_TEXTS: tuple[tuple[object, str], ...] = (
    (None, "NULL"),
    (TBD, "TBD"),
    (True, "true"),
    (False, "false"),
)


def literal_text(value: Any) -> str | None:
    """A literal value (NULL, TBD, a boolean, number, string, byte array or reference) as
    SmartFrog text; None for anything else (vectors, components, expressions: `render`'s)."""
    for constant, text in _CONSTANT_TEXTS:
        if value is constant:
            return text
    if isinstance(value, Long):
        return f"{int(value)}L"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Double):
        return format_float(value, "D")
    if isinstance(value, float):
        return format_float(value, "")
    if isinstance(value, str):
        return format_string(value)
    if isinstance(value, bytes):
        return "#HEX#" + value.hex() + "#"
    if isinstance(value, Reference):
        return str(value)
    return None
