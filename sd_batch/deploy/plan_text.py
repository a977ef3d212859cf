"""A dry run of placement (`pools.plan_pool`) as text: what `sd plan` prints and `sd web` shows.

May import: placement (sizes, for the types), deploy.pools (DryRun), the standard library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..placement.place import size_text

if TYPE_CHECKING:
    from ..placement.hosts import HostLeft
    from ..placement.place import Demand
    from .pools import DryRun


def _size(mib: int | None) -> str:
    return "-" if mib is None else size_text(mib)


def plan_lines(result: DryRun, *, all_hosts: bool) -> list[str]:
    """A dry run as lines: each Scheduler's VMs and hosts (ALL_HOSTS: also those left empty)."""
    lines: list[str] = []
    for spec, placement in result.placements:
        placed = len(placement.assignment)
        lines.append(
            f"{spec.path}: {spec.strategy}, {placed} VM{'s' * (placed != 1)} on "
            f"{placement.hosts_used()} of {len(placement.hosts)} hosts"
        )
        if placement.assignment:
            rows: list[tuple[str, ...]] = [("VM", "host", "memory", "vCPUs", "disk")]
            for vm, host in placement.assignment:
                d: Demand = result.demands[vm]
                rows.append(
                    (vm, host, _size(d.memory_mib), str(d.vcpus), _size(d.disk_mib or None))
                )
            lines += _table(rows)
        shown = [h for h in placement.hosts if all_hosts or h.placed]
        if shown:
            lines.append("  what the hosts have left (after overcommit):")
            rows = [("host", "VMs", "memory free", "vCPUs free", "disk free")]
            rows.extend(_host_row(h) for h in shown)
            lines += _table(rows)
        if len(shown) < len(placement.hosts):
            rest = len(placement.hosts) - len(shown)
            lines.append(
                f"  ({rest} more host{'s' * (rest != 1)} with nothing placed: "
                "--all-hosts lists them)"
            )
        for unplaced in placement.unplaced:
            lines.append(f"  does not fit: {unplaced.reason}")
    for gone in result.unreachable:
        lines.append(f"left out: host {gone.name} ({gone.uri}): {gone.reason}")
    if result.unscheduled:
        lines.append(
            "not scheduled (they start on the HOST given to sd start): "
            + ", ".join(result.unscheduled)
        )
    return lines


def _host_row(h: HostLeft) -> tuple[str, ...]:
    disk = "-" if h.disk_mib is None else f"{_size(h.disk_mib)} of {_size(h.capacity_disk_mib)}"
    return (
        h.name,
        f"{h.vms} (+{h.placed})",
        f"{_size(h.memory_mib)} of {_size(h.capacity_memory_mib)}",
        f"{h.vcpus} of {h.capacity_vcpus}",
        disk,
    )


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "    " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in rows
    ]
