"""End to end: `sd run` (a subprocess, as root) runs jobs as the slot user in real QEMU VMs.

Everything is real: condor_submit's code makes the job ads, the hooks run as `sdslot1` and
reach libvirtd only through `sudo -n condor_hooks/helper`, the guest is the `minimal` image.
After every job the VM and its files must be gone: `virsh list --all` has no domain of it and
the state dir has no job folder. Each test boots as few VMs as it can (about 4 s each under
TCG); a job that must fail before booting (a broken .sf) boots none. Needs `scripts/setup-host`
(root, libvirtd, the guest, sudo, the slot user and the sudoers rule); skips otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sd_batch.config.site import SYSTEM_CONFIG, load_config
from sd_batch.data import HOOKS_DIR

from conftest import Run as SdRun
from conftest import assert_jobs_gone, qemu_host_missing

pytestmark = pytest.mark.qemu

ROOT = Path(__file__).resolve().parent.parent
SD = ROOT / ".venv" / "bin" / "sd"
SUDOERS = Path("/etc/sudoers.d/sd-batch")
SLOT_USER = "sdslot1"
TIMEOUT = 240.0  # one job on a busy 2-core host: boot ~4 s, allow a lot of contention
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "CONDOR_CONFIG": "/dev/null"}


def _missing() -> str | None:
    """Why this machine cannot run the tests, or None."""
    if os.geteuid() != 0:
        return "needs root (sd run drops to the slot user)"
    if shutil.which("sudo") is None or not SUDOERS.is_file():
        return "sudo or /etc/sudoers.d/sd-batch missing: run scripts/setup-host"
    if str(HOOKS_DIR / "helper") not in SUDOERS.read_text(encoding="utf-8"):
        return f"{SUDOERS} is for another checkout: run scripts/setup-host here"
    return qemu_host_missing(SLOT_USER)


@pytest.fixture(scope="module", autouse=True)
def host_ready() -> None:
    reason = _missing()
    if reason:
        pytest.skip(reason)


class Run(SdRun):
    __slots__ = ()

    @property
    def domains(self) -> list[str]:
        """The VMs sd run's PREPARE_JOB made (named in its progress lines)."""
        return re.findall(r"VM (sd-job-[0-9a-f]+) ready", self.err)


