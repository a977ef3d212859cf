"""Every description's cost is bounded: each bomb is sent and refused by the budget it exceeds.

Each bomb runs in a child Python whose address space is capped at 1 GiB (`RLIMIT_AS`), timed
from inside: before the budgets, each one ended in a MemoryError there (or ran past a minute),
so these tests fail on the old code. The time bounds are generous for a loaded 2-core machine
(the default budgets stop the worst bomb in ~0.5 s on an idle one; jobs' in ~0.1 s).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sd_batch.config.site import parse_config
from sd_batch.errors import BudgetExceeded, ConfigError, DescriptionError, DescriptionErrors
from sd_batch.lang import JOB_BUDGETS, Budgets, load_file, load_text
from sd_batch.lang.budget import Budget

GIB = 1024**3
#: Generous wall-clock bounds: the default budgets (sd validate) and a job's ([policy]).
DEFAULT_SECONDS = 15.0
JOB_SECONDS = 10.0

RUNNER = """
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (CAP, CAP))
from sd_batch.errors import DescriptionError
from sd_batch.lang import JOB_BUDGETS, load_file
start = time.monotonic()
try:
    load_file(sys.argv[1], budgets=JOB_BUDGETS if sys.argv[2] == "job" else None)
    result = {"outcome": "valid"}
except DescriptionError as exc:
    result = {"outcome": type(exc).__name__, "budget": getattr(exc, "budget", None),
              "headline": exc.headline(), "text": str(exc)}
except MemoryError:
    result = {"outcome": "MemoryError"}
