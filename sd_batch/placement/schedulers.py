"""A description's Schedulers: which `Scheduler` places which VMs, under which constraints.

A `Schedulee`, `VirtualCluster`, `Pool` (any component) with a `scheduler` attribute has its VMs
placed by that Scheduler; the attribute is a LAZY reference (`scheduler LAZY ATTRIB name`),
followed here against the resolved tree as SmartFrog's deploy-time lookup does. A VM's own
placement attributes (`antiAffinity`, `softAntiAffinity`, `affinity`, `requiresTags`) become
its `Demand`. Pure: the hosts' states come in as data, through the caller's `hosts_for`.
May import: errors, lang, vm, placement.place, placement.strategies.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import PolicyError, SpecError, UnresolvedReference
from ..lang import Component, Reference
from .place import Demand, Policy
from .strategies import STRATEGIES, Weights

if TYPE_CHECKING:
    from ..errors import SourceLocation
    from ..vm.spec import VMSpec

SCHEDULER_CLASS = "sd_batch.Scheduler"
#: Attributes a Scheduler may carry beyond those components.sf declares with defaults.
SCHEDULER_OPTIONAL = (
    "maxVMsPerHost",
    "cpuOvercommit",
    "memoryOvercommit",
    "diskOvercommit",
    "weights",
    "seed",
)
SCHEDULER_ATTRIBUTES = (
    "sfCodeBase",
    "sfClass",
    "hosts",
    "strategy",
    "sfLivenessDelay",
    "sfLivenessFactor",
    *SCHEDULER_OPTIONAL,
)
#: Placement attributes of a VM (all optional; documented in components.sf).
VM_PLACEMENT = ("antiAffinity", "softAntiAffinity", "affinity", "requiresTags")
APART = ("soft", "hard", "no")


@dataclass(frozen=True, slots=True)
class SchedulerSpec:
    """A Scheduler component, read and checked: where its VMs may go and how to choose."""

    path: str
    hosts: tuple[str, ...]  # as written: site host names, libvirt URIs, or globs of names
    strategy: str = "pack"
    weights: Weights | None = None
    seed: int = 0
    max_vms_per_host: int | None = None
    cpu_overcommit: float | None = None
    memory_overcommit: float | None = None
    disk_overcommit: float | None = None
    liveness_delay: float = 0.0  # seconds between pings; 0: no high availability
    liveness_factor: int = 3  # missed pings before a host counts as failed
    loc: SourceLocation | None = field(default=None, compare=False)

    def policy(self, site: Policy) -> Policy:
        """The site's policy, made stricter where this scheduler asks; never looser."""
        changes: dict[str, Any] = {}
        for attr, name in (
            ("cpu_overcommit", "cpuOvercommit"),
            ("memory_overcommit", "memoryOvercommit"),
            ("disk_overcommit", "diskOvercommit"),
        ):
            wanted = getattr(self, attr)
            if wanted is None:
                continue
            allowed = getattr(site, attr)
            if wanted > allowed:
                raise PolicyError(
                    f"{self.path}:{name} {wanted:g} is more than site policy allows ({allowed:g})",
                    hint=f"ask for at most {allowed:g}, or have the site admin raise "
                    f"[placement] {attr} in the site config",
                )
            changes[attr] = wanted
        if self.max_vms_per_host is not None:
            limit = site.max_vms_per_host
            changes["max_vms_per_host"] = (
                self.max_vms_per_host if limit is None else min(limit, self.max_vms_per_host)
            )
        return dataclasses.replace(site, **changes)


@dataclass(frozen=True, slots=True)
class Scheduled:
    """A VM's placement request: the scheduler that places it, and what it needs."""

    scheduler: SchedulerSpec
    demand: Demand


@dataclass(frozen=True, slots=True)
class Scheduling:
    """What planning hands down a subtree: its scheduler, and groups it adds to each VM."""

    scheduler: SchedulerSpec
    soft_groups: tuple[str, ...] = ()
    hard_groups: tuple[str, ...] = ()

    def within_cluster(self, node: Component, apart: str) -> Scheduling:
        group = f"cluster {node.path}"
        if apart == "soft":
            return dataclasses.replace(self, soft_groups=(*self.soft_groups, group))
        if apart == "hard":
            return dataclasses.replace(self, hard_groups=(*self.hard_groups, group))
        return self


