"""`sd run JOB.sub`: run a job through our HTCondor hooks here, as a worker would (the parser
is in cli.parser; the work in localrun/harness.py)."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Mapping
from pathlib import Path

from ..errors import SdError
from ..localrun.harness import Harness, Outcome, default_user
from ..localrun.slot import CronCache
from .environment import Environment


def cron_cache(environ: Mapping[str, str]) -> CronCache:
    """The startd cron's output kept a minute in the cache folder, stale as soon as the
    site config in force or a template folder changes (as a startd's reconfig reruns it)."""
    from ..config.site import config_path, default_cache_dir, load_config

    found = config_path(environ)
    inputs: list[Path] = [found] if found is not None else []
    with contextlib.suppress(SdError):
        inputs.extend(load_config(found).template_dirs)
    return CronCache(default_cache_dir() / "startd-cron.json", tuple(inputs))


def run(args: argparse.Namespace, env: Environment) -> int:
    def progress(line: str) -> None:  # always on stderr: --json only changes stdout
        env.stderr.write(f"sd run: {line}\n")
        env.stderr.flush()

    def report(outcome: Outcome) -> None:
        if not args.json:
            env.stdout.write(outcome.summary() + "\n")
            env.stdout.flush()

    harness = Harness(
        Path(args.submit_file),
        default_user(args.user),
        keep_going=args.keep_going,
        progress=progress,
        environ=env.environ,
        cron_cache=cron_cache(env.environ),
        evict_after=args.evict_after,
    )
    outcomes = harness.run(report)
    code = next((o.process_exit_code for o in outcomes if o.process_exit_code != 0), 0)
    if args.json:
        env.stdout.write(
            json.dumps({"jobs": [o.as_json() for o in outcomes], "exit_code": code}, indent=2)
            + "\n"
        )
    return code
