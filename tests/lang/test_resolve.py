"""Resolution in SmartFrog's order: includes, type (extends), place (a:b), function, link."""

from __future__ import annotations

from pathlib import Path

import pytest

from sd_batch.errors import IncludeError, UnresolvedReference
from sd_batch.lang import Component, Long, Reference, RefPart, load_file, load_text

SEED = "\n".join(
    [
        '#include "components.sf"',
        'simpleScheduler extends Scheduler { hosts [|"host1", "host2", "host3"|]; }',
        "VMs2Dispatch extends Schedulee { scheduler LAZY ATTRIB simpleScheduler; "
        "- extends VM { memory 256; } }",
        "sfConfig extends Compound { sched extends simpleScheduler; vms extends VMs2Dispatch; }",
    ]
)


def resolve(text: str, **kw) -> Component:
    description = load_text(text, "t.sf", **kw)
    assert description.sfconfig is not None
    return description.sfconfig


def data(component: Component) -> dict[str, object]:
    """A component as plain nested dicts, for whole-tree comparisons."""
    return {k: data(v) if isinstance(v, Component) else v for k, v in component.items()}


# -- the seed's example ----------------------------------------------------------------------------
def test_the_seed_example_resolves_with_our_component_library():
    sfconfig = resolve(SEED)
    assert list(sfconfig) == ["sfCodeBase", "sfClass", "sfSyncTerminate", "sched", "vms"]
    assert sfconfig["sched"]["hosts"] == ["host1", "host2", "host3"]
    assert sfconfig["sched"]["sfClass"] == "sd_batch.Scheduler"
    vms = sfconfig["vms"]
    assert vms["scheduler"] == Reference((RefPart("ATTRIB", "simpleScheduler"),), lazy=True)
    (vm_name,) = [name for name in vms if name.startswith("--")]
    vm = vms[vm_name]
    assert (vm["sfClass"], vm["memory"], vm["vcpus"], vm["sfCodeBase"]) == (
        "sd_batch.VM",
        256,
        1,
        "default",
    )


# -- type resolution -------------------------------------------------------------------------------
def test_extends_copies_the_prototype_then_applies_local_attributes_in_order():
    sfconfig = resolve("P extends { a 1; b 2; } sfConfig extends P { c 3; a 10; }")
    assert list(sfconfig.items()) == [("a", 10), ("b", 2), ("c", 3)]


def test_a_prototypes_own_extends_is_applied_first():
    sfconfig = resolve("A extends { a 1; } B extends A { b 2; } sfConfig extends B { a 3; }")
    assert list(sfconfig.items()) == [("a", 3), ("b", 2)]


def test_several_prototypes_later_replaces_earlier_keeping_the_first_position():
    text = "A extends { a 1; s 1; } B extends { b 2; s 2; } sfConfig extends A, B { a 10; d 4; }"
    assert list(resolve(text).items()) == [("a", 10), ("s", 2), ("b", 2), ("d", 4)]


def test_a_redefined_nested_component_is_replaced_whole_never_merged():
    text = """A extends { n extends { x 1; y 2; } }
              B extends { n extends { z 3; } }
              sfConfig extends { ab extends A, B; o extends A { n extends { y 20; } } }"""
    sfconfig = resolve(text)
    assert data(sfconfig["ab"]) == {"n": {"z": 3}}
    assert data(sfconfig["o"]) == {"n": {"y": 20}}


def test_inline_bodies_and_null_mix_with_named_prototypes():
    text = "A extends { a 1; } sfConfig extends { c extends NULL, A, { b 2; }, NULL { a 3; } }"
    assert data(resolve(text)["c"]) == {"a": 3, "b": 2}


def test_extends_null_is_the_empty_prototype():
    assert data(resolve("sfConfig extends { n extends NULL; m extends NULL { x 1; } }")) == {
        "n": {},
        "m": {"x": 1},
    }


def test_extends_lazy_and_extends_data_mark_the_component_and_still_copy_the_prototype():
    sfconfig = resolve(
        "P extends { a 1; } sfConfig extends { l extends LAZY P; d extends DATA { x 1; } }"
    )
    assert sfconfig["l"].is_lazy and data(sfconfig["l"]) == {"a": 1}
    assert sfconfig["d"].is_data and data(sfconfig["d"]) == {"x": 1}


