"""A runner waiting on its job's VM while libvirtd goes away and comes back (jobs.run's wait).

On libvirt's test driver: closing a connection is the daemon going away (every call on it then
fails, as on a dropped socket), and `hostR.xml` gives each new connection job-r running again,
as a restarted libvirtd takes back the VMs QEMU kept running.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from sd_batch.batch.jobs import wait_off_across_restarts
from sd_batch.errors import DomainNotFound, HypervisorError, ShutoffTimeout
from sd_batch.hypervisor.connection import DomainState, DomainStatus, Hypervisor
from sd_batch.hypervisor.connection import _status as status_of
from sd_batch.hypervisor.connections import Connections

pytestmark = pytest.mark.libvirt
HOST_R = f"test://{Path(__file__).resolve().parent / 'data' / 'hosts' / 'hostR.xml'}"


class Watched(Hypervisor):
    """A Hypervisor that says when a wait on it has begun (instead of a test sleeping)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.waiting = threading.Event()

    def wait_shutoff(self, name: str, timeout: float, *, poll: float = 1.0) -> DomainStatus:
        self.waiting.set()
        return super().wait_shutoff(name, timeout, poll=poll)


class Opened:
    """A Connections opener that keeps every connection it made, in order."""

    def __init__(self, *, fail_after: int | None = None) -> None:
        self.made: list[Watched] = []
        self.fail_after = fail_after
        self.changed = threading.Condition()

    def __call__(self, uri: str) -> Hypervisor:
        if self.fail_after is not None and len(self.made) >= self.fail_after:
            raise HypervisorError(f"{uri}: cannot connect: no socket", transient=True)
        with self.changed:
            self.made.append(Watched.connect(uri))
            self.changed.notify_all()
            return self.made[-1]

    def waiting_on(self, index: int, seconds: float = 30) -> Watched:
        """The INDEXth connection, once a wait on it has begun."""
        with self.changed:
            came = self.changed.wait_for(lambda: len(self.made) > index, seconds)
        assert came, "no such connection came"
        assert self.made[index].waiting.wait(seconds), "no wait began on it"
        return self.made[index]


def test_the_wait_reconnects_when_libvirtd_restarts_and_ends_when_the_vm_stops() -> None:
    pytest.importorskip("libvirt")
    opened = Opened()
    connections = Connections(opener=opened)
    assert connections(HOST_R).state("job-r").state is DomainState.RUNNING

    def restart_then_power_off() -> None:
        opened.waiting_on(0).close()  # the daemon is gone; the VM runs on
        opened.waiting_on(1).destroy("job-r")  # the guest finishes, seen by the new daemon

    thread = threading.Thread(target=restart_then_power_off)
    thread.start()
    slept: list[float] = []
    wait_off_across_restarts(connections, HOST_R, "job-r", timeout=30, sleep=slept.append)
    thread.join()
    assert len(opened.made) == 2  # one reconnection, no more
    assert slept == [1.0]  # one pause before reconnecting
    assert connections(HOST_R).state("job-r").state is DomainState.SHUTOFF
    connections.close()


def test_a_daemon_that_stays_away_ends_the_wait_with_a_transient_error_naming_the_limit() -> None:
    pytest.importorskip("libvirt")
    opened = Opened(fail_after=1)
    connections = Connections(opener=opened)
    connections(HOST_R)
    opened.made[0].close()
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    with pytest.raises(HypervisorError) as info:
        wait_off_across_restarts(
            connections,
            HOST_R,
            "job-r",
            timeout=3600,
            away_limit=20,
            clock=lambda: now[0],
            sleep=sleep,
        )
    assert info.value.transient  # a requeue: the job runs again elsewhere
    assert "did not come back within 20 s" in str(info.value)
    assert sum(slept) == 20 and len(opened.made) == 1


def test_answers_from_a_live_daemon_are_not_retried() -> None:
    pytest.importorskip("libvirt")
    opened = Opened()
    connections = Connections(opener=opened)
    with pytest.raises(DomainNotFound):
        wait_off_across_restarts(connections, HOST_R, "ghost", timeout=5)
    with pytest.raises(ShutoffTimeout, match="job-r still running after 0 s"):
        wait_off_across_restarts(connections, HOST_R, "job-r", timeout=0)
    assert len(opened.made) == 1
    connections.close()


def test_a_vm_paused_by_a_host_disk_error_is_told_from_one_paused_by_hand() -> None:
    pytest.importorskip("libvirt")
    assert status_of(3, 5).state is DomainState.PAUSED and status_of(3, 5).reason == "ioerror"
    assert status_of(3, 1).reason == "user"
    assert status_of(5, 1).reason == "shutdown"
    assert status_of(1, 1).reason == ""


def test_a_reattached_runner_never_boots_a_vm_that_ran_even_without_a_result(
    tmp_path: Path,
) -> None:
    """`jobs.reattach` (a runner back at a restarted service): a VM that powered off, even
    with its output disk still blank (a guest that crashed), is read (the job is held for no
    result), never booted again to run its payload twice; one never started is booted."""
    from sd_batch.batch.jobs import reattach
    from sd_batch.guest import contract
    from sd_batch.staging import create_output_disk

    output = tmp_path / "output.img"
    create_output_disk(output, 1 << 20)
    assert output.read_bytes().startswith(contract.OUTPUT_MAGIC)  # blank: the guest wrote none
    hv = Hypervisor.connect("test:///default")
    try:
        xml = """<domain type='test'><name>reattach-%s</name><memory>65536</memory>
          <os><type>hvm</type></os></domain>"""
        hv.define(xml % "ran")
        hv.define(xml % "never")
        hv.start("reattach-ran")
        hv.shutdown("reattach-ran")  # the test driver powers off at once: reason "shutdown"
        assert hv.state("reattach-ran") == DomainStatus(DomainState.SHUTOFF, "shutdown")
        assert reattach(hv, "reattach-ran", output) is True
        assert hv.state("reattach-ran").state is DomainState.SHUTOFF  # not booted again
        assert hv.state("reattach-never") == DomainStatus(DomainState.SHUTOFF, "unknown")
        assert reattach(hv, "reattach-never", output) is False  # the run boots it
    finally:
        for name in ("reattach-ran", "reattach-never"):
            hv.destroy(name)
            hv.undefine(name)
        hv.close()
