"""Placement constraints: the rules a host must pass to take a VM, beyond having room.

Each is a small object (tenacity's `stop_*` style): `applies` says whether a VM asks for it,
`allows` decides one host, `why` words a refusal for a site admin. `Check` joins the ones that
apply to one VM into a single predicate the strategies call; soft anti-affinity is a limit on
it that `placement.place` raises step by step.
May import: nothing at run time (placement's working state is passed in).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .hosts import Item, Table


class Constraint:
    """One rule a host must pass for an item, beyond room; `why` words a refusal."""

    name = ""

    def applies(self, item: Item) -> bool:
        return True

    def allows(self, item: Item, table: Table, h: int) -> bool:
        raise NotImplementedError

    def why(self, item: Item, table: Table) -> str:
        raise NotImplementedError


class HasTags(Constraint):
    """The host carries every tag the VM requires."""

    name = "tags"

    def applies(self, item: Item) -> bool:
        return bool(item.tags)

    def allows(self, item: Item, table: Table, h: int) -> bool:
        return item.tags <= table.tags[h]

    def why(self, item: Item, table: Table) -> str:
        return f"no host has all the tags it requires ({', '.join(sorted(item.tags))})"


class Affinity(Constraint):
    """VMs of one affinity group share a host: the one where the group already runs, if any."""

    name = "affinity"

    def applies(self, item: Item) -> bool:
        return item.affinity is not None

    def allows(self, item: Item, table: Table, h: int) -> bool:
        if item.affinity is None:  # not this constraint's item (`applies`)
            return True
        return not table.group_total[item.affinity] or table.groups[item.affinity][h] > 0

    def why(self, item: Item, table: Table) -> str:
        if item.affinity is None:
            return "no affinity group"
        where = [table.hosts[h].name for h, c in enumerate(table.group(item.affinity)) if c]
        return (
            f"affinity group {item.affinity} runs on {', '.join(where)}, which has no room"
            if where
            else f"affinity group {item.affinity} fits on no single host"
        )


class AntiAffinity(Constraint):
    """No two VMs of an anti-affinity group on one host."""

    name = "anti-affinity"

    def applies(self, item: Item) -> bool:
        return bool(item.anti)

    def allows(self, item: Item, table: Table, h: int) -> bool:
        groups = table.groups
        return all(g not in groups or not groups[g][h] for g in item.anti)

    def why(self, item: Item, table: Table) -> str:
        return (
            f"every host with room already runs a VM of anti-affinity group {', '.join(item.anti)}"
        )


#: Checked in this order; `why` reports the one refusing most hosts.
CONSTRAINTS: tuple[Constraint, ...] = (HasTags(), Affinity(), AntiAffinity())


class Check:
    """The constraints that apply to one item, as one predicate (None: room is all it needs)."""

    __slots__ = ("item", "table", "rules", "soft_limit")

    def __init__(self, item: Item, table: Table) -> None:
        self.item, self.table = item, table
        self.rules = tuple(c for c in CONSTRAINTS if c.applies(item))
        self.soft_limit: int | None = None

    def __call__(self, h: int) -> bool:
        item, table = self.item, self.table
        if not all(rule.allows(item, table, h) for rule in self.rules):
            return False
        if self.soft_limit is not None:
            return all(table.group(g)[h] <= self.soft_limit for g in item.soft)
        return True
