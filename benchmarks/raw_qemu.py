"""Raw QEMU, what the benchmarks measure sd against: the kernel, initrd, command line, memory
and vCPUs sd gives a VM, booted by `qemu-system-x86_64` itself (TCG, no default devices, no
display, serial to a file), so both sides boot the same guest the same way.

Imported by job_overhead.py and provisioning.py (run as scripts: this folder is on sys.path).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sd_batch.vm.spec import KernelBoot, VMSpec


@dataclass(frozen=True)
class RawBoot:
    """How sd boots a VM, as QEMU's options spell it."""

    kernel: str
    initrd: str
    cmdline: str
    memory: str  # MiB
    vcpus: str

    @classmethod
    def of(cls, spec: VMSpec, image_dir: Path) -> RawBoot:
        """SPEC's boot, its kernel and initrd in IMAGE_DIR (the site image folder)."""
        assert isinstance(spec.boot, KernelBoot)
        return cls(
            kernel=str(image_dir / str(spec.boot.kernel)),
            initrd=str(image_dir / str(spec.boot.initrd)),
            cmdline=spec.boot.cmdline or "",
            memory=str(spec.memory_mib),
            vcpus=str(spec.vcpus),
        )

    def argv(self, console: Path, *extra: str) -> list[str]:
        """The qemu-system-x86_64 command booting it, its serial console into CONSOLE, then
        EXTRA options (disks, a name)."""
        return [
            "qemu-system-x86_64",
            "-machine",
            "pc,usb=off",
            "-accel",
            "tcg",
            "-cpu",
            "qemu64",
            "-m",
            self.memory,
            "-smp",
            self.vcpus,
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-kernel",
            self.kernel,
            "-initrd",
            self.initrd,
            "-append",
            self.cmdline,
            "-serial",
            f"file:{console}",
            *extra,
        ]
