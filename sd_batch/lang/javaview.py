"""A resolved value as SmartFrog's Java sees it: its class name and its `toString()`.

SmartFrog's schemas name Java classes (`class "java.lang.Integer"`), its `concat` function joins
`toString()`s, and the conformance record prints values that way: one mapping keeps them
consistent. May import: lang.model.
"""

from __future__ import annotations

import struct
from typing import Any

from .model import TBD, Component, Double, Long, Reference

STRING = "java.lang.String"
NULL = "org.smartfrog.sfcore.common.SFNull"
VECTOR = "java.util.Vector"
DESCRIPTION = "org.smartfrog.sfcore.componentdescription.ComponentDescriptionImpl"
REFERENCE = "org.smartfrog.sfcore.languages.sf.sfreference.SFReference"

#: What each value class may be checked against (Java's `isAssignableFrom`, for the classes
#: SmartFrog's schemas name).
SUPERTYPES: dict[str, frozenset[str]] = {
    "java.lang.Integer": frozenset({"java.lang.Number", "java.lang.Comparable"}),
    "java.lang.Long": frozenset({"java.lang.Number", "java.lang.Comparable"}),
    "java.lang.Float": frozenset({"java.lang.Number", "java.lang.Comparable"}),
    "java.lang.Double": frozenset({"java.lang.Number", "java.lang.Comparable"}),
    STRING: frozenset({"java.lang.CharSequence", "java.lang.Comparable"}),
    "java.lang.Boolean": frozenset({"java.lang.Comparable"}),
    VECTOR: frozenset({"java.util.List", "java.util.Collection", "java.util.AbstractList"}),
    DESCRIPTION: frozenset({"org.smartfrog.sfcore.componentdescription.ComponentDescription"}),
    REFERENCE: frozenset(
        {"org.smartfrog.sfcore.reference.Reference", "org.smartfrog.sfcore.reference.SFReference"}
    ),
    NULL: frozenset(),
    "org.smartfrog.sfcore.common.SFByteArray": frozenset(),
}
#: Every class name a schema may name that we know of.
KNOWN_CLASSES = (
    frozenset(SUPERTYPES)
    | frozenset().union(*SUPERTYPES.values())
    | {
        "java.lang.Object",
        "java.net.InetAddress",
        "org.smartfrog.sfcore.languages.sf.sfreference.SFApplyReference",
    }
)


def java_class(value: Any) -> str:
    if value is None:
        return NULL
    if isinstance(value, bool):
        return "java.lang.Boolean"
    if isinstance(value, Long):
        return "java.lang.Long"
    if isinstance(value, int):
        return "java.lang.Integer"
    if isinstance(value, Double):
        return "java.lang.Double"
    if isinstance(value, float):
        return "java.lang.Float"
    if isinstance(value, str):
        return STRING
    if isinstance(value, list):
        return VECTOR
    if isinstance(value, Component):
        return DESCRIPTION
    if isinstance(value, (bytes, bytearray)):
        return "org.smartfrog.sfcore.common.SFByteArray"
    if isinstance(value, Reference) or value is TBD:
        return REFERENCE
    return type(value).__name__


def is_instance(value: Any, class_name: str) -> bool:
    """Java's `Class.forName(class_name).isAssignableFrom(value.getClass())`."""
    found = java_class(value)
    return class_name in ("java.lang.Object", found) or class_name in SUPERTYPES.get(
        found, frozenset()
    )


def java_text(value: Any) -> str:
    """Java's `String.valueOf(value)` for a resolved value."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Double):
        return _java_decimal(float(value), 17)
    if isinstance(value, float):
        return _java_decimal(_as_float32(value), 9, single=True)
    if isinstance(value, list):
        return "[" + ", ".join(java_text(v) for v in value) + "]"
    return str(value)


def _as_float32(value: float) -> float:
    try:
        return float(struct.unpack("f", struct.pack("f", value))[0])
    except OverflowError:
        return value


def _java_decimal(value: float, digits: int, *, single: bool = False) -> str:
    """Java's Float/Double.toString: the shortest digits that read back, `1.0E10` style."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    text = repr(value)
    if single:
        for precision in range(1, digits + 1):
            candidate = f"{value:.{precision}g}"
            if _as_float32(float(candidate)) == value:
                text = repr(float(candidate))
                break
    mantissa, _, exponent = text.partition("e")
    number = float(text)
    if 1e-3 <= abs(number) < 1e7 or number == 0:
        if "e" in text:
            text = f"{number:f}".rstrip("0")
        return text if "." in text else text + ".0"
    if not exponent:  # repr wrote it in full: make it scientific
        mantissa, _, exponent = f"{number:.{digits}e}".partition("e")
        mantissa = mantissa.rstrip("0")
    if "." not in mantissa:
        mantissa += ".0"
    elif mantissa.endswith("."):
        mantissa += "0"
    return f"{mantissa}E{int(exponent)}"
