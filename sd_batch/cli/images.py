"""`sd images push HOST NAME`: put a site image on a hypervisor host through its libvirt."""

from __future__ import annotations

import argparse
import json

from ..deploy.images import push
from . import site_config
from .environment import Environment


def images_push(args: argparse.Namespace, env: Environment) -> int:
    def progress(line: str) -> None:
        if not args.json:
            print(line, file=env.stderr, flush=True)

    results = push(site_config(args, env), args.host, args.name, progress=progress)
    if args.json:
        print(
            json.dumps(
                [
                    {"path": r.path, "sha256": r.sha256, "size": r.size, "outcome": r.outcome}
                    for r in results
                ]
            ),
            file=env.stdout,
        )
        return 0
    words = {
        "copied": "copied",
        "present": "already there (same sha256), not copied",
        "verified": "already there (read back: same sha256), not copied",
    }
    for r in results:
        print(
            f"{r.path}: {words[r.outcome]} ({r.size} bytes, sha256 {r.sha256[:16]}...)",
            file=env.stdout,
        )
    return 0
