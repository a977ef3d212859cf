"""vm_spec: a resolved VM component -> VMSpec, and the exact messages for bad values."""

from __future__ import annotations

import dataclasses
from pathlib import PurePosixPath
from typing import Any

import pytest

from sd_batch.errors import Disposition, SourceLocation, SpecError
from sd_batch.lang.model import TBD, Component, Double, Long, Reference, RefPart
from sd_batch.vm.spec import (
    DiskBoot,
    DiskBus,
    DiskFormat,
    DiskSpec,
    Flavour,
    KernelBoot,
    LifecycleAction,
    VMSpec,
    parse_size_bytes,
    vm_spec,
)

FILE = "pool.sf"


def at(line: int, column: int = 9) -> SourceLocation:
    return SourceLocation(FILE, line, column)


def make_disks(**disks: dict[str, Any]) -> Component:
    """A DATA `disks` component; disk N's attributes sit on lines 40+10N, 41+10N, ..."""
    holder = Component(loc=at(30, 13), is_data=True)
    for number, (name, attrs) in enumerate(disks.items()):
        disk = Component(loc=at(40 + 10 * number, 17), is_data=True)
        for offset, (key, value) in enumerate(attrs.items(), start=1):
            disk.set(key, value, at(40 + 10 * number + offset, 21))
        holder.set(name, disk, at(40 + 10 * number, 17))
    return holder


def make_vm(**attrs: Any) -> Component:
    """`sfConfig:vms:vm1` in pool.sf, written from line 3; its attributes on lines 4, 5, ..."""
    root = Component()
    sf_config = Component(loc=at(1, 1))
    root.set("sfConfig", sf_config, at(1, 1))
    vms = Component(loc=at(2, 5))
    sf_config.set("vms", vms, at(2, 5))
    vm = Component(loc=at(3, 5))
    vms.set("vm1", vm, at(3, 5))
    for line, (name, value) in enumerate(attrs.items(), start=4):
        vm.set(name, value, at(line))
    return vm


def spec_of(**attrs: Any) -> VMSpec:
    return vm_spec(make_vm(**attrs), default_name="pool-vm1")


def error_of(**attrs: Any) -> str:
    with pytest.raises(SpecError) as caught:
        spec_of(**attrs)
    return str(caught.value)


ROOT_DISK = {"root": {"image": "debian-12.qcow2"}}


# -- what a good description gives ---------------------------------------------------------------
def test_prototype_defaults_give_a_small_kvm_vm() -> None:
    spec = spec_of(kernel="/boot/vmlinuz")
    assert spec == VMSpec(
        name="pool-vm1",
        memory_mib=512,
        vcpus=1,
        flavour=Flavour.KVM,
        boot=KernelBoot(PurePosixPath("/boot/vmlinuz")),
        disks=(),
        network=None,
        on_poweroff=LifecycleAction.DESTROY,
        on_reboot=LifecycleAction.DESTROY,
        on_crash=LifecycleAction.DESTROY,
        console_log=None,
        path="sfConfig:vms:vm1",
    )


def test_null_attributes_mean_their_defaults() -> None:
    spec = spec_of(
        name=None,
        kernel="/k",
        initrd=None,
        cmdline=None,
        bootloader=None,
        network=None,
        console=None,
        disks=None,
    )
    assert (spec.name, spec.boot, spec.disks) == ("pool-vm1", KernelBoot(PurePosixPath("/k")), ())


@pytest.mark.parametrize(
    ("written", "mib"),
    [
        (512, 512),
        (Long(512), 512),
        ("512", 512),
        ("512M", 512),
        ("512MiB", 512),
        ("2G", 2048),
        ("2GiB", 2048),
        ("1048576K", 1024),
        ("1048576KiB", 1024),
        ("1T", 1024 * 1024),
        (" 4 g ", 4096),
        (32, 32),
    ],
)
def test_memory_is_read_as_mib_with_or_without_a_unit(written: object, mib: int) -> None:
    assert spec_of(memory=written, kernel="/k").memory_mib == mib


