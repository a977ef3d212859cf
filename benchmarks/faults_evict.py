"""The fault matrix's eviction rows (issue 18), for benchmarks/faults.py.

A vacate is the job's KillSig to the runner (SIGUSR2, as the schedd transform sets it); the
checkpoint then sits in the sandbox, where the next start (the same sandbox: what HTCondor's
ON_EXIT_OR_EVICT spool brings back) finds it. Needs the helper service door (the sudo helper
treats a vacate as a removal), which main() gives these rows.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sd_batch.batch import checkpoint, resume
from sd_batch.batch.key import JobKey
from sd_batch.config.site import load_config
from sd_batch.staging import CHECKPOINT_FILE

COUNT = (
    "#!/bin/sh\ni=0\nwhile [ $i -lt 10 ]; do i=$((i+1)); sleep 1; done\necho done > result.txt\n"
)
STEPS = [
    "vacated, then resumed",
    "vacated twice, resumed twice",
    "vacated, runner killed during the save",
    "corrupt checkpoint",
    "checkpoint of another image",
]
REFUSED = ".sd-batch.checkpoint-refused"


def _running(domain: str) -> bool:
    done = subprocess.run(
        ["virsh", "-c", "qemu:///system", "domstate", domain],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() == "running"


def _wait(check: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.2)


def _vacate(job: Any, *, kill_after: float | None = None) -> Callable[[], None]:
    """A `during` for Job.run: SIGUSR2 to the runner 3 s into the VM's run (and SIGKILL to
    its session KILL_AFTER seconds later: the starter's hard kill while the VM is saved)."""

    def during() -> None:
        _wait(lambda: _running(job.domain))
        time.sleep(3.0)
        runners = [
            int(p.name)
            for p in Path("/proc").iterdir()
            if p.name.isdigit() and _cmdline(p).endswith(f"runner --job {job.ad.global_job_id}")
        ]
        for pid in runners:
            os.kill(pid, signal.SIGUSR2)
        if kill_after is not None:
            time.sleep(kill_after)
            for pid in runners:
                os.killpg(os.getsid(pid), signal.SIGKILL)

    return during


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _refused(job: Any) -> str:
    note = job.sandbox / REFUSED
    return note.read_text().strip() if note.is_file() else "(no refusal noted)"


def evicted(site: Any, step: str) -> str:
    job = site.job(COUNT)
    if step.startswith("vacated"):
        job.prepare()
        said = []
        for _ in range(2 if "twice" in step else 1):
            kill = 0.2 if "killed" in step else None
            first = job.run(_vacate(job, kill_after=kill))
            saved = (
                (job.sandbox / CHECKPOINT_FILE).stat().st_size
                if (job.sandbox / CHECKPOINT_FILE).exists()
                else 0
            )
            exit1 = job.exit_hook("evict")
            again = job.prepare()
            resumed = "resumes" if "SDVMResumed = true" in job.updates else "afresh"
            said.append(
                f"{first[:60]}; checkpoint {saved >> 10} KiB; {exit1}; next start: "
                f"{again} ({resumed})"
            )
        return f"{'; '.join(said)}; {job.run()}; {job.exit_hook()}"
    config = load_config(site.config)
    if step.startswith("corrupt"):
        (job.sandbox / CHECKPOINT_FILE).write_bytes(os.urandom(300_000))
    else:  # a checkpoint this site signed for this very job, but of other guest images
        job.prepare()
        xml = subprocess.run(
            ["virsh", "-c", "qemu:///system", "dumpxml", job.domain],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        key = JobKey(os.getuid(), job.ad.global_job_id)
        mine = resume.identity(config, key, xml, "minimal")
        other = checkpoint.Identity(
            mine.job_id,
            mine.description,
            mine.flavour,
            mine.memory_mib,
            mine.vcpus,
            dict.fromkeys(mine.images, "0" * 64),
        )
        job.exit_hook("hold")
        state = job.sandbox.parent / f"{job.sandbox.name}.state"
        state.write_bytes(b"not a VM")
        checkpoint.pack(
            job.sandbox / CHECKPOINT_FILE,
            other,
            {checkpoint.STATE: state},
            key=checkpoint.site_key(config.state_dir),
            folder=job.sandbox.parent,
            limit=1 << 20,
        )
        state.unlink()
    prepared = job.prepare()
    said = _refused(job)
    return f"{prepared}; {said}; {job.run()}; {job.exit_hook()}"
