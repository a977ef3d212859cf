"""The startd's side of `sd run`: this machine as a partitionable slot, and the slot carved
from it for each job, written as the starter's `.machine.ad`.

A worker's startd publishes its partitionable slot (CPUs, memory, disk) plus what its startd
cron printed (`condor_hooks/startd_cron`: HasSmartDomains and each template's needs); when a
job matches, it evaluates the job's `RequestCpus` / `RequestMemory` / `RequestDisk` against
that slot (the site transform makes them at least the job's template's needs, through
`TARGET.SmartDomainsTemplate*`) and carves a dynamic slot of that size, rounded up as its
default `MODIFY_REQUEST_EXPR_REQUEST*` knobs round (memory to 128 MiB, disk to 1024 KiB). The
starter writes that slot's ad into the scratch dir before PREPARE_JOB. Here the same, with the
cron run once per `sd run` as the slot user (the startd runs it as `condor`).
May import: errors, condor.jobad, localrun.files, localrun.starter, stdlib.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..condor.jobad import JobAd, format_updates, job_resources, parse_attributes
from ..errors import HarnessError
from .files import SlotUser
from .starter import run_hook

#: The startd's default MODIFY_REQUEST_EXPR_REQUESTMEMORY / ..._REQUESTDISK quanta.
MEMORY_QUANTUM_MIB = 128
DISK_QUANTUM_KIB = 1024


@dataclass(frozen=True)
class Machine:
    """This machine as the startd would publish its partitionable slot."""

    cpus: int
    memory_mib: int
    disk_kib: int
    cron: str  # the startd cron's `Attr = value` lines ("" when it could not run)
    offline: str | None  # why the cron says this machine runs no VMs (None: it runs them)
    failed: str | None = None  # why the cron could not run at all (then no slot is carved)

    def base(self) -> dict[str, str | int | float | bool]:
        return {
            "Name": f"slot1@{socket.gethostname()}",
            "SlotID": 1,
            "Arch": "X86_64",
            "OpSys": "LINUX",
            "Cpus": self.cpus,
            "Memory": self.memory_mib,
            "Disk": self.disk_kib,
        }

    def ad(self) -> str:
        return format_updates(self.base()) + self.cron


#: How long `sd run` reuses what the startd cron printed. A startd runs it every
#: STARTD_CRON_SMARTDOMAINS_PERIOD (5 min) and matches jobs against the last output; we keep
#: a minute of it, and only an online one: a node that said it runs no VMs is asked again.
CRON_REUSE_SECONDS = 60.0
#: What the starter sets per job (`starter_env`): not part of what the cron sees of the node.
_PER_JOB = frozenset(
    {
        "_CONDOR_SCRATCH_DIR",
        "_CONDOR_JOB_AD",
        "_CONDOR_MACHINE_AD",
        "_CONDOR_JOB_IWD",
        "TMPDIR",
        "TEMP",
        "TMP",
        "OMP_NUM_THREADS",
    }
)


@dataclass(frozen=True)
class CronCache:
    """Where `sd run` keeps the startd cron's last online output (root's or the user's cache
    folder), and the files whose change makes it stale (the site config, template folders)."""

    path: Path
    inputs: Sequence[Path] = ()
    clock: Callable[[], float] = time.time

    def key(self, hooks_dir: Path, user: SlotUser, env: dict[str, str]) -> str:
        facts = [
            str(hooks_dir.resolve()),
            _stat(hooks_dir / "startd_cron"),
            user.name,
            sorted((k, v) for k, v in env.items() if k not in _PER_JOB),
            [(str(p), _stat(p)) for p in self.inputs],
        ]
        return hashlib.sha256(json.dumps(facts).encode()).hexdigest()

    def recent(self, key: str) -> str | None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data["key"] == key and 0 <= self.clock() - data["at"] <= CRON_REUSE_SECONDS:
                return str(data["stdout"])
        return None

    def store(self, key: str, stdout: str) -> None:
        """Written whole (a temporary file renamed), 0600; a cache that cannot be written is
        only a cron run more next time."""
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=self.path.parent, prefix=".startd-cron-")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    json.dump({"key": key, "at": self.clock(), "stdout": stdout}, out)
                Path(name).replace(self.path)
            finally:
                Path(name).unlink(missing_ok=True)


def _stat(path: Path) -> list[int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return [info.st_mtime_ns, info.st_size]


def this_machine(
    hooks_dir: Path,
    user: SlotUser,
    env: dict[str, str],
    scratch: Path,
    cache: CronCache | None = None,
) -> Machine:
    """This machine's CPUs, memory and the scratch file system's free disk, and what the
    startd cron hook prints here (run once, as the slot user; or, with CACHE, reused from a
    run of the last minute on the same hooks, environment and site files)."""
    key = cache.key(hooks_dir, user, env) if cache is not None else ""
    lines = cache.recent(key) if cache is not None else None
    failed: str | None = None
    if lines is None:
        cron = run_hook(hooks_dir, user, "startd_cron", [], "", env, scratch, timeout=120.0)
        lines = cron.stdout if cron.returncode == 0 else ""
        failed = None if lines else (cron.stderr.strip().splitlines() or ["no output"])[-1]
    offline: str | None = None
    if lines:
        published = parse_attributes(lines)
        if published.get("HasSmartDomains") is not True:
            offline = str(published.get("SmartDomainsOfflineReason") or "the probe failed")
        elif cache is not None:
            cache.store(key, lines)
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return Machine(
        os.cpu_count() or 1,
        pages >> 20,
        shutil.disk_usage(scratch).free >> 10,
        lines,
        offline,
        failed,
    )


def carve_slot(machine: Machine, ad: JobAd) -> str:
    """The dynamic slot's machine ad for job AD, as the startd carves it from MACHINE; a
    HarnessError when it does not fit (no slot of this machine would match the job)."""
    requests, _ = job_resources(ad, machine.ad())
    memory = _quantize(max(requests.memory_mib or 0, 1), MEMORY_QUANTUM_MIB)
    cpus = max(requests.cpus or 1, 1)
    disk = _quantize(max(requests.disk_kib or 0, 1), DISK_QUANTUM_KIB)
    for what, asked, has, unit in (
        ("memory", memory, machine.memory_mib, " MiB"),
        ("CPUs", cpus, machine.cpus, ""),
        ("disk", disk, machine.disk_kib, " KiB"),
    ):
        if asked > has:
            raise HarnessError(
                f"no slot of this machine fits the job: it asks for {asked}{unit} "
                f"of {what} and this machine has {has}{unit}"
            )
    return (
        format_updates({**machine.base(), "Cpus": cpus, "Memory": memory, "Disk": disk})
        + machine.cron
    )


def _quantize(value: int, quantum: int) -> int:
    return -(-value // quantum) * quantum