def test_vcpus_network_and_console_are_kept() -> None:
    spec = spec_of(vcpus=Long(4), kernel="/k", network="default", console="logs/console.log")
    assert (spec.vcpus, spec.network, spec.console_log) == (
        4,
        "default",
        PurePosixPath("logs/console.log"),
    )


def test_a_given_name_wins_over_the_derived_one() -> None:
    assert spec_of(name="batch-1.x86_64+debug", kernel="/k").name == "batch-1.x86_64+debug"


@pytest.mark.parametrize("flavour", list(Flavour))
def test_every_flavour_names_its_disks_for_its_bus(flavour: Flavour) -> None:
    disks = make_disks(root={"image": "base.qcow2"}, scratch={"size": "10G"})
    spec = spec_of(flavour=flavour.value, kernel="/k", disks=disks)
    prefix = "xvd" if flavour.is_xen else "vd"
    assert [d.device for d in spec.disks] == [prefix + "a", prefix + "b"]
    assert {d.bus for d in spec.disks} == {DiskBus.XEN if flavour.is_xen else DiskBus.VIRTIO}


@pytest.mark.parametrize(
    ("index", "name"), [(0, "vda"), (25, "vdz"), (26, "vdaa"), (27, "vdab"), (701, "vdzz")]
)
def test_device_names_follow_libvirt_past_z(index: int, name: str) -> None:
    assert DiskBus.VIRTIO.device_name(index) == name
    assert DiskBus.XEN.device_name(index) == "x" + name


def test_disks_are_read_in_order_with_paths_kept_as_written() -> None:
    disks = make_disks(
        root={"image": "images/debian-12.qcow2", "serial": "root 1"},
        data={"image": "/srv/data.img", "format": "raw", "readonly": True},
        scratch={"size": "10G", "format": "raw"},
        tmp={"size": 64},
    )
    spec = spec_of(disks=disks)
    assert spec.disks == (
        DiskSpec(
            "root",
            "vda",
            DiskBus.VIRTIO,
            DiskFormat.QCOW2,
            image=PurePosixPath("images/debian-12.qcow2"),
            serial="root 1",
            path="sfConfig:vms:vm1:disks:root",
        ),
        DiskSpec(
            "data",
            "vdb",
            DiskBus.VIRTIO,
            DiskFormat.RAW,
            image=PurePosixPath("/srv/data.img"),
            readonly=True,
            path="sfConfig:vms:vm1:disks:data",
        ),
        DiskSpec(
            "scratch",
            "vdc",
            DiskBus.VIRTIO,
            DiskFormat.RAW,
            size_bytes=10 << 30,
            path="sfConfig:vms:vm1:disks:scratch",
        ),
        DiskSpec(
            "tmp",
            "vdd",
            DiskBus.VIRTIO,
            DiskFormat.QCOW2,
            size_bytes=64 << 20,
            path="sfConfig:vms:vm1:disks:tmp",
        ),
    )
    assert spec.boot == DiskBoot()


def test_disk_and_vm_remember_where_they_were_written() -> None:
    spec = spec_of(kernel="/k", disks=make_disks(root={"image": "a.qcow2"}, b={"size": "1G"}))
    assert spec.loc == at(3, 5)
    assert spec.boot == KernelBoot(PurePosixPath("/k"))
    assert isinstance(spec.boot, KernelBoot) and spec.boot.loc == at(4)
    assert [d.loc for d in spec.disks] == [at(41, 21), at(51, 21)]


def test_xen_pv_boots_a_disk_through_its_bootloader() -> None:
    spec = spec_of(flavour="xen-pv", bootloader="pygrub", disks=make_disks(**ROOT_DISK))
    assert spec.boot == DiskBoot("pygrub")
    assert spec.disks[0].device == "xvda"


def test_kernel_boot_keeps_initrd_and_cmdline() -> None:
    spec = spec_of(kernel="vmlinuz", initrd="initrd.gz", cmdline="console=ttyS0 panic=-1")
    assert spec.boot == KernelBoot(
        PurePosixPath("vmlinuz"), PurePosixPath("initrd.gz"), "console=ttyS0 panic=-1"
    )


