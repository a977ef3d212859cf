"""What the two guest builders (`build`: the minimal guest; `full`: debian-batch) share: Debian
packages found with apt-cache and fetched with apt-get into a cache, host tools run with their
failure turned into a `GuestBuildError`, the kernel and the busybox initramfs made from their
packages (the kernel also uncompressed), the build stamp that spares an unchanged guest its
rebuild, files replaced atomically. Runs programs (apt-cache, apt-get, dpkg-deb).

May import: errors, config, guest, the standard library.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import GuestBuildError
from .initramfs import DEFAULT_MODULES, assemble, load_modules, scan_module_tree

KERNEL_META_PACKAGE = "linux-image-amd64"
BUSYBOX_PACKAGE = "busybox-static"
PACKAGE_DIR = Path(__file__).resolve().parent
STAMP = "build-stamp.json"
_XZ_MAGIC = b"\xfd7zXZ\x00"


@dataclass(frozen=True, slots=True)
class Package:
    """One Debian binary package as apt's candidate: name, version, downloaded file name."""

    name: str
    version: str
    filename: str


@dataclass(frozen=True, slots=True)
class Stamp:
    """What a built guest was made from, recorded in its `build-stamp.json`: equal stamps mean
    nothing needs rebuilding. A builder whose image depends on more says so in a subclass
    (`full.FullStamp`: the suite, mirror and packages of its root)."""

    kernel_package: str
    kernel_version: str
    busybox_version: str
    source_sha256: str
    modules: tuple[str, ...] = DEFAULT_MODULES

    def key(self) -> dict[str, object]:
        """The stamp as JSON holds it (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def matches(self, directory: Path, outputs: Sequence[str]) -> bool:
        """True when DIRECTORY's stamp records this one and every file of OUTPUTS is there."""
        recorded = read_stamp(directory)
        if recorded is None or any(not (directory / f).is_file() for f in outputs):
            return False
        return {k: recorded.get(k) for k in self.key()} == self.key()

    def write(self, directory: Path, **found: object) -> None:
        """Record this stamp in DIRECTORY, with what the build FOUND (release, modules): last,
        once every output is in place, so an interrupted build is built again."""
        record = {**self.key(), **found}
        write(directory / STAMP, (json.dumps(record, indent=2) + "\n").encode())


@dataclass(frozen=True, slots=True)
class BootFiles:
    """A guest's kernel (the bzImage) and initramfs, and the modules the initramfs loads."""

    release: str
    bzimage: bytes
    initrd: bytes
    modules: tuple[str, ...]

    def write(self, directory: Path) -> None:
        """`vmlinuz`, `vmlinux` (uncompressed: PVH boot) and `initrd.img` in DIRECTORY."""
        write(directory / "vmlinuz", self.bzimage)
        write(directory / "vmlinux", vmlinux_from_bzimage(self.bzimage))
        write(directory / "initrd.img", self.initrd)


def boot_files(
    kernel_deb: Path, busybox_deb: Path, work: Path, init: Path, modules: Sequence[str]
) -> BootFiles:
    """The kernel of KERNEL_DEB, and an initramfs of BUSYBOX_DEB's busybox with INIT as /init
    loading MODULES (and what they depend on); both packages are extracted under WORK."""
    run(["dpkg-deb", "-x", str(kernel_deb), str(work / "kernel")])
    run(["dpkg-deb", "-x", str(busybox_deb), str(work / "busybox")])
    moddirs = sorted((work / "kernel/lib/modules").glob("*/kernel"))
    if not moddirs:
        raise GuestBuildError(f"{kernel_deb.name} holds no lib/modules/<release>/kernel")
    release = moddirs[-1].parent.name
    loaded = load_modules(scan_module_tree(moddirs[-1].parent), modules)
    initrd = assemble((work / "busybox/bin/busybox").read_bytes(), init.read_bytes(), loaded)
    return BootFiles(
        release,
        (work / f"kernel/boot/vmlinuz-{release}").read_bytes(),
        initrd,
        tuple(name for name, _ in loaded),
    )


def default_cache_dir() -> Path:
    """Downloaded .debs: `debs` in the site's cache folder (`config.site.default_cache_dir`)."""
    from ..config.site import default_cache_dir as site_cache_dir

    return site_cache_dir() / "debs"


