"""Literal values as the SmartFrog lexer hands them over: strings with Java escapes, 64-bit
integers, finite floats, byte arrays (`#HEX#...#`, `#B64#...#`, `#DEC#`, `#OCT#`, `#BIN#`).

Pure text -> value; a literal the lexer accepts but no value matches (`1e999`, a 20-digit
integer, `#B64#a#`) raises ValueError with the message a user sees, which the parser turns
into a syntax error at the literal's place.
May import: lang.model, the standard library.
"""

from __future__ import annotations

import binascii
import math

from . import model

_ESCAPES = {"n": "\n", "t": "\t", "b": "\b", "r": "\r", "f": "\f"}


def unescape(body: str) -> str:
    """Java escapes as SmartFrog's `fixEscapes` reads them (`\\n`, octal `\\101`, `\\"`)."""
    if "\\" not in body:
        return body
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt in "0123":  # the lexer only lets \[0-3][0-7][0-7] through
                out.append(chr(int(body[i + 1 : i + 4], 8)))
                i += 4
                continue
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def integer(digits: str, shown: str) -> int:
    """DIGITS as a 64-bit integer (SHOWN: the literal as written, for the message)."""
    # Checked on the text first: int() refuses more than 4300 digits with a ValueError.
    value = int(digits) if len(digits) <= 21 else None
    if value is None or value not in model.INT_RANGE:
        raise ValueError(f"number {_short(shown)} is out of range (integers have 64 bits)")
    return value


def finite(text: str, shown: str | None = None) -> float:
    """TEXT as a float that is not infinite (`1e999` is out of range)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {_short(shown or text)} is out of range")
    return value


def decode_bytes(literal: str) -> bytes:
    """A `#KIND#digits#` byte array's bytes."""
    kind, digits = literal[1:4], "".join(literal[5:-1].split())
    if kind == "HEX":
        return bytes.fromhex(digits if len(digits) % 2 == 0 else "0" + digits)
    if kind == "B64":
        import base64

        try:
            return base64.b64decode(digits + "=" * (-len(digits) % 4))
        except binascii.Error as exc:
            raise ValueError(f"malformed #B64# byte array: {exc}") from None
    base = {"DEC": 10, "OCT": 8, "BIN": 2}[kind]
    value = int(digits, base) if digits else 0
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def _short(text: str) -> str:
    return text if len(text) <= 30 else f"{text[:27]}..."