def test_lifecycle_actions_are_read() -> None:
    spec = spec_of(
        kernel="/k",
        flavour="xen-hvm",
        onPoweroff="preserve",
        onReboot="restart",
        onCrash="coredump-destroy",
    )
    assert (spec.on_poweroff, spec.on_reboot, spec.on_crash) == (
        LifecycleAction.PRESERVE,
        LifecycleAction.RESTART,
        LifecycleAction.COREDUMP_DESTROY,
    )


def test_spec_is_a_frozen_hashable_value() -> None:
    spec = spec_of(kernel="/k", disks=make_disks(**ROOT_DISK))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.memory_mib = 1024  # type: ignore[misc]
    assert hash(spec) == hash(spec_of(kernel="/k", disks=make_disks(**ROOT_DISK)))
    assert isinstance(spec.disks, tuple)


def test_parse_size_bytes_refuses_what_is_not_a_size() -> None:
    assert parse_size_bytes("10G") == 10 << 30
    for value in (True, 1.5, "1.5G", "10 GB", "lots", None, [1]):
        assert parse_size_bytes(value) is None


# -- bad values: exact messages ------------------------------------------------------------------
def _case_id(attrs: dict[str, Any]) -> str:
    def short(value: Any) -> str:
        if isinstance(value, Component | Reference):
            return type(value).__name__
        return str(value)[:12]

    return ",".join(f"{key}={short(value)}" for key, value in attrs.items())


LAZY_REF = Reference((RefPart("ATTRIB", "memory"),), lazy=True, loc=at(4))
EAGER_REF = Reference((RefPart("ATTRIB", "m"),), loc=at(4))


