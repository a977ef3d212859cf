"""The helper service: the hooks' one interpreter per hook, and the same privilege boundary.

A private service runs as root (`python -I -m sd_batch.helper.service --socket TMP`), on a
site config whose hypervisor is libvirt's test driver (`test:///TMP/node.xml`, one simulated
host for the service's whole life). The hooks (`condor_hooks/*`) run as separate processes as
slot users and find it through `_CONDOR_SMARTDOMAINS_HELPER_SOCKET`; their PATH holds no
`sudo`, so a hook that fell back to the helper command would fail instead of reaching the real
libvirt. The test driver's VMs never power off by themselves: a run ends by the site's
`max_run_seconds` (170), or by the runner hanging up (171: the VM was destroyed).
Needs root, the group sd-slots and the slot user sdslot1 (scripts/setup-host).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sd_batch.config.site import load_config
from sd_batch.data import HOOKS_DIR
from sd_batch.helper import runner
from sd_batch.helper.hooks import runner_arguments
from sd_batch.ledger.store import OwnerStatus

from conftest import Job, Service, User, helper_site, new_job, start_service, wait_until

pytestmark = pytest.mark.libvirt
pytest.importorskip("libvirt", reason="libvirt-python is not installed")
pytest.importorskip("classad2", reason="the htcondor bindings are not installed")

GROUP, USER_A, USER_B, OUTSIDER = "sd-slots", "sdslot1", "sdtest-svc-b", "sdtest-svc-x"


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (a root service, slot users)"
    try:
        grp.getgrnam(GROUP)
        pwd.getpwnam(USER_A)
    except KeyError:
        return f"no group {GROUP} or user {USER_A}: run scripts/setup-host"
    return None


def useradd(*args: str) -> None:
    """A system user with no home; again while another test holds /etc/passwd's lock."""
    for _ in range(20):
        made = subprocess.run(
            ["useradd", "-r", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin", *args],
            capture_output=True,
            text=True,
        )
        if made.returncode == 0:
            return
        time.sleep(0.5)
    raise AssertionError(f"useradd {' '.join(args)}: {made.stderr}")


@pytest.fixture(scope="module")
def users() -> Iterator[tuple[User, User]]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    subprocess.run(["userdel", USER_B], check=False, capture_output=True)  # an interrupted run's
    useradd("-g", GROUP, USER_B)
    try:
        yield User.named(USER_A), User.named(USER_B)
    finally:
        subprocess.run(["userdel", USER_B], check=False, capture_output=True)


@pytest.fixture
def service(users: tuple[User, User]) -> Iterator[Service]:
    root = helper_site(Path(tempfile.mkdtemp(prefix="sd-svc-")), "max_run_seconds = 2\n")
    made = start_service(root)
    try:
        yield made
        assert made.leftovers() == [], "a test left a ledger row or a job folder"
    finally:
        made.proc.terminate()
        made.proc.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


def until(check: Callable[[], object], seconds: float = 15.0) -> None:
    wait_until(check, "the service", seconds)


def started_run(job: Job) -> subprocess.Popen[bytes]:
    """JOB prepared, its runner started, and the service waiting on its VM for it."""
    job.prepare()
    runner = job.start("runner", "--job", job.id)
    until(running_under(job, runner.pid))  # the runner's pid, not the service's, is recorded
    return runner


def running_under(job: Job, pid: int) -> Callable[[], bool]:
    def check() -> bool:
        owner = job.owner()
        return (
            owner is not None
            and owner.status is OwnerStatus.ACTIVE
            and owner.process is not None
            and owner.process.pid == pid
        )

    return check


# --- the hooks through the service --------------------------------------------------------------
def test_prepare_run_and_job_exit_go_through_the_service(
    service: Service, users: tuple[User, User]
) -> None:
    job = new_job(service, users[0], "life")
    code, out, err = job.hook("prepare_job")
    assert code == 0 and "HookStatusCode = 0" in out, err
    assert f'SDHelperSocket = "{service.socket}"' in out  # for JOB_EXIT: no knob to read
    # ... and for the runner, which asks it before it imports anything of ours: with no
    # socket in its environment (empty: "never use the service") it still reaches this one
    assert f'Arguments = "--job {job.id} --socket {service.socket}"' in out
    runner = job.start(
        "runner",
        "--job",
        job.id,
        "--socket",
        str(service.socket),
        env={"_CONDOR_SMARTDOMAINS_HELPER_SOCKET": ""},
    )
    out_bytes, err_bytes = runner.communicate(timeout=60)
    code, out, err = runner.returncode, out_bytes.decode(), err_bytes.decode()
    assert code == 170, err  # the site's max_run_seconds: the test driver's VM never stops
    assert "did not power off within 2 s" in err and out == ""
    code, out, err = job.hook("job_exit", "exit")
    assert (code, out) == (0, ""), err
    assert "removed 1 domain, 0 volumes, 3 files" in err
    log = service.log_text()
    for action in ("prepare", "run", "cleanup"):
        assert f"{action} {job.id} for uid {job.user.uid} (pid " in log, log


def test_the_service_holds_the_ledger_open_so_a_request_ends_without_a_checkpoint(
    service: Service, users: tuple[User, User]
) -> None:
    """SQLite checkpoints a WAL database (syncs it, resets its WAL) when its last connection
    closes: the service's own idle connection keeps a request's close from being that one."""
    job = new_job(service, users[0], "held")
    wal = load_config(service.config).state_dir / "ledger.sqlite3-wal"
    code, out, err = job.hook("prepare_job")
    assert code == 0 and "HookStatusCode = 0" in out, err
    assert wal.is_file() and wal.stat().st_size > 0, "PREPARE_JOB's close checkpointed"
    code, out, err = job.hook("job_exit", "exit")
    assert (code, out) == (0, "") and "removed 1 domain" in err, err
    assert wal.is_file() and wal.stat().st_size > 0, "JOB_EXIT's close checkpointed"
    assert service.leftovers() == []


def test_the_service_reads_the_site_config_for_each_request(
    service: Service, users: tuple[User, User]
) -> None:
    job = new_job(service, users[0], "config")
    with open(service.config, "a", encoding="utf-8") as config:  # under [policy]
        config.write("max_memory_mib = 128\n")
    code, out, _ = job.hook("prepare_job")
    assert code == 1 and "HookStatusCode = 180" in out and "128" in out, out
    assert service.leftovers() == []


def test_another_slot_user_can_neither_run_nor_clean_the_first_users_job(
    service: Service, users: tuple[User, User]
) -> None:
    a, b = users
    job = new_job(service, a, "mine")
    job.prepare()
    code, out, err = job.hook("runner", "--job", job.id, user=b)
    assert code == 1 and out == "" and "has no prepared VM" in err, err
    code, _, err = job.hook("job_exit", "exit", user=b)
    assert code == 0 and "removed nothing (already clean)" in err, err
    assert job.owner() is not None  # A's job is still there, never started
    code, _, err = job.hook("job_exit", "exit")
    assert "removed 1 domain, 0 volumes, 3 files" in err, err


def test_a_job_exit_right_after_prepare_waits_for_the_paused_start_then_removes_it(
    service: Service, users: tuple[User, User]
) -> None:
    """The service starts a prepared VM paused after answering PREPARE_JOB; a hold or remove
    before the runner ran sends JOB_EXIT at once: its cleanup waits for that start (never
    racing it into a domain no ledger row names), then destroys and removes everything."""
    job = new_job(service, users[0], "early-exit")
    job.prepare()
    code, _, err = job.hook("job_exit", "remove")
    assert code == 0 and "removed 1 domain, 0 volumes, 3 files" in err, err
    log = service.log_text()
    started = log.index(f"prepare {job.id} for uid {job.user.uid}")
    paused = log.index("VM started paused in", started)
    assert paused < log.index(f"cleanup {job.id} for uid {job.user.uid}", started), log


# --- the runner's life is the job's ---------------------------------------------------------------
def test_the_runner_hanging_up_destroys_its_vm_at_once(
    service: Service, users: tuple[User, User]
) -> None:
    job = new_job(service, users[0], "hangup")
    runner = started_run(job)
    time.sleep(0.5)  # well into the wait (the VM's start came just before it)
    runner.send_signal(signal.SIGTERM)  # HTCondor's hold, remove or evict
    assert runner.wait(timeout=10) == -signal.SIGTERM
    until(lambda: "exit 171" in service.log_text(), 5.0)  # not the 2 s run limit's 170
    log = service.log_text()
    assert f"run {job.id} for uid {job.user.uid} (pid {runner.pid}): the runner hung up" in log
    assert "stopped without a result" in log  # destroyed: the test driver's VM never stops
    assert job.hook("job_exit", "remove")[0] == 0


def test_a_runner_that_died_while_the_service_ran_its_vm_is_reaped(
    service: Service, users: tuple[User, User]
) -> None:
    job = new_job(service, users[0], "reaped")
    runner = started_run(job)
    assert service.ask(b'{"action": "reap"}\n') == {"ok": True, "actions": []}
    runner.kill()
    runner.wait(timeout=10)
    reply = service.ask(b'{"action": "reap"}\n')
    assert reply["ok"] is True
    assert reply["actions"] == [
        f"removed job {job.key.owner_id} on test://{service.root}/node.xml (1 domain, 0 volumes,"
        f" 3 files): its runner (process {runner.pid}) died",
        f"removed job folder {service.root}/state/jobs/{job.key.digest}: its job is reaped",
    ]


# --- many at once, and without the service ------------------------------------------------------
def test_concurrent_jobs_through_one_service(service: Service, users: tuple[User, User]) -> None:
    a, b = users
    jobs = [new_job(service, (a, b)[i % 2], f"many{i}") for i in range(6)]
    blocked = jobs[0]
    blocked.prepare()
    runner = blocked.start("runner", "--job", blocked.id)  # holds a request for 2 s
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(Job.prepare, jobs[1:]))
        probes = list(pool.map(lambda _: service.ask(b'{"action": "probe"}\n'), range(6)))
    assert all(p["ok"] for p in probes)
    assert runner.wait(timeout=30) == 170
    with ThreadPoolExecutor(6) as pool:
        exits = list(pool.map(lambda j: j.hook("job_exit", "exit"), jobs))
    assert all("removed 1 domain, 0 volumes, 3 files" in err for _, _, err in exits), exits


