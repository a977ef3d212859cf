"""End to end (real QEMU): an evicted job's VM is saved, travels as HTCondor moves files on
eviction (ON_EXIT_OR_EVICT's spool), and resumes where it stopped (issue 18).

`sd run --evict-after` plays the starter's vacate (the job's KillSig, which the transform makes
SIGUSR2; JOB_EXIT evict; the output sandbox to the spool) and the schedd's next start (the
spooled files back into a new scratch dir). The hooks reach a helper service of THIS checkout,
started here on a socket of its own (the system one runs another checkout's code).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sd_batch.batch import checkpoint
from sd_batch.config.site import SYSTEM_CONFIG, load_config
from sd_batch.staging import CHECKPOINT_FILE

from conftest import PrivateService, assert_jobs_gone, qemu_host_missing

pytestmark = pytest.mark.qemu

ROOT = Path(__file__).resolve().parent.parent
SD = ROOT / ".venv" / "bin" / "sd"
PYTHON = ROOT / ".venv" / "bin" / "python"
SLOT_USER = "sdslot1"
TIMEOUT = 300.0
STEPS = 16


def _missing() -> str | None:
    return qemu_host_missing(SLOT_USER)


@pytest.fixture(scope="module")
def service() -> Iterator[str]:
    """A helper service of this checkout on a socket of its own; stopped by its pid."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    folder = Path(tempfile.mkdtemp(prefix="sd-evict-", dir="/run"))
    folder.chmod(0o755)
    private = PrivateService(folder)
    try:
        private.start()
        yield str(private.sock)
    finally:
        private.stop()
        shutil.rmtree(folder, ignore_errors=True)


def _env(sock: str) -> dict[str, str]:
    return {**PrivateService(Path(sock).parent).environ()}


def assert_nothing_left(err: str, job_dir: Path) -> None:
    domains = sorted(set(re.findall(r"VM (sd-job-[0-9a-f]+) ready", err)))
    assert domains, err
    assert_jobs_gone(domains)
    assert not (job_dir / CHECKPOINT_FILE).exists()  # consumed: never an output


COUNT_SUB = f"""executable = count.sh
arguments = {STEPS}
output = job.out
error = job.err
+SDVMDescription = "minimal"
queue
"""
#: Counts to N, a second a step, each step with the guest's clock and boot id.
COUNT_SH = """#!/bin/sh
boot=$(cat /proc/sys/kernel/random/boot_id)
echo "started $(date +%s) $boot" >> count.txt
i=1
while [ $i -le $1 ]; do
  echo "step $i $(date +%s) $boot" >> count.txt
  sleep 1
  i=$((i+1))
done
echo "counted to $1"
"""


def test_an_evicted_job_resumes_where_it_stopped(service: str, tmp_path: Path) -> None:
    (tmp_path / "count.sub").write_text(COUNT_SUB)
    (tmp_path / "count.sh").write_text(COUNT_SH)
    proc = subprocess.Popen(
        [str(SD), "run", "count.sub", "--evict-after", "10"],
        cwd=tmp_path,
        env=_env(service),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    evicted_at = time.time()  # the host's clock when the first run was over
    out, err = proc.communicate(timeout=TIMEOUT)
    assert re.fullmatch(
        r"job 1\.0: evicted in [\d.]+ s: evicted after 10 s; spooled "
        rf"{CHECKPOINT_FILE}\n",
        first,
    ), first + err
    assert proc.returncode == 0, first + out + err
    assert "resumes from its checkpoint" in err, err
    lines = (tmp_path / "count.txt").read_text().splitlines()
    started, *steps = (line.split() for line in lines)
    assert [int(s[1]) for s in steps] == list(range(1, STEPS + 1))  # each step once, in order
    assert {s[3] for s in steps} == {started[2]}  # one boot: the guest never booted again
    # the count began in the first run, before it was evicted (a fresh boot would read the
    # host's clock after it); the guest's clock stood still while it was saved
    assert int(started[1]) < evicted_at - 2, (started, evicted_at)
    assert (tmp_path / "job.out").read_text() == f"counted to {STEPS}\n"
    assert_nothing_left(err, tmp_path)


ECHO_SUB = """executable = /bin/echo
transfer_executable = false
arguments = ran
transfer_input_files = sd-batch.checkpoint
output = job.out
error = job.err
+SDVMDescription = "minimal"
queue
"""


def _run_with_checkpoint(service: str, job_dir: Path, data: bytes) -> tuple[str, str]:
    (job_dir / "echo.sub").write_text(ECHO_SUB)
    (job_dir / CHECKPOINT_FILE).write_bytes(data)
    done = subprocess.run(
        [str(SD), "run", "echo.sub"],
        cwd=job_dir,
        env=_env(service),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (job_dir / "job.out").read_text() == "ran\n"  # it ran afresh, not held
    (job_dir / CHECKPOINT_FILE).unlink()  # the user's own input file
    assert_nothing_left(done.stderr, job_dir)
    return done.stderr, (job_dir / "job.err").read_text()


def test_a_corrupt_checkpoint_starts_the_job_afresh_and_says_why(
    service: str, tmp_path: Path
) -> None:
    _err, job_err = _run_with_checkpoint(service, tmp_path, os.urandom(200_000))
    assert re.fullmatch(
        r"sd-batch: the job starts afresh: the checkpoint is corrupt: .*\n", job_err
    ), job_err


def test_another_jobs_checkpoint_starts_the_job_afresh_and_says_why(
    service: str, tmp_path: Path
) -> None:
    config = load_config(SYSTEM_CONFIG if SYSTEM_CONFIG.is_file() else None)
    folder = tmp_path / "saved"
    folder.mkdir()
    (folder / "state").write_bytes(b"not really a VM")
    other = checkpoint.Identity("elsewhere#9.0#1", "minimal", "kvm", 256, 1, {})
    packed = tmp_path / "packed"
    checkpoint.pack(
        packed,
        other,
        {checkpoint.STATE: folder / "state"},
        key=checkpoint.site_key(config.state_dir),
        folder=folder,
        limit=1 << 20,
    )
    _err, job_err = _run_with_checkpoint(service, tmp_path, packed.read_bytes())
    assert (
        "the job starts afresh: the checkpoint cannot resume this job: it belongs to another "
        "job (elsewhere#9.0#1)" in job_err
    ), job_err
