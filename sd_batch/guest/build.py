"""Build the minimal guest into the site image folder: `python -m sd_batch.guest.build --help`.

Fetches two Debian packages with apt (the kernel `linux-image-amd64` points at, and
`busybox-static`), keeps the .debs in a cache, and writes `<image_dir>/minimal/`:
`vmlinux` (uncompressed: QEMU boots it through PVH, twice as fast under TCG as the bzImage),
`vmlinuz`, `initrd.img` and `build-stamp.json`. The stamp names the package versions and a hash
of the builder and init.sh, so an unchanged guest is not rebuilt and a re-run takes a second.
The only module here that runs programs (apt-cache, apt-get, dpkg-deb).
May import: errors, config, guest, the standard library.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..config.site import load_config
from ..errors import SdError
from . import GuestBuildError
from .initramfs import DEFAULT_MODULES, assemble, load_modules, scan_module_tree

GUEST_NAME = "minimal"
KERNEL_META_PACKAGE = "linux-image-amd64"
BUSYBOX_PACKAGE = "busybox-static"
PACKAGE_DIR = Path(__file__).resolve().parent
INIT_SCRIPT = PACKAGE_DIR / "init.sh"
#: Files whose content decides what the guest does: a change to any of them rebuilds it.
SOURCES = (INIT_SCRIPT, PACKAGE_DIR / "initramfs.py", PACKAGE_DIR / "build.py")
STAMP = "build-stamp.json"
OUTPUT_FILES = ("vmlinux", "vmlinuz", "initrd.img")
_XZ_MAGIC = b"\xfd7zXZ\x00"


@dataclass(frozen=True, slots=True)
class Package:
    """One Debian binary package as apt's candidate: name, version, downloaded file name."""

    name: str
    version: str
    filename: str


@dataclass(frozen=True, slots=True)
class Stamp:
    """What a built guest was made from; equal stamps mean nothing needs rebuilding."""

    kernel_package: str
    kernel_version: str
    busybox_version: str
    source_sha256: str
    modules: tuple[str, ...] = DEFAULT_MODULES

    def key(self) -> dict[str, object]:
        data = asdict(self)
        data["modules"] = list(self.modules)
        return data


@dataclass(frozen=True, slots=True)
class BuildResult:
    """Where the guest is, and whether this run had to build it."""

    directory: Path
    built: bool
    kernel_release: str
    modules: tuple[str, ...]
    seconds: float


def default_cache_dir() -> Path:
    """Downloaded .debs: /var/cache/sd-batch/debs for root, the XDG cache folder otherwise."""
    if os.geteuid() == 0:
        return Path("/var/cache/sd-batch/debs")
    from xdg import BaseDirectory

    return Path(BaseDirectory.xdg_cache_home) / "sd-batch" / "debs"


def source_digest(paths: Sequence[Path] = SOURCES) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\x00" + path.read_bytes() + b"\x00")
    return digest.hexdigest()


def _run(argv: Sequence[str], *, cwd: Path | None = None) -> str:
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


def _package(fields: dict[str, str], version: str | None = None) -> Package:
    """A Package from apt fields, named as `apt-get download` names the file (with the epoch)."""
    name, version = fields["Package"], version or fields["Version"]
    return Package(
        name, version, f"{name}_{version.replace(':', '%3a')}_{fields['Architecture']}.deb"
    )


def resolve_packages(kernel_meta: str) -> tuple[Package, Package]:
    """apt's candidates for the kernel and busybox, with one apt-cache run (each costs ~1.5 s)."""
    names = [kernel_meta, BUSYBOX_PACKAGE]
    found = parse_apt_show(_run(["apt-cache", "show", "--no-all-versions", *names]))
    for name in names:
        if not {"Version", "Architecture"} <= found.get(name, {}).keys():
            raise GuestBuildError(f"apt knows no installable version of {name}")
    kernel_name, kernel_version = kernel_dependency(found[kernel_meta].get("Depends", ""))
    if kernel_version is None:
        kernel_fields = parse_apt_show(
            _run(["apt-cache", "show", "--no-all-versions", kernel_name])
        ).get(kernel_name)
        if kernel_fields is None:
            raise GuestBuildError(f"apt knows no installable version of {kernel_name}")
        kernel = _package(kernel_fields)
    else:
        kernel = _package({**found[kernel_meta], "Package": kernel_name}, kernel_version)
    return kernel, _package(found[BUSYBOX_PACKAGE])