def source_digest(paths: Sequence[Path]) -> str:
    """A hash of a builder's sources: a changed builder rebuilds its guest."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\x00" + path.read_bytes() + b"\x00")
    return digest.hexdigest()


def run(argv: Sequence[str], *, cwd: Path | None = None) -> str:
    """Run a host tool; turn failure into an error that names the command and its complaint."""
    try:
        done = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise GuestBuildError(
            f"{argv[0]} is not installed", hint="the guest builder needs Debian's apt and dpkg"
        ) from exc
    if done.returncode != 0:
        complaint = (done.stderr.strip() or done.stdout.strip()).splitlines()[-3:]
        raise GuestBuildError(
            f"`{' '.join(argv)}` failed (exit {done.returncode}): {' / '.join(complaint)}",
            hint="run `apt-get update` if apt has no package lists yet",
        )
    return done.stdout


def parse_apt_show(text: str) -> dict[str, dict[str, str]]:
    """`apt-cache show` stanzas as package name -> (field -> value); the first one wins."""
    packages: dict[str, dict[str, str]] = {}
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line[:1] not in ("", " ", "\t") and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Package" in fields:
            packages.setdefault(fields["Package"], fields)
    return packages


def kernel_dependency(depends: str) -> tuple[str, str | None]:
    """The versioned kernel package (and its `=` version, if pinned) in a meta's Depends."""
    for alternative in re.split(r"[,|]", depends):
        match = re.fullmatch(
            r"\s*(linux-image-\d[\w.+-]*)\s*(?:\(\s*=\s*([^)\s]+)\s*\))?\s*", alternative
        )
        if match:
            return match.group(1), match.group(2)
    raise GuestBuildError(f"no versioned linux-image package in Depends: {depends!r}")


def package_from(fields: dict[str, str], version: str | None = None) -> Package:
    """A Package from apt fields, named as `apt-get download` names the file (with the epoch)."""
    name, version = fields["Package"], version or fields["Version"]
    return Package(
        name, version, f"{name}_{version.replace(':', '%3a')}_{fields['Architecture']}.deb"
    )


def resolve_packages(kernel_meta: str) -> tuple[Package, Package]:
    """apt's candidates for the kernel and busybox, with one apt-cache run (each costs ~1.5 s)."""
    names = [kernel_meta, BUSYBOX_PACKAGE]
    found = parse_apt_show(run(["apt-cache", "show", "--no-all-versions", *names]))
    for name in names:
        if not {"Version", "Architecture"} <= found.get(name, {}).keys():
            raise GuestBuildError(f"apt knows no installable version of {name}")
    kernel_name, kernel_version = kernel_dependency(found[kernel_meta].get("Depends", ""))
    if kernel_version is None:
        kernel_fields = parse_apt_show(
            run(["apt-cache", "show", "--no-all-versions", kernel_name])
        ).get(kernel_name)
        if kernel_fields is None:
            raise GuestBuildError(f"apt knows no installable version of {kernel_name}")
        kernel = package_from(kernel_fields)
    else:
        kernel = package_from({**found[kernel_meta], "Package": kernel_name}, kernel_version)
    return kernel, package_from(found[BUSYBOX_PACKAGE])


def fetch(package: Package, cache_dir: Path) -> Path:
    """The package's .deb from the cache, downloading it with apt only when missing."""
    deb = cache_dir / package.filename
    if deb.is_file():
        say(f"{package.name} {package.version}: cached in {cache_dir}")
        return deb
    say(f"{package.name} {package.version}: downloading with apt-get into {cache_dir}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    argv = ["apt-get", "download", "-q"]
    if os.geteuid() == 0:  # _apt cannot write into root's folders; say so instead of warning
        argv += ["-o", "APT::Sandbox::User=root"]
    run([*argv, f"{package.name}={package.version}"], cwd=cache_dir)
    if not deb.is_file():
        raise GuestBuildError(f"apt-get download did not produce {deb}")
    for old in cache_dir.glob(f"{package.name}_*.deb"):
        if old != deb:
            old.unlink()
    return deb


def vmlinux_from_bzimage(bzimage: bytes) -> bytes:
    """The uncompressed kernel ELF inside an xz-compressed bzImage (Debian's default)."""
    start = bzimage.find(_XZ_MAGIC)
    if start < 0:
        raise GuestBuildError("the kernel image is not xz-compressed: cannot make vmlinux")
    try:
        elf = lzma.LZMADecompressor().decompress(bzimage[start:])
    except lzma.LZMAError as exc:
        raise GuestBuildError(f"the kernel image's xz payload is damaged: {exc}") from exc
    if not elf.startswith(b"\x7fELF"):
        raise GuestBuildError("the kernel image's xz payload is not an ELF kernel")
    return elf


def read_stamp(directory: Path) -> dict[str, object] | None:
    try:
        data = json.loads((directory / STAMP).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write(path: Path, data: bytes) -> None:
    """Replace a file atomically, so a running VM never boots a half-written kernel."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    tmp.replace(path)


def say(message: str) -> None:
    print(message, flush=True)