# fmt: off
BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"memory": "lots"},
     'pool.sf:4:9: sfConfig:vms:vm1:memory: "lots" is not a memory size; write a number of '
     'MiB (512) or a size with a unit ("512M", "512MiB", "2G", "1048576K")'),
    ({"memory": 1.5},
     "pool.sf:4:9: sfConfig:vms:vm1:memory: 1.5 is not a memory size; write a number of "
     'MiB (512) or a size with a unit ("512M", "512MiB", "2G", "1048576K")'),
    ({"memory": 16},
     "pool.sf:4:9: sfConfig:vms:vm1:memory: 16 is too little memory; a VM needs at least 32 MiB"),
    ({"memory": "1536K"},
     'pool.sf:4:9: sfConfig:vms:vm1:memory: "1536K" is not a whole number of MiB; '
     "round it to MiB"),
    ({"vcpus": 0},
     "pool.sf:4:9: sfConfig:vms:vm1:vcpus: 0 is not a vCPU count; "
     "write a whole number, at least 1"),
    ({"vcpus": -1},
     "pool.sf:4:9: sfConfig:vms:vm1:vcpus: -1 is not a vCPU count; "
     "write a whole number, at least 1"),
    ({"vcpus": Double(2.0)},
     "pool.sf:4:9: sfConfig:vms:vm1:vcpus: 2.0D is not a vCPU count; "
     "write a whole number, at least 1"),
    ({"flavour": "kvn"},
     'pool.sf:4:9: sfConfig:vms:vm1:flavour: unknown flavour "kvn"; did you mean "kvm"? '
     "Flavours: xen-pv, xen-pvh, xen-hvm, kvm, qemu"),
    ({"flavour": "XEN-PV"},
     'pool.sf:4:9: sfConfig:vms:vm1:flavour: unknown flavour "XEN-PV"; did you mean '
     '"xen-pv"? Flavours: xen-pv, xen-pvh, xen-hvm, kvm, qemu'),
    ({"flavour": "vmware"},
     'pool.sf:4:9: sfConfig:vms:vm1:flavour: unknown flavour "vmware"; '
     "flavours: xen-pv, xen-pvh, xen-hvm, kvm, qemu"),
    ({"memory": TBD},
     "pool.sf:4:9: sfConfig:vms:vm1:memory is still TBD (to be defined); give it a value here "
     "or in a description that extends this one"),
    ({"memory": LAZY_REF},
     "pool.sf:4:9: sfConfig:vms:vm1:memory is a LAZY reference, resolved only at deploy "
     "time; a VM attribute needs its value when the VM is built: drop LAZY"),
    ({"memory": EAGER_REF},
     "pool.sf:4:9: sfConfig:vms:vm1:memory is a reference that depends on a LAZY one, "
     "resolved only at deploy time; a VM attribute needs its value when the VM is built: "
     "drop LAZY"),
    ({"name": "my vm"},
     'pool.sf:4:9: sfConfig:vms:vm1:name: "my vm" is not a VM name; write a letter or '
     'digit, then up to 63 letters, digits, "_", ".", "+" or "-"'),
    ({"kernel": 42},
     "pool.sf:4:9: sfConfig:vms:vm1:kernel: 42 is not a string; write a path such as "
     '"/var/lib/sd-batch/vmlinuz"'),
    ({"kernel": ""},
     'pool.sf:4:9: sfConfig:vms:vm1:kernel: "" is not a path; write a path such as '
     '"/var/lib/sd-batch/vmlinuz", or NULL to leave it unset'),
    ({"kernel": "/k", "cmdline": "quiet\n</cmdline>"},
     'pool.sf:5:9: sfConfig:vms:vm1:cmdline: "quiet\\n</cmdline>" contains a control '
     'character; write kernel arguments such as "console=ttyS0 panic=-1"'),
    ({"kernel": "/k", "cmdline": "x" * 2049},
     "pool.sf:5:9: sfConfig:vms:vm1:cmdline is 2049 bytes long; "
     "Linux keeps at most 2048 bytes of its command line"),
    ({"initrd": "initrd.gz"},
     "pool.sf:4:9: sfConfig:vms:vm1:initrd: initrd needs a kernel; "
     "set kernel, or write NULL to boot the first disk"),
    ({"flavour": "kvm", "bootloader": "pygrub"},
     "pool.sf:5:9: sfConfig:vms:vm1:bootloader: a bootloader is for xen-pv, not kvm; "
     "write NULL: this flavour boots the first disk itself, or set kernel"),
    ({"flavour": "xen-pv", "kernel": "/k", "bootloader": "pygrub"},
     "pool.sf:6:9: sfConfig:vms:vm1:bootloader: bootloader and kernel exclude each other; "
     "write NULL for one"),
    ({"flavour": "xen-pv", "disks": make_disks(**ROOT_DISK)},
     "pool.sf:3:5: sfConfig:vms:vm1:kernel is NULL, and xen-pv boots a disk only through "
     'a bootloader; set kernel, or bootloader "pygrub"'),
    ({"flavour": "xen-pvh", "disks": make_disks(**ROOT_DISK)},
     "pool.sf:3:5: sfConfig:vms:vm1:kernel is NULL, but xen-pvh has no firmware to boot "
     "a disk; set kernel"),
    ({"memory": 512},
     "pool.sf:3:5: sfConfig:vms:vm1:disks is empty and kernel is NULL: nothing to "
     "boot; add a disk, or set kernel"),
    ({"disks": make_disks(scratch={"size": "1G"}, root={"image": "a.qcow2"})},
     "pool.sf:41:21: sfConfig:vms:vm1:disks:scratch: the first disk is blank: nothing to "
     "boot from; put the disk with the bootable image first, or set kernel"),
    ({"disks": 3},
     "pool.sf:4:9: sfConfig:vms:vm1:disks: 3 is not a component of disks; write disks "
     'extends DATA { root extends DATA { image "debian.qcow2"; } }'),
    ({"kernel": "/k", "disks": make_disks(root={"image": "a.qcow2", "size": "1G"})},
     "pool.sf:42:21: sfConfig:vms:vm1:disks:root:size: a disk has an image or a size, not "
     "both; image makes a copy-on-write overlay on an image; size makes a blank disk"),
    ({"kernel": "/k", "disks": make_disks(root={"format": "raw"})},
     "pool.sf:40:17: sfConfig:vms:vm1:disks:root:image is NULL and so is size; image "
     "makes a copy-on-write overlay on an image; size makes a blank disk"),
    ({"kernel": "/k", "disks": make_disks(root={"image": TBD})},
     "pool.sf:41:21: sfConfig:vms:vm1:disks:root:image is still TBD (to be defined); give it "
     "a value here or in a description that extends this one"),
    ({"kernel": "/k", "disks": make_disks(root={"image": "a", "format": "qcow"})},
     'pool.sf:42:21: sfConfig:vms:vm1:disks:root:format: unknown disk format "qcow"; '
     'did you mean "qcow2"? Disk formats: qcow2, raw'),
    ({"kernel": "/k", "disks": make_disks(root={"image": "a", "readonly": "yes"})},
     'pool.sf:42:21: sfConfig:vms:vm1:disks:root:readonly: "yes" is not a boolean; '
     "write true or false"),
    ({"kernel": "/k", "disks": make_disks(root={"size": "0M"})},
     'pool.sf:41:21: sfConfig:vms:vm1:disks:root:size: "0M" is too small; at least 1 MiB'),
    ({"kernel": "/k", "disks": make_disks(root={"size": "1G", "readonly": True})},
     "pool.sf:42:21: sfConfig:vms:vm1:disks:root:readonly: a blank disk cannot be "
     "read-only; write false"),
    ({"flavour": "xen-hvm", "disks": make_disks(root={"image": "a", "serial": "s1"})},
     "pool.sf:42:21: sfConfig:vms:vm1:disks:root:serial: a disk serial reaches the guest "
     "on virtio disks only, not xen-hvm; libxl ignores it: write NULL"),
    ({"disks": make_disks(root={"image": "a", "serial": "serial/1"})},
     'pool.sf:42:21: sfConfig:vms:vm1:disks:root:serial: "serial/1" is not a disk serial; '
     "write up to 20 letters, digits, spaces, _ . + -"),
    ({"kernel": "/k", "network": "my net"},
     'pool.sf:5:9: sfConfig:vms:vm1:network: "my net" is not a network name; write a '
     'letter or digit, then up to 63 letters, digits, "_", ".", "+" or "-"'),
    ({"kernel": "/k", "onReboot": "destory"},
     'pool.sf:5:9: sfConfig:vms:vm1:onReboot: unknown action "destory"; did you mean '
     '"destroy"? Actions: destroy, restart, preserve, rename-restart, coredump-destroy, '
     "coredump-restart"),
    ({"kernel": "/k", "onPoweroff": "coredump-restart"},
     "pool.sf:5:9: sfConfig:vms:vm1:onPoweroff: coredump-restart is for onCrash only; "
     "onPoweroff: destroy, restart, preserve, rename-restart"),
    ({"kernel": "/k", "onCrash": "rename-restart"},
     "pool.sf:5:9: sfConfig:vms:vm1:onCrash: rename-restart is not possible with kvm; "
     "QEMU's libvirt driver refuses it; destroy or restart work"),
    ({"kernel": "/k", "flavour": "qemu", "onPoweroff": "preserve"},
     "pool.sf:6:9: sfConfig:vms:vm1:onPoweroff: preserve is not possible with qemu; "
     "QEMU's libvirt driver refuses it; destroy or restart work"),
    ({"kernel": "/k", "flavour": "xen-pv", "console": "console.log"},
     "pool.sf:6:9: sfConfig:vms:vm1:console: a console log file is not possible with "
     "xen-pv; its console goes through xenconsoled (XENCONSOLED_TRACE=guest logs it): "
     "write NULL"),
]
# fmt: on


