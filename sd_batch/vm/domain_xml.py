"""`VMSpec` + what the host prepared -> libvirt domain XML; copy-on-write volume XML.

Owns: one small builder per element family (`build_os`, `build_features`, `build_disk`,
`build_interface`, `build_console`, `build_metadata`, `build_volume`, ...), the ownership metadata
namespace (`SD_NAMESPACE`), and the one place XML becomes text (`to_xml`). XML is built as
ElementTree objects only, never from strings, so no value from a description can turn into
markup; element and attribute order is fixed so the output is stable (golden files).
The spec says *what* the VM is; `HostFiles` says *where* its files are on this host (overlays,
resolved kernel, console log), and `Owner` who it belongs to. Pure: no libvirt, no I/O.
May import: vm.spec, the standard library (`xml.etree`).
"""

from __future__ import annotations

import copy
import enum
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import PurePosixPath

from .spec import NAME_PATTERN, DiskBoot, DiskBus, DiskFormat, Flavour, KernelBoot, VMSpec

#: Namespace of our `<metadata>` entry; teardown and reaping find our domains by it, not by name.
SD_NAMESPACE = "urn:x-sd-batch:owner:1"
SD_PREFIX = "sd"
#: Our guests are x86_64 (Xen needs `arch` on `<type>`; KVM/QEMU would default to the host's).
ARCH = "x86_64"
#: Characters XML 1.0 cannot carry at all (ElementTree would write them and produce bad XML).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class OwnerKind(enum.Enum):
    """What a domain was made for: one batch job, or a long-lived pool member."""

    JOB = "job"
    POOL = "pool"


@dataclass(frozen=True, slots=True)
class Owner:
    """Who a domain belongs to, recorded in the domain so a crashed run can be cleaned up."""

    kind: OwnerKind
    id: str


@dataclass(frozen=True, slots=True)
class DiskSource:
    """A file the domain opens as a disk, as the host made it (an overlay, a blank volume...)."""

    path: PurePosixPath
    format: DiskFormat


@dataclass(frozen=True, slots=True)
class ExtraDisk:
    """A disk the host adds after the description's own (the job's input and output disks)."""

    source: DiskSource
    readonly: bool = False
    serial: str | None = None


@dataclass(frozen=True, slots=True)
class HostFiles:
    """Where a VM's files are on this host; the spec only says what they are."""

    #: One per `spec.disks`, same order: each disk's overlay, blank volume or image.
    disks: tuple[DiskSource, ...] = ()
    #: Host disks named after the description's (`vdc`, `vdd`, ... when it has two).
    extra_disks: tuple[ExtraDisk, ...] = ()
    #: Resolved kernel and initrd; None uses the spec's path as written.
    kernel: PurePosixPath | None = None
    initrd: PurePosixPath | None = None
    #: Serial console log file; None gives a pty console.
    console_log: PurePosixPath | None = None


def build_domain_xml(spec: VMSpec, files: HostFiles, owner: Owner) -> str:
    """The domain XML text to hand to `defineXML`."""
    return to_xml(build_domain(spec, files, owner))


def build_domain(spec: VMSpec, files: HostFiles, owner: Owner) -> ET.Element:
    """`<domain>` in libvirt's own child order (name, metadata, memory, ..., devices)."""
    if len(files.disks) != len(spec.disks):
        raise ValueError(f"{len(spec.disks)} disks described but {len(files.disks)} sources given")
    domain = ET.Element("domain", {"type": _domain_type(spec.flavour)})
    _sub(domain, "name", text=spec.name)
    domain.append(build_metadata(owner))
    _sub(domain, "memory", {"unit": "MiB"}, str(spec.memory_mib))
    _sub(domain, "vcpu", text=str(spec.vcpus))
    if isinstance(spec.boot, DiskBoot) and spec.boot.bootloader is not None:
        _sub(domain, "bootloader", text=spec.boot.bootloader)
    domain.append(build_os(spec, files))
    features = build_features(spec.flavour)
    if features is not None:
        domain.append(features)
    _sub(domain, "on_poweroff", text=spec.on_poweroff.value)
    _sub(domain, "on_reboot", text=spec.on_reboot.value)
    _sub(domain, "on_crash", text=spec.on_crash.value)
    domain.append(build_devices(spec, files))
    return domain


def _domain_type(flavour: Flavour) -> str:
    if flavour.is_xen:
        return "xen"
    return "kvm" if flavour is Flavour.KVM else "qemu"


