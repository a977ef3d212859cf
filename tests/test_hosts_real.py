"""Pools over several REAL libvirt hosts: each a libvirtd (+ virtlogd) in a network namespace of
its own, reached only as qemu+tcp://10.211.K.2/system, with its own image folder (marker
`hosts`).

`scripts/test-hosts up 3` builds them once for this module (README: "Test hosts"); `down` tears
them down at the end whatever happened. Every test gets its own state folder (ledger, overlays,
consoles: on each host the same path in that host's own copy of the site folder) and checks at
the end, host by host, that its domains, storage volumes and files are what they were before.
Real QEMU VMs (TCG) boot on the hosts: the minimal guest, 256-384 MiB, 1 vCPU.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sd_batch.config.site import SiteConfig, load_config
from sd_batch.deploy.images import push
from sd_batch.deploy.pools import start_pool
from sd_batch.errors import SdError
from sd_batch.hypervisor.connection import DomainState, Hypervisor
from sd_batch.hypervisor.connections import SHARED_CONNECTIONS
from sd_batch.ledger.store import Ledger

from conftest import Run, sd_in_process

pytestmark = [pytest.mark.hosts, pytest.mark.qemu]

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "test-hosts"
BASE = Path("/var/lib/sd-test-hosts")
SITE = BASE / "site"  # the control's site folder; each host has its own at the same path
HOSTS = (1, 2, 3)
GUEST = Path("/var/lib/sd-batch/images/minimal")
READY = "sd-batch: ready"
BOOT_SECONDS = 60.0  # one TCG boot on this loaded 2-core machine, with room for contention
PREFIX = f"sdh{os.getpid() % 100000}"
_numbers = itertools.count(1)
SD = "import sys; from sd_batch.cli.main import main; sys.exit(main(sys.argv[1:]))"


def uri(k: int) -> str:
    return f"qemu+tcp://10.211.{k}.2/system"


def host_folder(k: int) -> Path:
    """Host K's own copy of the site folder, as this (the control) machine sees it."""
    return BASE / f"host{k}" / "site"


def scheduled_pool(
    count: int,
    *,
    constraint: str = 'softAntiAffinity "w";',
    scheduler: str = 'strategy "spread";',
    disk: bool = True,
) -> str:
    disks = 'disks extends DATA { root extends Disk { image "base.qcow2"; } }' if disk else ""
    return (
        f'#include "minimal.sf"\nplacer extends Scheduler {{ hosts [| "h1", "h2", "h3" |]; '
        f"{scheduler} }}\nsfConfig extends Pool {{ scheduler LAZY ATTRIB placer; "
        f"count {count};\n  template extends LAZY MinimalVM {{ {constraint} {disks} }} }}\n"
    )


def _why_no_hosts() -> str | None:
    if os.geteuid() != 0:
        return "the test hosts need root (network namespaces, mounts, libvirtd)"
    if shutil.which("ip") is None or not Path("/usr/sbin/libvirtd").exists():
        return "iproute2 or libvirtd is missing (scripts/setup-host installs them)"
    if not all((GUEST / f).is_file() for f in ("vmlinux", "initrd.img")):
        return f"the guest is not built in {GUEST}: run scripts/build-guest"
    probe = f"sd-probe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"network namespaces cannot be made here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=False)
    return None


def test_hosts(*argv: str) -> str:
    done = subprocess.run([str(SCRIPT), *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"scripts/test-hosts {' '.join(argv)}: {done.stderr}"
    return done.stdout


test_hosts.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@pytest.fixture(scope="module")
def hosts() -> Iterator[None]:
    pytest.importorskip("libvirt", reason="libvirt-python is not installed")
    reason = _why_no_hosts()
    if reason is not None:
        pytest.skip(reason)
    test_hosts("down")  # whatever an earlier run left
    try:
        test_hosts("up", str(len(HOSTS)))
        (SITE / "images" / "minimal").mkdir(parents=True, exist_ok=True)
        for name in ("vmlinux", "initrd.img"):
            shutil.copyfile(GUEST / name, SITE / "images" / "minimal" / name)
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(SITE / "images" / "base.qcow2"), "64M"],
            check=True,
        )
        config = SiteConfig(image_dir=SITE / "images")
        for k in HOSTS:  # the base disk, put on each host through its libvirt
            assert [p.outcome for p in push(config, uri(k), "base.qcow2")] == ["copied"]
        yield
    finally:
        for k in HOSTS:
            SHARED_CONNECTIONS.forget(uri(k))
        test_hosts("down")


