"""Placement strategies: given the hosts with room for a VM, which one takes it.

Each is a small class behind one interface, as tenacity's `stop_*` and `wait_*` are: `prepare`
builds its index of the hosts, `order` says in which order the VMs are placed, `choose` picks a
host with room that passes CHECK (the VM's constraints), `moved` keeps the index right after a
host took a VM. Indexes keep a thousand hosts fast: pack and spread keep hosts sorted by free
room (a bisect finds the candidates), first-fit keeps a tree of free-room maxima over the host
list; weighted scores every host with room, as Nova's weighers do.
May import: placement (its private working state is shared with this module by design).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from ..errors import SpecError
from .hosts import DISK, MEMORY, UNLIMITED, VCPUS, Item, Table

Check = Callable[[int], bool] | None


class Strategy:
    """How to choose among the hosts with room; one decision per subclass."""

    name: ClassVar[str] = ""

    def prepare(self, table: Table, items: Sequence[Item]) -> None:
        """Index TABLE's hosts before ITEMS are placed."""

    def order(self, items: Sequence[Item], table: Table) -> list[Item]:
        """The order to place ITEMS in: as written, unless the strategy needs otherwise."""
        return list(items)

    def choose(self, item: Item, table: Table, check: Check) -> int | None:
        raise NotImplementedError

    def moved(self, h: int, table: Table) -> None:
        """Host H just took an item: update the index."""


