"""Concurrent `sd start`s of different pools on libvirt's test driver: they never over-commit a
host. Placing holds the site's placing lock from reading the hosts' load until the placed VMs
are claimed in the ledger; placement counts other starts' claims (of live processes) as load.

`test:///default` is one host shared by every connection of this process (the thread race);
a `test:///TMP/host.xml` host is a private copy per connection, so two connections (or two
processes) to it share nothing but the ledger: only the claim can tell them about each other.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sd_batch.config.site import SiteConfig, load_config
from sd_batch.deploy import pools
from sd_batch.deploy.pools import placing_lock, plan_pool, start_pool, terminate_pool
from sd_batch.errors import DeployError, NoHostHasCapacity
from sd_batch.hypervisor.connections import Connections
from sd_batch.hypervisor.inventory import live_host
from sd_batch.ledger.store import Claim, Ledger

from conftest import SdSite, fake_kernel, site_environ, wait_until, write_node, write_site_toml

pytestmark = pytest.mark.libvirt
pytest.importorskip("libvirt", reason="libvirt-python is not installed")

DEFAULT = "test:///default"
SD = [sys.executable, "-c", "from sd_batch.cli.main import console_main; console_main()"]


@dataclass
class Site(SdSite):
    host: str  # test:///ROOT/host.xml

    @property
    def config(self) -> SiteConfig:
        return load_config(self.root / "site.toml")

    def pool(self, host: str, memory_mib: int, name: str = "pool.sf") -> Path:
        path = self.root / name
        path.write_text(
            '#include "minimal.sf"\n'
            f'placer extends Scheduler {{ hosts [| "{host}" |]; }}\n'
            "sfConfig extends Schedulee { scheduler LAZY ATTRIB placer;\n"
            f'  v1 extends MinimalVM {{ memory "{memory_mib}M"; }}\n}}\n',
            encoding="utf-8",
        )
        return path

    def owners(self) -> list[str]:
        with Ledger.for_site(self.config) as ledger:
            return sorted(o.owner_id for o in ledger.owners())

    def claims(self) -> tuple[Claim, ...]:
        with Ledger.for_site(self.config) as ledger:
            return ledger.claims()

    def sd_process(self, *argv: str, stdout: int, stderr: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [*SD, *argv], env=self.environ, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr
        )


def make_site(root: Path, memory_overcommit: float = 1.0) -> Site:
    fake_kernel(root / "images")
    host = write_node(root / "host.xml", cpus=2, memory_kib=1 << 20)  # room for one 768 MiB VM
    config = write_site_toml(
        root,
        host,
        hosts={"h1": host},
        tables=f"[placement]\nmemory_overcommit = {memory_overcommit}\n",
    )
    return Site(root, site_environ(config), host)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    made = make_site(tmp_path)
    yield made
    assert made.owners() == [], "the test left pools in the ledger"


# --- two threads, one shared host ------------------------------------------------------------
def test_two_starts_racing_for_room_for_one_pool_one_wins_the_other_leaves_nothing(
    tmp_path: Path,
) -> None:
    """Two threads (as `sd web` runs starts), each with its own connections and ledger, on
    test:///default. Each holds at its "placed" progress line until the other has placed too
    or has finished: without the lock and the claims, both read the same free room there."""
    conns = Connections()  # open throughout: the host's state goes with its last connection
    capacity, load = conns(DEFAULT).host_capacity(), conns(DEFAULT).host_load()
    overcommit = 8.0  # the test driver's own domain already holds more than its 3 GiB
    free = int(capacity.memory_mib * overcommit) - load.memory_mib
    assert free > 1024, "test:///default is busier than this test expects"
    site = make_site(tmp_path, memory_overcommit=overcommit)
    config, file = site.config, site.pool(DEFAULT, free * 2 // 3)  # one fits, two do not
    names = ("alpha", "beta")
    placed = {n: threading.Event() for n in names}
    done = {n: threading.Event() for n in names}
    results: dict[str, object] = {}

    def run(name: str) -> None:
        other = next(n for n in names if n != name)

        def progress(line: str) -> None:
            if " placed " in line:
                placed[name].set()
                wait_until(
                    lambda: placed[other].is_set() or done[other].is_set(),
                    f"{other} to place or finish",
                )

        conns = Connections()
        try:
            results[name] = start_pool(
                config, DEFAULT, name, file, connections=conns, progress=progress
            )
        except Exception as exc:  # noqa: BLE001 - the loser's error is what the test checks
            results[name] = exc
        finally:
            done[name].set()
            conns.close()

    try:
        threads = [threading.Thread(target=run, args=(n,)) for n in names]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        [winner] = [n for n in names if isinstance(results[n], pools.StartResult)]
        [loser] = [n for n in names if n != winner]
        error = results[loser]
        assert isinstance(error, NoHostHasCapacity), error
        assert str(error).startswith(
            f"no host can take 1 VM ({loser}-v1); tightest: memory: {loser}-v1 ("
        )
        assert "nothing was started" in (error.hint or "")
        on_host = {d.name for d in conns(DEFAULT).list_domains()}
        assert f"{winner}-v1" in on_host and f"{loser}-v1" not in on_host
        assert site.owners() == [winner] and site.claims() == ()
    finally:
        for name in site.owners():  # the winner (both, when the race is lost)
            terminate_pool(config, DEFAULT, name, grace_seconds=0, connections=conns)
        on_host = {d.name for d in conns(DEFAULT).list_domains()}
        conns.close()
    assert not on_host & {"alpha-v1", "beta-v1"} and site.owners() == []


# --- the claim alone: hosts that share nothing but the ledger ------------------------------------
def test_a_placed_vm_not_yet_running_holds_its_room(site: Site) -> None:
    """A start stopped just after placing (its progress line not yet read): another start, on a
    connection where the host is still empty, is refused by the claim alone; so is a plan."""
    config, file = site.config, site.pool("h1", 768)
    reached, go = threading.Event(), threading.Event()
    results: list[object] = []

    def progress(line: str) -> None:
        if " placed " in line:
            reached.set()
            assert go.wait(60)

    def first() -> None:
        conns = Connections()
        try:
            results.append(
                start_pool(config, "h1", "first", file, connections=conns, progress=progress)
            )
            terminate_pool(config, "h1", "first", grace_seconds=0, connections=conns)
        finally:
            conns.close()

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert reached.wait(30)
        assert site.claims() == (Claim("first-v1", site.host, 768, 1),)
        conns = Connections()
        try:
            assert conns(site.host).list_domains() == ()  # a private copy of the host: empty
            with pytest.raises(NoHostHasCapacity, match=r"^no host can take 1 VM \(second-v1\)"):
                start_pool(config, "h1", "second", file, connections=conns)
            dry = plan_pool(config, file, name="second", connections=conns)
            assert not dry.complete
        finally:
            conns.close()
        assert site.owners() == ["first"]
    finally:
        go.set()
        thread.join(60)
    assert len(results) == 1 and site.claims() == ()


def test_a_running_vm_counts_once_though_its_claim_is_still_recorded(site: Site) -> None:
    conns = Connections()
    try:
        hv = conns(site.host)
        hv.start(
            hv.define(
                "<domain type='test'><name>up</name><memory unit='MiB'>256</memory>"
                "<os><type>hvm</type></os></domain>"
            )
        )
        claims = [Claim("up", site.host, 256, 1), Claim("placed", site.host, 512, 2)]
        host = live_host("h1", site.host, hv, site.config, claims=claims)
        assert (host.used_memory_mib, host.used_vcpus, host.vms) == (256 + 512, 1 + 2, 2)
        hv.destroy("up")
        hv.undefine("up")
    finally:
        conns.close()


# --- two real `sd start` processes ------------------------------------------------------------
def full_pipe() -> tuple[int, int]:
    """A pipe whose buffer is full: a process writing to it waits until it is read."""
    read, write = os.pipe()
    os.set_blocking(write, False)
    try:
        while True:
            os.write(write, b"\0" * 4096)
    except BlockingIOError:
        pass
    os.set_blocking(write, True)
    return read, write


def test_two_sd_start_processes_and_a_claim_of_a_killed_one(site: Site) -> None:
    """`sd start first` stops at its first progress line (its stderr is a full pipe), after
    claiming its VM: `sd start second` in another process is refused, with the usual message
    and nothing left. Once `first` is killed, its claim holds nothing: `second` starts."""
    file = str(site.pool("h1", 768))
    read, write = full_pipe()
    first = site.sd_process("start", "h1", "first", file, stdout=subprocess.DEVNULL, stderr=write)
    os.close(write)
    try:
        wait_until(lambda: site.claims() != () or first.poll() is not None, "first's claim")
        assert site.claims() == (Claim("first-v1", site.host, 768, 1),)
        second = site.sd_process(
            "start", "h1", "second", file, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = second.communicate(timeout=60)
        assert second.returncode == 8, err
        assert err.decode().startswith(
            "sd: error: no host can take 1 VM (second-v1); tightest: memory: second-v1 "
            "(768 MiB, 1 vCPU): memory is the tightest: it needs 768 MiB, the most free on any "
            "host is 256 MiB (h1)"
        )
        assert "nothing was started" in err.decode() and out == b""
        assert site.owners() == ["first"]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        os.close(read)
    assert site.claims() == ()  # its process died: the claim holds no room
    second = site.sd_process(
        "start", "h1", "second", file, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert out.decode().startswith(f"pool second started on {site.host}: 1 VM running")
    assert site.owners() == ["first", "second"]
    for name in ("first", "second"):  # first: an interrupted start, cleaned up by terminate
        done = site.sd_process(
            "terminate",
            "h1",
            name,
            "--grace",
            "0",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert done.wait(60) == 0, done.stderr.read() if done.stderr else ""


# --- the lock ---------------------------------------------------------------------------------
def test_a_start_that_waits_too_long_for_the_placing_lock_says_so(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pools, "PLACING_WAIT_SECONDS", 0.2)
    config, file = site.config, site.pool("h1", 256)
    conns = Connections()
    try:
        with placing_lock(config), pytest.raises(DeployError) as caught:  # another start
            start_pool(config, "h1", "late", file, connections=conns)
        assert caught.value.message == (
            "another sd start has been placing VMs on this site for more than 0.2 s (it holds "
            f"{site.root / 'state' / 'placing.lock'}); nothing was started"
        )
        assert site.owners() == [] and conns(site.host).list_domains() == ()
        start_pool(config, "h1", "late", file, connections=conns)  # the lock is free again
        terminate_pool(config, "h1", "late", grace_seconds=0, connections=conns)
    finally:
        conns.close()
