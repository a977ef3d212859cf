"""Hosts for placement: from an inventory file (hosts on paper), or read from live hypervisors.

An inventory is TOML, so admins can try strategies on a site that does not exist yet:

    [[host]]
    name = "rack1-{n:02}"    # with count: rack1-01 ... rack1-40
    count = 40
    uri = "qemu+ssh://rack1-{n:02}/system"   # default: the name
    memory = "256G"          # a number of MiB, or a size: "512M", "256G", "1T"
    vcpus = 64
    disk = "2T"              # optional: when absent, disk is not counted on the host
    tags = ["ssd"]
    used_memory = "16G"      # optional: what already runs there (used_vcpus, used_disk, vms)

A Scheduler's `hosts` entries are names, URIs, or globs of names (`"rack1-*"`), matched
against the inventory, or against the site config's [hosts] for live hosts. A live host's
load is what libvirt runs there, plus the claims (the ledger's, handed in by the caller) of
VMs placed there by starts still under way that libvirt does not show active yet.
May import: errors, config, placement, vm.spec (sizes), hypervisor (types, through connect),
ledger.types (Claim).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, SdError
from ..placement.hosts import HostState
from ..vm.spec import parse_size_bytes

if TYPE_CHECKING:
    from ..config.site import SiteConfig
    from ..ledger.types import Claim
    from .connection import HypervisorAPI

_KEYS = (
    "name",
    "count",
    "uri",
    "memory",
    "vcpus",
    "disk",
    "tags",
    "used_memory",
    "used_vcpus",
    "used_disk",
    "vms",
)
GLOB = frozenset("*?[")
#: Hosts read at the same time by `live_hosts` (each a thread with its libvirt calls).
MAX_PARALLEL_READS = 16


@dataclass(frozen=True, slots=True)
class Unreachable:
    """A host that did not answer when its capacity was read: placement goes without it."""

    name: str
    uri: str
    reason: str


def parse_inventory(data: Mapping[str, Any], origin: str = "<inventory>") -> tuple[HostState, ...]:
    """Hosts from a parsed inventory; every mistake names the host entry and the key."""
    unknown = sorted(set(data) - {"host"})
    if unknown:
        raise ConfigError(f"{origin}: unknown table {unknown[0]!r}", hint="write [[host]] entries")
    entries = data.get("host", [])
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{origin}: no hosts", hint="write one [[host]] table per host (or kind)")
    hosts: list[HostState] = []
    for number, entry in enumerate(entries, 1):
        where = f"{origin}: host entry {number}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} is not a table")
        bad = sorted(set(entry) - set(_KEYS))
        if bad:
            raise ConfigError(f"{where}: unknown key {bad[0]!r}", hint=f"keys: {', '.join(_KEYS)}")
        count = _whole(entry, "count", where, default=1, least=1)
        for n in range(1, count + 1):
            hosts.append(_host(entry, where, n if "count" in entry else None))
    names = [h.name for h in hosts]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(
            f"{origin}: two hosts are named {dupes[0]!r}",
            hint='with count, put {n} in the name: name = "node-{n:03}"',
        )
    return tuple(hosts)


def load_inventory(path: Path) -> tuple[HostState, ...]:
    import tomllib

    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"inventory {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_inventory(data, str(path))


def _host(entry: Mapping[str, Any], where: str, n: int | None) -> HostState:
    def text(key: str, default: str | None = None) -> str:
        value = entry.get(key, default)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: {key} must be a non-empty string")
        try:
            return value.format(n=n) if n is not None else value
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"{where}: {key} {value!r}: only {{n}} may be filled in") from exc

    name = text("name")
    if n is not None and name == entry["name"]:
        raise ConfigError(f"{where}: count needs {{n}} in the name, or every host has one name")
    tags = entry.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ConfigError(f"{where}: tags must be a list of strings")
    disk = _mib(entry, "disk", where, required=False)
    return HostState(
        name=name,
        uri=text("uri", entry["name"]),
        memory_mib=_mib(entry, "memory", where) or 0,
        vcpus=_whole(entry, "vcpus", where, default=None, least=1),
        disk_mib=disk,
        tags=frozenset(tags),
        used_memory_mib=_mib(entry, "used_memory", where, required=False) or 0,
        used_vcpus=_whole(entry, "used_vcpus", where, default=0, least=0),
        used_disk_mib=_mib(entry, "used_disk", where, required=False) or 0,
        vms=_whole(entry, "vms", where, default=0, least=0),
    )


def _mib(entry: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> int | None:
    if key not in entry:
        if required:
            raise ConfigError(f"{where}: {key} is missing", hint=f'write {key} = "64G"')
        return None
    size = parse_size_bytes(entry[key])
    if size is None:
        raise ConfigError(
            f"{where}: {key} = {entry[key]!r} is not a size",
            hint='a number of MiB, or "512M", "64G", "2T"',
        )
    return size >> 20


def _whole(
    entry: Mapping[str, Any], key: str, where: str, *, default: int | None, least: int
) -> int:
    value = entry.get(key, default)
    if value is None:
        raise ConfigError(f"{where}: {key} is missing")
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"{where}: {key} must be a whole number >= {least}")
    return value


# -- choosing a scheduler's hosts ---------------------------------------------------------------
def select(written: Iterable[str], hosts: Sequence[HostState], origin: str) -> list[HostState]:
    """The hosts a Scheduler names, in its order: by name, by URI, or by glob of names."""
    chosen: dict[str, HostState] = {}
    for entry in written:
        if GLOB & set(entry):
            found = [h for h in hosts if fnmatch.fnmatchcase(h.name, entry)]
        else:
            found = [h for h in hosts if entry in (h.name, h.uri)]
        if not found:
            names = ", ".join(h.name for h in hosts[:8]) + (", ..." if len(hosts) > 8 else "")
            raise ConfigError(f"no host {entry!r} in {origin}", hint=f"hosts there: {names}")
        for host in found:
            chosen.setdefault(host.uri, host)
    return list(chosen.values())


def site_host_names(written: Iterable[str], config: SiteConfig) -> list[tuple[str, str]]:
    """(name, URI) for a Scheduler's hosts on a live site: site host names, globs of them,
    `localhost` (the site's default URI) or URIs; each URI once."""
    chosen: dict[str, str] = {}
    for entry in written:
        if GLOB & set(entry) and "://" not in entry:
            found = sorted(n for n in config.hosts if fnmatch.fnmatchcase(n, entry))
            if not found:
                raise ConfigError(
                    f"no site host matches {entry!r}",
                    hint="hosts are named in the site config [hosts]",
                )
            for name in found:
                chosen.setdefault(config.hosts[name], name)
        else:
            chosen.setdefault(config.uri_for(entry), entry)
    return [(name, uri) for uri, name in chosen.items()]


def live_host(
    name: str,
    uri: str,
    hv: HypervisorAPI,
    config: SiteConfig,
    groups: tuple[str, ...] = (),
    claims: Sequence[Claim] = (),
) -> HostState:
    """A host as its hypervisor reports it: CPUs and memory, and the active domains' load (or
    the memory in use by everything there, from the host's free memory, when that is more),
    plus the CLAIMS on it whose VM is not active yet (placed, not yet running)."""
    capacity = hv.host_capacity()
    pending: list[Claim] = []
    if claims:  # read before the load: a VM starting in between counts twice, never not at all
        active = {d.name for d in hv.list_domains() if not d.state.is_off}
        pending = [c for c in claims if c.domain not in active]
    load = hv.host_load()
    tags = config.host_tags.get(name) or config.host_tags.get(uri) or frozenset()
    used_memory = load.memory_mib  # what its domains may take, at most
    if capacity.free_memory_mib is not None:  # or what the host has in use, if more (other
        used_memory = max(used_memory, capacity.memory_mib - capacity.free_memory_mib)  # work)
    return HostState(
        name=name,
        uri=uri,
        memory_mib=capacity.memory_mib,
        vcpus=capacity.cpus,
        tags=tags,
        used_memory_mib=used_memory + sum(c.memory_mib for c in pending),
        used_vcpus=load.vcpus + sum(c.vcpus for c in pending),
        vms=load.domains + len(pending),
        groups=groups,
    )


def live_hosts(
    written: Iterable[str],
    config: SiteConfig,
    connect: Callable[[str], HypervisorAPI],
    *,
    skip: Iterable[str] = (),
    groups: Mapping[str, tuple[str, ...]] | None = None,
    claims: Mapping[str, Sequence[Claim]] | None = None,
) -> tuple[list[HostState], list[Unreachable]]:
    """A Scheduler's hosts, read live (with CLAIMS, by host URI, counted as load), at the same
    time (a host that does not answer costs its connection retries once, not once per host
    before it). A host that does not answer is left out and reported: one host down must not
    stop a site from placing on the others. CONNECT must be thread-safe
    (`connections.Connections`)."""
    skipped = set(skip)
    entries = [(n, u) for n, u in site_host_names(written, config) if u not in skipped]

    def read(entry: tuple[str, str]) -> HostState | Unreachable:
        name, uri = entry
        try:
            return live_host(
                name,
                uri,
                connect(uri),
                config,
                (groups or {}).get(uri, ()),
                (claims or {}).get(uri, ()),
            )
        except SdError as exc:
            return Unreachable(name, uri, exc.message)

    if len(entries) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_READS, len(entries))) as pool:
            read_all = list(pool.map(read, entries))
    else:
        read_all = [read(entry) for entry in entries]
    hosts = [r for r in read_all if isinstance(r, HostState)]
    return hosts, [r for r in read_all if isinstance(r, Unreachable)]
