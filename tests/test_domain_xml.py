"""Domain and volume XML: golden files per flavour, libvirt's schema, libvirt's test driver."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from sd_batch.vm.domain_xml import (
    SD_NAMESPACE,
    DiskSource,
    ExtraDisk,
    HostFiles,
    Owner,
    OwnerKind,
    build_domain,
    build_domain_xml,
    to_xml,
    volume_xml,
)
from sd_batch.vm.spec import (
    DiskBoot,
    DiskFormat,
    DiskSpec,
    Flavour,
    KernelBoot,
    LifecycleAction,
    VMSpec,
)

GOLDEN = Path(__file__).parent / "data" / "domain_xml"
JOBS = PurePosixPath("/var/lib/sd-batch/jobs/1234.0")
IMAGES = PurePosixPath("/var/lib/sd-batch/images")
JOB = Owner(OwnerKind.JOB, "1234.0")
POOL = Owner(OwnerKind.POOL, "workers")
QCOW2, RAW = DiskFormat.QCOW2, DiskFormat.RAW
Validate = Callable[[Path, str], None]


def disk(name: str, index: int, flavour: Flavour, **fields: Any) -> DiskSpec:
    bus = flavour.disk_bus
    return DiskSpec(name, bus.device_name(index), bus, path=f"sfConfig:vm:disks:{name}", **fields)


def source(name: str, disk_format: DiskFormat = QCOW2) -> DiskSource:
    return DiskSource(JOBS / name, disk_format)


def job_disks(*, serials: bool = False) -> tuple[ExtraDisk, ...]:
    """The input disk (the sandbox, read-only) and output disk the host adds to every job VM."""
    return (
        ExtraDisk(source("input.img", RAW), readonly=True, serial="sd-input" if serials else None),
        ExtraDisk(source("output.img", RAW), serial="sd-output" if serials else None),
    )


@dataclass(frozen=True)
class Case:
    spec: VMSpec
    files: HostFiles
    owner: Owner = JOB


KERNEL = KernelBoot(IMAGES / "vmlinuz", IMAGES / "initrd.cpio.gz", "console=hvc0 quiet panic=-1")
CASES = {
    "xen-pv": Case(
        VMSpec(
            "job-1234-0",
            512,
            1,
            Flavour.XEN_PV,
            KERNEL,
            disks=(disk("root", 0, Flavour.XEN_PV, image=IMAGES / "debian-12.qcow2"),),
        ),
        HostFiles(disks=(source("root.qcow2"),), extra_disks=job_disks()),
    ),
    "xen-pv-pygrub": Case(
        VMSpec(
            "workers-w1",
            2048,
            2,
            Flavour.XEN_PV,
            DiskBoot("pygrub"),
            disks=(disk("root", 0, Flavour.XEN_PV, image=IMAGES / "debian-12.qcow2"),),
            network="default",
        ),
        HostFiles(disks=(source("root.qcow2"),)),
        POOL,
    ),
    "xen-pvh": Case(
        VMSpec(
            "job-1234-0",
            1024,
            2,
            Flavour.XEN_PVH,
            KERNEL,
            disks=(
                disk("root", 0, Flavour.XEN_PVH, image=IMAGES / "debian-12.qcow2"),
                disk("scratch", 1, Flavour.XEN_PVH, size_bytes=10 << 30, format=RAW),
            ),
        ),
        HostFiles(
            disks=(source("root.qcow2"), source("scratch.img", RAW)), extra_disks=job_disks()
        ),
    ),
    "xen-hvm": Case(
        VMSpec(
            "job-1234-0",
            4096,
            4,
            Flavour.XEN_HVM,
            DiskBoot(),
            disks=(disk("root", 0, Flavour.XEN_HVM, image=IMAGES / "debian-12.qcow2"),),
            network="default",
            on_reboot=LifecycleAction.RESTART,
            on_crash=LifecycleAction.COREDUMP_DESTROY,
        ),
        HostFiles(
            disks=(source("root.qcow2"),), extra_disks=job_disks(), console_log=JOBS / "console.log"
        ),
    ),
    "kvm": Case(
        VMSpec(
            "job-1234-0",
            2048,
            2,
            Flavour.KVM,
            KernelBoot(PurePosixPath("vmlinuz"), None, "console=ttyS0 panic=-1"),
            disks=(
                disk("root", 0, Flavour.KVM, image=IMAGES / "debian-12.qcow2", serial="root"),
                disk("data", 1, Flavour.KVM, image=IMAGES / "data.img", format=RAW, readonly=True),
            ),
            network="default",
        ),
        HostFiles(
            disks=(source("root.qcow2"), DiskSource(IMAGES / "data.img", RAW)),
            extra_disks=job_disks(serials=True),
            kernel=IMAGES / "vmlinuz",
            console_log=JOBS / "console.log",
        ),
    ),
    "qemu": Case(
        VMSpec(
            "job-1234-0",
            256,
            1,
            Flavour.QEMU,
            DiskBoot(),
            disks=(disk("root", 0, Flavour.QEMU, image=IMAGES / "debian-12.qcow2"),),
            on_reboot=LifecycleAction.RESTART,
        ),
        HostFiles(disks=(source("root.qcow2"),), extra_disks=job_disks()),
    ),
}
VOLUMES = {
    "volume-overlay": ("root.qcow2", 10 << 30, IMAGES / "debian-12.qcow2", QCOW2, QCOW2),
    "volume-overlay-on-raw": ("data.qcow2", 1 << 30, IMAGES / "data.img", RAW, QCOW2),
    "volume-blank": ("scratch.img", 10 << 30, None, None, RAW),
}


def attribute(element: ET.Element, path: str, name: str) -> str | None:
    found = element.find(path)
    assert found is not None, f"no {path} in {element.tag}"
    return found.get(name)


def domain_text(case: str) -> str:
    return build_domain_xml(CASES[case].spec, CASES[case].files, CASES[case].owner)


# -- fixtures: libvirt's schema checker and test driver -----------------------------------------
@pytest.fixture(scope="session")
def virt_xml_validate() -> Validate:
    tool = shutil.which("virt-xml-validate")
    if tool is None:
        pytest.skip("virt-xml-validate not installed (apt-get install libvirt-clients)")
    assert shutil.which("xmllint"), (
        "virt-xml-validate needs xmllint (apt-get install libxml2-utils): "
        "without it, it exits 0 and checks nothing"
    )

    def validate(path: Path, schema: str) -> None:
        result = subprocess.run([tool, str(path), schema], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr

    return validate


@pytest.fixture
def libvirt_test_driver() -> Iterator[Any]:
    """`test:///default`: real libvirt parsing and validation, no hypervisor."""
    libvirt = pytest.importorskip("libvirt")
    libvirt.registerErrorHandler(lambda _ctx, _error: None, None)  # errors as exceptions only
    conn = libvirt.open("test:///default")
    yield conn
    conn.close()


# -- golden files and validation -----------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_domain_xml_matches_golden_file(case: str, golden: Callable[[Path, str], None]) -> None:
    golden(GOLDEN / f"{case}.xml", domain_text(case))


@pytest.mark.parametrize("case", CASES)
def test_domain_xml_validates_against_libvirts_schema(
    case: str, tmp_path: Path, virt_xml_validate: Validate
) -> None:
    path = tmp_path / f"{case}.xml"
    path.write_text(domain_text(case))
    virt_xml_validate(path, "domain")


def test_schema_check_rejects_a_stray_element(tmp_path: Path, virt_xml_validate: Validate) -> None:
    """Proof the checker checks: virt-xml-validate without xmllint passes anything."""
    domain = build_domain(CASES["kvm"].spec, CASES["kvm"].files, JOB)
    ET.SubElement(domain, "bogus")
    path = tmp_path / "bogus.xml"
    path.write_text(to_xml(domain))
    with pytest.raises(AssertionError, match="bogus"):
        virt_xml_validate(path, "domain")


@pytest.mark.libvirt
@pytest.mark.parametrize("case", CASES)
def test_domain_defines_and_runs_on_libvirts_test_driver(
    case: str, libvirt_test_driver: Any
) -> None:
    libvirt = pytest.importorskip("libvirt")

    domain = libvirt_test_driver.defineXMLFlags(
        domain_text(case), libvirt.VIR_DOMAIN_DEFINE_VALIDATE
    )
    try:
        domain.create()
        assert domain.isActive()
        owner = ET.fromstring(domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, SD_NAMESPACE))
        assert owner.attrib == {"kind": CASES[case].owner.kind.value, "id": CASES[case].owner.id}
        domain.destroy()
    finally:
        domain.undefine()


@pytest.mark.parametrize("case", VOLUMES)
def test_volume_xml_matches_golden_file(case: str, golden: Callable[[Path, str], None]) -> None:
    golden(GOLDEN / f"{case}.xml", volume_xml(*VOLUMES[case]))


@pytest.mark.parametrize("case", VOLUMES)
def test_volume_xml_validates_against_libvirts_schema(
    case: str, tmp_path: Path, virt_xml_validate: Validate
) -> None:
    path = tmp_path / f"{case}.xml"
    path.write_text(volume_xml(*VOLUMES[case]))
    virt_xml_validate(path, "storagevol")


@pytest.mark.libvirt
@pytest.mark.parametrize("case", VOLUMES)
def test_volume_is_created_in_a_test_driver_pool(case: str, libvirt_test_driver: Any) -> None:
    pool = libvirt_test_driver.storagePoolLookupByName("default-pool")
    volume = pool.createXML(volume_xml(*VOLUMES[case]), 0)
    try:
        made = ET.fromstring(volume.XMLDesc())
        _name, capacity, backing, backing_format, disk_format = VOLUMES[case]
        assert made.findtext("capacity") == str(capacity)
        assert attribute(made, "target/format", "type") == disk_format.value
        if backing is not None and backing_format is not None:
            assert made.findtext("backingStore/path") == str(backing)
            assert attribute(made, "backingStore/format", "type") == backing_format.value
    finally:
        volume.delete()


# -- what every domain must have -----------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_fully_virtualised_guests_get_acpi_or_they_never_shut_off(case: str) -> None:
    domain = ET.fromstring(domain_text(case))
    features = domain.find("features")
    if CASES[case].spec.flavour in (Flavour.XEN_PV, Flavour.XEN_PVH):
        assert features is None
    else:
        assert features is not None and features.find("acpi") is not None


@pytest.mark.parametrize("case", CASES)
def test_balloon_is_off_on_virtio_and_absent_on_xen(case: str) -> None:
    balloons = ET.fromstring(domain_text(case)).findall("devices/memballoon")
    if CASES[case].spec.flavour.is_xen:
        assert balloons == []
    else:
        assert [b.attrib for b in balloons] == [{"model": "none"}]


@pytest.mark.parametrize("case", CASES)
def test_every_disk_names_its_format_and_host_disks_follow_the_described_ones(case: str) -> None:
    spec = CASES[case].spec
    disks = ET.fromstring(domain_text(case)).findall("devices/disk")
    assert all(attribute(d, "driver", "type") in ("qcow2", "raw") for d in disks)
    devices = [attribute(d, "target", "dev") for d in disks]
    bus = spec.flavour.disk_bus
    assert devices == [bus.device_name(i) for i in range(len(disks))]


#: Devices a batch VM never uses; libvirt adds none of them unless the XML asks.
UNUSED_DEVICES = (
    "graphics",
    "video",
    "sound",
    "audio",
    "input",
    "channel",
    "rng",
    "redirdev",
    "hostdev",
    "smartcard",
    "watchdog",
    "tpm",
    "filesystem",
)


@pytest.mark.parametrize("case", CASES)
def test_a_batch_vm_gets_only_what_it_uses(case: str) -> None:
    """No USB controller (libvirt adds one to a KVM/QEMU pc machine otherwise), no balloon,
    nothing graphical, and NICs without the option ROM a network boot would need."""
    devices = ET.fromstring(domain_text(case)).find("devices")
    assert devices is not None
    assert [d.tag for d in devices if d.tag in UNUSED_DEVICES] == []
    controllers = [c.attrib for c in devices.findall("controller")]
    rom = [i.find("rom") for i in devices.findall("interface")]
    if CASES[case].spec.flavour.is_xen:
        assert controllers == [] and rom == [None] * len(rom)
    else:
        assert controllers == [{"type": "usb", "model": "none"}]
        assert [r.attrib if r is not None else None for r in rom] == [{"enabled": "no"}] * len(rom)


@pytest.mark.qemu
def test_libvirts_qemu_command_line_has_the_disks_and_console_alone() -> None:
    """What `virsh domxml-to-native qemu-argv` makes of a job VM: QEMU's `-nodefaults` machine
    with our two virtio disks and the serial port, as `benchmarks/job_overhead.py` runs raw
    QEMU; no USB controller, no balloon, no NIC."""
    libvirt = pytest.importorskip("libvirt")
    if not Path("/run/libvirt/libvirt-sock").exists():
        pytest.skip("no libvirtd on qemu:///system (scripts/setup-host)")
    libvirt.registerErrorHandler(lambda _ctx, _error: None, None)
    conn = libvirt.open("qemu:///system")
    try:
        case = CASES["qemu"]
        spec = VMSpec(
            "job-1234-0",
            256,
            1,
            Flavour.QEMU,
            KernelBoot(IMAGES / "vmlinux", IMAGES / "initrd.img", "console=ttyS0"),
        )
        files = HostFiles(extra_disks=job_disks(serials=True), console_log=JOBS / "console.log")
        argv = conn.domainXMLToNative("qemu-argv", build_domain_xml(spec, files, case.owner))
    finally:
        conn.close()
    assert "-nodefaults" in argv
    devices = [device_driver(d) for d in argv.split("-device ")[1:]]
    assert devices == ["virtio-blk-pci", "virtio-blk-pci", "isa-serial"], argv


def device_driver(text: str) -> str:
    """The driver of one `-device` argument (libvirt writes them as JSON)."""
    return str(json.loads(shlex.split(text)[0])["driver"])


def test_xen_interface_has_no_virtio_model() -> None:
    interface = ET.fromstring(domain_text("xen-hvm")).find("devices/interface")
    assert interface is not None and interface.find("model") is None
    kvm_model = ET.fromstring(domain_text("kvm")).find("devices/interface/model")
    assert kvm_model is not None and kvm_model.get("type") == "virtio"


def test_building_is_deterministic_and_serialising_leaves_the_tree_alone() -> None:
    case = CASES["kvm"]
    element = build_domain(case.spec, case.files, case.owner)
    before = ET.tostring(element)
    assert to_xml(element) == to_xml(element) == domain_text("kvm")
    assert ET.tostring(element) == before


def test_owner_metadata_parses_back_under_our_namespace() -> None:
    owner = ET.fromstring(domain_text("xen-pv-pygrub")).find(f"metadata/{{{SD_NAMESPACE}}}owner")
    assert owner is not None and owner.attrib == {"kind": "pool", "id": "workers"}


# -- nothing from a description becomes markup ---------------------------------------------------
NASTY = "a<b'c\"d&e>f"
NASTY_CMDLINE = "quiet </cmdline></os><devices><disk type='block'/></devices><os><cmdline>"


def nasty_case() -> tuple[VMSpec, HostFiles, Owner]:
    spec = VMSpec(
        NASTY,
        512,
        1,
        Flavour.KVM,
        KernelBoot(PurePosixPath(f"/k/{NASTY}"), PurePosixPath(f"/i/{NASTY}"), NASTY_CMDLINE),
        disks=(disk(NASTY, 0, Flavour.KVM, image=PurePosixPath(NASTY)),),
        network=NASTY,
    )
    files = HostFiles(
        disks=(DiskSource(PurePosixPath(f"/o/{NASTY}"), QCOW2),),
        console_log=PurePosixPath(f"/log/{NASTY}"),
    )
    return spec, files, Owner(OwnerKind.JOB, f'{NASTY}" kind="pool')


def test_names_and_values_cannot_inject_xml() -> None:
    text = build_domain_xml(*nasty_case())
    domain = ET.fromstring(text)
    assert domain.findtext("name") == NASTY
    assert domain.findtext("os/cmdline") == NASTY_CMDLINE
    assert domain.findtext("os/kernel") == f"/k/{NASTY}"
    assert attribute(domain, "devices/disk/source", "file") == f"/o/{NASTY}"
    assert attribute(domain, "devices/interface/source", "network") == NASTY
    assert attribute(domain, "devices/serial/source", "path") == f"/log/{NASTY}"
    owner = domain.find(f"metadata/{{{SD_NAMESPACE}}}owner")
    assert owner is not None and owner.attrib == {"kind": "job", "id": f'{NASTY}" kind="pool'}
    assert len(domain.findall("os")) == len(domain.findall("devices")) == 1
    assert len(domain.findall("devices/disk")) == 1
    assert "</cmdline></os>" not in text


def test_volume_values_cannot_inject_xml() -> None:
    backing = PurePosixPath(f"/images/{NASTY}</path><path>/etc/shadow")
    volume = ET.fromstring(volume_xml("v1", 1 << 20, backing, QCOW2))
    assert volume.findall("backingStore/path")[0].text == str(backing)
    assert len(volume.findall("backingStore/path")) == 1


def test_characters_xml_cannot_carry_are_refused() -> None:
    spec, files, owner = nasty_case()
    with pytest.raises(ValueError, match="XML cannot carry"):
        build_domain_xml(spec, files, Owner(OwnerKind.JOB, "1\x00"))


# -- host-side mistakes are programming errors ---------------------------------------------------
def test_each_described_disk_needs_exactly_one_source() -> None:
    case = CASES["kvm"]
    with pytest.raises(ValueError, match="2 disks described but 1 sources given"):
        build_domain_xml(case.spec, HostFiles(disks=case.files.disks[:1]), JOB)


def test_xen_host_disks_cannot_carry_a_serial() -> None:
    case = CASES["xen-pv"]
    files = HostFiles(disks=case.files.disks, extra_disks=job_disks(serials=True))
    with pytest.raises(ValueError, match="xvdb: a serial is carried on virtio disks only"):
        build_domain_xml(case.spec, files, JOB)


def test_xen_pv_console_cannot_log_to_a_file() -> None:
    case = CASES["xen-pvh"]
    files = HostFiles(disks=case.files.disks, console_log=JOBS / "console.log")
    with pytest.raises(ValueError, match="xen-pvh has no serial port to log to a file"):
        build_domain_xml(case.spec, files, JOB)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("../x", 1, None, None), "volume name '../x' is not a safe file name"),
        (("v", 0, None, None), "volume v: capacity must be positive, not 0"),
        (("v", 1, "/base", None), "volume v: a backing file needs its format, and only with one"),
        (("v", 1, "/base", RAW, RAW), "volume v: a copy-on-write overlay must be qcow2, not raw"),
    ],
)
def test_volume_refuses_what_libvirt_would_get_wrong(args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        volume_xml(*args)
    assert str(caught.value) == message


# -- the whole chain: description text -> VMSpec -> domain XML -----------------------------------
DESCRIPTION = """\
#include "components.sf";
sfConfig extends Compound {
    job extends VM {
        memory "1GiB";
        flavour "qemu";
        kernel "vmlinuz";
        initrd "initrd.cpio.gz";
        cmdline "console=ttyS0 panic=-1 quiet";
        disks extends DATA {
            root extends Disk { image "debian-12.qcow2"; serial "root"; }
        }
        console "console.log";
    }
}
"""


def test_a_description_becomes_a_valid_domain(
    tmp_path: Path, golden: Callable[[Path, str], None], virt_xml_validate: Validate
) -> None:
    from sd_batch.lang import load_text
    from sd_batch.vm.spec import vm_spec

    description = load_text(DESCRIPTION, "job.sf")
    assert description.sfconfig is not None
    spec = vm_spec(description.sfconfig["job"], default_name="job-1234-0")
    files = HostFiles(
        disks=(source("root.qcow2"),),
        extra_disks=job_disks(serials=True),
        kernel=IMAGES / "vmlinuz",
        initrd=IMAGES / "initrd.cpio.gz",
        console_log=JOBS / "console.log",
    )
    text = build_domain_xml(spec, files, JOB)
    golden(GOLDEN / "from-description.xml", text)
    path = tmp_path / "from-description.xml"
    path.write_text(text)
    virt_xml_validate(path, "domain")
