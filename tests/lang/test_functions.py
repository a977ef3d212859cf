"""SmartFrog's function phase, schemas, phase list, VAR and `->`, as SmartFrog itself behaves
(each expectation was checked against SmartFrog's parser and resolver: see test_conformance.py).

The prototypes come from our library's functions.sf and predicates.sf, which carry the
`phase.function` construct and `sfFunctionClass` under SmartFrog's Java class names.
"""

from __future__ import annotations

import pytest

from sd_batch.errors import DescriptionError, DescriptionSyntaxError, ResolutionError
from sd_batch.lang import Component, Double, Long, load_text
from sd_batch.lang.render import render_description

# Our library's functions.sf and predicates.sf (SmartFrog's names and class names), and a Prim
# with a static schema as SmartFrog's prim.sf has.
LIBRARY = """#include "predicates.sf"
PrimSchema extends Schema {
    sfAssertionPhase "static";
    sfClass extends String { binding "eager"; description "class that implements component"; }
}
Prim extends NULL { sfPrimSchema extends PrimSchema; }
"""


def resolve(text: str) -> Component:
    description = load_text(LIBRARY + text, "t.sf")
    assert description.sfconfig is not None
    return description.sfconfig


def error(text: str) -> DescriptionError:
    with pytest.raises(DescriptionError) as info:
        load_text(LIBRARY + text, "t.sf")
    return info.value


# -- functions ---------------------------------------------------------------------------------
def test_product_of_a_prototype_extended_with_its_operands_gives_1000():
    sfconfig = resolve(
        "myproduct extends product { val1 10; val2 100; }\n"
        "sfConfig extends { test extends myproduct; }"
    )
    assert sfconfig["test"] == 1000 and type(sfconfig["test"]) is int


def test_the_standard_functions_compute_as_smartfrogs_classes_do():
    sfconfig = resolve(
        """sfConfig extends {
        v extends vector { a "Macgrath"; b "Hayden"; c "Ponting"; }
        l extends append { a [|"x"|]; b 5; c [|"y", "z"|]; }
        c extends concat { a "value is "; b 99; c true; d 1.5; }
        f extends formatString { format "host $0 at port $1"; s0 "h"; s1 "50002"; }
        s extends sum { a 1; b 2L; }
        d extends sum { a 1; b 2.5D; }
        m extends minus { left 7; right 10; }
        q extends divide { left -7; right 2; }
        r extends mod { left -7; right 3; }
        i extends ifThenElse { if (1 < 2); then "yes"; else "no"; }
        nested extends sum { a extends product { x 3; y 4; } b 1; }
        }"""
    )
    assert sfconfig["v"] == ["Macgrath", "Hayden", "Ponting"]
    assert sfconfig["l"] == ["x", "y", "z"]  # append ignores what is not a vector
    assert sfconfig["c"] == "value is 99true1.5"
    assert sfconfig["f"] == "host h at port 50002"
    assert sfconfig["s"] == 3 and isinstance(sfconfig["s"], Long)
    assert sfconfig["d"] == 3.5 and isinstance(sfconfig["d"], Double)
    assert (sfconfig["m"], sfconfig["q"], sfconfig["r"]) == (-3, -3, -1)  # Java truncates
    assert sfconfig["i"] == "yes"
    assert sfconfig["nested"] == 13


def test_random_and_next_stay_in_their_ranges():
    sfconfig = resolve(
        "sfConfig extends { r extends random { min 1; max 6; integer true; }"
        " n1 extends next { base 10; } n2 extends next; }"
    )
    assert 1 <= sfconfig["r"] <= 6
    assert sfconfig["n2"] == sfconfig["n1"] + 1


def test_sfconfig_that_is_a_function_is_not_a_component_description():
    problem = error("sfConfig extends concat { a 1; }")
    assert "sfConfig must be a Component Description, found a function" in problem.message


def test_an_unknown_function_class_is_named():
    problem = error('sfConfig extends { x extends Function { sfFunctionClass "com.acme.Nope"; } }')
    assert problem.message.startswith("sfConfig:x: sfFunctionClass com.acme.Nope is not a function")


