"""The debian-batch guest end to end: build (or reuse) it, run one job in it through `sd run`.

Slow (the first build runs mmdebstrap: about a minute, and needs the Debian mirror), so CI
skips it (`.ci/run` passes `-m "not slow"`); run it with `scripts/test -m slow -s`. The job is
a dynamically linked Debian program (python3, which runs coreutils' sha256sum): neither exists
in the minimal guest. Same host needs as tests/test_run_e2e.py (scripts/setup-host), plus root
for the build.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import time
from pathlib import Path

import pytest
from test_run_e2e import _missing, assert_nothing_left, sd_run

from sd_batch.config.site import SYSTEM_CONFIG, load_config

pytestmark = [pytest.mark.slow, pytest.mark.qemu]

ROOT = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT = 1200.0

JOB_SUB = """executable = /usr/bin/python3
transfer_executable = false
arguments = job.py
transfer_input_files = job.py, input.txt
output = job.out
error = job.err
+SDVMDescription = "debian-batch"
queue
"""
JOB_PY = """import hashlib, os, subprocess, sys
line = subprocess.run(["sha256sum", "input.txt"], capture_output=True, text=True, check=True)
digest = line.stdout.split()[0]
print("sha256", digest == hashlib.sha256(open("input.txt", "rb").read()).hexdigest(), digest)
print("uid", os.getuid(), "debian", open("/etc/debian_version").read().split(".")[0])
print("python", sys.version_info[0], "on", os.path.realpath(sys.executable))
open("made.txt", "w").write("written in the guest\\n")
print("to stderr", file=sys.stderr)
sys.exit(5)
"""
INPUT = "hello debian-batch\n"


@pytest.fixture(scope="module")
def image() -> Path:
    """`scripts/build-guest --full` into the site image folder (a second or two when current)."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    started = time.monotonic()
    done = subprocess.run(
        [str(ROOT / "scripts" / "build-guest"), "--full"],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"\nbuild-guest --full: {time.monotonic() - started:.1f} s\n{done.stdout}")
    config = load_config(SYSTEM_CONFIG if SYSTEM_CONFIG.is_file() else None)
    folder = config.image_dir / "debian-batch"
    for name in ("vmlinux", "initrd.img", "root.qcow2"):
        assert (folder / name).is_file(), done.stdout
    return folder


def test_a_job_runs_a_debian_program_in_debian_batch(image: Path, tmp_path: Path) -> None:
    (tmp_path / "job.sub").write_text(JOB_SUB, encoding="utf-8")
    (tmp_path / "job.py").write_text(JOB_PY, encoding="utf-8")
    (tmp_path / "input.txt").write_text(INPUT, encoding="utf-8")
    started = time.monotonic()
    run = sd_run(tmp_path / "job.sub")
    elapsed = time.monotonic() - started
    err = (tmp_path / "job.err").read_text() if (tmp_path / "job.err").is_file() else ""
    assert run.code == 5, run.out + run.err + err
    summary = re.fullmatch(r"job 1\.0: exit 5 in ([\d.]+) s; outputs: (.*)\n", run.out)
    assert summary is not None, run.out + run.err
    assert summary.group(2).split(", ") == ["job.out", "job.err", "made.txt"]
    digest = hashlib.sha256(INPUT.encode()).hexdigest()
    assert (tmp_path / "job.out").read_text() == (
        f"sha256 True {digest}\nuid 1000 debian 12\npython 3 on /usr/bin/python3.11\n"
    )
    assert err == "to stderr\n"
    assert (tmp_path / "made.txt").read_text() == "written in the guest\n"
    assert "(debian-batch, 1024 MiB)" in run.err
    assert_nothing_left(run.domains)
    print(f"sd run (debian-batch): {elapsed:.1f} s wall, job {summary.group(1)} s")
