"""The SmartFrog grammar as sd-batch reads it: each construct, and each syntax error's exact text.

Values are checked through `load_text` (what a user sees after resolution) where the syntax
objects would only restate the grammar; `parse_text` is used for syntax-only checks.
"""

from __future__ import annotations

import pytest

from sd_batch.errors import DescriptionSyntaxError
from sd_batch.lang import TBD, Component, Double, Long, Reference, load_text
from sd_batch.lang.parser import parse_text
from sd_batch.lang.syntax import AttrDef, Body, Include


def config(body: str) -> Component:
    """sfConfig of a description holding BODY, resolved."""
    description = load_text("sfConfig extends {\n" + body + "\n}\n", "t.sf")
    assert description.sfconfig is not None
    return description.sfconfig


def syntax_error(text: str) -> DescriptionSyntaxError:
    with pytest.raises(DescriptionSyntaxError) as info:
        parse_text(text, "t.sf")
    return info.value


# -- separators ------------------------------------------------------------------------------------
def test_semicolons_after_simple_values_are_optional():
    assert dict(config('a 1 b 2 c "x" d extends { e 3 }').items())["b"] == 2
    assert list(config("a 1 b 2").items()) == list(config("a 1; b 2;").items())


def test_stray_semicolons_and_semicolon_after_a_component_are_accepted():
    assert list(config(";; a extends { x 1; }; ; b 2;;").items())[1] == ("b", 2)


def test_a_name_followed_by_a_semicolon_is_null():
    assert config("a; b 2;")["a"] is None


def test_extends_without_anything_is_an_empty_component():
    a = config("a extends;")["a"]
    assert isinstance(a, Component) and len(a) == 0


# -- names -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["x-1", "a.b", "n+1", "$v", "_u", "a@b#c~d%e^f&g", "a-b.c+d"])
def test_words_may_hold_dots_dashes_pluses_and_other_specials(name: str):
    assert config(f"{name} 5;")[name] == 5


def test_quoted_names_may_hold_anything_and_are_unescaped():
    sfconfig = config('"quoted name" 1; "tab\\there" 2; "" 3;')
    assert list(sfconfig) == ["quoted name", "tab\there", ""]


@pytest.mark.parametrize("keyword", ["extends", "LAZY", "TBD", "true", "NULL", "ATTRIB", "IF"])
def test_keywords_are_names_only_when_quoted(keyword: str):
    assert config(f'"{keyword}" 7;')[keyword] == 7


def test_a_bare_keyword_as_a_name_is_a_syntax_error_that_says_to_quote_it():
    error = syntax_error("sfConfig extends {\n  LAZY 1;\n}\n")
    assert str(error) == (
        "t.sf:2:3: unexpected 'LAZY'; LAZY is a keyword: quote it (\"LAZY\") to use it as a name\n"
        "  LAZY 1;\n"
        "  ^^^^"
    )


@pytest.mark.parametrize("word", ["SWITCH", "ENDSWITCH"])  # VAR is a value (a constraint variable)
def test_reserved_words_sd_batch_does_not_implement_must_be_quoted_too(word: str):
    error = syntax_error(f"{word} 1;")
    assert error.headline() == (
        f"t.sf:1:1: {word} is a reserved word of the SmartFrog language; "
        f'quote it ("{word}") to use it as a name'
    )


def test_double_dash_and_single_dash_give_unique_anonymous_names_in_order():
    sfconfig = config("-- 1; x 2; - 3; -- extends { y 4; }")
    assert list(sfconfig) == ["--1", "x", "--2", "--3"]
    assert sfconfig["--3"]["y"] == 4


def test_anonymous_names_are_numbered_across_included_files(tmp_path):
    (tmp_path / "lib.sf").write_text("P extends { -- 1; }\n")
    (tmp_path / "main.sf").write_text('-- 0;\n#include "lib.sf"\nsfConfig extends P { -- 2; }\n')
    from sd_batch.lang import load_file

    description = load_file(tmp_path / "main.sf")
    assert list(description.root) == ["--1", "P", "sfConfig"]
    # main.sf is read whole before lib.sf: P's `--` is the third; prototype attributes come first
    assert description.sfconfig is not None
    assert list(description.sfconfig.items()) == [("--3", 1), ("--2", 2)]


def test_path_names_are_kept_as_paths_in_the_syntax_and_may_end_quoted():
    (item,) = parse_text('a:b:"c d" 1;', "t.sf").items
    assert isinstance(item, AttrDef) and item.name == ("a", "b", "c d")


def test_a_quoted_part_ends_a_path_name_as_in_smartfrog():
    assert syntax_error('a:"b":c 1;').headline().startswith("t.sf:1:6: unexpected ':'")


