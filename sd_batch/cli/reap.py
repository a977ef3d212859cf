"""`sd reap [--dry-run] [--json]`: remove what crashed runs left (see `sd_batch.deploy.reaper`)."""

from __future__ import annotations

import argparse
import json

from ..deploy.reaper import ReapPolicy, reap
from . import site_config
from .environment import Environment


def run(args: argparse.Namespace, env: Environment) -> int:
    """One line per action ("would remove" in a dry run); exit 0 even when one failed (its
    line says so, and the next reap tries again)."""
    config = site_config(args, env)
    policy = ReapPolicy(prepared_grace_seconds=args.prepared_grace)
    outcomes = reap(config, dry_run=args.dry_run, policy=policy)
    if args.json:
        data = {"dry_run": args.dry_run, "actions": [o.as_dict() for o in outcomes]}
        print(json.dumps(data, indent=2), file=env.stdout)
        return 0
    for outcome in outcomes:
        print(outcome.line(args.dry_run), file=env.stdout)
    if not outcomes:
        print("nothing to reap", file=env.stdout)
    return 0
