"""HTCondor's own syntaxes for a job's arguments and environment, as text in, tuples out.

Owns the new (`Arguments`, `Environment`) and old (`Args`, `Env`) syntaxes as the job ad holds
them and as a submit file writes them (condor_submit's manual, condor_arglist.cpp, env.cpp), and
`JobAdError`, which a value that breaks them raises. `jobad` re-exports all of it.

Pure: no bindings, no processes, nothing but string work, so it costs a hook nothing to import.
May import: errors, the standard library.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..errors import JobAdError

_WHITESPACE = " \t\n\r"  # what split_args and the V1 parsers treat as separators
#: condor_utils/env.cpp is_permitted_delim: a V1 Env starting with one of these names its delimiter.
_ENV_V1_DELIMITERS = "!#$%&*+,-/:;<>?@^`|~\x1f"


def split_arguments(raw: str) -> tuple[str, ...]:
    """The job ad's `Arguments` (the "new syntax" after condor_submit removed the outer quotes).

    Whitespace separates arguments; single quotes group (and may start mid-argument); `''`
    inside quotes is a literal quote; nothing else is special (condor_arglist.cpp split_args).
    """
    args: list[str] = []
    buf: list[str] = []
    in_token = False
    i, n = 0, len(raw)
    while i < n:
        ch = raw[i]
        if ch == "'":
            start = i
            i += 1
            in_token = True
            while True:
                if i >= n:
                    raise JobAdError(f"Arguments: unbalanced quote starting here: {raw[start:]!r}")
                if raw[i] == "'":
                    if i + 1 < n and raw[i + 1] == "'":
                        buf.append("'")
                        i += 2
                        continue
                    i += 1
                    break
                buf.append(raw[i])
                i += 1
        elif ch in _WHITESPACE:
            i += 1
            if in_token:
                args.append("".join(buf))
                buf, in_token = [], False
        else:
            buf.append(ch)
            in_token = True
            i += 1
    if in_token:
        args.append("".join(buf))
    return tuple(args)


def split_arguments_v1(raw: str) -> tuple[str, ...]:
    """The job ad's old-syntax `Args`: split on whitespace, no quoting at all (Unix rules).

    condor_submit already turned the submit file's `\\"` into `"`; what reaches the ad is raw.
    """
    return tuple(part for part in re.split(r"[ \t\n\r]+", raw) if part)


def join_arguments(args: Iterable[str]) -> str:
    """The inverse of `split_arguments`, exactly as HTCondor writes `Arguments` (append_arg).

    For a hook that rewrites `Arguments`: pass the result to `format_updates`, which quotes it
    as a ClassAd string.
    """
    out = ""
    for arg in args:
        if out:
            out += " "
        if not arg:
            out += "''"
        for ch in arg:
            if ch in " \t\n\r'":
                if out.endswith("'"):
                    out = out[:-1]  # merge with the quoted section just closed
                else:
                    out += "'"
                out += ("''" if ch == "'" else ch) + "'"
            else:
                out += ch
    return out


def split_environment(raw: str) -> tuple[tuple[str, str], ...]:
    """The job ad's `Environment` (new syntax): `split_arguments`, then NAME=value each.

    A later entry for the same name wins, as in HTCondor's Env table.
    """
    return _env_pairs(split_arguments(raw), "Environment")


def split_environment_v1(raw: str, delimiter: str | None = None) -> tuple[tuple[str, str], ...]:
    """The job ad's old-syntax `Env`: entries separated by `;` (or `EnvDelim`, or a leading
    delimiter character), newlines also separate, leading whitespace of an entry is dropped,
    quotes mean nothing (env.cpp MergeFromV1AutoDelim)."""
    delim = delimiter or ";"
    if raw and raw[0] == delim:
        raw = raw[1:]
    elif raw and raw[0] in _ENV_V1_DELIMITERS:
        delim, raw = raw[0], raw[1:]
    entries = [part.lstrip(_WHITESPACE) for part in re.split(f"[{re.escape(delim)}\n]", raw)]
    return _env_pairs([entry for entry in entries if entry], "Env")


def join_environment(pairs: Iterable[tuple[str, str]]) -> str:
    """The inverse of `split_environment` (what a hook writes to rewrite `Environment`)."""
    return join_arguments(f"{name}={value}" for name, value in pairs)


def _env_pairs(entries: Iterable[str], attr: str) -> tuple[tuple[str, str], ...]:
    env: dict[str, str] = {}
    for entry in entries:
        name, sep, value = entry.partition("=")
        if not sep:
            raise JobAdError(f"{attr}: missing '=' after environment variable {entry!r}")
        if not name:
            raise JobAdError(f"{attr}: missing variable name in {entry!r}")
        env[name] = value
    return tuple(env.items())


def unquote_submit_value(value: str) -> str:
    """A submit file's new-syntax value (`"one ""two"" 3"`) -> the raw text the job ad holds.

    HTCondor's V2QuotedToV2Raw: outer double quotes, `""` is one `"`, nothing may follow.
    """
    text = value.lstrip()
    if not text.startswith('"'):
        raise JobAdError(f"expected a double-quoted (new syntax) value, got {value!r}")
    out: list[str] = []
    i = 1
    while i < len(text):
        if text[i] == '"':
            if i + 1 < len(text) and text[i + 1] == '"':
                out.append('"')
                i += 2
                continue
            if text[i + 1 :].strip():
                raise JobAdError(
                    f"unexpected characters after the closing double quote: {text[i:]!r}",
                    hint="repeat a double quote to put one inside the value",
                )
            return "".join(out)
        out.append(text[i])
        i += 1
    raise JobAdError(f"unterminated double quote in {value!r}")


def parse_submit_arguments(value: str) -> tuple[str, ...]:
    """A submit file's `arguments = ...` value, either syntax, as condor_submit reads it."""
    if value.lstrip().startswith('"'):
        return split_arguments(unquote_submit_value(value))
    raw = []
    i = 0
    while i < len(value):  # old syntax: \" is a quote, a bare " is an error
        if value.startswith('\\"', i):
            raw.append('"')
            i += 2
        elif value[i] == '"':
            raise JobAdError(f"arguments: illegal unescaped double quote in {value!r}")
        else:
            raw.append(value[i])
            i += 1
    return split_arguments_v1("".join(raw))


def parse_submit_environment(value: str) -> tuple[tuple[str, str], ...]:
    """A submit file's `environment = ...` value, either syntax, as condor_submit reads it."""
    if value.lstrip().startswith('"'):
        return split_environment(unquote_submit_value(value))
    return split_environment_v1(value)