@dataclass
class Site:
    root: Path  # this test's local folder (site.toml, descriptions)
    run: str  # this test's folder under the site folder, on every host alike
    environ: dict[str, str]

    def sd(self, *argv: str) -> Run:
        return sd_in_process(self.environ, *argv)

    def sd_process(self, *argv: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", SD, *argv],
            text=True,
            env={**os.environ, **self.environ},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )

    def write(self, text: str, name: str = "pool.sf") -> str:
        (self.root / name).write_text(text, encoding="utf-8")
        return str(self.root / name)

    @property
    def config_file(self) -> str:
        return self.environ["SD_BATCH_CONFIG"]

    def ledger_rows(self) -> int:
        with Ledger.for_site(load_config(Path(self.config_file))) as ledger:
            return sum(1 + len(ledger.resources(o)) for o in ledger.owners())

    def on_host(self, k: int, relative: str) -> Path:
        """A path of this test's state folder, on host K's disk."""
        return host_folder(k) / "runs" / self.run / "state" / relative


def domains(k: int) -> dict[str, DomainState]:
    with Hypervisor.connect(uri(k), attempts=1) as hv:
        return {d.name: d.state for d in hv.list_domains()}


def snapshot(k: int) -> tuple[dict[str, DomainState], set[str], set[str]]:
    """Host K as it stands: its domains, its storage volumes (pools rescanned), its files."""
    with Hypervisor.connect(uri(k), attempts=1) as hv:
        listed = {d.name: d.state for d in hv.list_domains()}
        volumes = set()
        for pool in hv.libvirt_connection().listAllStoragePools(0):
            if pool.isActive():
                pool.refresh(0)
                volumes |= {v.path() for v in pool.listAllVolumes(0)}
    # pools over the image folders come and go with use; their files are compared below
    volumes = {v for v in volumes if not Path(v).is_relative_to(SITE / "images")}
    files = {str(p.relative_to(host_folder(k))) for p in host_folder(k).rglob("*") if p.is_file()}
    return listed, volumes, files


def _revive_dead_hosts() -> None:
    for k in HOSTS:
        try:
            domains(k)
        except SdError:
            subprocess.run([str(SCRIPT), "kill", str(k)], capture_output=True, check=False)
            test_hosts("revive", str(k))


@pytest.fixture
def site(hosts: None, tmp_path: Path) -> Iterator[Site]:
    run = f"{PREFIX}-{next(_numbers)}"
    state = SITE / "runs" / run / "state"
    table = "".join(f'h{k} = "{uri(k)}"\n' for k in HOSTS)
    (tmp_path / "site.toml").write_text(
        f'image_dir = "{SITE / "images"}"\nstate_dir = "{state}"\ndefault_uri = "{uri(1)}"\n'
        f'[hosts]\n{table}[properties]\n"sd.flavour" = "qemu"\n',
        encoding="utf-8",
    )
    environ = {"SD_BATCH_CONFIG": str(tmp_path / "site.toml"), "PATH": os.environ["PATH"]}
    before = {k: snapshot(k) for k in HOSTS}
    made = Site(tmp_path, run, environ)
    try:
        yield made
    finally:
        _revive_dead_hosts()
        for k in HOSTS:
            SHARED_CONNECTIONS.forget(uri(k))
        after = {k: snapshot(k) for k in HOSTS}
        rows = made.ledger_rows()
        _clean_up(run, before, after)
        for k in HOSTS:
            assert after[k] == before[k], f"host {k} differs after the test:\n" + _diff(
                before[k], after[k]
            )
        assert rows == 0, f"the test left {rows} rows in the ledger"


