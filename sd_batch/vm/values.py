"""Reading a component's values for `spec`: the attribute reader (`Attrs`) that turns every
bad value into a `SpecError` citing its attribute path and where it was written, sizes with
units (`parse_size_bytes`: `512`, `"512M"`, `"2GiB"`), and values shown as a description would
write them (`show`), for messages. Knows no VM attribute: which ones a VM has, and their rules,
are `spec`'s. `spec` re-exports `parse_size_bytes`.
Pure. May import: `lang.model`, `errors`, stdlib.
"""

from __future__ import annotations

import difflib
import enum
import json
import re
from pathlib import PurePosixPath
from typing import Any, TypeVar

from ..errors import SpecError
from ..lang.model import TBD, Component, Double, Long, Reference

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SIZE = re.compile(r"(?P<number>[0-9]+) *(?P<unit>[KMGT](?:iB)?)?", re.IGNORECASE)
_UNIT_SHIFT = {"": 20, "k": 10, "m": 20, "g": 30, "t": 40}
_E = TypeVar("_E", bound=enum.Enum)
#: How a size may be written, for the hints of size errors.
SIZE_FORMS = 'a number of MiB (512) or a size with a unit ("512M", "512MiB", "2G", "1048576K")'


class Attrs:
    """One component's attributes, read so that every bad value becomes a SpecError citing it."""

    def __init__(self, component: Component) -> None:
        self.component = component

    def get(self, name: str, default: Any = None) -> Any:
        """The value, or `default` when absent; TBD and LAZY references are refused here."""
        if name not in self.component:
            return default
        value = self.component[name]
        if value is TBD:
            raise self.error(
                name,
                "is still TBD (to be defined)",
                "give it a value here or in a description that extends this one",
            )
        if isinstance(value, Reference):
            kind = "a LAZY reference" if value.lazy else "a reference that depends on a LAZY one"
            raise self.error(
                name,
                f"is {kind}, resolved only at deploy time",
                "a VM attribute needs its value when the VM is built: drop LAZY",
            )
        return value

    def error(self, name: str, problem: str, hint: str | None = None) -> SpecError:
        """`path: problem`, or `path is ...` when the problem is a predicate of the attribute."""
        path = self.component.attribute_path(name)
        return SpecError(
            f"{path} {problem}" if problem.startswith("is ") else f"{path}: {problem}",
            loc=self.component.location_of(name),
            path=path,
            hint=hint,
        )

    def text(self, name: str, *, what: str) -> str | None:
        """A string or NULL, printable (control characters cannot reach libvirt safely)."""
        value = self.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.error(name, f"{show(value)} is not a string", f"write {what}")
        if _CONTROL.search(value):
            raise self.error(name, f"{show(value)} contains a control character", f"write {what}")
        return value

    def path(self, name: str, *, what: str) -> PurePosixPath | None:
        value = self.text(name, what=what)
        if value is None:
            return None
        if not value.strip():
            raise self.error(name, '"" is not a path', f"write {what}, or NULL to leave it unset")
        return PurePosixPath(value)

    def choice(self, name: str, enum_type: type[_E], default: _E, *, kind: str) -> _E:
        value = self.get(name, default.value)
        names = [member.value for member in enum_type]
        if isinstance(value, str) and value in names:
            return enum_type(value)
        listing = f"{kind}s: {', '.join(names)}"
        if not isinstance(value, str):
            raise self.error(name, f"{show(value)} is not a {kind}", listing)
        raise self.error(
            name, f"unknown {kind} {show(value)}", _did_you_mean(value, names, listing)
        )


def parse_size_bytes(value: Any) -> int | None:
    """`512`, `512L`, `"512"` (MiB), `"512M"`, `"2GiB"`, `"1048576K"` -> bytes, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return int(value) << 20
    if isinstance(value, str):
        match = _SIZE.fullmatch(value.strip())
        if match:
            unit = (match["unit"] or "")[:1].lower()
            return int(match["number"]) << _UNIT_SHIFT[unit]
    return None


def _did_you_mean(word: str, choices: list[str], listing: str) -> str:
    close = difflib.get_close_matches(word.lower(), choices, n=1)
    if close:
        return f"did you mean {show(close[0])}? {listing[:1].upper()}{listing[1:]}"
    return listing


def show(value: Any) -> str:
    """A value as a description would write it, for messages."""
    if value is None:
        return "NULL"
    if value is TBD:
        return "TBD"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Long):
        return f"{int(value)}L"
    if isinstance(value, Double):
        return f"{float(value)!r}D"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Reference):
        return "a reference"
    if isinstance(value, Component):
        return "a component"
    if isinstance(value, list | tuple):
        return "[| " + ", ".join(show(item) for item in value) + " |]"
    return repr(value)
