"""What each `sd` subcommand runs: its command module's function, imported only when it runs,
so `sd validate` does not pay for libvirt or the HTCondor bindings (`parser` names these).

May import: the cli modules (lazily, each from its handler), argparse.
"""

from __future__ import annotations

import argparse

from .environment import Environment


def validate(args: argparse.Namespace, env: Environment) -> int:
    from .lang import validate as run

    return run(args, env)


def render(args: argparse.Namespace, env: Environment) -> int:
    from .lang import render as run

    return run(args, env)


def templates(args: argparse.Namespace, env: Environment) -> int:
    from .lang import templates as run

    return run(args, env)


def start(args: argparse.Namespace, env: Environment) -> int:
    from .pool import start as run

    return run(args, env)


def terminate(args: argparse.Namespace, env: Environment) -> int:
    from .pool import terminate as run

    return run(args, env)


def status(args: argparse.Namespace, env: Environment) -> int:
    from .pool import show_status as run

    return run(args, env)


def plan(args: argparse.Namespace, env: Environment) -> int:
    from .plan import plan as run

    return run(args, env)


def watch(args: argparse.Namespace, env: Environment) -> int:
    from .plan import watch as run

    return run(args, env)


def images_push(args: argparse.Namespace, env: Environment) -> int:
    from .images import images_push as run

    return run(args, env)


def run(args: argparse.Namespace, env: Environment) -> int:
    from .run import run

    return run(args, env)


def reap(args: argparse.Namespace, env: Environment) -> int:
    from .reap import run

    return run(args, env)


def web(args: argparse.Namespace, env: Environment) -> int:
    from .web import web as run

    return run(args, env)


def setup_host(args: argparse.Namespace, env: Environment) -> int:
    from .admin import setup_host as run

    return run(args, env)


def paths(args: argparse.Namespace, env: Environment) -> int:
    from .admin import paths as run

    return run(args, env)
