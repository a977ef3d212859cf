"""The output disk (a raw file, blocks reserved, the contract's magic) and the result tar on it.

May import: errors, guest.contract, staging._common, the standard library.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

from ..errors import StagingError
from ..guest import contract
from ._common import CHUNK, SECTOR, blocks
from .tarscan import TarScan


def create_output_disk(path: Path, size_bytes: int) -> None:
    """A new raw disk of `size_bytes` (rounded up to whole sectors), magic in sector 0, its
    blocks reserved on the host (fallocate: a millisecond on ext4/xfs).

    Reserved, not sparse: a host disk that fills up while the job runs would make QEMU pause
    the VM on the guest's first result write, after all the job's work; now there is no room
    it is found before the VM boots, and the job goes back to Idle at no cost.
    Never replaces an existing file nor follows a link (O_EXCL, O_NOFOLLOW): callers may be root.
    """
    if size_bytes < contract.MIN_OUTPUT_DISK_BYTES:
        raise StagingError(
            f"an output disk of {size_bytes} bytes is too small: the guest needs "
            f"{contract.MIN_OUTPUT_DISK_BYTES} bytes at least to report an error"
        )
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise StagingError(f"cannot create the output disk {path}: {exc}") from exc
    try:
        with os.fdopen(fd, "wb") as disk:
            disk.write(contract.output_disk_header())
            disk.truncate(blocks(size_bytes))
            disk.flush()
            os.posix_fallocate(disk.fileno(), 0, blocks(size_bytes))
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise StagingError(f"cannot write the output disk {path}: {exc}") from exc


def result_extent(path: Path) -> int:
    """Where the result tar on an output disk ends (`result_tar_from_disk`'s checks): the
    untrusted part, which the root side runs in a confined child (`confined`)."""
    with result_tar_from_disk(path) as found:
        return found.raw.end  # type: ignore[attr-defined, no-any-return]


def guest_wrote(path: Path) -> bool:
    """Whether the guest wrote its output disk at all: sector 0 no longer holds the magic
    `create_output_disk` put there (one sector read: nothing of the guest's is trusted)."""
    with open(path, "rb", buffering=0, opener=_nofollow) as disk:
        return not _unwritten(disk.read(SECTOR))


def _unwritten(first_sector: bytes) -> bool:
    return first_sector.startswith(contract.OUTPUT_MAGIC)


def result_tar_from_disk(path: Path, end: int | None = None) -> BinaryIO:
    """A reader of exactly the result tar on an output disk, through its end-of-archive blocks.

    The tar's extent is found first, header by header as tarfile reads them (no data is read
    except PAX records), so a disk the guest never wrote (sector 0 still holds the output
    magic: its console log says why), garbage, or a tar running past the end of the disk is a
    StagingError here, before anything is streamed.
    """
    try:
        disk = open(path, "rb", buffering=0, opener=_nofollow)  # noqa: SIM115 - returned
    except OSError as exc:
        raise StagingError(f"cannot open the output disk {path}: {exc}") from exc
    try:
        if _unwritten(disk.read(SECTOR)):
            raise StagingError(
                f"the guest wrote nothing on its output disk {path.name} (sector 0 still "
                f"holds {contract.OUTPUT_MAGIC.decode()})",
                hint="the VM's console log says why",
            )
        if end is None:  # else found already by `result_extent`
            end = _tar_end(disk.fileno(), os.fstat(disk.fileno()).st_size)
    except BaseException:
        disk.close()
        raise
    return io.BufferedReader(_Prefix(disk, end), CHUNK)


def _nofollow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)


def _tar_end(fd: int, size: int) -> int:
    """Where the tar at the start of the file ends (after its zero blocks); its headers
    checked (`tarscan`) on the way."""
    scan = TarScan(fd, size, "the result tar")
    for _member in scan.members():
        pass
    return scan.end


class _Prefix(io.RawIOBase):
    """The first `end` bytes of a file."""

    def __init__(self, raw: io.FileIO, end: int) -> None:
        super().__init__()
        self.raw, self.end, self.pos = raw, end, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = os.preadv(self.raw.fileno(), [memoryview(buffer)[: self.end - self.pos]], self.pos)
        self.pos += n
        return n

    def close(self) -> None:
        self.raw.close()
        super().close()
