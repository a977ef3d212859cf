"""Attacks on today's service-restart work, each a bound: a second `run` for a running job
(another process of the job's uid, or another uid) never takes over the VM nor moves the
ledger's runner away from the live one; a slow caller cannot hold a handover stop up; and no
file of a job's scratch dir is imported by the hooks or the runner (`python -I`).
Same private service and test-driver site as tests/test_helper_service.py.
"""

from __future__ import annotations

import pytest
import test_helper_service as base

from conftest import Job, Service, User, new_job

pytestmark = pytest.mark.libvirt
pytest.importorskip("libvirt", reason="libvirt-python is not installed")
pytest.importorskip("classad2", reason="the htcondor bindings are not installed")

users = base.users
service = base.service


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