def _clean_up(run: str, before: dict[int, tuple], after: dict[int, tuple]) -> None:  # type: ignore[type-arg]
    """Remove what a failing test left: its domains, its folders, the pools over them."""
    for k in HOSTS:
        with Hypervisor.connect(uri(k), attempts=1) as hv:
            for name in set(after[k][0]) - set(before[k][0]):
                hv.destroy(name)
                hv.undefine(name)
            for pool in hv.libvirt_connection().listAllStoragePools(0):
                target = ET.fromstring(pool.XMLDesc(0)).findtext("target/path") or ""
                if Path(target).is_relative_to(SITE / "runs" / run) and pool.isActive():
                    pool.destroy()
        shutil.rmtree(host_folder(k) / "runs" / run, ignore_errors=True)
    shutil.rmtree(SITE / "runs" / run, ignore_errors=True)


def _diff(before: tuple, after: tuple) -> str:  # type: ignore[type-arg]
    lines = []
    for what, old, new in zip(("domains", "volumes", "files"), before, after, strict=True):
        if old != new:
            lines.append(
                f"  {what}: added {sorted(set(new) - set(old))}, gone {sorted(set(old) - set(new))}"
            )
    return "\n".join(lines) or "  (domain states differ)"


def wait_for(predicate, timeout: float, what: str, poll: float = 0.25) -> float:  # type: ignore[no-untyped-def]
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if predicate():
            return time.monotonic() - began
        time.sleep(poll)
    pytest.fail(f"{what}: not within {timeout:g} s")


def booted(site: Site, k: int, domain: str) -> bool:
    log = site.on_host(k, f"consoles/{domain}.log")
    return log.is_file() and READY in log.read_text(errors="replace")


def placed_on(site: Site, name: str) -> dict[str, int]:
    """domain -> host number, from `sd status --json`."""
    code, out, err = site.sd("status", name, "--json")
    assert code == 0, err
    [report] = json.loads(out)
    return {vm["name"]: int(vm["uri"].split(".")[2]) for vm in report["vms"]}


