"""Text -> syntax objects, through lark (LALR) and the grammar file `sf.lark`.

The only module that imports lark: every lark exception is translated here into a
`DescriptionSyntaxError` that names `file:line:column` and what was expected. The compiled
grammar is cached on disk (lark's cache), because hooks start a fresh Python per job.
May import: lark, errors, lang.literals, lang.model, lang.syntax.
"""

from __future__ import annotations

import gc
import itertools
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

from lark import Lark, Token, Transformer
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from ..errors import DescriptionSyntaxError, SourceLocation
from . import model
from .formatting import KEYWORDS, RESERVED_WORDS
from .literals import decode_bytes, finite, integer, unescape
from .model import PART_KINDS, Double, Long, Reference, RefPart
from .syntax import (
    ApplyRef,
    AttrDef,
    Body,
    ComponentExpr,
    IfExpr,
    Include,
    ListExpr,
    NullProto,
    OpExpr,
    SourceFile,
)

GRAMMAR = Path(__file__).with_name("sf.lark")
KEYWORD_TYPES = {word: word.upper() for word in KEYWORDS - RESERVED_WORDS}
_T = TypeVar("_T")


class _BadLiteral(Exception):
    """A literal the lexer accepts but no value matches (`1e999`, `#B64#a#`): a syntax error."""

    def __init__(self, token: Token, message: str) -> None:
        super().__init__(message)
        self.token = token
        self.message = message


class _ParseState(threading.local):
    """What one parse needs besides the text: per thread, so a long-lived process (the helper
    service) parses descriptions in several threads at once through the one parser."""

    filename = "<text>"
    anonymous: Iterator[int] = itertools.count(1)


