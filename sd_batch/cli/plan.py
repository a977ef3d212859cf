"""`sd plan FILE [--hosts INVENTORY] [--json]`: a dry run of placement, and `sd watch`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..deploy.plan_text import plan_lines
from ..deploy.pools import POOL_NAME, DryRun, plan_pool
from ..errors import NoHostHasCapacity
from . import properties, site_config
from .environment import Environment

if TYPE_CHECKING:
    pass


def plan(args: argparse.Namespace, env: Environment) -> int:
    config = site_config(args, env)
    stem = Path(args.file).stem
    name = args.name or (stem if POOL_NAME.fullmatch(stem) else "plan")
    result = plan_pool(
        config,
        Path(args.file),
        name=name,
        inventory=Path(args.hosts) if args.hosts else None,
        include_dirs=[Path(d) for d in args.include_dirs],
        properties=properties(args, config),
    )
    if args.json:
        print(json.dumps(_as_json(result), indent=2), file=env.stdout)
    else:
        for line in plan_lines(result, all_hosts=args.all_hosts):
            print(line, file=env.stdout)
    return 0 if result.complete else NoHostHasCapacity.exit_code


def _as_json(result: DryRun) -> dict[str, Any]:
    return {
        "complete": result.complete,
        "schedulers": [
            {"scheduler": spec.path, "hosts_written": list(spec.hosts), **placement.as_dict()}
            for spec, placement in result.placements
        ],
        "unscheduled": list(result.unscheduled),
        "unreachable": [
            {"host": u.name, "uri": u.uri, "reason": u.reason} for u in result.unreachable
        ],
    }


def watch(args: argparse.Namespace, env: Environment) -> int:
    """`sd watch HOST NAME` (and `sd start --watch`): high availability for a started pool."""
    from ..deploy.watch import watch_pool

    config = site_config(args, env)

    def progress(line: str) -> None:  # every line stays: moves are news, not progress
        print(f"sd watch: {line}", file=env.stderr, flush=True)

    watch_pool(
        config,
        args.host,
        args.name,
        include_dirs=tuple(Path(d) for d in args.include_dirs),
        properties=properties(args, config),
        progress=progress,
        rounds=args.rounds,
    )
    return 0
