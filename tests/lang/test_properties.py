"""Properties: rendering is stable through parsing, and no input makes the language layer crash.

"Crash" means any exception other than `DescriptionError`: a user's description, however
broken, must come back as a located error (a held job, exit code 4), never a traceback.
"""

from __future__ import annotations

import os
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sd_batch.errors import DescriptionError
from sd_batch.lang import TBD, Component, Double, Long, Reference, RefPart, load_text
from sd_batch.lang.formatting import KEYWORDS
from sd_batch.lang.model import INT_RANGE
from sd_batch.lang.render import render_description

#: Modest by default (the suite stays fast); SD_HYPOTHESIS_EXAMPLES=5000 for a deeper hunt.
FAST = settings(
    max_examples=int(os.environ.get("SD_HYPOTHESIS_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# -- resolved trees --------------------------------------------------------------------------------
words = st.from_regex(r"[A-Za-z_$][A-Za-z0-9._\-+@#~$%^&]{0,8}", fullmatch=True).filter(
    lambda w: w not in KEYWORDS
)
quoted = st.text(max_size=8).filter(lambda s: not s.startswith("--"))  # `--` marks anonymous
names = st.one_of(words, words, quoted)

ints = st.integers(INT_RANGE.start, INT_RANGE.stop - 1)
floats = st.floats(allow_nan=False, allow_infinity=False)
primitives = st.one_of(
    ints,
    ints.map(Long),
    floats,
    floats.map(Double),
    st.text(max_size=12),
    st.booleans(),
    st.none(),
    st.just(TBD),
    st.binary(max_size=6),
)
ref_parts = st.one_of(
    st.sampled_from([RefPart("PARENT"), RefPart("ROOT"), RefPart("THIS")]),
    st.builds(RefPart, st.sampled_from(["ATTRIB", "HERE", "HOST", "PROPERTY"]), names),
)
references = st.builds(
    Reference,
    st.lists(ref_parts, min_size=1, max_size=3).map(tuple),
    lazy=st.just(True),
    optional=st.booleans(),
    default=st.one_of(ints, st.text(max_size=4), st.none()),
)
data_references = st.builds(
    Reference, st.lists(ref_parts, min_size=1, max_size=3).map(tuple), data=st.just(True)
)
vectors = st.recursive(
    st.lists(st.one_of(primitives, data_references), max_size=4),
    lambda inner: st.lists(st.one_of(primitives, inner), max_size=4),
    max_leaves=10,
)
simple_values = st.one_of(primitives, vectors, references, data_references)


@st.composite
def components(draw, depth: int = 0) -> Component:
    component = Component(is_lazy=draw(st.booleans()) and depth > 0)
    component.is_data = not component.is_lazy and draw(st.booleans()) and depth > 0
    count = draw(st.integers(0, 5))
    for index in range(count):
        name = draw(st.one_of(names, st.just(f"--{index}")))
        if depth < 2 and draw(st.integers(0, 4)) == 0:
            component.set(name, draw(components(depth + 1)))
        else:
            component.set(name, draw(simple_values))
    return component


@FAST
@given(components())
def test_render_parse_render_is_stable(tree: Component):
    text = render_description("sfConfig", tree)
    description = load_text(text, "r.sf", complete=False, properties={}, environ={})
    assert description.sfconfig is not None
    assert render_description("sfConfig", description.sfconfig) == text


# -- hostile input ---------------------------------------------------------------------------------
TOKENS = [
    *"{}[]();:,|!<>=+-*/#\"'\\\n \t.0123456789",
    "extends",
    "LAZY",
    "DATA",
    "NULL",
    "TBD",
    "ATTRIB",
    "PARENT",
    "ROOT",
    "THIS",
    "HERE",
    "HOST",
    "PROCESS",
    "PROPERTY",
    "ENVPROPERTY",
    "IPROPERTY",
    "OPTIONAL",
    "APPLY",
    "ASSERT",
    "CONSTANT",
    "IF",
    "THEN",
    "ELSE",
    "FI",
    "VAR",
    "true",
    "false",
    "[|",
    "|]",
    "--",
    "##",
    "#include",
    "#include?",
    '"components.sf"',
    '"/etc/passwd"',
    "sfConfig",
    "a",
    "b",
    "a:b",
    "1e999",
    "4L",
    "1.5D",
    "#HEX#0f#",
    "#B64#a#",
    "\\101",
    "//",
    "/*",
    "*/",
    "(1 + 2)",
    "(a / 0)",
]
SAMPLES = [
    """#include "components.sf"
simpleScheduler extends Scheduler { hosts [|"host1", "host2", "host3"|]; }
VMs2Dispatch extends Schedulee { scheduler LAZY ATTRIB simpleScheduler;
    - extends VM { memory 256; } }
sfConfig extends Compound { sched extends simpleScheduler; vms extends VMs2Dispatch; }
""",
    """base 8080; A extends { n extends { x 1; } n:y 2; } B extends A, { z 3; };
sfConfig extends B {
    a LAZY PARENT:base; b (ATTRIB base + 1); c [b, (b * 2), "s"]; d IF (b > 1) THEN "x" ELSE "y" FI;
    e DATA x:y; f OPTIONAL(5) nope; g ##multi
line#; h "esc\\t\\101"; i 4L; j 1.5D; k [| 1, [| 2 |] |]; -- extends LAZY A; l THIS:a;
    m ("a" ++ b); nn ([|1|] <> [|2|]); o (! (1 == 2)); p extends NULL; q ROOT:base;
}
""",
]


def must_not_crash(text: str) -> None:
    try:
        description = load_text(text, "m.sf", properties={"p": "1"}, environ={"HOME": "/h"})
    except DescriptionError:
        return
    if description.sfconfig is not None:  # what loads must render too
        render_description("sfConfig", description.sfconfig)


@FAST
@given(st.lists(st.sampled_from(TOKENS), max_size=40).map(" ".join))
def test_random_token_soup_raises_only_description_errors(text: str):
    must_not_crash(text)


@FAST
@given(st.text(alphabet=string.printable + "é€\x00", max_size=80))
def test_random_text_raises_only_description_errors(text: str):
    must_not_crash(text)


@st.composite
def mutated(draw) -> str:
    text: str = draw(st.sampled_from(SAMPLES))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["insert", "delete", "duplicate", "replace"]))
        span = draw(st.integers(1, 12))
        if kind == "insert":
            text = text[:at] + draw(st.sampled_from(TOKENS)) + text[at:]
        elif kind == "delete":
            text = text[:at] + text[at + span :]
        elif kind == "duplicate":
            text = text[:at] + text[at : at + span] * 2 + text[at + span :]
        else:
            text = text[:at] + draw(st.sampled_from(TOKENS)) + text[at + span :]
    return text


@FAST
@given(mutated())
def test_mutated_descriptions_raise_only_description_errors(text: str):
    must_not_crash(text)


def test_the_mutation_samples_themselves_resolve():
    for sample in SAMPLES:
        assert load_text(sample, "s.sf").sfconfig is not None