def test_each_extender_gets_its_own_copy():
    sfconfig = resolve(
        "P extends { n extends { x 1; } } sfConfig extends { a extends P; b extends P; }"
    )
    assert sfconfig["a"]["n"] is not sfconfig["b"]["n"]
    assert sfconfig["b"]["n"].path == "sfConfig:b:n"


def test_prototype_references_are_resolved_where_the_extender_stands():
    text = "x 1; P extends { v ATTRIB x; } sfConfig extends { x 2; c extends P; }"
    assert resolve(text)["c"]["v"] == 2


def test_a_prototype_may_be_named_by_a_path():
    text = "lib extends { P extends { a 1; } } sfConfig extends { c extends lib:P; }"
    assert data(resolve(text)["c"]) == {"a": 1}


# -- place resolution ------------------------------------------------------------------------------
def test_a_path_named_attribute_overrides_inside_a_nested_component():
    text = "P extends { n extends { x 1; y 2; } } sfConfig extends P { n:y 20; n:z 3; }"
    assert data(resolve(text)) == {"n": {"x": 1, "y": 20, "z": 3}}


def test_placement_runs_after_type_resolution_and_in_repeated_passes():
    text = "sfConfig extends { a:b:c 1; a:b extends { }; a extends { }; }"
    assert data(resolve(text)) == {"a": {"b": {"c": 1}}}


def test_a_value_placed_into_a_prototype_from_outside_is_not_inherited():
    # SmartFrog: `A:n:y 2` moves into A only after B has copied A (type before place).
    text = """A extends { n extends { x 1; } }
              A:n:y 2;
              B extends A;
              sfConfig extends { b extends B; a extends A; }"""
    description = load_text(text)
    assert data(description.root["A"]) == {"n": {"x": 1, "y": 2}}
    assert description.sfconfig is not None
    assert data(description.sfconfig) == {"b": {"n": {"x": 1}}, "a": {"n": {"x": 1}}}


def test_a_path_named_attribute_inside_a_prototype_is_inherited_and_placed_in_each_copy():
    text = """A extends { n extends { x 1; } n:y 2; }
              sfConfig extends {
                a extends A; b extends A { n:y 3; }; c extends A { n extends { w 0; } }
              }"""
    assert data(resolve(text)) == {
        "a": {"n": {"x": 1, "y": 2}},
        "b": {"n": {"x": 1, "y": 3}},
        "c": {"n": {"w": 0, "y": 2}},
    }


# -- references ------------------------------------------------------------------------------------
def test_attrib_searches_up_the_enclosing_components():
    text = "top 1; sfConfig extends { mid 2; c extends { a ATTRIB top; b ATTRIB mid; d mid; } }"
    assert data(resolve(text)["c"]) == {"a": 1, "b": 2, "d": 2}


def test_later_parts_of_a_path_look_only_inside_the_previous_component():
    sfconfig = resolve("sfConfig extends { n extends { m extends { v 1; } } r n:m:v; s HERE n:m; }")
    assert sfconfig["r"] == 1 and data(sfconfig["s"]) == {"v": 1}
    with pytest.raises(UnresolvedReference) as info:
        resolve("sfConfig extends { x 1; n extends { } r n:x; }")
    assert info.value.message == "unknown reference n:x: no attribute x in sfConfig:n"


def test_parent_root_this_and_here():
    text = """g 9;
              sfConfig extends {
                x 1; c extends { x 2; p PARENT:x; r ROOT:g; t THIS:x; h HERE x; }
              }"""
    assert data(resolve(text)["c"]) == {"x": 2, "p": 1, "r": 9, "t": 2, "h": 2}


def test_parent_attrib_walks_to_the_top_level_as_in_smartfrogs_prim():
    text = 'sfCodeBase "default"; Prim extends NULL { sfCodeBase PARENT:ATTRIB sfCodeBase; }\n'
    text += "sfConfig extends Prim { c extends Prim; }"
    sfconfig = resolve(text)
    assert sfconfig["sfCodeBase"] == "default" and sfconfig["c"]["sfCodeBase"] == "default"


def test_references_resolve_in_any_order_and_chain():
    assert data(resolve("sfConfig extends { a ATTRIB b; b ATTRIB c; c 3; }")) == {
        "a": 3,
        "b": 3,
        "c": 3,
    }


