"""planning: Schedulers in descriptions -> placement requests -> a plan with hosts (pure).

Descriptions are .sf text resolved by the real language; hosts are `HostState` values.
"""

from __future__ import annotations

import pytest

from sd_batch.config.site import BUILTIN_TEMPLATE_DIR
from sd_batch.errors import PolicyError, SpecError, UnresolvedReference
from sd_batch.lang import load_text
from sd_batch.placement.hosts import HostState
from sd_batch.placement.place import Policy
from sd_batch.placement.plan import schedule, schedulers
from sd_batch.placement.schedulers import SchedulerSpec
from sd_batch.placement.steps import Step, plan
from sd_batch.placement.strategies import Weights

GiB = 1024
SEED = """#include "minimal.sf"
simpleScheduler extends Scheduler { hosts [|"host1", "host2", "host3"|]; }
VMs2Dispatch extends Schedulee { scheduler LAZY ATTRIB simpleScheduler;
    - extends MinimalVM; - extends MinimalVM; }
sfConfig extends Compound { vms extends VMs2Dispatch; }
"""


def plan_text(text: str, pool: str = "lab") -> Step:
    description = load_text(text, "pool.sf", include_dirs=[BUILTIN_TEMPLATE_DIR])
    return plan(description, pool, "test:///home")


def hosts(*names: str, memory: int = 4 * GiB, vcpus: int = 4) -> list[HostState]:
    return [HostState(n, memory, vcpus, uri=f"test:///{n}") for n in names]


def on(step: Step) -> dict[str, str]:
    return {vm.domain: vm.uri for vm in step.vms()}


def test_the_seeds_schedulee_places_its_vms_on_its_schedulers_hosts() -> None:
    step = plan_text(SEED)
    [spec] = schedulers(step)
    assert spec.path == "simpleScheduler" and spec.strategy == "pack"
    assert spec.hosts == ("host1", "host2", "host3")
    assert on(step) == {"lab-vms-1": "test:///home", "lab-vms-2": "test:///home"}  # not yet
    placed = schedule(step, lambda s: hosts(*s.hosts)).require()
    assert set(on(placed.step).values()) <= {"test:///host1", "test:///host2", "test:///host3"}


def test_a_vm_without_a_scheduler_stays_on_the_given_host() -> None:
    step = plan_text(
        SEED.replace(
            "sfConfig extends Compound { vms extends VMs2Dispatch; }",
            "sfConfig extends Compound { vms extends VMs2Dispatch; other extends MinimalVM; }",
        )
    )
    placed = schedule(step, lambda s: hosts(*s.hosts)).step
    assert on(placed)["lab-other"] == "test:///home"
    assert next(vm for vm in placed.vms() if vm.domain == "lab-other").placement is None


def test_vm_placement_attributes_become_its_demand() -> None:
    step = plan_text(
        SEED.replace(
            "- extends MinimalVM; - extends MinimalVM;",
            'db extends MinimalVM { memory "1G"; vcpus 2; antiAffinity [| "a", "b" |];'
            ' softAntiAffinity "s"; affinity "g"; requiresTags [| "ssd" |];'
            ' disks extends DATA { d extends Disk { size "10G"; } } }',
        )
    )
    [vm] = step.vms()
    assert vm.placement is not None
    demand = vm.placement.demand
    assert (demand.name, demand.memory_mib, demand.vcpus, demand.disk_mib) == (
        "lab-vms-db",
        GiB,
        2,
        10 * GiB,
    )
    assert (
        demand.anti_affinity,
        demand.soft_anti_affinity,
        demand.affinity,
        demand.requires_tags,
    ) == (("a", "b"), ("s",), "g", frozenset({"ssd"}))