# -- strings ---------------------------------------------------------------------------------------
def test_strings_read_java_escapes_including_octal():
    s = config(r"""s "n\n t\t b\b r\r f\f bs\\ q\" a\' o\101\102\060 \377";""")["s"]
    assert s == "n\n t\t b\b r\r f\f bs\\ q\" a' oAB0 \xff"


def test_multiline_strings_span_lines_and_escape_hash():
    assert config("m ##first\n  second \\# third\\n#;")["m"] == "first\n  second # third\n"


def test_a_string_may_not_span_lines():
    error = syntax_error('a "one\ntwo";')
    assert str(error) == (
        "t.sf:1:3: unterminated or malformed string; "
        "strings end on the same line; use ##...# for text over several lines\n"
        'a "one\n'
        "  ^"
    )


def test_an_unknown_escape_is_a_malformed_string():
    assert syntax_error(r'a "\q";').message == "unterminated or malformed string"


# -- numbers, booleans, NULL, TBD ------------------------------------------------------------------
def test_numbers_keep_their_smartfrog_kind():
    sfconfig = config("i 42; n -3; l 4L; l2 5l; f 1.5; f2 1.5f; f3 1e3; f4 .5; d 1.5D; d2 2d;")
    assert sfconfig["i"] == 42 and type(sfconfig["i"]) is int
    assert sfconfig["n"] == -3
    assert sfconfig["l"] == 4 and isinstance(sfconfig["l"], Long)
    assert sfconfig["l2"] == 5 and isinstance(sfconfig["l2"], Long)
    for name, value in [("f", 1.5), ("f2", 1.5), ("f3", 1000.0), ("f4", 0.5)]:
        assert sfconfig[name] == value and type(sfconfig[name]) is float
    assert sfconfig["d"] == 1.5 and isinstance(sfconfig["d"], Double)
    assert sfconfig["d2"] == 2.0 and isinstance(sfconfig["d2"], Double)


def test_booleans_null_and_tbd():
    description = load_text("sfConfig extends { t true; f false; n NULL; x TBD; }", complete=False)
    sfconfig = description.sfconfig
    assert sfconfig is not None
    assert (sfconfig["t"], sfconfig["f"], sfconfig["n"], sfconfig["x"]) == (True, False, None, TBD)


def test_byte_arrays_in_hex_decimal_octal_binary_and_base64():
    sfconfig = config("h #HEX#0aff#; d #DEC#258#; o #OCT#17#; b #BIN#101#; s #B64#aGk=#;")
    assert [sfconfig[n] for n in "hdobs"] == [b"\n\xff", b"\x01\x02", b"\x0f", b"\x05", b"hi"]


@pytest.mark.parametrize(
    ("literal", "message"),
    [
        ("1e999", "number 1e999 is out of range"),
        ("1e999D", "number 1e999D is out of range"),
        (
            "9223372036854775808",
            "number 9223372036854775808 is out of range (integers have 64 bits)",
        ),
        (
            "-9223372036854775809L",
            "number -9223372036854775809L is out of range (integers have 64 bits)",
        ),
        (
            "1" * 5000,
            "number 111111111111111111111111111... is out of range (integers have 64 bits)",
        ),
    ],
)
def test_numbers_out_of_range_are_syntax_errors_at_the_literal(literal: str, message: str):
    error = syntax_error(f"a {literal};")
    assert error.loc is not None
    assert (error.message, error.loc.line, error.loc.column) == (message, 1, 3)


def test_the_64_bit_limits_themselves_are_fine():
    sfconfig = config("lo -9223372036854775808; hi 9223372036854775807L;")
    assert (sfconfig["lo"], sfconfig["hi"]) == (-(2**63), 2**63 - 1)


def test_malformed_base64_is_a_syntax_error():
    error = syntax_error("a #B64#a#;")
    assert error.message.startswith("malformed #B64# byte array: ")
    assert error.loc is not None
    assert (error.loc.line, error.loc.column) == (1, 3)


# -- vectors and lists -----------------------------------------------------------------------------
def test_vectors_hold_literals_and_nest():
    sfconfig = config('v [| 1, "a", [| 2, [| |] |], 4L, TBD, NULL |]; e [||];')
    assert sfconfig["v"][:3] == [1, "a", [2, []]]
    assert sfconfig["e"] == []


def test_a_vector_may_not_hold_a_reference():
    error = syntax_error("v [| ATTRIB x |];")
    assert error.headline() == "t.sf:1:6: unexpected 'ATTRIB'; expected a value or '|]'"


def test_square_bracket_lists_are_evaluated():
    assert config('x 2; l [x, (x + 1), "s", [| 1 |]];')["l"] == [2, 3, "s", [1]]


