"""`sd run`: a job through our hooks as condor_starter runs it, without any HTCondor daemon.

Debian 12 has no HTCondor daemons, so this is both the user's "try my job here exactly as the
worker will" and the end-to-end test harness. For each proc of the submit file it plays the
schedd (`jobad.job_ad_from_submit`: condor_submit's own code, our job transform) and then the
starter, step for step as the manual describes it:

1. a fresh scratch dir (0700, owned by the slot user) holding the transferred input files and
   the executable (under its own name, as current starters keep it), `.job.ad` and
   `.machine.ad`; the ad's `Iwd` becomes the scratch dir, `Out`/`Err` become the starter's
   `_condor_stdout`/`_condor_stderr`;
2. PREPARE_JOB as a separate process: the ad on stdin, no argv, the starter's environment
   (`_CONDOR_SCRATCH_DIR`, `_CONDOR_JOB_AD`, `_CONDOR_SLOT`...), cwd = the scratch dir, as the
   slot user; its stdout updates the ad; `HookStatusCode` 1-299 holds the job, >= 300 sends it
   back to Idle;
3. the (rewritten) `Cmd` with its `Arguments`, as the slot user, in its own session, stdout and
   stderr into the starter's files; UPDATE_JOB_INFO after 8 s (advisory, not waited for);
4. JOB_EXIT with argv `exit` (or `remove`/`hold`/`evict` when we were told to stop the job:
   SIGINT/SIGTERM, SIGUSR1, SIGUSR2), the ad plus the exit attributes, waited for (30 s);
5. output transfer to the submit dir: `transfer_output_files`, else every new or changed
   top-level file; stdout/stderr to the ad's original `Out`/`Err`; the scratch dir removed.

Here: the starter's steps in order (`Harness`) and the signals that stop a run. The files and
users are in `files`, the hook processes and their environment in `starter`, how a
proc ended (`Outcome`) and the job policy that decides it in `outcome`; this module
re-exports their public names; the slot the startd would carve for the job (`.machine.ad`) is
`slot`'s. May import: data, errors, localrun.files, localrun.starter, localrun.outcome,
localrun.slot, condor.jobad, the standard library. Never libvirt: that is the hooks' business.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import resource
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from ..condor.jobad import JobAd, format_updates, job_ad_from_submit, parse_job_ad
from ..data import HOOKS_DIR
from ..errors import HarnessError as HarnessError
from ..errors import SdError
from .files import (
    JOB_AD_FILE,
    MACHINE_AD_FILE,
    STDERR_NAME,
    STDOUT_NAME,
    Catalogue,
    SlotUser,
    catalogue,
    default_user,
    file_list,
    stage_out,
)
from .outcome import (
    EXIT_HELD,
    EXIT_IDLE,
    Outcome,
    on_exit_hold,
    on_exit_remove,
    stopped_state,
    updated_ad,
)
from .slot import CronCache, Machine, carve_slot, this_machine
from .starter import DEFAULT_PATH, PASSED_THROUGH, HookRun, Updater, run_hook, starter_env

#: Outcome and the exit codes live in localrun.outcome, the slot user in localrun.files, the hooks'
#: environment in localrun.starter; callers import them from here too.
__all__ = [
    "DEFAULT_PATH",
    "EXECUTE_DIR",
    "EXIT_HELD",
    "EXIT_IDLE",
    "HOOKS_DIR",
    "PASSED_THROUGH",
    "STOP_SIGNALS",
    "Harness",
    "HarnessError",
    "Outcome",
    "SlotUser",
    "default_user",
]

EXECUTE_DIR = Path("/var/lib/sd-batch/execute")  # root's runs; others use $TMPDIR
STOP_SIGNALS = {
    signal.SIGINT: "remove",
    signal.SIGTERM: "remove",
    signal.SIGUSR1: "hold",
    signal.SIGUSR2: "evict",
}


class _Stop:
    """SIGINT/SIGTERM/SIGUSR1/SIGUSR2 to `sd run`: the condor_rm / condor_hold / vacate of it."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.signum: int | None = None
        self.runner: subprocess.Popen[bytes] | None = None
        self.saved: dict[int, Any] = {}
        self.kill_sig = signal.SIGTERM  # the job's KillSig: what a vacate sends it

    def __enter__(self) -> _Stop:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self.saved[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.saved.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.reason is None:
            self.reason, self.signum = STOP_SIGNALS[signal.Signals(signum)], signum
        if self.runner is not None and self.runner.poll() is None:
            # a vacate sends the job's KillSig, remove and hold RemoveKillSig / HoldKillSig
            # (SIGTERM when unset: our transform leaves them so), as the starter does
            evict = STOP_SIGNALS[signal.Signals(signum)] == "evict"
            with contextlib.suppress(ProcessLookupError):
                self.runner.send_signal(self.kill_sig if evict else signal.SIGTERM)


@dataclass
class Harness:
    """Runs every proc of one submit file, one after the other."""

    submit_file: Path
    user: SlotUser
    keep_going: bool = False
    progress: Callable[[str], None] = lambda line: None
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    hooks_dir: Path = HOOKS_DIR
    kill_grace: float = 20.0  # seconds between the runner's SIGTERM and SIGKILL
    update_interval: tuple[float, float] = (8.0, 300.0)  # STARTER_(INITIAL_)UPDATE_INTERVAL
    machine: Machine | None = None  # this machine as a slot: the startd cron's, on first use
    cron_cache: CronCache | None = None  # reuse a recent online startd cron output (sd run)
    #: Evict each job this many seconds into its run, once, and run it again from the files
    #: ON_EXIT_OR_EVICT spooled (`sd run --evict-after`); None: never.
    evict_after: float | None = None
    vacate_grace: float = 600.0  # JobMaxVacateTime when the ad has none (MACHINE_MAX_VACATE_TIME)
    _spool: Path | None = field(default=None, init=False, repr=False)
    _evicted_jobs: set[str] = field(default_factory=set, init=False, repr=False)

    def job_ads(self) -> list[str]:
        try:
            text = self.submit_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise HarnessError(f"cannot read {self.submit_file}: {exc.strerror}") from exc
        host = socket.gethostname() or "localhost"
        owner = pwd.getpwuid(os.getuid()).pw_name
        return job_ad_from_submit(
            text,
            submit_dir=self.submit_file.resolve().parent,
            owner=owner,
            schedd_name=f"sd-run-{os.getpid()}@{host}",
            qdate=int(time.time()),
        )

    def run(self, on_outcome: Callable[[Outcome], None]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        with _Stop() as stop:
            for text in self.job_ads():
                ad = parse_job_ad(text)
                outcome = self.run_one(ad, stop)
                while outcome.state == "evicted" and self._spool is not None:
                    # the schedd matches it again; its spooled files come back as input
                    on_outcome(outcome)
                    stop.reason = stop.signum = None
                    outcome = self.run_one(ad, stop)
                outcomes.append(outcome)
                on_outcome(outcome)
                if stop.reason is not None:
                    break
                if outcome.state not in ("exited", "signaled") and not self.keep_going:
                    break
        return outcomes

    # -- one proc, as the starter -------------------------------------------------------------
    def run_one(self, ad: JobAd, stop: _Stop) -> Outcome:
        label = f"{ad.cluster_id}.{ad.proc_id}"
        outcome = Outcome(label, ad.global_job_id, "error")
        submit_iwd = Path(ad.iwd or self.submit_file.resolve().parent)
        std_files = {STDOUT_NAME: ad.out, STDERR_NAME: ad.err}  # where they go back to
        with self._scratch() as scratch:
            try:
                ad, before = self._stage_in(ad, submit_iwd, scratch)
            except HarnessError as exc:  # the shadow's input transfer failed: a hold
                outcome.state, outcome.message = "held", f"transfer input files failure: {exc}"
                return outcome
            shadow_ad = ad  # the shadow's copy: PREPARE_JOB's updates stay in the starter's
            env = starter_env(ad, scratch, self.user, self.environ)
            try:  # the slot the startd carves for the job, as the starter writes it
                slot = self._slot(ad, env, scratch)
            except HarnessError as exc:  # no slot here would match: the job stays Idle
                outcome.state, outcome.message = "idle", str(exc)
                return outcome
            if slot is not None:
                self.user.write_file(scratch / MACHINE_AD_FILE, slot)
            self.progress(f"job {label}: PREPARE_JOB")
            prepared = run_hook(
                self.hooks_dir, self.user, "prepare_job", [], ad.text, env, scratch, timeout=600.0
            )
            ad, verdict = self._apply_prepare(ad, prepared)
            if verdict is not None:
                outcome.state, outcome.message = verdict
                if prepared.stderr.strip():
                    self.progress(f"job {label}: PREPARE_JOB stderr:\n{prepared.stderr.rstrip()}")
                return outcome
            self.user.write_file(scratch / JOB_AD_FILE, ad.text)
            if stop.reason is not None:  # stopped while preparing: never start it
                self._job_exit(ad, stop.reason, env, scratch, {})
                outcome.state, outcome.message = stopped_state(stop.reason), "before it started"
                outcome.stopped_by = stop.signum
                return outcome
            self.progress(
                f"job {label}: running {Path(ad.cmd).name} {' '.join(ad.arguments)}".rstrip()
            )
            try:
                exit_attrs, outcome.duration = self._run_payload(ad, env, scratch, stop)
            except OSError as exc:  # the starter cannot exec Cmd: it holds the job
                self._job_exit(ad, "exit", env, scratch, {})
                outcome.state, outcome.message = "held", f"failed to execute {ad.cmd}: {exc}"
                return outcome
            reason = stop.reason or "exit"
            self._job_exit(ad, reason, env, scratch, exit_attrs)
            if reason == "evict" and self.evict_after is not None:
                self._spool = self._spool_out(ad, scratch, before)
                spooled = ", ".join(sorted(p.name for p in self._spool.iterdir())) or "nothing"
                outcome.message = f"evicted after {self.evict_after:g} s; spooled {spooled}"
                outcome.state, outcome.stopped_by = "evicted", stop.signum
                return outcome
            if reason != "exit":
                outcome.state = stopped_state(reason)
                outcome.message = f"{reason} requested; the runner was stopped and JOB_EXIT run"
                outcome.stopped_by = stop.signum
                return outcome
            if exit_attrs["ExitBySignal"]:
                outcome.state, outcome.exit_signal = "signaled", int(exit_attrs["ExitSignal"])
            else:
                outcome.state, outcome.exit_code = "exited", int(exit_attrs["ExitCode"])
            try:
                outcome.outputs = stage_out(
                    ad.get("TransferOutput"), submit_iwd, scratch, before, std_files
                )
            except HarnessError as exc:  # the starter holds a job whose outputs cannot move
                outcome.state, outcome.message = "held", str(exc)
                return outcome
            # the shadow's job policy, after the output transfer, on the shadow's own ad (so
            # an OnExitHold a hook printed has no effect, as in HTCondor)
            judged = updated_ad(shadow_ad, format_updates(exit_attrs))
            held = on_exit_hold(judged)
            if held is not None:
                outcome.state, outcome.message = "held", held
            elif not on_exit_remove(judged):
                outcome.state = "idle"
                outcome.message = "OnExitRemove is false: the job runs again (its stderr says why)"
        return outcome

    @contextlib.contextmanager
    def _scratch(self) -> Iterator[Path]:
        if os.geteuid() == 0:
            EXECUTE_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
            base: Path | None = EXECUTE_DIR
        else:
            base = None
        scratch = Path(tempfile.mkdtemp(prefix="dir_", dir=base))
        try:
            scratch.chmod(0o700)
            self.user.own(scratch)
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _spool_out(self, ad: JobAd, scratch: Path, before: Catalogue) -> Path:
        """ON_EXIT_OR_EVICT at eviction: the output sandbox (transfer_output_files, else every
        new or changed top-level file) to the schedd's SPOOL."""
        spool = Path(tempfile.mkdtemp(prefix="sd-run-spool-"))
        stage_out(ad.get("TransferOutput"), spool, scratch, before, {})
        return spool

    def _stage_in(self, ad: JobAd, iwd: Path, scratch: Path) -> tuple[JobAd, Catalogue]:
        """The shadow's input transfer: inputs and the executable into the scratch dir, and
        what an eviction spooled (ON_EXIT_OR_EVICT), which the starter puts back."""
        if self._spool is not None:
            spool, self._spool = self._spool, None
            try:
                for child in sorted(spool.iterdir()):
                    self.user.copy_in(child, scratch / child.name)
            finally:
                shutil.rmtree(spool, ignore_errors=True)
        updates: dict[str, str | int | float | bool] = {"Iwd": str(scratch)}
        for entry in file_list(ad.get("TransferInput")):
            if "://" in entry:
                raise HarnessError(f"{entry}: URL transfers are not supported by sd run")
            source = iwd / entry
            target = scratch / Path(entry.rstrip("/")).name
            if entry.endswith("/") and source.is_dir():
                for child in source.iterdir():
                    self.user.copy_in(child, scratch / child.name)
            else:
                self.user.copy_in(source, target)
        if ad.get("TransferExecutable", True) is not False:
            executable = iwd / ad.cmd
            target = scratch / executable.name
            self.user.copy_in(executable, target)
            target.chmod(0o755)
            updates["Cmd"] = executable.name
        stdin = ad.get("In")
        if isinstance(stdin, str) and stdin != "/dev/null" and ad.get("TransferIn", True):
            self.user.copy_in(iwd / stdin, scratch / Path(stdin).name)
            updates["In"] = Path(stdin).name
        for attr, name in (("Out", STDOUT_NAME), ("Err", STDERR_NAME)):
            original = ad.get(attr)
            updates[attr] = (
                name if isinstance(original, str) and original != "/dev/null" else "/dev/null"
            )
        ad = updated_ad(ad, format_updates(updates))
        self.user.write_file(scratch / JOB_AD_FILE, ad.text)
        return ad, catalogue(scratch)

    def _slot(self, ad: JobAd, env: dict[str, str], scratch: Path) -> str | None:
        """The job's slot's machine ad; None (no `.machine.ad`: the VM is sized from the
        job's requests alone) when the startd cron could not run here at all."""
        if self.machine is None:
            self.machine = this_machine(self.hooks_dir, self.user, env, scratch, self.cron_cache)
            if self.machine.failed is not None:
                self.progress(
                    f"startd cron: {self.machine.failed} (no slot is carved: "
                    "the VM is sized from the job's requests)"
                )
        if self.machine.failed is not None:
            return None
        if self.machine.offline is not None:
            raise HarnessError(
                f"this machine runs no job VMs now (its startd cron says: "
                f"{self.machine.offline}): the job would stay Idle"
            )
        return carve_slot(self.machine, ad)

    def _apply_prepare(self, ad: JobAd, hook: HookRun) -> tuple[JobAd, tuple[str, str] | None]:
        """The starter's reading of PREPARE_JOB: updates, HookStatusCode, else the exit status."""
        try:
            updated = updated_ad(ad, hook.stdout)
        except SdError as exc:
            return ad, ("held", f"PREPARE_JOB printed an unreadable ad update: {exc}")
        code = updated.get("HookStatusCode")
        message = str(updated.get("HookStatusMessage") or "")
        if hook.returncode < 0:  # died of a signal: the status code does not count
            return updated, ("held", message or f"PREPARE_JOB killed by signal {-hook.returncode}")
        if not isinstance(code, int) or code < 0:
            code = hook.returncode
        if code == 0:
            if message:
                self.progress(f"job {ad.cluster_id}.{ad.proc_id}: {message}")
            return updated, None
        if code >= 300:
            return updated, ("idle", message or f"PREPARE_JOB failed with status {code}")
        return updated, (
            "held",
            message or f"PREPARE_JOB failed with status {code} (HookPrepareJobFailure)",
        )

    def _run_payload(
        self, ad: JobAd, env: dict[str, str], scratch: Path, stop: _Stop
    ) -> tuple[dict[str, Any], float]:
        job_env = {**env, **dict(ad.environment)}
        cmd = ad.cmd if Path(ad.cmd).is_absolute() else str(scratch / ad.cmd)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.time()
        with (
            self._std(scratch, ad.get("In"), reading=True) as stdin,
            self._std(scratch, ad.out) as stdout,
            self._std(scratch, ad.err) as stderr,
        ):
            runner = subprocess.Popen(
                [cmd, *ad.arguments],
                cwd=scratch,
                env=job_env,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
                **self.user.process_options(),
            )
        stop.runner = runner
        kill_sig = ad.get("KillSig")
        with contextlib.suppress(KeyError, AttributeError):
            stop.kill_sig = signal.Signals[str(kill_sig).upper()]
        if stop.reason is not None:  # a signal came while we were starting it
            runner.send_signal(signal.SIGTERM)
        timer: threading.Timer | None = None
        if self.evict_after is not None and stop.reason is None and not self._evicted(ad):
            timer = threading.Timer(self.evict_after, stop._handle, (signal.SIGUSR2, None))
            timer.daemon = True
            timer.start()
        updater = Updater(
            self.hooks_dir, self.user, self.update_interval, ad, env, scratch, runner.pid, started
        )
        updater.start()
        try:
            status = self._wait(runner, stop, ad)
        finally:
            if timer is not None:
                timer.cancel()
            stop.runner = None
            updater.stop()
        duration = time.time() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        attrs: dict[str, Any] = {
            "JobState": "Running",
            "JobPid": runner.pid,
            "NumPids": 0,
            "JobStartDate": int(started),
            "ImageSize": 0,
            "RemoteUserCpu": round(after.ru_utime - before.ru_utime, 3),
            "RemoteSysCpu": round(after.ru_stime - before.ru_stime, 3),
            "JobDuration": round(duration, 3),
            "ExitBySignal": status < 0,
        }
        if status < 0:
            attrs["ExitSignal"] = -status
            attrs["ExitReason"] = f"died on signal {-status}"
        else:
            attrs["ExitCode"] = status
            attrs["ExitReason"] = f"exited normally with status {status}"
        return attrs, duration

    def _evicted(self, ad: JobAd) -> bool:
        """Whether --evict-after already evicted this job once (it then runs through)."""
        done = ad.global_job_id in self._evicted_jobs
        self._evicted_jobs.add(ad.global_job_id)
        return done

    def _wait(self, runner: subprocess.Popen[bytes], stop: _Stop, ad: JobAd) -> int:
        """Wait for the runner; after a stop request, SIGKILL its session after the grace
        (a vacate's: the job's JobMaxVacateTime)."""
        with _exit_watch(runner.pid) as ended:
            return self._wait_watched(runner, stop, ad, ended)

    def _wait_watched(
        self, runner: subprocess.Popen[bytes], stop: _Stop, ad: JobAd, ended: select.poll | None
    ) -> int:
        deadline: float | None = None
        while True:
            if ended is None or ended.poll(200):  # as the starter's SIGCHLD: at once
                with contextlib.suppress(subprocess.TimeoutExpired):
                    return runner.wait(timeout=None if ended is not None else 0.2)
            if stop.reason is not None and deadline is None:
                vacate = ad.get("JobMaxVacateTime")
                grace = (
                    self.kill_grace
                    if stop.reason != "evict"
                    else (float(vacate) if isinstance(vacate, int) else self.vacate_grace)
                )
                deadline = time.monotonic() + grace
            if deadline is not None and time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(runner.pid, signal.SIGKILL)

    @contextlib.contextmanager
    def _std(self, scratch: Path, name: Any, *, reading: bool = False) -> Iterator[int]:
        """A file descriptor for the job's stdin/stdout/stderr, opened as the starter would."""
        if not isinstance(name, str) or name == "/dev/null":
            fd = os.open(os.devnull, os.O_RDONLY if reading else os.O_WRONLY)
        elif reading:
            fd = os.open(scratch / name, os.O_RDONLY | os.O_NOFOLLOW)
        else:
            fd = os.open(
                scratch / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644
            )
            if os.geteuid() == 0:
                os.fchown(fd, self.user.uid, self.user.gid)
        try:
            yield fd
        finally:
            os.close(fd)

    def _job_exit(
        self,
        ad: JobAd,
        reason: str,
        env: Mapping[str, str],
        scratch: Path,
        attrs: Mapping[str, Any],
    ) -> None:
        final = ad.text if not attrs else updated_ad(ad, format_updates(attrs)).text
        label = f"{ad.cluster_id}.{ad.proc_id}"
        self.progress(f"job {label}: JOB_EXIT {reason}")
        started = time.monotonic()
        done = run_hook(
            self.hooks_dir, self.user, "job_exit", [reason], final, env, scratch, timeout=30.0
        )
        took = time.monotonic() - started
        if done.returncode != 0 or took > 25.0:
            self.progress(
                f"job {label}: JOB_EXIT {reason}: status {done.returncode} after "
                f"{took:.1f} s\n{done.stderr.rstrip()}"
            )


@contextlib.contextmanager
def _exit_watch(pid: int) -> Iterator[select.poll | None]:
    """A poll that wakes the moment PID ends (its pidfd; Linux 5.3), or None where there is
    none. `Popen.wait(timeout)` looks every 50 ms at most: a job's end was seen up to 50 ms
    late in every `sd run` (and in benchmarks/job_overhead.py's figures)."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        yield None
        return
    try:
        watch = select.poll()
        watch.register(fd, select.POLLIN)
        yield watch
    finally:
        os.close(fd)
