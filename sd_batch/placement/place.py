"""Placement: which host each VM goes to. Pure: hosts and demands in, an assignment out.

A `HostState` is what a host can give (capacity, tags) and what already runs on it; a `Demand`
is one VM's needs and constraints; a `Policy` is the site's overcommit ratios and limits. `place`
returns a `Placement`: every VM that fits, where, what each host has left and, for each VM that
does not fit, why (the tightest resource or constraint). A `Strategy` only decides *which* of the
hosts with room a VM goes to; the constraints (`filters`) decide which hosts have room.
Deterministic: ties between equal hosts are broken by a seeded hash of their names, never by
`hash()` or dict order, so the same input gives the same plan in every process.
May import: errors, placement (hosts, constraints, policy, strategies).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import NoHostHasCapacity
from .constraints import CONSTRAINTS, Check
from .hosts import DISK, MEMORY, SLOTS, UNLIMITED, HostLeft, HostState, Item, Table
from .policy import STRICT as STRICT  # re-exported: the site rules live there
from .policy import Policy as Policy

if TYPE_CHECKING:
    from .strategies import Strategy

RESOURCE_NAMES = ("memory", "vcpus", "disk", "VM slots")


@dataclass(frozen=True, slots=True)
class Demand:
    """One VM to place: what it needs and where it may go."""

    name: str
    memory_mib: int
    vcpus: int = 1
    disk_mib: int = 0
    requires_tags: frozenset[str] = frozenset()
    #: Every VM of this group goes to one host.
    affinity: str | None = None
    #: No two VMs of any of these groups share a host.
    anti_affinity: tuple[str, ...] = ()
    #: Like anti_affinity where hosts allow; else the host with the fewest of the group.
    soft_anti_affinity: tuple[str, ...] = ()

    def describe(self) -> str:
        return _needs(self.memory_mib, self.vcpus, self.disk_mib)


def size_text(mib: int) -> str:
    """MiB as a person writes it: `512 MiB`, `40 GiB`, `2 TiB`."""
    for unit, size in (("TiB", 1 << 20), ("GiB", 1 << 10)):
        if mib and mib % size == 0:
            return f"{mib // size} {unit}"
    return f"{mib} MiB"


def _needs(memory: int, vcpus: int, disk: int) -> str:
    text = f"{size_text(memory)}, {vcpus} vCPU{'s' * (vcpus != 1)}"
    return text + (f", {size_text(disk)} disk" if disk else "")


@dataclass(frozen=True, slots=True)
class Unplaced:
    """VMs that fit nowhere (several when an affinity group must move as one) and why."""

    names: tuple[str, ...]
    tightest: str  # memory, vcpus, disk, VM slots, tags, affinity, anti-affinity
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"vms": list(self.names), "tightest": self.tightest, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Placement:
    """The outcome: VM name -> host name for those that fit, and why the others did not."""

    strategy: str
    assignment: tuple[tuple[str, str], ...]  # in the demands' order
    hosts: tuple[HostLeft, ...]  # in the hosts' order
    unplaced: tuple[Unplaced, ...] = ()
    _index: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._index.update(self.assignment)

    def host_of(self, vm: str) -> str | None:
        return self._index.get(vm)

    @property
    def complete(self) -> bool:
        return not self.unplaced

    def require(self) -> Placement:
        """This placement, or NoHostHasCapacity naming what does not fit and why."""
        if self.unplaced:
            raise refusal(self.unplaced)
        return self

    def hosts_used(self) -> int:
        return sum(1 for host in self.hosts if host.placed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "placements": [{"vm": vm, "host": host} for vm, host in self.assignment],
            "hosts": [h.as_dict() for h in self.hosts],
            "unplaced": [u.as_dict() for u in self.unplaced],
        }


# -- placing ------------------------------------------------------------------------------------
def place(
    hosts: Sequence[HostState],
    demands: Sequence[Demand],
    strategy: str | Strategy = "pack",
    policy: Policy = STRICT,
    *,
    seed: int = 0,
) -> Placement:
    """Place DEMANDS on HOSTS with STRATEGY under POLICY. Never raises for lack of room:
    `Placement.unplaced` says what did not fit (`Placement.require()` raises)."""
    from .strategies import strategy_named

    chosen = strategy_named(strategy) if isinstance(strategy, str) else strategy
    names = [h.name for h in hosts]
    if len(set(names)) != len(names):
        raise ValueError(f"host names must be unique: {names}")
    table = Table(hosts, policy, seed)
    items, unplaced = _items(demands)
    chosen.prepare(table, items)
    where: dict[str, str] = {}
    failed: list[Item] = []
    for item in chosen.order(items, table):
        h = _choose(item, table, chosen)
        if h is None:
            failed.append(item)
            continue
        table.take(h, item)
        chosen.moved(h, table)
        for name in item.names:
            where[name] = table.hosts[h].name
    unplaced += [_diagnose(item, table) for item in failed]  # against what hosts have left
    assignment = tuple((d.name, where[d.name]) for d in demands if d.name in where)
    order = {d.name: i for i, d in enumerate(demands)}
    unplaced.sort(key=lambda u: order[u.names[0]])
    return Placement(chosen.name, assignment, table.left(), tuple(unplaced))


def _choose(item: Item, table: Table, strategy: Strategy) -> int | None:
    check = Check(item, table)
    if not item.soft:
        return strategy.choose(item, table, check if check.rules else None)
    # Soft anti-affinity: the hosts with none of the group first, then with one, and so on.
    counts = [table.group(g) for g in item.soft]
    levels = sorted({max(c[h] for c in counts) for h in range(table.n)})
    for level in levels:
        check.soft_limit = level
        h = strategy.choose(item, table, check)
        if h is not None:
            return h
    return None


def _items(demands: Iterable[Demand]) -> tuple[list[Item], list[Unplaced]]:
    """One item per VM, except affinity groups: one item each, needing the sum of their VMs."""
    items: list[Item] = []
    groups: dict[str, list[tuple[int, Demand]]] = {}
    seen: set[str] = set()
    for index, d in enumerate(demands):
        if d.name in seen:
            raise ValueError(f"two demands are named {d.name}")
        seen.add(d.name)
        if d.affinity is not None:
            groups.setdefault(d.affinity, []).append((index, d))
            continue
        items.append(
            Item(
                (d.name,),
                (d.memory_mib, d.vcpus, d.disk_mib, 1),
                d.requires_tags,
                None,
                d.anti_affinity,
                d.soft_anti_affinity,
                index,
            )
        )
    refused: list[Unplaced] = []
    for group, members in groups.items():
        ds = [d for _i, d in members]
        anti = Counter(g for d in ds for g in set(d.anti_affinity))
        clash = sorted(g for g, count in anti.items() if count > 1)
        if clash:
            refused.append(
                Unplaced(
                    tuple(d.name for d in ds),
                    "affinity",
                    f"affinity group {group} must share one host, but anti-affinity group "
                    f"{clash[0]} forbids two of its VMs on one host",
                )
            )
            continue
        items.append(
            Item(
                tuple(d.name for d in ds),
                (
                    sum(d.memory_mib for d in ds),
                    sum(d.vcpus for d in ds),
                    sum(d.disk_mib for d in ds),
                    len(ds),
                ),
                frozenset().union(*(d.requires_tags for d in ds)),
                group,
                tuple(sorted(anti)),
                tuple(sorted({g for d in ds for g in d.soft_anti_affinity})),
                members[0][0],
            )
        )
    items.sort(key=lambda item: item.first)
    return items, refused


def _diagnose(item: Item, table: Table) -> Unplaced:
    """Why ITEM fits nowhere: the rule or resource that refuses the most hosts, in words."""
    what = _what(item)
    if table.n == 0:
        return Unplaced(item.names, "hosts", f"{what}: the scheduler has no hosts")
    refusals: Counter[str] = Counter()
    rules = [c for c in CONSTRAINTS if c.applies(item)]
    for h in range(table.n):
        for rule in rules:
            if not rule.allows(item, table, h):
                refusals[rule.name] += 1
        for r in range(4):
            if table.free[r][h] < item.need[r]:
                refusals[RESOURCE_NAMES[r]] += 1
    order = [c.name for c in CONSTRAINTS] + list(RESOURCE_NAMES)
    tightest = max(refusals, key=lambda k: (refusals[k], -order.index(k)), default="")
    if not tightest:  # every host passes each rule alone: only their combination fails
        return Unplaced(
            item.names, "combination", f"{what}: no host both has room and meets its constraints"
        )
    if tightest in RESOURCE_NAMES:
        r = RESOURCE_NAMES.index(tightest)
        best = max(range(table.n), key=lambda h: (table.free[r][h], -table.tie[h]))
        most = table.free[r][best]
        if r == SLOTS:
            limit = table.policy.max_vms_per_host
            reason = (
                f"{what}: every host already has as many VMs as allowed ({limit} per "
                "host: maxVMsPerHost, or the site's max_vms_per_host)"
            )
        else:
            shown = size_text if r in (MEMORY, DISK) else str
            reason = (
                f"{what}: {tightest} is the tightest: it needs {shown(item.need[r])}, the "
                f"most free on any host is {shown(max(most, 0))} "
                f"({table.hosts[best].name})"
            )
        return Unplaced(item.names, tightest, reason)
    rule = next(c for c in CONSTRAINTS if c.name == tightest)
    return Unplaced(item.names, tightest, f"{what}: {rule.why(item, table)}")


def _what(item: Item) -> str:
    memory, vcpus, disk, count = item.need
    needs = _needs(memory, vcpus, disk)
    if count == 1:
        return f"{item.names[0]} ({needs})"
    return f"affinity group {item.affinity} ({', '.join(item.names)}: {needs} together)"


def lower_bound(
    hosts: Sequence[HostState], demands: Sequence[Demand], policy: Policy = STRICT
) -> int:
    """Hosts any placement needs at least: max over resources of ceil(total need / capacity of
    the average host), the bin-packing bound benchmarks compare against."""
    table = Table(hosts, policy, 0)
    totals = (
        sum(d.memory_mib for d in demands),
        sum(d.vcpus for d in demands),
        sum(d.disk_mib for d in demands),
    )
    bound = 0
    for r, total in enumerate(totals):
        capacity = sum(table.capacity[r]) / max(table.n, 1)
        if total and capacity < UNLIMITED // 2:
            bound = max(bound, -(-total // int(capacity)))
    return bound


def refusal(unplaced: Sequence[Unplaced]) -> NoHostHasCapacity:
    """One error for everything that did not fit: each VM, and the tightest resource overall."""
    names = tuple(name for u in unplaced for name in u.names)
    tightest = Counter(u.tightest for u in unplaced).most_common(1)[0][0]
    count = f"{len(names)} VM{'s' * (len(names) != 1)}"
    return NoHostHasCapacity(
        f"no host can take {count} ({', '.join(names)}); tightest: {tightest}: "
        + "; ".join(u.reason for u in unplaced),
        vms=names,
        tightest=tightest,
        hint="nothing was started; `sd plan` shows what each host has left",
    )
