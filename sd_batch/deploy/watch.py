"""High availability: a Scheduler's liveness pings, and VMs moved off hosts that stop answering.

SmartFrog's liveness: every `sfLivenessDelay` seconds a parent pings its children, and a child
that misses `sfLivenessFactor` pings in a row has failed. Here the `Watcher` pings each host
running a pool's VMs whose Scheduler has a liveness delay, and each of those VMs:
- a host that misses `sfLivenessFactor` pings has failed: its VMs are placed again by the same
  Scheduler (strategy, constraints, site policy) on its hosts that still answer, and started
  there; each move is recorded in the ledger (`sd status` shows what moved, where, and why);
- a VM found shut off or crashed on a host that answers is started again where it is;
- copies left on a failed host are removed once it answers again (the VM runs elsewhere now),
  so no VM ever runs twice; until then they stay in the ledger for `sd terminate`.
Time and sleep are injected (tenacity-style): tests call `ping()` round by round, never wait.
May import: config, errors, hypervisor, lang, ledger, placement, deploy (engine, pools).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DeployError, SdError
from ..hypervisor.inventory import live_hosts
from ..hypervisor.types import is_remote
from ..placement.place import Placement, place
from ..placement.plan import placement_groups
from ..placement.schedulers import SchedulerSpec
from ..placement.steps import VMPlan, plan
from ..placement.strategies import strategy_named
from .engine import Engine, Progress

if TYPE_CHECKING:
    from ..config.site import SiteConfig
    from ..hypervisor.connections import Connections
    from ..ledger.store import Ledger, Owner, Resource


@dataclass
class Watcher:
    """Watches one pool's scheduled VMs; `ping()` is one round, `run()` rounds forever."""

    engine: Engine
    ledger: Ledger
    owner: Owner
    config: SiteConfig
    connections: Connections
    vms: dict[str, VMPlan]  # domain -> where it runs now
    #: (domain, host URI) of copies left behind on failed hosts, to remove once they answer.
    stale: set[tuple[str, str]] = field(default_factory=set)
    progress: Progress = field(default=lambda _line: None)
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    missed: dict[str, int] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)
    missing: set[str] = field(default_factory=set)

    @property
    def watched(self) -> list[VMPlan]:
        return [
            vm
            for vm in self.vms.values()
            if vm.placement is not None and vm.placement.scheduler.liveness_delay > 0
        ]

    @property
    def delay(self) -> float:
        """Seconds between rounds: the shortest liveness delay among the pool's schedulers."""
        delays = [vm.placement.scheduler.liveness_delay for vm in self.watched if vm.placement]
        return min(delays, default=0.0)

    def run(self, rounds: int | None = None) -> None:
        """Ping every `delay` seconds, ROUNDS times (None: until interrupted)."""
        if not self.watched:
            raise DeployError(
                f"pool {self.owner.owner_id} has no VM to watch",
                hint="give its Scheduler sfLivenessDelay (seconds between pings) above 0",
            )
        done = 0
        while rounds is None or done < rounds:
            began = self.clock()
            if not self.ping():
                return
            done += 1
            if rounds is None or done < rounds:
                self.sleep(max(0.0, self.delay - (self.clock() - began)))

    def ping(self) -> bool:
        """One round: ping hosts and VMs; move, restart and clean up as they answer. False
        once the pool is being terminated (or gone): a watcher must not restart its VMs."""
        from ..ledger.store import OwnerStatus

        owner = self.ledger.owner(self.owner.kind, self.owner.owner_id, self.owner.host_uri)
        if owner is None or owner.status is OwnerStatus.TERMINATING:
            self.progress(f"pool {self.owner.owner_id} is being terminated: watching stops")
            return False
        hosts = sorted({vm.uri for vm in self.watched} | {uri for _d, uri in self.stale})
        for uri in hosts:
            try:
                states = {d.name: d.state for d in self.connections.once(uri).list_domains()}
            except SdError as exc:
                self.connections.forget(uri)  # reconnect next round: it may come back
                self._missed(uri, exc)
                continue
            self.missed[uri] = 0
            if uri in self.failed:
                self.failed.discard(uri)
                self.progress(f"host {uri} answers again")
            self._clean(uri)
            for vm in self.watched:
                if vm.uri == uri:
                    self._check_vm(vm, states.get(vm.domain))
        return True

    def _missed(self, uri: str, exc: SdError) -> None:
        self.missed[uri] = missed = self.missed.get(uri, 0) + 1
        here = [vm for vm in self.watched if vm.uri == uri and vm.placement is not None]
        factor = min(
            (vm.placement.scheduler.liveness_factor for vm in here if vm.placement is not None),
            default=3,
        )
        why = exc.message.removeprefix(f"{uri}: ")
        self.progress(f"host {uri} missed ping {missed} of {factor}: {why}")
        if missed < factor or uri in self.failed:
            return
        self.failed.add(uri)
        delay = min(vm.placement.scheduler.liveness_delay for vm in here if vm.placement)
        reason = f"host {uri} missed {missed} pings in a row ({delay:g} s apart): {why}"
        by_scheduler: dict[SchedulerSpec, list[VMPlan]] = {}
        for vm in here:
            if vm.placement is None:
                raise ValueError(f"{vm.domain} was placed by no Scheduler: it is not watched")
            by_scheduler.setdefault(vm.placement.scheduler, []).append(vm)
        for spec, vms in by_scheduler.items():
            self._move(spec, vms, uri, reason)

    def _move(self, spec: SchedulerSpec, vms: list[VMPlan], uri: str, reason: str) -> None:
        """Place VMS again (without the failed hosts) and start each where it lands.

        Under the site's placing lock, counting the claims of `sd start`s under way, as a
        start does: a move and a start never take the same room. The lock is held until the
        moved VMs run (libvirt then counts them), which is quick: nothing waits for a boot."""
        from .pools import claims_by_host, placing_lock

        groups: dict[str, tuple[str, ...]] = {}
        for vm in self.vms.values():
            if vm.placement is not None and vm.placement.scheduler == spec and vm.uri != uri:
                groups[vm.uri] = (*groups.get(vm.uri, ()), *placement_groups(vm.placement.demand))
        try:
            with placing_lock(self.config):
                claims = claims_by_host(self.ledger.claims())
                hosts, _unreachable = live_hosts(
                    spec.hosts,
                    self.config,
                    self.connections,
                    skip={uri, *self.failed},
                    groups=groups,
                    claims=claims,
                )
                demands = [vm.placement.demand for vm in vms if vm.placement is not None]
                placement = place(
                    hosts,
                    demands,
                    strategy_named(spec.strategy, spec.weights),
                    spec.policy(self.config.placement),
                    seed=spec.seed,
                )
                self._start_moved(vms, placement, {h.name: h.uri for h in hosts}, uri, reason)
        except SdError as exc:  # the lock stayed busy: the next missed ping tries again
            self.failed.discard(uri)
            self.progress(f"could not move the VMs off {uri} yet: {exc}")

    def _start_moved(
        self,
        vms: list[VMPlan],
        placement: Placement,
        uri_of: Mapping[str, str],
        uri: str,
        reason: str,
    ) -> None:
        why_not = {name: u.reason for u in placement.unplaced for name in u.names}
        for vm in vms:
            host = placement.host_of(vm.domain)
            if host is None:
                self._record(vm, uri, None, f"{reason}; not restarted: {why_not[vm.domain]}")
                continue
            moved = dataclasses.replace(vm, uri=uri_of[host])
            try:
                self.engine.deploy_vm(self.owner, moved)
                self.connections(moved.uri).start(moved.domain)
            except SdError as exc:
                self._record(vm, uri, None, f"{reason}; could not start on {moved.uri}: {exc}")
                continue
            self.vms[vm.domain] = moved
            self.stale.add((vm.domain, uri))
            self._record(vm, uri, moved.uri, reason)

    def _record(self, vm: VMPlan, from_uri: str, to_uri: str | None, reason: str) -> None:
        self.ledger.record_move(self.owner, vm.domain, from_uri, to_uri, reason)
        if to_uri is None:
            self.progress(f"could not move {vm.domain} off {from_uri}: {reason}")
        else:
            self.progress(f"moved {vm.domain} from {from_uri} to {to_uri}: {reason}")

    def _check_vm(self, vm: VMPlan, state: object) -> None:
        from ..hypervisor.connection import DomainState

        if state is None:
            if vm.domain not in self.missing:
                self.missing.add(vm.domain)
                self.progress(f"{vm.domain} is gone from {vm.uri} (undefined by hand?)")
            return
        self.missing.discard(vm.domain)
        if isinstance(state, DomainState) and state.is_off:
            try:
                self.connections(vm.uri).start(vm.domain)
                self.progress(f"restarted {vm.domain} on {vm.uri}: it was {state.name.lower()}")
            except SdError as exc:
                self.progress(f"{vm.domain} on {vm.uri} is {state.name.lower()}; restart: {exc}")

    def _clean(self, uri: str) -> None:
        """Remove the copies left on URI by VMs that now run elsewhere."""
        leaving = {domain for domain, where in self.stale if where == uri}
        if not leaving:
            return
        names = _resource_names({d: self.vms[d] for d in leaving}, self.engine, uri)

        def left_here(resource: Resource) -> bool:
            return resource.host_uri == uri and resource.name in names

        try:
            removed = self.engine.teardown(self.owner, graceful=False, only=left_here)
        except SdError as exc:
            self.progress(f"could not yet remove the old copies on {uri}: {exc}")
            return
        self.stale -= {(d, uri) for d in leaving}
        self.progress(f"removed the old copies on {uri} of {', '.join(sorted(leaving))}: {removed}")