def test_property_iproperty_and_optional_defaults():
    text = """sfConfig extends {
                p PROPERTY sd.flavour; i IPROPERTY n; o OPTIONAL(5) PROPERTY nope; z OPTIONAL nope;
              }"""
    sfconfig = resolve(text, properties={"sd.flavour": "qemu", "n": "12"})
    assert data(sfconfig) == {"p": "qemu", "i": 12, "o": 5, "z": None}


def test_envproperty_reads_only_the_injected_environment():
    text = 'sfConfig extends { h ENVPROPERTY HOME; d OPTIONAL("none") ENVPROPERTY NOT_SET; }'
    assert data(resolve(text, environ={"HOME": "/home/u"})) == {"h": "/home/u", "d": "none"}


def test_optional_falls_back_only_when_the_reference_is_missing():
    assert resolve("sfConfig extends { a OPTIONAL(1) b; b 2; }")["a"] == 2


def test_lazy_references_stay_references_and_what_depends_on_them_stays_too():
    text = "base 1; sfConfig extends { a LAZY PARENT:base; b (a + 1); c [a, 2]; d ATTRIB b; "
    text += "e 5; f e; }"
    sfconfig = resolve(text)
    assert sfconfig["a"] == Reference((RefPart("PARENT"), RefPart("HERE", "base")), lazy=True)
    assert str(sfconfig["b"].operands[0]) == "a" and str(sfconfig["c"].items[0]) == "a"
    assert str(sfconfig["d"]) == "b"  # a reference to a deferred value stays a reference
    assert (sfconfig["e"], sfconfig["f"]) == (5, 5)


def test_lazy_this_and_lazy_host_stay_references():
    sfconfig = resolve("sfConfig extends { me LAZY THIS; h LAZY HOST node1:sfConfig; }")
    assert str(sfconfig["me"]) == "LAZY THIS" and str(sfconfig["h"]) == "LAZY HOST node1:sfConfig"


def test_data_references_are_values_never_followed():
    sfconfig = resolve("sfConfig extends { d DATA no:such:place; }")
    assert sfconfig["d"].data and str(sfconfig["d"]) == "DATA no:such:place"


def test_a_link_to_a_component_is_an_evaluated_copy_not_an_alias():
    sfconfig = resolve("sfConfig extends { c extends { k 1; v ATTRIB k; } e ATTRIB c; }")
    assert data(sfconfig["e"]) == {"k": 1, "v": 1}
    assert sfconfig["e"] is not sfconfig["c"] and sfconfig["c"].path == "sfConfig:c"


def test_a_link_to_a_prototype_outside_sfconfig_is_resolved_where_the_prototype_stands():
    text = "g 7; P extends { a 1; b ATTRIB a; c PARENT:g; } sfConfig extends { x ATTRIB P; }"
    assert data(resolve(text)["x"]) == {"a": 1, "b": 1, "c": 7}


# -- functions -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("(1 + 2 + 3)", 6),
        ("(2 * 3 * 4)", 24),
        ("(5 - 7)", -2),
        ("(7 / 2)", 3),
        ("(-7 / 2)", -3),  # Java integer division truncates toward zero
        ("(7.0 / 2)", 3.5),
        ("(1.5 + 1)", 2.5),
        ('("a" ++ 1 ++ true ++ NULL)', "a1trueNULL"),
        ("([|1|] <> [|2, 3|] <> [||])", [1, 2, 3]),
        ("(true && false)", False),
        ("(false || true || false)", True),
        ("(! true)", False),
        ("(1 == 1)", True),
        ('("a" == "b")', False),
        ("(1 != 2)", True),
        ("(1 < 2)", True),
        ("(2 > 1)", True),
        ("(1 <= 1)", True),
        ("(1 >= 2)", False),
        ('("abc" < "abd")', True),
        ("(1 + (2 * 3))", 7),
        ("IF (1 < 2) THEN (10 + 1) ELSE 0 FI", 11),
        ("IF false THEN 1 ELSE IF true THEN 2 ELSE 3 FI FI", 2),
    ],
)
def test_operators(expr: str, value):
    result = resolve(f"sfConfig extends {{ v {expr}; }}")["v"]
    assert result == value and type(result) is type(value)


def test_a_long_operand_makes_a_long_result():
    assert isinstance(resolve("sfConfig extends { v (1L + 2); }")["v"], Long)


def test_operators_read_references():
    assert resolve("sfConfig extends { base 8080; port (base + 1); }")["port"] == 8081


