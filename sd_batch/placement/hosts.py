"""Hosts as placement sees them: a `HostState` in (capacity, tags, load), a `HostLeft` out, and
the working state of one placement run (`Table`, the hosts as parallel lists; `Item`, what is
placed in one go), which `place`, the strategies and the constraints share.

Pure. May import: placement.policy, the standard library.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .policy import Policy

#: Free capacity that never runs out (a host whose disk is not counted).
UNLIMITED = 1 << 62
#: Resource indexes into `Table.free` and `Item.need`.
MEMORY, VCPUS, DISK, SLOTS = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class HostState:
    """A host as placement sees it: physical capacity, tags, and what already runs there."""

    name: str
    memory_mib: int
    vcpus: int
    disk_mib: int | None = None  # None: disk is not counted on this host
    uri: str = ""
    tags: frozenset[str] = frozenset()
    used_memory_mib: int = 0
    used_vcpus: int = 0
    used_disk_mib: int = 0
    vms: int = 0
    #: Placement groups of VMs already there, one entry per VM (anti-affinity and affinity).
    groups: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HostLeft:
    """What a host has left after placement, in the policy's (overcommitted) terms."""

    name: str
    uri: str
    placed: int  # VMs this placement put there
    vms: int  # VMs there in all
    memory_mib: int
    vcpus: int
    disk_mib: int | None
    capacity_memory_mib: int
    capacity_vcpus: int
    capacity_disk_mib: int | None

    def as_dict(self) -> dict[str, Any]:
        capacity = {
            "memory_mib": self.capacity_memory_mib,
            "vcpus": self.capacity_vcpus,
            "disk_mib": self.capacity_disk_mib,
        }
        free = {"memory_mib": self.memory_mib, "vcpus": self.vcpus, "disk_mib": self.disk_mib}
        return {
            "host": self.name,
            "uri": self.uri,
            "placed": self.placed,
            "vms": self.vms,
            "free": free,
            "capacity": capacity,
        }


@dataclass(slots=True)
class Item:
    """What is placed in one go: one VM, or an affinity group merged into one."""

    names: tuple[str, ...]
    need: tuple[int, int, int, int]  # memory, vcpus, disk, VM slots
    tags: frozenset[str]
    affinity: str | None
    anti: tuple[str, ...]
    soft: tuple[str, ...]
    first: int  # position of its first VM among the demands (stable order)


class Table:
    """Hosts as parallel lists, which the strategies and constraints index: mutable, one run's."""

    def __init__(self, hosts: Sequence[HostState], policy: Policy, seed: int) -> None:
        self.hosts = tuple(hosts)
        self.policy = policy
        self.n = len(self.hosts)
        self.capacity: list[list[int]] = [[], [], [], []]
        self.free: list[list[int]] = [[], [], [], []]
        self.tags = [h.tags for h in self.hosts]
        self.placed = [0] * self.n
        self.count = [h.vms for h in self.hosts]  # VMs on each host, ours included
        self.groups: dict[str, list[int]] = {}
        self.group_total: Counter[str] = Counter()
        slots = policy.max_vms_per_host
        for index, h in enumerate(self.hosts):
            memory = int(h.memory_mib * policy.memory_overcommit) - policy.reserved_memory_mib
            vcpus = int(h.vcpus * policy.cpu_overcommit)
            disk = UNLIMITED if h.disk_mib is None else int(h.disk_mib * policy.disk_overcommit)
            cap = (max(memory, 0), vcpus, disk, UNLIMITED if slots is None else slots)
            used = (
                h.used_memory_mib,
                h.used_vcpus,
                0 if h.disk_mib is None else h.used_disk_mib,
                h.vms,
            )
            for r in range(4):
                self.capacity[r].append(cap[r])
                self.free[r].append(cap[r] - used[r])
            for group, count in Counter(h.groups).items():
                self.group(group)[index] = count
                self.group_total[group] += count
        self.tie = seeded_ranks([h.name for h in self.hosts], seed)

    def group(self, name: str) -> list[int]:
        counts = self.groups.get(name)
        if counts is None:
            counts = self.groups[name] = [0] * self.n
        return counts

    def has_room(self, h: int, need: tuple[int, int, int, int]) -> bool:
        free = self.free
        return (
            free[0][h] >= need[0]
            and free[1][h] >= need[1]
            and free[2][h] >= need[2]
            and free[3][h] >= need[3]
        )

    def take(self, h: int, item: Item) -> None:
        for r in range(4):
            self.free[r][h] -= item.need[r]
        self.placed[h] += len(item.names)
        self.count[h] += len(item.names)
        for group in (*item.anti, *item.soft, *((item.affinity,) if item.affinity else ())):
            self.group(group)[h] += len(item.names)
            self.group_total[group] += len(item.names)

    def left(self) -> tuple[HostLeft, ...]:
        def shown(value: int) -> int | None:
            return None if value >= UNLIMITED // 2 else value

        return tuple(
            HostLeft(
                h.name,
                h.uri,
                self.placed[i],
                h.vms + self.placed[i],
                self.free[MEMORY][i],
                self.free[VCPUS][i],
                shown(self.free[DISK][i]),
                self.capacity[MEMORY][i],
                self.capacity[VCPUS][i],
                shown(self.capacity[DISK][i]),
            )
            for i, h in enumerate(self.hosts)
        )


def seeded_ranks(names: Sequence[str], seed: int) -> list[int]:
    """A rank per name from a seeded hash: the tie-break order, the same in every process."""
    keys = [hashlib.blake2b(f"{seed}\0{name}".encode(), digest_size=8).digest() for name in names]
    order = sorted(range(len(names)), key=lambda i: (keys[i], names[i]))
    ranks = [0] * len(names)
    for rank, index in enumerate(order):
        ranks[index] = rank
    return ranks
