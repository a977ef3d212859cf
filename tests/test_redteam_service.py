"""Attacks on today's service-restart work, each a bound: a second `run` for a running job
(another process of the job's uid, or another uid) never takes over the VM nor moves the
ledger's runner away from the live one; a slow caller cannot hold a handover stop up; and no
file of a job's scratch dir is imported by the hooks or the runner (`python -I`).
Same private service and test-driver site as tests/test_helper_service.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

import pytest
import test_helper_service as base

from sd_batch.helper.door import REQUEST_SECONDS

from conftest import Job, Service, User, helper_site, new_job, start_service

pytestmark = pytest.mark.libvirt
pytest.importorskip("libvirt", reason="libvirt-python is not installed")
pytest.importorskip("classad2", reason="the htcondor bindings are not installed")

users = base.users
service = base.service


def descendants(pid: int) -> set[int]:
    """The processes below PID (its fork server, confined children), from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _recorded_pid(job: Job) -> int | None:
    owner = job.owner()
    return None if owner is None or owner.process is None else owner.process.pid


# --- reattach: only the same runner (pid and start time) is "the runner again" -----------------
def test_a_second_run_from_another_process_of_the_same_uid_does_not_take_the_vm_over(
    service: Service, users: tuple[User, User]
) -> None:
    job = new_job(service, users[0], "second")
    first = base.started_run(job)
    code, _, err = job.hook("runner", "--job", job.id, timeout=30)
    assert code != 0, err  # refused: the job has its runner
    assert _recorded_pid(job) == first.pid  # the reaper still watches the live runner
    assert first.poll() is None  # its VM still runs for it
    assert first.wait(timeout=30) == 170  # and its run ends as it would have (the 2 s limit)
    assert job.hook("job_exit", "exit")[0] == 0


def test_a_job_prepared_again_takes_its_new_runner_as_the_one_to_watch(
    service: Service, users: tuple[User, User]
) -> None:
    """The refusal above never blocks HTCondor's retry: PREPARE_JOB starts the job afresh."""
    job = new_job(service, users[0], "retried")
    old = base.started_run(job)
    job.prepare()  # its old VM torn down; the old runner's wait ends
    assert old.wait(timeout=30) == 172  # its VM went with the retry: back to Idle
    new = job.start("runner", "--job", job.id)
    base.until(base.running_under(job, new.pid))
    assert new.wait(timeout=30) == 170  # the new run went to the site's 2 s limit
    assert job.hook("job_exit", "exit")[0] == 0


def test_another_uids_run_for_a_running_job_changes_nothing(
    service: Service, users: tuple[User, User]
) -> None:
    a, b = users
    job = new_job(service, a, "other-uid")
    first = base.started_run(job)
    code, out, err = job.hook("runner", "--job", job.id, user=b, timeout=30)
    assert code == 1 and out == "" and "has no prepared VM" in err, err
    assert _recorded_pid(job) == first.pid
    assert first.wait(timeout=30) == 170
    assert job.hook("job_exit", "exit")[0] == 0


# --- handover: a slow caller holds the stop up for its request line's bound at most ------------
def test_a_trickling_request_cannot_hold_a_handover_stop_past_the_request_bound(
    users: tuple[User, User],
) -> None:
    root = helper_site(Path(tempfile.mkdtemp(prefix="sd-svc-")), "max_run_seconds = 600\n")
    service = start_service(root, None, "--on-stop", "handover")
    try:
        job = new_job(service, users[0], "handover")
        job.prepare()
        runner = job.start(
            "runner", "--job", job.id, env={"_CONDOR_SMARTDOMAINS_REATTACH_SECONDS": "1"}
        )
        base.until(base.running_under(job, runner.pid))
        children = descendants(service.proc.pid)
        assert children  # its fork server at least
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as slow:
            slow.connect(str(service.socket))
            slow.sendall(b'{"action": ')  # and then a byte a second, never the newline
            time.sleep(1.0)  # accepted: its thread reads the line
            service.proc.send_signal(signal.SIGTERM)
            began = time.monotonic()
            while service.proc.poll() is None and time.monotonic() - began < 60:
                with contextlib.suppress(OSError):
                    slow.sendall(b" ")
                time.sleep(1.0)
            took = time.monotonic() - began
        assert service.proc.poll() == 0, service.log_text()
        assert took < REQUEST_SECONDS + 5, took  # not the run's 600 s, nor for ever
        assert "no whole request line within" in service.log_text()  # it was waited for
        assert "1 runs left to their runners" in service.log_text()
        base.until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), 10.0)
        # the test driver's VM died with the service: the runner, finding no next one, requeues
        assert runner.wait(timeout=30) == 172
        base.cleanup_without_the_service(job)
        assert service.leftovers() == []
    finally:
        if service.proc.poll() is None:
            service.proc.kill()
            service.proc.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


