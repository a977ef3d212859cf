"""deploy.plan: a resolved sfConfig -> the lifecycle Step tree (pure: no hypervisor, no files).

Descriptions are written as .sf text and resolved by the real language, with the shipped
templates (`minimal.sf`) on the include path.
"""

from __future__ import annotations

import pytest

from sd_batch.config.site import BUILTIN_TEMPLATE_DIR
from sd_batch.errors import DescriptionError, SpecError
from sd_batch.lang import load_file, load_text
from sd_batch.placement.steps import Order, Step, plan

URI = "test:///default"


def plan_text(body: str, pool: str = "lab", *, uri: str = URI) -> Step:
    text = '#include "minimal.sf"\n' + body
    description = load_text(text, "pool.sf", include_dirs=[BUILTIN_TEMPLATE_DIR])
    return plan(description, pool, uri)


def names(step: Step) -> list[str]:
    return [vm.domain for vm in step.vms()]


def shape(step: Step) -> object:
    """The tree as nested tuples: a VM is its domain name, a group (order, children...)."""
    if step.vm is not None:
        return step.vm.domain
    return (step.order.value, *(shape(child) for child in step.children))


def test_a_compound_keeps_its_children_in_written_order() -> None:
    step = plan_text("sfConfig extends Compound { b extends MinimalVM; a extends MinimalVM; }")
    assert shape(step) == ("compound", "lab-b", "lab-a")


def test_sequence_and_parallel_keep_their_order_when_nested() -> None:
    step = plan_text(
        "sfConfig extends Sequence {\n"
        "  first extends MinimalVM;\n"
        "  both extends Parallel { x extends MinimalVM; y extends MinimalVM; }\n"
        "  last extends Compound { z extends MinimalVM; }\n"
        "}"
    )
    assert shape(step) == (
        "sequence",
        "lab-first",
        ("parallel", "lab-both-x", "lab-both-y"),
        ("compound", "lab-last-z"),
    )


def test_a_pool_is_its_named_vms_then_count_copies_of_its_template() -> None:
    step = plan_text(
        "sfConfig extends Pool {\n"
        "  count 3; template extends LAZY MinimalVM; vm1 extends MinimalVM;\n"
        "}",
        pool="web",
    )
    assert names(step) == ["web-vm1", "web-1", "web-2", "web-3"]
    assert step.order is Order.COMPOUND


def test_a_nested_pool_names_its_copies_after_where_it_stands() -> None:
    step = plan_text(
        "sfConfig extends Compound {\n"
        "  workers extends Pool { count 2; template extends LAZY MinimalVM; }\n"
        "}"
    )
    assert names(step) == ["lab-workers-1", "lab-workers-2"]


def test_each_counted_copy_is_its_own_vm_with_the_template_values() -> None:
    step = plan_text(
        "sfConfig extends Pool { count 2; template extends LAZY MinimalVM { memory 300; } }"
    )
    specs = [vm.spec for vm in step.vms()]
    assert [s.memory_mib for s in specs] == [300, 300]
    assert specs[0].name != specs[1].name


def test_a_pool_of_count_zero_with_named_vms_only_needs_no_template() -> None:
    assert names(plan_text("sfConfig extends Pool { a extends MinimalVM; }")) == ["lab-a"]


def test_a_virtual_cluster_starts_its_head_then_its_workers_in_parallel() -> None:
    step = plan_text(
        "sfConfig extends VirtualCluster {\n"
        "  head extends MinimalVM; workers 3; worker extends LAZY MinimalVM;\n"
        "}",
        pool="qa",
    )
    assert shape(step) == (
        "sequence",
        "qa-head",
        ("parallel", "qa-worker1", "qa-worker2", "qa-worker3"),
    )


def test_the_shipped_templates_plan_as_documented() -> None:
    pool = load_file(BUILTIN_TEMPLATE_DIR / "pool.sf", include_dirs=[BUILTIN_TEMPLATE_DIR])
    assert names(plan(pool, "lab", URI)) == ["lab-vm1", "lab-vm2"]
    testbed = load_file(BUILTIN_TEMPLATE_DIR / "qa-testbed.sf", include_dirs=[BUILTIN_TEMPLATE_DIR])
    step = plan(testbed, "qa", URI)
    assert names(step) == ["qa-head", "qa-worker1", "qa-worker2"]  # the scheduler is no VM
    assert next(step.vms()).spec.memory_mib == 384


