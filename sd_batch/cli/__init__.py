"""The `sd` command line: `main` (the one mapping of errors to exit codes, the console
scripts), `parser` (the subcommands and the function each runs), `environment` (where a command
reads and writes) and one module per area of subcommands, each imported only when its command
runs (`lang`, `pool`, `plan`, `images`, `run`, `reap`, `web`, `admin`).

Layer: face.
May import: errors, lang, placement, config, hypervisor, deploy, localrun, web, the standard
library.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    from ..config.site import SiteConfig
    from .environment import Environment


def site_config(args: argparse.Namespace, env: Environment) -> SiteConfig:
    """--config, else $SD_BATCH_CONFIG of the command's environment (not this process's)."""
    from ..config.site import SiteConfig, config_path, load_config

    if getattr(args, "config", None):
        return load_config(Path(args.config))
    path = config_path(env.environ)
    return load_config(path) if path is not None else SiteConfig()


def properties(args: argparse.Namespace, config: SiteConfig) -> dict[str, str]:
    """The site's properties, overridden by the command's `-D NAME=VALUE`s."""
    props = dict(config.properties)
    for item in args.properties:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"-D {item}: expected NAME=VALUE")
        props[name] = value
    return props
