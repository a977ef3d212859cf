"""A runner waiting on its job's VM while libvirtd goes away and comes back (jobs.run's wait).

On libvirt's test driver: closing a connection is the daemon going away (every call on it then
fails, as on a dropped socket), and `hostR.xml` gives each new connection job-r running again,
as a restarted libvirtd takes back the VMs QEMU kept running.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from sd_batch.batch.jobs import wait_off_across_restarts
from sd_batch.errors import DomainNotFound, HypervisorError, ShutoffTimeout
from sd_batch.hypervisor.connection import DomainState, Hypervisor
from sd_batch.hypervisor.connection import _status as status_of
from sd_batch.hypervisor.connections import Connections

pytestmark = pytest.mark.libvirt
HOST_R = f"test://{Path(__file__).resolve().parent / 'data' / 'hosts' / 'hostR.xml'}"


class Opened:
    """A Connections opener that keeps every connection it made, in order."""

    def __init__(self, *, fail_after: int | None = None) -> None:
        self.made: list[Hypervisor] = []
        self.fail_after = fail_after

    def __call__(self, uri: str) -> Hypervisor:
        if self.fail_after is not None and len(self.made) >= self.fail_after:
            raise HypervisorError(f"{uri}: cannot connect: no socket", transient=True)
        self.made.append(Hypervisor.connect(uri))
        return self.made[-1]


def test_the_wait_reconnects_when_libvirtd_restarts_and_ends_when_the_vm_stops() -> None:
    pytest.importorskip("libvirt")
    opened = Opened()
    connections = Connections(opener=opened)
    assert connections(HOST_R).state("job-r").state is DomainState.RUNNING

    def restart_then_power_off() -> None:
        time.sleep(0.3)
        opened.made[0].close()  # the daemon is gone; the VM runs on
        deadline = time.monotonic() + 10
        while len(opened.made) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        opened.made[-1].destroy("job-r")  # the guest finishes, seen by the new daemon

    thread = threading.Thread(target=restart_then_power_off)
    started = time.monotonic()
    thread.start()
    wait_off_across_restarts(connections, HOST_R, "job-r", timeout=30)
    thread.join()
    assert len(opened.made) == 2  # one reconnection, no more
    assert connections(HOST_R).state("job-r").state is DomainState.SHUTOFF
    assert time.monotonic() - started < 5
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
        wait_off_across_restarts(connections, HOST_R, "job-r", timeout=3600, away_limit=20,
                                 clock=lambda: now[0], sleep=sleep)  # fmt: skip
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