def sd_run(submit: Path, *args: str) -> Run:
    done = subprocess.run(
        [str(SD), "run", str(submit), *args],
        capture_output=True,
        text=True,
        cwd=submit.parent,
        env=ENV,
        timeout=TIMEOUT,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def assert_nothing_left(domains: list[str]) -> None:
    """No domain, no job folder (input/output disks, console) of these jobs anywhere."""
    assert domains, "the run named no VM"
    assert_jobs_gone(domains)


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    return tmp_path


ECHO_SUB = """executable = echo.sh
arguments = "first 'second arg'"
transfer_input_files = input.txt, my.sf
output = job.out
error = job.err
request_memory = 384
+SDVMDescription = "my.sf"
queue
"""
ECHO_SH = """#!/bin/sh
cat input.txt
echo "args: $# [$1] [$2]"
echo "to stderr" >&2
awk '/MemTotal/ { print int($2 / 1024) }' /proc/meminfo > memory.txt
tr a-z A-Z < input.txt > upper.txt
"""
#: A user's own description: the site's minimal guest with more memory (and the submit file
#: asks for a slot that big: the VM is the slot).
MY_SF = '#include "minimal.sf"\nsfConfig extends MinimalVM {\n    memory 384;\n}\n'


def test_a_job_with_its_own_sf_echoes_its_input_and_returns_its_files(job_dir: Path) -> None:
    (job_dir / "echo.sub").write_text(ECHO_SUB, encoding="utf-8")
    (job_dir / "echo.sh").write_text(ECHO_SH, encoding="utf-8")
    (job_dir / "input.txt").write_text("hello from the submit side\n", encoding="utf-8")
    (job_dir / "my.sf").write_text(MY_SF, encoding="utf-8")
    run = sd_run(job_dir / "echo.sub")
    assert run.code == 0, run.out + run.err + _read(job_dir / "job.err")  # the runner's stderr
    summary = re.fullmatch(r"job 1\.0: exit 0 in [\d.]+ s; outputs: (.*)\n", run.out)
    assert summary is not None, run.out
    assert summary.group(1).split(", ") == ["job.out", "job.err", "memory.txt", "upper.txt"]
    assert (
        job_dir / "job.out"
    ).read_text() == "hello from the submit side\nargs: 2 [first] [second arg]\n"
    assert (job_dir / "job.err").read_text() == "to stderr\n"
    assert (job_dir / "upper.txt").read_text() == "HELLO FROM THE SUBMIT SIDE\n"
    assert 300 < int((job_dir / "memory.txt").read_text()) <= 384  # my.sf's memory, not 256
    assert "(my.sf, 384 MiB, 1 vCPU)" in run.err
    assert_nothing_left(run.domains)


CODES_SUB = """executable = codes.sh
arguments = $(Process)
output = out.$(Process)
error = err.$(Process)
+SDVMDescription = "minimal"
queue 2
"""
CODES_SH = """#!/bin/sh
case $1 in
0) echo "proc 0 fails"; echo "bad things" >&2; exit 3 ;;
1) echo "proc 1 is killed"; kill -KILL $$ ;;
esac
"""


def test_exit_codes_and_signals_come_back_as_htcondor_reports_them(job_dir: Path) -> None:
    (job_dir / "codes.sub").write_text(CODES_SUB, encoding="utf-8")
    (job_dir / "codes.sh").write_text(CODES_SH, encoding="utf-8")
    run = sd_run(job_dir / "codes.sub", "--keep-going", "--json")
    assert run.code == 3, run.err  # the first non-zero: proc 0's own exit code
    report = json.loads(run.out)
    first, second = report["jobs"]
    assert (first["state"], first["exit_code"], first["exit_signal"]) == ("exited", 3, None)
    assert (second["state"], second["exit_code"], second["exit_signal"]) == ("signaled", None, 9)
    assert second["process_exit_code"] == 128 + 9
    assert (job_dir / "out.0").read_text() == "proc 0 fails\n"
    assert (job_dir / "err.0").read_text() == "bad things\n"
    assert (job_dir / "out.1").read_text() == "proc 1 is killed\n"
    assert_nothing_left(run.domains)
    assert len(run.domains) == 2


BROKEN_SUB = """executable = /bin/true
transfer_executable = false
transfer_input_files = broken.sf
+SDVMDescription = "broken.sf"
queue
"""


def test_a_broken_user_sf_holds_the_job_with_file_line_column(job_dir: Path) -> None:
    (job_dir / "broken.sub").write_text(BROKEN_SUB, encoding="utf-8")
    (job_dir / "broken.sf").write_text(
        '#include "minimal.sf"\nsfConfig extends MinimalVM {\n    memory (512 +);\n}\n',
        encoding="utf-8",
    )
    run = sd_run(job_dir / "broken.sub")
    assert run.code == 3, run.err
    assert re.fullmatch(
        r"job 1\.0: held: sd-batch: broken\.sf:3:18: unexpected '\)'.*\n", run.out
    ), run.out
    assert run.domains == []


SLEEP_SUB = """executable = /bin/sh
transfer_executable = false
arguments = "-c 'echo started; sleep 120; echo never'"
output = out.txt
+SDVMDescription = "minimal"
queue
"""


@dataclass
class Sleeping:
    """`sd run sleep.sub` (its own session) with its VM running the payload: the process, the
    VM's domain, and sd run's progress lines so far."""

    proc: subprocess.Popen[str]
    domain: str
    progress: list[str]

    def finish(self) -> tuple[str, str]:
        """sd run's stdout and its whole stderr, once it exits."""
        out, rest = self.proc.communicate(timeout=TIMEOUT)
        return out, "".join(self.progress) + rest


@contextlib.contextmanager
def sleeping_job(job_dir: Path) -> Iterator[Sleeping]:
    """A job sleeping 120 s in its VM, a second into its run; killed on the way out if the
    test has not ended it."""
    (job_dir / "sleep.sub").write_text(SLEEP_SUB, encoding="utf-8")
    proc = subprocess.Popen(
        [str(SD), "run", "sleep.sub"],
        cwd=job_dir,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    progress: list[str] = []
    try:
        assert proc.stderr is not None
        domain = None
        for line in proc.stderr:  # progress lines, until the payload runs
            progress.append(line)
            if found := re.search(r"VM (sd-job-[0-9a-f]+) ready", line):
                domain = found.group(1)
            if ": running " in line:
                break
        assert domain is not None, "".join(progress)
        _wait_running(domain)
        time.sleep(1.0)  # the guest is booting or sleeping: either way mid-run
        yield Sleeping(proc, domain, progress)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    ("signum", "reason", "state"),
    [
        (signal.SIGINT, "remove", "removed"),
        (signal.SIGUSR1, "hold", "held"),
        (signal.SIGUSR2, "evict", "evicted"),
    ],
)
def test_a_job_stopped_mid_run_is_torn_down(
    job_dir: Path, signum: int, reason: str, state: str
) -> None:
    """condor_rm / condor_hold / condor_vacate: the runner gets SIGTERM, then JOB_EXIT REASON.

    SIGINT goes to sd run's whole process group, as a terminal's Ctrl-C does: the hooks and the
    runner must not see it (the starter's children are never in the user's terminal group)."""
    with sleeping_job(job_dir) as job:
        if signum == signal.SIGINT:
            os.killpg(job.proc.pid, signum)
        else:
            job.proc.send_signal(signum)
        out, err = job.finish()
    assert job.proc.returncode == 128 + signum, err
    assert out.startswith(f"job 1.0: {state} in "), out
    assert f"JOB_EXIT {reason}" in err
    assert not (job_dir / "out.txt").exists()  # a stopped job's outputs do not come back
    assert_nothing_left([job.domain])


def test_a_vm_destroyed_from_outside_holds_the_job_and_says_so(job_dir: Path) -> None:
    """The VM crashing mid-run (here: `virsh destroy`): the runner exits 171, PREPARE_JOB's
    OnExitHold holds the job with a reason that says the VM stopped without a result."""
    with sleeping_job(job_dir) as job:
        config = load_config(SYSTEM_CONFIG if SYSTEM_CONFIG.is_file() else None)
        subprocess.run(
            ["virsh", "-c", config.default_uri, "destroy", job.domain],
            capture_output=True,
            check=True,
        )
        out, err = job.finish()
    assert job.proc.returncode == 3, out + err
    assert out == (
        "job 1.0: held: sd-batch: the job's VM stopped without a result (it crashed "
        "or was destroyed); the job's stderr has the details\n"
    ), out + err
    assert "JOB_EXIT exit" in err
    assert_nothing_left([job.domain])


def _wait_running(domain: str, timeout: float = 60.0) -> None:
    config = load_config(SYSTEM_CONFIG if SYSTEM_CONFIG.is_file() else None)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = subprocess.run(
            ["virsh", "-c", config.default_uri, "domstate", domain],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        if state == "running":
            return
        time.sleep(0.2)
    pytest.fail(f"{domain} never ran")


RECORDER = """#!/bin/sh
# records how it was called, then runs the real hook with the same stdin, argv and environment
log={record}/$(basename "$0").$$
{{ echo "argv=$*"; echo "cwd=$(pwd)"; echo "uid=$(id -un)"; env | sort; }} > "$log.env"
cat > "$log.stdin"
exec {real}/$(basename "$0") "$@" < "$log.stdin"
"""


def test_hooks_run_as_condor_starter_runs_them(job_dir: Path) -> None:
    """Each hook is a process of the slot user in the scratch dir, with the starter's argv,
    stdin and environment; UPDATE_JOB_INFO comes while the job runs, JOB_EXIT after it."""
    from sd_batch.localrun.harness import Harness, SlotUser

    record = Path(tempfile.mkdtemp(prefix="sd-record-"))
    try:
        user = SlotUser.lookup(SLOT_USER)
        os.chown(record, user.uid, user.gid)
        hooks = record / "hooks"
        hooks.mkdir()
        for name in ("prepare_job", "update_job_info", "job_exit"):
            (hooks / name).write_text(RECORDER.format(record=record, real=HOOKS_DIR))
            (hooks / name).chmod(0o755)
        submit = job_dir / "sleep.sub"
        submit.write_text(SLEEP_SUB.replace("sleep 120; echo never", "sleep 3"))
        harness = Harness(submit, user, hooks_dir=hooks, update_interval=(1.0, 300.0), environ=ENV)
        (outcome,) = harness.run(lambda _outcome: None)
        assert (outcome.state, outcome.exit_code) == ("exited", 0), outcome
        calls = {p.name.split(".")[0]: p for p in record.glob("*.env")}
        assert sorted(calls) == ["job_exit", "prepare_job", "update_job_info"]
        seen = {name: _recorded(path) for name, path in calls.items()}
        scratch = seen["prepare_job"]["cwd"]
        assert scratch.startswith("/var/lib/sd-batch/execute/dir_")
        for name, env in seen.items():
            assert (env["uid"], env["cwd"]) == (SLOT_USER, scratch), name
            assert env["_CONDOR_SCRATCH_DIR"] == env["_CONDOR_JOB_IWD"] == scratch
            assert env["_CONDOR_JOB_AD"] == f"{scratch}/.job.ad"
            assert env["_CONDOR_SLOT"] == "slot1" and env["BATCH_SYSTEM"] == "HTCondor"
        assert seen["prepare_job"]["argv"] == seen["update_job_info"]["argv"] == ""
        assert seen["job_exit"]["argv"] == "exit"
        stdin = {name: path.with_suffix(".stdin").read_text() for name, path in calls.items()}
        assert f'Iwd = "{scratch}"' in stdin["prepare_job"]
        assert 'Out = "_condor_stdout"' in stdin["prepare_job"]
        assert 'JobState = "Running"' in stdin["update_job_info"]
        assert f'Cmd = "{HOOKS_DIR / "runner"}"' in stdin["update_job_info"]
        for line in ("ExitCode = 0", "ExitBySignal = false", "JobDuration = "):
            assert line in stdin["job_exit"], stdin["job_exit"]
        assert (job_dir / "out.txt").read_text() == "started\n"
        assert not Path(scratch).exists()
    finally:
        shutil.rmtree(record, ignore_errors=True)


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def _recorded(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