def test_a_virtual_cluster_keeps_head_and_workers_apart_softly_by_default() -> None:
    text = (
        '#include "minimal.sf"\ns extends Scheduler { hosts [| "a", "b" |]; }\n'
        "sfConfig extends VirtualCluster { scheduler LAZY ATTRIB s; APART\n"
        "  head extends MinimalVM; workers 3; worker extends LAZY MinimalVM; }"
    )
    soft = [
        vm.placement.demand for vm in plan_text(text.replace("APART", "")).vms() if vm.placement
    ]
    assert {d.soft_anti_affinity for d in soft} == {("cluster sfConfig",)}
    placed = schedule(plan_text(text.replace("APART", "")), lambda s: hosts("a", "b")).step
    assert sorted(on(placed).values()).count("test:///a") == 2  # 4 VMs, 2 hosts: 2 each
    hard = plan_text(text.replace("APART", 'apart "hard";'))
    assert {vm.placement.demand.anti_affinity for vm in hard.vms() if vm.placement} == {
        ("cluster sfConfig",)
    }
    with pytest.raises(Exception, match="no host can take 2 VMs"):
        schedule(hard, lambda s: hosts("a", "b")).require()
    none = plan_text(text.replace("APART", 'apart "no";'))
    assert {vm.placement.demand.soft_anti_affinity for vm in none.vms() if vm.placement} == {()}


def test_the_shipped_qa_testbed_is_placed_by_its_scheduler() -> None:
    text = (BUILTIN_TEMPLATE_DIR / "qa-testbed.sf").read_text()
    step = plan_text(text, pool="qa")
    [spec] = schedulers(step)
    assert (spec.path, spec.strategy, spec.hosts) == ("testbedScheduler", "spread", ("localhost",))
    assert [vm.domain for vm in step.vms()] == ["qa-head", "qa-worker1", "qa-worker2"]


def test_an_inner_scheduler_wins_and_scheduler_null_opts_out() -> None:
    step = plan_text(
        '#include "minimal.sf"\nouter extends Scheduler { hosts [| "o" |]; }\n'
        'inner extends Scheduler { hosts [| "i" |]; strategy "spread"; }\n'
        "sfConfig extends Compound { scheduler LAZY ATTRIB outer;\n"
        "  a extends MinimalVM;\n"
        "  g extends Compound { scheduler LAZY ATTRIB inner; b extends MinimalVM; }\n"
        "  n extends Compound { scheduler NULL; c extends MinimalVM; } }"
    )
    placed = schedule(step, lambda s: hosts(*s.hosts)).step
    assert on(placed) == {"lab-a": "test:///o", "lab-g-b": "test:///i", "lab-n-c": "test:///home"}


def test_schedulers_sharing_a_host_see_what_the_other_placed_there() -> None:
    step = plan_text(
        '#include "minimal.sf"\none extends Scheduler { hosts [| "h" |]; }\n'
        'two extends Scheduler { hosts [| "h", "spare" |]; strategy "first-fit"; }\n'
        "sfConfig extends Compound {\n"
        "  x extends Schedulee { scheduler LAZY ATTRIB one;\n"
        '    a extends MinimalVM { memory "3G"; } }\n'
        "  y extends Schedulee { scheduler LAZY ATTRIB two;\n"
        '    b extends MinimalVM { memory "3G"; } }\n'
        "}"
    )
    placed = schedule(step, lambda s: hosts(*s.hosts)).require()
    assert on(placed.step) == {"lab-x-a": "test:///h", "lab-y-b": "test:///spare"}


def test_a_lazy_reference_is_followed_with_smartfrog_lookup_rules() -> None:
    text = (
        '#include "minimal.sf"\n'
        "sfConfig extends Compound {\n"
        '  sched extends Scheduler { hosts [| "near" |]; }\n'
        "  g extends Schedulee { scheduler LAZY PARENT:sched; v extends MinimalVM; }\n"
        "  r extends Schedulee { scheduler LAZY ROOT:far; w extends MinimalVM; } }\n"
        'far extends Scheduler { hosts [| "far" |]; }\n'
    )
    placed = schedule(plan_text(text), lambda s: hosts(*s.hosts)).step
    assert on(placed) == {"lab-g-v": "test:///near", "lab-r-w": "test:///far"}


