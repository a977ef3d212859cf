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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DescriptionError, IncludeError, SourceLocation
from .parser import parse_text
from .syntax import Include, SourceFile


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

    def parse(self, text: str, name: str) -> SourceFile:
        parsed = parse_text(text, name, self.anonymous)
        self.files[name] = parsed
        return parsed

    def read(self, path: Path, *, display: str | None = None) -> SourceFile:
        name = display or self.display_name(path)
        self.origins[name] = path
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DescriptionError(f"{name} is not UTF-8 text ({exc.reason})") from exc
        except OSError as exc:
            raise DescriptionError(f"cannot read {name}: {exc.strerror or exc}") from exc
        return self.parse(text, name)

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
        return self.files[loc.file].line(loc.line)

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
