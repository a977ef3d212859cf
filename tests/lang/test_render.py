"""Rendering resolved trees: SmartFrog text that parses back to the same tree, and JSON data."""

from __future__ import annotations

import json

import pytest

from sd_batch.lang import TBD, Component, Double, Long, Reference, RefPart, load_text
from sd_batch.lang.formatting import format_name, format_string
from sd_batch.lang.render import (
    render_attributes,
    render_description,
    render_value,
    to_data,
)

MIXED = r"""base 1;
sfConfig extends {
    a LAZY PARENT:base; b (a + 1); c [a, 2]; i IF a THEN 1 ELSE 2 FI; neg (! a);
    o LAZY OPTIONAL(3) x:y; "key word" 1; "extends" 2; -- 3;
    s "q\"\\\n\001é"; f 1.0; f2 1e20; d 2.5D; l 7L; by #HEX#00ff#;
    v [|1, [|"a"|], DATA x|]; t TBD; dt extends DATA { z 1; } lz extends LAZY { y 2; } n NULL;
}
"""

MIXED_TEXT = """\
sfConfig extends {
    a LAZY PARENT:base;
    b (a + 1);
    c [a, 2];
    i IF a THEN 1 ELSE 2 FI;
    neg (! a);
    o LAZY OPTIONAL(3) x:y;
    "key word" 1;
    "extends" 2;
    -- 3;
    s "q\\"\\\\\\n\\001é";
    f 1.0;
    f2 1e+20;
    d 2.5D;
    l 7L;
    by #HEX#00ff#;
    v [|1, [|"a"|], DATA x|];
    t TBD;
    dt extends DATA {
        z 1;
    }
    lz extends LAZY {
        y 2;
    }
    n NULL;
}
"""


def sfconfig_of(text: str) -> Component:
    description = load_text(text, "t.sf", complete=False)
    assert description.sfconfig is not None
    return description.sfconfig


def test_every_kind_of_value_renders_as_smartfrog_text():
    assert render_description("sfConfig", sfconfig_of(MIXED)) == MIXED_TEXT


def test_rendered_text_parses_back_to_the_same_text():
    assert render_description("sfConfig", sfconfig_of(MIXED_TEXT)) == MIXED_TEXT


def test_rendered_text_always_has_semicolons_so_smartfrogs_own_parser_reads_it():
    lines = MIXED_TEXT.splitlines()[1:-1]
    simple = [line for line in lines if not line.rstrip().endswith(("{", "}"))]
    assert all(line.endswith(";") for line in simple)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "NULL"),
        (TBD, "TBD"),
        (True, "true"),
        (False, "false"),
        (42, "42"),
        (-3, "-3"),
        (Long(4), "4L"),
        (1.5, "1.5"),
        (2.0, "2.0"),
        (-0.0, "-0.0"),
        (1e-07, "1e-07"),
        (Double(1.5), "1.5D"),
        (Double(3.0), "3.0D"),
        ("tab\there", '"tab\\there"'),
        ("\x7f\x00", '"\\177\\000"'),
        (b"\x01\xff", "#HEX#01ff#"),
        ([1, [2, []]], "[|1, [|2, [||]|]|]"),
        (Reference((RefPart("ATTRIB", "x"), RefPart("HERE", "y"))), "x:y"),
        (Reference((RefPart("PARENT"), RefPart("ATTRIB", "y")), lazy=True), "LAZY PARENT:ATTRIB y"),
        (Reference((RefPart("HERE", "a b"),)), 'HERE "a b"'),
        (Reference((RefPart("ATTRIB", "a b"), RefPart("HERE", "c"))), 'ATTRIB "a b":c'),
        (Reference((RefPart("ROOT"), RefPart("HERE", "x")), data=True), "DATA ROOT:x"),
    ],
)
def test_single_values(value, text: str):
    assert render_value(value) == text


def test_a_list_holding_a_reference_renders_as_an_evaluated_list():
    assert render_value([1, Reference((RefPart("ATTRIB", "x"),), lazy=True)]) == "[1, LAZY x]"


def test_infinite_floats_have_no_literal():
    with pytest.raises(ValueError, match="no SmartFrog literal"):
        render_value(float("inf"))


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("plain", "plain"),
        ("x-1.b+c", "x-1.b+c"),
        ("two words", '"two words"'),
        ("extends", '"extends"'),
        ("VAR", '"VAR"'),
        ("1abc", '"1abc"'),
        ("", '""'),
    ],
)
def test_names_are_bare_when_they_are_words_and_quoted_otherwise(name: str, shown: str):
    assert format_name(name) == shown


def test_string_escapes_round_trip():
    text = 'a\\b"c\nd\re\tf\bg\fh\x01é€'
    assert sfconfig_of(f"sfConfig extends {{ s {format_string(text)}; }}")["s"] == text


def test_a_library_renders_its_prototypes_resolved():
    description = load_text('sfCodeBase "d"; P extends NULL { c PARENT:ATTRIB sfCodeBase; }')
    assert render_attributes(description.root) == ['sfCodeBase "d";', 'P extends {\n    c "d";\n}']


# -- JSON ------------------------------------------------------------------------------------------
def test_json_keeps_sfconfig_order_and_nests_objects_and_arrays():
    data = to_data(sfconfig_of(MIXED))
    assert list(data) == [
        "a",
        "b",
        "c",
        "i",
        "neg",
        "o",
        "key word",
        "extends",
        "--1",
        "s",
        "f",
        "f2",
        "d",
        "l",
        "by",
        "v",
        "t",
        "dt",
        "lz",
        "n",
    ]
    assert data["a"] == {"$ref": "LAZY PARENT:base"}
    assert data["o"] == {"$ref": "LAZY OPTIONAL(3) x:y"}
    assert data["b"] == {"$expr": "(a + 1)"} and data["i"] == {"$expr": "IF a THEN 1 ELSE 2 FI"}
    assert data["v"] == [1, ["a"], {"$ref": "DATA x"}]
    assert data["t"] == {"$tbd": True} and data["by"] == {"$bytes": "00ff"}
    assert data["dt"] == {"z": 1} and data["lz"] == {"y": 2}
    assert (data["l"], type(data["l"])) == (7, int) and (data["d"], type(data["d"])) == (2.5, float)
    assert json.loads(json.dumps(data)) == data


def test_json_of_a_nested_component_tree():
    text = 'sfConfig extends { vm extends { disks extends { root extends { size "10G"; } } } }'
    assert to_data(sfconfig_of(text)) == {"vm": {"disks": {"root": {"size": "10G"}}}}