@pytest.mark.parametrize(
    ("body", "error", "message"),
    [
        (
            "scheduler LAZY ATTRIB simpleSchedular;",
            UnresolvedReference,
            "cannot resolve LAZY simpleSchedular: no attribute simpleSchedular here or above; "
            "did you mean simpleScheduler?",
        ),
        (
            'scheduler LAZY ATTRIB note; note "x";',
            SpecError,
            "sfConfig:scheduler: LAZY note is not a Scheduler; write scheduler LAZY ATTRIB s",
        ),
    ],
)
def test_a_scheduler_reference_that_leads_nowhere_useful_is_refused(
    body: str, error: type[Exception], message: str
) -> None:
    text = (
        '#include "minimal.sf"\nsimpleScheduler extends Scheduler { hosts [| "h" |]; }\n'
        f"sfConfig extends Schedulee {{ {body} v extends MinimalVM; }}"
    )
    with pytest.raises(error) as info:
        plan_text(text)
    assert str(info.value).split(": ", 1)[1].startswith(message)  # after file:line:col
    assert str(info.value).startswith("pool.sf:3:")


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        (
            'strategy "packed";',
            "simpleScheduler:strategy: unknown strategy 'packed'; did you "
            "mean pack? strategies: first-fit, pack, best-fit, spread, weighted",
        ),
        (
            "maxVMsPerHots 3;",
            "simpleScheduler:maxVMsPerHots: unknown Scheduler attribute "
            "maxVMsPerHots; did you mean maxVMsPerHost?",
        ),
        ("maxVMsPerHost 0;", "simpleScheduler:maxVMsPerHost: 0 is not a whole number >= 1"),
        ("cpuOvercommit -1;", "simpleScheduler:cpuOvercommit: -1 must be more than 0"),
        (
            "weights extends DATA { ram 1; }",
            "simpleScheduler:weights: unknown weigher ram; weighers: memory, vcpus, disk, vms",
        ),
        (
            'sfLivenessFactor "3";',
            "simpleScheduler:sfLivenessFactor: '3' is not a whole number >= 1",
        ),
    ],
)
def test_scheduler_mistakes_are_named_at_their_attribute(attrs: str, message: str) -> None:
    text = SEED.replace('hosts [|"host1", "host2", "host3"|];', f'hosts [| "h" |]; {attrs}')
    with pytest.raises(SpecError) as info:
        plan_text(text)
    assert str(info.value).split(":", 3)[-1].strip() == message
    assert info.value.loc is not None and info.value.loc.line == 2


def test_a_misspelt_vm_placement_attribute_is_refused_with_a_suggestion() -> None:
    text = SEED.replace(
        "- extends MinimalVM; - extends MinimalVM;", 'v extends MinimalVM { antiAfinity "w"; }'
    )
    with pytest.raises(
        SpecError, match="unknown placement attribute antiAfinity; did you mean antiAffinity"
    ):
        plan_text(text)


def test_the_scheduler_reads_its_policy_and_weights() -> None:
    text = SEED.replace(
        'hosts [|"host1", "host2", "host3"|];',
        'hosts [| "h" |]; strategy "weighted"; maxVMsPerHost 4; cpuOvercommit 2;'
        " seed 9; sfLivenessDelay 5; weights extends DATA { vms -1; }",
    )
    [spec] = schedulers(plan_text(text))
    assert spec == SchedulerSpec(
        "simpleScheduler", ("h",), "weighted", Weights(vms=-1.0), 9, 4, 2.0, None, None, 5.0, 3
    )


def test_a_scheduler_may_tighten_site_policy_but_not_loosen_it() -> None:
    site = Policy(cpu_overcommit=4.0, max_vms_per_host=10)
    spec = SchedulerSpec("s", ("h",), cpu_overcommit=2.0, max_vms_per_host=20)
    assert (spec.policy(site).cpu_overcommit, spec.policy(site).max_vms_per_host) == (2.0, 10)
    with pytest.raises(
        PolicyError,
        match=r"s:cpuOvercommit 8 is more than site policy allows "
        r"\(4\); ask for at most 4",
    ):
        SchedulerSpec("s", ("h",), cpu_overcommit=8.0).policy(site)


