"""End to end (real QEMU): a job's VM outlives its helper service. The service that ran the
job stops (systemd's restart in a package upgrade: `--on-stop handover`) or dies (SIGKILL);
the job's runner waits for the next service on the same socket, which takes the same VM up
again (`jobs.run` knows the runner by pid and start time), and the job ends with its outputs.
Each test runs its own helper services of this checkout (`conftest.PrivateService`)."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import (
    PrivateService,
    assert_jobs_gone,
    domain_state,
    qemu_host_missing,
    wait_until,
)

pytestmark = pytest.mark.qemu

SD = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "sd"
SLOW_SUB = """executable = slow.sh
arguments = {seconds}
output = slow.out
error = slow.err
+SDVMDescription = "minimal"
queue
"""
SLOW_SH = "#!/bin/sh\necho started\nsleep $1\necho outlived the service > slow.txt\n"


@pytest.fixture
def folder() -> Iterator[Path]:
    reason = qemu_host_missing("sdslot1")
    if reason:
        pytest.skip(reason)
    made = Path(tempfile.mkdtemp(prefix="sd-restart-", dir="/run"))
    made.chmod(0o755)
    yield made
    shutil.rmtree(made, ignore_errors=True)


@pytest.mark.parametrize(
    ("how", "seconds"),
    [
        ("handover", 12),  # the next service takes the VM up while it runs
        ("kill", 3),  # the service dies; the VM ends before the next one starts
    ],
)
def test_a_job_outlives_its_helper_service(
    folder: Path, tmp_path: Path, how: str, seconds: int
) -> None:
    old = PrivateService(folder, "--on-stop", "handover")
    old.start()
    (tmp_path / "slow.sub").write_text(SLOW_SUB.format(seconds=seconds))
    (tmp_path / "slow.sh").write_text(SLOW_SH)
    (tmp_path / "slow.sh").chmod(0o755)
    progress = tmp_path / "progress.log"
    with open(progress, "w", encoding="utf-8") as out:
        job = subprocess.Popen(
            [str(SD), "run", "slow.sub"],
            cwd=tmp_path,
            env=old.environ(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    new = PrivateService(folder)
    try:
        wait_until(lambda: re.search(r"VM (sd-job-[0-9a-f]+) ready", progress.read_text()), "a VM")
        found = re.search(r"VM (sd-job-[0-9a-f]+) ready", progress.read_text())
        assert found is not None
        domain = found.group(1)
        wait_until(lambda: domain_state(domain) == "running", "the guest to run", 120)
        if how == "handover":
            began = time.monotonic()
            assert old.stop(signal.SIGTERM, timeout=30) == 0
            assert time.monotonic() - began < 20, "handover waited for the run"
            assert "1 runs left to their runners" in old.log()
            assert domain_state(domain) == "running"
        else:
            assert old.stop(signal.SIGKILL) == -signal.SIGKILL
            wait_until(lambda: domain_state(domain) == "shut off", "the guest to end", 120)
        assert job.poll() is None, progress.read_text()  # the runner waits for a service
        new.start()
        assert job.wait(timeout=240) == 0, progress.read_text() + new.log()
    finally:
        if job.poll() is None:
            job.send_signal(signal.SIGTERM)
            job.wait(timeout=60)
        new.stop()
        old.stop(signal.SIGKILL)
    assert (tmp_path / "slow.txt").read_text() == "outlived the service\n"
    assert (tmp_path / "slow.out").read_text() == "started\n"
    assert (
        "the helper service restarted: waiting on the VM again"
        in (tmp_path / "slow.err").read_text()
    )
    assert "its runner came back: waiting on its VM again" in new.log()
    assert_jobs_gone([domain])