# -- reading the description --------------------------------------------------------------------
def follow(holder: Component, ref: Reference) -> Any:
    """Resolve a LAZY reference from HOLDER, the component holding it, as SmartFrog does at
    deploy time: ATTRIB looks in HOLDER then up its parents; HERE only in the current one."""
    current: Any = holder
    for index, part in enumerate(ref.parts):
        if not isinstance(current, Component):
            raise _unresolved(ref, f"{ref.parts[index - 1].name} is not a component")
        name = part.name or ""
        if part.kind == "ATTRIB":
            scope: Component | None = current
            while scope is not None and name not in scope:
                scope = scope.parent
            if scope is None:
                raise _unresolved(ref, f"no attribute {name} here or above", holder, name)
            current = scope[name]
        elif part.kind == "HERE":
            if name not in current:
                raise _unresolved(
                    ref, f"no attribute {name} in {current.path or 'the top'}", current, name
                )
            current = current[name]
        elif part.kind == "PARENT":
            if current.parent is None:
                raise _unresolved(ref, "the top level has no PARENT")
            current = current.parent
        elif part.kind == "ROOT":
            current = current.root()
        elif part.kind != "THIS":
            raise _unresolved(ref, f"{part.kind} cannot name a component")
    return current


def _unresolved(
    ref: Reference, why: str, where: Component | None = None, name: str | None = None
) -> UnresolvedReference:
    hint = "write scheduler LAZY ATTRIB nameOfAScheduler"
    if where is not None and name is not None:
        names: list[str] = []
        node: Component | None = where
        while node is not None:
            names.extend(node)
            node = node.parent
        close = difflib.get_close_matches(name, names, n=1)
        if close:
            hint = f"did you mean {close[0]}?"
    return UnresolvedReference(f"cannot resolve {ref}: {why}", loc=ref.loc, hint=hint)


def scheduling_of(node: Component, inherited: Scheduling | None) -> Scheduling | None:
    """The scheduling in force for NODE: its own `scheduler` attribute, else its parent's."""
    if "scheduler" not in node:
        return inherited
    value = node["scheduler"]
    if value is None:
        return None  # scheduler NULL: this subtree is not scheduled
    target = follow(node, value) if isinstance(value, Reference) else value
    if not isinstance(target, Component) or target.get("sfClass") != SCHEDULER_CLASS:
        raise SpecError(
            f"{node.attribute_path('scheduler')}: {value} is not a Scheduler",
            loc=node.location_of("scheduler"),
            hint="write scheduler LAZY ATTRIB s, where s extends Scheduler { hosts [|...|]; }",
        )
    return Scheduling(scheduler_spec(target))


def scheduler_spec(node: Component) -> SchedulerSpec:
    """Read and check a Scheduler component (a typo of an attribute name is an error)."""
    read = _Reader(node)
    for name in node:
        close = difflib.get_close_matches(name, SCHEDULER_ATTRIBUTES, n=1, cutoff=0.8)
        if name not in SCHEDULER_ATTRIBUTES and close:
            raise read.error(
                name, f"unknown Scheduler attribute {name}", f"did you mean {close[0]}?"
            )
    hosts = read.strings("hosts")
    if not hosts:
        raise read.error(
            "hosts",
            "a Scheduler needs at least one host",
            'write hosts [| "host1", "host2" |] (site host names or libvirt URIs)',
        )
    strategy = read.value("strategy", "pack")
    if strategy not in STRATEGIES:
        close = difflib.get_close_matches(str(strategy), STRATEGIES, n=1)
        raise read.error(
            "strategy",
            f"unknown strategy {strategy!r}",
            (f"did you mean {close[0]}? " if close else "")
            + f"strategies: {', '.join(STRATEGIES)}",
        )
    weights = None
    table = read.value("weights", None)
    if table is not None:
        if not isinstance(table, Component):
            raise read.error(
                "weights",
                "must be a DATA component",
                "write weights extends DATA { memory 1.0; vms -1.0; }",
            )
        unknown = [k for k in table if k not in Weights.NAMES]
        if unknown:
            raise read.error(
                "weights", f"unknown weigher {unknown[0]}", f"weighers: {', '.join(Weights.NAMES)}"
            )
        values = {
            k: _Reader(table).number(k, None, signed=True) for k in Weights.NAMES if k in table
        }
        weights = Weights(**{k: float(v) for k, v in values.items() if v is not None})
    return SchedulerSpec(
        path=node.path,
        hosts=hosts,
        strategy=str(strategy),
        weights=weights,
        seed=read.whole("seed", 0, least=0) or 0,
        max_vms_per_host=read.whole("maxVMsPerHost", None, least=1),
        cpu_overcommit=read.number("cpuOvercommit", None, positive=True),
        memory_overcommit=read.number("memoryOvercommit", None, positive=True),
        disk_overcommit=read.number("diskOvercommit", None, positive=True),
        liveness_delay=read.number("sfLivenessDelay", 0.0) or 0.0,
        liveness_factor=read.whole("sfLivenessFactor", 3, least=1) or 3,
        loc=node.loc,
    )