def test_without_a_socket_the_hooks_use_the_helper_command(
    service: Service, tmp_path: Path
) -> None:
    """As root the helper command is the helper module itself (a slot user's is sudo)."""
    job = new_job(service, User.named("root"), "fallback")
    env = {
        **job.env(),
        "_CONDOR_SMARTDOMAINS_HELPER_SOCKET": str(tmp_path / "none.sock"),
        "SD_BATCH_CONFIG": str(service.config),
        "PATH": "/usr/bin:/bin",
    }
    outputs = [
        subprocess.run(
            [str(HOOKS_DIR / hook), *argv],
            input=job.ad,
            env=env,
            cwd=job.scratch,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        for hook, argv in (("prepare_job", []), ("job_exit", ["exit"]))
    ]
    assert "HookStatusCode = 0" in outputs[0].stdout, outputs[0].stderr
    assert f"job {job.id} (exit): removed" in outputs[1].stderr
    assert job.id not in service.log_text()  # the service never saw it


def test_job_exit_finds_the_socket_prepare_job_used_in_the_job_ad(
    service: Service, users: tuple[User, User]
) -> None:
    """Before the knob: reading it costs a hook HTCondor's bindings (~70 ms)."""
    job = new_job(service, users[0], "known")
    job.prepare()
    config = service.root / "condor_config"  # a knob naming nowhere: only the ad leads home
    config.write_text("SMARTDOMAINS_HELPER_SOCKET = /nonexistent/helper.sock\n")
    env = {**job.env(), "CONDOR_CONFIG": str(config)}
    del env["_CONDOR_SMARTDOMAINS_HELPER_SOCKET"]
    ad = f'{job.ad}SDHelperSocket = "{service.socket}"\n'
    done = subprocess.run(
        [str(HOOKS_DIR / "job_exit"), "exit"],
        input=ad,
        env=env,
        cwd=job.scratch,
        capture_output=True,
        text=True,
        timeout=60,
        user=job.user.uid,
        group=job.user.gid,
        check=False,
    )
    assert "removed 1 domain, 0 volumes, 3 files" in done.stderr, done.stderr


def test_a_helper_command_named_explicitly_wins_over_the_socket(
    service: Service, tmp_path: Path
) -> None:
    helper = tmp_path / "helper"
    helper.write_text(
        '#!/bin/sh\necho \'{"ok": true, "templates": ["fake"], '
        '"free_memory_mib": 1, "reason": ""}\'\n',
        encoding="utf-8",
    )
    helper.chmod(0o755)
    env = {
        "PATH": "/usr/bin:/bin",
        "CONDOR_CONFIG": "/dev/null",
        "_CONDOR_SMARTDOMAINS_HELPER": str(helper),
        "_CONDOR_SMARTDOMAINS_HELPER_SOCKET": str(service.socket),
    }
    done = subprocess.run(
        [str(HOOKS_DIR / "startd_cron")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert 'SmartDomainsTemplates = "fake"' in done.stdout, done.stderr


def test_sigterm_stops_listening_at_once_and_finishes_the_runs_under_way(
    service: Service, users: tuple[User, User]
) -> None:
    job = new_job(service, users[0], "drain")
    runner = started_run(job)
    service.proc.send_signal(signal.SIGTERM)
    until(lambda: not service.socket.exists(), 5.0)  # new hooks go to sudo (or a new service)
    assert service.proc.poll() is None  # while the run goes on
    assert runner.wait(timeout=30) == 170  # its answer came: the site's 2 s run limit
    assert service.proc.wait(timeout=10) == 0
    assert "no new requests" in service.log_text()
    cleanup_without_the_service(job)


def test_a_runner_whose_service_dies_and_none_comes_back_sends_its_job_back_to_idle(
    service: Service, users: tuple[User, User]
) -> None:
    """It waits SMARTDOMAINS_REATTACH_SECONDS for the next service first (the VM runs on);
    tests/test_service_restart_e2e.py has the next service come and take the VM up."""
    job = new_job(service, users[0], "died")
    job.prepare()
    runner = job.start(
        "runner", "--job", job.id, env={"_CONDOR_SMARTDOMAINS_REATTACH_SECONDS": "2"}
    )
    until(running_under(job, runner.pid))
    service.proc.kill()
    _, err = runner.communicate(timeout=30)
    assert runner.returncode == 172, err  # the transform's OnExitRemove is false for it
    assert "closed the connection without an answer" in err.decode()
    cleanup_without_the_service(job)


def cleanup_without_the_service(job: Job) -> None:
    """JOB_EXIT's cleanup through the helper module, for the job's user (as sudo would)."""
    env = {
        "PATH": "/usr/bin:/bin",
        "SD_BATCH_CONFIG": str(job.service.config),
        "CONDOR_CONFIG": "/dev/null",
        "SUDO_UID": str(job.user.uid),
    }
    done = subprocess.run(
        [sys.executable, "-m", "sd_batch.batch.privileged", "cleanup", job.id],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert json.loads(done.stdout)["ok"] is True, done.stderr


def test_an_input_over_the_site_limit_is_refused_with_the_limits_message(
    service: Service, users: tuple[User, User]
) -> None:
    with open(service.config, "a", encoding="utf-8") as config:  # under [policy]
        config.write("max_input_mib = 1\n")
    job = new_job(service, users[0], "big")
    (job.scratch / "input.txt").write_bytes(b"x" * 3 * 1024**2)
    started = time.monotonic()
    code, out, err = job.hook("prepare_job")
    assert code == 1 and "HookStatusCode = 180" in out, out + err
    assert "larger than the site limit of 1 MiB" in out
    # the service stopped reading at the limit and shut the connection both ways: the hook,
    # still writing 2 MiB, got EPIPE at once rather than blocking until its 300 s timeout
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    ("argv", "parsed"),
    [
        (["--job", "a#1.0#2"], ("a#1.0#2", None, None)),
        (["--job", "a#1.0#2", "--socket", "/run/x.sock"], ("a#1.0#2", "/run/x.sock", None)),
        (["--job", "a", "--helper", "sudo", "-n", "/h"], ("a", None, ["sudo", "-n", "/h"])),
        (["--job"], None),
        (["--socket", "/s", "--job", "a"], None),
        (["--job", "a", "--socket"], None),
        (["--job", "a", "--helper"], None),
        (["--job", "a", "--socket", "/s", "x"], None),
    ],
)
def test_the_runner_reads_its_job_and_the_door_prepare_job_used(
    argv: list[str], parsed: tuple[str, str | None, list[str] | None] | None
) -> None:
    assert runner.parse(argv) == parsed


def test_prepare_job_names_the_socket_only_when_it_is_a_plain_path() -> None:
    assert runner_arguments("j#1.0#2", "/run/sd-batch/helper.sock") == (
        "--job j#1.0#2 --socket /run/sd-batch/helper.sock"
    )
    for odd in ("", "relative.sock", "/with space/s", "/quote'/s", '/dq"/s', "/" + "a" * 300):
        assert runner_arguments("j#1.0#2", odd) == "--job j#1.0#2", odd
    # no service: the helper command it used, when it is plain words
    sudo = ["sudo", "-n", "/usr/lib/sd-batch/condor_hooks/helper"]
    assert runner_arguments("j#1.0#2", "", sudo) == f"--job j#1.0#2 --helper {' '.join(sudo)}"
    assert runner_arguments("j#1.0#2", "", ["sudo", "/with space/h"]) == "--job j#1.0#2"


def test_the_runner_loads_nothing_of_ours_before_its_request() -> None:
    """Its first stage is the standard library alone (the warm VM's resume waits on it): the
    module imports stdlib only, and main's import of the rest follows the request."""
    import ast

    tree = ast.parse(Path(runner.__file__).read_text(encoding="utf-8"))
    top = {
        alias.name.split(".")[0]
        for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in (
            node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")]
        )
    }
    assert top <= {"__future__", "json", "os", "signal", "socket", "sys"}, top
    (main,) = (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    calls = [
        n.lineno
        for n in ast.walk(main)
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "early_request"
    ]
    ours = [
        n.lineno
        for n in ast.walk(main)
        if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("sd_batch")
    ]
    assert calls and ours and max(calls) < min(ours)
