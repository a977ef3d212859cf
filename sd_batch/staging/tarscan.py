"""Untrusted tar headers, checked before `tarfile` parses them.

The interpreter's `tarfile` (3.11.7 here) parses PAX records with regular expressions whose
cost is quadratic in a long run of digits or in a record whose length lies (CVE-2024-6232: a
PAX header of 200,000 digits cost 39 s of CPU), keeps GNU long names in memory whatever their
size, and turns `mtime=1e300` or `nan` into floats that later raise in `os.utime`. So every tar
we did not write is walked here first, one 512-byte header at a time: extended headers (PAX,
GNU long name/link) over `MAX_EXTENDED` bytes, PAX records that are not exactly
`LEN keyword=value\\n`, digit runs longer than `MAX_DIGITS`, numeric PAX fields that are not
plain finite numbers, and sparse members (which the contract excludes) are refused with a
`StagingError`, in time linear in the headers. Both the seekable form (`TarScan`, a file: the
input disk, the output disk) and the streaming form (`GuardedReader`, the runner's socket) share
`check_header` and `check_pax`. We do not rely on a patched interpreter: the venv's Python is
what the service runs, and this bound holds whatever `tarfile` does.
May import: errors, staging._common, the standard library.
"""

from __future__ import annotations

import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from ..errors import StagingError
from ._common import SECTOR, blocks

#: The largest extended header (PAX records, a GNU long name) we let tarfile read.
MAX_EXTENDED = 64 * 1024
#: The longest run of digits in PAX records (tarfile's `\d+` searches are quadratic in it).
MAX_DIGITS = 40
_ZERO_BLOCK = bytes(SECTOR)
_PAX_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
_GNU_LONG = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
_RECORD_LENGTH = re.compile(rb"([1-9][0-9]{0,8}) ")
_DIGIT_RUN = re.compile(rb"[0-9]{%d}" % (MAX_DIGITS + 1))
_INTEGER_FIELDS = frozenset((b"size", b"uid", b"gid"))
_TIME_FIELDS = frozenset((b"mtime", b"atime", b"ctime"))
_INTEGER = re.compile(rb"[0-9]{1,19}")
_TIME = re.compile(rb"-?[0-9]{1,12}(\.[0-9]{1,9})?")


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def check_header(block: bytes, where: str) -> tarfile.TarInfo:
    """One 512-byte header block, read by tarfile's own (linear) `frombuf`; refused when it
    announces a sparse member or an extended header over MAX_EXTENDED bytes."""
    try:
        info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError as exc:
        raise StagingError(f"{where} holds no valid tar header: {exc}") from exc
    if info.type == tarfile.GNUTYPE_SPARSE:
        raise StagingError(f"{where} is a sparse member, which sd-batch does not accept")
    if info.type in (*_PAX_TYPES, *_GNU_LONG) and info.size > MAX_EXTENDED:
        raise StagingError(
            f"{where} is an extended tar header of {info.size} bytes, over the "
            f"limit of {MAX_EXTENDED} bytes"
        )
    return info


def check_pax(records: bytes, where: str) -> int | None:
    """PAX records, each exactly `LEN keyword=value\\n`; the `size` record's value, if any."""
    if _DIGIT_RUN.search(records):
        raise StagingError(f"{where}: a PAX record holds more than {MAX_DIGITS} digits in a row")
    pos, size = 0, None
    end = len(records.rstrip(b"\0"))
    while pos < end:
        match = _RECORD_LENGTH.match(records, pos)
        length = int(match.group(1)) if match else 0
        record = records[pos : pos + length]
        keyword, equals, value = record[match.end() - pos if match else 0 :].partition(b"=")
        if not match or len(record) != length or not record.endswith(b"\n") or not equals:
            raise StagingError(f"{where}: malformed PAX record at byte {pos}")
        value = value[:-1]
        if keyword.startswith(b"GNU.sparse"):
            raise StagingError(f"{where} describes a sparse member, which sd-batch does not accept")
        if keyword in _INTEGER_FIELDS and not _INTEGER.fullmatch(value):
            raise StagingError(f"{where}: PAX {keyword.decode()} {value[:40]!r} is not a number")
        if keyword in _TIME_FIELDS and not _TIME.fullmatch(value):
            raise StagingError(f"{where}: PAX {keyword.decode()} {value[:40]!r} is not a time")
        if keyword == b"size":
            size = int(value)
        pos += length
    return size