def test_an_error_inside_a_function_names_the_attribute_it_computes():
    problem = error("sfConfig extends { throw1 extends sum { a ATTRIB missing; b 1; } }")
    assert problem.message.startswith("sfConfig:throw1: unknown reference ATTRIB missing")


def test_a_function_operand_of_the_wrong_kind_is_an_error():
    problem = error('sfConfig extends { s extends sum { a 1; b "two"; } }')
    assert problem.message == ("sfConfig:s: illegal numeric parameter: java.lang.String (two)")


def test_functions_in_unused_prototypes_are_transformed_but_not_evaluated():
    description = load_text(
        LIBRARY + "broken extends sum { a ATTRIB nowhere; }\nsfConfig extends { }", "t.sf"
    )
    assert description.sfconfig is not None and len(description.sfconfig) == 0
    assert "phase.function" in render_description("broken", description.root)


# -- schemas -----------------------------------------------------------------------------------
def test_schema_entries_carry_their_name_so_name_tbd_is_not_an_unfilled_tbd():
    sfconfig = resolve('sfConfig extends Prim { sfClass "a.B"; port 8080; }')
    assert dict(sfconfig.items()) == {"sfClass": "a.B", "port": 8080}  # the schema is gone


def test_a_wrong_class_names_the_attribute_where_it_was_written_and_the_class_expected():
    problem = error(
        'Foo extends Prim { sfClass "x"; schema extends Schema {\n'
        '  z extends Integer { description "an int"; } } }\n'
        'sfConfig extends { myFoo extends Foo { z "23"; } }'
    )
    assert problem.message == (
        "sfConfig:myFoo:z: error in schema schema: wrong class found for attribute "
        "'z (an int)', expected: java.lang.Integer, found: java.lang.String"
    )
    assert problem.loc is not None and problem.source_line is not None
    assert problem.source_line[problem.loc.column - 1 :].startswith('z "23"')  # where written


def test_null_sfclass_against_primschema_is_an_error():
    problem = error("sfConfig extends Prim { sfClass NULL; }")
    assert "sfConfig:sfClass: error in schema sfPrimSchema: wrong class found" in problem.message
    assert "found: org.smartfrog.sfcore.common.SFNull" in problem.message


def test_presence_optional_and_binding():
    schema = (
        "S extends Schema { x extends OptionalInteger; y extends String; "
        'l extends Compulsory { binding "lazy"; } }\n'
    )
    missing = error(schema + "sfConfig extends { s extends S; x 1; l LAZY x; }")
    assert missing.message == (
        "sfConfig:y: error in schema s: non-optional attribute 'y' is missing"
    )
    eager = error(schema + 'sfConfig extends { s extends S; y "a"; l 5; }')
    assert "non-reference value found for lazy attribute 'l'" in eager.message
    sfconfig = resolve(schema + 'sfConfig extends { s extends S; y "a"; l LAZY y; n 2.5; }')
    # S is dynamic (no sfAssertionPhase "static"): SmartFrog keeps it, a LAZY check
    assert "s" in sfconfig and sfconfig["y"] == "a"
    static = schema.replace("S extends Schema {", 'S extends Schema { sfAssertionPhase "static";')
    assert "s" not in resolve(static + 'sfConfig extends { s extends S; y "a"; l LAZY y; }')


def test_a_schema_entry_that_is_not_a_description_is_an_error():
    problem = error("S extends Schema { x 5; }\nsfConfig extends { s extends S; }")
    assert isinstance(problem, ResolutionError) and "element x of the schema" in problem.message


def test_double_schema_takes_every_number_kind():
    schema = "S extends Schema { a extends Double; b extends Double; c extends Double; }\n"
    sfconfig = resolve(schema + "sfConfig extends { s extends S; a 1; b 2L; c 1.5D; }")
    assert (sfconfig["a"], sfconfig["b"], sfconfig["c"]) == (1, 2, 1.5)


# -- phase list, VAR, -> -----------------------------------------------------------------------
def test_a_phase_list_without_function_leaves_functions_as_descriptions():
    text = 'phaseList [|"type", "place", "sfConfig", "link"|];\n'
    sfconfig = resolve(text + "sfConfig extends { p extends product { a 2; b 3; } }")
    assert isinstance(sfconfig["p"], Component) and sfconfig["p"]["a"] == 2
    assert resolve("sfConfig extends { p extends product { a 2; b 3; } }")["p"] == 6


