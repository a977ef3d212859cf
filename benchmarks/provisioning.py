"""Benchmark of provisioning: overlays, the domain lifecycle, and pools of real VMs.

Run as `.venv/bin/python benchmarks/provisioning.py` (a few minutes; never inside the tests).

1. Overlay creation through our hypervisor edge (`Hypervisor.create_overlay`, capacity read
   from the base) on a sparse 1 GiB and a sparse 20 GiB raw base, on qemu:///system: median of
   N, and the ratio 20 GiB / 1 GiB (target <= 1.2: an overlay must not cost more for a bigger
   base). Without libvirtd it times the same edge's qemu-img path and says so.
2. define + start + destroy (+ undefine) cycles per second on libvirt's test driver
   (test:///default), through our `Hypervisor`: what our own layer costs per VM.
3. A pool of 2 and of 4 real minimal VMs: from `sd start` (a fresh `sd` process, as a user
   types it) until every guest has printed its ready line on its serial console, against the
   same VMs started by raw `qemu-system-x86_64` in the same run (same kernel, initrd, command
   line, memory, vCPUs; -accel tcg, -nodefaults, serial to a file), "running" measured the
   same way for both: the ready line in the console file. Rounds alternate which goes first.
   Skipped, with the reason, without libvirtd or the built guest.

Numbers are measured, never adjusted: medians, with the spread (min-max) beside them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from raw_qemu import RawBoot  # noqa: E402 - next to this file

from sd_batch.config.site import BUILTIN_TEMPLATE_DIR, load_config  # noqa: E402
from sd_batch.errors import SdError  # noqa: E402
from sd_batch.hypervisor.connection import Hypervisor  # noqa: E402
from sd_batch.lang import load_file  # noqa: E402
from sd_batch.placement.steps import plan  # noqa: E402

SYSTEM_URI = "qemu:///system"
SOCKET = Path("/run/libvirt/libvirt-sock")
GiB = 1 << 30
TARGET_OVERLAY_RATIO = 1.2
READY = "sd-batch: ready"
BOOT_TIMEOUT = 120.0
TAG = f"bench{os.getpid()}"


def median_spread(values: list[float], scale: float = 1.0, unit: str = "ms") -> str:
    values = [v * scale for v in values]
    return (
        f"{statistics.median(values):8.1f} {unit}  "
        f"(min {min(values):.1f}, max {max(values):.1f}, n={len(values)})"
    )


def libvirtd_reason() -> str | None:
    """Why real-VM parts cannot run here, or None when they can."""
    if not SOCKET.exists():
        return f"libvirtd is not running ({SOCKET} is missing: scripts/setup-host starts it)"
    try:
        Hypervisor.connect(SYSTEM_URI, attempts=1).close()
    except SdError as exc:
        return f"cannot connect to {SYSTEM_URI}: {exc}"
    return None


# --- 1. overlays ---------------------------------------------------------------------------------
def bench_overlays(work: Path, runs: int, no_daemon: str | None) -> None:
    print(f"1. overlay creation on a sparse raw base, median of {runs}")
    bases = {}
    for size in (1, 20):
        base = work / "bases" / f"base-{size}g.raw"
        base.parent.mkdir(parents=True, exist_ok=True)
        with open(base, "wb") as handle:
            handle.truncate(size * GiB)  # sparse: no block allocated
        bases[size] = base
    overlays = work / "overlays"
    if no_daemon is None:
        hv = Hypervisor.connect(SYSTEM_URI, attempts=1)
        print(f"   through Hypervisor.create_overlay on {SYSTEM_URI} (libvirt storage API)")

        def create(name: str, base: Path) -> None:
            hv.create_overlay(overlays, name, base, 0, "raw")

        def delete(path: Path) -> None:
            hv.delete_volume(path)
    else:
        from sd_batch.hypervisor.storage import qemu_img_create

        print(f"   libvirtd unavailable ({no_daemon}):")
        print("   timing our edge's qemu-img path instead (the one used without a storage driver)")
        overlays.mkdir(parents=True, exist_ok=True)

        def create(name: str, base: Path) -> None:
            qemu_img_create(overlays / name, "qcow2", base.stat().st_size, (str(base), "raw"))

        def delete(path: Path) -> None:
            path.unlink(missing_ok=True)

    times: dict[int, list[float]] = {1: [], 20: []}
    try:
        for size in (1, 20):  # one unmeasured warm-up each: pool creation, first lookups
            create(f"warm-{size}.qcow2", bases[size])
            delete(overlays / f"warm-{size}.qcow2")
        for index in range(runs):
            for size in (1, 20) if index % 2 == 0 else (20, 1):
                name = f"ov-{size}g-{index}.qcow2"
                started = time.perf_counter()
                create(name, bases[size])
                times[size].append(time.perf_counter() - started)
                delete(overlays / name)
    finally:
        if no_daemon is None:
            _drop_pools_under(hv, work)
            hv.close()
    for size in (1, 20):
        print(f"   base {size:2d} GiB: {median_spread(times[size], 1000)}")
    ratio = statistics.median(times[20]) / statistics.median(times[1])
    verdict = "ok" if ratio <= TARGET_OVERLAY_RATIO else "OVER TARGET"
    print(f"   ratio 20 GiB / 1 GiB: {ratio:.2f}  (target <= {TARGET_OVERLAY_RATIO}: {verdict})")


def _drop_pools_under(hv: Hypervisor, folder: Path) -> None:
    """The transient dir pools libvirtd made over our tmp folders end with them."""
    for pool in hv._conn.listAllStoragePools(0):
        target = ET.fromstring(pool.XMLDesc(0)).findtext("target/path") or ""
        if Path(target).is_relative_to(folder) and pool.isActive():
            pool.destroy()


# --- 2. the lifecycle on the test driver ---------------------------------------------------------
def test_domain_xml(name: str) -> str:
    domain = ET.Element("domain", type="test")
    ET.SubElement(domain, "name").text = name
    ET.SubElement(domain, "memory", unit="MiB").text = "256"
    ET.SubElement(domain, "vcpu").text = "1"
    ET.SubElement(ET.SubElement(domain, "os"), "type").text = "hvm"
    return ET.tostring(domain, encoding="unicode")


def bench_lifecycle(batches: int, cycles: int) -> None:
    print(
        f"2. define + start + destroy + undefine on test:///default, through Hypervisor "
        f"({batches} batches of {cycles} cycles)"
    )
    rates = []
    steps: dict[str, list[float]] = {"define": [], "start": [], "destroy": [], "undefine": []}
    with Hypervisor.connect("test:///default") as hv:
        xml = [test_domain_xml(f"{TAG}-{i}") for i in range(cycles)]
        for _ in range(batches):
            started = time.perf_counter()
            for index in range(cycles):
                t0 = time.perf_counter()
                name = hv.define(xml[index])
                t1 = time.perf_counter()
                hv.start(name)
                t2 = time.perf_counter()
                hv.destroy(name)
                t3 = time.perf_counter()
                hv.undefine(name)
                t4 = time.perf_counter()
                for step, seconds in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                    steps[step].append(seconds)
            rates.append(cycles / (time.perf_counter() - started))
        unvalidated = []  # the same define, without libvirt's schema check (flag 0), to compare
        for index in range(cycles):
            t0 = time.perf_counter()
            name = hv._conn.defineXMLFlags(xml[index], 0).name()
            unvalidated.append(time.perf_counter() - t0)
            hv.undefine(name)
    print(f"   {median_spread(rates, unit='cycles/s')}")
    print(
        f"   = {1000 / statistics.median(rates):.3f} ms per VM lifecycle in our layer + libvirt; "
        "median per call: "
        + ", ".join(
            f"{step} {statistics.median(values) * 1000:.3f} ms" for step, values in steps.items()
        )
    )
    print(
        f"   define without VIR_DOMAIN_DEFINE_VALIDATE (raw libvirt call, for comparison): "
        f"{statistics.median(unvalidated) * 1000:.3f} ms"
    )


# --- 3. pools of real VMs ------------------------------------------------------------------------
def wait_all_ready(consoles: list[Path], started: float, timeout: float = BOOT_TIMEOUT) -> float:
    """Seconds from STARTED until every console file holds the ready line."""
    waiting = set(consoles)
    while waiting:
        for console in list(waiting):
            try:
                if READY in console.read_text(errors="replace"):
                    waiting.discard(console)
            except FileNotFoundError:
                pass
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"no ready line within {timeout:g} s in {sorted(map(str, waiting))}")
        if waiting:
            time.sleep(0.01)
    return time.perf_counter() - started


def sd_command() -> list[str]:
    script = Path(sys.executable).parent / "sd"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from sd_batch.cli.main import console_main; console_main()"]


def run_sd_pool(site: Path, environ: dict[str, str], count: int, name: str) -> tuple[float, float]:
    """(seconds until `sd start` returned, seconds until every guest is ready)."""
    description = site / f"pool{count}.sf"
    consoles = [site / "state" / "consoles" / f"{name}-{i}.log" for i in range(1, count + 1)]
    started = time.perf_counter()
    result = subprocess.run(
        [*sd_command(), "start", "localhost", name, str(description)],
        env=environ,
        capture_output=True,
        text=True,
    )
    returned = time.perf_counter() - started
    try:
        if result.returncode != 0:
            raise RuntimeError(f"sd start failed: {result.stderr.strip()}")
        ready = wait_all_ready(consoles, started)
    finally:
        stop = subprocess.run(
            [*sd_command(), "terminate", "localhost", name, "--grace", "0"],
            env=environ,
            capture_output=True,
            text=True,
        )
        if stop.returncode != 0 and result.returncode == 0:
            print(f"   warning: sd terminate {name} failed: {stop.stderr.strip()}")
    return returned, ready


def run_raw_qemu(work: Path, count: int, boot: RawBoot, round_no: int) -> float:
    """Seconds from spawning COUNT qemu-system-x86_64 processes until every guest is ready."""
    consoles = [work / f"raw-{round_no}-{count}-{i}.log" for i in range(count)]
    processes = []
    started = time.perf_counter()
    try:
        for console in consoles:
            argv = boot.argv(console, "-name", f"{TAG}-raw", "-no-reboot")
            processes.append(
                subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            )
        return wait_all_ready(consoles, started)
    finally:
        for process in processes:
            process.kill()
        for process in processes:
            process.wait()


def bench_pools(work: Path, rounds: int, counts: tuple[int, ...]) -> None:
    print(
        f"3. pool start to all guests ready (ready line on the serial console), "
        f"median of {rounds} rounds"
    )
    reason = libvirtd_reason()
    guest = load_config().image_dir / "minimal"
    if reason is None and not all((guest / f).is_file() for f in ("vmlinux", "initrd.img")):
        reason = f"the guest is not built in {guest} (scripts/build-guest builds it)"
    if reason is None and shutil.which("qemu-system-x86_64") is None:
        reason = "qemu-system-x86_64 is not installed"
    if reason is not None:
        print(f"   SKIPPED: {reason}")
        return
    site = work / "site"
    (site / "state").mkdir(parents=True)
    (site / "site.toml").write_text(
        f'image_dir = "{guest.parent}"\nstate_dir = "{site / "state"}"\n'
        f'default_uri = "{SYSTEM_URI}"\n[properties]\n"sd.flavour" = "qemu"\n',
        encoding="utf-8",
    )
    for count in counts:
        (site / f"pool{count}.sf").write_text(
            f'#include "minimal.sf"\nsfConfig extends Pool {{ count {count}; '
            "template extends LAZY MinimalVM; }\n",
            encoding="utf-8",
        )
    environ = {**os.environ, "SD_BATCH_CONFIG": str(site / "site.toml")}
    boot = same_boot_as_sd(site, guest.parent)
    print(
        f"   both: kernel {boot.kernel}, {boot.memory} MiB, {boot.vcpus} vCPU, TCG; "
        f"cmdline {boot.cmdline!r}"
    )
    print(f"   host: {os.cpu_count()} CPUs; the VMs of a pool boot at once on them")
    for count in counts:
        sd_returned: list[float] = []
        sd_ready: list[float] = []
        raw_ready: list[float] = []
        run_sd_pool(site, environ, count, f"{TAG}-warm{count}")  # warm-up, not measured
        for round_no in range(rounds):
            for which in ("sd", "raw") if round_no % 2 == 0 else ("raw", "sd"):
                if which == "sd":
                    name = f"{TAG}-p{count}-{round_no}"
                    returned, ready = run_sd_pool(site, environ, count, name)
                    sd_returned.append(returned)
                    sd_ready.append(ready)
                else:
                    raw_ready.append(run_raw_qemu(work, count, boot, round_no))
        print(f"   pool of {count}:")
        print(f"     sd start -> all ready      {median_spread(sd_ready, 1000)}")
        print(f"     (sd start returned after   {median_spread(sd_returned, 1000)})")
        print(f"     raw qemu -> all ready      {median_spread(raw_ready, 1000)}")
        ratio = statistics.median(sd_ready) / statistics.median(raw_ready)
        extra = statistics.median(sd_ready) - statistics.median(raw_ready)
        print(f"     ratio sd / raw: {ratio:.2f}  (sd costs {extra * 1000:+.0f} ms per pool)")


def same_boot_as_sd(site: Path, image_dir: Path) -> RawBoot:
    """The kernel, initrd, command line, memory and vCPUs sd gives a pool VM, from the plan."""
    config = load_config(site / "site.toml")
    description = load_file(
        site / "pool2.sf", include_dirs=[BUILTIN_TEMPLATE_DIR], properties=config.properties
    )
    return RawBoot.of(next(plan(description, "x", SYSTEM_URI).vms()).spec, image_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overlay-runs", type=int, default=21, help="overlays per base size")
    parser.add_argument("--batches", type=int, default=5, help="test-driver batches")
    parser.add_argument("--cycles", type=int, default=200, help="cycles per test-driver batch")
    parser.add_argument("--rounds", type=int, default=3, help="real-VM rounds per pool size")
    parser.add_argument("--pools", default="2,4", help="pool sizes (default 2,4)")
    args = parser.parse_args()
    counts = tuple(int(n) for n in args.pools.split(","))
    with tempfile.TemporaryDirectory(prefix="sd-bench-") as tmp:
        work = Path(tmp)
        bench_overlays(work, args.overlay_runs, libvirtd_reason())
        bench_lifecycle(args.batches, args.cycles)
        bench_pools(work, args.rounds, counts)


if __name__ == "__main__":
    main()
