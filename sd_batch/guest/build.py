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
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config.site import load_config
from ..errors import SdError
from .common import (
    KERNEL_META_PACKAGE,
    PACKAGE_DIR,
    Stamp,
    boot_files,
    default_cache_dir,
    fetch,
    resolve_packages,
    say,
    source_digest,
)
from .initramfs import DEFAULT_MODULES

GUEST_NAME = "minimal"
INIT_SCRIPT = PACKAGE_DIR / "init.sh"
#: Files whose content decides what the guest does: a change to any of them rebuilds it.
SOURCES = (
    INIT_SCRIPT,
    PACKAGE_DIR / "initramfs.py",
    PACKAGE_DIR / "build.py",
    PACKAGE_DIR / "common.py",
)
OUTPUT_FILES = ("vmlinux", "vmlinuz", "initrd.img")


@dataclass(frozen=True, slots=True)
class BuildResult:
    """Where the guest is, and whether this run had to build it."""

    directory: Path
    built: bool
    kernel_release: str
    modules: tuple[str, ...]
    seconds: float


def up_to_date(directory: Path, stamp: Stamp) -> bool:
    """True when the stamp matches and every output file is present."""
    return stamp.matches(directory, OUTPUT_FILES)


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
    stamp = Stamp(kernel.name, kernel.version, busybox.version, source_digest(SOURCES))
    if not force and up_to_date(directory, stamp):
        return BuildResult(directory, False, release, (), time.monotonic() - started)

    kernel_deb = fetch(kernel, cache_dir)
    busybox_deb = fetch(busybox, cache_dir)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sd-guest-", dir=cache_dir) as tmp:
        say(f"extracting {kernel_deb.name} (about 400 MB of modules, a few seconds)")
        boot = boot_files(kernel_deb, busybox_deb, Path(tmp), INIT_SCRIPT, DEFAULT_MODULES)
    boot.write(directory)
    stamp.write(directory, kernel_release=boot.release, loaded_modules=list(boot.modules))
    return BuildResult(directory, True, boot.release, boot.modules, time.monotonic() - started)


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

            return full_main(
                image_dir.absolute(),
                cache_dir.absolute(),
                force=args.force,
                kernel_meta=args.kernel_package,
            )
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
        say(
            f"built guest {GUEST_NAME!r} (kernel {result.kernel_release}, "
            f"{len(result.modules)} modules, initrd {size:.1f} MB) in {result.seconds:.1f} s"
        )
    else:
        say(f"guest {GUEST_NAME!r} is up to date (kernel {result.kernel_release})")
    for name in OUTPUT_FILES:
        say(f"  {where / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
