"""Benchmark of pools over several real libvirt hosts (scripts/test-hosts), and of failover.

Run as root: `.venv/bin/python benchmarks/hosts.py [--rounds N] [--keep-hosts]` (several
minutes; never inside the tests). It brings the test hosts up (`scripts/test-hosts up 3`: each
a libvirtd in a network namespace, reached as qemu+tcp://10.211.K.2/system) and down again.

1. Pool start: a `Pool { count N; }` of minimal VMs (256 MiB, 1 vCPU, a qcow2 overlay on the
   pushed base disk) whose Scheduler (spread, soft anti-affinity) spans 1, 2 or 3 hosts, for
   N = 2, 4, 8: from spawning `sd start` until every guest has printed its ready line on its
   serial console (the console file on its host's disk). Then `sd terminate --grace 0`.
2. Failover: 3 VMs on 3 hosts under `sd watch` (sfLivenessDelay 2, sfLivenessFactor 3); one
   host is killed (its libvirtd, virtlogd and QEMUs, SIGKILL) and the clock runs until its VM
   runs on a survivor, and until that VM's guest is ready again.

Every "host" here is the same 2-core machine: more hosts add daemons, not CPUs, so a pool's
guests boot no faster over 3 hosts than over 1 (the boots compete for the same 2 cores). The
load average is printed beside each figure: other work on the machine distorts them all.
Numbers are measured, never adjusted: medians, with the spread (min-max) beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sd_batch.config.site import SiteConfig  # noqa: E402
from sd_batch.deploy.images import push  # noqa: E402
from sd_batch.hypervisor.connection import DomainState, Hypervisor  # noqa: E402

SCRIPT = REPO / "scripts" / "test-hosts"
BASE = Path("/var/lib/sd-test-hosts")
SITE = BASE / "site"
GUEST = Path("/var/lib/sd-batch/images/minimal")
READY = "sd-batch: ready"
BOOT_TIMEOUT = 180.0
SD = "import sys; from sd_batch.cli.main import main; sys.exit(main(sys.argv[1:]))"
TAG = f"bh{os.getpid() % 100000}"


def uri(k: int) -> str:
    return f"qemu+tcp://10.211.{k}.2/system"


def load() -> str:
    return "load {:.1f}/{:.1f}".format(*os.getloadavg()[:2])


def spread(values: list[float]) -> str:
    return (
        f"{statistics.median(values):6.2f} s  (min {min(values):.2f}, max {max(values):.2f},"
        f" n={len(values)})"
    )


def test_hosts(*argv: str) -> None:
    subprocess.run([str(SCRIPT), *argv], check=True, capture_output=True, text=True)


def sd(environ: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SD, *argv],
        capture_output=True,
        text=True,
        env={**os.environ, **environ},
        cwd=REPO,
        timeout=600,
    )


def description(count: int, hosts: int, liveness: str = "") -> str:
    names = ", ".join(f'"h{k}"' for k in range(1, hosts + 1))
    return (
        f'#include "minimal.sf"\nplacer extends Scheduler {{ hosts [| {names} |]; '
        f'strategy "spread"; {liveness} }}\nsfConfig extends Pool {{ scheduler LAZY ATTRIB '
        f'placer; count {count};\n  template extends LAZY MinimalVM {{ softAntiAffinity "w";'
        ' disks extends DATA { root extends Disk { image "base.qcow2"; } } } }\n'
    )


def console(run: str, k: int, domain: str) -> Path:
    return BASE / f"host{k}" / "site" / "runs" / run / "state" / "consoles" / f"{domain}.log"


def ready(path: Path) -> bool:
    return path.is_file() and READY in path.read_text(errors="replace")


def wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what}: not within {timeout:g} s")


def where(environ: dict[str, str], name: str) -> dict[str, int]:
    [report] = json.loads(sd(environ, "status", name, "--json").stdout)
    return {vm["name"]: int(vm["uri"].split(".")[2]) for vm in report["vms"]}


def site(work: Path, run: str) -> dict[str, str]:
    table = "".join(f'h{k} = "{uri(k)}"\n' for k in (1, 2, 3))
    (work / "site.toml").write_text(
        f'image_dir = "{SITE / "images"}"\nstate_dir = "{SITE / "runs" / run / "state"}"\n'
        f'default_uri = "{uri(1)}"\n[hosts]\n{table}[properties]\n"sd.flavour" = "qemu"\n',
        encoding="utf-8",
    )
    return {"SD_BATCH_CONFIG": str(work / "site.toml")}


def bench_starts(work: Path, rounds: int) -> None:
    print("1. sd start -> every guest ready (pool of N minimal VMs, overlays on each host)")
    medians: dict[tuple[int, int], float] = {}
    for count in (2, 4, 8):
        for hosts in (1, 2, 3):
            times = []
            for r in range(rounds):
                run = f"{TAG}-s{count}-{hosts}-{r}"
                environ = site(work, run)
                file = work / f"{run}.sf"
                file.write_text(description(count, hosts), encoding="utf-8")
                began = time.monotonic()
                done = sd(environ, "start", "h1", run, str(file))
                if done.returncode:
                    raise SystemExit(f"sd start failed: {done.stderr}")
                placed = where(environ, run)
                wait(
                    lambda placed=placed, run=run: all(
                        ready(console(run, k, d)) for d, k in placed.items()
                    ),
                    BOOT_TIMEOUT,
                    f"pool {run} ready",
                )
                times.append(time.monotonic() - began)
                sd(environ, "terminate", "h1", run, "--grace", "0")
            medians[count, hosts] = statistics.median(times)
            print(
                f"   {count} VMs over {hosts} host{'s' * (hosts > 1)}: {spread(times)}  [{load()}]",
                flush=True,
            )
        one, three = medians[count, 1], medians[count, 3]
        print(f"   {count} VMs: 1 host / 3 hosts = {one / three:.2f}x", flush=True)


def bench_failover(work: Path, rounds: int) -> None:
    print(
        "2. failover: a host killed (libvirtd, virtlogd, QEMUs) under sd watch "
        "(sfLivenessDelay 2 x sfLivenessFactor 3 = 6 s)"
    )
    running, booted = [], []
    for r in range(rounds):
        up, ready_again = failover_round(work, r)
        running.append(up)
        booted.append(ready_again)
    print(f"   kill -> VMs running again: {spread(running)}")
    print(f"   kill -> guests ready again: {spread(booted)}")


def failover_round(work: Path, r: int) -> tuple[float, float]:
    """One kill under `sd watch`: (seconds to the moved VMs running, to their guests ready)."""
    run = f"{TAG}-f{r}"
    environ = site(work, run)
    file = work / f"{run}.sf"
    file.write_text(description(3, 3, "sfLivenessDelay 2; sfLivenessFactor 3;"))
    if sd(environ, "start", "h1", run, str(file)).returncode:
        raise SystemExit("sd start failed")
    placed = where(environ, run)
    wait(
        lambda: all(ready(console(run, k, d)) for d, k in placed.items()),
        BOOT_TIMEOUT,
        "pool ready",
    )
    victim = 1 + r % 3
    moving = [d for d, k in placed.items() if k == victim]
    survivors = [k for k in (1, 2, 3) if k != victim]
    watcher = subprocess.Popen(
        [sys.executable, "-c", SD, "watch", "h1", run],
        env={**os.environ, **environ},
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def moved_running() -> bool:
        up = set()
        for k in survivors:
            with Hypervisor.connect(uri(k), attempts=1) as hv:
                up |= {d.name for d in hv.list_domains() if d.state is DomainState.RUNNING}
        return set(moving) <= up

    try:
        time.sleep(3)
        killed = time.monotonic()
        test_hosts("kill", str(victim))
        wait(moved_running, BOOT_TIMEOUT, "moved VMs running")
        running = time.monotonic() - killed
        now = where(environ, run)
        wait(
            lambda: all(ready(console(run, now[d], d)) for d in moving),
            BOOT_TIMEOUT,
            "moved VMs ready",
        )
        booted = time.monotonic() - killed
        print(
            f"   round {r + 1}: host {victim} killed -> running on a survivor "
            f"{running:.2f} s, guest ready {booted:.2f} s  [{load()}]",
            flush=True,
        )
        test_hosts("revive", str(victim))
        time.sleep(6)  # the watcher removes the stale copy once the host answers
    finally:
        sd(environ, "terminate", "h1", run, "--grace", "0")
        watcher.wait(60)
    return running, booted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep-hosts", action="store_true", help="leave the test hosts up")
    parser.add_argument("--only", choices=("starts", "failover"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("benchmarks/hosts.py needs root (scripts/test-hosts)")
    began = time.monotonic()
    print(f"machine: {os.cpu_count()} CPUs; {load()} at the start")
    test_hosts("down")
    test_hosts("up", "3")
    work = BASE / "bench"
    try:
        (SITE / "images" / "minimal").mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)
        for name in ("vmlinux", "initrd.img"):
            shutil.copyfile(GUEST / name, SITE / "images" / "minimal" / name)
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(SITE / "images" / "base.qcow2"), "64M"],
            check=True,
        )
        for k in (1, 2, 3):
            push(SiteConfig(image_dir=SITE / "images"), uri(k), "base.qcow2")
        if args.only != "failover":
            bench_starts(work, args.rounds)
        if args.only != "starts":
            bench_failover(work, args.rounds)
    finally:
        if not args.keep_hosts:
            test_hosts("down")
    print(f"whole run: {time.monotonic() - began:.0f} s; {load()} at the end")


if __name__ == "__main__":
    main()
