"""Build the minimal guest's initramfs in pure Python: no root, no cpio tool, no kmod.

Three small pieces, each a pure function over data so it is tested without a kernel:
- `cpio_newc` writes the "newc" archive format the kernel unpacks (device nodes included, which
  is why no root is needed: the nodes exist only inside the archive);
- `modinfo_depends` + `resolve_modules` replace depmod: Debian's kernel .deb ships no
  modules.dep, but every `.ko` names its dependencies in its `.modinfo` section;
- `assemble` lays out busybox, /init, /etc and the modules, and gzips the result.
`scan_module_tree` and `read_module` are the only functions that touch the filesystem.
May import: errors, guest, the standard library.
"""

from __future__ import annotations

import gzip
import lzma
import re
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import GuestBuildError

#: Disks and console on KVM/QEMU (virtio-pci), in the order they must be loaded by hand.
VIRTIO_MODULES = ("virtio_pci", "virtio_blk", "virtio_console")
#: Disks on Xen PV/PVH and on HVM with PV drivers (the Xen console is built in: HVC_XEN=y).
XEN_MODULES = ("xen_blkfront",)
#: The ACPI power button and the event device busybox acpid reads it from: without them
#: libvirt's `dom.shutdown()` presses a button nobody listens to.
ACPI_MODULES = ("button", "evdev")
DEFAULT_MODULES = VIRTIO_MODULES + XEN_MODULES + ACPI_MODULES

#: Where modules sit inside the initramfs, and the file listing their load order.
GUEST_MODULE_DIR = "lib/modules"
GUEST_LOAD_ORDER = "lib/modules/load-order"

_DEPENDS = re.compile(rb"(?:^|\x00)depends=([^\x00]*)\x00")
_MODULE_SUFFIXES = (".ko", ".ko.xz")


@dataclass(frozen=True, slots=True)
class CpioEntry:
    """One archive member. `data` is the file content, or the target of a symlink."""

    name: str
    mode: int
    data: bytes = b""
    rdev_major: int = 0
    rdev_minor: int = 0
    uid: int = 0
    gid: int = 0


def directory(name: str, perm: int = 0o755) -> CpioEntry:
    return CpioEntry(name, stat.S_IFDIR | perm)


def regular(name: str, data: bytes, perm: int = 0o644) -> CpioEntry:
    return CpioEntry(name, stat.S_IFREG | perm, data)


def symlink(name: str, target: str) -> CpioEntry:
    return CpioEntry(name, stat.S_IFLNK | 0o777, target.encode())


def char_device(name: str, major: int, minor: int, perm: int = 0o600) -> CpioEntry:
    return CpioEntry(name, stat.S_IFCHR | perm, rdev_major=major, rdev_minor=minor)


def _pad4(length: int) -> bytes:
    return b"\x00" * (-length % 4)


def cpio_newc(entries: Iterable[CpioEntry]) -> bytes:
    """Serialise entries as an SVR4 "newc" cpio archive (magic 070701) with its trailer.

    Every mtime is 0, so the same inputs give the same bytes.
    """
    out = bytearray()
    for ino, entry in enumerate([*entries, CpioEntry("TRAILER!!!", 0)], start=1):
        name = entry.name.encode() + b"\x00"
        fields = (
            ino,
            entry.mode,
            entry.uid,
            entry.gid,
            1,
            0,
            len(entry.data),
            0,
            0,
            entry.rdev_major,
            entry.rdev_minor,
            len(name),
            0,
        )
        header = b"070701" + b"".join(b"%08X" % value for value in fields)
        out += header + name + _pad4(len(header) + len(name))
        out += entry.data + _pad4(len(entry.data))
    return bytes(out)


def module_name(filename: str) -> str:
    """The kernel's name for a module file: `xen-blkfront.ko.xz` -> `xen_blkfront`."""
    for suffix in _MODULE_SUFFIXES:
        if filename.endswith(suffix):
            filename = filename[: -len(suffix)]
            break
    return filename.replace("-", "_")


def modinfo_depends(ko: bytes) -> list[str]:
    """The `depends=` list of a module's .modinfo section (comma-separated, maybe empty)."""
    match = _DEPENDS.search(ko)
    if match is None:
        return []
    return [module_name(dep) for dep in match.group(1).decode().split(",") if dep]


