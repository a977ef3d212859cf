"""The guest's input tar: the manifest and the job's sandbox, streamed, never through a link.

May import: errors, guest.contract, staging._common, the standard library.
"""

from __future__ import annotations

import io
import logging
import os
import posixpath
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from ..errors import StagingError
from ..guest import contract
from ._common import DIR_FLAGS, SECTOR, blocks, is_htcondor_file

log = logging.getLogger("sd_batch.staging")

#: The largest size a ustar header holds; beyond it Python writes a PAX `size` record, which
#: busybox tar (the guest) ignores.
_USTAR_MAX_SIZE = 8**11 - 1
_MAX_DEPTH = 512


def write_input_tar(
    sandbox: Path,
    manifest: contract.Manifest,
    out: IO[bytes],
    *,
    job_ad_text: str | None = None,
    machine_ad_text: str | None = None,
    max_bytes: int,
) -> int:
    """Stream the guest's input tar to `out`; returns the bytes written.

    Marker first (a plain ustar header: no PAX or GNU header precedes it, so the guest finds it
    in sector 0), the manifest, `meta/job.ad`, `meta/machine.ad` (the slot's), then the sandbox
    under `sandbox/` in sorted order: directories, regular files, and symlinks that stay inside
    the sandbox. HTCondor's own files, other symlinks and special files are left out (logged);
    nothing is read through a link. Over `max_bytes` is a StagingError, raised before the member
    that would not fit. Errors writing `out` (BrokenPipeError) propagate unchanged.
    """
    sink = _BoundedWriter(out, max_bytes)
    try:
        with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            for name, data in manifest.members():
                _add_bytes(tar, name, data, max_bytes)
            if job_ad_text is not None:
                _add_bytes(tar, contract.JOB_AD_MEMBER, job_ad_text.encode(), max_bytes)
            if machine_ad_text is not None:
                _add_bytes(tar, contract.MACHINE_AD_MEMBER, machine_ad_text.encode(), max_bytes)
            _add_sandbox(tar, sandbox, max_bytes, sink)
    except tarfile.TarError as exc:
        raise StagingError(f"cannot write the input tar: {exc}") from exc
    return sink.count


class _BoundedWriter:
    """The file object tarfile writes to: counts, refuses to grow past the limit, and remembers
    a failed write so that it is not mistaken for a sandbox problem."""

    def __init__(self, out: IO[bytes], limit: int) -> None:
        self.out, self.limit, self.count, self.failed = out, limit, 0, False

    def write(self, data: bytes) -> int:
        if self.count + len(data) > self.limit:
            raise StagingError(f"the job's input is larger than the limit of {self.limit} bytes")
        try:
            self.out.write(data)
        except OSError:
            self.failed = True
            raise
        self.count += len(data)
        return len(data)


def _check_room(tar: tarfile.TarFile, name: str, size: int, limit: int) -> None:
    """Refuse a member before writing it when the archive would then exceed the limit."""
    after = tar.offset + 3 * SECTOR + blocks(size) + 2 * SECTOR  # headers, data, end blocks
    if -(-after // tarfile.RECORDSIZE) * tarfile.RECORDSIZE > limit:
        raise StagingError(
            f"the job's input does not fit the limit of {limit} bytes (at {name!r}, {size} bytes)",
            hint="transfer fewer or smaller input files",
        )


def _member(name: str, kind: bytes, mode: int, mtime: int = 0, size: int = 0) -> tarfile.TarInfo:
    """A TarInfo with nothing host-specific (the guest unpacks with `tar -o`); whole-second
    times, so no PAX `mtime` record is needed."""
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.size = kind, mode & 0o777, max(0, mtime), size
    info.uid, info.gid, info.uname, info.gname = 0, 0, "", ""
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, limit: int) -> None:
    _check_room(tar, name, len(data), limit)
    tar.addfile(_member(name, tarfile.REGTYPE, 0o644, size=len(data)), io.BytesIO(data))