def fetch(package: Package, cache_dir: Path) -> Path:
    """The package's .deb from the cache, downloading it with apt only when missing."""
    deb = cache_dir / package.filename
    if deb.is_file():
        _say(f"{package.name} {package.version}: cached in {cache_dir}")
        return deb
    _say(f"{package.name} {package.version}: downloading with apt-get into {cache_dir}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    argv = ["apt-get", "download", "-q"]
    if os.geteuid() == 0:  # _apt cannot write into root's folders; say so instead of warning
        argv += ["-o", "APT::Sandbox::User=root"]
    _run([*argv, f"{package.name}={package.version}"], cwd=cache_dir)
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


def up_to_date(directory: Path, stamp: Stamp) -> bool:
    """True when the stamp matches and every output file is present."""
    recorded = read_stamp(directory)
    if recorded is None or any(not (directory / f).is_file() for f in OUTPUT_FILES):
        return False
    return {k: recorded.get(k) for k in stamp.key()} == stamp.key()


def _write(path: Path, data: bytes) -> None:
    """Replace a file atomically, so a running VM never boots a half-written kernel."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    tmp.replace(path)


def _say(message: str) -> None:
    print(message, flush=True)


def build(
    image_dir: Path,
    cache_dir: Path,
    *,
    force: bool = False,
    kernel_meta: str = KERNEL_META_PACKAGE,
) -> BuildResult:
    """Make `<image_dir>/minimal` current: fetch, extract, build, stamp."""
    started = time.monotonic()
    directory = image_dir / GUEST_NAME
    kernel, busybox = resolve_packages(kernel_meta)
    release = kernel.name.removeprefix("linux-image-")
    stamp = Stamp(kernel.name, kernel.version, busybox.version, source_digest())
    if not force and up_to_date(directory, stamp):
        return BuildResult(directory, False, release, (), time.monotonic() - started)

    kernel_deb = fetch(kernel, cache_dir)
    busybox_deb = fetch(busybox, cache_dir)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sd-guest-", dir=cache_dir) as tmp:
        tree = Path(tmp)
        _say(f"extracting {kernel_deb.name} (about 400 MB of modules, a few seconds)")
        _run(["dpkg-deb", "-x", str(kernel_deb), str(tree / "kernel")])
        _run(["dpkg-deb", "-x", str(busybox_deb), str(tree / "busybox")])
        moddirs = sorted((tree / "kernel/lib/modules").glob("*/kernel"))
        if not moddirs:
            raise GuestBuildError(f"{kernel_deb.name} holds no lib/modules/<release>/kernel")
        release = moddirs[-1].parent.name
        modules = load_modules(scan_module_tree(moddirs[-1].parent), DEFAULT_MODULES)
        bzimage = (tree / f"kernel/boot/vmlinuz-{release}").read_bytes()
        initrd = assemble(
            (tree / "busybox/bin/busybox").read_bytes(), INIT_SCRIPT.read_bytes(), modules
        )
    _write(directory / "vmlinuz", bzimage)
    _write(directory / "vmlinux", vmlinux_from_bzimage(bzimage))
    _write(directory / "initrd.img", initrd)
    names = tuple(name for name, _ in modules)
    record = {**stamp.key(), "kernel_release": release, "loaded_modules": list(names)}
    _write(directory / STAMP, (json.dumps(record, indent=2) + "\n").encode())
    return BuildResult(directory, True, release, names, time.monotonic() - started)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="build-guest",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Build sd-batch's minimal guest: a stock Debian kernel and a 1-2 MB busybox initramfs
whose /init runs one job (or idles as a pool VM) and powers off.

Writes IMAGE_DIR/minimal/:
  vmlinux      uncompressed kernel; boot this one on QEMU/KVM (about 2x faster under TCG)
  vmlinuz      the same kernel as Debian ships it (bzImage), for Xen PV/PVH or old QEMUs
  initrd.img   gzip'd cpio: busybox, /init, disk/console/ACPI modules (virtio and Xen)
  build-stamp.json   package versions + source hash; the build is skipped when they match

Needs apt package lists (apt-get update) and dpkg-deb; no root, no loop mounts.
Boot it by direct kernel boot: <os><kernel>…/vmlinux</kernel><initrd>…/initrd.img</initrd>
<cmdline>console=ttyS0 panic=-1 quiet</cmdline></os>, <features><acpi/></features>.
The disks and manifest a job VM needs: sd_batch/guest/CONTRACT.md.""",
        epilog="""\
examples:
  scripts/build-guest                       # into the site image folder
  scripts/build-guest --image-dir /tmp/img  # somewhere else (no root needed)
  scripts/build-guest --force               # rebuild even if the stamp matches
  scripts/build-guest --full                # the debian-batch image instead (root, ~1 min)""",
    )
    parser.add_argument(
        "--image-dir",
        type=Path,
        help="image folder (default: the site config's image_dir, "
        "/var/lib/sd-batch/images for root)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="where downloaded .debs are kept for instant re-runs "
        "(default: /var/cache/sd-batch/debs for root, ~/.cache/sd-batch/debs otherwise)",
    )
    parser.add_argument(
        "--kernel-package",
        default=KERNEL_META_PACKAGE,
        help="meta package naming the kernel to use (default: %(default)s)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    parser.add_argument(
        "--full",
        action="store_true",
        help="build IMAGE_DIR/debian-batch/ instead: a whole Debian 12 root (mmdebstrap, "
        "ext4, qcow2) running the same job runner, for job_templates/debian-batch.sf "
        "(needs root; sd_batch/guest/full.py)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        image_dir = args.image_dir or load_config().image_dir
        cache_dir = args.cache_dir or default_cache_dir()
        if args.full:
            from .full import main as full_main

            return full_main(image_dir.absolute(), cache_dir.absolute(), force=args.force,
                             kernel_meta=args.kernel_package)  # fmt: skip
        result = build(
            image_dir.absolute(),
            cache_dir.absolute(),
            force=args.force,
            kernel_meta=args.kernel_package,
        )
    except SdError as exc:
        print(f"build-guest: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"build-guest: {exc}", file=sys.stderr)
        return 1
    where = result.directory
    if result.built:
        size = (where / "initrd.img").stat().st_size / 1e6
        _say(
            f"built guest {GUEST_NAME!r} (kernel {result.kernel_release}, "
            f"{len(result.modules)} modules, initrd {size:.1f} MB) in {result.seconds:.1f} s"
        )
    else:
        _say(f"guest {GUEST_NAME!r} is up to date (kernel {result.kernel_release})")
    for name in OUTPUT_FILES:
        _say(f"  {where / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
