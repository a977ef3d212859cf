"""`sd web [--bind HOST:PORT]`: serve the template web form (needs the `web` extra)."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from ..errors import ConfigError, UsageError
from . import site_config
from .environment import Environment


def _bind(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--bind {text!r} is not HOST:PORT", hint="e.g. --bind 127.0.0.1:8080")
    return host.strip("[]"), int(port)


def web(args: argparse.Namespace, env: Environment) -> int:
    from ..web.access import hash_password

    if args.hash_password:
        password = (
            getpass.getpass(f"password for {args.hash_password}: ")
            if sys.stdin.isatty()
            else sys.stdin.readline().rstrip("\n")
        )
        if not password:
            raise UsageError("an empty password", hint="type one, or pipe it on stdin")
        print(f"{args.hash_password}:{hash_password(password)}", file=env.stdout)
        return 0
    host, port = _bind(args.bind)
    try:
        import uvicorn

        from ..web.access import Access
        from ..web.app import WebSite, create_app
    except ImportError as exc:
        raise ConfigError(
            f"sd web needs its extra ({exc.name} is missing)",
            hint="pip install 'sd-batch[web]' (scripts/venv installs it)",
        ) from exc
    access = Access.for_bind(
        host,
        Path(args.passwords) if args.passwords else None,
        args.remote_user_header,
        port=port,
        names=tuple(args.server_name or ()),
    )
    app = create_app(WebSite(site_config(args, env), access))
    who = (
        "no login: this machine only"
        if not access.require_auth
        else (
            f"user name from the {args.remote_user_header} header"
            if args.remote_user_header
            else f"HTTP basic against {args.passwords}"
        )
    )
    print(f"sd web: serving http://{args.bind}/ ({who})", file=env.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return 0
