"""`sd plan FILE [--hosts INVENTORY] [--json]`: a dry run of placement, and `sd watch`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..deploy.pools import POOL_NAME, DryRun, plan_pool
from ..errors import NoHostHasCapacity
from ..placement.place import size_text
from . import site_config
from .lang import _properties
from .main import Environment

if TYPE_CHECKING:
    from ..placement.place import Demand, HostLeft


def plan(args: argparse.Namespace, env: Environment) -> int:
    config = site_config(args, env)
    stem = Path(args.file).stem
    name = args.name or (stem if POOL_NAME.fullmatch(stem) else "plan")
    result = plan_pool(
        config, Path(args.file), name=name,
        inventory=Path(args.hosts) if args.hosts else None,
        include_dirs=[Path(d) for d in args.include_dirs], properties=_properties(args, config),
    )  # fmt: skip
    if args.json:
        print(json.dumps(_as_json(result), indent=2), file=env.stdout)
    else:
        for line in _lines(result, all_hosts=args.all_hosts):
            print(line, file=env.stdout)
    return 0 if result.complete else NoHostHasCapacity.exit_code


def _size(mib: int | None) -> str:
    return "-" if mib is None else size_text(mib)


def _lines(result: DryRun, *, all_hosts: bool) -> list[str]:
    lines: list[str] = []
    for spec, placement in result.placements:
        placed = len(placement.assignment)
        lines.append(f"{spec.path}: {spec.strategy}, {placed} VM{'s' * (placed != 1)} on "
                     f"{placement.hosts_used()} of {len(placement.hosts)} hosts")  # fmt: skip
        if placement.assignment:
            rows: list[tuple[str, ...]] = [("VM", "host", "memory", "vCPUs", "disk")]
            for vm, host in placement.assignment:
                d: Demand = result.demands[vm]
                rows.append((vm, host, _size(d.memory_mib), str(d.vcpus),
                             _size(d.disk_mib or None)))  # fmt: skip
            lines += _table(rows)
        shown = [h for h in placement.hosts if all_hosts or h.placed]
        if shown:
            lines.append("  what the hosts have left (after overcommit):")
            rows = [("host", "VMs", "memory free", "vCPUs free", "disk free")]
            rows.extend(_host_row(h) for h in shown)
            lines += _table(rows)
        if len(shown) < len(placement.hosts):
            rest = len(placement.hosts) - len(shown)
            lines.append(f"  ({rest} more host{'s' * (rest != 1)} with nothing placed: "
                         "--all-hosts lists them)")  # fmt: skip
        for unplaced in placement.unplaced:
            lines.append(f"  does not fit: {unplaced.reason}")
    for gone in result.unreachable:
        lines.append(f"left out: host {gone.name} ({gone.uri}): {gone.reason}")
    if result.unscheduled:
        lines.append("not scheduled (they start on the HOST given to sd start): "
                     + ", ".join(result.unscheduled))  # fmt: skip
    return lines


def _host_row(h: HostLeft) -> tuple[str, ...]:
    disk = "-" if h.disk_mib is None else f"{_size(h.disk_mib)} of {_size(h.capacity_disk_mib)}"
    return (h.name, f"{h.vms} (+{h.placed})",
            f"{_size(h.memory_mib)} of {_size(h.capacity_memory_mib)}",
            f"{h.vcpus} of {h.capacity_vcpus}", disk)  # fmt: skip


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["    " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in rows]  # fmt: skip


def _as_json(result: DryRun) -> dict[str, Any]:
    return {
        "complete": result.complete,
        "schedulers": [{"scheduler": spec.path, "hosts_written": list(spec.hosts),
                        **placement.as_dict()} for spec, placement in result.placements],
        "unscheduled": list(result.unscheduled),
        "unreachable": [{"host": u.name, "uri": u.uri, "reason": u.reason}
                        for u in result.unreachable],
    }  # fmt: skip


def watch(args: argparse.Namespace, env: Environment) -> int:
    """`sd watch HOST NAME` (and `sd start --watch`): high availability for a started pool."""
    from ..deploy.watch import watch_pool

    config = site_config(args, env)

    def progress(line: str) -> None:  # every line stays: moves are news, not progress
        print(f"sd watch: {line}", file=env.stderr, flush=True)

    watch_pool(config, args.host, args.name, include_dirs=tuple(Path(d) for d in args.include_dirs),
               properties=_properties(args, config), progress=progress,
               rounds=args.rounds)  # fmt: skip
    return 0
