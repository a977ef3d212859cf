"""Shared pytest wiring: the `--regenerate-golden` switch and the `golden` comparison fixture."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path

import pytest

GoldenCheck = Callable[[Path, str], None]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--regenerate-golden",
        action="store_true",
        default=False,
        help="rewrite every expected-output (golden) file from what the code now produces",
    )


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> GoldenCheck:
    """Compare text with a stored expected file, as virt-manager's test suite does.

    A missing file is written on first run (review it, then commit it); `--regenerate-golden`
    rewrites them all; a mismatch fails with a unified diff, expected first.
    """
    regenerate = bool(request.config.getoption("--regenerate-golden"))

    def check(path: Path, actual: str) -> None:
        if regenerate or not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(actual, encoding="utf-8")
        expected = path.read_text(encoding="utf-8")
        if expected != actual:
            diff = difflib.unified_diff(
                expected.splitlines(keepends=True),
                actual.splitlines(keepends=True),
                fromfile=str(path),
                tofile="generated",
            )
            pytest.fail(
                f"output differs from {path} (pytest --regenerate-golden rewrites it):\n"
                + "".join(diff),
                pytrace=False,
            )

    return check