def resolve_modules(
    wanted: Sequence[str],
    depends: Mapping[str, Sequence[str]],
    builtin: Iterable[str] = (),
) -> list[str]:
    """Wanted modules and everything they need, dependencies first (an insmod order).

    `depends` maps each available module to its direct dependencies. Built-in modules are
    satisfied already and left out; a name that is neither available nor built in is an error,
    since a guest without its disk driver fails far from the cause.
    """
    built_in = {module_name(name) for name in builtin}
    order: list[str] = []
    done: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        key = module_name(name)
        if key in done or key in built_in:
            return
        if key in chain:
            raise GuestBuildError(f"kernel modules depend on each other in a cycle: {chain}")
        if key not in depends:
            via = f" (needed by {chain[-1]})" if chain else ""
            raise GuestBuildError(
                f"kernel module {key}{via} is neither in the kernel package nor built in",
                hint="is this the right linux-image package for a virtual machine guest?",
            )
        for dep in depends[key]:
            visit(dep, (*chain, key))
        done.add(key)
        order.append(key)

    for name in wanted:
        visit(name, ())
    return order


@dataclass(frozen=True, slots=True)
class ModuleTree:
    """The modules of one extracted kernel package: name -> file, plus the built-in names."""

    root: Path
    files: Mapping[str, Path]
    builtin: frozenset[str]


def scan_module_tree(moddir: Path) -> ModuleTree:
    """Index `lib/modules/<version>` of an extracted linux-image package."""
    files: dict[str, Path] = {}
    for path in sorted((moddir / "kernel").rglob("*.ko*")):
        if path.name.endswith(_MODULE_SUFFIXES):
            files[module_name(path.name)] = path
    if not files:
        raise GuestBuildError(f"no kernel modules found under {moddir}/kernel")
    builtin_file = moddir / "modules.builtin"
    builtin: frozenset[str] = frozenset()
    if builtin_file.is_file():
        lines = builtin_file.read_text().split()
        builtin = frozenset(module_name(Path(line).name) for line in lines)
    return ModuleTree(moddir, files, builtin)


def read_module(path: Path) -> bytes:
    """A module's bytes, decompressed: busybox insmod loads plain ELF objects only."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    return data


class _LazyDepends(Mapping[str, Sequence[str]]):
    """`depends` for `resolve_modules` that reads a module file only when it is asked about."""

    def __init__(self, tree: ModuleTree) -> None:
        self.tree = tree
        self.data: dict[str, bytes] = {}

    def __getitem__(self, key: str) -> Sequence[str]:
        if key not in self.data:
            self.data[key] = read_module(self.tree.files[key])
        return modinfo_depends(self.data[key])

    def __contains__(self, key: object) -> bool:
        return key in self.tree.files

    def __iter__(self) -> Iterator[str]:
        return iter(self.tree.files)

    def __len__(self) -> int:
        return len(self.tree.files)


def load_modules(tree: ModuleTree, wanted: Sequence[str]) -> list[tuple[str, bytes]]:
    """(name, bytes) of `wanted` and their dependencies, in load order.

    Reads only the modules on the dependency path, not the ~4000 in the tree.
    """
    depends = _LazyDepends(tree)
    order = resolve_modules(wanted, depends, tree.builtin)
    return [(name, depends.data[name]) for name in order]


JOB_UID = 1000


def etc_files(job_uid: int = JOB_UID) -> dict[str, bytes]:
    """/etc content: root and the unprivileged `job` user the payload runs as."""
    return {
        "etc/passwd": (
            f"root:x:0:0:root:/root:/bin/sh\njob:x:{job_uid}:{job_uid}:job:/home/job:/bin/sh\n"
        ).encode(),
        "etc/group": f"root:x:0:\njob:x:{job_uid}:\n".encode(),
        "etc/shells": b"/bin/sh\n",
    }


def assemble(
    busybox: bytes,
    init_script: bytes,
    modules: Sequence[tuple[str, bytes]],
    *,
    job_uid: int = JOB_UID,
) -> bytes:
    """The gzip'd initramfs: busybox as /bin/sh, /init, /etc, the modules and their order.

    Applet symlinks other than /bin/sh are made by /init at boot (`busybox --install -s`),
    so the archive does not depend on which applets this busybox build has.
    """
    entries = [directory(d) for d in ("bin", "dev", "etc", "home", "proc", "root", "run", "sys")]
    entries += [
        CpioEntry("home/job", stat.S_IFDIR | 0o755, uid=job_uid, gid=job_uid),
        CpioEntry("tmp", stat.S_IFDIR | 0o1777),
        char_device("dev/console", 5, 1),
        char_device("dev/null", 1, 3, 0o666),
        regular("bin/busybox", busybox, 0o755),
        symlink("bin/sh", "busybox"),
        regular("init", init_script, 0o755),
    ]
    entries += [regular(name, data) for name, data in etc_files(job_uid).items()]
    entries += [directory("lib"), directory(GUEST_MODULE_DIR)]
    entries += [regular(f"{GUEST_MODULE_DIR}/{name}.ko", data) for name, data in modules]
    order = "".join(f"{name}\n" for name, _ in modules).encode()
    entries.append(regular(GUEST_LOAD_ORDER, order))
    return gzip.compress(cpio_newc(entries), compresslevel=6, mtime=0)
