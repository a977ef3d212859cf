"""Boot the real minimal guest under QEMU (TCG) through libvirtd and hold it to its contract.

Needs `scripts/setup-host` (libvirtd on qemu:///system and the built guest); skips with the
reason otherwise. Every domain is named `sd-test-guest-<pid>-*`, defined, run and undefined inside
a try/finally, and the module ends by checking `virsh list --all` holds none of this process's.
The domain XML is built here with ElementTree until the project's vm/domain_xml.py can express a
job VM's extra disks.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import tarfile
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sd_batch.config.site import load_config
from sd_batch.guest.contract import (
    CONSOLE_READY,
    INPUT_SERIAL,
    OUTPUT_SERIAL,
    QEMU_CMDLINE,
    RESULT_MARKER,
    SANDBOX_PREFIX,
    ExitStatus,
    Manifest,
    output_disk_header,
)

pytestmark = pytest.mark.qemu

URI = "qemu:///system"
SOCKET = Path("/run/libvirt/libvirt-sock")
PREFIX = "sd-test-guest-"
#: Our process's domains only: a suite running in parallel elsewhere owns its own.
OWN_PREFIX = f"{PREFIX}{os.getpid()}-"
BOOT_TIMEOUT = 60.0  # TCG on a busy 2-core host: a boot takes 2-4 s, allow for contention
MiB = 1024 * 1024

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed")


@dataclass(frozen=True)
class Disk:
    path: Path
    target: str
    serial: str | None
    readonly: bool = False


def domain_xml(name: str, guest: Path, console: Path, disks: list[Disk]) -> str:
    """A direct-kernel-boot TCG domain: no network, no balloon, serial console to a file."""
    dom = ET.Element("domain", type="qemu")
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "memory", unit="MiB").text = "256"
    ET.SubElement(dom, "vcpu").text = "1"
    os_ = ET.SubElement(dom, "os")
    ET.SubElement(os_, "type", arch="x86_64", machine="pc").text = "hvm"
    ET.SubElement(os_, "kernel").text = str(guest / "vmlinux")
    ET.SubElement(os_, "initrd").text = str(guest / "initrd.img")
    ET.SubElement(os_, "cmdline").text = QEMU_CMDLINE
    features = ET.SubElement(dom, "features")
    ET.SubElement(features, "acpi")  # without it poweroff halts and the VM never stops
    ET.SubElement(dom, "cpu", mode="maximum")
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        ET.SubElement(dom, event).text = "destroy"
    devices = ET.SubElement(dom, "devices")
    for disk in disks:
        element = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(element, "driver", name="qemu", type="raw")
        ET.SubElement(element, "source", file=str(disk.path))
        ET.SubElement(element, "target", dev=disk.target, bus="virtio")
        if disk.serial is not None:
            ET.SubElement(element, "serial").text = disk.serial
        if disk.readonly:
            ET.SubElement(element, "readonly")
    ET.SubElement(devices, "controller", type="usb", model="none")
    serial = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(serial, "source", path=str(console))
    ET.SubElement(serial, "target", port="0")
    ET.SubElement(devices, "memballoon", model="none")
    return ET.tostring(dom, encoding="unicode")


# ---------------------------------------------------------------- fixtures

_event_loop_started = False


def _start_event_loop() -> None:
    """libvirt delivers lifecycle events only to a registered, running event loop."""
    global _event_loop_started
    if _event_loop_started:
        return
    libvirt.virEventRegisterDefaultImpl()

    def run() -> None:
        while True:
            libvirt.virEventRunDefaultImpl()

    threading.Thread(target=run, name="libvirt-events", daemon=True).start()
    _event_loop_started = True


@pytest.fixture(scope="module")
def guest() -> Path:
    directory = load_config().image_dir / "minimal"
    missing = [f for f in ("vmlinux", "initrd.img") if not (directory / f).is_file()]
    if missing:
        pytest.skip(
            f"the guest is not built ({directory} lacks {missing}): run scripts/build-guest"
        )
    return directory


@pytest.fixture(scope="module")
def conn() -> Iterator[Any]:
    if not SOCKET.exists():
        pytest.skip(f"libvirtd is not running ({SOCKET} is missing): run scripts/setup-host")
    _start_event_loop()
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # no stderr noise
    try:
        connection = libvirt.open(URI)
    except libvirt.libvirtError as exc:
        pytest.skip(f"cannot connect to {URI}: {exc}")
    try:
        yield connection
    finally:
        leaked = [
            n for n in (d.name() for d in connection.listAllDomains()) if n.startswith(OWN_PREFIX)
        ]
        for name in leaked:
            _remove(connection.lookupByName(name))
        connection.close()
        listed = subprocess.run(
            ["virsh", "-c", URI, "list", "--all", "--name"], capture_output=True, text=True
        ).stdout.split()
        assert not leaked, f"tests leaked domains: {leaked}"
        assert not [n for n in listed if n.startswith(OWN_PREFIX)], f"virsh still lists {listed}"


@pytest.fixture
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sd-guest-test-") as tmp:
        yield Path(tmp)


def _remove(dom: Any) -> None:
    """Destroy and undefine, whatever state the domain reached (it may stop meanwhile)."""
    with contextlib.suppress(libvirt.libvirtError):
        if dom.isActive():
            dom.destroy()
    with contextlib.suppress(libvirt.libvirtError):
        dom.undefine()


class Stopped:
    """A STOPPED lifecycle event for one domain, waited for without polling."""

    def __init__(self, conn: Any, name: str) -> None:
        self.name = name
        self.event = threading.Event()
        self.detail: int | None = None
        self.at = 0.0
        self.callback = conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_event, None
        )
        self.conn = conn

    def _on_event(self, _conn: object, dom: Any, event: int, detail: int, _o: object) -> None:
        if dom.name() == self.name and event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
            self.detail, self.at = detail, time.monotonic()
            self.event.set()

    def wait(self, timeout: float) -> bool:
        return self.event.wait(timeout)

    def close(self) -> None:
        self.conn.domainEventDeregisterAny(self.callback)


def wait_for_console(console: Path, text: str, timeout: float) -> str:
    """The console log once it shows `text` (a file written by QEMU: read it until then)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = console.read_text(errors="replace") if console.exists() else ""
        if text in log:
            return log
        time.sleep(0.05)
    pytest.fail(f"{text!r} not on the console within {timeout} s:\n{log}")


