"""The guest's result tar, untrusted: read as a stream, its outputs put safely into the sandbox.

May import: errors, guest.contract, staging._common, the standard library.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..errors import StagingError
from ..guest import contract
from ._common import CHUNK, DIR_FLAGS, SECTOR, STAGING_PREFIX, TEXT_LIMIT, is_htcondor_file
from .tarscan import GuardedReader

log = logging.getLogger("sd_batch.staging")

_EXIT_STATUS_LIMIT = 64  # `signal 15\n` is 10 bytes
#: The deepest output path (a 8000-deep tree cost the runner 94 s to check, then recursion).
MAX_DEPTH = 64
#: File times the host accepts from a result (year 1970 to 9999).
_MTIME_RANGE = (0, 253402300799)
_SMALL_MEMBERS = frozenset(
    (contract.RESULT_EXIT_STATUS, contract.RESULT_ERROR, contract.RESULT_STDOUT)
    + (contract.RESULT_STDERR, contract.RESULT_GUEST_LOG)
)


@dataclass(frozen=True)
class JobResult:
    """What the guest returned. `exit_status` None: the payload never ran (see `error`)."""

    exit_status: contract.ExitStatus | None
    stdout: bytes
    stderr: bytes
    error: str | None
    files: tuple[str, ...]  # sandbox-relative paths of the regular files written, sorted
    guest_log: str
    skipped: tuple[str, ...] = ()  # sandbox-relative paths of links the job made (not returned)


def read_result(
    stream: IO[bytes],
    sandbox: Path,
    *,
    max_bytes: int,
    max_files: int,
    max_file_bytes: int | None = None,
) -> JobResult:
    """Read the guest's result tar from a stream and put its `outputs/` into the sandbox.

    The tar is untrusted. Regular files and directories only (any link, device or FIFO member
    is refused), no absolute or `..` names, nothing through or over a symlink or special file
    already in the sandbox, nothing over HTCondor's own files; at most `max_files` members and
    `max_bytes` of content in all (`max_file_bytes` each, stdout and stderr included). Files go
    to a staging directory inside the sandbox first and are renamed into place only once the
    whole tar has passed, so a refused result (a StagingError naming the member and why)
    leaves the sandbox as it was. Modes: owner rw kept, setuid/setgid/sticky and group/other
    write dropped (tarfile's data_filter policy: `data_file_mode`). Memory: stdout and stderr,
    at most max_bytes.
    """
    per_file = max_bytes if max_file_bytes is None else max_file_bytes
    # The stream may hold one header plus one GNU long-name header per member, and end blocks.
    limited = _LimitedReader(stream, max_bytes + max_files * 3 * SECTOR + 2 * tarfile.RECORDSIZE)
    guarded = GuardedReader(limited, "the result tar")  # headers checked before tarfile's
    small: dict[str, bytes] = {}
    extraction = _Extraction(sandbox)
    count = total = 0
    try:
        with tarfile.open(fileobj=guarded, mode="r|") as tar:  # type: ignore[call-overload]
            for member in tar:
                count, total = count + 1, total + member.size
                _check_limits(member, count, total, max_files, max_bytes, per_file)
                name = _checked_name(member)
                if count == 1:
                    if name != contract.RESULT_MARKER or not member.isreg():
                        raise StagingError(
                            f"this is not an sd-batch result: its first member is "
                            f"{member.name!r}, not {contract.RESULT_MARKER}"
                        )
                elif name == "outputs" or name.startswith(contract.RESULT_OUTPUTS_PREFIX):
                    extraction.add(member, name.partition("/")[2], tar)
                elif name in _SMALL_MEMBERS:
                    if name in small:
                        raise StagingError(f"result member {name!r} appears twice")
                    small[name] = _read_small(tar, member, name, per_file)
                else:
                    log.warning("ignoring result member %r, unknown to format 1", member.name)
        if count == 0:
            raise StagingError("the result is empty: no tar, or a tar without members")
        status = small.get(contract.RESULT_EXIT_STATUS)
        exit_status = (
            None if status is None else contract.ExitStatus.parse(status.decode("latin-1"))
        )
        extraction.commit()
    except tarfile.TarError as exc:
        raise StagingError(f"the result is not a readable tar: {exc}") from exc
    except OSError as exc:
        raise StagingError(f"cannot write the job's outputs into the sandbox: {exc}") from exc
    finally:
        extraction.cleanup()
    error = small.get(contract.RESULT_ERROR)
    return JobResult(
        exit_status=exit_status,
        stdout=small.get(contract.RESULT_STDOUT, b""),
        stderr=small.get(contract.RESULT_STDERR, b""),
        error=None if error is None else error.decode("utf-8", "replace"),
        files=tuple(sorted(extraction.written)),
        guest_log=small.get(contract.RESULT_GUEST_LOG, b"").decode("utf-8", "replace"),
        skipped=tuple(sorted(extraction.skipped)),
    )


class _LimitedReader:
    """The file object tarfile reads from: refuses a stream past the limit, which also bounds
    what tarfile holds in memory for PAX and GNU long-name headers."""

    def __init__(self, raw: IO[bytes], limit: int) -> None:
        self.raw, self.limit, self.count = raw, limit, 0

    def read(self, size: int = -1) -> bytes:
        room = self.limit - self.count + 1
        data = self.raw.read(room if size < 0 else min(size, room))
        self.count += len(data)
        if self.count > self.limit:
            raise StagingError(f"the result tar is larger than the limit of {self.limit} bytes")
        return data


def _check_limits(
    member: tarfile.TarInfo, count: int, total: int, max_files: int, max_bytes: int, per_file: int
) -> None:
    if count > max_files:
        raise StagingError(f"the result has more than {max_files} members (at {member.name!r})")
    if member.size > per_file:
        raise StagingError(
            f"result member {member.name!r} is {member.size} bytes, over the "
            f"limit of {per_file} bytes per file"
        )
    if total > max_bytes:
        raise StagingError(f"the result holds more than {max_bytes} bytes (at {member.name!r})")


def _checked_name(member: tarfile.TarInfo) -> str:
    """The member's name without `.` or empty parts; absolute names and `..` are refused."""
    if member.name.startswith("/"):
        raise StagingError(f"result member {member.name!r} is refused: absolute path")
    parts = [part for part in member.name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise StagingError(f"result member {member.name!r} is refused: '..' in its path")
    if len(parts) > MAX_DEPTH + 1:  # `outputs/` and MAX_DEPTH levels below it
        raise StagingError(
            f"result member {member.name[:80]!r}... is refused: nested deeper "
            f"than {MAX_DEPTH} directories"
        )
    low, high = _MTIME_RANGE
    if not low <= member.mtime <= high:  # tarscan let only plain numbers through
        raise StagingError(
            f"result member {member.name!r} is refused: its time {member.mtime!r} is out of range"
        )
    return "/".join(parts)


def _read_small(tar: tarfile.TarFile, member: tarfile.TarInfo, name: str, limit: int) -> bytes:
    data = tar.extractfile(member) if member.isreg() else None
    if data is None:
        raise StagingError(f"result member {member.name!r} is refused: not a regular file")
    if name == contract.RESULT_EXIT_STATUS and member.size > _EXIT_STATUS_LIMIT:
        raise StagingError(f"result member {name!r} is {member.size} bytes, not a status line")
    if name in (contract.RESULT_ERROR, contract.RESULT_GUEST_LOG) and member.size > TEXT_LIMIT:
        return data.read(TEXT_LIMIT) + f"\n[{member.size - TEXT_LIMIT} bytes cut]\n".encode()
    return data.read(limit)


_MISSING, _DIR, _FILE = "nothing", "a directory", "a regular file"


def data_file_mode(mode: int) -> int:
    """A result file's mode by tarfile's `data_filter` policy (Python 3.12, 3.11.4+).

    Written out because Debian 12's python3 (3.11.2) has no extraction filters: no setuid,
    setgid or sticky bit, no group/other write, owner read+write always, and execute bits
    only where the owner may execute.
    """
    mode &= 0o755
    if not mode & 0o100:
        mode &= ~0o111
    return mode | 0o600


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return _DIR
    if stat.S_ISREG(mode):
        return _FILE
    return "a symlink" if stat.S_ISLNK(mode) else "a special file"


class _Extraction:
    """Plans `outputs/` against the sandbox as it is, stages file contents, then commits.

    Every check happens while the tar streams in; the sandbox changes only in `commit`, which
    walks the same paths again through O_NOFOLLOW descriptors and renames staged files in.
    """

    def __init__(self, sandbox: Path) -> None:
        self.sandbox = sandbox
        self.kinds: dict[str, str] = {}  # sandbox-relative path -> _DIR | _FILE, as planned
        self.new_dirs: dict[str, int] = {}  # directories to create -> their mode
        self.staged: list[tuple[str, str]] = []  # (sandbox-relative path, staged file name)
        self.written: list[str] = []
        self.skipped: list[str] = []  # links the job made: not extracted, reported
        self._staging: Path | None = None
        self._staging_fd: int | None = None

    def add(self, member: tarfile.TarInfo, rel: str, tar: tarfile.TarFile) -> None:
        where = f"result member {member.name!r}"
        if member.issym() or member.islnk():
            # A job may well make links; they are not returned (never created on the host),
            # and the rest of the result is: losing a whole result to an `ln -s` helps nobody.
            self.skipped.append(rel)
            return
        if not (member.isreg() or member.isdir()):
            what = {tarfile.SYMTYPE: "a symlink", tarfile.LNKTYPE: "a hard link"}.get(
                member.type, "a device, FIFO or other special file"
            )
            raise StagingError(
                f"{where} is refused: {what}; only regular files and directories are extracted"
            )
        parts = rel.split("/") if rel else []
        if not parts:
            if member.isdir():
                return  # `outputs/` itself: the sandbox root
            raise StagingError(f"{where} is refused: a file in place of the sandbox itself")
        if is_htcondor_file(parts[0]) or parts[0].startswith(STAGING_PREFIX):
            raise StagingError(f"{where} is refused: {parts[0]!r} belongs to HTCondor/sd-batch")
        planned = self.kinds.get(rel)
        if planned == _FILE or (planned == _DIR and member.isreg()):
            again = "appears twice" if planned == _FILE else "is a directory in this result"
            raise StagingError(f"{where} is refused: {rel!r} {again}")
        for depth in range(1, len(parts) + member.isdir()):
            self._plan_dir(parts[:depth], 0o755, where, through=depth < len(parts))
        if member.isdir():
            if rel in self.new_dirs:
                self.new_dirs[rel] = (member.mode & 0o755) | 0o700
            return
        existing = self._existing(parts, where)
        if existing not in (_MISSING, _FILE):
            raise StagingError(f"{where} is refused: the sandbox already has {existing} {rel!r}")
        self.kinds[rel] = _FILE
        self._stage(member, data_file_mode(member.mode), rel, tar)

    def _plan_dir(self, parts: list[str], mode: int, where: str, *, through: bool) -> None:
        rel = "/".join(parts)
        planned = self.kinds.get(rel)
        if planned == _FILE:
            raise StagingError(f"{where} is refused: {rel!r} is a file in this result")
        if planned == _DIR:
            return
        existing = self._existing(parts, where)
        if existing == _MISSING:
            self.new_dirs[rel] = mode
        elif existing != _DIR:
            problem = "its path goes through" if through else "the sandbox already has"
            raise StagingError(f"{where} is refused: {problem} {existing} {rel!r}")
        self.kinds[rel] = _DIR

    def _existing(self, parts: list[str], where: str) -> str:
        """What the sandbox holds at `parts`, looked up without following any link."""
        fds = [os.open(self.sandbox, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)]
        try:
            for i, part in enumerate(parts):
                try:
                    kind = _kind(os.stat(part, dir_fd=fds[-1], follow_symlinks=False).st_mode)
                except FileNotFoundError:
                    return _MISSING
                if i == len(parts) - 1:
                    return kind
                if kind != _DIR:
                    prefix = "/".join(parts[: i + 1])
                    raise StagingError(
                        f"{where} is refused: its path goes through {kind} {prefix!r}"
                    )
                fds.append(os.open(part, DIR_FLAGS, dir_fd=fds[-1]))
            return _DIR
        finally:
            for fd in fds:
                os.close(fd)

    def _stage(self, member: tarfile.TarInfo, mode: int, rel: str, tar: tarfile.TarFile) -> None:
        if self._staging_fd is None:
            self._staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.sandbox))
            self._staging_fd = os.open(self._staging, DIR_FLAGS)
        staged = str(len(self.staged))
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with os.fdopen(os.open(staged, flags, 0o600, dir_fd=self._staging_fd), "wb") as out:
            source = tar.extractfile(member)
            if source is None:  # a regular file always has data
                raise StagingError(f"{member.name}: the result tar has no data for it")
            shutil.copyfileobj(source, out, CHUNK)
            out.flush()  # before utime: a later write would set the mtime to now
            os.fchmod(out.fileno(), mode)
            os.utime(out.fileno(), (member.mtime, member.mtime))
        self.staged.append((rel, staged))

    def commit(self) -> None:
        for rel, mode in self.new_dirs.items():  # parents were planned before their children
            os.close(self._open_dir(rel.split("/"), create_mode=mode))
        for rel, staged in self.staged:
            parts = rel.split("/")
            parent = self._open_dir(parts[:-1], create_mode=None)
            try:
                with contextlib.suppress(FileNotFoundError):
                    st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
                    if not stat.S_ISREG(st.st_mode):
                        raise StagingError(
                            f"{rel!r} became {_kind(st.st_mode)} in the sandbox "
                            "while the result was read"
                        )
                os.rename(staged, parts[-1], src_dir_fd=self._staging_fd, dst_dir_fd=parent)
            finally:
                os.close(parent)
            self.written.append(rel)

    def _open_dir(self, parts: list[str], create_mode: int | None) -> int:
        """Descend from the sandbox root with O_NOFOLLOW, creating the last part if asked."""
        fd = os.open(self.sandbox, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        for i, part in enumerate(parts):
            create = create_mode is not None and i == len(parts) - 1
            try:
                if create:
                    os.mkdir(part, 0o700, dir_fd=fd)
                child = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                where = "/".join(parts[: i + 1])
                raise StagingError(
                    f"{where!r} changed in the sandbox while the result was read: {exc}"
                ) from exc
            finally:
                os.close(fd)
            fd = child
            if create_mode is not None and create:
                os.fchmod(fd, create_mode)  # our own new directory: umask does not decide
        return fd

    def cleanup(self) -> None:
        if self._staging_fd is not None:
            os.close(self._staging_fd)
            self._staging_fd = None
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