def _add_sandbox(tar: tarfile.TarFile, sandbox: Path, limit: int, sink: _BoundedWriter) -> None:
    """Walk the sandbox depth-first through directory descriptors, names sorted."""
    root_fd = os.open(sandbox, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    real_root = os.path.realpath(sandbox)
    st = os.fstat(root_fd)
    top = contract.SANDBOX_PREFIX.rstrip("/")
    tar.addfile(_member(top, tarfile.DIRTYPE, st.st_mode | 0o700, int(st.st_mtime)))
    stack: list[tuple[int, str, Iterator[str]]] = [(root_fd, "", _sorted_names(root_fd))]
    try:
        while stack:
            dir_fd, rel, names = stack[-1]
            name = next(names, None)
            if name is None:
                os.close(stack.pop()[0])
                continue
            if not rel and is_htcondor_file(name):
                continue
            try:
                child = _add_entry(tar, dir_fd, rel + name, name, real_root, limit)
            except OSError as exc:
                if sink.failed:
                    raise
                raise StagingError(f"cannot read {rel + name!r} in the sandbox: {exc}") from exc
            if child is not None:
                stack.append((child, rel + name + "/", _sorted_names(child)))
                if len(stack) > _MAX_DEPTH:
                    raise StagingError(f"the sandbox is nested too deeply at {rel + name!r}")
    finally:
        for dir_fd, _, _ in stack:
            os.close(dir_fd)


def _add_entry(
    tar: tarfile.TarFile, dir_fd: int, rel: str, name: str, real_root: str, limit: int
) -> int | None:
    """Add one sandbox entry; returns an open descriptor when it is a directory to descend."""
    member = contract.SANDBOX_PREFIX + rel
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode):
        fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
        if not _same_inode(st, os.fstat(fd)):
            os.close(fd)
            raise StagingError(f"the sandbox changed while it was read (at {rel!r})")
        _check_room(tar, member, 0, limit)
        tar.addfile(_member(member, tarfile.DIRTYPE, st.st_mode | 0o700, int(st.st_mtime)))
        return fd
    if stat.S_ISREG(st.st_mode):
        # O_NONBLOCK: should a FIFO replace the file after the stat, open() must not hang.
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        with os.fdopen(os.open(name, flags, dir_fd=dir_fd), "rb") as data:
            now = os.fstat(data.fileno())
            if not stat.S_ISREG(now.st_mode) or not _same_inode(st, now):
                raise StagingError(f"the sandbox changed while it was read (at {rel!r})")
            if now.st_size > _USTAR_MAX_SIZE:
                raise StagingError(
                    f"{rel!r} is {now.st_size} bytes: the guest's tar reads "
                    f"files of up to {_USTAR_MAX_SIZE} bytes"
                )
            _check_room(tar, member, now.st_size, limit)
            size = now.st_size
            tar.addfile(_member(member, tarfile.REGTYPE, st.st_mode, int(st.st_mtime), size), data)
        return None
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(name, dir_fd=dir_fd)
        if not _link_stays_inside(rel, target, real_root):
            log.warning("not giving the VM %r: a link to %r, outside the sandbox", rel, target)
            return None
        _check_room(tar, member, 0, limit)
        info = _member(member, tarfile.SYMTYPE, 0o777, int(st.st_mtime))
        info.linkname = target
        tar.addfile(info)
        return None
    log.warning("not giving the VM %r: not a regular file, directory or link", rel)
    return None


def _sorted_names(dir_fd: int) -> Iterator[str]:
    """A directory's names, sorted so the same sandbox makes the same tar."""
    return iter(sorted(os.listdir(dir_fd)))  # noqa: PTH208 - pathlib cannot list a descriptor


def _same_inode(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _link_stays_inside(rel: str, target: str, real_root: str) -> bool:
    """A relative link whose target stays inside, both as written and as resolved here."""
    if not target or target.startswith("/"):
        return False
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
    if joined == ".." or joined.startswith("../"):
        return False
    # `d/up -> ..` then `x -> d/up/..` stays inside as written, not once `d/up` is resolved.
    resolved = os.path.realpath(posixpath.join(real_root, posixpath.dirname(rel), target))
    return resolved == real_root or resolved.startswith(real_root.rstrip("/") + "/")
