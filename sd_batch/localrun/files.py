"""Files and users for `sd run`: the shadow's and the starter's side of HTCondor file transfer.

The starter (as root) copies a job's inputs into a scratch dir owned by the slot user and,
when the job is done, copies what it made back to the submit dir. Everything the job touched is
untrusted by then: outputs are opened without following links and must be regular files.
Who the hooks and the job run as is here too (`SlotUser`, `default_user`).
May import: errors, the standard library.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import HarnessError

STDOUT_NAME, STDERR_NAME = "_condor_stdout", "_condor_stderr"  # the starter's names
JOB_AD_FILE, MACHINE_AD_FILE = ".job.ad", ".machine.ad"
STARTER_FILES = frozenset({STDOUT_NAME, STDERR_NAME, JOB_AD_FILE, MACHINE_AD_FILE})
Catalogue = dict[str, tuple[int, int, int]]


@dataclass(frozen=True, slots=True)
class SlotUser:
    """Who the hooks and the job run as (HTCondor's slot user)."""

    name: str
    uid: int
    gid: int
    home: str

    @classmethod
    def lookup(cls, name: str) -> SlotUser:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise HarnessError(
                f"no user {name!r} on this machine",
                hint="scripts/setup-host creates the slot user sdslot1",
            ) from None
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)

    @classmethod
    def current(cls) -> SlotUser:
        entry = pwd.getpwuid(os.getuid())
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)

    def process_options(self) -> dict[str, Any]:
        """Popen keywords that drop root to this user (setgroups, setgid, setuid in the child)."""
        if self.uid == os.geteuid():
            return {}
        groups = os.getgrouplist(self.name, self.gid)
        return {"user": self.uid, "group": self.gid, "extra_groups": groups}

    def own(self, path: Path) -> None:
        if self.uid != os.geteuid():
            os.chown(path, self.uid, self.gid, follow_symlinks=False)

    def copy_in(self, source: Path, target: Path) -> None:
        """An input file or folder into the scratch dir, owned by this user."""
        try:
            if source.is_dir():
                shutil.copytree(source, target)
                for path in [target, *target.rglob("*")]:
                    self.own(path)
            else:
                shutil.copyfile(source, target)
                shutil.copymode(source, target)
                self.own(target)
        except OSError as exc:
            raise HarnessError(f"{source}: {exc.strerror or exc}") from exc

    def write_file(self, path: Path, text: str) -> None:
        """A file the starter writes for the job (.job.ad): fresh, never through a link."""
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        self.own(path)


def default_user(requested: str | None) -> SlotUser:
    """`--user`, else sdslot1 when root (hooks never run as root on a worker), else ourselves."""
    if requested:
        user = SlotUser.lookup(requested)
        if os.geteuid() != 0 and user.uid != os.getuid():
            raise HarnessError(f"--user {requested}: only root can run jobs as another user")
        return user
    if os.geteuid() == 0:
        return SlotUser.lookup("sdslot1")
    return SlotUser.current()


def file_list(value: Any) -> list[str]:
    """A comma-separated TransferInput/TransferOutput list."""
    if not isinstance(value, str):
        return []
    return [entry.strip() for entry in value.split(",") if entry.strip()]


def stage_out(
    transfer_output: Any,
    iwd: Path,
    scratch: Path,
    before: Catalogue,
    std_files: Mapping[str, str | None],
) -> list[str]:
    """The starter's output transfer back to the submit dir: stdout/stderr to the submit
    file's output/error, then transfer_output_files or every new or changed top-level file."""
    moved: list[str] = []
    for name, target in std_files.items():
        if target and target != "/dev/null" and (scratch / name).exists():
            copy_out(scratch / name, iwd / target)
            moved.append(target)
    listed = file_list(transfer_output)
    if listed:
        names = [Path(entry.rstrip("/")).name for entry in listed]
    else:
        now = catalogue(scratch)
        names = sorted(
            n for n, key in now.items() if n not in STARTER_FILES and before.get(n) != key
        )
    for name in names:
        copy_out(scratch / name, iwd / name)
        moved.append(name)
    return moved


def catalogue(scratch: Path) -> Catalogue:
    """Top-level files by (inode, size, mtime ns): what 'new or changed' is measured against."""
    found: dict[str, tuple[int, int, int]] = {}
    for entry in os.scandir(scratch):
        info = entry.stat(follow_symlinks=False)
        if stat.S_ISREG(info.st_mode):
            found[entry.name] = (info.st_ino, info.st_size, info.st_mtime_ns)
    return found


def copy_out(source: Path, target: Path) -> None:
    """Copy a file the job made to the submit side, never following its links (we are root)."""
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise HarnessError(f"transfer output files failure: {source.name}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as src:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise HarnessError(f"transfer output files failure: {source.name} is not a file")
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