@dataclass
class JobRun:
    names: list[str]  # every member of the result tar, in order
    members: dict[str, bytes]  # the regular files' contents
    console: str
    seconds: float


def make_input_disk(path: Path, manifest: Manifest, files: dict[str, tuple[bytes, int]]) -> None:
    """The input disk: a plain tar, marker first, manifest, then sandbox/ (as staging will)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:

        def add(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, int(time.time()) - 60
            tar.addfile(info, io.BytesIO(data))

        for name, data in manifest.members():
            add(name, data)
        sandbox = tarfile.TarInfo(SANDBOX_PREFIX.rstrip("/"))
        sandbox.type, sandbox.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(sandbox)
        for name, (data, mode) in files.items():
            add(SANDBOX_PREFIX + name, data, mode)
    path.write_bytes(buffer.getvalue())


def make_output_disk(path: Path, size: int) -> None:
    with open(path, "wb") as disk:
        disk.write(output_disk_header())
        disk.truncate(size)


def run_job(
    conn: Any,
    guest: Path,
    workdir: Path,
    manifest: Manifest,
    files: dict[str, tuple[bytes, int]],
    *,
    serials: bool = True,
    output_size: int = 16 * MiB,
    press_power_after: str | None = None,
) -> JobRun:
    """Boot a job VM, wait for it to power itself off, read the result tar off the disk."""
    name = f"{OWN_PREFIX}{uuid.uuid4().hex[:8]}"
    console, indisk, outdisk = workdir / "console.log", workdir / "in.img", workdir / "out.img"
    make_input_disk(indisk, manifest, files)
    make_output_disk(outdisk, output_size)
    disks = [
        Disk(indisk, "vdb", INPUT_SERIAL if serials else None, readonly=True),
        Disk(outdisk, "vdc", OUTPUT_SERIAL if serials else None),
    ]
    stopped = Stopped(conn, name)
    dom = conn.defineXML(domain_xml(name, guest, console, disks))
    try:
        started = time.monotonic()
        dom.create()
        if press_power_after is not None:
            wait_for_console(console, press_power_after, BOOT_TIMEOUT)
            time.sleep(1)  # the line comes just before su/env exec the payload: let them
            dom.shutdown()
        assert stopped.wait(BOOT_TIMEOUT), "the job VM did not power off:\n" + console.read_text()
        assert stopped.detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN
        seconds = stopped.at - started
    finally:
        stopped.close()
        _remove(dom)
    log = console.read_text(errors="replace")
    with tarfile.open(outdisk) as result:
        names = result.getnames()
        members = {
            m.name: result.extractfile(m).read()  # type: ignore[union-attr]
            for m in result.getmembers()
            if m.isfile()
        }
    return JobRun(names, members, log, seconds)


# ---------------------------------------------------------------- tests

RUN_SH = b"""#!/bin/sh
echo hello
echo "greeting=$GREETING"
echo "uid=$(id -u) cwd=$(pwd)"
for arg in "$@"; do echo "arg=[$arg]"; done
echo result > result.txt
mkdir -p sub && echo deep > sub/deeper.txt
echo oops >&2
exit 3
"""


def test_service_vm_powers_off_on_acpi_shutdown(conn: Any, guest: Path, workdir: Path) -> None:
    name = f"{OWN_PREFIX}{uuid.uuid4().hex[:8]}"
    console = workdir / "console.log"
    stopped = Stopped(conn, name)
    dom = conn.defineXML(domain_xml(name, guest, console, []))
    try:
        started = time.monotonic()
        dom.create()
        wait_for_console(console, CONSOLE_READY, BOOT_TIMEOUT)
        ready = time.monotonic() - started
        state, _ = dom.state()
        assert state == libvirt.VIR_DOMAIN_RUNNING
        pressed = time.monotonic()
        dom.shutdown()
        assert stopped.wait(30), "no shut-off after dom.shutdown():\n" + console.read_text()
        assert stopped.detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN
        assert dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
        print(f"service VM: ready {ready:.2f} s, shut off {stopped.at - pressed:.2f} s after")
    finally:
        stopped.close()
        _remove(dom)
    assert "sd-batch: shutdown requested" in console.read_text()


@pytest.mark.parametrize("serials", [True, False], ids=["by-serial", "by-magic-sector"])
def test_job_vm_runs_payload_and_writes_result_tar(
    conn: Any, guest: Path, workdir: Path, serials: bool
) -> None:
    manifest = Manifest(
        argv=["./run.sh", "two words", "$(poweroff -f)", "*", ""],
        env={"GREETING": "hi; there $HOME"},
    )
    files = {"run.sh": (RUN_SH, 0o755), "input.txt": (b"given, not changed\n", 0o644)}
    run = run_job(conn, guest, workdir, manifest, files, serials=serials)
    names = run.names
    assert names[0] == RESULT_MARKER
    assert ExitStatus.parse(run.members["exit_status"].decode()) == ExitStatus("exit", 3)
    assert run.members["stdout"].decode().splitlines() == [
        "hello",
        "greeting=hi; there $HOME",
        "uid=1000 cwd=/sandbox",
        "arg=[two words]",
        "arg=[$(poweroff -f)]",
        "arg=[*]",
        "arg=[]",
    ]
    assert run.members["stderr"] == b"oops\n"
    assert run.members["outputs/result.txt"] == b"result\n"
    assert run.members["outputs/sub/deeper.txt"] == b"deep\n"
    assert "outputs/input.txt" not in names and "outputs/run.sh" not in names
    assert "error" not in names
    print(f"job VM ({'serials' if serials else 'magic'}): create -> shut off {run.seconds:.2f} s")


def test_job_result_larger_than_output_disk_becomes_an_error_report(
    conn: Any, guest: Path, workdir: Path
) -> None:
    script = b"#!/bin/sh\nhead -c 3000000 /dev/zero > big.bin\necho done\n"
    run = run_job(
        conn,
        guest,
        workdir,
        Manifest(["./big.sh"]),
        {"big.sh": (script, 0o755)},
        output_size=1 * MiB,
    )
    assert run.members["exit_status"] == b"exit 0\n"
    assert b"exceeds the output disk" in run.members["error"]
    assert not [n for n in run.members if n.startswith("outputs/")]
    assert run.members["stdout"] == b"done\n"


def test_acpi_shutdown_of_a_job_vm_terminates_the_payload(
    conn: Any, guest: Path, workdir: Path
) -> None:
    script = b"#!/bin/sh\necho started\nexec sleep 600\n"
    run = run_job(
        conn,
        guest,
        workdir,
        Manifest(["./wait.sh"]),
        {"wait.sh": (script, 0o755)},
        press_power_after="sd-batch: job starting",
    )
    assert run.members["exit_status"] == b"signal 15\n"


def test_a_paused_start_resumes_and_the_wait_ends_at_the_guests_power_off(
    conn: Any, guest: Path, workdir: Path
) -> None:
    """The job's lifecycle as `jobs` drives it, on real QEMU: started paused (the helper
    service, after PREPARE_JOB), resumed (the runner's run), and the wait ended by libvirt's
    SHUTDOWN event, the guest's power-off, not by its STOPPED after libvirt's kill of QEMU;
    the result on the output disk is whole at that moment."""
    from sd_batch.hypervisor.connection import Hypervisor
    from sd_batch.hypervisor.types import DomainState, DomainStatus

    hv = Hypervisor(conn, URI)  # this module's connection and event loop
    name = f"{OWN_PREFIX}{uuid.uuid4().hex[:8]}"
    indisk, outdisk = workdir / "in.img", workdir / "out.img"
    script = b"#!/bin/sh\necho done > result.txt\n"
    make_input_disk(indisk, Manifest(["./job.sh"]), {"job.sh": (script, 0o755)})
    make_output_disk(outdisk, 16 * MiB)
    disks = [Disk(indisk, "vdb", INPUT_SERIAL, readonly=True), Disk(outdisk, "vdc", OUTPUT_SERIAL)]
    stopped = Stopped(conn, name)
    dom = conn.defineXML(domain_xml(name, guest, workdir / "console.log", disks))
    try:
        hv.start(name, paused=True)
        assert hv.state(name).state is DomainState.PAUSED
        hv.start_or_resume(name)
        status = hv.wait_shutoff(name, BOOT_TIMEOUT)
        ended = time.monotonic()
        with tarfile.open(outdisk) as result:  # read at once, as jobs.run does
            members = {
                m.name: result.extractfile(m).read()  # type: ignore[union-attr]
                for m in result.getmembers()
                if m.isfile()
            }
        assert status == DomainStatus(DomainState.SHUTDOWN, "finished")
        assert stopped.wait(30), "libvirt never reported the domain off"
        print(f"the wait ended {1000 * (stopped.at - ended):.0f} ms before libvirt's STOPPED")
    finally:
        stopped.close()
        _remove(dom)
    assert members["exit_status"] == b"exit 0\n"
    assert members["outputs/result.txt"] == b"done\n"