def build_metadata(owner: Owner) -> ET.Element:
    """`<metadata><sd:owner xmlns:sd=... kind=... id=.../>`: the domain says whose it is.

    The prefixed tag and its `xmlns:sd` are written as they appear, rather than through
    `ET.register_namespace`, which would change a process-wide registry as a side effect.
    """
    metadata = ET.Element("metadata")
    _sub(
        metadata,
        f"{SD_PREFIX}:owner",
        {f"xmlns:{SD_PREFIX}": SD_NAMESPACE, "kind": owner.kind.value, "id": owner.id},
    )
    return metadata


def build_os(spec: VMSpec, files: HostFiles) -> ET.Element:
    """`<os>`: the guest type per flavour, then direct kernel boot or boot from the first disk."""
    os_element = ET.Element("os")
    if spec.flavour is Flavour.XEN_PV:
        _sub(os_element, "type", {"arch": ARCH, "machine": "xenpv"}, "linux")
    elif spec.flavour is Flavour.XEN_PVH:
        _sub(os_element, "type", {"arch": ARCH, "machine": "xenpvh"}, "xenpvh")
    else:
        _sub(os_element, "type", {"arch": ARCH}, "hvm")
    boot = spec.boot
    if isinstance(boot, KernelBoot):
        _sub(os_element, "kernel", text=str(files.kernel or boot.kernel))
        initrd = files.initrd or boot.initrd
        if initrd is not None:
            _sub(os_element, "initrd", text=str(initrd))
        if boot.cmdline is not None:
            _sub(os_element, "cmdline", text=boot.cmdline)
    elif spec.flavour not in (Flavour.XEN_PV, Flavour.XEN_PVH):
        # Firmware boots the first disk; Xen PV's bootloader reads it from the host instead.
        _sub(os_element, "boot", {"dev": "hd"})
    return os_element


def build_features(flavour: Flavour) -> ET.Element | None:
    """`<features>` for fully virtualised guests; paravirtual Xen guests have none.

    Without ACPI libvirt starts QEMU with `-no-acpi` and a guest that powers off only halts:
    the domain never shuts off. libxl turns off every HVM feature not listed, APIC included.
    """
    if flavour in (Flavour.XEN_PV, Flavour.XEN_PVH):
        return None
    features = ET.Element("features")
    _sub(features, "acpi")
    if flavour is Flavour.XEN_HVM:
        _sub(features, "apic")
    return features


def build_devices(spec: VMSpec, files: HostFiles) -> ET.Element:
    """`<devices>`: described disks, host disks, (virtio) no USB, network, console, no balloon.

    A batch VM gets only what it uses: on KVM/QEMU libvirt would otherwise add a USB
    controller (a PCI device the guest probes at boot) and a balloon; it adds no graphics,
    sound, video or NIC unless asked. What stays is QEMU's `-nodefaults` machine plus our
    disks and serial port (the guest-alone ratio in `benchmarks/job_overhead.py`).
    """
    devices = ET.Element("devices")
    bus = spec.flavour.disk_bus
    for disk, source in zip(spec.disks, files.disks, strict=True):
        devices.append(build_disk(disk.device, bus, source, disk.readonly, disk.serial))
    for index, extra in enumerate(files.extra_disks, start=len(spec.disks)):
        device = bus.device_name(index)
        devices.append(build_disk(device, bus, extra.source, extra.readonly, extra.serial))
    if bus is DiskBus.VIRTIO:
        # libxl adds no USB unless asked (and refuses model none); QEMU's pc machine would.
        _sub(devices, "controller", {"type": "usb", "model": "none"})
    if spec.network is not None:
        devices.append(build_interface(spec.network, spec.flavour))
    devices.append(build_console(spec.flavour, files.console_log))
    if bus is DiskBus.VIRTIO:
        # Ballooning only helps overcommit, which placement does not do; it costs a device.
        _sub(devices, "memballoon", {"model": "none"})
    return devices


