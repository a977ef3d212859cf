"""The `sd` command: argument parsing, and the one place that turns errors into exit codes.

Every subcommand lives in `sd_batch/cli/` and is imported only when it runs, so `sd validate`
does not pay for libvirt or the HTCondor bindings. Below this module nothing prints to the user
or exits; everything raises an `SdError`, which `main` shows as one clear message (with the
source line and a caret for descriptions) and maps to the error's `exit_code`. `--debug` shows
the traceback too. May import: everything in sd_batch, argparse, logging, sys.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TextIO

from ..errors import SdError
from .environment import Environment
from .parser import Handler, build_parser

__all__ = ["Environment", "console_main", "main", "sf_start", "sf_terminate"]


def sf_start() -> None:
    """`sfStart HOST NAME FILE`: the seed's spelling of `sd start`."""
    sys.exit(main(["start", *sys.argv[1:]]))


def sf_terminate() -> None:
    """`sfTerminate HOST NAME`: the seed's spelling of `sd terminate`."""
    sys.exit(main(["terminate", *sys.argv[1:]]))


@contextmanager
def _logging_to(stream: TextIO, debug: bool) -> Iterator[None]:
    """Log records of this call to STREAM, this call's stderr, and only while it runs.

    `logging.basicConfig` would keep the first call's stream for the life of the process, so a
    second in-process `main` (a test, `sd web`'s own calls) would log into the first's.
    """
    root = logging.getLogger()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("sd: %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG if debug else logging.WARNING)
    level = root.level
    root.addHandler(handler)
    if debug:
        root.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def main(argv: Sequence[str] | None = None, env: Environment | None = None) -> int:
    """Run one `sd` command; returns the exit code (the console script exits with it)."""
    env = env or Environment()
    args_list = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args_list
    with _logging_to(env.stderr, debug):
        return _run(args_list, env, debug)


def _run(args_list: list[str], env: Environment, debug: bool) -> int:
    try:
        parser = build_parser()
        if not args_list:
            parser.print_help(env.stdout)
            return 0
        args = parser.parse_args(args_list)
        if args.command is None:
            parser.print_help(env.stdout)
            return 0
        handler: Handler = args.handler
        return int(handler(args, env))
    except SdError as exc:
        if debug:
            import traceback

            traceback.print_exc(file=env.stderr)
        print(f"sd: error: {exc}", file=env.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("sd: interrupted", file=env.stderr)
        return 130
    except SystemExit as exc:  # argparse's --help
        return int(exc.code or 0)


def console_main() -> None:
    sys.exit(main())
