"""A resolved `VM` component -> a typed, validated `VMSpec`.

Owns: `VMSpec` and its parts (`Flavour`, `DiskBus`, `DiskFormat`, `LifecycleAction`,
`KernelBoot`, `DiskBoot`, `DiskSpec`), the VM attributes as this module reads them (names,
defaults, accepted forms such as `"2GiB"`), and the `SpecError`s for bad values, each naming the
attribute path and where it was written. Pure: paths stay as written (`PurePosixPath`); resolving
them against the site's folders and checking them is site policy's job, later. Upper limits
(memory, vCPUs, disk sizes) are site policy too. The reading of values (`Attrs`, sizes with
units, values shown in messages) is `values`'; `parse_size_bytes` is re-exported here.
May import: `lang.model`, `errors`, vm.values, stdlib.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from ..errors import SourceLocation, SpecError
from ..lang.model import Component
from .values import SIZE_FORMS, Attrs, parse_size_bytes, show

#: The value reading lives in vm.values; callers import parse_size_bytes from here too.
__all__ = [
    "DEFAULT_MEMORY_MIB",
    "MAX_CMDLINE_BYTES",
    "MIN_MEMORY_MIB",
    "NAME_PATTERN",
    "SERIAL_PATTERN",
    "DiskBoot",
    "DiskBus",
    "DiskFormat",
    "DiskSpec",
    "Flavour",
    "KernelBoot",
    "LifecycleAction",
    "VMSpec",
    "parse_size_bytes",
    "vm_spec",
]

#: libvirt accepts far more in a name; this is what is safe in file names, logs and `virsh`.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
MIN_MEMORY_MIB = 32
DEFAULT_MEMORY_MIB = 512
#: x86 Linux keeps at most this many bytes of its command line (COMMAND_LINE_SIZE).
MAX_CMDLINE_BYTES = 2048
#: libvirt's schema pattern for a disk serial; virtio-blk carries at most 20 bytes of it.
SERIAL_PATTERN = re.compile(r"[A-Za-z0-9_.+\- ]{1,20}")
_NAME_RULE = 'a letter or digit, then up to 63 letters, digits, "_", ".", "+" or "-"'


class Flavour(enum.Enum):
    """How the VM is virtualised; decides domain type, OS type, disk bus and device names."""

    XEN_PV = "xen-pv"
    XEN_PVH = "xen-pvh"
    XEN_HVM = "xen-hvm"
    KVM = "kvm"
    QEMU = "qemu"

    @property
    def is_xen(self) -> bool:
        return self in (Flavour.XEN_PV, Flavour.XEN_PVH, Flavour.XEN_HVM)

    @property
    def disk_bus(self) -> DiskBus:
        return DiskBus.XEN if self.is_xen else DiskBus.VIRTIO


class DiskBus(enum.Enum):
    """The paravirtual bus a guest sees its disks on: Xen's blkfront or virtio-blk."""

    XEN = "xen"
    VIRTIO = "virtio"

    @property
    def device_prefix(self) -> str:
        return "xvd" if self is DiskBus.XEN else "vd"

    def device_name(self, index: int) -> str:
        """`vda` ... `vdz`, `vdaa`, ...: libvirt's own naming, so guests find the disks it names."""
        letters = ""
        n = index
        while n >= 0:
            letters = chr(ord("a") + n % 26) + letters
            n = n // 26 - 1
        return self.device_prefix + letters


class DiskFormat(enum.Enum):
    """On-disk image formats we hand to QEMU/libxl, always explicitly (never probed: unsafe)."""

    QCOW2 = "qcow2"
    RAW = "raw"


class LifecycleAction(enum.Enum):
    """libvirt's `on_poweroff` / `on_reboot` / `on_crash` actions (coredump ones: crash only)."""

    DESTROY = "destroy"
    RESTART = "restart"
    PRESERVE = "preserve"
    RENAME_RESTART = "rename-restart"
    COREDUMP_DESTROY = "coredump-destroy"
    COREDUMP_RESTART = "coredump-restart"


