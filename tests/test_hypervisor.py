"""The libvirt edge, on libvirt's in-process test driver (no daemon, no VM).

`test:///ABS/tests/data/hosts/hostX.xml` gives every connection a private simulated host, so tests
do not see each other's domains; `test:///default` is shared inside the process and has the
`default-pool` storage pool.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from sd_batch.errors import DomainNotFound, HypervisorError, ShutoffTimeout
from sd_batch.hypervisor.connection import (
    DomainInfo,
    DomainOwner,
    DomainState,
    DomainStatus,
    Hypervisor,
    HypervisorAPI,
)
from sd_batch.vm.domain_xml import SD_NAMESPACE, Owner, OwnerKind, build_metadata

HOSTS = Path(__file__).resolve().parent / "data" / "hosts"
UNREACHABLE = "qemu+unix:///system?socket=/nonexistent/libvirt-sock"

libvirt_only = pytest.mark.libvirt


def host_uri(host: str) -> str:
    return f"test://{HOSTS / host}.xml"


def make_domain_xml(name: str, owner: tuple[str, str] | None = None, *, bogus: bool = False) -> str:
    """The smallest domain the test driver runs, with our owner metadata when given."""
    domain = ET.Element("domain", type="test")
    ET.SubElement(domain, "name").text = name
    ET.SubElement(domain, "memory", unit="MiB").text = "64"
    ET.SubElement(domain, "vcpu").text = "1"
    ET.SubElement(ET.SubElement(domain, "os"), "type").text = "hvm"
    if owner is not None:
        metadata = ET.SubElement(domain, "metadata")
        ET.SubElement(metadata, f"{{{SD_NAMESPACE}}}owner", kind=owner[0], id=owner[1])
    if bogus:
        ET.SubElement(domain, "bogus")
    return ET.tostring(domain, encoding="unicode")


@pytest.fixture
def hv() -> Iterator[Hypervisor]:
    """A private simulated host (hostA: 4 CPUs, 8 GiB, an `images` pool with a base image)."""
    pytest.importorskip("libvirt")
    with Hypervisor.connect(host_uri("hostA")) as hypervisor:
        yield hypervisor


class FakeClock:
    """A monotonic clock that moves only when read: each reading is STEP seconds later."""

    def __init__(self, step: float) -> None:
        self.now = 1000.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_importing_the_module_loads_neither_libvirt_nor_tenacity() -> None:
    code = (
        "import sys, sd_batch.hypervisor.connection\n"
        "assert 'libvirt' not in sys.modules and 'tenacity' not in sys.modules, sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_missing_libvirt_python_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    from sd_batch.hypervisor.connection import _libvirt

    monkeypatch.setitem(sys.modules, "libvirt", None)
    _libvirt.cache_clear()  # forget a libvirt imported by earlier tests
    with pytest.raises(HypervisorError, match="libvirt-python is not installed; pip install"):
        Hypervisor.connect("test:///default")


@libvirt_only
def test_hypervisor_satisfies_the_protocol(hv: Hypervisor) -> None:
    api: HypervisorAPI = hv
    assert api.uri == host_uri("hostA")


@libvirt_only
def test_define_start_destroy_undefine(hv: Hypervisor) -> None:
    assert hv.define(make_domain_xml("job-1")) == "job-1"
    assert hv.state("job-1").state is DomainState.SHUTOFF
    hv.start("job-1")
    assert hv.state("job-1").state is DomainState.RUNNING
    hv.destroy("job-1")
    assert hv.state("job-1").state is DomainState.SHUTOFF
    assert hv.state("job-1").reason == "destroyed"
    hv.undefine("job-1")
    with pytest.raises(DomainNotFound, match="no domain named job-1"):
        hv.state("job-1")


@libvirt_only
def test_a_paused_start_is_resumed_and_a_defined_domain_booted(hv: Hypervisor) -> None:
    """The job's VM made ahead of its runner (paused), then run: resumed, not booted again;
    without the paused start the runner boots it itself."""
    hv.define(make_domain_xml("job-p"))
    hv.start("job-p", paused=True)  # the test driver has no START_PAUSED: start + suspend
    assert hv.state("job-p") == DomainStatus(DomainState.PAUSED, "user")
    hv.start_or_resume("job-p")
    assert hv.state("job-p").state is DomainState.RUNNING
    with pytest.raises(HypervisorError, match="already running"):
        hv.start_or_resume("job-p")  # a second runner does not get the same VM
    hv.define(make_domain_xml("job-q"))
    hv.start_or_resume("job-q")
    assert hv.state("job-q").state is DomainState.RUNNING
    for name in ("job-p", "job-q"):
        hv.destroy(name)
        hv.undefine(name)


@libvirt_only
def test_a_paused_domain_is_torn_down_like_a_running_one(hv: Hypervisor) -> None:
    hv.define(make_domain_xml("job-r"))
    hv.start("job-r", paused=True)
    hv.destroy("job-r")
    hv.undefine("job-r")
    assert hv.list_domains() == ()


@libvirt_only
def test_teardown_is_idempotent(hv: Hypervisor) -> None:
    hv.define(make_domain_xml("job-2"))
    hv.start("job-2")
    for _ in range(2):  # the exit hook may run twice
        hv.destroy("job-2")
        hv.undefine("job-2")
    hv.destroy("never-defined")
    hv.undefine("never-defined")
    assert hv.list_domains() == ()


@libvirt_only
def test_destroying_a_shut_off_domain_is_fine(hv: Hypervisor) -> None:
    hv.define(make_domain_xml("job-3"))
    hv.destroy("job-3")
    assert hv.state("job-3").state is DomainState.SHUTOFF


@libvirt_only
def test_undefine_drops_managed_save_and_snapshots(hv: Hypervisor) -> None:
    hv.define(make_domain_xml("job-4"))
    hv.start("job-4")
    dom = hv.libvirt_connection().lookupByName("job-4")  # a private host: only it sees this
    dom.snapshotCreateXML("<domainsnapshot><name>s1</name></domainsnapshot>", 0)
    dom.managedSave(0)
    assert dom.hasManagedSaveImage(0)
    hv.undefine("job-4")
    assert hv.list_domains() == ()


@libvirt_only
def test_shutdown_of_a_shut_off_domain_is_a_no_op(hv: Hypervisor) -> None:
    hv.define(make_domain_xml("job-5"))
    hv.shutdown("job-5")
    assert hv.state("job-5").state is DomainState.SHUTOFF


@libvirt_only
def test_define_validates_against_the_schema(hv: Hypervisor) -> None:
    with pytest.raises(HypervisorError, match="extra content: bogus") as info:
        hv.define(make_domain_xml("bad", bogus=True))
    assert not info.value.transient
    assert str(info.value).startswith(f"{host_uri('hostA')}: cannot define domain: ")


@libvirt_only
def test_wait_shutoff_wakes_on_the_stop_event(
    hv: Hypervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    hv.define(make_domain_xml("job-6"))
    hv.start("job-6")
    read_state = hv.state
    reads: list[DomainState] = []
    powering_off: list[threading.Thread] = []

    def state_then_power_off(name: str) -> DomainStatus:
        """The guest powers off just after the wait first reads its state."""
        status = read_state(name)
        reads.append(status.state)
        if len(reads) == 1:
            powering_off.append(threading.Thread(target=hv.shutdown, args=(name,)))
            powering_off[0].start()
        return status

    monkeypatch.setattr(hv, "state", state_then_power_off)
    started = time.monotonic()
    status = hv.wait_shutoff("job-6", timeout=60, poll=60)
    powering_off[0].join()
    assert status.state is DomainState.SHUTOFF
    assert status.reason == "shutdown"
    assert reads == [DomainState.RUNNING, DomainState.SHUTOFF]  # woken once
    # the next read by the clock would come after 60 s: a bound no load reaches
    assert time.monotonic() - started < 30, "woken by the poll, not by the event"


@libvirt_only
def test_wait_shutoff_returns_at_once_when_already_off(hv: Hypervisor) -> None:
    hv.define(make_domain_xml("job-7"))
    assert hv.wait_shutoff("job-7", timeout=0).state is DomainState.SHUTOFF


@libvirt_only
def test_wait_shutoff_times_out_on_the_clock_without_waiting() -> None:
    pytest.importorskip("libvirt")
    with Hypervisor.connect(host_uri("hostA"), clock=FakeClock(step=60)) as hv:
        hv.define(make_domain_xml("job-8"))
        hv.start("job-8")
        with pytest.raises(ShutoffTimeout, match="domain job-8 still running after 30 s"):
            hv.wait_shutoff("job-8", timeout=30, poll=3600)  # an hour's poll: the clock decides
        assert hv.state("job-8").state is DomainState.RUNNING


@libvirt_only
def test_wait_shutoff_for_a_missing_domain_raises_domain_not_found(hv: Hypervisor) -> None:
    with pytest.raises(DomainNotFound):
        hv.wait_shutoff("ghost", timeout=1)


@libvirt_only
def test_list_domains_reads_owner_metadata(hv: Hypervisor) -> None:
    hv.define(make_domain_xml("job-9", owner=("job", "12.0")))
    hv.define(make_domain_xml("web-1", owner=("pool", "web")))
    hv.define(make_domain_xml("not-ours"))
    hv.define(make_domain_xml("odd", owner=("cluster", "x")))  # a kind from a newer sd-batch
    hv.start("web-1")
    assert hv.list_domains() == (
        DomainInfo("job-9", DomainState.SHUTOFF, DomainOwner("job", "12.0")),
        DomainInfo("not-ours", DomainState.SHUTOFF, None),
        DomainInfo("odd", DomainState.SHUTOFF, DomainOwner("cluster", "x")),
        DomainInfo("web-1", DomainState.RUNNING, DomainOwner("pool", "web")),
    )


@libvirt_only
def test_owner_metadata_written_by_domain_xml_reads_back(hv: Hypervisor) -> None:
    domain = ET.fromstring(make_domain_xml("job-10"))
    domain.append(build_metadata(Owner(OwnerKind.JOB, "7.3")))
    hv.define(ET.tostring(domain, encoding="unicode"))
    assert hv.list_domains()[0].owner == DomainOwner("job", "7.3")


@libvirt_only
def test_overlay_on_the_default_pool() -> None:
    libvirt = pytest.importorskip("libvirt")
    with Hypervisor.connect("test:///default") as hv:
        path = hv.create_overlay("default-pool", "ov-1.qcow2", "/images/base.qcow2", 2 << 30)
        try:
            assert path == "/default-pool/ov-1.qcow2"
            conn = libvirt.open("test:///default")  # shared in-process state: a second view
            volume = ET.fromstring(conn.storageVolLookupByPath(path).XMLDesc(0))
            assert volume.findtext("capacity") == str(2 << 30)
            assert volume.find("target/format").get("type") == "qcow2"  # type: ignore[union-attr]
            assert volume.findtext("backingStore/path") == "/images/base.qcow2"
            assert volume.find("backingStore/format").get("type") == "qcow2"  # type: ignore[union-attr]
        finally:
            hv.delete_volume(path)


@libvirt_only
def test_overlay_in_a_folder_gets_one_transient_dir_pool(hv: Hypervisor) -> None:
    base = "/var/lib/sd-batch/images-hostA/debian-base.qcow2"
    first = hv.create_overlay(Path("/srv/sd/overlays"), "a.qcow2", base, 4 << 30)
    second = hv.create_overlay("/srv/sd/overlays/", "b.qcow2", base, 4 << 30, "qcow2")
    assert (first, second) == ("/srv/sd/overlays/a.qcow2", "/srv/sd/overlays/b.qcow2")
    assert hv.volume_path("/srv/sd/overlays/", "b.qcow2") == second
    pools = [
        p
        for p in hv.libvirt_connection().listAllStoragePools(0)
        if p.name().startswith("sd-batch-")
    ]
    assert len(pools) == 1
    assert not pools[0].isPersistent()
    assert sorted(pools[0].listVolumes()) == ["a.qcow2", "b.qcow2"]


@libvirt_only
def test_overlay_in_a_named_pool(hv: Hypervisor) -> None:
    base = "/var/lib/sd-batch/images-hostA/debian-base.qcow2"
    expected = hv.volume_path("images", "job-11.qcow2")  # known before: the ledger's intent
    assert expected == "/var/lib/sd-batch/images-hostA/job-11.qcow2"
    assert hv.create_overlay("images", "job-11.qcow2", base, 4 << 30) == expected


@libvirt_only
def test_an_overlay_without_capacity_keeps_the_base_size(hv: Hypervisor) -> None:
    base = "/var/lib/sd-batch/images-hostA/debian-base.qcow2"  # 4 GiB, in the `images` pool
    path = hv.create_overlay("/srv/sd/overlays", "sized.qcow2", base)
    assert hv.libvirt_connection().storageVolLookupByPath(path).info()[1] == 4 << 30
    with pytest.raises(HypervisorError, match="no base image /nowhere/base.qcow2 on that host"):
        hv.create_overlay("/srv/sd/overlays", "unsized.qcow2", "/nowhere/base.qcow2")


@libvirt_only
def test_a_blank_volume(hv: Hypervisor) -> None:
    path = hv.create_blank("images", "scratch.raw", 1 << 30, "raw")
    volume = ET.fromstring(hv.libvirt_connection().storageVolLookupByPath(path).XMLDesc(0))
    assert volume.find("target/format").get("type") == "raw"  # type: ignore[union-attr]
    assert volume.find("backingStore") is None


@libvirt_only
def test_volume_errors_are_ours(hv: Hypervisor) -> None:
    with pytest.raises(HypervisorError, match="cannot find storage pool nope: .*not found"):
        hv.create_overlay("nope", "x.qcow2", "/base.qcow2", 1 << 30)
    with pytest.raises(HypervisorError, match="capacity must be positive"):
        hv.create_blank("images", "x.qcow2", 0)
    with pytest.raises(HypervisorError, match="'../x.qcow2' is not a safe volume name"):
        hv.create_overlay("images", "../x.qcow2", "/base.qcow2", 1 << 30)
    with pytest.raises(HypervisorError, match="'vmdk' is not a valid DiskFormat"):
        hv.create_overlay("images", "x.qcow2", "/base.vmdk", 1 << 30, "vmdk")
    hv.create_overlay("images", "x.qcow2", "/base.qcow2", 1 << 30)
    with pytest.raises(HypervisorError, match="cannot create volume x.qcow2: .*exists"):
        hv.create_overlay("images", "x.qcow2", "/base.qcow2", 1 << 30)


@libvirt_only
def test_delete_volume_is_idempotent(hv: Hypervisor) -> None:
    libvirt = pytest.importorskip("libvirt")
    path = hv.create_overlay("/srv/sd/overlays", "c.qcow2", "/base.qcow2", 1 << 30)
    conn = hv.libvirt_connection()
    assert conn.storageVolLookupByPath(path).path() == path
    hv.delete_volume(path)
    with pytest.raises(libvirt.libvirtError, match="no storage vol with matching path"):
        conn.storageVolLookupByPath(path)
    hv.delete_volume(path)
    hv.delete_volume("/nowhere/at/all.qcow2")
    hv.delete_volume(Path("/srv/sd/overlays/never-made.qcow2"))


def test_qemu_img_fallback_writes_volumes(tmp_path: Path) -> None:
    """The path taken where a URI has no storage driver (qemu:///embed)."""
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img is not installed")
    from sd_batch.hypervisor.storage import qemu_img_create

    base = tmp_path / "base.qcow2"
    qemu_img_create(base, "qcow2", 1 << 30, None)
    qemu_img_create(tmp_path / "ov.qcow2", "qcow2", 0, (str(base), "qcow2"))
    info = subprocess.run(
        ["qemu-img", "info", "--output=json", str(tmp_path / "ov.qcow2")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert f'"backing-filename": "{base}"' in info
    assert '"backing-filename-format": "qcow2"' in info
    assert '"virtual-size": 1073741824' in info  # the base's size
    with pytest.raises(HypervisorError, match="cannot create volume"):
        qemu_img_create(tmp_path / "x.qcow2", "qcow2", 0, (str(tmp_path / "nope"), "qcow2"))


@libvirt_only
@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("foo", "no connection driver available"),
        ("qemu://system", "invalid URI"),
        (f"test://{HOSTS}/missing.xml", "failed to parse xml document"),
    ],
)
def test_a_bad_uri_fails_at_once_and_is_not_transient(uri: str, words: str) -> None:
    pytest.importorskip("libvirt")
    sleeps: list[float] = []
    with pytest.raises(HypervisorError) as info:
        Hypervisor.connect(uri, sleep=sleeps.append)
    assert not info.value.transient
    assert str(info.value).startswith(f"{uri}: cannot connect: ")
    assert words in str(info.value)
    assert sleeps == []


@libvirt_only
def test_an_unreachable_daemon_is_transient_and_retried() -> None:
    pytest.importorskip("libvirt")
    sleeps: list[float] = []
    with pytest.raises(HypervisorError) as info:
        Hypervisor.connect(UNREACHABLE, attempts=4, sleep=sleeps.append)
    assert info.value.transient
    assert sleeps == [0.25, 0.5, 1.0]  # 4 attempts, 3 waits, exponential
    assert str(info.value) == (
        f"{UNREACHABLE}: cannot connect: Failed to connect socket to "
        "'/nonexistent/libvirt-sock': No such file or directory; "
        "is libvirtd running on that host? scripts/setup-host starts it"
    )


@libvirt_only
def test_retries_are_bounded_by_default() -> None:
    pytest.importorskip("libvirt")
    sleeps: list[float] = []
    with pytest.raises(HypervisorError):
        Hypervisor.connect(UNREACHABLE, sleep=sleeps.append)
    assert len(sleeps) == 5
    assert sum(sleeps) <= 8.0


@libvirt_only
def test_libvirt_prints_nothing_itself(hv: Hypervisor, capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(DomainNotFound):
        hv.start("ghost")
    with pytest.raises(HypervisorError):
        Hypervisor.connect("foo")
    assert capfd.readouterr() == ("", "")


@libvirt_only
@pytest.mark.parametrize(
    ("host", "cpus", "memory_mib"),
    [("hostA", 4, 8192), ("hostB", 16, 32768), ("hostC", 2, 2048)],
)
def test_host_capacity_from_node_files(host: str, cpus: int, memory_mib: int) -> None:
    pytest.importorskip("libvirt")
    with Hypervisor.connect(host_uri(host)) as hv:
        capacity = hv.host_capacity()
    assert (capacity.cpus, capacity.memory_mib) == (cpus, memory_mib)
    assert capacity.arch == "x86_64"
    assert capacity.hypervisor == "TEST"
    assert capacity.free_memory_mib is None  # node files say nothing about free memory
    assert capacity.domain_types == ("test",)
    assert capacity.uri == host_uri(host)


@libvirt_only
def test_each_node_file_connection_is_a_private_host() -> None:
    pytest.importorskip("libvirt")
    with Hypervisor.connect(host_uri("hostB")) as one, Hypervisor.connect(host_uri("hostB")) as two:
        one.define(make_domain_xml("only-on-one"))
        assert [d.name for d in one.list_domains()] == ["only-on-one"]
        assert two.list_domains() == ()


def test_a_saved_domain_is_off_and_restores_running_under_the_given_xml(
    hv: Hypervisor, tmp_path: Path
) -> None:
    """Eviction's save (pause, virDomainSave) and the next start's restore, on the test driver."""
    hv.define(make_domain_xml("sd-evicted"))
    hv.start("sd-evicted")
    saved = tmp_path / "saved.state"
    hv.save("sd-evicted", saved)
    assert hv.state("sd-evicted").state is DomainState.SHUTOFF
    assert saved.stat().st_size > 0
    xml = hv.saved_xml(saved)
    assert "<name>sd-evicted</name>" in xml
    hv.restore(saved, None)  # the test driver takes no replacement XML (QEMU: test_evict_e2e)
    assert hv.state("sd-evicted").state is DomainState.RUNNING
    hv.destroy("sd-evicted")
    hv.undefine("sd-evicted")
