"""The confined child (`sd_batch.confined`): each limit, overrun, is a `LimitExceeded` (a hold)
naming it, within a bound on time, and the parent does not grow. Both ways a child starts: a
plain fork (the one-shot helper) and the fork server (the helper service)."""

from __future__ import annotations

import dataclasses
import os
import resource
import time
from pathlib import Path

import pytest

from sd_batch.batch import confined
from sd_batch.batch.confined import ChildLimits, run_confined
from sd_batch.errors import ChildFailed, Disposition, LimitExceeded, PolicyError, VMFailed

#: Wall-clock time well above the CPU second: the machine is shared, a CPU second may take 5.
LIMITS = ChildLimits(
    memory_mib=256,
    cpu_seconds=1,
    wall_seconds=20.0,
    file_mib=1,
    open_files=32,
    what="the job's description",
    doing="to resolve",
)


def grow() -> None:
    blocks = []
    while True:
        blocks.append(bytearray(16 * 1024 * 1024))


def spin() -> None:
    while True:
        pass


def sleep() -> None:
    time.sleep(60)


def write(path: Path) -> None:
    path.write_bytes(b"x" * (2 * 1024 * 1024))


def open_many(path: Path) -> list[int]:
    return [os.open(path, os.O_RDONLY) for _ in range(1000)]


def refuse() -> None:
    raise PolicyError("no", hint="because")


def answer(x: int) -> dict[str, int]:
    return {"answer": x * 2}


@pytest.fixture(params=["fork", "forkserver"])
def start(request: pytest.FixtureRequest) -> object:
    if request.param == "forkserver":
        confined.start_forkserver(["sd_batch.confined"])
    yield request.param
    confined._context = None


@pytest.mark.parametrize(
    ("work", "says"),
    [
        (grow, "needed more than 256 MiB to resolve (site limit [policy] max_resolve_mib)"),
        (
            spin,
            "needed more than 1 s of CPU to resolve (site limit [policy] max_resolve_cpu_seconds)",
        ),
        (sleep, "took more than 2 s to resolve (site limit [policy] max_resolve_seconds)"),
    ],
)
def test_an_overrun_is_a_hold_naming_the_limit(start: object, work: object, says: str) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with pytest.raises(LimitExceeded) as caught:
        limits = dataclasses.replace(LIMITS, wall_seconds=2.0) if work is sleep else LIMITS
        run_confined(work, (), limits)  # type: ignore[arg-type]
    assert time.monotonic() - started < 25
    assert says in str(caught.value)
    assert caught.value.disposition is Disposition.HOLD
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 32 * 1024  # KiB


def test_file_size_and_open_files_are_limited(start: object, tmp_path: Path) -> None:
    # Room to spare in memory: this is about files. Once, in a whole-suite run, a plain fork of
    # the (by then large, many-threaded) pytest process met the 256 MiB headroom first.
    roomy = dataclasses.replace(LIMITS, memory_mib=1024)
    with pytest.raises(LimitExceeded, match="wrote a file larger than 1 MiB"):
        run_confined(write, (tmp_path / "big",), roomy)
    (tmp_path / "f").write_text("x")
    with pytest.raises(LimitExceeded, match="needed more than 32 open files"):
        run_confined(open_many, (tmp_path / "f",), roomy)


def fail_vm() -> None:
    raise VMFailed("it stopped", run_exit=171)  # keyword-only: no pickling it whole


def test_the_works_answer_and_its_own_errors_come_back(start: object) -> None:
    assert run_confined(answer, (21,), LIMITS) == {"answer": 42}
    with pytest.raises(PolicyError, match="no; because"):
        run_confined(refuse, (), LIMITS)
    with pytest.raises(ChildFailed, match="it stopped") as caught:
        run_confined(fail_vm, (), LIMITS)
    assert caught.value.disposition is Disposition.HOLD and caught.value.kind == "VMFailed"


def capabilities() -> str:
    status = Path("/proc/self/status").read_text()
    return next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff"))


@pytest.mark.skipif(os.geteuid() != 0, reason="a root child drops its capabilities")
def test_a_root_child_keeps_only_the_capabilities_it_was_given(start: object) -> None:
    read_only = dataclasses.replace(LIMITS, keep_capabilities=(confined.CAP_DAC_READ_SEARCH,))
    assert int(run_confined(capabilities, (), read_only), 16) == 1 << confined.CAP_DAC_READ_SEARCH
    assert int(run_confined(capabilities, (), LIMITS), 16) == 0
    assert int(capabilities(), 16) != 0  # the parent keeps its own


MAIN_RUN_AGAIN = """
import sys
from pathlib import Path
from sd_batch.batch.confined import ChildLimits, run_confined, start_forkserver

if __name__ == "__main__":
    start_forkserver([])
    # an upgrade replaces this file while the process runs: a child must not execute it again
    Path(__file__).write_text("raise ImportError('the new version ran in the old process')")
    print(run_confined(pow, (2, 10), ChildLimits()))
"""


def test_a_fork_server_child_never_runs_the_services_main_file_again(tmp_path: Path) -> None:
    """multiprocessing re-executes the parent's `-m` main module in every fork-server child;
    after a package upgrade that is the new version's file in the old process (a job across
    an upgrade was held: 'its child process ended with status 1')."""
    import subprocess
    import sys

    (tmp_path / "upgraded_service.py").write_text(MAIN_RUN_AGAIN, encoding="utf-8")
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "upgraded_service"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}:{root}"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "1024"), done.stderr
