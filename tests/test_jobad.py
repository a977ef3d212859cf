"""Job ads through the real bindings: HTCondor's quoting rules (the manual's own examples),
the ad a hook reads, the lines it prints, and the ad `sd run` makes as a schedd would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sd_batch.condor import jobad
from sd_batch.condor.jobad import (
    apply_job_transform,
    format_updates,
    job_ad_from_submit,
    join_arguments,
    join_environment,
    parse_job_ad,
    parse_submit_arguments,
    parse_submit_environment,
    split_arguments,
    split_arguments_v1,
    split_environment,
    split_environment_v1,
)
from sd_batch.errors import JobAdError, SdError

# The condor_submit manual page (man-pages/htcondor-jdl "arguments" and "environment"): each
# submit-file value and the arguments / environment entries the manual says it produces.
MANUAL_ARGUMENTS = [
    (r"one \"two\" 'three'", ("one", '"two"', "'three'")),  # old syntax
    ('"3 simple arguments"', ("3", "simple", "arguments")),
    ("\"one 'two with spaces' 3\"", ("one", "two with spaces", "3")),
    (
        "\"one \"\"two\"\" 'spacey ''quoted'' argument'\"",
        ("one", '"two"', "spacey 'quoted' argument"),
    ),
]
MANUAL_ENVIRONMENT = [
    (
        "\"one=1 two=\"\"2\"\" three='spacey ''quoted'' value'\"",
        {"one": "1", "two": '"2"', "three": "spacey 'quoted' value"},
    ),
    (
        "one=1;two=2;three=\"quotes have no 'special' meaning\"",  # old syntax
        {"one": "1", "two": "2", "three": "\"quotes have no 'special' meaning\""},
    ),
]


def submit(tmp_path: Path, body: str, **kwargs: Any) -> list[str]:
    return job_ad_from_submit(
        "executable = run.sh\n" + body, submit_dir=tmp_path, owner="alice", **kwargs
    )


@pytest.mark.parametrize(("value", "expected"), MANUAL_ARGUMENTS)
def test_the_manuals_argument_examples_parse_as_the_manual_says(
    value: str, expected: tuple[str, ...]
) -> None:
    assert parse_submit_arguments(value) == expected


@pytest.mark.parametrize(("value", "expected"), MANUAL_ARGUMENTS)
def test_the_manuals_argument_examples_survive_condor_submit_into_the_job_ad(
    tmp_path: Path, value: str, expected: tuple[str, ...]
) -> None:
    [text] = submit(tmp_path, f"arguments = {value}\nqueue\n")
    assert parse_job_ad(text).arguments == expected


@pytest.mark.parametrize(("value", "expected"), MANUAL_ENVIRONMENT)
def test_the_manuals_environment_examples_parse_as_the_manual_says(
    value: str, expected: dict[str, str]
) -> None:
    assert dict(parse_submit_environment(value)) == expected


@pytest.mark.parametrize(("value", "expected"), MANUAL_ENVIRONMENT)
def test_the_manuals_environment_examples_survive_condor_submit_into_the_job_ad(
    tmp_path: Path, value: str, expected: dict[str, str]
) -> None:
    [text] = submit(tmp_path, f"environment = {value}\nqueue\n")
    assert parse_job_ad(text).env == expected


def test_old_syntax_args_split_on_whitespace_only() -> None:
    assert split_arguments_v1("  a\t'b c'  \"d\"\n") == ("a", "'b", "c'", '"d"')


def test_a_quote_may_start_in_the_middle_of_an_argument() -> None:
    assert split_arguments("x'y z'w '' a''b") == ("xy zw", "", "ab")


def test_an_unbalanced_quote_is_a_job_ad_error() -> None:
    with pytest.raises(JobAdError, match="unbalanced quote"):
        split_arguments("one 'two")


@pytest.mark.parametrize(
    "args",
    [("a",), ("", "x y", "it's", "tab\there", "new\nline", "''"), ("'lead", "trail'", "a b'c")],
)
def test_join_arguments_is_the_inverse_of_split(args: tuple[str, ...]) -> None:
    assert split_arguments(join_arguments(args)) == args


def test_join_arguments_writes_what_condor_submit_writes(tmp_path: Path) -> None:
    [text] = submit(
        tmp_path, "arguments = \"one \"\"two\"\" 'spacey ''quoted'' argument'\"\nqueue\n"
    )
    written = parse_job_ad(text).get("Arguments")
    assert join_arguments(split_arguments(written)) == written


def test_environment_later_entries_win_and_missing_equals_is_an_error() -> None:
    assert split_environment("A=1 B=2 A=3") == (("A", "3"), ("B", "2"))
    assert dict(split_environment(join_environment([("X", "a b"), ("Y", "it's")]))) == {
        "X": "a b",
        "Y": "it's",
    }
    with pytest.raises(JobAdError, match="missing '='"):
        split_environment("A=1 B")


def test_old_syntax_env_reads_a_leading_delimiter_and_newlines() -> None:
    assert split_environment_v1("|A=1;x|B=2") == (("A", "1;x"), ("B", "2"))
    assert split_environment_v1("A=1\n  B=2;;C=") == (("A", "1"), ("B", "2"), ("C", ""))


def test_a_v1_only_ad_uses_args_and_env_with_its_env_delimiter() -> None:
    ad = parse_job_ad(
        'ClusterId = 4\nProcId = 2\nCmd = "/bin/echo"\nArgs = "a  b"\n'
        'Env = "X=1|Y=a;b"\nEnvDelim = "|"\n'
    )
    assert ad.arguments == ("a", "b")
    assert ad.environment == (("X", "1"), ("Y", "a;b"))
    assert ad.global_job_id == "4.2"  # no GlobalJobId: the documented fallback


def test_arguments_wins_over_args_as_in_the_starter() -> None:
    ad = parse_job_ad('ClusterId = 1\nProcId = 0\nCmd = "x"\nArgs = "old"\nArguments = "new"\n')
    assert ad.arguments == ("new",)


def test_a_submitted_job_ad_has_what_a_schedd_would_add(tmp_path: Path) -> None:
    texts = submit(
        tmp_path,
        '+SDVMDescription = "debian-batch"\nrequest_memory = 2GB\nrequest_cpus = 3\n'
        "request_disk = 1GB\noutput = out.txt\nerror = err.txt\nqueue 2\n",
        cluster_id=42,
        schedd_name="submit.example.org",
        qdate=1700000000,
    )
    assert len(texts) == 2
    ad = parse_job_ad(texts[1])
    assert ad.global_job_id == "submit.example.org#42.1#1700000000"
    assert (ad.cluster_id, ad.proc_id, ad.owner) == (42, 1, "alice")
    assert ad.cmd == str(tmp_path / "run.sh")
    assert ad.iwd == str(tmp_path)
    assert (ad.out, ad.err, ad.sd_description) == ("out.txt", "err.txt", "debian-batch")
    assert (ad.request_memory_mib, ad.request_cpus, ad.request_disk_kib) == (2048, 3, 1048576)
    assert ad.text == texts[1]


def test_the_site_transform_sets_the_hook_keyword_and_requires_smartdomains(
    tmp_path: Path,
) -> None:
    [text] = submit(
        tmp_path, '+SDVMDescription = "debian-batch"\nrequirements = Memory > 5\nqueue\n'
    )
    ad = parse_job_ad(text)
    assert ad.get("HookKeyword") == "SMARTDOMAINS"
    requirements = ad.expression("Requirements")
    assert requirements is not None
    assert requirements.startswith("((Memory > 5) && (TARGET.Arch")
    assert ") && (TARGET.HasSmartDomains =?= true) && (TARGET.Memory >= " in requirements


def test_a_job_without_sdvmdescription_is_left_alone_by_the_transform(tmp_path: Path) -> None:
    [text] = submit(tmp_path, "queue\n")
    ad = parse_job_ad(text)
    assert ad.get("HookKeyword") is None
    assert "HasSmartDomains" not in (ad.expression("Requirements") or "")


def test_transform_expands_string_attributes_without_quotes() -> None:
    ad = 'ClusterId = 1\nProcId = 0\nCmd = "x"\nWho = "bob"\nN = 1 + 2\n'
    out = apply_job_transform(ad, 'SET Greeting "hi $(MY.Who)"\nSET M = $(MY.N) * 2\nDEFAULT N 7')
    parsed = parse_job_ad(out)
    # expansion is textual: `1 + 2 * 2`, which is why the site transform parenthesizes
    assert (parsed.get("Greeting"), parsed.get("M"), parsed.get("N")) == ("hi bob", 5, 3)


def test_transform_refuses_statements_it_does_not_implement() -> None:
    with pytest.raises(JobAdError, match="not supported"):
        apply_job_transform('ClusterId = 1\nProcId = 0\nCmd = "x"\n', "EVALSET A 1")


def test_a_bad_submit_description_is_a_job_ad_error(tmp_path: Path) -> None:
    with pytest.raises(JobAdError, match="Unbalanced quote"):
        submit(tmp_path, 'arguments = "one \'two"\nqueue\n')
    with pytest.raises(JobAdError, match="not valid: HTCondor's HTCondorValueError"):
        submit(tmp_path, "this is not a submit command\nqueue\n")


def test_transform_requirements_that_error_do_not_apply() -> None:
    ad = 'ClusterId = 1\nProcId = 0\nCmd = "x"\n'
    assert apply_job_transform(ad, "REQUIREMENTS 1/0 == 1\nSET A 1") == apply_job_transform(ad, "")
    with pytest.raises(JobAdError, match="cannot parse 'REQUIREMENTS \\('"):
        apply_job_transform(ad, "REQUIREMENTS (\nSET A 1")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("this is not an ad", "line 1 is not 'Name = value'"),
        ('ClusterId = 1\nProcId = 0\nCmd = "x"\nBroken = (\n', "line 4: the value of Broken"),
        ('ClusterId = 1\nProcId = 0\nCmd = "unterminated\n', "line 3: the value of Cmd"),
        ('Cmd = "x"\n', "no integer ClusterId"),
        ("ClusterId = 1\nProcId = 0\n", "no Cmd"),
        ('ClusterId = 1\nProcId = 0\nCmd = "x"\nArguments = "a \'b"\n', "unbalanced quote"),
    ],
)
def test_bad_ad_text_is_an_sd_error_saying_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(SdError, match=message):
        parse_job_ad(text)


def test_get_evaluates_any_attribute_and_undefined_is_the_default() -> None:
    ad = parse_job_ad(
        'ClusterId = 1\nProcId = 0\nCmd = "x"\nImageSize = 3000\n'
        "RequestMemory = ifthenelse(MemoryUsage isnt undefined, MemoryUsage, "
        '(ImageSize + 1023) / 1024)\nL = { 1, "a" }\nU = undefined\nE = 1/0\n'
    )
    assert ad.request_memory_mib == 3
    assert ad.get("requestmemory") == 3  # ClassAd names are case-insensitive
    assert ad.get("L") == [1, "a"]
    assert ad.get("U", "dflt") == "dflt"
    assert ad.get("Missing") is None
    with pytest.raises(JobAdError, match="evaluates to an error"):
        ad.get("E")


@pytest.mark.parametrize(
    "value", ["plain", 'with "quotes"', "back\\slash", "trailing\\", "tab\tand é", ""]
)
def test_format_updates_round_trips_through_the_old_syntax_parser(value: str) -> None:
    import classad2

    text = format_updates({"Cmd": value, "HookStatusCode": 0, "Flag": True, "Ratio": 0.25})
    ad = classad2.parseOne(text, classad2.ParserType.Old)
    assert ad.eval("Cmd") == value
    assert (ad.eval("HookStatusCode"), ad.eval("Flag"), ad.eval("Ratio")) == (0, True, 0.25)


def test_format_updates_keeps_the_callers_order() -> None:
    text = format_updates({"Zeta": 1, "Alpha": "a", "Mid": False})
    assert text == 'Zeta = 1\nAlpha = "a"\nMid = false\n'


@pytest.mark.parametrize(
    ("updates", "error"),
    [
        ({"Msg": "two\nlines"}, ValueError),
        ({"bad name": 1}, ValueError),
        ({"X": float("nan")}, ValueError),
        ({"X": [1, 2]}, TypeError),
    ],
)
def test_format_updates_refuses_what_a_hook_line_cannot_carry(
    updates: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        format_updates(updates)  # type: ignore[arg-type]


def test_hooks_parse_and_print_without_importing_the_v1_bindings() -> None:
    code = (
        "import sys\n"
        "from sd_batch.condor.jobad import parse_job_ad, format_updates\n"
        "parse_job_ad('ClusterId = 1\\nProcId = 0\\nCmd = \"x\"\\n')\n"
        "format_updates({'A': 1})\n"
        "print(sorted(m for m in ('htcondor', 'classad') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={}
    )
    assert done.stdout.strip() == "[]"
    assert done.stderr == ""  # no "no condor_config" warning into the starter's log


def test_condor_param_reads_the_machines_config(tmp_path: Path) -> None:
    config = tmp_path / "condor_config"
    config.write_text("SMARTDOMAINS_HOME = /opt/x\nSMARTDOMAINS_HELPER = $(SMARTDOMAINS_HOME)/h\n")
    code = (
        "from sd_batch.condor.jobad import condor_param\n"
        "print(condor_param('SMARTDOMAINS_HELPER'), condor_param('NOPE_NOT_SET', 'dflt'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"CONDOR_CONFIG": str(config)},
    )
    assert done.stdout.split() == ["/opt/x/h", "dflt"]


def test_the_transform_constant_is_the_one_job_ad_from_submit_applies() -> None:
    assert "HookKeyword" in jobad.SMARTDOMAINS_TRANSFORM
