"""SmartFrog's lexical spelling of names and literals: the keywords, and the text of a name, a
string and a float as the grammar reads them back. Below both the model (a reference prints
itself) and the renderer (whole trees).

Pure. May import: the standard library.
"""

from __future__ import annotations

import math
import re

#: Words SmartFrog reserves that sd-batch has no use for; they must be quoted to be names.
RESERVED_WORDS = frozenset({"SWITCH", "ENDSWITCH"})
#: Every keyword of the language: a name spelt like one must be quoted (parser and renderer).
KEYWORDS = (
    frozenset(
        {
            "extends",
            "true",
            "false",
            "NULL",
            "TBD",
            "LAZY",
            "DATA",
            "ATTRIB",
            "HERE",
            "THIS",
            "PARENT",
            "ROOT",
            "HOST",
            "PROCESS",
            "PROPERTY",
            "IPROPERTY",
            "ENVPROPERTY",
            "IENVPROPERTY",
            "CONSTANT",
            "OPTIONAL",
            "APPLY",
            "ASSERT",
            "IF",
            "THEN",
            "ELSE",
            "FI",
            "VAR",
        }
    )
    | RESERVED_WORDS
)

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


def format_float(value: float, suffix: str) -> str:
    """A float as a SmartFrog literal; SUFFIX \"D\" for a Double."""
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{value} has no SmartFrog literal")
    text = repr(float(value))
    if suffix == "D":
        return text + "D"
    return text if ("." in text or "e" in text) else text + ".0"
