"""`sd reap [--dry-run] [--json]`: remove what crashed runs left (see `sd_batch.reaper`)."""

from __future__ import annotations

import argparse
import json

from ..cli import Environment
from ..reaper import ReapPolicy, reap
from . import site_config


def run(args: argparse.Namespace, env: Environment) -> int:
    config = site_config(args, env)
    policy = ReapPolicy(prepared_grace_seconds=args.prepared_grace)
    outcomes = reap(config, dry_run=args.dry_run, policy=policy)
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "actions": [o.as_dict() for o in outcomes]},
                         indent=2), file=env.stdout)  # fmt: skip
    elif not outcomes:
        print("nothing to reap", file=env.stdout)
    for outcome in [] if args.json else outcomes:
        print(outcome.line(args.dry_run), file=env.stdout)
    return 0
