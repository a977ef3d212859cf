"""Scheduled pools on libvirt's test driver: placement over several hosts, rollback across
hosts, capacity enforced (the test driver enforces none), high availability, `sd plan`.

Each test gets a site (tmp folders, site.toml) and simulated hosts `test:///TMP/hostN.xml`,
named n1, n2, ... in the site config. A connection to such a file keeps that host's state,
so commands in this process share connections (`connections.SHARED_CONNECTIONS`, dropped at the
end); the HA tests pass their own `Connections` so they can cut one host off.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sd_batch.config.site import BUILTIN_TEMPLATE_DIR, load_config
from sd_batch.deploy.pools import (
    start_pool,
    status,
    terminate_pool,
)
from sd_batch.deploy.watch import watch_pool
from sd_batch.hypervisor.connection import DomainState
from sd_batch.hypervisor.connections import SHARED_CONNECTIONS, Connections
from sd_batch.ledger.store import Ledger

from conftest import SdSite, fake_kernel, site_environ, write_node, write_site_toml

pytestmark = pytest.mark.libvirt
pytest.importorskip("libvirt", reason="libvirt-python is not installed")


def description(scheduler: str, vms: str) -> str:
    return (
        f'#include "minimal.sf"\nplacer extends Scheduler {{ {scheduler} }}\n'
        f"sfConfig extends Schedulee {{ scheduler LAZY ATTRIB placer;\n{vms}\n}}\n"
    )


def vms(count: int, memory: str = '"384M"', prefix: str = "v") -> str:
    return "\n".join(
        f"  {prefix}{i} extends MinimalVM {{ memory {memory}; }}" for i in range(1, count + 1)
    )


@dataclass
class Site(SdSite):
    hosts: dict[str, str]  # n1 -> test:///.../host1.xml

    def write(self, text: str, name: str = "pool.sf") -> str:
        (self.root / name).write_text(text, encoding="utf-8")
        return str(self.root / name)

    def domains(
        self, host: str, connections: Connections = SHARED_CONNECTIONS
    ) -> dict[str, DomainState]:
        return {d.name: d.state for d in connections(self.hosts[host]).list_domains()}

    def ledger_rows(self) -> tuple[int, int]:
        with Ledger.for_site(load_config(self.root / "site.toml")) as ledger:
            owners = ledger.owners()
            return len(owners), sum(len(ledger.resources(o)) for o in owners)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    fake_kernel(tmp_path / "images")
    hosts = {
        f"n{n}": write_node(tmp_path / f"host{n}.xml", cpus, mib * 1024)
        for n, (cpus, mib) in enumerate([(2, 1024), (2, 1024), (2, 1024), (4, 4096)], 1)
    }
    config = write_site_toml(
        tmp_path,
        hosts["n4"],
        hosts=hosts,
        tables='[placement]\ncpu_overcommit = 2.0\n[placement.tags]\nn3 = ["ssd"]\n',
    )
    made = Site(tmp_path, site_environ(config), hosts)
    yield made
    assert made.ledger_rows() == (0, 0), "the test left rows in the ledger"
    for uri in hosts.values():
        SHARED_CONNECTIONS.forget(uri)


# --- placing a pool over several hosts -----------------------------------------------------------
def test_sd_start_places_vms_across_the_schedulers_hosts_and_terminate_removes_them(
    site: Site,
) -> None:
    file = site.write(description('hosts [| "n1", "n2", "n3" |]; strategy "pack";', vms(5)))
    code, out, err = site.sd("start", "n4", "lab", file)
    assert code == 0, err
    assert "placer (pack) placed 5 VMs on 3 of 3 hosts" in err
    # 1 GiB hosts take two 384 MiB VMs each: capacity is ours to enforce on the test driver
    counts = sorted(len(site.domains(h)) for h in ("n1", "n2", "n3"))
    assert counts == [1, 2, 2] and site.domains("n4") == {}
    assert all(
        s is DomainState.RUNNING for h in ("n1", "n2", "n3") for s in site.domains(h).values()
    )
    assert (
        out.splitlines()[0] == f"pool lab started on {site.hosts['n4']}: 5 VMs running "
        "(lab-v1, lab-v2, lab-v3, lab-v4, lab-v5)"
    )
    [report] = json.loads(site.sd("status", "--json")[1])
    assert {vm["uri"] for vm in report["vms"]} == {site.hosts[h] for h in ("n1", "n2", "n3")}
    assert "on test://" in site.sd("status")[1]
    code, out, _err = site.sd("terminate", "n4", "lab", "--grace", "0")
    assert (code, out.split(":")[1].strip()) == (0, "removed 5 domains, 0 volumes, 5 files")
    assert [site.domains(h) for h in ("n1", "n2", "n3")] == [{}, {}, {}]


def test_a_failure_on_the_third_host_leaves_nothing_on_the_first_two(site: Site) -> None:
    """first-fit: v1, v2 on n1; v3, v4 on n2; v5 on n3, where its name is already taken."""
    foreign = SHARED_CONNECTIONS(site.hosts["n3"]).define(
        "<domain type='test'><name>lab-v5</name><memory unit='MiB'>64</memory>"
        "<os><type>hvm</type></os></domain>"
    )
    try:
        file = site.write(
            description('hosts [| "n1", "n2", "n3" |]; strategy "first-fit";', vms(5))
        )
        code, _out, err = site.sd("start", "n4", "lab", file)
        assert code == 8
        assert err.splitlines()[-1].startswith(
            f"sd: error: pool lab: VM lab-v5 (sfConfig:v5): {site.hosts['n3']}: cannot define"
        )
        assert "rolled back: removed 4 domains" in err
        assert site.domains("n1") == site.domains("n2") == {}
        assert site.domains("n3") == {"lab-v5": DomainState.SHUTOFF}  # not ours: kept
    finally:
        SHARED_CONNECTIONS(site.hosts["n3"]).undefine(foreign)


def test_vms_that_fit_nowhere_are_refused_before_anything_is_created(site: Site) -> None:
    file = site.write(description('hosts [| "n1", "n2" |];', vms(3, '"768M"')))
    code, _out, err = site.sd("start", "n4", "lab", file)
    assert code == 8
    assert err.startswith(
        "sd: error: no host can take 1 VM (lab-v3); tightest: memory: lab-v3 "
        "(768 MiB, 1 vCPU): memory is the tightest: it needs 768 MiB, the "
        "most free on any host is 256 MiB"
    )
    assert "nothing was started" in err
    assert site.domains("n1") == site.domains("n2") == {} and site.ledger_rows() == (0, 0)


def test_what_already_runs_on_a_host_counts_against_its_capacity(site: Site) -> None:
    hv = SHARED_CONNECTIONS(site.hosts["n1"])
    busy = hv.define(
        "<domain type='test'><name>busy</name><memory unit='MiB'>900</memory>"
        "<os><type>hvm</type></os></domain>"
    )
    hv.start(busy)
    try:
        file = site.write(description('hosts [| "n1", "n2" |]; strategy "first-fit";', vms(2)))
        assert site.sd("start", "n4", "lab", file)[0] == 0
        assert set(site.domains("n2")) == {"lab-v1", "lab-v2"}
        assert site.sd("terminate", "n4", "lab", "--grace", "0")[0] == 0
    finally:
        hv.destroy(busy)
        hv.undefine(busy)


def test_site_tags_globs_and_overcommit_shape_the_placement(site: Site) -> None:
    """n3 is tagged ssd in the site config; 2 CPUs x cpu_overcommit 2.0 = 4 vCPUs per host."""
    body = (
        '  fast extends MinimalVM { requiresTags [| "ssd" |]; }\n'
        "  wide extends MinimalVM { vcpus 4; }\n  wider extends MinimalVM { vcpus 9; }"
    )
    file = site.write(description('hosts [| "n*" |]; strategy "first-fit";', body))
    code, out, _err = site.sd("plan", file, "--json")
    result = json.loads(out)
    assert (code, result["complete"]) == (8, False)
    [sched] = result["schedulers"]
    assert {p["vm"]: p["host"] for p in sched["placements"]} == {
        "pool-fast": "n3",
        "pool-wide": "n1",
    }
    [unplaced] = sched["unplaced"]
    assert (unplaced["vms"], unplaced["tightest"]) == (["pool-wider"], "vcpus")
    assert "the most free on any host is 8 (n4)" in unplaced["reason"]  # 4 CPUs x 2.0


def test_a_host_that_does_not_answer_is_left_out_and_said_so(site: Site) -> None:
    file = site.write(description('hosts [| "n1", "test:///nowhere/host.xml" |];', vms(1)))
    code, _out, err = site.sd("start", "n4", "lab", file)
    assert code == 0, err
    assert (
        "placer: left out host test:///nowhere/host.xml: test:///nowhere/host.xml: cannot "
        "connect" in err
    )
    assert set(site.domains("n1")) == {"lab-v1"}
    assert site.sd("terminate", "n4", "lab", "--grace", "0")[0] == 0


def test_the_qa_testbed_virtual_cluster_starts_head_first_across_hosts(site: Site) -> None:
    text = (
        (BUILTIN_TEMPLATE_DIR / "qa-testbed.sf")
        .read_text()
        .replace('hosts [| "localhost" |];', 'hosts [| "n1", "n2", "n3" |];')
    )
    code, _out, err = site.sd("start", "n4", "qa", site.write(text, "qa.sf"))
    assert code == 0, err
    started = [line for line in err.splitlines() if " started " in line]
    assert started[0] == "[1/3] started qa-head"
    assert sorted(len(site.domains(h)) for h in ("n1", "n2", "n3")) == [1, 1, 1]  # apart
    _code, _out, err = site.sd("terminate", "n4", "qa", "--grace", "0")
    assert err.splitlines()[-1] == "removed qa-head"  # torn down last


# --- sd plan -----------------------------------------------------------------------------------
INVENTORY = """[[host]]
name = "r{n}"
count = 3
uri = "qemu+ssh://r{n}/system"
memory = "4G"
vcpus = 2
disk = "100G"
[[host]]
name = "old"
memory = "2G"
vcpus = 1
used_memory = "1G"
vms = 2
"""


def test_sd_plan_on_an_inventory_shows_placements_room_left_and_what_does_not_fit(
    site: Site,
) -> None:
    (site.root / "hosts.toml").write_text(INVENTORY, encoding="utf-8")
    file = site.write(
        description('hosts [| "r*", "old" |]; strategy "spread";', vms(4, '"3G"')), "lab.sf"
    )
    code, out, err = site.sd("plan", file, "--hosts", str(site.root / "hosts.toml"))
    assert (code, err) == (8, "")
    assert out.splitlines() == [
        "placer: spread, 3 VMs on 3 of 4 hosts",
        "    VM      host  memory  vCPUs  disk",
        "    lab-v1  r1    3 GiB   1      -",
        "    lab-v2  r2    3 GiB   1      -",
        "    lab-v3  r3    3 GiB   1      -",
        "  what the hosts have left (after overcommit):",
        "    host  VMs     memory free     vCPUs free  disk free",
        "    r1    1 (+1)  1 GiB of 4 GiB  3 of 4      100 GiB of 100 GiB",
        "    r2    1 (+1)  1 GiB of 4 GiB  3 of 4      100 GiB of 100 GiB",
        "    r3    1 (+1)  1 GiB of 4 GiB  3 of 4      100 GiB of 100 GiB",
        "  (1 more host with nothing placed: --all-hosts lists them)",
        "  does not fit: lab-v4 (3 GiB, 1 vCPU): memory is the tightest: it needs 3 GiB, the "
        "most free on any host is 1 GiB (old)",
    ]
    assert site.ledger_rows() == (0, 0)


def test_sd_plan_json_is_reproducible_and_names_the_inventory_errors(site: Site) -> None:
    (site.root / "hosts.toml").write_text(INVENTORY, encoding="utf-8")
    file = site.write(description('hosts [| "r*" |]; strategy "pack"; seed 3;', vms(2)))
    first = site.sd("plan", file, "--hosts", str(site.root / "hosts.toml"), "--json")
    assert first == site.sd("plan", file, "--hosts", str(site.root / "hosts.toml"), "--json")
    assert json.loads(first[1])["complete"] is True
    (site.root / "bad.toml").write_text('[[host]]\nname = "x"\nmemory = "lots"\nvcpus = 1\n')
    code, _out, err = site.sd("plan", file, "--hosts", str(site.root / "bad.toml"))
    assert code == 3
    assert err == (
        f"sd: error: {site.root / 'bad.toml'}: host entry 1: memory = 'lots' is not "
        'a size; a number of MiB, or "512M", "64G", "2T"\n'
    )
    code, _out, err = site.sd(
        "plan",
        site.write(description('hosts [| "s*" |];', vms(1))),
        "--hosts",
        str(site.root / "hosts.toml"),
    )
    inventory = site.root / "hosts.toml"
    assert (code, err.split(";")[0]) == (3, f"sd: error: no host 's*' in {inventory}")


def test_live_hosts_are_read_at_the_same_time_and_one_that_does_not_answer_is_reported(
    site: Site,
) -> None:
    """Each host's connection opens only once all four are being opened: read one after the
    other, the first would wait alone and break the barrier; an unreachable one costs its own
    retries, not the others'."""
    import threading

    from sd_batch.hypervisor.connection import Hypervisor
    from sd_batch.hypervisor.inventory import live_hosts

    config = load_config(site.root / "site.toml")
    gone = Path(site.hosts["n2"].removeprefix("test://"))
    gone.unlink()  # n2 does not answer
    together = threading.Barrier(len(site.hosts))

    def open_together(uri: str) -> Hypervisor:
        together.wait(timeout=30)  # raises BrokenBarrierError unless all four are opening
        return Hypervisor.connect(uri, attempts=1)

    conns = Connections(opener=open_together)
    try:
        hosts, unreachable = live_hosts(["n*"], config, conns)
    finally:
        conns.close()
    assert not together.broken, "hosts read one after the other"
    assert [h.name for h in hosts] == ["n1", "n3", "n4"]  # in the order written
    assert [u.name for u in unreachable] == ["n2"]


