"""Benchmark of placement: 10,000 VMs over 1,000 hosts, every strategy, three standard mixes.

Run as `.venv/bin/python benchmarks/placement.py` (under a minute; never inside the tests).

Hosts: 1,000 alike (64 CPUs, 256 GiB, 2 TiB disk) under a site policy of cpu_overcommit 4.0
(memory and disk not overcommitted). Mixes, drawn from a fixed seed:
- uniform-small: 1-4 vCPUs, 1-8 GiB in 512 MiB steps, 10-40 GiB disk
- bimodal: 80% small (1 vCPU, 2 GiB, 20 GiB), 20% large (8 vCPUs, 64 GiB, 200 GiB)
- heavy-tailed: memory Pareto (alpha 1.2) from 1 GiB, capped at 128 GiB; vCPUs memory/4 GiB
For each (mix, strategy): placements per second (the best of --rounds runs of `place`), the
hosts used, and the bin-packing lower bound: max over resources of ceil(total need / a host's
capacity). Targets: pack >= 20,000 placements/s and <= 1.05 x the lower bound on every mix.
Every plan is checked: no host over capacity, every VM placed.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sd_batch.placement.hosts import HostState  # noqa: E402
from sd_batch.placement.place import Demand, Placement, Policy, lower_bound, place  # noqa: E402
from sd_batch.placement.strategies import STRATEGIES  # noqa: E402

GiB = 1024  # in MiB
POLICY = Policy(cpu_overcommit=4.0)
TARGET_RATE = 20_000
TARGET_RATIO = 1.05


def hosts(count: int) -> list[HostState]:
    return [HostState(f"h{i:04d}", 256 * GiB, 64, 2048 * GiB) for i in range(count)]


def uniform_small(rng: random.Random, count: int) -> list[Demand]:
    return [
        Demand(f"vm{i}", rng.randint(2, 16) * 512, rng.randint(1, 4), rng.randint(10, 40) * GiB)
        for i in range(count)
    ]


def bimodal(rng: random.Random, count: int) -> list[Demand]:
    return [
        Demand(f"vm{i}", 2 * GiB, 1, 20 * GiB)
        if rng.random() < 0.8
        else Demand(f"vm{i}", 64 * GiB, 8, 200 * GiB)
        for i in range(count)
    ]


def heavy_tailed(rng: random.Random, count: int) -> list[Demand]:
    demands = []
    for i in range(count):
        memory = min(int(GiB * rng.paretovariate(1.2)) // 256 * 256, 128 * GiB)
        demands.append(Demand(f"vm{i}", memory, max(1, memory // (4 * GiB)), 20 * GiB))
    return demands


MIXES = {"uniform-small": uniform_small, "bimodal": bimodal, "heavy-tailed": heavy_tailed}


def check(plan: Placement, demands: list[Demand]) -> None:
    assert plan.complete, plan.unplaced[:3]
    assert len(plan.assignment) == len(demands)
    for host in plan.hosts:
        assert host.memory_mib >= 0 and host.vcpus >= 0, host
        assert host.disk_mib is None or host.disk_mib >= 0, host


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=10_000)
    parser.add_argument("--hosts", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=3, help="runs per case; the best counts")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    started = time.perf_counter()
    pool = hosts(args.hosts)
    failures = []
    print(
        f"{args.vms} VMs over {args.hosts} hosts (64 CPUs, 256 GiB, 2 TiB each; "
        f"cpu_overcommit {POLICY.cpu_overcommit})"
    )
    for mix, make in MIXES.items():
        demands = make(random.Random(args.seed), args.vms)
        bound = lower_bound(pool, demands, POLICY)
        print(f"\n{mix}: lower bound {bound} hosts")
        for name in STRATEGIES:
            best = float("inf")
            rounds = args.rounds if name != "weighted" else 1  # O(hosts) per VM, as Nova's
            for _ in range(rounds):
                began = time.perf_counter()
                plan = place(pool, demands, name, POLICY, seed=args.seed)
                best = min(best, time.perf_counter() - began)
            check(plan, demands)
            used = plan.hosts_used()
            rate = args.vms / best
            print(
                f"  {name:<10} {rate:>9,.0f} placements/s   {used:>4} hosts used "
                f"({used / bound:.3f} x lower bound)"
            )
            if name == "pack" and (rate < TARGET_RATE or used > TARGET_RATIO * bound):
                failures.append(f"pack on {mix}: {rate:,.0f}/s, {used / bound:.3f} x bound")
    elapsed = time.perf_counter() - started
    print(f"\nwhole run: {elapsed:.1f} s")
    if failures:
        print("MISSED TARGETS: " + "; ".join(failures))
        return 1
    print(
        f"targets met: pack >= {TARGET_RATE:,} placements/s and <= {TARGET_RATIO} x the "
        "lower bound on every mix"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
