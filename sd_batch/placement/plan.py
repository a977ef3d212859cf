"""Scheduling a plan: each scheduled VM of a `Step` tree placed by its Scheduler, and the tree
rewritten so that each VM carries the URI of the host placement chose for it.

Pure: the hosts' states come in as data, through the caller's `hosts_for`.
May import: errors, placement (place, strategies, schedulers, steps), the standard library.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from .hosts import HostState
from .place import STRICT, Demand, Placement, Policy, place
from .schedulers import SchedulerSpec
from .steps import Step
from .strategies import strategy_named

HostsFor = Callable[[SchedulerSpec], Sequence[HostState]]


@dataclass(frozen=True, slots=True)
class ScheduledPlan:
    """A plan with every scheduled VM on its host, and each scheduler's placement."""

    step: Step
    placements: tuple[tuple[SchedulerSpec, Placement], ...]

    def require(self) -> ScheduledPlan:
        for _spec, placement in self.placements:
            placement.require()
        return self


def schedulers(step: Step) -> Iterator[SchedulerSpec]:
    """The schedulers a plan uses, in the order their first VM starts."""
    seen: set[SchedulerSpec] = set()
    for vm in step.vms():
        if vm.placement is not None and vm.placement.scheduler not in seen:
            seen.add(vm.placement.scheduler)
            yield vm.placement.scheduler


def schedule(step: Step, hosts_for: HostsFor, site: Policy = STRICT) -> ScheduledPlan:
    """Place every scheduled VM of STEP and put its host's URI on it. Schedulers run in turn;
    each sees what the ones before it placed on hosts they share (by URI)."""
    placed: dict[str, list[Demand]] = {}  # uri -> demands placed by earlier schedulers
    uris: dict[str, str] = {}
    results = []
    for spec in schedulers(step):
        hosts = [_with_load(h, placed.get(h.uri, ())) for h in hosts_for(spec)]
        by_name = {h.name: h for h in hosts}
        demands = [
            vm.placement.demand
            for vm in step.vms()
            if vm.placement is not None and vm.placement.scheduler == spec
        ]
        strategy = strategy_named(spec.strategy, spec.weights)
        placement = place(hosts, demands, strategy, spec.policy(site), seed=spec.seed)
        for demand in demands:
            host = placement.host_of(demand.name)
            if host is not None:
                uris[demand.name] = by_name[host].uri
                placed.setdefault(by_name[host].uri, []).append(demand)
        results.append((spec, placement))
    return ScheduledPlan(_rewrite(step, uris), tuple(results))


def _with_load(host: HostState, demands: Sequence[Demand]) -> HostState:
    if not demands:
        return host
    return dataclasses.replace(
        host,
        used_memory_mib=host.used_memory_mib + sum(d.memory_mib for d in demands),
        used_vcpus=host.used_vcpus + sum(d.vcpus for d in demands),
        used_disk_mib=host.used_disk_mib + sum(d.disk_mib for d in demands),
        vms=host.vms + len(demands),
    )


def _rewrite(step: Step, uris: Mapping[str, str]) -> Step:
    if step.vm is not None:
        uri = uris.get(step.vm.domain)
        return (
            step
            if uri is None
            else dataclasses.replace(step, vm=dataclasses.replace(step.vm, uri=uri))
        )
    return dataclasses.replace(step, children=tuple(_rewrite(c, uris) for c in step.children))


def placement_groups(demand: Demand) -> tuple[str, ...]:
    """The groups a placed VM counts in on its host (for placing others next to it later)."""
    return (
        *demand.anti_affinity,
        *demand.soft_anti_affinity,
        *((demand.affinity,) if demand.affinity else ()),
    )
