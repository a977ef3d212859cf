"""The starter's side of running hooks for `sd run`: the environment it gives hooks and jobs
(`starter_env`), one hook run to completion as the slot user (`run_hook`), and UPDATE_JOB_INFO
in the background while the job runs (`Updater`). `harness` re-exports the constants.
May import: errors, localrun.files, localrun.outcome, condor.jobad, the standard library.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..condor.jobad import JobAd, format_updates
from .files import JOB_AD_FILE, MACHINE_AD_FILE, SlotUser
from .outcome import updated_ad

PASSED_THROUGH = ("CONDOR_CONFIG", "SD_BATCH_CONFIG", "SD_BATCH_PYTHON")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass
class HookRun:
    """One finished hook process: what the starter looks at."""

    returncode: int
    stdout: str
    stderr: str


def starter_env(
    ad: JobAd, scratch: Path, user: SlotUser, environ: Mapping[str, str]
) -> dict[str, str]:
    """What the starter publishes to hooks and jobs (the manual's "Extra Environment
    Variables HTCondor sets for Jobs"), plus our own knobs (from ENVIRON) as a site's config
    would."""
    cpus = str(ad.request_cpus or 1)
    env = {
        "PATH": DEFAULT_PATH,
        "HOME": user.home,
        "USER": user.name,
        "LOGNAME": user.name,
        "BATCH_SYSTEM": "HTCondor",
        "_CONDOR_SCRATCH_DIR": str(scratch),
        "_CONDOR_SLOT": "slot1",
        "_CONDOR_JOB_AD": str(scratch / JOB_AD_FILE),
        "_CONDOR_MACHINE_AD": str(scratch / MACHINE_AD_FILE),
        "_CONDOR_JOB_IWD": str(scratch),
        "TMPDIR": str(scratch),
        "TEMP": str(scratch),
        "TMP": str(scratch),
        "OMP_NUM_THREADS": cpus,
    }
    for name, value in environ.items():
        if name in PASSED_THROUGH or name.startswith("_CONDOR_SMARTDOMAINS_"):
            env[name] = value
    env.setdefault("CONDOR_CONFIG", "/dev/null")
    return env


def run_hook(
    hooks_dir: Path,
    user: SlotUser,
    name: str,
    argv: list[str],
    stdin: str,
    env: Mapping[str, str],
    cwd: Path,
    *,
    timeout: float,
) -> HookRun:
    """Run one hook executable as a separate process, as the slot user; wait for it."""
    try:
        done = subprocess.run(
            [str(hooks_dir / name), *argv],
            input=stdin.encode(),
            capture_output=True,
            cwd=cwd,
            env=dict(env),
            timeout=timeout,
            check=False,
            start_new_session=True,
            **user.process_options(),  # a terminal's Ctrl-C is for sd run alone
        )
    except subprocess.TimeoutExpired as exc:
        err = (exc.stderr or b"").decode(errors="replace")
        return HookRun(-signal.SIGKILL, "", f"{err}\n{name} timed out after {timeout:.0f} s")
    except OSError as exc:
        return HookRun(127, "", f"cannot run {name}: {exc}")
    return HookRun(
        done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    )


class Updater:
    """UPDATE_JOB_INFO after 8 s, then every 300 s; advisory: nobody waits for it.

    `interval` is (STARTER_INITIAL_UPDATE_INTERVAL, STARTER_UPDATE_INTERVAL), in seconds.
    """

    def __init__(
        self,
        hooks_dir: Path,
        user: SlotUser,
        interval: tuple[float, float],
        ad: JobAd,
        env: Mapping[str, str],
        scratch: Path,
        pid: int,
        started: float,
    ) -> None:
        self.hooks_dir, self.user, self.interval = hooks_dir, user, interval
        self.ad, self.env, self.scratch = ad, env, scratch
        self.pid, self.started = pid, started
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="update-job-info", daemon=True)
        self.children: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        self.thread.start()

    def _loop(self) -> None:
        first, every = self.interval
        wait = first
        while not self.done.wait(wait):
            text = updated_ad(
                self.ad,
                format_updates(
                    {
                        "JobState": "Running",
                        "JobPid": self.pid,
                        "NumPids": 1,
                        "JobStartDate": int(self.started),
                        "RemoteSysCpu": 0.0,
                        "RemoteUserCpu": 0.0,
                        "ImageSize": 0,
                    }
                ),
            ).text
            with contextlib.suppress(OSError):
                child = subprocess.Popen(
                    [str(self.hooks_dir / "update_job_info")],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    cwd=self.scratch,
                    env=dict(self.env),
                    start_new_session=True,
                    **self.user.process_options(),
                )
                self.children.append(child)
                with contextlib.suppress(OSError):
                    if child.stdin is None:
                        raise OSError("the hook has no stdin pipe")
                    child.stdin.write(text.encode())
                    child.stdin.close()
            wait = every

    def stop(self) -> None:
        self.done.set()
        self.thread.join()
        for child in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)