# --- site policy and inventories (the data placement runs on) ------------------------------
def test_the_site_config_placement_table_sets_policy_and_host_tags() -> None:
    from sd_batch.config.site import SiteConfig, parse_config

    table = {
        "memory_overcommit": 1.5,
        "reserved_memory_mib": 2048,
        "max_vms_per_host": 20,
        "tags": {"n1": ["ssd"]},
    }
    config = parse_config({"placement": table})
    assert config.placement == Policy(
        cpu_overcommit=4.0, memory_overcommit=1.5, reserved_memory_mib=2048, max_vms_per_host=20
    )
    assert config.host_tags == {"n1": frozenset({"ssd"})}
    assert SiteConfig().placement == Policy(cpu_overcommit=4.0)  # Nova's initial ratios


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            {"cpu_ratio": 2},
            "site.toml: unknown [placement] setting 'cpu_ratio'; known: "
            "cpu_overcommit, memory_overcommit, disk_overcommit, reserved_memory_mib, "
            "max_vms_per_host, tags",
        ),
        ({"cpu_overcommit": 0}, "site.toml: [placement] cpu_overcommit must be a number above 0"),
        (
            {"max_vms_per_host": 0},
            "site.toml: [placement] max_vms_per_host must be a whole number >= 1",
        ),
        ({"tags": {"n1": "ssd"}}, "site.toml: [placement.tags] maps host names to lists of tags"),
    ],
)
def test_placement_settings_that_make_no_sense_are_refused(
    table: dict[str, object], message: str
) -> None:
    from sd_batch.config.site import parse_config
    from sd_batch.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        parse_config({"placement": table}, origin="site.toml")
    assert str(info.value) == message


def test_an_inventory_counts_hosts_alike_and_reads_sizes() -> None:
    from sd_batch.hypervisor.inventory import parse_inventory, select

    hosts = parse_inventory(
        {
            "host": [
                {
                    "name": "r{n:02}",
                    "count": 3,
                    "uri": "qemu+ssh://r{n:02}/system",
                    "memory": "64G",
                    "vcpus": 16,
                    "disk": "1T",
                    "tags": ["ssd"],
                },
                {"name": "old", "memory": 8192, "vcpus": 4, "used_memory": "2G", "vms": 1},
            ]
        }
    )
    assert [(h.name, h.uri) for h in hosts] == [
        ("r01", "qemu+ssh://r01/system"),
        ("r02", "qemu+ssh://r02/system"),
        ("r03", "qemu+ssh://r03/system"),
        ("old", "old"),
    ]
    assert (hosts[0].memory_mib, hosts[0].disk_mib, hosts[0].tags) == (
        64 * GiB,
        1024 * GiB,
        frozenset({"ssd"}),
    )
    assert (hosts[3].used_memory_mib, hosts[3].vms, hosts[3].disk_mib) == (2 * GiB, 1, None)
    assert [h.name for h in select(["r0[13]", "qemu+ssh://r02/system", "r01"], hosts, "inv")] == [
        "r01",
        "r03",
        "r02",
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "inv.toml: no hosts; write one [[host]] table per host (or kind)"),
        (
            {"host": [{"name": "a", "vcpus": 2}]},
            'inv.toml: host entry 1: memory is missing; write memory = "64G"',
        ),
        (
            {"host": [{"name": "a", "memory": "1G", "vcpus": 2, "count": 2}]},
            "inv.toml: host entry 1: count needs {n} in the name, or every host has one name",
        ),
        (
            {"host": [{"name": "a", "memory": "1G", "vcpus": 2, "cpus": 2}]},
            "inv.toml: host entry 1: unknown key 'cpus'; keys: name, count, uri, memory, vcpus, "
            "disk, tags, used_memory, used_vcpus, used_disk, vms",
        ),
        (
            {"host": [{"name": "a", "memory": "1G", "vcpus": 2}] * 2},
            "inv.toml: two hosts are named 'a'; with count, put {n} in the name: name = "
            '"node-{n:03}"',
        ),
    ],
)
def test_inventory_mistakes_name_the_entry_and_the_key(
    data: dict[str, object], message: str
) -> None:
    from sd_batch.errors import ConfigError
    from sd_batch.hypervisor.inventory import parse_inventory

    with pytest.raises(ConfigError) as info:
        parse_inventory(data, "inv.toml")
    assert str(info.value) == message
