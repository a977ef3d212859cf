"""Pools on and off: `sd start HOST NAME FILE`, `sd terminate HOST NAME`, `sd status [NAME]`.

The seed's promise ("Users submit a description to launch the pool of VMs", `sfStart localhost
pool virtualPoolDesc.sf`). A pool is a ledger owner named NAME on a host URI; its VMs and disks
are ledger resources. Starting a pool that exists is an error; one that a crashed run left
half-made is cleaned up first. A description with a Scheduler has its VMs placed first (on
the hosts its Scheduler names, their capacity and load read live) and each VM created on its
own host; the pool is still one owner, registered on HOST, and its rollback and teardown reach
every host.
Starts run at once safely (processes, and `sd web`'s threads): placing holds the site's
placing lock (`placing_lock`) from reading the hosts' load until the placed VMs are claimed in
the ledger, and placement counts the claims of other starts still under way as load.
May import: config, errors, hypervisor, lang, ledger, placement, deploy.engine.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config.site import SiteConfig
from ..errors import DeployError, DomainNotFound, LedgerError, SdError, UsageError
from ..hypervisor.connections import SHARED_CONNECTIONS, Connections
from ..lang import load_file
from ..placement.steps import Step, plan
from .engine import Engine, Progress, SitePaths

if TYPE_CHECKING:
    from ..hypervisor.inventory import Unreachable
    from ..ledger.store import Claim, Ledger, Owner
    from ..placement.hosts import HostState
    from ..placement.place import Demand, Placement
    from ..placement.schedulers import SchedulerSpec

POOL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")
#: The site's placing lock, next to the ledger in the state folder.
PLACING_LOCK = "placing.lock"
#: How long a start waits for another one to finish placing (reading hosts, claiming room).
PLACING_WAIT_SECONDS = 60.0


def site_paths(config: SiteConfig) -> SitePaths:
    return SitePaths(
        image_dir=config.image_dir,
        overlay_dir=config.state_dir / "overlays",
        console_dir=config.state_dir / "consoles",
    )


def _engine(
    config: SiteConfig, ledger: Ledger, connections: Connections, progress: Progress
) -> Engine:
    return Engine(ledger, connections, site_paths(config), progress)


def check_pool_name(name: str) -> str:
    if not POOL_NAME.fullmatch(name):
        raise UsageError(
            f"{name!r} is not a pool name",
            hint="use letters, digits, '.', '_' and '-': at most 40, first a letter or digit",
        )
    return name


@dataclass(frozen=True, slots=True)
class StartResult:
    name: str
    uri: str
    domains: tuple[str, ...]
    #: (domain, host URI) of each VM a Scheduler placed.
    placed: tuple[tuple[str, str], ...] = ()


@contextlib.contextmanager
def placing_lock(config: SiteConfig, *, wait: float | None = None) -> Iterator[None]:
    """Hold the site's placing lock (an exclusive flock: one holder among processes and
    threads alike); give up with a clear error after WAIT seconds (default
    PLACING_WAIT_SECONDS) of another start holding it."""
    wait = PLACING_WAIT_SECONDS if wait is None else wait
    path = config.state_dir / PLACING_LOCK
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise DeployError(
            f"cannot open the placing lock {path}: {exc.strerror}",
            hint="check the state folder (state_dir in the site config) is writable by this user",
        ) from exc
    try:
        deadline, pause = time.monotonic() + wait, 0.005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise DeployError(
                        f"another sd start has been placing VMs on this site for more than "
                        f"{wait:g} s (it holds {path}); nothing was started",
                        hint="it may wait on a host that does not answer: try again later",
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, 0.1)
        yield
    finally:
        os.close(fd)  # releases the lock


def claims_of(step: Step) -> list[Claim]:
    """The room each VM of STEP takes on its host, as libvirt will count it once it runs."""
    from ..ledger.store import Claim

    return [Claim(vm.domain, vm.uri, vm.spec.memory_mib, vm.spec.vcpus) for vm in step.vms()]


def place_plan(
    step: Step,
    config: SiteConfig,
    connections: Connections,
    progress: Progress,
    claims: Sequence[Claim] = (),
) -> Step:
    """STEP with each scheduled VM on the host its Scheduler chose, from the hosts' live
    capacity and load, and the CLAIMS of other starts counted as load; hosts that do not
    answer are left out (and said so)."""
    from ..hypervisor.inventory import live_hosts
    from ..placement.plan import schedule

    if all(vm.placement is None for vm in step.vms()):
        return step
    by_uri = claims_by_host(claims)

    def hosts_for(spec: SchedulerSpec) -> list[HostState]:
        hosts, unreachable = live_hosts(spec.hosts, config, connections, claims=by_uri)
        for host in unreachable:
            progress(f"{spec.path}: left out host {host.name}: {host.reason}")
        return hosts

    scheduled = schedule(step, hosts_for, config.placement).require()
    for spec, placement in scheduled.placements:
        count = len(placement.assignment)
        progress(
            f"{spec.path} ({spec.strategy}) placed {count} VM{'s' * (count != 1)} on "
            f"{placement.hosts_used()} of {len(placement.hosts)} hosts"
        )
    return scheduled.step


def claims_by_host(claims: Sequence[Claim]) -> dict[str, list[Claim]]:
    """CLAIMS grouped by host URI, as `inventory.live_hosts` takes them."""
    by_uri: dict[str, list[Claim]] = {}
    for claim in claims:
        by_uri.setdefault(claim.host_uri, []).append(claim)
    return by_uri


def _site_claims(config: SiteConfig) -> Sequence[Claim]:
    """The claims of starts under way, for a plan: none where the ledger cannot be read (a
    plan is advice; `sd start` reads them under the placing lock, and fails if it cannot)."""
    from ..ledger.store import Ledger, default_path

    if not default_path(config).exists():
        return ()
    try:
        with Ledger.for_site(config) as ledger:
            return ledger.claims()
    except LedgerError:
        return ()


def start_pool(
    config: SiteConfig,
    host: str,
    name: str,
    file: Path,
    *,
    include_dirs: Sequence[Path] = (),
    properties: Mapping[str, str] | None = None,
    connections: Connections = SHARED_CONNECTIONS,
    progress: Progress = lambda _line: None,
) -> StartResult:
    """Resolve FILE, then create and start its VMs on HOST as pool NAME (all or nothing)."""
    from ..errors import OwnerExists
    from ..ledger.store import Ledger, OwnerKind, OwnerStatus

    check_pool_name(name)
    uri = config.uri_for(host)
    props = dict(config.properties)
    props.update(properties or {})
    description = load_file(
        file,
        include_dirs=[*include_dirs, *config.include_dirs, *config.template_dirs],
        properties=props,
    )
    step = plan(description, name, uri)
    with Ledger.for_site(config) as ledger:
        engine = _engine(config, ledger, connections, progress)
        existing = ledger.owner(OwnerKind.POOL, name, uri)
        if existing is not None:
            if existing.status is OwnerStatus.ACTIVE or _alive(existing):
                raise DeployError(
                    f"pool {name} already exists on {uri} (started from {existing.description})",
                    hint=f"sd terminate {host} {name} first, or choose another name",
                )
            progress(f"cleaning up what an interrupted run of pool {name} left")
            engine.teardown(existing, graceful=False)
        held: list[str] = []  # said once the lock is free: a slow reader must not hold it
        try:
            with placing_lock(config):  # read load, place, claim: one start at a time
                step = place_plan(step, config, connections, held.append, ledger.claims())
                try:
                    owner = ledger.register_owner(
                        OwnerKind.POOL, name, uri, description=str(file), new_only=True
                    )
                except OwnerExists:
                    raise DeployError(
                        f"pool {name} already exists on {uri} (another `sd start` is creating it)",
                        hint=f"wait for it, or sd terminate {host} {name}",
                    ) from None
                ledger.record_claims(owner, claims_of(step))
        finally:
            for line in held:
                progress(line)
        vms = tuple(vm.domain for vm in step.vms())
        progress(f"starting pool {name} on {uri}: {len(vms)} VM{'s' * (len(vms) != 1)}")
        try:
            engine.start(owner, step)
            ledger.set_status(owner, OwnerStatus.ACTIVE, pid=None)
        finally:
            ledger.drop_claims(owner)  # its VMs run (libvirt counts them), or are gone
    placed = tuple((vm.domain, vm.uri) for vm in step.vms() if vm.placement is not None)
    return StartResult(name, uri, vms, placed)


@dataclass(frozen=True, slots=True)
class DryRun:
    """`sd plan`: where each scheduled VM would go, what hosts keep, what fits nowhere."""

    placements: tuple[tuple[SchedulerSpec, Placement], ...]
    demands: Mapping[str, Demand]  # domain -> what it needs
    unscheduled: tuple[str, ...]  # VMs no Scheduler places: they go to sd start's HOST
    unreachable: tuple[Unreachable, ...] = ()

    @property
    def complete(self) -> bool:
        return all(p.complete for _s, p in self.placements)


def plan_pool(
    config: SiteConfig,
    file: Path,
    *,
    name: str = "plan",
    inventory: Path | None = None,
    include_dirs: Sequence[Path] = (),
    properties: Mapping[str, str] | None = None,
    connections: Connections = SHARED_CONNECTIONS,
) -> DryRun:
    """Place FILE's VMs as `sd start` would, creating nothing: on the hosts of INVENTORY
    (a TOML file of hosts on paper), or on the site's live hosts (with other starts' claims)."""
    from ..hypervisor.inventory import live_hosts, load_inventory, select
    from ..placement.plan import schedule

    check_pool_name(name)
    props = {**config.properties, **(properties or {})}
    description = load_file(
        file,
        include_dirs=[*include_dirs, *config.include_dirs, *config.template_dirs],
        properties=props,
    )
    step = plan(description, name, config.default_uri)
    paper = load_inventory(inventory) if inventory is not None else None
    unreachable: list[Unreachable] = []
    claims = claims_by_host(_site_claims(config)) if paper is None else {}

    def hosts_for(spec: SchedulerSpec) -> list[HostState]:
        if paper is not None:
            return select(spec.hosts, paper, str(inventory))
        hosts, missing = live_hosts(spec.hosts, config, connections, claims=claims)
        unreachable.extend(missing)
        return hosts

    scheduled = schedule(step, hosts_for, config.placement)
    return DryRun(
        scheduled.placements,
        {vm.domain: vm.placement.demand for vm in step.vms() if vm.placement is not None},
        tuple(vm.domain for vm in step.vms() if vm.placement is None),
        tuple(unreachable),
    )


def _alive(owner: Owner) -> bool:
    return owner.process is not None and owner.process.is_alive()


def terminate_pool(
    config: SiteConfig,
    host: str,
    name: str,
    *,
    grace_seconds: float = 10.0,
    connections: Connections = SHARED_CONNECTIONS,
    progress: Progress = lambda _line: None,
) -> str:
    """Shut pool NAME down (ACPI, then destroy after GRACE_SECONDS) and remove all it had."""
    from ..ledger.store import Ledger, OwnerKind, OwnerStatus

    uri = config.uri_for(host)
    with Ledger.for_site(config) as ledger:
        owner = ledger.owner(OwnerKind.POOL, name, uri)
        if owner is None:
            known = sorted(
                f"{o.owner_id} on {o.host_uri}" for o in ledger.owners() if o.kind is OwnerKind.POOL
            )
            raise DeployError(
                f"no pool named {name} on {uri}",
                hint=f"pools: {', '.join(known)}" if known else "no pools are running (sd status)",
            )
        owner = ledger.set_status(owner, OwnerStatus.TERMINATING)
        engine = _engine(config, ledger, connections, progress)
        return engine.teardown(owner, graceful=grace_seconds > 0, grace_seconds=grace_seconds)


@dataclass(frozen=True, slots=True)
class VMStatus:
    name: str
    uri: str
    state: str


@dataclass(frozen=True, slots=True)
class OwnerReport:
    kind: str
    name: str
    uri: str
    status: str
    description: str
    interrupted: bool
    vms: tuple[VMStatus, ...]
    volumes: tuple[str, ...]
    files: tuple[str, ...] = ()
    #: VMs high availability moved off failed hosts (ledger.Move), oldest first.
    moves: tuple[Any, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        data = {
            "kind": self.kind,
            "name": self.name,
            "uri": self.uri,
            "status": self.status,
            "description": self.description,
            "interrupted": self.interrupted,
            "vms": [{"name": v.name, "uri": v.uri, "state": v.state} for v in self.vms],
            "volumes": list(self.volumes),
            "files": list(self.files),
        }
        if self.moves:  # only pools a watcher moved VMs of have the key
            data["moves"] = [
                {"vm": m.domain, "from": m.from_uri, "to": m.to_uri, "reason": m.reason, "at": m.at}
                for m in self.moves
            ]
        return data


def status(
    config: SiteConfig, name: str | None = None, *, connections: Connections = SHARED_CONNECTIONS
) -> list[OwnerReport]:
    """Every pool and job the ledger knows (or just NAME), with each VM's live state."""
    from ..ledger.store import Ledger, ResourceKind

    reports = []
    down: dict[str, str] = {}  # a host that does not answer is asked once, not once per VM
    with Ledger.for_site(config) as ledger:
        left = {o.row_id for o in ledger.leftovers().owners}
        for owner in ledger.owners():
            if name is not None and owner.owner_id != name:
                continue
            vms, volumes, files = [], [], []
            for resource in reversed(ledger.resources(owner)):
                if resource.kind is ResourceKind.DOMAIN:
                    vms.append(
                        VMStatus(
                            resource.name,
                            resource.host_uri,
                            _live_state(connections, resource.host_uri, resource.name, down),
                        )
                    )
                elif resource.kind is ResourceKind.VOLUME:
                    volumes.append(resource.name)
                else:
                    files.append(resource.name)
            reports.append(
                OwnerReport(
                    owner.kind.value,
                    owner.owner_id,
                    owner.host_uri,
                    owner.status.value,
                    owner.description,
                    owner.row_id in left,
                    tuple(vms),
                    tuple(volumes),
                    tuple(files),
                    ledger.moves(owner),
                )
            )
    if name is not None and not reports:
        raise DeployError(f"no pool or job named {name}", hint="sd status lists them all")
    return reports


def _live_state(connections: Connections, uri: str, domain: str, down: dict[str, str]) -> str:
    if uri not in down:
        try:
            hv = connections(uri)
        except SdError as exc:
            down[uri] = f"unknown: {exc.message}"
    if uri in down:
        return down[uri]
    try:
        return hv.state(domain).state.name.lower()
    except DomainNotFound:
        return "missing"
    except SdError as exc:
        return f"unknown: {exc.message}"