class _ToSyntax(Transformer[Token, Any]):
    """Parse tree -> syntax objects. Shape only: no lookups, no checks (the resolver's job)."""

    def __init__(self) -> None:
        super().__init__()
        self.state = _ParseState()

    @property
    def filename(self) -> str:
        return self.state.filename

    @property
    def anonymous(self) -> Iterator[int]:
        return self.state.anonymous

    def _loc(self, token: Token) -> SourceLocation:
        return SourceLocation(
            self.filename, token.line or 0, token.column or 0, token.end_line, token.end_column
        )

    # -- structure -----------------------------------------------------------------------------
    def start(self, children: list[Any]) -> tuple[Any, ...]:
        return tuple(children[0]) if children else ()

    def items(self, children: list[Any]) -> list[Any]:
        # [item], [items, item], or [] / [items] for a `;` (filtered out)
        if children and isinstance(children[0], list):
            children[0].extend(children[1:])
            return children[0]
        return children

    def include(self, children: list[Any]) -> Include:
        keyword, path = children
        return Include(path, keyword == "#include?", self._loc(keyword))

    def include_codebase(self, children: list[Any]) -> Include:
        # `#codebase "url"` names where SmartFrog loads classes from: nothing for us to load.
        _codebase, _url, keyword, path = children
        return Include(path, False, self._loc(keyword))

    def attribute(self, children: list[Any]) -> AttrDef:
        tags = children[0] if isinstance(children[0], list) else []
        name, loc = children[-2]
        return AttrDef(name, children[-1], loc, tuple(tags))

    def null_attribute(self, children: list[Any]) -> AttrDef:
        tags = children[0] if isinstance(children[0], list) else []
        name, loc = children[-1]
        return AttrDef(name, None, loc, tuple(tags))

    def tags(self, children: list[Any]) -> list[str]:
        return list(children[1:])

    def anonymous_name(self, children: list[Token]) -> tuple[tuple[str, ...], SourceLocation]:
        return (f"--{next(self.anonymous)}",), self._loc(children[0])

    def quoted_name(self, children: list[Token]) -> tuple[tuple[str, ...], SourceLocation]:
        return (unescape(children[0][1:-1]),), self._loc(children[0])

    def word_name(self, children: list[Any]) -> tuple[tuple[str, ...], SourceLocation]:
        rest: tuple[str, ...] = children[1] if len(children) > 1 else ()
        return (str(children[0]), *rest), self._loc(children[0])

    def name_tail(self, children: list[Any]) -> tuple[str, ...]:
        first = children[0]
        if first.type == "STRING":
            return (unescape(first[1:-1]),)
        if first.type == "UNIQUE":
            return (f"--{next(self.anonymous)}",)
        rest: tuple[str, ...] = children[1] if len(children) > 1 else ()
        return (str(first), *rest)

    def name(self, children: list[Token]) -> str:
        token = children[0]
        if token.type == "STRING":
            return unescape(token[1:-1])
        if token.type == "MULTILINESTRING":
            return unescape(token[2:-1])
        return str(token)

    # -- components ----------------------------------------------------------------------------
    def component(self, children: list[Any]) -> ComponentExpr:
        modifier = str(children[1]) if len(children) == 3 else None
        return ComponentExpr(tuple(children[-1]), modifier, self._loc(children[0]))

    def empty_component(self, children: list[Any]) -> ComponentExpr:
        modifier = str(children[1]) if len(children) == 2 else None
        return ComponentExpr((), modifier, self._loc(children[0]))

    def proto_list(self, children: list[Any]) -> list[Any]:
        return children

    def null_proto(self, children: list[Token]) -> NullProto:
        return NullProto(self._loc(children[0]))

    def body(self, children: list[Any]) -> Body:
        return Body(tuple(children[1]) if len(children) > 1 else (), self._loc(children[0]))

    # -- values --------------------------------------------------------------------------------
    def string(self, children: list[Token]) -> str:
        token = children[0]
        if token.type == "STRING":
            return unescape(token[1:-1])
        return unescape(token[2:-1])

    def integer(self, children: list[Token]) -> int:
        return _literal(children[0], lambda: integer(children[0], children[0]))

    def long(self, children: list[Token]) -> Long:
        return Long(_literal(children[0], lambda: integer(children[0][:-1], children[0])))

    def float(self, children: list[Token]) -> float:
        text = str(children[0])
        return _literal(children[0], lambda: finite(text[:-1] if text[-1] in "fF" else text, text))

    def double(self, children: list[Token]) -> Double:
        return Double(_literal(children[0], lambda: finite(children[0][:-1], children[0])))

    def true(self, _children: list[Token]) -> bool:
        return True

    def false(self, _children: list[Token]) -> bool:
        return False

    def null(self, _children: list[Token]) -> None:
        return None

    def tbd(self, _children: list[Token]) -> model._Tbd:
        return model.TBD

    def free_var(self, children: list[Any]) -> model.FreeVar:
        if len(children) == 1:
            return model.FreeVar()
        default = children[3]
        if isinstance(default, Token):  # a number
            default = float(default) if default.type == "FLOAT" else int(default)
        return model.FreeVar(children[2], default)

    def var_range(self, children: list[Any]) -> str:
        value = children[0]
        return value if isinstance(value, str) else str(value)

    def bytearray(self, children: list[Token]) -> bytes:
        return _literal(children[0], lambda: decode_bytes(children[0]))

    def vector(self, children: list[Any]) -> list[Any]:
        return list(children[1:])

    def eval_list(self, children: list[Any]) -> ListExpr:
        return ListExpr(tuple(children[1:]), self._loc(children[0]))

    def paren(self, children: list[Any]) -> Any:
        return children[1]

    def not_op(self, children: list[Any]) -> OpExpr:
        return OpExpr("!", (children[2],), self._loc(children[0]))

    def nary_op(self, children: list[Any]) -> OpExpr:
        return OpExpr(str(children[2]), tuple(children[1::2]), self._loc(children[0]))

    def binary_op(self, children: list[Any]) -> OpExpr:
        return OpExpr(str(children[2]), (children[1], children[3]), self._loc(children[0]))

    def if_then_else(self, children: list[Any]) -> IfExpr:
        return IfExpr(children[1], children[3], children[5], self._loc(children[0]))

    # -- references ----------------------------------------------------------------------------
    def reference(self, children: list[Any]) -> Any:
        ref = children[-1]
        if len(children) == 2 and isinstance(ref, Reference):
            return Reference(ref.parts, True, ref.data, ref.optional, ref.default, ref.loc)
        return ref

    def link_reference(self, children: list[tuple[RefPart, Token]]) -> Reference:
        parts = []
        for index, (part, _token) in enumerate(children):
            if part.kind == "WORD":
                part = RefPart("ATTRIB" if index == 0 else "HERE", part.name)
            parts.append(part)
        return Reference(tuple(parts), loc=self._loc(children[0][1]))

    def ref_part(self, children: list[Any]) -> tuple[RefPart, Token]:
        token = children[0]
        if len(children) == 2:
            return RefPart(token.type, children[1]), token
        if token.type == "WORD":
            return RefPart("WORD", str(token)), token
        return RefPart(token.type), token

    def optional_reference(self, children: list[Any]) -> Reference:
        ref: Reference = children[1]
        return Reference(ref.parts, optional=True, loc=self._loc(children[0]))

    def optional_default_reference(self, children: list[Any]) -> Reference:
        ref: Reference = children[3]
        return Reference(ref.parts, optional=True, default=children[2], loc=self._loc(children[0]))

    def data_reference(self, children: list[Any]) -> Any:
        ref = children[1]
        if isinstance(ref, Reference):
            return Reference(ref.parts, False, True, ref.optional, ref.default, ref.loc)
        return ref

    def apply_reference(self, children: list[Any]) -> ApplyRef:
        return ApplyRef("APPLY", children[1], self._loc(children[0]))

    def assert_reference(self, children: list[Any]) -> ApplyRef:
        return ApplyRef("ASSERT", children[1], self._loc(children[0]))