def _sizes(items: Sequence[Item], table: Table) -> dict[int, float]:
    """Each item's dominant share of an average host (its `first` -> share)."""
    means = []
    for r in (MEMORY, VCPUS, DISK):
        finite = [c for c in table.capacity[r] if c < UNLIMITED // 2]
        means.append(sum(finite) / len(finite) if finite and sum(finite) else 0.0)
    return {
        item.first: max((item.need[r] / m for r, m in enumerate(means) if m), default=0.0)
        for item in items
    }


def _smallest(items: Sequence[Item]) -> tuple[int, int, int, int]:
    if not items:
        return (0, 0, 0, 0)
    return (
        min(i.need[0] for i in items),
        min(i.need[1] for i in items),
        min(i.need[2] for i in items),
        min(i.need[3] for i in items),
    )


class _Sorted(Strategy):
    """Hosts kept sorted by a key, hosts too full for the smallest VM dropped from the index."""

    def prepare(self, table: Table, items: Sequence[Item]) -> None:
        self.smallest = _smallest(items)
        self.entry: dict[int, tuple[float, int, int]] = {}
        self.entries: list[tuple[float, int, int]] = []
        for h in range(table.n):
            if table.has_room(h, self.smallest):
                self.entry[h] = (self.key(h, table), table.tie[h], h)
        self.entries = sorted(self.entry.values())

    def key(self, h: int, table: Table) -> float:
        raise NotImplementedError

    def moved(self, h: int, table: Table) -> None:
        old = self.entry.pop(h, None)
        if old is not None:
            del self.entries[bisect.bisect_left(self.entries, old)]
        if table.has_room(h, self.smallest):
            new = self.entry[h] = (self.key(h, table), table.tie[h], h)
            bisect.insort(self.entries, new)

    def _first_from(self, start: int, item: Item, table: Table, check: Check) -> int | None:
        entries, need = self.entries, item.need
        fm, fc, fd, fs = table.free
        for j in range(start, len(entries)):
            h = entries[j][2]
            if (
                fm[h] >= need[0]
                and fc[h] >= need[1]
                and fd[h] >= need[2]
                and fs[h] >= need[3]
                and (check is None or check(h))
            ):
                return h
        return None


def _scarcest(table: Table, items: Sequence[Item]) -> int:
    """The resource with the largest total need against total free room."""

    def pressure(r: int) -> float:
        capacity = sum(c for c in table.free[r] if c > 0)
        return sum(i.need[r] for i in items) / capacity if capacity else 0.0

    return max((MEMORY, VCPUS, DISK), key=lambda r: (pressure(r), -r))


class BestFit(_Sorted):
    """Best fit decreasing: biggest VMs first, each to the fullest host that still has room
    ("fullest" on the scarcest resource). Packs one host after the other, so VMs of unlike
    shapes can leave a host full on one resource and idle on another: pack does better."""

    name = "best-fit"

    def prepare(self, table: Table, items: Sequence[Item]) -> None:
        self.resource = _scarcest(table, items)
        self.sizes = _sizes(items, table)
        super().prepare(table, items)

    def key(self, h: int, table: Table) -> float:
        return table.free[self.resource][h]

    def order(self, items: Sequence[Item], table: Table) -> list[Item]:
        r, sizes = self.resource, self.sizes
        return sorted(items, key=lambda i: (-i.need[r], -sizes[i.first], i.first))

    def choose(self, item: Item, table: Table, check: Check) -> int | None:
        start = bisect.bisect_left(self.entries, (item.need[self.resource], -1, -1))
        return self._first_from(start, item, table, check)


class Pack(Strategy):
    """Fewest hosts: biggest VMs first, spread evenly over the fewest hosts whose free room
    covers the whole demand (fullest hosts first), and one more host opened, best fit, only
    when none of those has room for a VM.

    Filling the chosen hosts evenly fills every resource together: each host gets its share
    of big and of small VMs. Best-fit decreasing fills one host after the other and ends
    with hosts of small VMs only, full on disk or vCPUs with memory idle (1.09-1.19 x the
    lower bound on the benchmark's mixes, where this stays within 1.01 x).
    """

    name = "pack"

    def prepare(self, table: Table, items: Sequence[Item]) -> None:
        r = self.resource = _scarcest(table, items)
        self.sizes = _sizes(items, table)
        self.smallest = _smallest(items)
        total = [sum(i.need[k] for i in items) for k in (MEMORY, VCPUS, DISK)]
        covered = [0, 0, 0]
        self.open: dict[int, tuple[int, int, int]] = {}
        for h in sorted(range(table.n), key=lambda h: (table.free[r][h], table.tie[h])):
            if all(c >= t for c, t in zip(covered, total, strict=True)):
                break
            if table.has_room(h, self.smallest):
                self.open[h] = (table.free[r][h], -table.tie[h], h)
                covered = [c + max(table.free[k][h], 0) for k, c in enumerate(covered)]
        self.opened = sorted(self.open.values())  # scanned from the most free down
        rest = [h for h in range(table.n) if h not in self.open]
        self.closed = sorted(
            (table.free[r][h], table.tie[h], h) for h in rest if table.has_room(h, self.smallest)
        )

    def order(self, items: Sequence[Item], table: Table) -> list[Item]:
        r, sizes = self.resource, self.sizes
        return sorted(items, key=lambda i: (-sizes[i.first], -i.need[r], i.first))

    def choose(self, item: Item, table: Table, check: Check) -> int | None:
        r, need, opened = self.resource, item.need, self.opened
        for j in range(len(opened) - 1, -1, -1):
            h = opened[j][2]
            if table.free[r][h] < need[r]:
                break  # the rest have less
            if table.has_room(h, need) and (check is None or check(h)):
                return h
        closed = self.closed
        for j in range(bisect.bisect_left(closed, (need[r], -1, -1)), len(closed)):
            h = closed[j][2]
            if table.has_room(h, need) and (check is None or check(h)):
                del closed[j]
                self.open[h] = entry = (table.free[r][h], -table.tie[h], h)
                bisect.insort(opened, entry)
                return h
        return None

    def moved(self, h: int, table: Table) -> None:
        del self.opened[bisect.bisect_left(self.opened, self.open.pop(h))]
        if table.has_room(h, self.smallest):
            self.open[h] = entry = (table.free[self.resource][h], -table.tie[h], h)
            bisect.insort(self.opened, entry)


class Spread(_Sorted):
    """Least loaded: each VM (biggest first) to the host with the smallest share in use."""

    name = "spread"

    def prepare(self, table: Table, items: Sequence[Item]) -> None:
        self.sizes = _sizes(items, table)
        super().prepare(table, items)

    def key(self, h: int, table: Table) -> float:
        load = 0.0
        for r in (MEMORY, VCPUS, DISK):
            capacity = table.capacity[r][h]
            if capacity >= UNLIMITED // 2:
                continue
            used = capacity - table.free[r][h]
            load = max(load, used / capacity if capacity > 0 else 1.0)
        return load

    def order(self, items: Sequence[Item], table: Table) -> list[Item]:
        return sorted(items, key=lambda i: (-self.sizes[i.first], i.first))

    def choose(self, item: Item, table: Table, check: Check) -> int | None:
        return self._first_from(0, item, table, check)


class FirstFit(Strategy):
    """Each VM, in the order written, to the first host with room, in the order listed."""

    name = "first-fit"

    def prepare(self, table: Table, items: Sequence[Item]) -> None:
        self.size = 1 << max(table.n - 1, 0).bit_length()
        self.tree = [[-1] * (2 * self.size) for _ in range(4)]  # max free room per subtree
        for r in range(4):
            tree = self.tree[r]
            tree[self.size : self.size + table.n] = table.free[r]
            for node in range(self.size - 1, 0, -1):
                tree[node] = max(tree[2 * node], tree[2 * node + 1])

    def choose(self, item: Item, table: Table, check: Check) -> int | None:
        m, c, d, s = item.need
        tm, tc, td, ts = self.tree
        size, stack = self.size, [1]
        while stack:  # depth first, left first: the first host with room
            node = stack.pop()
            if tm[node] < m or tc[node] < c or td[node] < d or ts[node] < s:
                continue
            if node >= size:
                if check is None or check(node - size):
                    return node - size
                continue
            stack.append(2 * node + 1)
            stack.append(2 * node)
        return None

    def moved(self, h: int, table: Table) -> None:
        for r in range(4):
            tree = self.tree[r]
            node = self.size + h
            tree[node] = table.free[r][h]
            node //= 2
            while node:
                tree[node] = max(tree[2 * node], tree[2 * node + 1])
                node //= 2


@dataclass(frozen=True, slots=True)
class Weights:
    """Weigher multipliers (Nova's *_weight_multiplier): positive prefers more of it free."""

    memory: float = 1.0  # free memory (Nova's RAMWeigher)
    vcpus: float = 1.0  # free vCPUs (CPUWeigher)
    disk: float = 0.0  # free disk (DiskWeigher)
    vms: float = 0.0  # VMs already there (NumInstancesWeigher; negative prefers fewer)

    NAMES: ClassVar[tuple[str, ...]] = ("memory", "vcpus", "disk", "vms")


class Weighted(Strategy):
    """Nova's weighers: every host with room scores the sum of its weights, each normalised
    to 0..1 over those hosts and multiplied by its multiplier; the highest score wins."""

    name = "weighted"

    def __init__(self, weights: Weights = Weights()) -> None:
        self.weights = weights

    def prepare(self, table: Table, items: Sequence[Item]) -> None:
        self.by_tie = sorted(range(table.n), key=table.tie.__getitem__)

    def choose(self, item: Item, table: Table, check: Check) -> int | None:
        m, c, d, s = item.need
        fm, fc, fd, fs = table.free
        if not table.n:
            return None
        if min(fm) >= m and min(fc) >= c and min(fd) >= d and min(fs) >= s:
            hosts = self.by_tie  # every host has room
        else:
            hosts = [
                h for h in self.by_tie if fm[h] >= m and fc[h] >= c and fd[h] >= d and fs[h] >= s
            ]
        if check is not None:
            hosts = [h for h in hosts if check(h)]
        if not hosts:
            return None
        w = self.weights
        score: list[float] | None = None
        for multiplier, values in (
            (w.memory, fm),
            (w.vcpus, fc),
            (w.disk, fd),
            (w.vms, table.count),
        ):
            if not multiplier:
                continue
            column = [values[h] for h in hosts]
            low, high = min(column), max(column)
            if high > low:  # multiplier * (x - low) / (high - low), less the same low for all
                scale = multiplier / (high - low)
                if score is None:
                    score = [scale * v for v in column]
                else:
                    score = [t + scale * v for t, v in zip(score, column, strict=True)]
        if score is None:
            return hosts[0]
        return hosts[score.index(max(score))]  # hosts are in tie-break order: the first best


STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (FirstFit, Pack, BestFit, Spread, Weighted)
}


def strategy_named(name: str, weights: Weights | None = None) -> Strategy:
    """The strategy a description names (`strategy "pack"`), a fresh one for each run."""
    if name not in STRATEGIES:
        raise SpecError(
            f"unknown placement strategy {name!r}", hint=f"strategies: {', '.join(STRATEGIES)}"
        )
    if name == Weighted.name:
        return Weighted(weights or Weights())
    return STRATEGIES[name]()


__all__ = [
    "STRATEGIES",
    "BestFit",
    "FirstFit",
    "Pack",
    "Spread",
    "Strategy",
    "Weighted",
    "Weights",
    "strategy_named",
]
