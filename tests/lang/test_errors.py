"""Every kind of description error, with its exact text: headline, source line and caret.

These messages are what a user reads in `sd validate` and in a held job's HoldReason, so they
are pinned word for word.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sd_batch.errors import (
    CyclicReference,
    DescriptionError,
    DescriptionErrors,
    DescriptionSyntaxError,
    IncludeError,
    ResolutionError,
    TbdError,
    UnresolvedReference,
)
from sd_batch.lang import load_file, load_text


def error_of(text: str, **kw) -> DescriptionError:
    with pytest.raises(DescriptionError) as info:
        load_text(text, "t.sf", **kw)
    return info.value


@pytest.mark.parametrize(
    ("kind", "text", "expected"),
    [
        (
            DescriptionSyntaxError,
            "sfConfig extends {\n  a (1 + 2 * 3);\n}\n",
            "t.sf:2:12: unexpected '*'; expected ')' or '+'\n  a (1 + 2 * 3);\n           ^",
        ),
        (
            UnresolvedReference,
            "sfConfig extends {\n  port 80;\n  url ATTRIB prot;\n}\n",
            "t.sf:3:7: unknown reference ATTRIB prot; did you mean port?\n"
            "  url ATTRIB prot;\n      ^^^^^^",
        ),
        (
            UnresolvedReference,
            "g 1;\nsfConfig extends {\n  c extends { v PARENT:g; }\n}\n",
            "t.sf:3:17: unknown reference PARENT:g: no attribute g in sfConfig; "
            "g is defined in the top level\n  c extends { v PARENT:g; }\n                ^^^^^^",
        ),
        (
            UnresolvedReference,
            "sfConfig extends {\n  x 1;\n  a x:y;\n}\n",
            "t.sf:3:5: unknown reference x:y: x is a number, not a component\n  a x:y;\n    ^",
        ),
        (
            UnresolvedReference,
            "sfConfig extends {\n  a PARENT:PARENT:x;\n}\n",
            "t.sf:2:5: reference PARENT:PARENT:x has no parent; the top level has no PARENT\n"
            "  a PARENT:PARENT:x;\n    ^^^^^^",
        ),
        (
            CyclicReference,
            "sfConfig extends {\n  a ATTRIB b;\n  b (a + 1);\n}\n",
            "t.sf:2:5: cyclic reference: sfConfig:a -> sfConfig:b -> sfConfig:a\n"
            "  a ATTRIB b;\n    ^^^^^^",
        ),
        (
            CyclicReference,
            "sfConfig extends {\n  me THIS;\n}\n",
            "t.sf:2:6: cyclic reference: sfConfig:me -> sfConfig; a link copies the component it "
            "names, which here contains the link; write LAZY to keep it a reference\n"
            "  me THIS;\n     ^^^^",
        ),
        (
            CyclicReference,
            "sfConfig extends {\n  f extends { d PARENT:h; }\n  h ATTRIB f;\n}\n",
            "t.sf:3:5: cyclic reference: sfConfig:f:d -> sfConfig:h -> sfConfig:f; a link copies "
            "the component it names, which here contains the link; write LAZY to keep it a "
            "reference\n  h ATTRIB f;\n    ^^^^^^",
        ),
        (
            TbdError,
            "sfConfig extends {\n  memory TBD;\n}\n",
            "t.sf:2:3: sfConfig:memory is still TBD (to be defined); "
            "give it a value here or in a description that extends this one\n"
            "  memory TBD;\n  ^^^^^^",
        ),
        (
            ResolutionError,
            "size 5;\nsfConfig extends {\n  vm extends size;\n}\n",
            "t.sf:3:14: prototype size is not a component; "
            "extends takes component descriptions (or NULL)\n  vm extends size;\n             ^^^^",
        ),
        (
            ResolutionError,
            "A extends B;\nB extends A;\nsfConfig extends A;\n",
            "t.sf:3:18: prototype A cannot be used: "
            "t.sf:1:3: cyclic prototype: A extends B extends A\n"
            "sfConfig extends A;\n                 ^",
        ),
        (
            ResolutionError,
            "A extends A;\nsfConfig extends A;\n",
            "t.sf:2:18: prototype A cannot be used: t.sf:1:11: cyclic prototype: A extends itself\n"
            "sfConfig extends A;\n                 ^",
        ),
        (
            CyclicReference,
            "sfConfig extends {\n  n extends { m extends PARENT; }\n}\n",
            "t.sf:2:25: cyclic prototype: PARENT contains the component that extends it\n"
            "  n extends { m extends PARENT; }\n                        ^^^^^^",
        ),
        (
            ResolutionError,
            "sfConfig extends {\n  disk:size 10;\n}\n",
            "t.sf:2:3: cannot place disk:size: no component disk in sfConfig; "
            "a path-named attribute overrides a value inside an existing component\n"
            "  disk:size 10;\n  ^^^^",
        ),
        (
            ResolutionError,
            'sfConfig extends {\n  a (1 + "x");\n}\n',
            't.sf:2:5: operator + needs numbers, got a string\n  a (1 + "x");\n    ^',
        ),
        (
            ResolutionError,
            'sfConfig extends {\n  a (1 < "x");\n}\n',
            "t.sf:2:5: operator < compares two numbers or two strings, got a number and a string\n"
            '  a (1 < "x");\n    ^',
        ),
        (
            ResolutionError,
            "sfConfig extends {\n  a (1 && true);\n}\n",
            "t.sf:2:5: operator && needs booleans, got a number\n  a (1 && true);\n    ^",
        ),
        (
            ResolutionError,
            "sfConfig extends {\n  a ([|1|] <> 2);\n}\n",
            "t.sf:2:5: operator <> needs vectors, got a number\n  a ([|1|] <> 2);\n    ^",
        ),
        (
            ResolutionError,
            "sfConfig extends {\n  a IF 1 THEN 2 ELSE 3 FI;\n}\n",
            "t.sf:2:5: IF needs a boolean condition, got a number\n"
            "  a IF 1 THEN 2 ELSE 3 FI;\n    ^^",
        ),
        (
            ResolutionError,
            "sfConfig extends {\n  a (1 / 0);\n}\n",
            "t.sf:2:5: division by zero\n  a (1 / 0);\n    ^",
        ),
        (
            ResolutionError,
            "sfConfig extends {\n  a (2.5 / 0.0);\n}\n",
            "t.sf:2:5: division by zero\n  a (2.5 / 0.0);\n    ^",
        ),
        (
            ResolutionError,
            "sfConfig extends {\n  big (9223372036854775807 + 1);\n}\n",
            "t.sf:2:7: operator + overflows: integers have 64 bits\n"
            "  big (9223372036854775807 + 1);\n      ^",
        ),
        (
            ResolutionError,
            "sfConfig extends {\n  big (1e308 * 10.0);\n}\n",
            "t.sf:2:7: operator * overflows: the result is too large\n"
            "  big (1e308 * 10.0);\n      ^",
        ),
        (
            ResolutionError,
            "sfConfig extends {\n  h HOST node1:x;\n}\n",
            "t.sf:2:5: HOST node1:x names a runtime place and can only be resolved at deploy time; "
            "write LAZY HOST node1:x\n  h HOST node1:x;\n    ^^^^",
        ),
        (
            ResolutionError,
            "sfConfig extends {\n  p PROCESS;\n}\n",
            "t.sf:2:5: PROCESS names a runtime place and can only be resolved at deploy time; "
            "write LAZY PROCESS\n  p PROCESS;\n    ^^^^^^^",
        ),
        (
            ResolutionError,
            "sfConfig extends {\n  a APPLY { x 1; };\n}\n",
            "t.sf:2:5: APPLY references are not supported by sd-batch; "
            "compute the value in the description with operators, or set it directly\n"
            "  a APPLY { x 1; };\n    ^^^^^",
        ),
        (
            ResolutionError,
            "sfConfig extends {\n  a ASSERT { x 1; };\n}\n",
            "t.sf:2:5: ASSERT references are not supported by sd-batch; "
            "compute the value in the description with operators, or set it directly\n"
            "  a ASSERT { x 1; };\n    ^^^^^^",
        ),
        (
            ResolutionError,
            "sfConfig extends {\n  a CONSTANT java.lang.Integer.MAX_VALUE;\n}\n",
            "t.sf:2:5: CONSTANT java.lang.Integer.MAX_VALUE: "
            "Java constants do not exist in sd-batch\n"
            "  a CONSTANT java.lang.Integer.MAX_VALUE;\n    ^^^^^^^^",
        ),
        (
            ResolutionError,
            "sfConfig 5;\n",
            # SmartFrog: "The sfConfig attribute ... must be a Component Description, found a ..."
            "t.sf:1:1: sfConfig must be a Component Description, found a simple value; "
            "write sfConfig extends Compound { ... }\nsfConfig 5;\n^^^^^^^^",
        ),
        (
            UnresolvedReference,
            "sfConfig extends {\n  h PROPERTY x;\n}\n",
            "t.sf:2:5: property x is not set; use OPTIONAL(default) for a fallback\n"
            "  h PROPERTY x;\n    ^^^^^^^^",
        ),
    ],
)
def test_error_text(kind: type[DescriptionError], text: str, expected: str):
    error = error_of(text)
    assert type(error) is kind
    assert str(error) == expected


def test_envproperty_without_an_environment_is_refused():
    error = error_of("sfConfig extends {\n  h ENVPROPERTY HOME;\n}\n", environ=None)
    assert error.headline() == (
        "t.sf:2:5: ENVPROPERTY HOME: environment variables are not available to this "
        "description; site policy blanks the host environment for job descriptions"
    )


def test_iproperty_that_is_not_a_number():
    error = error_of("sfConfig extends { a IPROPERTY n; }", properties={"n": "ten"})
    assert error.message == "property n='ten' is not an integer"


def test_a_tbd_operand_is_an_error_at_the_operator_and_the_tbd_is_reported_too():
    error = error_of("sfConfig extends {\n  a TBD;\n  b (a + 1);\n}\n")
    assert isinstance(error, DescriptionErrors)
    assert [e.headline() for e in error.errors] == [
        "t.sf:3:5: operator + has an operand that is still TBD (to be defined); "
        "give that attribute a value first",
        "t.sf:2:3: sfConfig:a is still TBD (to be defined); "
        "give it a value here or in a description that extends this one",
    ]


def test_several_independent_errors_are_reported_together():
    error = error_of("sfConfig extends {\n  a ATTRIB nope;\n  b (1 / 0);\n  c TBD;\n}\n")
    assert isinstance(error, DescriptionErrors)
    assert [type(e) for e in error.errors] == [UnresolvedReference, ResolutionError, TbdError]
    assert error.headline() == "t.sf:2:5: unknown reference ATTRIB nope (and 2 more errors)"
    assert str(error) == (
        "t.sf:2:5: unknown reference ATTRIB nope\n  a ATTRIB nope;\n    ^^^^^^\n"
        "t.sf:3:5: division by zero\n  b (1 / 0);\n    ^\n"
        "t.sf:4:3: sfConfig:c is still TBD (to be defined); "
        "give it a value here or in a description that extends this one\n  c TBD;\n  ^"
    )


def test_every_broken_child_of_sfconfig_is_reported():
    error = error_of("sfConfig extends {\n  a extends Nope;\n  b extends Nada;\n}\n")
    assert isinstance(error, DescriptionErrors)
    assert [e.headline() for e in error.errors] == [
        "t.sf:2:13: unknown reference ATTRIB Nope",
        "t.sf:3:13: unknown reference ATTRIB Nada",
    ]


def test_a_prototype_error_names_the_prototype_where_it_is_used():
    error = error_of(
        "P extends {\n  v extends Missing;\n}\nsfConfig extends {\n  p extends P;\n}\n"
    )
    assert str(error) == (
        "t.sf:5:13: prototype P cannot be used: t.sf:2:13: unknown reference ATTRIB Missing\n"
        "  p extends P;\n            ^"
    )


def test_a_missing_include_is_named_and_located_with_the_folders_searched(tmp_path: Path):
    main = tmp_path / "main.sf"
    main.write_text('// jobs\n#include "org/smartfrog/none.sf"\nsfConfig extends { }\n')
    with pytest.raises(IncludeError) as info:
        load_file(main, include_dirs=[tmp_path / "lib"])
    from sd_batch.lang import COMPONENT_LIBRARY_DIR

    assert str(info.value) == (
        f'{main}:2:1: cannot find include "org/smartfrog/none.sf"; '
        f"searched: {tmp_path}, {tmp_path / 'lib'}, {COMPONENT_LIBRARY_DIR}\n"
        '#include "org/smartfrog/none.sf"\n^^^^^^^^'
    )


def test_an_include_cycle_is_reported_with_its_chain(tmp_path: Path):
    (tmp_path / "a.sf").write_text('#include "b.sf"\nsfConfig extends { }\n')
    (tmp_path / "b.sf").write_text('x 1;\n#include "a.sf"\n')
    with pytest.raises(IncludeError) as info:
        load_file(tmp_path / "a.sf")
    a, b = tmp_path / "a.sf", tmp_path / "b.sf"
    assert str(info.value) == (
        f'{b}:2:1: include cycle: "a.sf" is already being included; chain: {a} -> {b} -> {a}\n'
        '#include "a.sf"\n^^^^^^^^'
    )


def test_an_unreadable_file_is_a_description_error(tmp_path: Path):
    with pytest.raises(DescriptionError) as info:
        load_file(tmp_path / "none.sf")
    assert info.value.message == f"cannot read {tmp_path / 'none.sf'}: No such file or directory"
    (tmp_path / "bin.sf").write_bytes(b"a \xff\xfe;")
    with pytest.raises(DescriptionError) as info:
        load_file(tmp_path / "bin.sf")
    assert info.value.message == f"{tmp_path / 'bin.sf'} is not UTF-8 text (invalid start byte)"


def test_a_nul_byte_in_an_include_name_is_just_not_found():
    error = error_of('#include "a\\000b"\nsfConfig extends { }\n')
    assert isinstance(error, IncludeError) and error.message == 'cannot find include "a\x00b"'


def test_references_chained_deeper_than_the_stack_allows_are_an_error_not_a_crash():
    text = "sfConfig extends {" + " ".join(f"a{i} a{i + 1};" for i in range(400)) + " a400 1; }"
    error = error_of(text)
    assert type(error) is ResolutionError
    assert error.headline() == (
        "t.sf: too deeply nested to resolve; components, vectors, extends chains or chains of "
        "references (a refers to b refers to c...) go a few hundred levels deep: flatten them"
    )


def test_description_errors_exit_with_4_and_hold_the_job():
    error = error_of("sfConfig 5;")
    assert error.exit_code == 4 and error.disposition.value == "hold"