def cluster_apart(node: Component) -> str:
    """A VirtualCluster's `apart`: its head and workers on different hosts (soft: where the
    hosts allow; hard: or not at all; no)."""
    read = _Reader(node)
    apart = read.value("apart", "soft")
    if apart not in APART:
        raise read.error(
            "apart",
            f"{apart!r} is not one of {', '.join(APART)}",
            '"soft": apart where hosts allow; "hard": always; "no"',
        )
    return str(apart)


def demand_of(node: Component, spec: VMSpec, scheduling: Scheduling) -> Demand:
    """A VM's placement needs: its size, disks as written, and its placement attributes."""
    read = _Reader(node)
    for name in node:
        close = difflib.get_close_matches(name, VM_PLACEMENT, n=1, cutoff=0.85)
        if close and name not in VM_PLACEMENT and name not in ("sfClass",):
            raise read.error(
                name, f"unknown placement attribute {name}", f"did you mean {close[0]}?"
            )
    disk_bytes = sum(d.size_bytes or 0 for d in spec.disks)
    affinity = read.strings("affinity")
    if len(affinity) > 1:
        raise read.error(
            "affinity", "a VM is in one affinity group at most", 'write affinity "groupName"'
        )
    return Demand(
        name=spec.name,
        memory_mib=spec.memory_mib,
        vcpus=spec.vcpus,
        disk_mib=-(-disk_bytes // (1 << 20)),
        requires_tags=frozenset(read.strings("requiresTags")),
        affinity=affinity[0] if affinity else None,
        anti_affinity=(*read.strings("antiAffinity"), *scheduling.hard_groups),
        soft_anti_affinity=(*read.strings("softAntiAffinity"), *scheduling.soft_groups),
    )


class _Reader:
    """A component's attributes as values of one kind, every bad one a SpecError citing it."""

    def __init__(self, node: Component) -> None:
        self.node = node

    def error(self, name: str, problem: str, hint: str | None = None) -> SpecError:
        path = self.node.attribute_path(name)
        return SpecError(
            f"{path}: {problem}", loc=self.node.location_of(name), path=path, hint=hint
        )

    def value(self, name: str, default: Any) -> Any:
        value = self.node.get(name, default)
        if isinstance(value, Reference):
            raise self.error(
                name,
                f"{value} is not resolved here",
                "write the value itself (a Scheduler outside sfConfig is read as written)",
            )
        return value

    def strings(self, name: str) -> tuple[str, ...]:
        """NULL, a string, or a vector of strings."""
        value = self.value(name, None)
        if value is None:
            return ()
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
            raise self.error(
                name,
                f"{value!r} is not a name or a vector of names",
                f'write {name} "name" or {name} [| "a", "b" |]',
            )
        return tuple(values)

    def number(
        self, name: str, default: float | None, *, positive: bool = False, signed: bool = False
    ) -> float | None:
        value = self.value(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(name, f"{value!r} is not a number")
        if positive and value <= 0:
            raise self.error(name, f"{value} must be more than 0")
        if value < 0 and not signed:
            raise self.error(name, f"{value} must not be negative")
        return float(value)

    def whole(self, name: str, default: int | None, *, least: int) -> int | None:
        value = self.value(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise self.error(name, f"{value!r} is not a whole number >= {least}")
        return int(value)
