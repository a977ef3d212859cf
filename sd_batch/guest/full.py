"""Build the `debian-batch` guest: a full Debian 12 root on a qcow2 disk (`build-guest --full`).

The same job runner as the minimal guest, on a whole Debian userland:
- the root: `mmdebstrap --variant=minbase` (installed with apt if missing; needs root) plus
  busybox-static and python3-minimal, the user `job` (uid 1000), the minimal guest's `init.sh`
  as `/usr/lib/sd-batch/init.sh` and its launcher `/usr/local/sbin/sd-batch-init`, which runs
  it with busybox applets from `/usr/lib/sd-batch/bin` (the Debian tools are the job's);
- the disk: `mke2fs -t ext4 -d ROOT` (no loop mount) into a sparse raw file, then
  `qemu-img convert -O qcow2` -> `root.qcow2` (jobs boot from copy-on-write overlays of it);
- the kernel: the one the minimal guest uses (same .deb cache), no modules in the root;
- the initramfs: busybox, `root-init.sh` as /init and the minimal guest's modules plus ext4.
  It mounts `root=/dev/vda` and `switch_root`s to the launcher, which runs the job and powers off.
`build-stamp.json` names the package versions, the suite and a hash of these sources: an
unchanged image is not rebuilt (Debian point releases are picked up with --force).
May import: errors, config, guest, the standard library.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import GuestBuildError
from .common import (
    KERNEL_META_PACKAGE,
    PACKAGE_DIR,
    Stamp,
    boot_files,
    fetch,
    resolve_packages,
    run,
    say,
    source_digest,
)
from .initramfs import DEFAULT_MODULES

GUEST_NAME = "debian-batch"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
#: Besides minbase: busybox runs the runner; python3-minimal makes the userland useful.
PACKAGES = ("busybox-static", "python3-minimal")
#: ext4 and the checksum driver it asks for by name (a softdep, absent from modinfo depends).
MODULES = (*DEFAULT_MODULES, "crc32c_generic", "ext4")
ROOT_INIT = PACKAGE_DIR / "root-init.sh"
INIT_SCRIPT = PACKAGE_DIR / "init.sh"
SOURCES = (
    INIT_SCRIPT,
    ROOT_INIT,
    PACKAGE_DIR / "full.py",
    PACKAGE_DIR / "build.py",
    PACKAGE_DIR / "common.py",
    PACKAGE_DIR / "initramfs.py",
)
OUTPUT_FILES = ("vmlinux", "vmlinuz", "initrd.img", "root.qcow2")
#: Virtual size of the root disk: sparse, so only what is written costs space. Jobs' files
#: live on it (in the job's overlay), so leave room.
DISK_BYTES = 8 * 1024**3
#: Inside the root.
RUNNER_DIR = "usr/lib/sd-batch"
LAUNCHER = "usr/local/sbin/sd-batch-init"
LAUNCHER_TEXT = f"""#!/{RUNNER_DIR}/bin/sh
# sd-batch's job runner (PID 1 of the debian-batch guest, after its initramfs's switch_root):
# the minimal guest's init.sh, run by busybox with its applets in /{RUNNER_DIR}/bin.
SD_BATCH_BIN=/{RUNNER_DIR}/bin
SD_BATCH_SELF=/{LAUNCHER}
export SD_BATCH_BIN SD_BATCH_SELF
exec /{RUNNER_DIR}/bin/sh /{RUNNER_DIR}/init.sh "$@"
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class FullStamp(Stamp):
    """The minimal guest's stamp, and what the root disk is made from."""

    suite: str
    mirror: str
    packages: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FullResult:
    directory: Path
    built: bool
    kernel_release: str
    seconds: float
    steps: dict[str, float]


def up_to_date(directory: Path, stamp: FullStamp) -> bool:
    """True when the stamp matches and every output file (the root disk too) is present."""
    return stamp.matches(directory, OUTPUT_FILES)


def ensure_mmdebstrap() -> str:
    """mmdebstrap's path, installing Debian's package first if it is missing."""
    found = shutil.which("mmdebstrap")
    if found:
        return found
    if os.geteuid() != 0:
        raise GuestBuildError("mmdebstrap is not installed", hint="apt-get install mmdebstrap")
    say("installing mmdebstrap with apt-get")
    run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "mmdebstrap"])
    found = shutil.which("mmdebstrap")
    if not found:
        raise GuestBuildError("apt-get installed mmdebstrap but it is not on PATH")
    return found


