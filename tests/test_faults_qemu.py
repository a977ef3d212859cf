"""Faults on the real path (root, libvirtd, QEMU, the minimal guest), through the fault
matrix's own scenarios (`benchmarks/faults.py --only ...`): each row's outcome as HTCondor would
see it, and nothing leaked (domains, ledger rows, files).

The full matrix (23 rows, ~5 minutes) stays a benchmark; these are the rows a regression would
most likely break: a VM paused by a full host disk, an overlay that cannot be made, and libvirtd
restarting under a running job (it restarts the real daemon: the suite runs tests one by one).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.qemu
REPO = Path(__file__).resolve().parent.parent


def matrix(only: str) -> list[str]:
    if os.geteuid() != 0:
        pytest.skip("the fault matrix mounts tmpfs and drives the helper as root")
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "faults.py"), "--only", only],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and lines[-1] == "leaks: 0", done.stdout + done.stderr
    return [line for line in lines[1:-1] if only in line]


def test_a_vm_paused_by_a_full_host_disk_is_destroyed_and_its_job_requeued() -> None:
    (row,) = matrix("VM running (result write)")
    outcome = row.split(" | ")[2]
    assert "requeued (OnExitRemove false)" in outcome
    assert "was paused: vdb: no space left on the host's disk" in outcome
    assert row.endswith("| 0 | 0")


def test_an_overlay_the_full_state_dir_cannot_hold_requeues_the_job() -> None:
    (row,) = matrix("PREPARE_JOB overlay")
    assert "requeued (380)" in row and "No space left on device" in row
    assert row.endswith("| 0 | 0")


def test_a_job_survives_libvirtd_restarting_while_its_vm_runs() -> None:
    (row,) = matrix("libvirtd restarting | runner")
    assert "exit 0 (output ok) (the runner reconnected)" in row
    assert row.endswith("| 0 | 0")