@pytest.mark.parametrize(
    ("attrs", "message"), [pytest.param(a, m, id=_case_id(a)) for a, m in BAD_VALUES]
)
def test_bad_values_are_reported_with_path_location_and_hint(
    attrs: dict[str, Any], message: str
) -> None:
    assert error_of(**attrs) == message


def test_a_derived_name_that_is_not_a_vm_name_is_reported_at_the_vm() -> None:
    with pytest.raises(SpecError) as caught:
        vm_spec(make_vm(kernel="/k"), default_name="pool:vm1")
    assert str(caught.value) == (
        'pool.sf:3:5: sfConfig:vms:vm1:name is NULL and the name derived for it, "pool:vm1", is '
        'not a VM name; set name: a letter or digit, then up to 63 letters, digits, "_", ".", '
        '"+" or "-"'
    )


def test_spec_errors_carry_path_and_location_and_hold_the_job() -> None:
    with pytest.raises(SpecError) as caught:
        spec_of(kernel="/k", vcpus=0)
    assert caught.value.path == "sfConfig:vms:vm1:vcpus"
    assert caught.value.loc == at(5)
    assert caught.value.disposition is Disposition.HOLD


# -- from description text, through the real parser, resolver and component library ------------
def vm_from_text(body: str, *, complete: bool = True) -> VMSpec:
    """`vm1 extends VM { BODY }` in pool.sf (BODY starts on line 5), read through components.sf."""
    from sd_batch.lang import load_text

    text = (
        '#include "components.sf";\n'
        "size 1024;\n"
        "sfConfig extends Compound {\n"
        "    vm1 extends VM {\n"
        f"{body}\n"
        "    }\n"
        "}\n"
    )
    description = load_text(text, "pool.sf", complete=complete)
    assert description.sfconfig is not None
    return vm_spec(description.sfconfig["vm1"], default_name="pool-vm1")