def make_root(root: Path, mirror: str, suite: str = SUITE) -> None:
    """The Debian root in ROOT (must not exist): minbase + PACKAGES + job user + the runner."""
    run(
        [
            ensure_mmdebstrap(),
            "--quiet",
            "--mode=root",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            suite,
            str(root),
            mirror,
        ]
    )
    run(
        [
            "chroot",
            str(root),
            "useradd",
            "--uid",
            "1000",
            "--user-group",
            "--create-home",
            "--shell",
            "/bin/sh",
            "job",
        ]
    )
    runner = root / RUNNER_DIR
    (runner / "bin").mkdir(parents=True, exist_ok=True)
    for name in ("busybox", "sh"):  # the rest of the applets: init.sh's busybox --install
        (runner / "bin" / name).symlink_to("/usr/bin/busybox")
    shutil.copyfile(INIT_SCRIPT, runner / "init.sh")
    (runner / "init.sh").chmod(0o755)
    launcher = root / LAUNCHER
    launcher.parent.mkdir(parents=True, exist_ok=True)
    launcher.write_text(LAUNCHER_TEXT)
    launcher.chmod(0o755)
    (root / "etc/hostname").write_text("sd-batch-job\n")


def make_disk(root: Path, raw: Path, qcow2: Path, size: int = DISK_BYTES) -> None:
    """ext4 from ROOT's tree (mke2fs -d: no mount), then qcow2 (zeros are not stored)."""
    with raw.open("wb") as handle:
        handle.truncate(size)
    run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "sd-root", "-m", "0", "-d", str(root), str(raw)])
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)])


def build(
    image_dir: Path,
    cache_dir: Path,
    *,
    force: bool = False,
    kernel_meta: str = KERNEL_META_PACKAGE,
    mirror: str = MIRROR,
) -> FullResult:
    """Make `<image_dir>/debian-batch` current: root, disk, kernel, initramfs, stamp."""
    started = time.monotonic()
    steps: dict[str, float] = {}
    directory = image_dir / GUEST_NAME
    kernel, busybox = resolve_packages(kernel_meta)
    release = kernel.name.removeprefix("linux-image-")
    stamp = FullStamp(
        kernel_package=kernel.name,
        kernel_version=kernel.version,
        busybox_version=busybox.version,
        source_sha256=source_digest(SOURCES),
        modules=MODULES,
        suite=SUITE,
        mirror=mirror,
        packages=PACKAGES,
    )
    if not force and up_to_date(directory, stamp):
        return FullResult(directory, False, release, time.monotonic() - started, steps)
    if os.geteuid() != 0:
        raise GuestBuildError(
            "building debian-batch needs root", hint="mmdebstrap and the file owners in the image"
        )

    kernel_deb = fetch(kernel, cache_dir)
    busybox_deb = fetch(busybox, cache_dir)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sd-full-", dir=cache_dir) as tmp:
        work = Path(tmp)
        mark = time.monotonic()
        say(f"mmdebstrap {SUITE} (minbase + {', '.join(PACKAGES)}) from {mirror}")
        make_root(work / "root", mirror)
        steps["mmdebstrap"] = time.monotonic() - mark

        mark = time.monotonic()
        say(f"mke2fs -t ext4 -d (virtual size {DISK_BYTES // 1024**3} GiB), qemu-img convert")
        partial = directory / "root.qcow2.tmp"  # renamed into place: running VMs keep theirs
        make_disk(work / "root", work / "root.raw", partial)
        shutil.rmtree(work / "root")
        (work / "root.raw").unlink()
        steps["disk"] = time.monotonic() - mark

        mark = time.monotonic()
        say(f"extracting {kernel_deb.name}")
        boot = boot_files(kernel_deb, busybox_deb, work, ROOT_INIT, MODULES)
        steps["kernel+initramfs"] = time.monotonic() - mark

        partial.chmod(0o644)
        partial.replace(directory / "root.qcow2")
    boot.write(directory)
    stamp.write(directory, kernel_release=boot.release, loaded_modules=list(boot.modules))
    return FullResult(directory, True, boot.release, time.monotonic() - started, steps)


def main(image_dir: Path, cache_dir: Path, *, force: bool, kernel_meta: str) -> int:
    """`build-guest --full`: build (or keep) the image and say where it is."""
    result = build(image_dir, cache_dir, force=force, kernel_meta=kernel_meta)
    where = result.directory
    if result.built:
        size = (where / "root.qcow2").stat().st_size / 1e6
        timings = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in result.steps.items())
        say(
            f"built guest {GUEST_NAME!r} (kernel {result.kernel_release}, root.qcow2 "
            f"{size:.0f} MB) in {result.seconds:.0f} s ({timings})"
        )
    else:
        say(f"guest {GUEST_NAME!r} is up to date (kernel {result.kernel_release})")
    for name in OUTPUT_FILES:
        say(f"  {where / name}")
    return 0
