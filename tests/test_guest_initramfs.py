"""The guest builder without a hypervisor: cpio bytes, module closure, codecs, apt parsing."""

from __future__ import annotations

import gzip
import json
import lzma
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from sd_batch.errors import ConfigError, GuestBuildError, StagingError
from sd_batch.guest.build import up_to_date
from sd_batch.guest.common import (
    Stamp,
    kernel_dependency,
    package_from,
    parse_apt_show,
    vmlinux_from_bzimage,
)
from sd_batch.guest.contract import (
    INPUT_MARKER,
    OUTPUT_MAGIC,
    SECTOR,
    ExitStatus,
    Manifest,
    decode_entries,
    encode_entries,
    output_disk_header,
)
from sd_batch.guest.initramfs import (
    DEFAULT_MODULES,
    CpioEntry,
    assemble,
    char_device,
    cpio_newc,
    directory,
    load_modules,
    modinfo_depends,
    module_name,
    regular,
    resolve_modules,
    scan_module_tree,
    symlink,
)

INIT_SH = Path(__file__).resolve().parent.parent / "sd_batch" / "guest" / "init.sh"


def read_newc(data: bytes) -> list[CpioEntry]:
    """A minimal newc reader, written from the format description, to check the writer."""
    entries: list[CpioEntry] = []
    offset = 0
    while True:
        header = data[offset : offset + 110]
        assert header[:6] == b"070701", f"bad magic at {offset}"
        fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        mode, uid, gid, size, rmaj, rmin, namesize = (
            fields[1],
            fields[2],
            fields[3],
            fields[6],
            fields[9],
            fields[10],
            fields[11],
        )
        name_start = offset + 110
        name = data[name_start : name_start + namesize - 1].decode()
        assert data[name_start + namesize - 1] == 0
        offset = name_start + namesize
        offset += -offset % 4
        body = data[offset : offset + size]
        offset += size
        offset += -offset % 4
        if name == "TRAILER!!!":
            assert offset == len(data)
            return entries
        entries.append(CpioEntry(name, mode, body, rmaj, rmin, uid, gid))


def fake_ko(depends: str, padding: bytes = b"\x7fELF fake code") -> bytes:
    """Bytes shaped like a module: code, then a .modinfo section of NUL-separated key=value."""
    modinfo = b"license=GPL\x00" + b"depends=" + depends.encode() + b"\x00" + b"intree=Y\x00"
    return padding + b"\x00" + modinfo


# ---------------------------------------------------------------- cpio


def test_cpio_round_trips_files_dirs_links_and_device_nodes() -> None:
    entries = [
        directory("dev"),
        char_device("dev/console", 5, 1),
        regular("init", b"#!/bin/sh\necho hi\n", 0o755),
        regular("odd", b"abc"),  # a size that needs padding
        symlink("bin/sh", "busybox"),
        CpioEntry("home/job", stat.S_IFDIR | 0o755, uid=1000, gid=1000),
    ]
    parsed = read_newc(cpio_newc(entries))
    assert parsed == entries
    console = parsed[1]
    assert stat.S_ISCHR(console.mode) and (console.rdev_major, console.rdev_minor) == (5, 1)


def test_cpio_is_deterministic() -> None:
    entries = [regular("a", b"1"), regular("b", b"22")]
    assert cpio_newc(entries) == cpio_newc(entries)


# ---------------------------------------------------------------- modules


def test_modinfo_depends_reads_the_comma_list_and_normalises_names() -> None:
    assert modinfo_depends(fake_ko("virtio,virtio-ring")) == ["virtio", "virtio_ring"]
    assert modinfo_depends(fake_ko("")) == []
    assert modinfo_depends(b"\x7fELF no modinfo at all") == []


def test_module_name_strips_suffixes_and_dashes() -> None:
    assert module_name("xen-blkfront.ko") == "xen_blkfront"
    assert module_name("virtio_blk.ko.xz") == "virtio_blk"


def test_resolve_puts_dependencies_first_once_and_skips_builtins() -> None:
    depends = {
        "virtio_blk": ["virtio", "virtio_ring"],
        "virtio_pci": ["virtio_pci_modern_dev", "virtio", "virtio_ring"],
        "virtio": [],
        "virtio_ring": [],
        "virtio_pci_modern_dev": [],
        "evdev": [],
        "button": ["acpi_core"],
    }
    order = resolve_modules(["virtio_pci", "virtio-blk", "button"], depends, ["acpi_core"])
    assert order == [
        "virtio_pci_modern_dev",
        "virtio",
        "virtio_ring",
        "virtio_pci",
        "virtio_blk",
        "button",
    ]