def build_disk(
    device: str, bus: DiskBus, source: DiskSource, readonly: bool, serial: str | None
) -> ET.Element:
    """A file-backed `<disk>` with its format always explicit (probing formats is unsafe)."""
    if serial is not None and bus is not DiskBus.VIRTIO:
        raise ValueError(f"disk {device}: a serial is carried on virtio disks only")
    disk = ET.Element("disk", {"type": "file", "device": "disk"})
    # name='qemu' is QEMU itself on KVM and Xen's qdisk backend, the one that reads qcow2.
    _sub(disk, "driver", {"name": "qemu", "type": source.format.value})
    _sub(disk, "source", {"file": str(source.path)})
    _sub(disk, "target", {"dev": device, "bus": bus.value})
    if readonly:
        _sub(disk, "readonly")
    if serial is not None:
        _sub(disk, "serial", text=serial)
    return disk


def build_interface(network: str, flavour: Flavour) -> ET.Element:
    """A NIC on a libvirt network; virtio on KVM/QEMU, Xen's own netfront (no model) on Xen.

    On KVM/QEMU without its option ROM: the firmware would load and run iPXE for a network
    boot we never do (we boot a kernel directly, or the first disk).
    """
    interface = ET.Element("interface", {"type": "network"})
    _sub(interface, "source", {"network": network})
    if not flavour.is_xen:
        _sub(interface, "model", {"type": "virtio"})
        _sub(interface, "rom", {"enabled": "no"})
    return interface


def build_console(flavour: Flavour, log: PurePosixPath | None) -> ET.Element:
    """The guest console: Xen PV's own (xenconsoled), else a serial port logged to a file or a pty.

    libvirt adds the matching `<console>` for a `<serial>` itself.
    """
    if flavour in (Flavour.XEN_PV, Flavour.XEN_PVH):
        if log is not None:
            raise ValueError(f"{flavour.value} has no serial port to log to a file")
        console = ET.Element("console", {"type": "pty"})
        _sub(console, "target", {"type": "xen", "port": "0"})
        return console
    if log is None:
        serial = ET.Element("serial", {"type": "pty"})
    else:
        serial = ET.Element("serial", {"type": "file"})
        _sub(serial, "source", {"path": str(log)})
    _sub(serial, "target", {"port": "0"})
    return serial


def volume_xml(
    name: str,
    capacity_bytes: int,
    backing_path: PurePosixPath | str | None,
    backing_format: DiskFormat | None,
    format: DiskFormat = DiskFormat.QCOW2,
) -> str:
    """The storage volume XML for `storageVolCreateXML`: an overlay on a backing file, or blank."""
    return to_xml(build_volume(name, capacity_bytes, backing_path, backing_format, format))


def build_volume(
    name: str,
    capacity_bytes: int,
    backing_path: PurePosixPath | str | None,
    backing_format: DiskFormat | None,
    format: DiskFormat = DiskFormat.QCOW2,
) -> ET.Element:
    """`<volume>`; an overlay always names its backing format, so QEMU never probes the base."""
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"volume name {name!r} is not a safe file name")
    if capacity_bytes <= 0:
        raise ValueError(f"volume {name}: capacity must be positive, not {capacity_bytes}")
    if (backing_path is None) != (backing_format is None):
        raise ValueError(f"volume {name}: a backing file needs its format, and only with one")
    if backing_path is not None and format is not DiskFormat.QCOW2:
        raise ValueError(
            f"volume {name}: a copy-on-write overlay must be qcow2, not {format.value}"
        )
    volume = ET.Element("volume")
    _sub(volume, "name", text=name)
    _sub(volume, "capacity", {"unit": "bytes"}, str(capacity_bytes))
    target = _sub(volume, "target")
    _sub(target, "format", {"type": format.value})
    if backing_path is not None and backing_format is not None:
        backing = _sub(volume, "backingStore")
        _sub(backing, "path", text=str(backing_path))
        _sub(backing, "format", {"type": backing_format.value})
    return volume


def to_xml(element: ET.Element) -> str:
    """Serialise once, at the edge: two-space indent, no declaration, a final newline."""
    element = copy.deepcopy(element)  # ET.indent rewrites whitespace in place
    ET.indent(element)
    return ET.tostring(element, encoding="unicode") + "\n"


def _sub(
    parent: ET.Element, tag: str, attrib: dict[str, str] | None = None, text: str | None = None
) -> ET.Element:
    """`ET.SubElement` that refuses characters XML cannot carry (ET would emit them as is)."""
    for value in (*(attrib or {}).values(), text):
        if value is not None and _NOT_XML.search(value):
            raise ValueError(f"<{tag}>: {value!r} holds a character XML cannot carry")
    element = ET.SubElement(parent, tag, attrib or {})
    element.text = text
    return element