def test_component_library_defaults_agree_with_the_spec_reader() -> None:
    spec = vm_from_text('        kernel "/boot/vmlinuz";')
    # The prototype's `cmdline ""` means no arguments, not "a command line without a kernel".
    assert spec == VMSpec(
        "pool-vm1",
        512,
        1,
        Flavour.KVM,
        KernelBoot(PurePosixPath("/boot/vmlinuz")),
        path="sfConfig:vm1",
    )


def test_a_xen_pool_member_from_text() -> None:
    spec = vm_from_text(
        """\
        memory "2G"; vcpus 2L; flavour "xen-pv"; bootloader "pygrub"; network "default";
        disks extends DATA {
            root extends Disk { image "debian-12.qcow2"; }
            scratch extends Disk { size "10G"; format "raw"; }
        }"""
    )
    assert (spec.memory_mib, spec.vcpus, spec.flavour, spec.boot, spec.network) == (
        2048,
        2,
        Flavour.XEN_PV,
        DiskBoot("pygrub"),
        "default",
    )
    assert [(d.name, d.device, d.image, d.size_bytes, d.format) for d in spec.disks] == [
        ("root", "xvda", PurePosixPath("debian-12.qcow2"), None, DiskFormat.QCOW2),
        ("scratch", "xvdb", None, 10 << 30, DiskFormat.RAW),
    ]
    assert spec.disks[0].loc is not None and (spec.disks[0].loc.line, spec.disks[0].path) == (
        7,
        "sfConfig:vm1:disks:root",
    )


@pytest.mark.parametrize(
    ("body", "complete", "message"),
    [
        (
            '        memory "lots";',
            True,
            'pool.sf:5:9: sfConfig:vm1:memory: "lots" is not a memory size; write a number of '
            'MiB (512) or a size with a unit ("512M", "512MiB", "2G", "1048576K")',
        ),
        (
            '        kernel "/k"; flavour "kvn";',
            True,
            'pool.sf:5:22: sfConfig:vm1:flavour: unknown flavour "kvn"; did you mean "kvm"? '
            "Flavours: xen-pv, xen-pvh, xen-hvm, kvm, qemu",
        ),
        (
            '        kernel "/k"; memory LAZY ATTRIB size;',
            True,
            "pool.sf:5:22: sfConfig:vm1:memory is a LAZY reference, resolved only at deploy "
            "time; a VM attribute needs its value when the VM is built: drop LAZY",
        ),
        (
            '        kernel "/k"; vcpus TBD;',
            False,
            "pool.sf:5:22: sfConfig:vm1:vcpus is still TBD (to be defined); give it a value here "
            "or in a description that extends this one",
        ),
    ],
    ids=["memory-lots", "flavour-kvn", "lazy-memory", "tbd-vcpus"],
)
def test_bad_values_in_text_point_at_the_line_and_column(
    body: str, complete: bool, message: str
) -> None:
    with pytest.raises(SpecError) as caught:
        vm_from_text(body, complete=complete)
    assert str(caught.value) == message