def test_resolve_names_a_missing_module_and_who_needs_it() -> None:
    with pytest.raises(GuestBuildError, match=r"virtio_ring \(needed by virtio_blk\)"):
        resolve_modules(["virtio_blk"], {"virtio_blk": ["virtio_ring"]})


def test_resolve_refuses_a_dependency_cycle() -> None:
    with pytest.raises(GuestBuildError, match="cycle"):
        resolve_modules(["a"], {"a": ["b"], "b": ["a"]})


def test_guest_build_errors_requeue_like_config_errors() -> None:
    assert issubclass(GuestBuildError, ConfigError)


def test_load_modules_reads_a_fake_tree_including_xz_modules(tmp_path: Path) -> None:
    moddir = tmp_path / "lib/modules/6.1.0-test"
    drivers = moddir / "kernel/drivers"
    (drivers / "block").mkdir(parents=True)
    (drivers / "virtio").mkdir(parents=True)
    (drivers / "block/xen-blkfront.ko").write_bytes(fake_ko(""))
    (drivers / "virtio/virtio.ko").write_bytes(fake_ko(""))
    (drivers / "virtio/virtio_blk.ko.xz").write_bytes(lzma.compress(fake_ko("virtio,crc32c")))
    (drivers / "virtio/unrelated.ko").write_bytes(b"not read: no modinfo")
    (moddir / "modules.builtin").write_text("kernel/crypto/crc32c.ko\n")
    tree = scan_module_tree(moddir)
    assert set(tree.files) == {"xen_blkfront", "virtio", "virtio_blk", "unrelated"}
    loaded = load_modules(tree, ["virtio_blk", "xen-blkfront"])
    assert [name for name, _ in loaded] == ["virtio", "virtio_blk", "xen_blkfront"]
    assert loaded[1][1] == fake_ko("virtio,crc32c")  # decompressed for busybox insmod


def test_default_modules_cover_virtio_xen_and_the_acpi_button() -> None:
    for needed in ("virtio_pci", "virtio_blk", "virtio_console", "xen_blkfront", "button"):
        assert needed in DEFAULT_MODULES


# ---------------------------------------------------------------- the whole archive


def test_assemble_lays_out_init_busybox_users_and_module_order() -> None:
    image = assemble(b"BUSYBOX", b"#!/bin/sh\n", [("virtio", b"V"), ("virtio_blk", b"B")])
    entries = {e.name: e for e in read_newc(gzip.decompress(image))}
    assert entries["init"].data == b"#!/bin/sh\n" and entries["init"].mode & 0o111
    assert entries["bin/sh"].data == b"busybox" and stat.S_ISLNK(entries["bin/sh"].mode)
    assert stat.S_ISCHR(entries["dev/console"].mode)
    assert b"job:x:1000:1000:" in entries["etc/passwd"].data
    assert entries["home/job"].uid == 1000
    assert entries["tmp"].mode & stat.S_ISVTX
    assert entries["lib/modules/load-order"].data == b"virtio\nvirtio_blk\n"
    assert entries["lib/modules/virtio_blk.ko"].data == b"B"


@pytest.mark.skipif(shutil.which("sh") is None, reason="no /bin/sh to parse init.sh")
def test_init_sh_parses() -> None:
    subprocess.run(["sh", "-n", str(INIT_SH)], check=True)


@pytest.mark.skipif(shutil.which("sh") is None, reason="no /bin/sh to parse root-init.sh")
def test_root_init_sh_parses() -> None:
    subprocess.run(["sh", "-n", str(INIT_SH.with_name("root-init.sh"))], check=True)


def test_init_sh_reaches_busybox_and_itself_only_through_bin_and_self() -> None:
    """debian-batch runs init.sh from a Debian root, busybox in a private folder (full.py)."""
    code = [line for line in INIT_SH.read_text().splitlines() if not line.lstrip().startswith("#")]
    for line in code:
        assert not re.search(r"/bin/(busybox|env)\b|(exec|-exec) /init\b|-s /bin/sh\b", line), line


def test_init_sh_uses_the_contract_names() -> None:
    text = INIT_SH.read_text()
    for name in (INPUT_MARKER, OUTPUT_MAGIC.decode(), "sd-input", "sd-output", "meta/argv"):
        assert name in text
    assert not re.search(r"\beval\b", text)


