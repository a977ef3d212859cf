"""`sd admin setup-host` and `sd admin paths`: a site admin's commands for the installed package.

setup-host is bash (package data: `sd_batch/data/setup-host`, the one script a checkout's
`scripts/setup-host` runs too), because nearly every step is a Debian tool (apt-get, useradd,
visudo, setfacl, systemctl); this only runs it with the admin's options. The script finds the
package it belongs to and that package's Python itself, as the hooks do.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from ..data import DATA_DIR, HOOKS_DIR, SETUP_HOST, TEMPLATES_DIR
from ..errors import UsageError
from .environment import Environment


def setup_host(args: argparse.Namespace, env: Environment) -> int:
    """Run the set-up script with the admin's options; its exit code is ours."""
    argv = [str(SETUP_HOST)]
    if args.no_guest:
        argv.append("--no-guest")
    if args.image_dir:
        argv += ["--image-dir", args.image_dir]
    if args.no_apt:
        argv.append("--no-apt")
    env.stdout.flush()
    try:
        done = subprocess.run(
            argv, env=env.environ, stdout=env.stdout, stderr=env.stderr, check=False
        )
    except OSError as exc:  # not executable, no bash: the install is broken
        raise UsageError(
            f"cannot run {SETUP_HOST}: {exc}",
            hint="reinstall sd-batch; the script is part of the package",
        ) from exc
    return done.returncode


def paths(args: argparse.Namespace, env: Environment) -> int:
    """Where this install keeps what a site's HTCondor config and sudoers name."""
    rows = [
        ("SMARTDOMAINS_HOME", DATA_DIR),
        ("hooks", HOOKS_DIR),
        ("helper", HOOKS_DIR / "helper"),
        ("config drop-in", HOOKS_DIR / "99-smartdomains.conf"),
        ("templates", TEMPLATES_DIR),
        ("python", sys.executable),
    ]
    for name, path in rows:
        print(f"{name + ':':<19}{path}", file=env.stdout)
    return 0