# -- operators -------------------------------------------------------------------------------------
def test_one_operator_kind_per_parenthesised_level():
    assert config("a (1 + (2 * 3)); b ((1 + 2) * 3); c (1 + 2 + 3);").attributes.keys()
    error = syntax_error("a (1 + 2 * 3);")
    assert str(error) == (
        "t.sf:1:10: unexpected '*'; expected ')' or '+'\na (1 + 2 * 3);\n         ^"
    )


def test_operators_need_parentheses():
    assert syntax_error("a 1 + 2;").headline().startswith("t.sf:1:5: unexpected '+'")


def test_a_minus_glued_to_a_digit_is_a_negative_literal():
    assert config("a (5 - 3); b -3;").items().__next__() == ("a", 2)


def test_if_then_else_fi():
    assert config('a IF (1 < 2) THEN "yes" ELSE "no" FI;')["a"] == "yes"


# -- comments and directives -----------------------------------------------------------------------
def test_comments_of_both_kinds_are_ignored():
    text = "// line\n/* block\n ## not a string # */ a 1; /** doc */ b 2; // end"
    assert list(config(text).items()) == [("a", 1), ("b", 2)]


def test_include_directives_optional_ones_and_a_trailing_semicolon():
    items = parse_text('#include "a.sf";\n#include? "b.sf"\n#codebase "u" #include "c.sf"\n').items
    assert [(i.path, i.optional) for i in items if isinstance(i, Include)] == [
        ("a.sf", False),
        ("b.sf", True),
        ("c.sf", False),
    ]


def test_unknown_directive_is_a_syntax_error_with_a_hint():
    error = syntax_error('#import "x.sf"\n')
    assert error.headline() == (
        "t.sf:1:1: unexpected character '#'; "
        'directives are #include "file" and #include? "file"; ##...# is a string'
    )


def test_extends_with_a_node_class_is_not_supported():
    assert syntax_error("a extends:foo { };").headline().startswith("t.sf:1:10: unexpected ':'")


# -- syntax error reports --------------------------------------------------------------------------
def test_end_of_file_inside_a_component_names_what_was_expected():
    error = syntax_error("sfConfig extends {\n  a 1;\n")
    assert str(error) == (
        "t.sf:2:7: unexpected end of file; expected an attribute or '}'\n  a 1;\n      ^"
    )


def test_a_stray_character_is_pointed_at():
    error = syntax_error("a 1;\nb @;\n")
    assert str(error) == "t.sf:2:3: unexpected character '@'\nb @;\n  ^"


def test_a_closing_brace_too_many_is_pointed_at():
    error = syntax_error("a extends { }\n}\n")
    assert error.headline() == "t.sf:2:1: unexpected '}'; expected an attribute or end of file"


def test_several_prototypes_and_inline_bodies_parse():
    text = "a extends A, B, { x 1; }, NULL, C { y 2; }; b extends LAZY A; c extends DATA { }"
    a, b, c = (item.value for item in parse_text(text).items if isinstance(item, AttrDef))
    assert [type(p).__name__ for p in a.protos] == [
        "Reference",
        "Reference",
        "Body",
        "NullProto",
        "Reference",
        "Body",
    ]
    assert [str(p) for p in a.protos if isinstance(p, Reference)] == ["A", "B", "C"]
    bodies = [p for p in a.protos if isinstance(p, Body)]
    names = [[i.name for i in p.items if isinstance(i, AttrDef)] for p in bodies]
    assert names == [[("x",)], [("y",)]]
    assert (a.modifier, b.modifier, c.modifier) == (None, "LAZY", "DATA")
    assert len(b.protos) == 1 and c.protos[0].items == ()


def test_lazy_and_data_references_parse_as_references():
    sfconfig = load_text("x 1; sfConfig extends { l LAZY x; d DATA x:y; }").sfconfig
    assert sfconfig is not None
    assert isinstance(sfconfig["l"], Reference) and sfconfig["l"].lazy
    assert isinstance(sfconfig["d"], Reference) and sfconfig["d"].data


# -- threads ---------------------------------------------------------------------------------------
def test_threads_parsing_at_once_each_keep_their_file_name_and_anonymous_numbers():
    """The helper service parses descriptions in several threads through the one parser."""
    import itertools
    from concurrent.futures import ThreadPoolExecutor

    body = "".join(f"a{i} {i};\n" for i in range(200)) + "-- extends { x 1; }\n-- 2;\n"

    def parse(n: int) -> list[str]:
        source = parse_text(body, f"f{n}.sf", anonymous=itertools.count(100 * n))
        names = ["".join(i.name) for i in source.items if isinstance(i, AttrDef)]
        files = {i.loc.file for i in source.items if isinstance(i, AttrDef)}
        assert files == {f"f{n}.sf"}, files
        return names[-2:]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(parse, range(64)))
    assert results == [[f"--{100 * n}", f"--{100 * n + 1}"] for n in range(64)]