def _resource_names(vms: Mapping[str, VMPlan], engine: Engine, uri: str) -> set[str]:
    """The ledger names of an old copy on URI: its domain and overlays, and its console log
    where URI is a host of its own. A local URI's log path is on this machine, where the new
    copy writes the same path (that row goes with `sd terminate`)."""
    names = set()
    for domain, vm in vms.items():
        names.add(domain)
        for disk in vm.spec.disks:
            names.add(str(engine.paths.overlay_dir / f"{domain}-{disk.name}.{disk.format.value}"))
        if is_remote(uri) and engine.paths.console_dir is not None:
            names.add(str(engine.paths.console_dir / f"{domain}.log"))
    return names


def watch_pool(
    config: SiteConfig,
    host: str,
    name: str,
    *,
    include_dirs: tuple[Path, ...] = (),
    properties: Mapping[str, str] | None = None,
    connections: Connections | None = None,
    progress: Progress = lambda _line: None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    rounds: int | None = None,
) -> Watcher:
    """Watch pool NAME (`sd watch HOST NAME`): its description, read again, says which VMs
    and schedulers; the ledger says where each VM runs now (its newest domain record)."""
    from ..hypervisor.connections import SHARED_CONNECTIONS
    from ..lang import load_file
    from ..ledger.store import Ledger, OwnerKind, ResourceKind
    from .pools import site_paths

    connections = connections or SHARED_CONNECTIONS
    uri = config.uri_for(host)
    with Ledger.for_site(config) as ledger:
        owner = ledger.owner(OwnerKind.POOL, name, uri)
        if owner is None:
            raise DeployError(f"no pool named {name} on {uri}", hint="sd status lists the pools")
        props = {**config.properties, **(properties or {})}
        description = load_file(
            owner.description,
            include_dirs=[*include_dirs, *config.include_dirs, *config.template_dirs],
            properties=props,
        )
        where: dict[str, str] = {}
        stale: set[tuple[str, str]] = set()
        for resource in ledger.resources(owner):  # newest first: the first is where it runs
            if resource.kind is ResourceKind.DOMAIN:
                if resource.name in where:
                    stale.add((resource.name, resource.host_uri))
                else:
                    where[resource.name] = resource.host_uri
        vms = {
            vm.domain: dataclasses.replace(vm, uri=where[vm.domain])
            for vm in plan(description, name, uri).vms()
            if vm.domain in where
        }
        engine = Engine(ledger, connections, site_paths(config), progress)
        watcher = Watcher(
            engine,
            ledger,
            owner,
            config,
            connections,
            vms,
            stale,
            progress=progress,
            clock=clock,
            sleep=sleep,
        )
        watcher.run(rounds)
    return watcher