# -- TBD -------------------------------------------------------------------------------------------
def test_prototypes_outside_sfconfig_may_keep_tbds():
    assert data(resolve("P extends { x TBD; } sfConfig extends { a 1; }")) == {"a": 1}


def test_allow_tbd_lists_what_is_left_with_locations():
    description = load_text(
        "sfConfig extends { a TBD; n extends { b TBD; } }", "t.sf", complete=False
    )
    assert [(path, str(loc)) for path, loc in description.tbds] == [
        ("sfConfig:a", "t.sf:1:20"),
        ("sfConfig:n:b", "t.sf:1:39"),
    ]


def test_an_overridden_tbd_is_fine():
    assert resolve("P extends { x TBD; } sfConfig extends P { x 1; }")["x"] == 1


def test_a_broken_prototype_that_sfconfig_does_not_use_is_only_a_warning():
    description = load_text("Bad extends Missing; sfConfig extends { a 1; }", "t.sf")
    assert [w.headline() for w in description.warnings] == [
        "t.sf:1:13: unknown reference ATTRIB Missing"
    ]


# -- includes --------------------------------------------------------------------------------------
def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_includes_are_found_beside_the_including_file_then_on_the_search_path(tmp_path: Path):
    write(tmp_path / "lib", "org/x/protos.sf", '#include "more.sf"\nP extends { a 1; }\n')
    write(tmp_path / "lib", "org/x/more.sf", "Q extends { b 2; }\n")
    main = write(
        tmp_path / "job", "main.sf", '#include "/org/x/protos.sf"\nsfConfig extends P, Q;\n'
    )
    description = load_file(main, include_dirs=[tmp_path / "lib"])
    assert description.sfconfig is not None
    assert data(description.sfconfig) == {"a": 1, "b": 2}
    assert description.files[1:] == (
        str(tmp_path / "lib/org/x/protos.sf"),
        str(tmp_path / "lib/org/x/more.sf"),
    )


def test_an_included_file_is_read_once_even_when_included_twice(tmp_path: Path):
    write(tmp_path, "d.sf", "D extends { d 1; }\n")
    write(tmp_path, "b.sf", '#include "d.sf"\n')
    main = write(tmp_path, "a.sf", '#include "b.sf"\n#include "d.sf"\nsfConfig extends D;\n')
    assert load_file(main).files == (str(main), str(tmp_path / "b.sf"), str(tmp_path / "d.sf"))


def test_a_missing_optional_include_is_no_error():
    assert data(resolve('#include? "not/there.sf"\nsfConfig extends { a 1; }')) == {"a": 1}


def test_a_leading_slash_searches_the_search_path_never_the_host_root(tmp_path: Path):
    assert Path("/etc/passwd").exists()
    main = write(tmp_path, "main.sf", '#include "/etc/passwd"\nsfConfig extends { }\n')
    with pytest.raises(IncludeError) as info:
        load_file(main)
    assert info.value.message == 'cannot find include "/etc/passwd"'
    write(tmp_path / "lib", "etc/passwd", "fromLib 1;\n")  # the same name under a search folder
    assert load_file(main, include_dirs=[tmp_path / "lib"]).root["fromLib"] == 1


def test_loading_leaves_the_cycle_collector_as_it_found_it():
    import gc

    load_text("sfConfig extends { a 1; }")
    assert gc.isenabled()
    with pytest.raises(UnresolvedReference):
        load_text("sfConfig extends { a b; }")
    assert gc.isenabled()
    gc.disable()
    try:
        load_text("sfConfig extends { a 1; }")
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_an_include_may_not_climb_out_of_its_folder(tmp_path: Path):
    write(tmp_path, "secret.sf", "secret 1;\n")
    main = write(tmp_path / "job", "main.sf", '#include "../secret.sf"\nsfConfig extends { }\n')
    with pytest.raises(IncludeError):
        load_file(main)


def test_threads_loading_at_once_leave_the_cycle_collector_on():
    # Checking and turning the collector off were two steps: a thread could turn it off just
    # after another turned it back on, and leave it off for good (seen once in a CI run).
    import gc
    import sys
    from concurrent.futures import ThreadPoolExecutor

    assert gc.isenabled()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns as often as they can: the race shows
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda _: load_text("sfConfig extends { a 1; }"), range(2000)))
    finally:
        sys.setswitchinterval(interval)
    assert gc.isenabled()
