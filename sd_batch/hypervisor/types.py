"""What sd-batch knows of a host, as values: domain states, owners, capacity, load, and the
`HypervisorAPI` protocol the deploy engine and the hooks program against.

Pure: no libvirt here (`connection.py` is its only importer), so planning, the reaper and their
tests use these types without libvirt-python. May import: errors, the standard library.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

DAEMON_HINT = "is libvirtd running on that host? scripts/setup-host starts it"
MIB = 1024 * 1024


class DomainState(enum.Enum):
    """libvirt's virDomainState, by name."""

    NOSTATE = 0
    RUNNING = 1
    BLOCKED = 2
    PAUSED = 3
    SHUTDOWN = 4  # shutting down: still running
    SHUTOFF = 5
    CRASHED = 6
    PMSUSPENDED = 7

    @property
    def is_off(self) -> bool:
        """No guest code runs any more: the job is over, one way or another."""
        return self in (DomainState.SHUTOFF, DomainState.CRASHED)


# virDomainShutoffReason, by index: tells a clean poweroff from a crash or a kill.
SHUTOFF_REASONS = (
    "unknown",
    "shutdown",
    "destroyed",
    "crashed",
    "migrated",
    "saved",
    "failed",
    "from-snapshot",
    "daemon",
)
# virDomainPausedReason, by index: "ioerror" is a host disk that refused a write (full, failing).
PAUSED_REASONS = (
    "unknown",
    "user",
    "migration",
    "save",
    "dump",
    "ioerror",
    "watchdog",
    "from-snapshot",
    "shutdown",
    "snapshot",
    "api-error",
    "starting-up",
    "postcopy",
    "postcopy-failed",
)


@dataclass(frozen=True, slots=True)
class DomainStatus:
    """A domain's state and, when off or paused, why (`shutdown`, `destroyed`, `ioerror`...)."""

    state: DomainState
    reason: str = ""


@dataclass(frozen=True, slots=True)
class DomainOwner:
    """Who created a domain, read back from our `<metadata><sd:owner kind= id=/>` as written.

    `kind` stays a string (`job`, `pool`): a kind this version does not know is still shown.
    """

    kind: str
    id: str


@dataclass(frozen=True, slots=True)
class DomainInfo:
    """One domain on a host; `owner` is None for domains sd-batch did not create."""

    name: str
    state: DomainState
    owner: DomainOwner | None


@dataclass(frozen=True, slots=True)
class HostCapacity:
    """What placement needs to know about a host. `free_memory_mib` is None where unknown."""

    uri: str
    hypervisor: str  # libvirt driver type: QEMU, Xen, TEST
    arch: str
    cpus: int
    memory_mib: int
    free_memory_mib: int | None
    domain_types: tuple[str, ...]  # <domain type=...> values the host advertises


@dataclass(frozen=True, slots=True)
class HostLoad:
    """What already runs on a host: its active domains and the memory and vCPUs they hold."""

    domains: int
    memory_mib: int
    vcpus: int


@dataclass(frozen=True, slots=True)
class HostFile:
    """A file on a hypervisor host, as that host's libvirt sees it (a volume of a dir pool)."""

    path: str
    size_bytes: int  # its virtual size (a qcow2 image's disk size)
    format: str  # libvirt's reading of it: "qcow2", "raw", ...


def is_remote(uri: str) -> bool:
    """Whether URI names a host of its own (`qemu+tcp://node01/system`): its files (images,
    overlays, console logs) are reached through that host's libvirt only, never opened here.
    Local URIs (`qemu:///system`, `test:///...`) share this machine's files."""
    try:
        return bool(urlsplit(uri).hostname)
    except ValueError:
        return False


class HypervisorAPI(Protocol):
    """What the deploy engine and the job hooks need from a host; fakes implement this."""

    @property
    def uri(self) -> str: ...
    def define(self, xml: str) -> str: ...
    def start(self, name: str, *, paused: bool = ...) -> None: ...
    def start_or_resume(self, name: str) -> None: ...
    def attach_disks(self, name: str, disks: Sequence[str]) -> None: ...
    def shutdown(self, name: str) -> None: ...
    def destroy(self, name: str) -> None: ...
    def undefine(self, name: str) -> None: ...
    def state(self, name: str) -> DomainStatus: ...
    def wait_shutoff(self, name: str, timeout: float) -> DomainStatus: ...
    def list_domains(self) -> tuple[DomainInfo, ...]: ...
    def create_overlay(
        self,
        pool_or_dir: str | Path,
        name: str,
        backing_path: str | Path,
        capacity_bytes: int = ...,
        backing_format: str = ...,
    ) -> str: ...
    def create_blank(
        self, pool_or_dir: str | Path, name: str, capacity_bytes: int, format: str = ...
    ) -> str: ...
    def volume_path(self, pool_or_dir: str | Path, name: str) -> str: ...
    def image_capacity(self, path: str | Path) -> int: ...
    def delete_volume(self, path: str | Path) -> None: ...
    def host_file(self, path: str | Path) -> HostFile | None: ...
    def ensure_folder(self, folder: str | Path) -> None: ...
    def upload_file(self, target: str | Path, source: Path) -> None: ...
    def read_file(
        self, path: str | Path, sink: Callable[[bytes], object], limit: int | None = ...
    ) -> bool: ...
    def host_capacity(self) -> HostCapacity: ...
    def host_load(self) -> HostLoad: ...
    def close(self) -> None: ...
    def is_alive(self) -> bool: ...