_CRASH_ONLY = frozenset({LifecycleAction.COREDUMP_DESTROY, LifecycleAction.COREDUMP_RESTART})


@dataclass(frozen=True, slots=True)
class KernelBoot:
    """Direct kernel boot: the host hands the kernel to QEMU/libxl, no bootloader runs."""

    kernel: PurePosixPath
    initrd: PurePosixPath | None = None
    cmdline: str | None = None
    #: Where `kernel` was written, for policy errors about the path.
    loc: SourceLocation | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class DiskBoot:
    """Boot the first disk: firmware does it (HVM, KVM), or a bootloader on the host (Xen PV)."""

    bootloader: str | None = None


@dataclass(frozen=True, slots=True)
class DiskSpec:
    """One disk as described: a copy-on-write overlay on `image`, or a blank one of `size_bytes`."""

    name: str
    device: str
    bus: DiskBus
    format: DiskFormat = DiskFormat.QCOW2
    image: PurePosixPath | None = None
    size_bytes: int | None = None
    readonly: bool = False
    serial: str | None = None
    #: Attribute path of the disk component (`sfConfig:vms:vm1:disks:root`).
    path: str = ""
    #: Where its `image` (or `size`) was written.
    loc: SourceLocation | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if (self.image is None) == (self.size_bytes is None):
            raise ValueError("a disk has an image or a size, not both")

    @property
    def is_blank(self) -> bool:
        return self.image is None


@dataclass(frozen=True, slots=True)
class VMSpec:
    """Everything a description says about one VM, checked, with units in the names."""

    name: str
    memory_mib: int
    vcpus: int
    flavour: Flavour
    boot: KernelBoot | DiskBoot
    disks: tuple[DiskSpec, ...] = ()
    #: A libvirt network name, or None for no network interface at all.
    network: str | None = None
    on_poweroff: LifecycleAction = LifecycleAction.DESTROY
    on_reboot: LifecycleAction = LifecycleAction.DESTROY
    on_crash: LifecycleAction = LifecycleAction.DESTROY
    #: Serial console log file as written; the host decides where it really goes.
    console_log: PurePosixPath | None = None
    #: Attribute path of the VM component (`sfConfig:vms:vm1`).
    path: str = ""
    loc: SourceLocation | None = field(default=None, compare=False)


def vm_spec(component: Component, *, default_name: str) -> VMSpec:
    """Read and check one resolved VM component.

    `default_name` is used when `name` is NULL (the caller derives it, e.g. pool + attribute
    name). Raises `SpecError` for the first bad value, citing its path and location.
    """
    attrs = Attrs(component)
    flavour = attrs.choice("flavour", Flavour, Flavour.KVM, kind="flavour")
    disks = _disks(attrs, flavour)
    return VMSpec(
        name=_name(attrs, default_name),
        memory_mib=_memory_mib(attrs),
        vcpus=_vcpus(attrs),
        flavour=flavour,
        boot=_boot(attrs, flavour, disks),
        disks=disks,
        network=_network(attrs),
        on_poweroff=_lifecycle(attrs, "onPoweroff", flavour),
        on_reboot=_lifecycle(attrs, "onReboot", flavour),
        on_crash=_lifecycle(attrs, "onCrash", flavour),
        console_log=_console(attrs, flavour),
        path=component.path,
        loc=component.loc,
    )


def _name(attrs: Attrs, default_name: str) -> str:
    value = attrs.text("name", what=f"a VM name: {_NAME_RULE}")
    if value is None:
        if not NAME_PATTERN.fullmatch(default_name):
            raise attrs.error(
                "name",
                f"is NULL and the name derived for it, {show(default_name)}, is not a VM name",
                f"set name: {_NAME_RULE}",
            )
        return default_name
    if not NAME_PATTERN.fullmatch(value):
        raise attrs.error("name", f"{show(value)} is not a VM name", f"write {_NAME_RULE}")
    return value