def test_data_lazy_and_scheduler_children_are_not_deployed() -> None:
    step = plan_text(
        "sfConfig extends Compound {\n"
        "  settings extends DATA { vm extends MinimalVM; }\n"
        "  model extends LAZY MinimalVM;\n"
        '  placer extends Scheduler { hosts [| "localhost" |]; }\n'
        '  plain extends { note "no sfClass: not a component to deploy"; }\n'
        "  real extends MinimalVM;\n"
        "}"
    )
    assert shape(step) == ("compound", "lab-real")


def test_a_vm_keeps_an_explicit_name() -> None:
    step = plan_text('sfConfig extends Compound { a extends MinimalVM { name "db-1"; } }')
    assert names(step) == ["db-1"]


def test_a_single_vm_sfconfig_is_named_after_the_pool() -> None:
    step = plan_text("sfConfig extends MinimalVM;", pool="solo")
    assert (names(step), step.vm is not None) == (["solo"], True)


def test_every_vm_carries_the_host_uri_and_its_attribute_path() -> None:
    step = plan_text("sfConfig extends Pool { a extends MinimalVM; }", uri="test:///elsewhere")
    vm = next(step.vms())
    assert (vm.uri, vm.path) == ("test:///elsewhere", "sfConfig:a")


def test_two_vms_with_the_same_name_are_refused_with_where() -> None:
    with pytest.raises(SpecError, match="sfConfig:b: two VMs are both named 'same'") as info:
        plan_text(
            'sfConfig extends Compound { a extends MinimalVM { name "same"; }\n'
            '  b extends MinimalVM { name "same"; } }'
        )
    assert info.value.loc is not None and info.value.loc.line == 3


def test_a_named_template_copied_twice_is_a_duplicate() -> None:
    with pytest.raises(SpecError, match="two VMs are both named 'w'"):
        plan_text(
            'sfConfig extends Pool { count 2; template extends LAZY MinimalVM { name "w"; } }'
        )


def test_generated_names_that_collide_are_refused() -> None:
    with pytest.raises(SpecError, match="both named 'lab-a-b'"):
        plan_text(
            "sfConfig extends Compound { a extends Compound { b extends MinimalVM; }\n"
            '  c extends MinimalVM { name "lab-a-b"; } }'
        )


def test_a_description_without_sfconfig_has_nothing_to_start() -> None:
    library = load_text('#include "components.sf"\nSpare extends VM;', "lib.sf")
    with pytest.raises(DescriptionError, match="no sfConfig: nothing to start") as info:
        plan(library, "lab", URI)
    assert info.value.hint is not None and "sfConfig extends Pool" in info.value.hint


def test_an_sfconfig_without_any_vm_is_refused() -> None:
    with pytest.raises(DescriptionError, match=r"sfConfig \(pool.sf:2:\d+\) contains no VM"):
        plan_text("sfConfig extends Pool { settings extends DATA { a 1; } }")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("sfConfig extends Pool { count 2; }", "a Pool with count 2 needs a template"),
        (
            "sfConfig extends Pool { count -1; template extends LAZY MinimalVM; }",
            "count must be a whole number >= 0",
        ),
        (
            'sfConfig extends Pool { count "two"; template extends LAZY MinimalVM; }',
            "count must be a whole number >= 0",
        ),
        (
            "sfConfig extends VirtualCluster { head NULL; workers 0; worker NULL; }",
            "a VirtualCluster needs a head VM",
        ),
        (
            "sfConfig extends VirtualCluster { head extends MinimalVM; workers 2; worker NULL; }",
            "workers need a worker template",
        ),
    ],
)
def test_pool_and_cluster_shapes_that_cannot_be_planned(body: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        plan_text(body)


def test_a_bad_vm_value_is_reported_at_its_attribute() -> None:
    with pytest.raises(SpecError) as info:
        plan_text("sfConfig extends Pool { a extends MinimalVM { memory 1; } }")
    assert "sfConfig:a:memory" in str(info.value)


def test_planning_reads_no_files_beyond_the_description() -> None:
    """Kernel and images are checked when deploying (site folders), not when planning."""
    step = plan_text('sfConfig extends Pool { a extends MinimalVM { kernel "nowhere/vmlinux"; } }')
    assert names(step) == ["lab-a"]