def _literal(token: Token, value: Callable[[], _T]) -> _T:
    """VALUE() of a literal the lexer accepted; its ValueError is a syntax error at TOKEN."""
    try:
        return value()
    except ValueError as exc:
        raise _BadLiteral(token, str(exc)) from None


# -- error messages ------------------------------------------------------------------------------
_TERMINAL_WORDS = {
    "WORD": "a name",
    "STRING": "a string",
    "MULTILINESTRING": "a string",
    "SEMICOLON": "';'",
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "LBRACKET": "'['",
    "RSQB": "']'",
    "VECTORSTART": "'[|'",
    "OPSTART": "'('",
    "RPAR": "')'",
    "COMMA": "','",
    "COLON": "':'",
    "EXTENDS": "'extends'",
    "UNIQUE": "'--'",
    "$END": "end of file",
}
_VALUE_STARTS = {"INTEGER", "LONG", "FLOAT", "DOUBLE", "STRING", "TBD", "NULL", "TRUE", "FALSE"}
_ATTRIBUTE_STARTS = {
    "WORD",
    "STRING",
    "UNIQUE",
    "MINUS",
    "LBRACKET",
    "INCLUDE",
    "INCLUDE_OPTIONAL",
    "CODEBASE",
    "SEMICOLON",
}


def _describe_expected(expected: set[str]) -> str:
    """Lark's terminal names as words: `';', '}' or a value` rather than `SEMICOLON, RBRACE`."""
    words: list[str] = []
    if expected >= _ATTRIBUTE_STARTS:
        words.append("an attribute")
        expected = expected - _ATTRIBUTE_STARTS
    if expected >= _VALUE_STARTS:
        words.append("a value")
        expected = (
            expected
            - _VALUE_STARTS
            - {
                "MULTILINESTRING",
                "BYTEARRAY",
                "VECTORSTART",
                "LBRACKET",
                "OPSTART",
                "LAZY",
                "DATA",
                "OPTIONAL",
                "APPLY",
                "ASSERT",
                "IF",
                "VAR",
                *PART_KINDS,  # a reference may start any value
                "WORD",
                "MINUS",
            }
        )
    for name in sorted(expected):
        word = _TERMINAL_WORDS.get(name)
        if word is None:
            word = "a number" if name in {"INTEGER", "LONG", "FLOAT", "DOUBLE"} else None
        if word is None and name in _KEYWORD_TEXT:
            word = f"'{_KEYWORD_TEXT[name]}'"
        if word is None:
            pattern = _PARSER.get_terminal(name).pattern if _PARSER else None
            word = f"'{pattern.value}'" if pattern is not None and pattern.type == "str" else name
        if word not in words:
            words.append(word)
    if not words:
        return ""
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " or " + words[-1]


def _token_text(token: Token) -> str:
    if token.type == "$END":
        return "end of file"
    text = str(token)
    if len(text) > 30:
        text = text[:27] + "..."
    return f"'{text}'"


def _syntax_error(exc: UnexpectedInput, filename: str, text: str) -> DescriptionSyntaxError:
    line, column = exc.line, exc.column
    hint = None
    if isinstance(exc, UnexpectedToken):
        token = exc.token
        expected = _describe_expected(set(exc.expected))
        message = f"unexpected {_token_text(token)}"
        if token.type == "$END":
            message = "unexpected end of file"
            lines = text.splitlines() or [""]
            line, column = len(lines), len(lines[-1]) + 1
        if str(token) in KEYWORDS and "WORD" in exc.expected:
            hint = f'{token} is a keyword: quote it ("{token}") to use it as a name'
        elif expected:
            hint = f"expected {expected}"
        end = (token.end_line, token.end_column) if token.type != "$END" else (None, None)
    elif isinstance(exc, UnexpectedCharacters):
        pos = exc.pos_in_stream or 0
        char = text[pos] if pos < len(text) else ""
        message = f"unexpected character {char!r}"
        if char == '"':
            message = "unterminated or malformed string"
            hint = "strings end on the same line; use ##...# for text over several lines"
        elif char == "#":
            hint = 'directives are #include "file" and #include? "file"; ##...# is a string'
        end = (line, column + 1)
    elif isinstance(exc, UnexpectedEOF):
        lines = text.splitlines() or [""]
        line, column = len(lines), len(lines[-1]) + 1
        message, end = "unexpected end of file", (None, None)
    else:
        raise TypeError(f"an unknown kind of lark error: {type(exc).__name__}") from exc
    loc = SourceLocation(filename, line, column, end[0], end[1])
    source_lines = text.splitlines()
    source = source_lines[line - 1] if 1 <= line <= len(source_lines) else None
    return DescriptionSyntaxError(message, loc=loc, hint=hint, source_line=source)


