"""`sd run JOB.sub`: run a job through our HTCondor hooks here, as a worker would (the parser
is in cli.main.build_parser; the work in localrun/harness.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..localrun.harness import Harness, Outcome, default_user
from .main import Environment


def run(args: argparse.Namespace, env: Environment) -> int:
    def progress(line: str) -> None:  # always on stderr: --json only changes stdout
        env.stderr.write(f"sd run: {line}\n")
        env.stderr.flush()

    def report(outcome: Outcome) -> None:
        if not args.json:
            env.stdout.write(outcome.summary() + "\n")
            env.stdout.flush()

    harness = Harness(Path(args.submit_file), default_user(args.user),
                      keep_going=args.keep_going, progress=progress, environ=env.environ,
                      evict_after=args.evict_after)
    outcomes = harness.run(report)
    code = next((o.process_exit_code for o in outcomes if o.process_exit_code != 0), 0)
    if args.json:
        env.stdout.write(json.dumps({"jobs": [o.as_json() for o in outcomes],
                                     "exit_code": code}, indent=2) + "\n")
    return code