def test_threads_asking_for_one_uri_at_once_share_one_connection(site: Site) -> None:
    import threading
    import time

    from sd_batch.hypervisor.connection import Hypervisor

    opened: list[str] = []

    def slow_open(uri: str) -> Hypervisor:
        opened.append(uri)
        time.sleep(0.2)
        return Hypervisor.connect(uri)

    conns = Connections(opener=slow_open)
    got: list[object] = []
    threads = [
        threading.Thread(target=lambda: got.append(conns(site.hosts["n1"]))) for _ in range(4)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        conns.close()
    assert opened == [site.hosts["n1"]] and len(got) == 4 and len({id(g) for g in got}) == 1


# --- high availability -------------------------------------------------------------------------
HA = 'hosts [| "n1", "n2", "n3" |]; strategy "spread"; sfLivenessDelay 5; sfLivenessFactor 2;'


def test_vms_of_a_host_that_stops_answering_move_to_the_others_and_status_says_why(
    site: Site,
) -> None:
    config, conns = load_config(site.root / "site.toml"), Connections()
    file = Path(site.write(description(HA, vms(3))))
    slept: list[float] = []
    try:
        result = start_pool(config, "n4", "ha", file, connections=conns)
        where = dict(result.placed)
        assert sorted(where.values()) == sorted(site.hosts[h] for h in ("n1", "n2", "n3"))
        lost = next(d for d, uri in where.items() if uri == site.hosts["n2"])
        # Cut n2 off: its host file goes (no new connection opens) and so does the open one;
        # the host itself, with its VM still running, is kept aside, as a partitioned host.
        host_file = Path(site.hosts["n2"].removeprefix("test://"))
        saved_xml, cut_off = host_file.read_text(), conns.detach(site.hosts["n2"])
        host_file.unlink()
        lines: list[str] = []
        watcher = watch_pool(
            config,
            "n4",
            "ha",
            connections=conns,
            progress=lines.append,
            sleep=slept.append,
            clock=lambda: 0.0,
            rounds=2,
        )
        assert slept == [5.0]  # the liveness delay, slept through a fake: no test waits
        assert lines[0].startswith(f"host {site.hosts['n2']} missed ping 1 of 2: ")
        moved_to = watcher.vms[lost].uri
        assert moved_to in (site.hosts["n1"], site.hosts["n3"])
        assert site.domains("n1", conns).get(lost, site.domains("n3", conns).get(lost)) is (
            DomainState.RUNNING
        )
        [report] = status(config, "ha", connections=conns)
        [move] = report.moves
        assert (move.domain, move.from_uri, move.to_uri) == (lost, site.hosts["n2"], moved_to)
        assert move.reason.startswith(
            f"host {site.hosts['n2']} missed 2 pings in a row (5 s apart): "
        )
        text = site.sd("status", "ha")[1]
        assert f"  moved {lost} from {site.hosts['n2']} to {moved_to} at " in text

        # n2 answers again, with the old copy still running: it is removed, never run twice.
        host_file.write_text(saved_xml)
        assert cut_off is not None
        conns.attach(site.hosts["n2"], cut_off)
        assert lost in site.domains("n2", conns)
        watch_pool(
            config,
            "n4",
            "ha",
            connections=conns,
            progress=lines.append,
            sleep=slept.append,
            rounds=1,
        )
        assert site.domains("n2", conns) == {}
        assert (
            lines[-1] == f"removed the old copies on {site.hosts['n2']} of {lost}: 1 domain, "
            "0 volumes"
        )
        terminate_pool(config, "n4", "ha", grace_seconds=0, connections=conns)
        assert all(site.domains(h, conns) == {} for h in ("n1", "n2", "n3"))
    finally:
        conns.close()


def test_a_vm_found_shut_off_is_started_again_where_it_is(site: Site) -> None:
    config, conns = load_config(site.root / "site.toml"), Connections()
    try:
        start_pool(config, "n4", "ha", Path(site.write(description(HA, vms(1)))), connections=conns)
        [uri] = [u for h, u in site.hosts.items() if site.domains(h, conns)]
        conns(uri).destroy("ha-v1")
        lines: list[str] = []
        watch_pool(config, "n4", "ha", connections=conns, progress=lines.append, rounds=1)
        assert lines == [f"restarted ha-v1 on {uri}: it was shutoff"]
        assert conns(uri).state("ha-v1").state is DomainState.RUNNING
        terminate_pool(config, "n4", "ha", grace_seconds=0, connections=conns)
    finally:
        conns.close()


def test_vms_with_nowhere_to_go_are_recorded_as_such(site: Site) -> None:
    config, conns = load_config(site.root / "site.toml"), Connections()
    file = Path(
        site.write(description(HA.replace('"n1", "n2", "n3"', '"n1", "n2"'), vms(4, '"512M"')))
    )
    try:
        start_pool(config, "n4", "full", file, connections=conns)  # n1, n2 full: 2 each
        host_file = Path(site.hosts["n1"].removeprefix("test://"))
        saved = host_file.read_text()
        conns.forget(site.hosts["n1"])
        host_file.unlink()
        watch_pool(config, "n4", "full", connections=conns, sleep=lambda _s: None, rounds=2)
        [report] = status(config, "full", connections=conns)
        assert [m.to_uri for m in report.moves] == [None, None]
        assert "not restarted: " in report.moves[0].reason
        assert "memory is the tightest" in report.moves[0].reason
        host_file.write_text(saved)  # back (empty: a fresh connection), so terminate finishes
        terminate_pool(config, "n4", "full", grace_seconds=0, connections=conns)
    finally:
        conns.close()


def test_a_move_waits_for_the_placing_lock_and_moves_at_a_later_ping(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A move places under the same lock as `sd start` (and counts its claims): while a start
    holds it, the VMs stay where they are, and the next missed ping moves them."""
    import sd_batch.deploy.pools

    monkeypatch.setattr(sd_batch.deploy.pools, "PLACING_WAIT_SECONDS", 0.05)
    config, conns = load_config(site.root / "site.toml"), Connections()
    try:
        result = start_pool(
            config, "n4", "ha", Path(site.write(description(HA, vms(1)))), connections=conns
        )
        [(domain, uri)] = result.placed
        host_file = Path(uri.removeprefix("test://"))
        saved = host_file.read_text()
        conns.forget(uri)
        host_file.unlink()
        lines: list[str] = []
        with sd_batch.deploy.pools.placing_lock(config):  # a start is placing meanwhile
            watcher = watch_pool(
                config,
                "n4",
                "ha",
                connections=conns,
                progress=lines.append,
                sleep=lambda _s: None,
                rounds=2,
            )
        assert watcher.vms[domain].uri == uri  # not moved while the lock was held
        assert lines[-1].startswith(
            f"could not move the VMs off {uri} yet: another sd start "
            "has been placing VMs on this site for more than 0.05 s"
        )
        watcher = watch_pool(
            config,
            "n4",
            "ha",
            connections=conns,
            progress=lines.append,
            sleep=lambda _s: None,
            rounds=2,
        )
        assert watcher.vms[domain].uri != uri
        assert lines[-1].startswith(f"moved {domain} from {uri} to ")
        host_file.write_text(saved)
        terminate_pool(config, "n4", "ha", grace_seconds=0, connections=conns)
    finally:
        conns.close()


def test_watching_stops_when_the_pool_is_being_terminated(site: Site) -> None:
    config, conns = load_config(site.root / "site.toml"), Connections()
    try:
        start_pool(config, "n4", "ha", Path(site.write(description(HA, vms(1)))), connections=conns)
        with Ledger.for_site(config) as ledger:
            from sd_batch.ledger.store import OwnerKind, OwnerStatus

            owner = ledger.owner(OwnerKind.POOL, "ha", site.hosts["n4"])
            assert owner is not None
            ledger.set_status(owner, OwnerStatus.TERMINATING)
        lines: list[str] = []
        watch_pool(config, "n4", "ha", connections=conns, progress=lines.append, rounds=5)
        assert lines == ["pool ha is being terminated: watching stops"]
        terminate_pool(config, "n4", "ha", grace_seconds=0, connections=conns)
    finally:
        conns.close()


def test_watching_a_pool_without_liveness_is_refused(site: Site) -> None:
    file = site.write(description('hosts [| "n1" |];', vms(1)))
    assert site.sd("start", "n4", "calm", file)[0] == 0
    code, _out, err = site.sd("watch", "n4", "calm", "--rounds", "1")
    assert code == 8 and "pool calm has no VM to watch; give its Scheduler sfLivenessDelay" in err
    assert site.sd("terminate", "n4", "calm", "--grace", "0")[0] == 0