# --- placing and starting over the hosts ---------------------------------------------------------
def test_a_pool_of_six_is_placed_over_three_real_hosts_and_each_vm_boots_on_its_own(
    site: Site,
) -> None:
    name = f"{PREFIX}-six"
    code, out, err = site.sd("start", "h1", name, site.write(scheduled_pool(6)))
    assert code == 0, err
    assert "placer (spread) placed 6 VMs on 3 of 3 hosts" in err
    where = placed_on(site, name)
    assert sorted(where.values()) == [1, 1, 2, 2, 3, 3]  # soft anti-affinity: two a host
    for vm, k in where.items():
        assert domains(k)[vm] is DomainState.RUNNING
        assert all(vm not in domains(j) for j in HOSTS if j != k)
        overlay = site.on_host(k, f"overlays/{vm}-root.qcow2")  # made by host k's libvirt
        info = json.loads(
            subprocess.run(
                ["qemu-img", "info", "--output=json", "-U", str(overlay)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        assert info["backing-filename"] == str(SITE / "images" / "base.qcow2")
    for vm, k in where.items():
        wait_for(lambda vm=vm, k=k: booted(site, k, vm), BOOT_SECONDS, f"{vm} on host {k}")
    status = site.sd("status", name)[1]
    for vm, k in where.items():
        assert f"{vm}" in status and (k == 1 or f"running  on {uri(k)}" in status)

    code, out, err = site.sd("terminate", "h1", name, "--grace", "20")
    assert code == 0, err
    assert out == f"pool {name} terminated: removed 6 domains, 6 volumes, 6 files\n"


def test_the_qa_testbed_cluster_spans_the_hosts_head_first_and_sd_plan_reads_them(
    site: Site,
) -> None:
    file = site.write(
        '#include "qa-testbed.sf"\ntestbedScheduler:hosts [| "h1", "h2", "h3" |];\n', "qa.sf"
    )
    with Hypervisor.connect(uri(2), attempts=1) as hv:
        before = hv.host_capacity()
        code, out, _err = site.sd("plan", file, "--json")  # no --hosts: the live daemons
        after = hv.host_capacity()
    assert code == 0
    plan = json.loads(out)["schedulers"][0]
    h2 = next(h for h in plan["hosts"] if h["host"] == "h2")
    assert h2["capacity"]["memory_mib"] == before.memory_mib  # read from host 2's daemon
    assert h2["capacity"]["vcpus"] == before.cpus * 4  # Nova's default cpu overcommit
    assert before.free_memory_mib is not None and after.free_memory_mib is not None
    # what the host really has free (other work on this machine comes and goes meanwhile)
    assert h2["free"]["memory_mib"] <= max(before.free_memory_mib, after.free_memory_mib)
    planned = {p["vm"]: p["host"] for p in plan["placements"]}

    name = f"{PREFIX}-qa"
    code, _out, err = site.sd("start", "h1", name, file)
    assert code == 0, err
    assert err.index(f"started {name}-head") < err.index(f"started {name}-worker1")
    where = placed_on(site, name)
    assert len(set(where.values())) == 3  # head and workers apart
    # Both `sd plan` and `sd start` put head and workers apart; which host takes which VM
    # follows the hosts' free memory, which other work on this machine moves in between.
    assert len(set(planned.values())) == 3
    assert set(planned) == {vm.replace(name, "qa") for vm in where}
    code, out, err = site.sd("terminate", "h1", name, "--grace", "0")
    assert code == 0, err
    assert out.startswith(f"pool {name} terminated: removed 3 domains")


def test_a_host_without_the_base_image_stops_the_start_before_anything_exists(
    site: Site,
) -> None:
    only = SITE / "images" / f"{site.run}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(only), "32M"], check=True)
    try:
        for k in (1, 2):
            code, out, err = site.sd("images", "push", f"h{k}", only.name)
            assert (code, out.split(": ")[1].split(" (")[0]) == (0, "copied"), err
        text = scheduled_pool(3, constraint='antiAffinity "w";').replace("base.qcow2", only.name)
        code, _out, err = site.sd("start", "h1", f"{PREFIX}-noimg", site.write(text))
        assert code != 0
        assert f"disk image {only.name} does not exist on host {uri(3)}" in err
        assert f"sd images push {uri(3)} {only.name}" in err
        assert "rolled back: removed 0 domains, 0 volumes" in err
        assert not [d for k in HOSTS for d in domains(k) if d.startswith(f"{PREFIX}-noimg")]
    finally:
        only.unlink()
        for k in (1, 2):
            for path in (only, Path(f"{only}.sha256")):
                with Hypervisor.connect(uri(k), attempts=1) as hv:
                    hv.delete_volume(path)


def test_a_vm_refused_on_the_third_host_rolls_back_the_first_two(site: Site) -> None:
    name = f"{PREFIX}-rb"
    # not ours (no sd-batch metadata): the third VM's name is taken on host 3
    other = (
        f"<domain type='qemu'><name>{name}-3</name><memory unit='MiB'>64</memory>"
        "<os><type>hvm</type></os></domain>"
    )
    with Hypervisor.connect(uri(3), attempts=1) as hv:
        hv.define(other)
    try:
        text = scheduled_pool(3, constraint='antiAffinity "w";', scheduler='strategy "first-fit";')
        code, _out, err = site.sd("start", "h1", name, site.write(text))
        assert code != 0
        assert f"VM {name}-3" in err and "already exists" in err, err
        # host 3 had made its overlay before it refused the name: that goes too
        assert "rolled back: removed 2 domains, 3 volumes, 3 files" in err, err
        assert [d for d in domains(3) if d.startswith(name)] == [f"{name}-3"]  # left alone
        assert not [d for k in (1, 2) for d in domains(k) if d.startswith(name)]
    finally:
        with Hypervisor.connect(uri(3), attempts=1) as hv:
            hv.undefine(f"{name}-3")


# --- images ---------------------------------------------------------------------------------------
def test_sd_images_push_copies_once_and_refuses_another_file_of_that_name(site: Site) -> None:
    image = SITE / "images" / f"{site.run}.img"
    image.write_bytes(os.urandom(3 << 20))
    target = host_folder(3) / "images" / image.name
    try:
        code, out, err = site.sd("images", "push", "h3", image.name, "--json")
        assert code == 0, err
        [pushed] = json.loads(out)
        assert (pushed["outcome"], pushed["size"]) == ("copied", 3 << 20)
        assert target.read_bytes() == image.read_bytes()  # on host 3's own disk, whole
        mtime = target.stat().st_mtime_ns
        code, out, _err = site.sd("images", "push", "h3", image.name, "--json")
        assert json.loads(out)[0]["outcome"] == "present"
        assert target.stat().st_mtime_ns == mtime  # not copied again
        Path(f"{target}.sha256").unlink()  # a file there without its record: read back once
        code, out, _err = site.sd("images", "push", "h3", image.name, "--json")
        assert json.loads(out)[0]["outcome"] == "verified" and target.stat().st_mtime_ns == mtime
        image.write_bytes(os.urandom(3 << 20))  # another image of the same name
        code, _out, err = site.sd("images", "push", "h3", image.name)
        assert code != 0 and "with another checksum" in err and "not overwritten" in err
    finally:
        image.unlink()
        with Hypervisor.connect(uri(3), attempts=1) as hv:
            hv.delete_volume(SITE / "images" / image.name)  # the host's own, at the same path
            hv.delete_volume(SITE / "images" / f"{image.name}.sha256")


# --- failures -------------------------------------------------------------------------------------
def test_terminate_reports_what_a_dead_host_holds_and_finishes_once_it_is_back(site: Site) -> None:
    name = f"{PREFIX}-gone"
    text = scheduled_pool(3, constraint='antiAffinity "w";', scheduler='strategy "first-fit";')
    code, _out, err = site.sd("start", "h1", name, site.write(text))
    assert code == 0, err
    assert placed_on(site, name) == {f"{name}-1": 1, f"{name}-2": 2, f"{name}-3": 3}
    test_hosts("kill", "3")  # its libvirtd, virtlogd and QEMUs
    code, _out, err = site.sd("terminate", "h1", name, "--grace", "0")
    assert code != 0
    assert f"could not remove everything: domain {name}-3: {uri(3)}: cannot connect" in err
    assert f"volume {SITE}/runs/{site.run}/state/overlays/{name}-3-root.qcow2" in err
    assert "run the same command again" in err
    assert not [d for k in (1, 2) for d in domains(k) if d.startswith(name)]
    assert site.ledger_rows() == 4  # the pool, and host 3's domain, overlay and console log
    test_hosts("revive", "3")
    assert domains(3)[f"{name}-3"] is DomainState.SHUTOFF  # its QEMU died with the host
    code, out, err = site.sd("terminate", "h1", name, "--grace", "0")
    assert code == 0, err
    assert out == f"pool {name} terminated: removed 1 domain, 1 volume, 1 file\n"


def start_and_die(config_file: str, name: str, file: str) -> None:
    """Child process: start pool NAME and be killed (SIGKILL) once its second VM runs."""

    def progress(line: str) -> None:
        if line.startswith("[2/3] started"):
            os.kill(os.getpid(), signal.SIGKILL)

    start_pool(load_config(Path(config_file)), "h1", name, Path(file), progress=progress)


def test_sd_reap_removes_an_interrupted_start_from_every_host(site: Site) -> None:
    name = f"{PREFIX}-reap"
    text = scheduled_pool(3, constraint='antiAffinity "w";', scheduler='strategy "first-fit";')
    child = multiprocessing.get_context("spawn").Process(
        target=start_and_die, args=(site.config_file, name, site.write(text))
    )
    child.start()
    child.join(180)
    assert child.exitcode == -signal.SIGKILL
    made = {k: [d for d in domains(k) if d.startswith(name)] for k in HOSTS}
    assert made == {1: [f"{name}-1"], 2: [f"{name}-2"], 3: [f"{name}-3"]}
    code, out, err = site.sd("reap")
    assert code == 0, err
    assert (
        f"removed pool {name} on {uri(1)} (3 domains, 3 volumes, 3 files): pool start "
        "interrupted" in out
    ), out
    assert not [d for k in HOSTS for d in domains(k) if d.startswith(name)]


def test_two_starts_at_once_from_two_processes_never_overcommit_a_host(site: Site) -> None:
    # 0.5 vCPU per host CPU: each 2-CPU host (as its daemon says) takes one 1-vCPU VM
    config = Path(site.config_file)
    config.write_text(config.read_text() + "[placement]\ncpu_overcommit = 0.5\n")
    file = site.write(scheduled_pool(2, disk=False))
    names = (f"{PREFIX}-ca", f"{PREFIX}-cb")
    starts = [site.sd_process("start", "h1", n, file) for n in names]
    results = [(p.wait(180), *p.communicate()) for p in starts]
    codes = sorted(code for code, _out, _err in results)
    assert codes == [0, 8], results  # 8: no host has room (NoHostHasCapacity)
    refused = next(err for code, _out, err in results if code)
    assert "no host can take" in refused and "nothing was started" in refused
    per_host = [len([d for d in domains(k) if d.startswith(PREFIX)]) for k in HOSTS]
    assert sorted(per_host) == [0, 1, 1]
    winner = names[[code for code, _o, _e in results].index(0)]
    code, _out, err = site.sd("terminate", "h1", winner, "--grace", "0")
    assert code == 0, err


def test_watch_moves_the_vms_of_a_killed_host_and_removes_its_copies_when_it_is_back(
    site: Site,
) -> None:
    name = f"{PREFIX}-ha"
    delay, factor = 2, 3
    text = scheduled_pool(
        3, scheduler=f'strategy "spread"; sfLivenessDelay {delay}; sfLivenessFactor {factor};'
    )
    code, _out, err = site.sd("start", "h1", name, site.write(text))
    assert code == 0, err
    where = placed_on(site, name)
    for vm, k in where.items():
        wait_for(lambda vm=vm, k=k: booted(site, k, vm), BOOT_SECONDS, f"{vm} on host {k}")
    victim = 2 if 2 in where.values() else 3
    moving = sorted(vm for vm, k in where.items() if k == victim)
    watcher = site.sd_process("watch", "h1", name)
    try:
        time.sleep(delay + 1)  # a round or two with every host answering
        killed = time.monotonic()
        test_hosts("kill", str(victim))
        survivors = [k for k in HOSTS if k != victim]

        def all_running() -> bool:
            running = {
                d for k in survivors for d, s in domains(k).items() if s is DomainState.RUNNING
            }
            return set(where) <= running

        wait_for(all_running, delay * factor + BOOT_SECONDS, "the moved VMs running")
        running_after = time.monotonic() - killed
        moved_to = {vm: k for vm, k in placed_on(site, name).items() if k != victim}
        for vm in moving:
            wait_for(lambda vm=vm: booted(site, moved_to[vm], vm), BOOT_SECONDS, f"{vm} booted")
        booted_after = time.monotonic() - killed
        print(
            f"\nfailover: host {victim} killed -> its {len(moving)} VM(s) running on the "
            f"survivors in {running_after:.1f} s, booted in {booted_after:.1f} s "
            f"(sfLivenessDelay {delay} x sfLivenessFactor {factor} = {delay * factor} s; "
            f"load {os.getloadavg()[0]:.1f})"
        )
        assert running_after <= delay * factor + BOOT_SECONDS

        test_hosts("revive", str(victim))
        wait_for(
            lambda: not [d for d in domains(victim) if d.startswith(name)],
            delay * 4 + 30,
            "the stale copies removed",
        )
        [report] = json.loads(site.sd("status", name, "--json")[1])
        assert sorted(m["vm"] for m in report["moves"]) == moving
        assert all(m["from"] == uri(victim) for m in report["moves"])
    finally:
        code, out, err = site.sd("terminate", "h1", name, "--grace", "0")
        watcher.wait(30)
        log = watcher.stderr.read() if watcher.stderr else ""
    assert code == 0, err
    assert out.startswith(f"pool {name} terminated: removed 3 domains, 3 volumes"), out
    assert f"host {uri(victim)} missed ping {factor} of {factor}" in log
    assert f"removed the old copies on {uri(victim)}" in log
    assert "watching stops" in log