# --- python -I: nothing of the scratch dir is imported ------------------------------------------
#: Modules a hook or the runner imports, and the files Python runs at start-up when allowed.
SHADOWS = ("json", "socket", "tarfile", "signal", "logging", "sitecustomize", "usercustomize")


def test_no_file_of_the_scratch_dir_is_imported_by_the_hooks_or_the_runner(
    service: Service, users: tuple[User, User]
) -> None:
    job = new_job(service, users[0], "shadows")
    marker = job.scratch / "imported"

    def plant(path: Path, name: str) -> None:
        path.write_text(f"open({str(marker)!r}, 'a').write({name!r} + '\\n')\n")

    site = job.scratch / ".local" / "lib" / "python{}.{}".format(*sys.version_info[:2])
    (site / "site-packages").mkdir(parents=True)
    for name in SHADOWS:
        plant(job.scratch / f"{name}.py", name)
    plant(job.scratch / "startup.py", "PYTHONSTARTUP")
    (job.scratch / "evil.pth").write_text(f"import os; open({str(marker)!r}, 'a').write('pth')\n")
    (site / "site-packages" / "evil.pth").write_text((job.scratch / "evil.pth").read_text())
    for path in job.scratch.rglob("*"):
        os.chown(path, job.user.uid, job.user.gid)
    env = {  # what a job's environment could set for its runner
        "HOME": str(job.scratch),
        "PYTHONPATH": str(job.scratch),
        "PYTHONSTARTUP": str(job.scratch / "startup.py"),
        "PYTHONUSERBASE": str(job.scratch / ".local"),
        "PYTHONHOME": str(job.scratch),
    }

    def run(hook: str, *argv: str) -> tuple[int, str]:
        proc = job.start(hook, *argv, env=env)
        out, err = proc.communicate(job.ad.encode(), timeout=60)
        return proc.returncode, (out + err).decode()

    code, text = run("prepare_job")
    assert code == 0 and "HookStatusCode = 0" in text, text
    code, text = run("runner", "--job", job.id, "--socket", str(service.socket))
    assert code == 170, text  # the test driver's VM ran to the site's 2 s limit
    code, text = run("job_exit", "exit")
    assert code == 0 and "removed 1 domain" in text, text
    assert not marker.exists(), marker.read_text()


# --- open: the runner is the job's Cmd, so the job's environment reaches it ---------------------
def test_a_jobs_environment_cannot_make_the_runner_run_a_program_of_its_sandbox(
    service: Service, users: tuple[User, User]
) -> None:
    job = new_job(service, users[0], "native")
    marker = job.scratch / "ran-natively"
    evil = job.scratch / "evil"
    evil.write_text(f"#!/bin/sh\n: > {marker}\n")
    evil.chmod(0o755)
    os.chown(evil, job.user.uid, job.user.gid)
    job.prepare()
    proc = job.start("runner", "--job", job.id, env={"SD_BATCH_PYTHON": str(evil)})
    proc.communicate(timeout=60)
    assert job.hook("job_exit", "exit")[0] == 0
    assert not marker.exists()
    # ...nor a helper command of its own, once PREPARE_JOB named the door it used
    job.prepare()
    proc = job.start(
        "runner",
        "--job",
        job.id,
        "--socket",
        str(service.socket),
        env={"_CONDOR_SMARTDOMAINS_HELPER": str(evil), "_CONDOR_SMARTDOMAINS_HELPER_SOCKET": ""},
    )
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 170, err  # it reached the service: the test driver's VM never stops
    assert job.hook("job_exit", "exit")[0] == 0
    assert not marker.exists()