def _memory_mib(attrs: Attrs) -> int:
    value = attrs.get("memory", DEFAULT_MEMORY_MIB)
    size = parse_size_bytes(value)
    if size is None:
        raise attrs.error("memory", f"{show(value)} is not a memory size", f"write {SIZE_FORMS}")
    if size % (1 << 20):
        raise attrs.error(
            "memory", f"{show(value)} is not a whole number of MiB", "round it to MiB"
        )
    if size < MIN_MEMORY_MIB << 20:
        raise attrs.error(
            "memory",
            f"{show(value)} is too little memory",
            f"a VM needs at least {MIN_MEMORY_MIB} MiB",
        )
    return size >> 20


def _vcpus(attrs: Attrs) -> int:
    value = attrs.get("vcpus", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise attrs.error(
            "vcpus", f"{show(value)} is not a vCPU count", "write a whole number, at least 1"
        )
    return int(value)


def _boot(attrs: Attrs, flavour: Flavour, disks: tuple[DiskSpec, ...]) -> KernelBoot | DiskBoot:
    what = 'a path such as "/var/lib/sd-batch/vmlinuz"'
    kernel = attrs.path("kernel", what=what)
    initrd = attrs.path("initrd", what=what)
    # "" is the prototype's default: no arguments, which is no reason to need a kernel.
    cmdline = (
        attrs.text("cmdline", what='kernel arguments such as "console=ttyS0 panic=-1"') or None
    )
    bootloader = attrs.text("bootloader", what='a bootloader such as "pygrub", or NULL')
    if bootloader is not None:
        if flavour is not Flavour.XEN_PV:
            raise attrs.error(
                "bootloader",
                f"a bootloader is for xen-pv, not {flavour.value}",
                "write NULL: this flavour boots the first disk itself, or set kernel",
            )
        if kernel is not None:
            raise attrs.error(
                "bootloader", "bootloader and kernel exclude each other", "write NULL for one"
            )
    if kernel is not None:
        if cmdline is not None and len(cmdline.encode()) > MAX_CMDLINE_BYTES:
            raise attrs.error(
                "cmdline",
                f"is {len(cmdline.encode())} bytes long",
                f"Linux keeps at most {MAX_CMDLINE_BYTES} bytes of its command line",
            )
        return KernelBoot(kernel, initrd, cmdline, loc=attrs.component.location_of("kernel"))
    for name, given in (("initrd", initrd), ("cmdline", cmdline)):
        if given is not None:
            raise attrs.error(
                name, f"{name} needs a kernel", "set kernel, or write NULL to boot the first disk"
            )
    if flavour is Flavour.XEN_PVH:
        raise attrs.error(
            "kernel", "is NULL, but xen-pvh has no firmware to boot a disk", "set kernel"
        )
    if flavour is Flavour.XEN_PV and bootloader is None:
        raise attrs.error(
            "kernel",
            "is NULL, and xen-pv boots a disk only through a bootloader",
            'set kernel, or bootloader "pygrub"',
        )
    if not disks:
        raise attrs.error(
            "disks", "is empty and kernel is NULL: nothing to boot", "add a disk, or set kernel"
        )
    if disks[0].is_blank:
        raise SpecError(
            f"{disks[0].path}: the first disk is blank: nothing to boot from",
            loc=disks[0].loc,
            path=disks[0].path,
            hint="put the disk with the bootable image first, or set kernel",
        )
    return DiskBoot(bootloader)


def _disks(attrs: Attrs, flavour: Flavour) -> tuple[DiskSpec, ...]:
    value = attrs.get("disks")
    if value is None:
        return ()
    shape = 'disks extends DATA { root extends DATA { image "debian.qcow2"; } }'
    if not isinstance(value, Component):
        raise attrs.error("disks", f"{show(value)} is not a component of disks", f"write {shape}")
    holder = Attrs(value)
    specs = []
    for index, name in enumerate(value):
        disk = holder.get(name)
        if not isinstance(disk, Component):
            raise holder.error(
                name, f"{show(disk)} is not a disk", '{ image "debian.qcow2"; } or { size "10G"; }'
            )
        specs.append(_disk(Attrs(disk), name, flavour.disk_bus.device_name(index), flavour))
    return tuple(specs)


def _disk(attrs: Attrs, name: str, device: str, flavour: Flavour) -> DiskSpec:
    either = "image makes a copy-on-write overlay on an image; size makes a blank disk"
    image = attrs.path("image", what='a base image path such as "debian-12.qcow2"')
    size_value = attrs.get("size")
    if image is not None and size_value is not None:
        raise attrs.error("size", "a disk has an image or a size, not both", either)
    size_bytes = None
    if size_value is not None:
        size_bytes = parse_size_bytes(size_value)
        if size_bytes is None:
            raise attrs.error("size", f"{show(size_value)} is not a disk size", SIZE_FORMS)
        if size_bytes < 1 << 20:
            raise attrs.error("size", f"{show(size_value)} is too small", "at least 1 MiB")
    elif image is None:
        raise attrs.error("image", "is NULL and so is size", either)
    readonly = attrs.get("readonly", False)
    if not isinstance(readonly, bool):
        raise attrs.error("readonly", f"{show(readonly)} is not a boolean", "write true or false")
    if readonly and image is None:
        raise attrs.error("readonly", "a blank disk cannot be read-only", "write false")
    serial_form = "up to 20 letters, digits, spaces, _ . + -"
    serial = attrs.text("serial", what=serial_form)
    if serial is not None and flavour.is_xen:
        raise attrs.error(
            "serial",
            f"a disk serial reaches the guest on virtio disks only, not {flavour.value}",
            "libxl ignores it: write NULL",
        )
    if serial is not None and not SERIAL_PATTERN.fullmatch(serial):
        raise attrs.error("serial", f"{show(serial)} is not a disk serial", f"write {serial_form}")
    return DiskSpec(
        name=name,
        device=device,
        bus=flavour.disk_bus,
        format=attrs.choice("format", DiskFormat, DiskFormat.QCOW2, kind="disk format"),
        image=image,
        size_bytes=size_bytes,
        readonly=readonly,
        serial=serial,
        path=attrs.component.path,
        loc=attrs.component.location_of("image" if image is not None else "size"),
    )


def _network(attrs: Attrs) -> str | None:
    network = attrs.text("network", what='a libvirt network name such as "default", or NULL')
    if network is not None and not NAME_PATTERN.fullmatch(network):
        raise attrs.error(
            "network", f"{show(network)} is not a network name", f"write {_NAME_RULE}"
        )
    return network


#: What QEMU's libvirt driver refuses (qemuValidateLifecycleAction), checked here to fail early.
_QEMU_REFUSES = {
    *((name, LifecycleAction.RENAME_RESTART) for name in ("onPoweroff", "onReboot", "onCrash")),
    *((name, LifecycleAction.PRESERVE) for name in ("onPoweroff", "onReboot")),
}


def _lifecycle(attrs: Attrs, name: str, flavour: Flavour) -> LifecycleAction:
    action = attrs.choice(name, LifecycleAction, LifecycleAction.DESTROY, kind="action")
    if name != "onCrash" and action in _CRASH_ONLY:
        allowed = ", ".join(a.value for a in LifecycleAction if a not in _CRASH_ONLY)
        raise attrs.error(name, f"{action.value} is for onCrash only", f"{name}: {allowed}")
    if not flavour.is_xen and (name, action) in _QEMU_REFUSES:
        raise attrs.error(
            name,
            f"{action.value} is not possible with {flavour.value}",
            "QEMU's libvirt driver refuses it; destroy or restart work",
        )
    return action


def _console(attrs: Attrs, flavour: Flavour) -> PurePosixPath | None:
    console = attrs.path("console", what='a log file path such as "console.log", or NULL')
    if console is not None and flavour in (Flavour.XEN_PV, Flavour.XEN_PVH):
        raise attrs.error(
            "console",
            f"a console log file is not possible with {flavour.value}",
            "its console goes through xenconsoled (XENCONSOLED_TRACE=guest logs it): write NULL",
        )
    return console
