"""Shared pytest wiring: the `--regenerate-golden` switch, the `golden` comparison fixture and
the `job_site` fixture. The scaffolding the test files import as `from conftest import ...`
lives in `sites.py` (a site on libvirt's test driver, in-process `sd`, jobs handed to
`jobs.prepare`) and `services.py` (private helper services, hooks run as slot users, the
real-QEMU tests' checks), re-exported here.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from services import HELLO as HELLO
from services import SUBMIT as SUBMIT
from services import Job as Job
from services import PrivateService as PrivateService
from services import Service as Service
from services import User as User
from services import assert_jobs_gone as assert_jobs_gone
from services import domain_state as domain_state
from services import helper_site as helper_site
from services import new_job as new_job
from services import qemu_host_missing as qemu_host_missing
from services import start_service as start_service
from services import system_domains as system_domains
from sites import MINIMAL as MINIMAL
from sites import JobSite as JobSite
from sites import Run as Run
from sites import SdSite as SdSite
from sites import fake_kernel as fake_kernel
from sites import held as held
from sites import ledger_rows as ledger_rows
from sites import node_xml as node_xml
from sites import sd_in_process as sd_in_process
from sites import site_environ as site_environ
from sites import wait_until as wait_until
from sites import write_node as write_node
from sites import write_site_toml as write_site_toml

from sd_batch.hypervisor.connections import Connections

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


@pytest.fixture
def job_site(tmp_path: Path) -> Iterator[JobSite]:
    """A JobSite in TMP_PATH: a 2-CPU 4 GiB test-driver host, the minimal guest's (fake) kernel.
    Test files take it by their own name: `site = job_site`."""
    write_node(tmp_path / "node.xml", cpus=2, memory_kib=4 << 20)
    fake_kernel(tmp_path / "images")
    sandbox = tmp_path / "scratch"
    sandbox.mkdir()
    made = JobSite(tmp_path, sandbox, Connections())
    yield made
    made.connections.close()
