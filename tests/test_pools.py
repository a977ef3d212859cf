"""Pools on libvirt's test driver: `sd start` / `sd status` / `sd terminate`, in-process.

Each test gets its own site (tmp image and state folders, a site.toml) and, as `localhost`, a
private simulated host: `test:///TMP/host.xml`, whose `images` pool holds the base image at the
same path as the site image folder. A test:/// connection keeps its host's state, so commands
run in this process share connections (`connections.SHARED_CONNECTIONS`); the fixture checks at the
end that no domain, no overlay and no ledger row of the test is left. The shipped
`tests/data/hosts/host{A,B}.xml` are the several-hosts case.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sd_batch.cli.main import sf_start, sf_terminate
from sd_batch.config.site import BUILTIN_TEMPLATE_DIR, SiteConfig, load_config
from sd_batch.deploy.pools import (
    start_pool,
    status,
    terminate_pool,
)
from sd_batch.errors import DeployError
from sd_batch.hypervisor.connection import DomainState, Hypervisor
from sd_batch.hypervisor.connections import SHARED_CONNECTIONS, Connections
from sd_batch.ledger.store import OwnerStatus

from conftest import SdSite, fake_kernel, ledger_rows, site_environ, write_node, write_site_toml

pytestmark = pytest.mark.libvirt
pytest.importorskip("libvirt", reason="libvirt-python is not installed")

HOSTS = Path(__file__).resolve().parent / "data" / "hosts"
POOL_SF = BUILTIN_TEMPLATE_DIR / "pool.sf"
#: Five VMs one after the other, each with a copy-on-write overlay of base.qcow2.
FIVE_IN_SEQUENCE = """#include "minimal.sf"
Vm extends MinimalVM { disks extends DATA { root extends Disk { image "base.qcow2"; } } }
sfConfig extends Sequence { a extends Vm; b extends Vm; c extends Vm; d extends Vm; e extends Vm; }
"""
FOUR_COUNTED = """#include "minimal.sf"
sfConfig extends Pool {
    count 4;
    template extends LAZY MinimalVM {
        disks extends DATA { root extends Disk { image "base.qcow2"; } }
    }
}
"""


def uri_of(host_file: Path) -> str:
    return f"test://{host_file}"


@dataclass
class Site(SdSite):
    uri: str  # `localhost`: this test's private host

    @property
    def image_dir(self) -> Path:
        return self.root / "images"

    @property
    def overlay_dir(self) -> Path:
        return self.root / "state" / "overlays"

    def config(self) -> SiteConfig:
        return load_config(self.config_file)

    def description(self, text: str, name: str = "pool.sf") -> str:
        path = self.root / name
        path.write_text(text, encoding="utf-8")
        return str(path)

    def ledger_rows(self) -> tuple[list[str], list[str]]:
        return ledger_rows(self.config())


def host(uri: str) -> Hypervisor:
    hv = SHARED_CONNECTIONS(uri)
    assert isinstance(hv, Hypervisor)
    return hv


def domains(uri: str) -> dict[str, DomainState]:
    return {d.name: d.state for d in host(uri).list_domains()}


def volumes(uri: str, folder: Path) -> list[str]:
    """Volumes libvirt knows in FOLDER (the test driver keeps them in memory, not on disk)."""
    conn = host(uri).libvirt_connection()
    return sorted(
        v.path()
        for p in conn.listAllStoragePools(0)
        for v in p.listAllVolumes(0)
        if Path(v.path()).parent == folder
    )


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    images = tmp_path / "images"
    fake_kernel(images)
    (images / "base.qcow2").write_bytes(b"QFI\xfb" + bytes(508))
    uri = write_node(tmp_path / "host.xml", images=images)
    hosts = {"a": uri_of(HOSTS / "hostA.xml"), "b": uri_of(HOSTS / "hostB.xml")}
    config = write_site_toml(tmp_path, uri, hosts=hosts)
    made = Site(tmp_path, site_environ(config), uri)
    before = {uri: set(domains(uri)) for uri in ("test:///default", *hosts_ab())}
    yield made
    assert made.ledger_rows() == ([], []), "the test left rows in the ledger"
    assert volumes(made.uri, made.overlay_dir) == []
    for uri, names in before.items():
        assert set(domains(uri)) == names, f"the test left domains on {uri}"
    SHARED_CONNECTIONS.forget(made.uri)  # this host file dies with the test


def hosts_ab() -> tuple[str, str]:
    return uri_of(HOSTS / "hostA.xml"), uri_of(HOSTS / "hostB.xml")


# --- start, status, terminate ------------------------------------------------------------------
def test_start_status_terminate_a_pool_on_the_default_test_host(site: Site) -> None:
    started = site.sd("start", "test:///default", "rt", str(POOL_SF))
    assert started.code == 0, started.err
    assert started.out == ("pool rt started on test:///default: 2 VMs running (rt-vm1, rt-vm2)\n")
    assert "[2/2] started rt-vm2" in started.err
    assert domains("test:///default")["rt-vm1"] is DomainState.RUNNING

    text = site.sd("status")
    assert text.code == 0
    assert text.out.splitlines()[0] == f"pool rt on test:///default: active (from {POOL_SF})"
    vm_lines = [line.split() for line in text.out.splitlines() if line.startswith("  rt-")]
    assert vm_lines == [["rt-vm1", "running"], ["rt-vm2", "running"]]

    [report] = json.loads(site.sd("status", "rt", "--json").out)
    assert {k: v for k, v in report.items() if k != "files"} == {
        "kind": "pool",
        "name": "rt",
        "uri": "test:///default",
        "status": "active",
        "description": str(POOL_SF),
        "interrupted": False,
        "volumes": [],
        "vms": [
            {"name": "rt-vm1", "uri": "test:///default", "state": "running"},
            {"name": "rt-vm2", "uri": "test:///default", "state": "running"},
        ],
    }

    stopped = site.sd("terminate", "test:///default", "rt", "--grace", "2")
    assert stopped.code == 0
    assert stopped.out.startswith("pool rt terminated: removed 2 domains, 0 volumes")
    assert "rt-vm1" not in domains("test:///default")
    assert site.sd("status").out == "no pools or jobs\n"


def test_a_pool_with_overlays_lists_and_removes_its_disks(site: Site) -> None:
    file = site.description(FOUR_COUNTED)
    started = site.sd("start", "localhost", "lab", file, "--json")
    assert json.loads(started.out) == {
        "pool": "lab",
        "uri": site.uri,
        "vms": ["lab-1", "lab-2", "lab-3", "lab-4"],
    }
    assert started.err == ""  # --json: no progress lines
    overlays = [str(site.overlay_dir / f"lab-{n}-root.qcow2") for n in range(1, 5)]
    assert volumes(site.uri, site.overlay_dir) == overlays
    [report] = json.loads(site.sd("status", "--json").out)
    assert report["volumes"] == overlays
    assert report["files"] == [
        str(site.root / "state" / "consoles" / f"lab-{n}.log") for n in range(1, 5)
    ]
    assert f"  disk {overlays[0]}" in site.sd("status").out.splitlines()

    stopped = site.sd("terminate", "localhost", "lab", "--json")
    assert json.loads(stopped.out)["removed"].startswith("4 domains, 4 volumes")


def test_the_library_calls_start_report_and_terminate_a_pool(site: Site) -> None:
    config, connections = site.config(), Connections()
    try:
        lines: list[str] = []
        result = start_pool(
            config, "localhost", "direct", POOL_SF, connections=connections, progress=lines.append
        )
        assert (result.uri, result.domains) == (site.uri, ("direct-vm1", "direct-vm2"))
        assert lines[-1] == "[2/2] started direct-vm2"
        [report] = status(config, "direct", connections=connections)
        assert report.status == "active" and not report.interrupted
        assert [(vm.name, vm.state) for vm in report.vms] == [
            ("direct-vm1", "running"),
            ("direct-vm2", "running"),
        ]
        removed = terminate_pool(
            config, "localhost", "direct", grace_seconds=0, connections=connections
        )
        assert removed.startswith("2 domains, 0 volumes")
        assert connections(site.uri).list_domains() == ()
    finally:
        connections.close()


def test_starting_a_pool_name_that_exists_is_refused_and_leaves_it_running(site: Site) -> None:
    assert site.sd("start", "localhost", "lab", str(POOL_SF)).code == 0
    again = site.sd("start", "localhost", "lab", str(POOL_SF))
    assert again.code == 8
    assert f"sd: error: pool lab already exists on {site.uri}" in again.err
    assert "sd terminate localhost lab first" in again.err
    assert domains(site.uri) == {"lab-vm1": DomainState.RUNNING, "lab-vm2": DomainState.RUNNING}
    assert site.sd("terminate", "localhost", "lab").code == 0


def test_terminating_an_unknown_pool_is_an_error_that_lists_the_pools(site: Site) -> None:
    missing = site.sd("terminate", "localhost", "nope")
    assert (missing.code, missing.out) == (8, "")
    assert f"no pool named nope on {site.uri}; no pools are running" in missing.err
    assert site.sd("start", "localhost", "lab", str(POOL_SF)).code == 0
    missing = site.sd("terminate", "localhost", "nope")
    assert f"pools: lab on {site.uri}" in missing.err
    assert site.sd("terminate", "localhost", "lab").code == 0
    assert site.sd("status", "nope").code == 8


def test_terminating_twice_removes_once_then_says_the_pool_is_gone(site: Site) -> None:
    assert site.sd("start", "localhost", "lab", str(POOL_SF)).code == 0
    assert site.sd("terminate", "localhost", "lab").code == 0
    second = site.sd("terminate", "localhost", "lab")
    assert second.code == 8 and "no pool named lab" in second.err


def test_terminate_succeeds_when_the_vms_were_already_removed_by_hand(site: Site) -> None:
    assert site.sd("start", "localhost", "lab", str(POOL_SF)).code == 0
    for name in ("lab-vm1", "lab-vm2"):
        host(site.uri).destroy(name)
        host(site.uri).undefine(name)
    assert [vm["state"] for vm in json.loads(site.sd("status", "--json").out)[0]["vms"]] == [
        "missing",
        "missing",
    ]
    assert site.sd("terminate", "localhost", "lab", "--grace", "0").code == 0


def test_an_interrupted_terminate_finishes_when_run_again(site: Site) -> None:
    file = site.description(FOUR_COUNTED)
    assert site.sd("start", "localhost", "lab", file).code == 0

    def interrupt(line: str) -> None:
        if line == "removed lab-3":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        terminate_pool(site.config(), "localhost", "lab", grace_seconds=0, progress=interrupt)
    assert sorted(domains(site.uri)) == ["lab-1", "lab-2"]
    [report] = status(site.config())
    assert report.status == OwnerStatus.TERMINATING.value
    again = site.sd("terminate", "localhost", "lab", "--grace", "0")
    assert (again.code, again.err.splitlines()[-1]) == (0, "removed lab-1")
    assert domains(site.uri) == {}  # and the fixture checks the ledger and the overlays


# --- all or nothing ----------------------------------------------------------------------------
def test_a_pool_failing_at_its_third_vm_rolls_back_the_two_started(site: Site) -> None:
    """A domain named like the 3rd VM already exists: it is refused, the rest is undone."""
    foreign = host(site.uri).define(
        "<domain type='test'><name>lab-c</name><memory unit='MiB'>64</memory>"
        "<os><type>hvm</type></os></domain>"
    )
    host(site.uri).start(foreign)
    foreign_xml = host(site.uri).libvirt_connection().lookupByName(foreign).XMLDesc(0)
    try:
        run = site.sd("start", "localhost", "lab", site.description(FIVE_IN_SEQUENCE))
        assert run.code == 8
        assert "[2/5] started lab-b" in run.err and "[3/5]" not in run.err
        error = run.err.splitlines()[-1]
        assert error.startswith(
            f"sd: error: pool lab: VM lab-c (sfConfig:c): {site.uri}: cannot define domain: "
        )
        assert "'lab-c' already exists" in error
        assert "; rolled back: removed 2 domains, 3 volumes" in error
        assert domains(site.uri) == {"lab-c": DomainState.RUNNING}
        assert host(site.uri).libvirt_connection().lookupByName(foreign).XMLDesc(0) == foreign_xml
        assert volumes(site.uri, site.overlay_dir) == []
        assert site.ledger_rows() == ([], [])
    finally:
        host(site.uri).destroy(foreign)
        host(site.uri).undefine(foreign)


def test_a_disk_file_already_there_is_refused_and_kept(site: Site) -> None:
    site.overlay_dir.mkdir(parents=True)
    kept = site.overlay_dir / "lab-3-root.qcow2"
    kept.write_bytes(b"someone's data")
    run = site.sd("start", "localhost", "lab", site.description(FOUR_COUNTED))
    assert run.code == 8
    assert f"VM lab-3 (sfConfig:template): disk {kept} already exists" in run.err
    assert "rolled back: removed 2 domains, 2 volumes" in run.err  # lab-1, lab-2: defined
    assert kept.read_bytes() == b"someone's data"
    assert domains(site.uri) == {}


def test_a_missing_base_image_is_refused_before_anything_is_recorded(site: Site) -> None:
    text = FIVE_IN_SEQUENCE.replace("base.qcow2", "nowhere.qcow2")
    run = site.sd("start", "localhost", "lab", site.description(text))
    assert run.code == 8
    assert "VM lab-a: sfConfig:a: disk image nowhere.qcow2 does not exist" in run.err
    assert "rolled back: removed 0 domains, 0 volumes" in run.err


def test_a_failed_rollback_still_says_why_the_start_failed(site: Site) -> None:
    """The host goes away after the 1st VM: the start and its rollback both fail."""
    from sd_batch.errors import HypervisorError
    from sd_batch.hypervisor.connection import connect

    config, gone = site.config(), False

    def opener(uri: str) -> Hypervisor:
        if gone:
            raise HypervisorError(f"{uri}: cannot connect: the host is gone", transient=True)
        return connect(uri)

    connections = Connections(opener)

    def break_connection(line: str) -> None:
        nonlocal gone
        if line.startswith("[1/5] started"):
            connections(site.uri).close()  # a dead connection is reopened: and that fails too
            gone = True

    with pytest.raises(DeployError) as info:
        start_pool(
            config,
            "localhost",
            "lab",
            Path(site.description(FIVE_IN_SEQUENCE)),
            connections=connections,
            progress=break_connection,
        )
    message = str(info.value)
    assert message.startswith(f"pool lab: VM lab-b (sfConfig:b): {site.uri}: cannot ")
    assert "; NOT rolled back: pool lab: could not remove everything: " in message
    assert message.endswith("the ledger keeps what is left: run the same command again")
    assert site.ledger_rows()[0] == ["pool lab"]
    fresh = Connections()  # a new connection to the host file: a host without those VMs
    try:
        terminate_pool(config, "localhost", "lab", grace_seconds=0, connections=fresh)
    finally:
        fresh.close()


# --- order -------------------------------------------------------------------------------------
def test_sequences_inside_a_parallel_start_in_their_own_order(site: Site) -> None:
    file = site.description(
        '#include "minimal.sf"\n'
        "sfConfig extends Parallel {\n"
        "  s1 extends Sequence { a extends MinimalVM; b extends MinimalVM; }\n"
        "  s2 extends Sequence { c extends MinimalVM; d extends MinimalVM; }\n"
        "}\n"
    )
    run = site.sd("start", "localhost", "par", file)
    assert run.code == 0, run.err
    started = [line.split()[-1] for line in run.err.splitlines() if " started " in line]
    assert sorted(started) == ["par-s1-a", "par-s1-b", "par-s2-c", "par-s2-d"]
    assert started.index("par-s1-a") < started.index("par-s1-b")
    assert started.index("par-s2-c") < started.index("par-s2-d")
    assert site.sd("terminate", "localhost", "par", "--grace", "0").code == 0


def test_a_virtual_cluster_starts_its_head_first(site: Site) -> None:
    run = site.sd("start", "localhost", "qa", str(BUILTIN_TEMPLATE_DIR / "qa-testbed.sf"))
    assert run.code == 0, run.err
    started = [line for line in run.err.splitlines() if " started " in line]
    assert started[0] == "[1/3] started qa-head" and len(started) == 3
    assert set(domains(site.uri)) == {"qa-head", "qa-worker1", "qa-worker2"}
    stopped = site.sd("terminate", "localhost", "qa", "--grace", "0")
    assert stopped.err.splitlines()[-1] == "removed qa-head"  # torn down last


# --- several hosts -----------------------------------------------------------------------------
def test_one_pool_name_on_two_hosts_named_by_site_name_and_by_uri(site: Site) -> None:
    uri_a, uri_b = hosts_ab()
    assert site.sd("start", "a", "lab", str(POOL_SF)).code == 0
    assert site.sd("start", uri_b, "lab", str(POOL_SF)).code == 0
    reports = json.loads(site.sd("status", "lab", "--json").out)
    assert [(r["uri"], [v["state"] for v in r["vms"]]) for r in reports] == [
        (uri_a, ["running", "running"]),
        (uri_b, ["running", "running"]),
    ]
    assert site.sd("terminate", "a", "lab", "--grace", "0").code == 0
    assert "lab-vm1" not in domains(uri_a)
    assert domains(uri_b)["lab-vm1"] is DomainState.RUNNING
    assert site.sd("terminate", "b", "lab", "--grace", "0").code == 0


def test_an_unknown_host_name_is_a_site_config_error(site: Site) -> None:
    run = site.sd("start", "nowhere", "lab", str(POOL_SF))
    assert run.code == 3
    assert "unknown host 'nowhere'" in run.err and "a, b, localhost" in run.err


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (("start", "localhost", "a/b", "F"), 2, "'a/b' is not a pool name"),
        (("start", "localhost", "lab", "missing.sf"), 4, "missing.sf"),
        (("start", "localhost", "lab"), 2, "the following arguments are required: FILE"),
    ],
)
def test_bad_start_requests_exit_with_their_own_code_and_record_nothing(
    site: Site, argv: tuple[str, ...], code: int, message: str
) -> None:
    argv = tuple(str(POOL_SF) if a == "F" else a for a in argv)
    run = site.sd(*argv)
    assert (run.code, message in run.err) == (code, True), run.err


# --- the seed's spellings ----------------------------------------------------------------------
def test_sfstart_and_sfterminate_are_sd_start_and_terminate(
    site: Site, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SD_BATCH_CONFIG", str(site.config_file))
    monkeypatch.setattr("sys.argv", ["sfStart", "localhost", "seed", str(POOL_SF)])
    with pytest.raises(SystemExit) as started:
        sf_start()
    assert started.value.code == 0
    assert "pool seed started" in capsys.readouterr().out
    monkeypatch.setattr("sys.argv", ["sfTerminate", "localhost", "seed"])
    with pytest.raises(SystemExit) as stopped:
        sf_terminate()
    assert stopped.value.code == 0
    assert "pool seed terminated" in capsys.readouterr().out


def test_the_seed_spellings_are_installed_console_scripts() -> None:
    from importlib.metadata import entry_points

    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts["sfStart"] == "sd_batch.cli.main:sf_start"
    assert scripts["sfTerminate"] == "sd_batch.cli.main:sf_terminate"


# --- a crash in the middle of a start ----------------------------------------------------------
def start_and_die(config_file: str, name: str, file: str, after: int) -> None:
    """Child process: start pool NAME and be killed (SIGKILL) once AFTER VMs have started."""

    def progress(line: str) -> None:
        if line.startswith(f"[{after}/"):
            os.kill(os.getpid(), signal.SIGKILL)

    start_pool(load_config(Path(config_file)), "localhost", name, Path(file), progress=progress)


@pytest.mark.parametrize("cleaner", ["start", "terminate"])
def test_a_start_killed_half_way_is_cleaned_by_the_next_command(site: Site, cleaner: str) -> None:
    file = site.description(FOUR_COUNTED)
    child = multiprocessing.get_context("spawn").Process(
        target=start_and_die, args=(str(site.config_file), "lab", file, 2)
    )
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    owners, resources = site.ledger_rows()
    assert owners == ["pool lab"]
    assert sorted(r for r in resources if not r.startswith("file ")) == sorted(
        [f"domain lab-{n}" for n in range(1, 5)]
        + [f"volume {site.overlay_dir}/lab-{n}-root.qcow2" for n in range(1, 5)]
    )
    [report] = json.loads(site.sd("status", "--json").out)
    assert (report["status"], report["interrupted"]) == ("starting", True)
    assert "INTERRUPTED: its process died" in site.sd("status").out

    if cleaner == "start":
        run = site.sd("start", "localhost", "lab", file)
        assert run.code == 0, run.err
        assert "cleaning up what an interrupted run of pool lab left" in run.err
        assert site.ledger_rows()[0] == ["pool lab"]
        assert json.loads(site.sd("status", "--json").out)[0]["interrupted"] is False
        run = site.sd("terminate", "localhost", "lab", "--grace", "0")
    else:
        run = site.sd("terminate", "localhost", "lab", "--grace", "0")
    assert run.code == 0, run.err
    assert site.ledger_rows() == ([], [])


def test_a_dead_cached_connection_is_reopened_on_next_use() -> None:
    """sd watch and sd web live longer than a libvirtd restart: a closed connection is replaced."""
    from sd_batch.hypervisor.connections import Connections

    connections = Connections()
    first = connections("test:///default")
    first.close()  # what a daemon restart does to a client connection
    second = connections("test:///default")
    assert second is not first
    assert second.is_alive()
    connections.close()