# ---------------------------------------------------------------- contract codecs


def test_entries_round_trip_any_text_but_nul() -> None:
    values = ["two words", "new\nline", "$(poweroff)", "", "ünï"]
    assert decode_entries(encode_entries(values)) == values
    with pytest.raises(StagingError, match="NUL"):
        encode_entries(["a\x00b"])


def test_manifest_members_start_with_the_marker() -> None:
    members = Manifest(["./run.sh", "x"], {"A": "1"}, cwd="sub").members()
    assert [name for name, _ in members] == [INPUT_MARKER, "meta/argv", "meta/env", "meta/cwd"]
    assert dict(members)["meta/env"] == b"A=1\x00"
    assert dict(members)["meta/cwd"] == b"sub\x00"


@pytest.mark.parametrize(
    ("argv", "env", "cwd", "message"),
    [
        ([], {}, ".", "no command"),
        (["a=b"], {}, ".", "contains '='"),
        (["x"], {"": "1"}, ".", "not valid"),
        (["x"], {"A=B": "1"}, ".", "not valid"),
        (["x"], {}, "/abs", "relative path"),
        (["x"], {}, "a/../..", "relative path"),
        (["x"], {}, "", "relative path"),
    ],
)
def test_manifest_refuses_what_the_guest_cannot_run(
    argv: list[str], env: dict[str, str], cwd: str, message: str
) -> None:
    with pytest.raises(StagingError, match=message):
        Manifest(argv, env, cwd)


def test_output_disk_header_is_one_sector_starting_with_the_magic() -> None:
    header = output_disk_header()
    assert len(header) == SECTOR and header.startswith(OUTPUT_MAGIC + b"\n")


def test_exit_status_parses_exit_and_signal() -> None:
    assert ExitStatus.parse("exit 3\n") == ExitStatus("exit", 3)
    assert str(ExitStatus.parse("signal 9")) == "signal 9"
    with pytest.raises(StagingError):
        ExitStatus.parse("exit three")


# ---------------------------------------------------------------- build helpers


def test_kernel_dependency_finds_the_versioned_package_and_pin() -> None:
    assert kernel_dependency("linux-image-6.1.0-56-amd64 (= 6.1.192-2)") == (
        "linux-image-6.1.0-56-amd64",
        "6.1.192-2",
    )
    assert kernel_dependency("foo, linux-image-6.1.0-9-cloud-amd64") == (
        "linux-image-6.1.0-9-cloud-amd64",
        None,
    )
    with pytest.raises(GuestBuildError):
        kernel_dependency("linux-base")


def test_apt_show_stanzas_and_download_file_names() -> None:
    text = (
        "Package: busybox-static\nVersion: 1:1.35.0-4\nArchitecture: amd64\n"
        "Description: x\n continued: not a field\n\n"
        "Package: linux-image-amd64\nVersion: 6.1.192-2\nArchitecture: amd64\n"
        "Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)\n"
    )
    found = parse_apt_show(text)
    assert set(found) == {"busybox-static", "linux-image-amd64"}
    assert "continued" not in found["busybox-static"]
    package = package_from(found["busybox-static"])
    assert package.filename == "busybox-static_1%3a1.35.0-4_amd64.deb"


def test_vmlinux_is_the_xz_payload_of_the_bzimage() -> None:
    elf = b"\x7fELF" + bytes(range(256)) * 10
    bzimage = b"MZ setup code" + lzma.compress(elf, format=lzma.FORMAT_XZ) + b"trailer"
    assert vmlinux_from_bzimage(bzimage) == elf
    with pytest.raises(GuestBuildError, match="not xz"):
        vmlinux_from_bzimage(b"MZ gzip kernel")


def test_build_is_up_to_date_only_with_same_stamp_and_all_files(tmp_path: Path) -> None:
    stamp = Stamp("linux-image-6.1.0-56-amd64", "6.1.192-2", "1:1.35", "abc")
    assert not up_to_date(tmp_path, stamp)
    for name in ("vmlinux", "vmlinuz", "initrd.img"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "build-stamp.json").write_text(json.dumps({**stamp.key(), "extra": 1}))
    assert up_to_date(tmp_path, stamp)
    newer = Stamp("linux-image-6.1.0-57-amd64", "6.1.193-1", "1:1.35", "abc")
    assert not up_to_date(tmp_path, newer)
    (tmp_path / "initrd.img").unlink()
    assert not up_to_date(tmp_path, stamp)