def _data_length(info: tarfile.TarInfo, pax_size: int | None) -> int:
    """How many bytes of data follow a header (as tarfile skips them)."""
    if info.type in (*_PAX_TYPES, *_GNU_LONG):
        return info.size
    if info.isreg() or info.type not in tarfile.SUPPORTED_TYPES:
        return info.size if pax_size is None else pax_size
    return 0


@dataclass
class TarScan:
    """The tar at the start of a file, header by header through `os.pread` (data is skipped,
    never read): `members()` yields each member's own header; `end` is then where the archive
    ends, after its zero blocks."""

    fd: int
    size: int
    what: str = "the tar"
    end: int = 0

    def members(self) -> Iterator[tarfile.TarInfo]:
        pos, pax_size = 0, None
        while True:
            block = os.pread(self.fd, SECTOR, pos)
            if len(block) < SECTOR:
                raise StagingError(f"{self.what} is cut short at byte {pos} (of {self.size} bytes)")
            where = f"{self.what} at byte {pos}"
            pos += SECTOR
            if block == _ZERO_BLOCK:  # end of archive; the second zero block if there
                self.end = pos + SECTOR if os.pread(self.fd, SECTOR, pos) == _ZERO_BLOCK else pos
                return
            info = check_header(block, where)
            length = _data_length(info, pax_size)
            if info.type in _PAX_TYPES:
                found = check_pax(os.pread(self.fd, info.size, pos), where)
                pax_size = found if info.type == tarfile.XHDTYPE else pax_size
            elif info.type not in _GNU_LONG:
                pax_size = None
                yield info
            pos += blocks(length)
            if pos > self.size:
                raise StagingError(f"{self.what} runs past the end of its disk ({self.size} bytes)")


class GuardedReader:
    """A stream reader that checks each header (`check_header`, `check_pax`) before passing
    it on to tarfile, which reads the tar through it; past the end blocks nothing is checked."""

    def __init__(self, raw: Readable, what: str = "the tar") -> None:
        self.raw, self.what = raw, what
        self.pos = 0  # bytes passed on
        self.next_header = 0  # where the next header block starts
        self.pax_size: int | None = None
        self.ended = False

    def read(self, size: int = -1) -> bytes:
        if self.ended or self.pos < self.next_header:
            room = size if self.ended else self.next_header - self.pos
            data = self.raw.read(room if size < 0 else min(size, room))
        else:
            data = self._header()
        self.pos += len(data)
        return data

    def _header(self) -> bytes:
        """The next header (with an extended header's records), checked, as one chunk."""
        block = _read_exactly(self.raw, SECTOR)
        if len(block) < SECTOR:
            return block  # tarfile says what a short tar is
        if block == _ZERO_BLOCK:
            self.ended = True
            return block
        where = f"{self.what} at byte {self.pos}"
        info = check_header(block, where)
        self.next_header = self.pos + SECTOR + blocks(_data_length(info, self.pax_size))
        if info.type in _PAX_TYPES:
            records = _read_exactly(self.raw, blocks(info.size))
            found = check_pax(records[: info.size], where)
            self.pax_size = found if info.type == tarfile.XHDTYPE else self.pax_size
            return block + records
        if info.type not in _GNU_LONG:
            self.pax_size = None
        return block


def _read_exactly(raw: Readable, size: int) -> bytes:
    chunks, got = [], 0
    while got < size:
        chunk = raw.read(size - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