result["seconds"] = time.monotonic() - start
result["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(result))
""".replace("CAP", str(GIB))
#: `sd` in a child capped at 1 GiB.
SD = (
    "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (CAP, CAP)); "
    "from sd_batch.cli.main import main; sys.exit(main(sys.argv[1:]))"
).replace("CAP", str(GIB))


def send(path: Path, budgets: str = "default") -> dict[str, Any]:
    """Load PATH in a child capped at 1 GiB; what happened, how long it took, its peak RSS."""
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, str(path), budgets],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def refused(result: dict[str, Any], budget: str, where: str, seconds: float) -> None:
    """RESULT is BudgetExceeded of BUDGET at WHERE (`file:line:`), in time and memory."""
    assert result["outcome"] == "BudgetExceeded", result
    assert result["budget"] == budget, result
    assert result["headline"].startswith(where), result
    assert f"(budget {budget}" in result["headline"], result
    assert result["seconds"] < seconds, result
    assert result["peak_mib"] < 1024, result


# -- the bombs ------------------------------------------------------------------------------------
def prototype_bomb(levels: int = 40, used: bool = True) -> str:
    """1.9 KB: C(n) holds two copies of C(n-1), so C40 is 2^40 components."""
    lines = ["C0 extends { x 1; }"]
    lines += [f"C{n} extends {{ a extends C{n - 1}; b extends C{n - 1}; }}" for n in range(1, 41)]
    lines.append("sfConfig extends C40;" if used else "sfConfig extends { x 1; }")
    return "\n".join(lines) + "\n"


def test_forty_prototypes_each_extending_the_previous_twice_are_refused(tmp_path: Path):
    bomb = tmp_path / "job.sf"
    bomb.write_text(prototype_bomb())
    assert len(bomb.read_bytes()) < 2000
    # the copy that crosses the budget is made by some `a/b extends C(n-1)` on lines 2-41
    result = send(bomb)
    refused(result, "components", f"{bomb}:", DEFAULT_SECONDS)
    assert "more than 100000 components (budget components)" in result["headline"]
    line = int(result["headline"].split(":")[1])
    assert 2 <= line <= 41
    job = send(bomb, "job")
    refused(job, "components", f"{bomb}:", JOB_SECONDS)
    assert job["headline"].endswith(
        "description too large: more than 20000 components (budget components; "
        "raise [policy] max_components)"
    )


def test_a_bomb_in_a_prototype_sfconfig_never_uses_is_refused_as_quickly(tmp_path: Path):
    bomb = tmp_path / "library.sf"
    bomb.write_text(prototype_bomb(used=False))
    refused(send(bomb, "job"), "components", f"{bomb}:", JOB_SECONDS)
    refused(send(bomb), "components", f"{bomb}:", DEFAULT_SECONDS)


def test_string_doubling_with_concat_is_refused_before_the_string_is_built(tmp_path: Path):
    lines = ['s0 "xxxxxxxx";'] + [f"s{i} (s{i - 1} ++ s{i - 1});" for i in range(1, 41)]
    bomb = tmp_path / "concat.sf"
    bomb.write_text("sfConfig extends {\n" + "\n".join(lines) + "\n}\n")
    # s17 would be 2^17 * 8 = 1048576 characters: its operator is on line 19, column 5
    result = send(bomb)
    refused(result, "value_length", f"{bomb}:19:5: value too large: more than 1000000", 10.0)
    assert result["peak_mib"] < 200


def test_vector_doubling_with_append_is_refused(tmp_path: Path):
    lines = ["v0 [| 1, 2 |];"] + [f"v{i} (v{i - 1} <> v{i - 1});" for i in range(1, 41)]
    bomb = tmp_path / "append.sf"
    bomb.write_text("sfConfig extends {\n" + "\n".join(lines) + "\n}\n")
    # v19 would hold 2^20 items: line 21
    refused(send(bomb), "value_length", f"{bomb}:21:5:", 10.0)


def test_a_vector_holding_one_long_string_many_times_cannot_be_concatenated(tmp_path: Path):
    text = (
        'sfConfig extends {\n s0 "' + "x" * 1000 + '";\n'
        " v [" + ", ".join(["s0"] * 2000) + "];\n"
        ' t ("" ++ v);\n}\n'
    )
    bomb = tmp_path / "text.sf"
    bomb.write_text(text)
    refused(send(bomb), "value_length", f"{bomb}:4:4:", 10.0)


def test_a_vector_of_vectors_of_one_component_cannot_be_concatenated(tmp_path: Path):
    """Ten levels of `[v, v, ...]` share one component 10^5 times: tiny, until printed."""
    lines = ["  p extends P;", "  v0 [" + ", ".join(["p"] * 10) + "];"]
    lines += [f"  v{i} [" + ", ".join([f"v{i - 1}"] * 10) + "];" for i in range(1, 5)]
    bomb = tmp_path / "component.sf"
    bomb.write_text(
        'P extends { a 1; b "x"; c extends { d [| 1, 2 |]; } }\nsfConfig extends {\n'
        + "\n".join(lines)
        + '\n  t ("" ++ v4);\n}\n'
    )
    refused(send(bomb), "value_length", f"{bomb}:9:5:", 10.0)


def test_many_values_each_under_the_single_limit_exceed_the_total(tmp_path: Path):
    lines = ['s0 "' + "x" * 900 + '";', "s1 (" + " ++ ".join(["s0"] * 10) + ");"]
    lines += ["s2 (" + " ++ ".join(["s1"] * 100) + ");"]  # 900,000 characters: under 1,000,000
    lines += [f't{i} (s2 ++ "{i}");' for i in range(40)]
    bomb = tmp_path / "total.sf"
    bomb.write_text("sfConfig extends {\n" + "\n".join(lines) + "\n}\n")
    result = send(bomb)
    refused(result, "value_total", f"{bomb}:", 10.0)
    assert "more than 20000000 characters and vector items in values" in result["headline"]


def test_links_to_components_doubling_are_refused(tmp_path: Path):
    lines = ["l0 extends { x 1; }"] + [
        f"l{i} extends {{ a l{i - 1}; b l{i - 1}; }}" for i in range(1, 41)
    ]
    bomb = tmp_path / "links.sf"
    bomb.write_text("\n".join(lines) + "\nsfConfig extends { top l40; }\n")
    refused(send(bomb), "components", f"{bomb}:", DEFAULT_SECONDS)
    refused(send(bomb, "job"), "components", f"{bomb}:", JOB_SECONDS)


def test_thirty_one_files_each_including_the_next_twice_are_refused(tmp_path: Path):
    for i in range(31):
        body = f'#include "f{i + 1}.sf"\n#include "f{i + 1}.sf"\n' if i < 30 else "x 1;\n"
        (tmp_path / f"f{i}.sf").write_text(body)
    main = tmp_path / "main.sf"
    main.write_text('#include "f0.sf"\nsfConfig extends { y 1; }\n')
    result = send(main)
    refused(result, "includes", f"{tmp_path}/f", DEFAULT_SECONDS)
    assert "more than 10000 #include expansions (budget includes)" in result["headline"]
    refused(send(main, "job"), "includes", f"{tmp_path}/f", JOB_SECONDS)


def test_eight_thousand_unknown_references_stop_after_the_errors_budget(tmp_path: Path):
    bomb = tmp_path / "unknown.sf"
    bomb.write_text(
        "sfConfig extends {\n" + "".join(f"name{i} name{i}x;\n" for i in range(8000)) + "}\n"
    )
    assert 130_000 < len(bomb.read_bytes()) < 160_000
    started = time.monotonic()
    with pytest.raises(DescriptionErrors) as info:
        load_file(bomb)
    assert time.monotonic() - started < 10.0  # ~0.3 s idle; the quadratic search took > 60 s
    error = info.value
    assert error.truncated and len(error.errors) == 100
    assert error.headline() == (
        f"{bomb}:2:7: unknown reference ATTRIB name0x; did you mean name0? (and 99 more "
        "errors, and more not checked)"
    )
    assert str(error).endswith("\n... and more errors (stopped after 100)")
    assert error.errors[99].hint == "did you mean name99?"  # for every error shown


def test_eight_thousand_optional_references_cost_no_suggestion_search(tmp_path: Path):
    text = (
        "sfConfig extends {\n"
        + "".join(f"  ref{i} OPTIONAL(0) unknown{i};\n" for i in range(8000))
        + "}\n"
    )
    started = time.monotonic()
    description = load_text(text, "optional.sf")
    assert time.monotonic() - started < 10.0
    assert description.sfconfig is not None and description.sfconfig["ref7999"] == 0


def test_unknown_references_in_a_library_cost_no_more_than_the_budget_allows():
    # No sfConfig: every prototype is evaluated to show it as it would be used, and (as in
    # SmartFrog, which links sfConfig only) what fails there is no problem of the library.
    text = "Library extends {\n" + "".join(f"ref{i} unknown{i};\n" for i in range(8000)) + "}\n"
    started = time.monotonic()
    description = load_text(text, "library.sf")
    assert time.monotonic() - started < 10.0
    assert len(description.warnings) <= 100
    assert description.sfconfig is None


def test_dev_zero_is_refused_without_reading_it(tmp_path: Path):
    site = tmp_path / "site.toml"
    site.write_text("")
    for extra in ((), ("--syntax-only",)):
        done = subprocess.run(
            [sys.executable, "-c", SD, "--config", str(site), "validate", *extra, "/dev/zero"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (done.returncode, done.stdout) == (4, "")
        assert done.stderr == (
            "sd: error: cannot read /dev/zero: not a regular file; a description is a .sf file "
            "(or a pipe)\n"
        )


def test_a_file_larger_than_the_source_budget_is_refused_before_it_is_read(tmp_path: Path):
    big = tmp_path / "big.sf"
    with big.open("wb") as handle:
        handle.truncate(4 * GIB)  # sparse: costs no disk
    started = time.monotonic()
    with pytest.raises(BudgetExceeded) as info:
        load_file(big)
    assert time.monotonic() - started < 2.0
    assert info.value.budget == "source_bytes"
    assert info.value.headline() == (
        "description too large: more than 4194304 bytes of text (budget source_bytes)"
    )


def test_a_pipe_is_read_only_up_to_the_source_budget(tmp_path: Path):
    fifo = tmp_path / "pipe.sf"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", f"yes 'a 1;' > {fifo}"], stderr=subprocess.DEVNULL)
    try:
        with pytest.raises(BudgetExceeded) as info:
            load_file(fifo, budgets=Budgets(source_bytes=100_000))
        assert info.value.budget == "source_bytes"
    finally:
        writer.kill()
        writer.wait()
    fifo.unlink()
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", f"echo 'sfConfig extends {{ a 1; }}' > {fifo}"])
    try:
        assert load_file(fifo).sfconfig is not None  # `sd validate <(generate)` still works
    finally:
        writer.wait()


@pytest.mark.parametrize(
    ("opening", "closing"),
    [("[|", "|]"), ("[", "]"), ("(1 + ", ")"), ("(! ", ")")],
    ids=["vectors", "lists", "operators", "not"],
)
def test_values_nested_twenty_thousand_deep_are_refused(tmp_path: Path, opening, closing):
    depth = 20_000  # Python's stack holds about 1,000 frames
    inner = "1" if "(" in opening else ""
    bomb = tmp_path / "deep.sf"
    bomb.write_text("sfConfig extends { v " + opening * depth + inner + closing * depth + "; }\n")
    result = send(bomb)
    refused(result, "depth", f"{bomb}:1:", DEFAULT_SECONDS)
    assert "description too deeply nested: more than 500 levels" in result["headline"]


def test_components_nested_deeply_are_refused(tmp_path: Path):
    depth = 20_000
    bomb = tmp_path / "deep.sf"
    bomb.write_text("sfConfig extends " + "{ a extends " * depth + "{}" + "}" * depth + "\n")
    job = send(bomb, "job")
    refused(job, "depth", f"{bomb}:1:", JOB_SECONDS)
    assert "more than 100 levels (a component counts two)" in job["headline"]
    # each component counts two levels, so the 251st is refused where Python's stack (~1000
    # frames, which every phase recurses through) still holds: before, a RecursionError
    refused(send(bomb), "depth", f"{bomb}:1:3018:", DEFAULT_SECONDS)


def test_two_hundred_and_forty_nine_components_deep_resolve_and_render(tmp_path: Path):
    from sd_batch.lang.render import render_description, to_data

    depth = 248  # and sfConfig's own body: 249 components, 498 levels
    text = "sfConfig extends " + "{ a extends " * depth + "{ x 1; }" + " }" * depth + "\n"
    description = load_text(text, "deep.sf")
    assert description.sfconfig is not None
    assert render_description("sfConfig", description.sfconfig).count("extends") == depth + 1
    assert json.dumps(to_data(description.sfconfig)).count('"a"') == depth


def test_a_pool_of_a_hundred_million_vms_is_refused_by_sd_plan(tmp_path: Path):
    site = tmp_path / "site.toml"
    site.write_text("")
    pool = tmp_path / "pool.sf"
    pool.write_text(  # before the budget: past 30 s and 550 MB, and growing
        '#include "minimal.sf"\n'
        "sfConfig extends Pool { count 100000000; template extends LAZY MinimalVM; }\n"
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", SD, "--config", str(site), "plan", str(pool)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert time.monotonic() - started < DEFAULT_SECONDS
    assert (done.returncode, done.stdout) == (4, "")
    assert done.stderr == (
        f"sd: error: {pool}:2:25: sfConfig:count: the plan would hold more than 10000 VMs "
        "(budget vms); ask for fewer VMs, or split them into several pools\n"
    )


def test_pools_within_pools_are_counted_as_their_vms_are_planned():
    from sd_batch.config.site import BUILTIN_TEMPLATE_DIR
    from sd_batch.placement.steps import plan

    description = load_text(
        '#include "minimal.sf"\n'
        "sfConfig extends Pool { count 20; template extends LAZY Pool {\n"
        "  count 20; template extends LAZY MinimalVM; } }\n",
        "nested.sf",
        include_dirs=[BUILTIN_TEMPLATE_DIR],
    )
    assert len(list(plan(description, "p", "test:///", max_vms=400).vms())) == 400
    with pytest.raises(DescriptionError) as info:
        plan(description, "p", "test:///", max_vms=399)
    assert "the plan would hold more than 399 VMs (budget vms)" in info.value.message


# -- the budgets themselves --------------------------------------------------------------------
def test_the_site_policy_sets_a_jobs_budgets_and_names_the_key_to_raise():
    config = parse_config({"policy": {"max_components": 50, "max_description_seconds": 2.5}})
    budgets = config.policy.budgets
    assert (budgets.components, budgets.seconds, budgets.origin) == (50, 2.5, "[policy]")
    assert budgets.attributes == JOB_BUDGETS.attributes
    with pytest.raises(BudgetExceeded) as info:
        load_text(
            "P extends { a 1; b 2; }\nsfConfig extends {\n"
            + "".join(f"  p{i} extends P;\n" for i in range(60))
            + "}\n",
            "job.sf",
            budgets=budgets,
        )
    # P and sfConfig are two components each (the `extends` and its `{ }`): p46 is the 51st
    assert str(info.value) == (
        "job.sf:49:7: description too large: more than 50 components (budget components; "
        "raise [policy] max_components)\n"
        "  p46 extends P;\n"
        "      ^^^^^^^"
    )
    with pytest.raises(ConfigError, match="max_components must be a whole number >= 1"):
        parse_config({"policy": {"max_components": 0}})
    assert parse_config({}).policy.budgets == JOB_BUDGETS


def test_the_time_budget_is_read_from_an_injected_clock():
    now = [0.0]
    budget = Budget(Budgets(seconds=5.0), clock=lambda: now[0])
    budget.work(10_000, None)
    now[0] = 6.0
    with pytest.raises(Exception) as info:
        budget.work(10_000, None)
    error = info.value.error  # type: ignore[attr-defined]
    assert isinstance(error, BudgetExceeded) and error.budget == "seconds"
    assert error.headline() == (
        "description too slow to resolve: more than 5.0 seconds (budget seconds)"
    )


def test_the_defaults_take_a_generated_megabyte_description_four_times_over():
    """The benchmark's generated 1 MB description (a library, 830 pools of VMs, every feature)
    fits a quarter of sd validate's budgets: they are far above anything real."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        from language import generate
    finally:
        sys.path.pop(0)
    default = Budgets()
    quarter = Budgets(
        components=default.components // 4,
        attributes=default.attributes // 4,
        value_total=default.value_total // 4,
        source_bytes=default.source_bytes // 4,
    )
    assert load_text(generate(250_000), "bench.sf", budgets=quarter).sfconfig is not None


# -- sd validate's options ---------------------------------------------------------------------
def sd(tmp_path: Path, *argv: str) -> tuple[int, str, str]:
    import io

    from sd_batch.cli.main import Environment, main

    site = tmp_path / "site.toml"
    site.write_text("[policy]\nmax_components = 5\n")
    out, err = io.StringIO(), io.StringIO()
    code = main(["--config", str(site), *argv], Environment(stdout=out, stderr=err, environ={}))
    return code, out.getvalue(), err.getvalue()


def test_sd_validate_raises_a_budget_or_takes_the_sites_for_jobs(tmp_path: Path):
    job = tmp_path / "job.sf"
    job.write_text(
        "sfConfig extends {\n" + "".join(f" c{i} extends {{ }}\n" for i in range(9)) + "}\n"
    )
    assert sd(tmp_path, "validate", str(job))[0] == 0
    code, out, err = sd(tmp_path, "validate", "--budget", "components=10", str(job))
    assert (code, out) == (4, "")
    assert err.startswith(
        f"sd: error: {job}:6:5: description too large: more than 10 components "
        "(budget components; raise it with --budget components=N)\n"
    )
    code, out, _err = sd(tmp_path, "validate", "--json", "--budget", "components=10", str(job))
    (error,) = json.loads(out)["errors"]
    assert (code, error["kind"], error["budget"], error["line"]) == (
        4,
        "BudgetExceeded",
        "components",
        6,
    )
    code, out, err = sd(tmp_path, "validate", "--job-budgets", str(job))
    assert (code, out) == (4, "")
    assert err.startswith(
        f"sd: error: {job}:3:13: description too large: more than 5 components "
        "(budget components; raise [policy] max_components)\n"
    )
    code, _out, err = sd(tmp_path, "validate", "--budget", "sizes=1", str(job))
    assert (code, err) == (
        2,
        "sd: error: --budget sizes=1: expected NAME=N; names: components, "
        "attributes, value_length, value_total, includes, depth, errors, "
        "source_bytes, seconds\n",
    )
    code, _out, err = sd(tmp_path, "validate", "--budget", "errors=0", str(job))
    assert (code, err) == (2, "sd: error: --budget: budget errors must be positive\n")


def test_sd_validate_says_when_the_errors_budget_stopped_it(tmp_path: Path):
    job = tmp_path / "job.sf"
    job.write_text("sfConfig extends {\n" + "".join(f" r{i} x{i};\n" for i in range(50)) + "}\n")
    code, out, err = sd(tmp_path, "validate", "--budget", "errors=3", str(job))
    assert (code, out) == (4, "")
    assert err.startswith(f"sd: error: {job}:2:5: unknown reference ATTRIB x0\n")
    assert err.endswith("\n... and more errors (stopped after 3)\n")
    assert err.count("unknown reference") == 3
    code, out, _err = sd(tmp_path, "validate", "--json", "--budget", "errors=3", str(job))
    data = json.loads(out)
    assert (code, len(data["errors"]), data["more_errors"]) == (4, 3, True)


def test_the_documented_policy_table_is_the_default():
    import tomllib

    from sd_batch.vm.site_policy import SitePolicy

    text = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    block = text.split("```toml\n", 1)[1].split("```", 1)[0]
    assert "max_components" in block
    assert parse_config(tomllib.loads(block)).policy == SitePolicy()


def test_an_error_on_a_megabyte_line_quotes_a_window_of_it():
    """A prototype with a long unknown name, extended a hundred times on one 1 MB line: each
    error is shown in a few hundred characters, not a megabyte (the place says where)."""
    name = "n" * 5000
    text = (
        f"P extends {{ x {name}; }}\nsfConfig extends {{ {'a' * 1_000_000} 1; "
        + " ".join(f"p{i} extends P;" for i in range(100))
        + " }\n"
    )
    with pytest.raises(DescriptionErrors) as info:
        load_text(text, "wide.sf")
    shown = str(info.value)
    assert len(info.value.errors) == 100 and len(shown) < 100 * 2500
    first = shown.splitlines()
    assert first[0].startswith("wide.sf:1:15: unknown reference ATTRIB nnnn")
    assert "n..." in first[0] and len(first[0]) < 1100
    assert first[1] == "P extends { x " + name[:80] + "..."
    assert first[2] == " " * 14 + "^" * 80


def test_functions_doubling_a_string_are_counted_against_the_value_budgets():
    # SmartFrog's standard functions (concat here) make values at link time: each result is
    # counted as any value made there, so forty doublings stop at the job's value_length.
    links = "".join(
        f"    c{i} extends concat {{ a ATTRIB c{i - 1}; b ATTRIB c{i - 1}; }}\n"
        for i in range(1, 41)
    )
    text = f'#include "functions.sf"\nsfConfig extends {{\n    c0 "{"x" * 100}";\n{links}}}\n'
    started = time.monotonic()
    with pytest.raises(BudgetExceeded) as caught:
        load_text(text, "concat.sf", budgets=JOB_BUDGETS)
    assert time.monotonic() - started < 10.0
    assert caught.value.budget == "value_length"
    assert caught.value.headline().startswith("concat.sf:13:9: value too large")  # at c10
