"""placement: strategies, constraints, refusals and their messages, and properties (hypothesis).

Pure: hosts and VMs are built in one line each (`host(...)`, `vm(...)`), no hypervisor.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sd_batch.errors import NoHostHasCapacity, SpecError
from sd_batch.placement.hosts import HostState
from sd_batch.placement.place import Demand, Placement, Policy, lower_bound, place
from sd_batch.placement.strategies import STRATEGIES, Weighted, Weights

GiB = 1024


def host(name: str, memory: int = 16 * GiB, vcpus: int = 8, **kw: object) -> HostState:
    return HostState(name, memory, vcpus, uri=f"test:///{name}", **kw)  # type: ignore[arg-type]


def vm(name: str, memory: int = GiB, vcpus: int = 1, **kw: object) -> Demand:
    return Demand(name, memory, vcpus, **kw)  # type: ignore[arg-type]


def where(plan: Placement) -> dict[str, str]:
    return dict(plan.assignment)


def per_host(plan: Placement) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, h in plan.assignment:
        out.setdefault(h, []).append(name)
    return out


# --- strategies ------------------------------------------------------------------------------
def test_first_fit_fills_the_hosts_in_the_order_they_are_listed() -> None:
    hosts = [host("a", 4 * GiB), host("b", 4 * GiB), host("c", 4 * GiB)]
    plan = place(hosts, [vm(f"v{i}", 2 * GiB) for i in range(5)], "first-fit")
    assert per_host(plan) == {"a": ["v0", "v1"], "b": ["v2", "v3"], "c": ["v4"]}


def test_first_fit_goes_back_to_an_earlier_host_that_still_has_room() -> None:
    demands = [vm("big", 3 * GiB), vm("huge", 4 * GiB), vm("small", GiB)]
    plan = place([host("a", 4 * GiB), host("b", 4 * GiB)], demands, "first-fit")
    assert where(plan) == {"big": "a", "huge": "b", "small": "a"}


def test_pack_uses_as_few_hosts_as_the_demand_needs() -> None:
    hosts = [host(f"h{i}", 8 * GiB, 8) for i in range(10)]
    demands = [vm(f"v{i}", (1 + i % 3) * GiB) for i in range(12)]  # 24 GiB: 3 hosts
    plan = place(hosts, demands, "pack")
    assert plan.complete and plan.hosts_used() == 3 == lower_bound(hosts, demands)


def test_pack_fills_hosts_already_in_use_before_empty_ones() -> None:
    hosts = [host("empty", 16 * GiB), host("busy", 16 * GiB, used_memory_mib=8 * GiB, vms=2)]
    assert where(place(hosts, [vm("v", 4 * GiB)], "pack")) == {"v": "busy"}


def test_pack_fills_every_resource_together_where_best_fit_strands_one() -> None:
    """Big memory-heavy VMs and many small disk-heavy ones: best-fit decreasing ends with
    hosts of small VMs only, full on disk with memory idle; pack mixes them."""
    hosts = [host(f"h{i}", 100 * GiB, 100, disk_mib=100 * GiB) for i in range(20)]
    demands = [vm(f"big{i}", 50 * GiB, disk_mib=5 * GiB) for i in range(10)]
    demands += [vm(f"small{i}", 5 * GiB, disk_mib=10 * GiB) for i in range(50)]
    assert lower_bound(hosts, demands) == 8  # memory: 750 GiB over 100 GiB hosts
    assert place(hosts, demands, "pack").hosts_used() == 8
    assert place(hosts, demands, "best-fit").hosts_used() > 8


def test_best_fit_puts_a_vm_on_the_fullest_host_with_room() -> None:
    hosts = [
        host("roomy", 16 * GiB),
        host("tight", 16 * GiB, used_memory_mib=13 * GiB),
        host("full", 16 * GiB, used_memory_mib=15 * GiB),
    ]
    assert where(place(hosts, [vm("v", 2 * GiB)], "best-fit")) == {"v": "tight"}


def test_spread_puts_each_vm_on_the_least_loaded_host() -> None:
    hosts = [host("a"), host("half-full", used_memory_mib=8 * GiB), host("c")]
    plan = place(hosts, [vm(f"v{i}", 2 * GiB) for i in range(6)], "spread")
    assert {h: len(v) for h, v in per_host(plan).items()} == {"a": 3, "c": 3}  # 3/8 < 1/2


def test_spread_measures_load_on_the_most_used_resource() -> None:
    cpu_busy = host("cpu-busy", used_vcpus=7)  # memory idle, CPUs nearly all taken
    assert where(
        place([cpu_busy, host("mem-half", used_memory_mib=8 * GiB)], [vm("v")], "spread")
    ) == {"v": "mem-half"}


def test_weighted_memory_weight_spreads_when_positive_and_stacks_when_negative() -> None:
    hosts = [host("empty"), host("half", used_memory_mib=8 * GiB)]
    assert where(place(hosts, [vm("v")], Weighted(Weights(memory=1, vcpus=0)))) == {"v": "empty"}
    assert where(place(hosts, [vm("v")], Weighted(Weights(memory=-1, vcpus=0)))) == {"v": "half"}


def test_weighted_normalises_each_weigher_before_summing() -> None:
    """Raw MiB would drown vCPUs; normalised, one host's lead on vCPUs outweighs the other's
    small lead on memory."""
    a = host("a", used_memory_mib=0, used_vcpus=7)  # most memory free, 1 vCPU free
    b = host("b", used_memory_mib=512, used_vcpus=0)  # a little less memory, 8 vCPUs free
    c = host("c", used_memory_mib=8 * GiB, used_vcpus=4)
    assert where(place([a, b, c], [vm("v")], Weighted(Weights(memory=1, vcpus=1)))) == {"v": "b"}


def test_weighted_vm_count_weigher_prefers_hosts_with_fewer_vms() -> None:
    hosts = [host("crowded", vms=9), host("quiet", vms=1, used_memory_mib=4 * GiB)]
    weights = Weights(memory=0, vcpus=0, vms=-1)
    assert where(place(hosts, [vm("v")], Weighted(weights))) == {"v": "quiet"}


def test_the_weighted_strategy_by_name_uses_novas_default_multipliers() -> None:
    assert where(place([host("a", used_memory_mib=GiB), host("b")], [vm("v")], "weighted")) == {
        "v": "b"
    }


# --- constraints -----------------------------------------------------------------------------
def test_anti_affinity_puts_each_vm_of_a_group_on_its_own_host() -> None:
    hosts = [host(n) for n in "abc"]
    demands = [vm(f"w{i}", anti_affinity=("workers",)) for i in range(3)] + [vm("x")]
    plan = place(hosts, demands, "pack")
    assert len({where(plan)[f"w{i}"] for i in range(3)}) == 3


def test_anti_affinity_counts_group_members_already_on_a_host() -> None:
    hosts = [host("a", groups=("db",)), host("b")]
    assert where(place(hosts, [vm("v", anti_affinity=("db",))], "pack")) == {"v": "b"}


def test_affinity_puts_a_group_on_one_host_and_joins_it_where_it_already_runs() -> None:
    hosts = [host("a"), host("b"), host("c", groups=("db",))]
    plan = place(hosts, [vm("d1", affinity="db"), vm("d2", affinity="db"), vm("x")], "spread")
    assert where(plan)["d1"] == where(plan)["d2"] == "c"


def test_required_tags_limit_a_vm_to_hosts_that_carry_them() -> None:
    hosts = [host("plain"), host("fast", tags=frozenset({"ssd", "10g"}))]
    assert where(place(hosts, [vm("v", requires_tags=frozenset({"ssd"}))], "pack")) == {"v": "fast"}


def test_max_vms_per_host_caps_every_host() -> None:
    plan = place(
        [host("a"), host("b", vms=1)],
        [vm(f"v{i}") for i in range(3)],
        "pack",
        Policy(max_vms_per_host=2),
    )
    assert sorted(len(v) for v in per_host(plan).values()) == [1, 2]


def test_overcommit_ratios_and_reserved_memory_change_what_a_host_can_take() -> None:
    one = [host("a", 8 * GiB, 2)]
    four_vcpu_vms = [vm(f"v{i}", 512) for i in range(8)]
    assert len(place(one, four_vcpu_vms, "pack").assignment) == 2
    assert len(place(one, four_vcpu_vms, "pack", Policy(cpu_overcommit=4)).assignment) == 8
    big = [vm("v", 10 * GiB)]
    assert place(one, big, "pack", Policy(memory_overcommit=1.5)).complete
    assert not place(
        one, big, "pack", Policy(memory_overcommit=1.5, reserved_memory_mib=4 * GiB)
    ).complete


def test_soft_anti_affinity_spreads_while_hosts_allow_then_doubles_up_evenly() -> None:
    plan = place(
        [host("a"), host("b")], [vm(f"w{i}", soft_anti_affinity=("c",)) for i in range(4)], "pack"
    )
    assert sorted(len(v) for v in per_host(plan).values()) == [2, 2]


def test_disk_counts_only_on_hosts_that_report_it() -> None:
    demands = [vm("v", disk_mib=200 * GiB)]
    assert not place([host("small-disk", disk_mib=100 * GiB)], demands, "pack").complete
    assert place([host("disk-not-counted")], demands, "pack").complete


# --- refusals --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("hosts", "demands", "policy", "tightest", "reason"),
    [
        (
            [host("a", 4 * GiB), host("b", 6 * GiB)],
            [vm("big", 8 * GiB)],
            Policy(),
            "memory",
            "big (8 GiB, 1 vCPU): memory is the tightest: it needs 8 GiB, the most free on any "
            "host is 6 GiB (b)",
        ),
        (
            [host("a", vcpus=2)],
            [vm("wide", vcpus=4)],
            Policy(),
            "vcpus",
            "wide (1 GiB, 4 vCPUs): vcpus is the tightest: it needs 4, the most free on any host "
            "is 2 (a)",
        ),
        (
            [host("a")],
            [vm("v", requires_tags=frozenset({"gpu", "ssd"}))],
            Policy(),
            "tags",
            "v (1 GiB, 1 vCPU): no host has all the tags it requires (gpu, ssd)",
        ),
        (
            [host("a"), host("b")],
            [vm(f"w{i}", anti_affinity=("workers",)) for i in range(3)],
            Policy(),
            "anti-affinity",
            "w2 (1 GiB, 1 vCPU): every host with room already runs a VM of anti-affinity group "
            "workers",
        ),
        (
            [host("a", vms=2)],
            [vm("v")],
            Policy(max_vms_per_host=2),
            "VM slots",
            "v (1 GiB, 1 vCPU): every host already has as many VMs as allowed (2 per host: "
            "maxVMsPerHost, or the site's max_vms_per_host)",
        ),
        (
            [host("a", 4 * GiB), host("b", 4 * GiB)],
            [vm("d1", 3 * GiB, affinity="db"), vm("d2", 3 * GiB, affinity="db")],
            Policy(),
            "memory",
            "affinity group db (d1, d2: 6 GiB, 2 vCPUs together): memory is the "
            "tightest: it needs 6 GiB, the most free on any host is 4 GiB (a)",
        ),
        (
            [host("a")],
            [
                vm("d1", affinity="db", anti_affinity=("x",)),
                vm("d2", affinity="db", anti_affinity=("x",)),
            ],
            Policy(),
            "affinity",
            "affinity group db must share one host, but anti-affinity group x forbids two of its "
            "VMs on one host",
        ),
        ([], [vm("v")], Policy(), "hosts", "v (1 GiB, 1 vCPU): the scheduler has no hosts"),
    ],
)
def test_what_fits_nowhere_is_named_with_its_tightest_resource_or_rule(
    hosts: list[HostState], demands: list[Demand], policy: Policy, tightest: str, reason: str
) -> None:
    plan = place(hosts, demands, "pack", policy)
    [unplaced] = plan.unplaced
    assert (unplaced.tightest, unplaced.reason) == (tightest, reason)


def test_require_raises_one_error_naming_every_vm_that_fits_nowhere() -> None:
    plan = place(
        [host("a", 4 * GiB)], [vm("ok", 2 * GiB), vm("x", 8 * GiB), vm("y", 6 * GiB)], "first-fit"
    )
    with pytest.raises(NoHostHasCapacity) as info:
        plan.require()
    assert info.value.vms == ("x", "y") and info.value.tightest == "memory"
    assert str(info.value).startswith("no host can take 2 VMs (x, y); tightest: memory: x (8 GiB")
    assert str(info.value).endswith(
        "; nothing was started; `sd plan` shows what each host has left"
    )
    assert where(plan) == {"ok": "a"}  # what fits is still placed, for sd plan to show


def test_an_unknown_strategy_lists_the_known_ones() -> None:
    with pytest.raises(SpecError, match="unknown placement strategy 'packed'.*pack, best-fit"):
        place([host("a")], [vm("v")], "packed")


def test_what_each_host_has_left_is_reported_after_overcommit() -> None:
    plan = place(
        [host("a", 8 * GiB, 2, disk_mib=100 * GiB)],
        [vm("v", GiB, 2, disk_mib=GiB)],
        "pack",
        Policy(cpu_overcommit=2.0),
    )
    [left] = plan.hosts
    assert (left.memory_mib, left.vcpus, left.disk_mib, left.placed) == (7 * GiB, 2, 99 * GiB, 1)
    assert (left.capacity_vcpus, left.capacity_memory_mib) == (4, 8 * GiB)


def test_the_lower_bound_is_the_largest_ceiling_over_resources() -> None:
    hosts = [host(f"h{i}", 10 * GiB, 4) for i in range(5)]
    assert lower_bound(hosts, [vm(f"v{i}", GiB, 1) for i in range(9)]) == 3  # vCPUs: 9 / 4


# --- determinism -----------------------------------------------------------------------------
def test_ties_are_broken_by_a_seeded_hash_the_same_in_every_run() -> None:
    hosts = [host(f"h{i}") for i in range(20)]
    first = [where(place(hosts, [vm("v")], "spread", seed=s))["v"] for s in range(8)]
    assert first == [where(place(hosts, [vm("v")], "spread", seed=s))["v"] for s in range(8)]
    assert len(set(first)) > 1  # the seed, not the list order, breaks the tie


# --- properties ------------------------------------------------------------------------------
GROUPS = st.sampled_from(["g1", "g2", "g3"])
AFFINITY = st.sampled_from(["db", "web"])  # own names: a group name means one group
TAGS = st.frozensets(st.sampled_from(["ssd", "gpu"]), max_size=2)


@st.composite
def situations(draw: st.DrawFn) -> tuple[list[HostState], list[Demand], Policy, str, int]:
    hosts = [
        HostState(
            f"h{i}",
            draw(st.integers(0, 64)) * 256,
            draw(st.integers(0, 16)),
            draw(st.one_of(st.none(), st.integers(0, 100 * GiB))),
            tags=draw(TAGS),
            used_memory_mib=draw(st.integers(0, 4 * GiB)),
            used_vcpus=draw(st.integers(0, 4)),
            vms=draw(st.integers(0, 3)),
            groups=tuple(draw(st.lists(GROUPS | AFFINITY, max_size=2))),
        )
        for i in range(draw(st.integers(0, 8)))
    ]
    demands = []
    for i in range(draw(st.integers(0, 25))):
        demands.append(
            Demand(
                f"v{i}",
                draw(st.integers(1, 32)) * 256,
                draw(st.integers(1, 8)),
                draw(st.integers(0, 20 * GiB)),
                requires_tags=draw(TAGS),
                affinity=draw(st.one_of(st.none(), AFFINITY)),
                anti_affinity=tuple(draw(st.lists(GROUPS, max_size=1, unique=True))),
                soft_anti_affinity=tuple(draw(st.lists(GROUPS, max_size=1))),
            )
        )
    policy = Policy(
        cpu_overcommit=draw(st.sampled_from([1.0, 2.0, 4.0])),
        memory_overcommit=draw(st.sampled_from([1.0, 1.5])),
        reserved_memory_mib=draw(st.sampled_from([0, 512])),
        max_vms_per_host=draw(st.one_of(st.none(), st.integers(1, 6))),
    )
    return hosts, demands, policy, draw(st.sampled_from(sorted(STRATEGIES))), draw(st.integers())


@settings(max_examples=150, deadline=None)
@given(situations())
def test_no_host_goes_over_capacity_and_every_constraint_holds(
    case: tuple[list[HostState], list[Demand], Policy, str, int],
) -> None:
    hosts, demands, policy, strategy, seed = case
    plan = place(hosts, demands, strategy, policy, seed=seed)
    on = where(plan)
    unplaced = [n for u in plan.unplaced for n in u.names]
    assert sorted([*on, *unplaced]) == sorted(d.name for d in demands)  # each VM once
    by_name = {h.name: h for h in hosts}
    for h in hosts:
        mine = [d for d in demands if on.get(d.name) == h.name]
        memory = int(h.memory_mib * policy.memory_overcommit) - policy.reserved_memory_mib
        if mine:  # only what we add must fit: a host may already be over (policy changed)
            assert h.used_memory_mib + sum(d.memory_mib for d in mine) <= memory
            assert h.used_vcpus + sum(d.vcpus for d in mine) <= int(h.vcpus * policy.cpu_overcommit)
            if h.disk_mib is not None:
                assert h.used_disk_mib + sum(d.disk_mib for d in mine) <= h.disk_mib
            if policy.max_vms_per_host is not None:
                assert h.vms + len(mine) <= policy.max_vms_per_host
        for d in mine:
            assert d.requires_tags <= h.tags
            for g in d.anti_affinity:
                members = [x for x in mine if g in x.anti_affinity]
                assert len(members) == 1 and g not in h.groups
    for d in demands:
        if d.affinity is not None and d.name in on:
            together = {on[x.name] for x in demands if x.affinity == d.affinity}
            assert together == {on[d.name]}
            elsewhere = [h for h in hosts if d.affinity in h.groups]
            assert not elsewhere or by_name[on[d.name]] in elsewhere


@settings(max_examples=60, deadline=None)
@given(situations())
def test_the_same_input_gives_the_same_plan(
    case: tuple[list[HostState], list[Demand], Policy, str, int],
) -> None:
    hosts, demands, policy, strategy, seed = case
    first = place(hosts, demands, strategy, policy, seed=seed)
    copies = [dataclasses.replace(h) for h in hosts], [dataclasses.replace(d) for d in demands]
    assert place(*copies, strategy, policy, seed=seed) == first
