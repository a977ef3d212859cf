"""Pools of real VMs: `sd start` / `sd terminate` on libvirtd + QEMU (TCG), in-process.

Needs libvirtd on qemu:///system and the minimal guest built by `scripts/build-guest` into the
site image folder (`<image_dir>/minimal/{vmlinux,initrd.img}`); skips with the reason
otherwise. Each test gets a tmp site whose image folder holds the guest (hard links) and a
small qcow2 base image, so every VM has a real overlay to create and to remove. Pool names
carry this process's pid; whatever a failing test leaves is removed by the fixture, which
then checks that libvirtd has no domain of ours and that no overlay file is left.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sd_batch.config.site import load_config
from sd_batch.deploy.pools import start_pool
from sd_batch.errors import SdError
from sd_batch.hypervisor.connection import DomainState, Hypervisor
from sd_batch.hypervisor.connections import SHARED_CONNECTIONS
from sd_batch.ledger.store import Ledger

from conftest import SdSite, site_environ, write_site_toml

pytestmark = pytest.mark.qemu

URI = "qemu:///system"
SOCKET = Path("/run/libvirt/libvirt-sock")
GUEST_FILES = ("vmlinux", "initrd.img")
READY = "sd-batch: ready"
BOOT_TIMEOUT = 90.0  # TCG on a small, busy host: a boot takes 2-4 s; leave room for contention
PREFIX = f"sdtest{os.getpid()}"
#: Two minimal guests, each on a copy-on-write overlay of base.qcow2.
TWO_WITH_OVERLAYS = """#include "minimal.sf"
sfConfig extends Pool {
    count 2;
    template extends LAZY MinimalVM {
        disks extends DATA { root extends Disk { image "base.qcow2"; } }
    }
}
"""


@dataclass
class RealSite(SdSite):
    description: Path

    @property
    def overlay_dir(self) -> Path:
        return self.root / "state" / "overlays"

    @property
    def console_dir(self) -> Path:
        return self.root / "state" / "consoles"

    def ledger_owners(self) -> list[str]:
        config = load_config(self.root / "site.toml")
        with Ledger.for_site(config) as ledger:
            return [o.owner_id for o in ledger.owners()]


def guest_dir() -> Path:
    directory = load_config().image_dir / "minimal"
    missing = [f for f in GUEST_FILES if not (directory / f).is_file()]
    if missing:
        pytest.skip(
            f"the guest is not built ({directory} lacks {missing}): run scripts/build-guest"
        )
    return directory


def link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def connect() -> Hypervisor:
    pytest.importorskip("libvirt", reason="libvirt-python is not installed")
    if not SOCKET.exists():
        pytest.skip(f"libvirtd is not running ({SOCKET} is missing): run scripts/setup-host")
    try:
        return Hypervisor.connect(URI, attempts=1)
    except SdError as exc:
        pytest.skip(f"cannot connect to {URI}: {exc}")


def drop_shared_connection() -> None:
    """The commands' cached connection is made afresh for each test: a cached one would not
    survive a libvirtd restart between tests."""
    SHARED_CONNECTIONS.forget(URI)


@pytest.fixture
def hv() -> Iterator[Hypervisor]:
    with connect() as connection:
        drop_shared_connection()
        yield connection
    drop_shared_connection()


@pytest.fixture
def site(tmp_path: Path, hv: Hypervisor) -> Iterator[RealSite]:
    guest = guest_dir()
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img is missing (apt-get install qemu-utils)")
    images = tmp_path / "images"
    (images / "minimal").mkdir(parents=True)
    for name in GUEST_FILES:
        link_or_copy(guest / name, images / "minimal" / name)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(images / "base.qcow2"), "64M"], check=True
    )
    config = write_site_toml(tmp_path, URI, image_dir=images)  # flavour qemu: TCG, no /dev/kvm
    description = tmp_path / "pool.sf"
    description.write_text(TWO_WITH_OVERLAYS, encoding="utf-8")
    made = RealSite(tmp_path, site_environ(config), description)
    try:
        yield made
    finally:
        with connect() as fresh:  # whatever became of the test's own connection
            leaked = [d.name for d in fresh.list_domains() if d.name.startswith(PREFIX)]
            for name in leaked:
                fresh.destroy(name)
                fresh.undefine(name)
            _drop_pools_under(fresh, tmp_path)
        overlays = made.overlay_dir
        left_files = sorted(p.name for p in overlays.iterdir()) if overlays.is_dir() else []
        assert not leaked, f"the test left domains on {URI}: {leaked}"
        assert not left_files, f"the test left overlay files: {left_files}"


def _drop_pools_under(hv: Hypervisor, folder: Path) -> None:
    """The transient dir pools libvirtd made over our tmp folders die with them."""
    import xml.etree.ElementTree as ET

    for pool in hv.libvirt_connection().listAllStoragePools(0):
        target = ET.fromstring(pool.XMLDesc(0)).findtext("target/path") or ""
        if Path(target).is_relative_to(folder) and pool.isActive():
            pool.destroy()


def wait_ready(console: Path, timeout: float = BOOT_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if console.is_file() and READY in console.read_text(errors="replace"):
            return
        time.sleep(0.2)
    tail = console.read_text(errors="replace")[-2000:] if console.is_file() else "(no log)"
    pytest.fail(f"{console.name}: no '{READY}' line within {timeout:g} s:\n{tail}")


def test_a_pool_of_two_real_vms_starts_runs_and_leaves_nothing_behind(
    site: RealSite, hv: Hypervisor
) -> None:
    name = f"{PREFIX}-up"
    vms = [f"{name}-1", f"{name}-2"]
    code, out, err = site.sd("start", "localhost", name, str(site.description))
    assert code == 0, err
    assert out == f"pool {name} started on {URI}: 2 VMs running ({', '.join(vms)})\n"
    assert [hv.state(vm).state for vm in vms] == [DomainState.RUNNING] * 2
    overlays = [site.overlay_dir / f"{vm}-root.qcow2" for vm in vms]
    for overlay in overlays:
        argv = ["qemu-img", "info", "--output=json", "-U", str(overlay)]
        info = json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)
        assert info["backing-filename"] == str(site.root / "images" / "base.qcow2")
    for vm in vms:
        wait_ready(site.console_dir / f"{vm}.log")
    report = json.loads(site.sd("status", name, "--json")[1])
    assert [v["state"] for v in report[0]["vms"]] == ["running", "running"]

    code, out, err = site.sd("terminate", "localhost", name, "--grace", "30")
    assert code == 0, err
    assert out.startswith(f"pool {name} terminated: removed 2 domains, 2 volumes"), out
    assert not [d.name for d in hv.list_domains() if d.name.startswith(name)]
    assert not [p for p in overlays if p.exists()]
    assert site.ledger_owners() == []


def start_and_die(config_file: str, name: str, file: str) -> None:
    """Child process: start pool NAME and be killed (SIGKILL) once both VMs run."""

    def progress(line: str) -> None:
        if line.startswith("[2/2] started"):
            os.kill(os.getpid(), signal.SIGKILL)

    start_pool(load_config(Path(config_file)), "localhost", name, Path(file), progress=progress)


def test_real_vms_outlive_a_killed_start_and_the_next_terminate_removes_them(
    site: RealSite, hv: Hypervisor
) -> None:
    name = f"{PREFIX}-crash"
    child = multiprocessing.get_context("spawn").Process(
        target=start_and_die, args=(site.environ["SD_BATCH_CONFIG"], name, str(site.description))
    )
    child.start()
    child.join(120)
    assert child.exitcode == -signal.SIGKILL
    assert {d.name: d.state for d in hv.list_domains() if d.name.startswith(name)} == {
        f"{name}-1": DomainState.RUNNING,
        f"{name}-2": DomainState.RUNNING,
    }
    [report] = json.loads(site.sd("status", name, "--json")[1])
    assert (report["interrupted"], [v["state"] for v in report["vms"]]) == (
        True,
        ["running", "running"],
    )

    code, out, err = site.sd("terminate", "localhost", name, "--grace", "0")
    assert code == 0, err
    assert out.startswith(f"pool {name} terminated: removed 2 domains, 2 volumes"), out
    assert not [d.name for d in hv.list_domains() if d.name.startswith(name)]
    assert list(site.overlay_dir.iterdir()) == []
    assert site.ledger_owners() == []
