"""`sd start`, `sd status`, `sd terminate` (and the seed's `sfStart` / `sfTerminate`)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..deploy.pools import start_pool, status, terminate_pool
from . import properties, site_config
from .environment import Environment


class _Progress:
    """Progress lines on stderr: rewritten in place on a terminal, plain lines otherwise."""

    def __init__(self, env: Environment, quiet: bool) -> None:
        self.env = env
        self.quiet = quiet
        self.tty = bool(getattr(env.stderr, "isatty", lambda: False)())
        self.pending = False

    def __call__(self, line: str) -> None:
        if self.quiet:
            return
        if self.tty:
            self.env.stderr.write("\r\033[K" + line)
            self.pending = True
        else:
            self.env.stderr.write(line + "\n")
        self.env.stderr.flush()

    def done(self) -> None:
        if self.pending:
            self.env.stderr.write("\r\033[K")
            self.pending = False


def start(args: argparse.Namespace, env: Environment) -> int:
    config = site_config(args, env)
    progress = _Progress(env, args.json)
    try:
        result = start_pool(
            config,
            args.host,
            args.name,
            Path(args.file),
            include_dirs=[Path(d) for d in args.include_dirs],
            properties=properties(args, config),
            progress=progress,
        )
    finally:
        progress.done()
    if args.json:
        data: dict[str, object] = {
            "pool": result.name,
            "uri": result.uri,
            "vms": list(result.domains),
        }
        if result.placed:  # only when a Scheduler placed VMs
            data["placed"] = dict(result.placed)
        print(json.dumps(data), file=env.stdout)
    else:
        count = len(result.domains)
        print(
            f"pool {result.name} started on {result.uri}: {count} VM{'s' * (count != 1)} "
            f"running ({', '.join(result.domains)})",
            file=env.stdout,
        )
        for domain, uri in result.placed:
            print(f"  {domain} on {uri}", file=env.stdout)
    if getattr(args, "watch", False):
        from .plan import watch

        env.stdout.flush()
        return watch(args, env)
    return 0


def terminate(args: argparse.Namespace, env: Environment) -> int:
    config = site_config(args, env)
    progress = _Progress(env, args.json)
    try:
        removed = terminate_pool(
            config, args.host, args.name, grace_seconds=args.grace, progress=progress
        )
    finally:
        progress.done()
    if args.json:
        print(json.dumps({"pool": args.name, "removed": removed}), file=env.stdout)
    else:
        print(f"pool {args.name} terminated: removed {removed}", file=env.stdout)
    return 0


def show_status(args: argparse.Namespace, env: Environment) -> int:
    reports = status(site_config(args, env), args.name)
    if args.json:
        print(json.dumps([r.as_dict() for r in reports], indent=2), file=env.stdout)
        return 0
    if not reports:
        print("no pools or jobs", file=env.stdout)
        return 0
    for report in reports:
        note = (
            "  INTERRUPTED: its process died; sd terminate (or sd start again) cleans up"
            if report.interrupted
            else ""
        )
        source = f" (from {report.description})" if report.description else ""
        print(
            f"{report.kind} {report.name} on {report.uri}: {report.status}{source}{note}",
            file=env.stdout,
        )
        for vm in report.vms:
            where = f"  on {vm.uri}" if vm.uri != report.uri else ""
            print(f"  {vm.name:<30} {vm.state}{where}", file=env.stdout)
        for volume in report.volumes:
            print(f"  disk {volume}", file=env.stdout)
        for path in report.files:
            print(f"  file {path}", file=env.stdout)
        for move in report.moves:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(move.at))
            what = (
                f"moved {move.domain} from {move.from_uri} to {move.to_uri}"
                if move.to_uri
                else f"could not move {move.domain} off {move.from_uri}"
            )
            print(f"  {what} at {when}: {move.reason}", file=env.stdout)
    return 0