# -- the parser ----------------------------------------------------------------------------------
_PARSER: Lark | None = None
_TRANSFORMER = _ToSyntax()


def _cache_file() -> str | None:
    """Lark's compiled-grammar cache, per user; None (no cache) where nothing is writable."""
    from .. import __version__

    base = os.environ.get("XDG_CACHE_HOME") or Path("~/.cache").expanduser()
    for folder in (Path(base, "sd-batch"), Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if os.access(folder, os.W_OK):
                return str(folder / f"sf-grammar-{__version__}-{os.getuid()}.lark")
        except OSError:
            continue
    return None


_KEYWORD_TEXT = {kind: word for word, kind in KEYWORD_TYPES.items()}


def _word(token: Token) -> Token:
    """A WORD that is a keyword becomes that keyword; a reserved word is refused."""
    kind = KEYWORD_TYPES.get(token)
    if kind is not None:
        token.type = kind
    elif token in RESERVED_WORDS:
        raise _ReservedWord(token)
    return token


class _ReservedWord(Exception):
    def __init__(self, token: Token) -> None:
        super().__init__(str(token))
        self.token = token


_PARSER_MADE = threading.Lock()


def _parser() -> Lark:
    global _PARSER
    with _PARSER_MADE:
        if _PARSER is not None:
            return _PARSER
        _PARSER = Lark.open(
            str(GRAMMAR),
            parser="lalr",
            lexer="basic",
            transformer=_TRANSFORMER,
            cache=_cache_file() or False,
            lexer_callbacks={"WORD": _word},
            maybe_placeholders=False,
        )
        return _PARSER


@contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cycle collector off while a description is parsed and resolved.

    Those phases allocate objects that all survive (the syntax and the tree), so collections
    find nothing, yet each full one walks every object: on a 3 MB description they made
    resolution take 2.4x as long, and grow faster than the input. Garbage cycles made meanwhile
    are collected once it is back on.
    """
    global _gc_depth, _gc_was_enabled
    with _GC_LOCK:  # threads parse at once: the first in turns it off, the last out back on
        if _gc_depth == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_depth += 1
    try:
        yield
    finally:
        with _GC_LOCK:
            _gc_depth -= 1
            if _gc_depth == 0 and _gc_was_enabled:
                gc.enable()


# Several threads pause the collector at once (the helper service, `sd web`): checking and
# turning it off as two steps let a thread turn it off again just after another turned it
# back on, and leave it off for good. A forked child starts with no pause of its parent's.
_GC_LOCK = threading.Lock()
_gc_depth = 0
_gc_was_enabled = False


def _reset_gc_pause_in_child() -> None:
    global _GC_LOCK, _gc_depth
    if _gc_depth and _gc_was_enabled:
        gc.enable()  # the parent's pauses belong to its threads, which the child has not
    _GC_LOCK, _gc_depth = threading.Lock(), 0


os.register_at_fork(after_in_child=_reset_gc_pause_in_child)


def parse_text(
    text: str, filename: str = "<text>", anonymous: Iterator[int] | None = None
) -> SourceFile:
    """Parse one file's text. `anonymous` numbers `--` names across all files of one description."""
    parser = _parser()
    _TRANSFORMER.state.filename = filename
    _TRANSFORMER.state.anonymous = anonymous if anonymous is not None else itertools.count(1)
    try:
        with gc_paused():
            items = parser.parse(text)
    except UnexpectedInput as exc:
        raise _syntax_error(exc, filename, text) from None
    except _ReservedWord as exc:
        raise _token_error(
            exc.token,
            filename,
            text,
            f"{exc.token} is a reserved word of the SmartFrog language",
            hint=f'quote it ("{exc.token}") to use it as a name',
        ) from None
    except _BadLiteral as exc:
        raise _token_error(exc.token, filename, text, exc.message) from None
    return SourceFile(filename, cast("tuple[AttrDef | Include, ...]", items), text)


def _token_error(
    token: Token, filename: str, text: str, message: str, hint: str | None = None
) -> DescriptionSyntaxError:
    loc = SourceLocation(
        filename, token.line or 0, token.column or 0, token.end_line, token.end_column
    )
    lines = text.splitlines()
    source = lines[loc.line - 1] if 1 <= loc.line <= len(lines) else None
    return DescriptionSyntaxError(message, loc=loc, hint=hint, source_line=source)
