"""The host <-> guest contract of the minimal guest, as values both sides import.

`init.sh` (the guest) and `staging.py` (the host) must agree on disk serials, marker names, the
manifest encoding and the result layout; `CONTRACT.md` explains them in prose. Keeping the
constants and the two tiny codecs here means a change to the contract is one diff that both
sides see. Pure: no I/O. May import: errors, the standard library.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ..errors import StagingError

#: Disk serials (libvirt `<disk><serial>`), read by the guest from /sys/block/*/serial.
INPUT_SERIAL = "sd-input"
OUTPUT_SERIAL = "sd-output"

#: The first member of every input tar. Its name fills the first bytes of sector 0, which is
#: how the guest recognises the input disk where disks have no serial (Xen xvd*).
INPUT_MARKER = "SD-BATCH-INPUT-V1"
INPUT_MARKER_TEXT = b"sd-batch job input, format 1\n"
#: The host writes this header into sector 0 of the blank output disk, for the same reason;
#: the guest overwrites it with the result tar, so a header still there means "no result".
OUTPUT_MAGIC = b"SD-BATCH-OUTPUT-V1"
SECTOR = 512
#: Smallest output disk the guest can always write an error report onto.
MIN_OUTPUT_DISK_BYTES = 1024 * 1024

#: Manifest members of the input tar (NUL-terminated entries, see `encode_entries`).
ARGV_MEMBER = "meta/argv"
ENV_MEMBER = "meta/env"
CWD_MEMBER = "meta/cwd"
#: The job ad, for the host's privileged helper (the guest ignores it).
JOB_AD_MEMBER = "meta/job.ad"
#: The slot's machine ad (the starter's `.machine.ad`), for the helper to size the VM.
MACHINE_AD_MEMBER = "meta/machine.ad"
#: Everything under this prefix is the job's sandbox, unpacked at GUEST_SANDBOX in the guest.
SANDBOX_PREFIX = "sandbox/"
GUEST_SANDBOX = "/sandbox"

#: Members of the result tar the guest writes onto the output disk, in this order.
RESULT_MARKER = "SD-BATCH-RESULT-V1"
RESULT_EXIT_STATUS = "exit_status"
RESULT_ERROR = "error"
RESULT_STDOUT = "stdout"
RESULT_STDERR = "stderr"
RESULT_GUEST_LOG = "guest.log"
RESULT_OUTPUTS_PREFIX = "outputs/"

#: Lines the guest prints on its console (prefix `sd-batch: `), for people and for pool code.
CONSOLE_READY = "sd-batch: ready"
CONSOLE_PREFIX = "sd-batch: "

#: Kernel command line for QEMU/KVM guests: serial console, reboot-on-panic (libvirt then
#: destroys the domain via on_reboot), and switches that shave ~0.5 s off a TCG boot.
QEMU_CMDLINE = (
    "console=ttyS0 panic=-1 quiet mitigations=off tsc=reliable no_timer_check "
    "i8042.noaux i8042.nopnp 8250.nr_uarts=1 cryptomgr.notests audit=0 nokaslr"
)
#: Xen PV/PVH guests speak on the Xen console instead.
XEN_CMDLINE = "console=hvc0 panic=-1 quiet audit=0"

_ENV_NAME = re.compile(r"[^=\x00]+")


def encode_entries(entries: Iterable[str]) -> bytes:
    """Encode strings as NUL-terminated UTF-8 entries, the one encoding busybox sh reads safely.

    `read -r -d ''` stops at NUL, and NUL is the one byte no argv or environment entry can
    contain, so no quoting, escaping or `eval` is ever needed in the guest.
    """
    out = bytearray()
    for entry in entries:
        if "\x00" in entry:
            raise StagingError(f"cannot pass {entry!r} to the job: it contains a NUL byte")
        out += entry.encode("utf-8", "surrogateescape") + b"\x00"
    return bytes(out)


def decode_entries(data: bytes) -> list[str]:
    """The inverse of `encode_entries` (for tests and for reading a manifest back)."""
    if not data:
        return []
    if not data.endswith(b"\x00"):
        raise StagingError("manifest entry list is not NUL-terminated")
    return [part.decode("utf-8", "surrogateescape") for part in data[:-1].split(b"\x00")]


@dataclass(frozen=True, slots=True)
class Manifest:
    """What the guest runs: argv, the complete environment and the working directory.

    `cwd` is relative to the sandbox root (`.` for the root itself) so the host never needs to
    know guest paths; the guest refuses absolute paths and `..`.
    """

    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str = "."

    def __post_init__(self) -> None:
        if not self.argv or not self.argv[0]:
            raise StagingError("the job has no command to run (empty argv)")
        if "=" in self.argv[0]:
            raise StagingError(
                f"the command {self.argv[0]!r} contains '=': the guest's env(1) would read it "
                "as a variable",
                hint="rename the program or run it through a shell",
            )
        for name in self.env:
            if not _ENV_NAME.fullmatch(name):
                raise StagingError(f"environment variable name {name!r} is not valid")
        parts = self.cwd.split("/")
        if self.cwd.startswith("/") or ".." in parts or "\x00" in self.cwd or not self.cwd:
            raise StagingError(
                f"working directory {self.cwd!r} must be a relative path inside the sandbox"
            )

    def members(self) -> list[tuple[str, bytes]]:
        """(tar member name, content) pairs, marker first, as the guest expects them."""
        env_entries = [f"{name}={value}" for name, value in self.env.items()]
        return [
            (INPUT_MARKER, INPUT_MARKER_TEXT),
            (ARGV_MEMBER, encode_entries(self.argv)),
            (ENV_MEMBER, encode_entries(env_entries)),
            (CWD_MEMBER, encode_entries([self.cwd])),
        ]


#: The highest signal number a Linux payload can die of (SIGRTMAX).
MAX_SIGNAL = 64


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """How the payload ended: `exit N` or `signal N`, as the guest writes `exit_status`."""

    kind: str  # "exit" or "signal"
    code: int

    @classmethod
    def parse(cls, text: str) -> ExitStatus:
        """Read the guest's `exit_status` member (`exit 3`, `signal 9`)."""
        match = re.fullmatch(r"(exit|signal) (\d{1,3})\s*", text)
        if not match:
            raise StagingError(f"guest wrote an unreadable exit status {text[:40]!r}")
        kind, code = match.group(1), int(match.group(2))
        low, high = (0, 255) if kind == "exit" else (1, MAX_SIGNAL)
        if not low <= code <= high:  # `signal 999` would crash the runner's os.kill
            raise StagingError(
                f"guest wrote an impossible exit status {text.strip()!r} "
                f"({kind} takes {low} to {high})"
            )
        return cls(kind, code)

    def __str__(self) -> str:
        return f"{self.kind} {self.code}"


def output_disk_header() -> bytes:
    """Sector 0 of a fresh output disk: the magic, a newline, zero padding."""
    return (OUTPUT_MAGIC + b"\n").ljust(SECTOR, b"\x00")
