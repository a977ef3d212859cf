"""Finding and reading `#include`d files, SmartFrog's first resolution phase.

An include is searched in the including file's folder, then the `-I` folders, the site template
folders and last our bundled component library. A leading `/` (SmartFrog's classpath-absolute
form, `#include "/org/smartfrog/components.sf"`) means "from a search folder", never the host's
root: a description must not read `/etc/shadow`. A found file must stay inside the folder it was
found in (no `..` or symlink escapes). Reading description files is this module's one side effect.
May import: errors, lang.parser, lang.syntax.
"""

from __future__ import annotations

import itertools
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DescriptionError, IncludeError, SourceLocation
from .budget import Budget, Budgets
from .parser import parse_text
from .syntax import Include, SourceFile

#: Read a pipe this much at a time (a regular file is read in one go: its size is known).
_CHUNK = 1024**2


@dataclass
class SourceSet:
    """Every file read for one description, so errors can quote any line of any of them."""

    search_path: tuple[Path, ...]
    files: dict[str, SourceFile] = field(default_factory=dict)
    #: Files under this folder are named relative to it in messages (a job's own files, which
    #: the helper reads from a root-side copy, keep the names their author knows).
    display_root: Path | None = None
    #: Shown name -> the real file, so includes are searched beside the real file.
    origins: dict[str, Path] = field(default_factory=dict)
    anonymous: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    budgets: Budgets = field(default_factory=Budgets)
    #: The counts of this description's work against BUDGETS (ticked by every phase).
    budget: Budget = field(init=False)
    _lines: dict[str, list[str]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.budget = Budget(self.budgets, quote=self.source_line)

    def parse(self, text: str, name: str, loc: SourceLocation | None = None) -> SourceFile:
        """Parse TEXT as file NAME (LOC: the include that brought it, for a budget error)."""
        self.budget.source(len(text), loc)
        parsed = parse_text(text, name, self.anonymous)
        self.files[name] = parsed
        return parsed

    def read(
        self, path: Path, *, display: str | None = None, loc: SourceLocation | None = None
    ) -> SourceFile:
        name = display or self.display_name(path)
        self.origins[name] = path
        try:
            data = self._read_bounded(path, name, loc)
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DescriptionError(f"{name} is not UTF-8 text ({exc.reason})") from exc
        except OSError as exc:
            raise DescriptionError(f"cannot read {name}: {exc.strerror or exc}") from exc
        if "\r" in text:  # as Python's text files read them: every line ends in \n
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        return self.parse(text, name, loc)

    def _read_bounded(self, path: Path, name: str, loc: SourceLocation | None) -> bytes:
        """The file's bytes, never more than the source budget has left: a regular file whose
        size fits, or a pipe read until its end or the budget; nothing else (`/dev/zero`
        never ends, a directory or socket is no description)."""
        left = self.budget.source_left()
        with open(path, "rb", buffering=0) as handle:
            info = os.fstat(handle.fileno())
            if stat.S_ISREG(info.st_mode):
                size = info.st_size
                if size > left:
                    raise self.budget.exceeded("source_bytes", loc)
                data = handle.read(size + 1)  # +1: a file still growing is seen
                if len(data) > left:
                    raise self.budget.exceeded("source_bytes", loc)
                return data
            if not stat.S_ISFIFO(info.st_mode):
                raise DescriptionError(
                    f"cannot read {name}: not a regular file",
                    hint="a description is a .sf file (or a pipe)",
                )
            chunks: list[bytes] = []
            total = 0
            while chunk := handle.read(min(_CHUNK, left + 1 - total)):
                chunks.append(chunk)
                total += len(chunk)
                if total > left:
                    raise self.budget.exceeded("source_bytes", loc)
            return b"".join(chunks)

    def display_name(self, path: Path) -> str:
        if self.display_root is not None:
            try:
                return str(path.resolve().relative_to(self.display_root.resolve()))
            except (OSError, ValueError):
                pass
        return str(path)

    def _folder_of(self, shown: str) -> Path:
        return self.origins.get(shown, Path(shown)).parent

    def source_line(self, loc: SourceLocation | None) -> str | None:
        if loc is None or loc.file not in self.files:
            return None
        lines = self._lines.get(loc.file)
        if lines is None:  # split once: a description may have thousands of errors to quote
            lines = self._lines[loc.file] = self.files[loc.file].text.splitlines()
        return lines[loc.line - 1] if 1 <= loc.line <= len(lines) else None

    def locate(self, include: Include) -> Path | None:
        """The file an include names, or None if no search folder has it."""
        relative = include.path.lstrip("/")
        including_dir = self._folder_of(include.loc.file)
        roots: list[Path] = []
        if not include.path.startswith("/") and include.loc.file not in ("<text>", "<stdin>"):
            roots.append(including_dir)
        roots.extend(self.search_path)
        for root in roots:
            candidate = root / relative
            try:
                real = candidate.resolve()
                inside = real.is_relative_to(root.resolve())
            except (OSError, ValueError):  # ValueError: a NUL byte in the name
                continue
            if inside and real.is_file():
                return candidate
        return None

    def searched(self, include: Include) -> str:
        roots = [str(self._folder_of(include.loc.file))] if not include.path.startswith("/") else []
        roots += [str(p) for p in self.search_path]
        return ", ".join(dict.fromkeys(roots))


def include_error(include: Include, sources: SourceSet) -> IncludeError:
    """A missing include, named and located, with the folders that were searched."""
    return IncludeError(
        f'cannot find include "{include.path}"',
        loc=include.loc,
        hint=f"searched: {sources.searched(include)}",
        source_line=sources.source_line(include.loc),
    )