def test_a_phase_sd_has_no_action_for_is_an_error_only_where_a_component_asks_for_it():
    text = 'phaseList [|"type", "place", "predicate", "sfConfig", "link"|];\n'
    assert resolve(text + "sfConfig extends { a 1; }")["a"] == 1
    problem = error(text + 'sfConfig extends { x extends { phase.predicate "a.B"; } }')
    assert "sd-batch has no action for phase predicate" in problem.message


def test_var_is_a_value_and_implies_folds_left():
    sfconfig = resolve(
        'sfConfig extends { v VAR; w VAR {"1..3", 2}; i ((false) -> (false)); '
        "j (true -> false -> true); k (7 % 3); }"
    )
    assert str(sfconfig["v"]) == "VAR" and str(sfconfig["w"]) == 'VAR {"1..3", 2}'
    assert (sfconfig["i"], sfconfig["j"], sfconfig["k"]) == (True, True, 1)


def test_var_is_a_keyword():
    with pytest.raises(DescriptionSyntaxError):
        load_text("VAR 1;", "t.sf")


# -- our library's functions.sf and predicates.sf ------------------------------------------------
DEMO = """#include "components.sf"
#include "predicates.sf"
Worker extends Prim {
    workerSchema extends Schema {
        sfAssertionPhase "static";     // checked once, then gone (the default: kept, LAZY)
        cores extends Integer { description "CPU cores"; }
        label extends OptionalString;
    }
    cores 2;
}
sfConfig extends Compound {
    total extends sum { a 1; b 2L; }
    greeting extends concat { a "node-"; b 7; }
    hosts extends vector { a "h1"; b "h2"; }
    w1 extends Worker { label "build"; }
}
"""


def test_our_library_ships_functions_and_schemas_under_smartfrogs_names():
    sfconfig = load_text(DEMO, "demo.sf").sfconfig
    assert sfconfig is not None
    assert (sfconfig["total"], sfconfig["greeting"], sfconfig["hosts"]) == (
        3,
        "node-7",
        ["h1", "h2"],
    )
    assert isinstance(sfconfig["total"], Long)
    assert list(sfconfig["w1"]) == ["sfCodeBase", "sfClass", "cores", "label"]
    with pytest.raises(ResolutionError) as info:
        load_text(DEMO.replace('label "build"', 'cores "2"'), "demo.sf")
    assert info.value.message.startswith("sfConfig:w1:cores: error in schema workerSchema: wrong")
    assert info.value.loc is not None
    assert (info.value.loc.line, info.value.loc.column) == (15, 25)


def test_a_dynamic_schema_kept_in_the_tree_renders_as_text_and_json():
    from sd_batch.lang.render import to_data

    text = DEMO.replace('sfAssertionPhase "static";', "")
    sfconfig = load_text(text, "demo.sf").sfconfig
    assert sfconfig is not None and "workerSchema" in sfconfig["w1"]
    rendered = render_description("sfConfig", sfconfig)
    assert 'phase.function "org.smartfrog.sfcore.languages.sf.ConstructSchema"' in rendered
    assert load_text(rendered, "again.sf").sfconfig is not None  # the text reads back
    assert to_data(sfconfig)["w1"]["workerSchema"]["$expr"].startswith("extends {")


def test_a_format_bomb_is_refused_before_it_is_built():
    import time

    bomb = "$0" * 200_000  # 400 KB of format times a 100 KB s0: 20 GB if built
    long = "x" * 100_000
    text = f'sfConfig extends {{ f extends formatString {{ format "{bomb}"; s0 "{long}"; }} }}'
    started = time.process_time()
    problem = error(text)
    assert time.process_time() - started < 10
    assert problem.message == "sfConfig:f: formatString would make more than 1000000 characters"


def test_doubling_concats_stop_at_the_result_limit():
    chain = ['x0 "' + "a" * 1000 + '";']
    chain += [f"x{i} extends concat {{ a x{i - 1}; b x{i - 1}; }}" for i in range(1, 40)]
    problem = error("sfConfig extends { " + " ".join(chain) + " }")
    assert problem.message == ("sfConfig:x10: the result has more than 1000000 characters or items")
