"""`sd validate`, `sd render`, `sd templates` in-process: exit codes, output lines, JSON shapes."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from sd_batch.cli.main import Environment, main
from sd_batch.config.site import BUILTIN_TEMPLATE_DIR
from sd_batch.lang import COMPONENT_LIBRARY_DIR, load_file

from conftest import Run, sd_in_process

SEED = """#include "components.sf"
simpleScheduler extends Scheduler { hosts [|"host1", "host2", "host3"|]; }
VMs2Dispatch extends Schedulee { scheduler LAZY ATTRIB simpleScheduler;
    - extends VM { memory 256; } }
sfConfig extends Compound { sched extends simpleScheduler; vms extends VMs2Dispatch; }
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """An empty site config, so the host's own config never leaks into these tests."""
    path = tmp_path / "site.toml"
    path.write_text("")
    return path


def sd(site: Path, *argv: str, environ: dict[str, str] | None = None) -> Run:
    return sd_in_process(environ or {}, "--config", str(site), *argv)


def write(tmp_path: Path, text: str, name: str = "job.sf") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# -- sd validate -----------------------------------------------------------------------------------
def test_validate_prints_one_summary_line(site: Path, tmp_path: Path) -> None:
    job = write(tmp_path, SEED)
    assert sd(site, "validate", job) == (
        0,
        f"{job}: valid; sfConfig: 5 components (1 VMs), 32 attributes; 2 files\n",
        "",
    )


def test_validate_json_of_a_valid_description(site: Path, tmp_path: Path) -> None:
    job = write(tmp_path, SEED)
    code, out, err = sd(site, "validate", "--json", job)
    assert (code, err) == (0, "")
    assert json.loads(out) == {
        "file": job,
        "valid": True,
        "summary": "sfConfig: 5 components (1 VMs), 32 attributes",
        "files": [job, str(COMPONENT_LIBRARY_DIR / "components.sf")],
        "warnings": [],
        "tbd": [],
    }


def test_validate_error_shows_location_source_line_and_caret_and_exits_4(
    site: Path, tmp_path: Path
) -> None:
    job = write(tmp_path, "sfConfig extends {\n  port 80;\n  url ATTRIB prot;\n}\n")
    assert sd(site, "validate", job) == (
        4,
        "",
        f"sd: error: {job}:3:7: unknown reference ATTRIB prot; did you mean port?\n"
        "  url ATTRIB prot;\n      ^^^^^^\n",
    )


def test_validate_json_lists_every_error(site: Path, tmp_path: Path) -> None:
    job = write(tmp_path, "sfConfig extends {\n  a ATTRIB nope;\n  b TBD;\n}\n")
    code, out, err = sd(site, "validate", "--json", job)
    assert (code, err) == (4, "")
    assert json.loads(out) == {
        "file": job,
        "valid": False,
        "errors": [
            {
                "message": "unknown reference ATTRIB nope",
                "kind": "UnresolvedReference",
                "file": job,
                "line": 2,
                "column": 5,
            },
            {
                "message": "sfConfig:b is still TBD (to be defined)",
                "kind": "TbdError",
                "file": job,
                "line": 3,
                "column": 3,
                "hint": "give it a value here or in a description that extends this one",
                "path": "sfConfig:b",
            },
        ],
    }


def test_validate_syntax_only_does_not_follow_includes(site: Path, tmp_path: Path) -> None:
    job = write(tmp_path, '#include "not/there.sf"\nsfConfig extends Missing;\n')
    assert sd(site, "validate", "--syntax-only", job) == (0, f"{job}: syntax OK\n", "")
    code, out, _err = sd(site, "validate", "--syntax-only", "--json", job)
    assert (code, json.loads(out)) == (0, {"file": job, "valid": True, "syntax_only": True})


def test_validate_syntax_only_reports_syntax_errors(site: Path, tmp_path: Path) -> None:
    job = write(tmp_path, "a (1 + 2 * 3);\n")
    assert sd(site, "validate", "--syntax-only", job) == (
        4,
        "",
        f"sd: error: {job}:1:10: unexpected '*'; expected ')' or '+'\na (1 + 2 * 3);\n         ^\n",
    )


def test_allow_tbd_accepts_and_lists_what_is_left(site: Path, tmp_path: Path) -> None:
    job = write(tmp_path, "sfConfig extends { a TBD; n extends { b TBD; } }\n")
    assert sd(site, "validate", "--allow-tbd", job) == (
        0,
        f"{job}: valid; sfConfig: 2 components (0 VMs), 3 attributes; 1 file; "
        "2 TBD: sfConfig:a, sfConfig:n:b\n",
        "",
    )
    code, out, _err = sd(site, "validate", "--allow-tbd", "--json", job)
    assert json.loads(out)["tbd"] == [
        {"path": "sfConfig:a", "where": f"{job}:1:20"},
        {"path": "sfConfig:n:b", "where": f"{job}:1:39"},
    ]


def test_warnings_for_unused_broken_prototypes_go_to_stderr(site: Path, tmp_path: Path) -> None:
    job = write(tmp_path, "Bad extends Missing;\nsfConfig extends { a 1; }\n")
    assert sd(site, "validate", job) == (
        0,
        f"{job}: valid; sfConfig: 1 components (0 VMs), 1 attributes; 1 file; 1 warning\n",
        f"sd: warning: {job}:1:13: unknown reference ATTRIB Missing "
        "(in a prototype sfConfig does not use)\n",
    )


def test_a_library_without_sfconfig_is_summarised(site: Path) -> None:
    library = str(COMPONENT_LIBRARY_DIR / "components.sf")
    prototypes = sum(1 for _ in load_file(library).root.children())
    code, out, err = sd(site, "validate", library)
    assert (code, err) == (0, "")
    assert out == f"{library}: valid; no sfConfig: a library of {prototypes} prototypes; 1 file\n"


def test_include_dirs_and_properties_and_the_injected_environment(
    site: Path, tmp_path: Path
) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "protos.sf").write_text("P extends { flavour PROPERTY flavour; }\n")
    job = write(tmp_path, '#include "/protos.sf"\nsfConfig extends P { home ENVPROPERTY HOME; }\n')
    code, out, err = sd(
        site,
        "render",
        "--json",
        "-I",
        str(tmp_path / "lib"),
        "-D",
        "flavour=qemu",
        job,
        environ={"HOME": "/home/u"},
    )
    assert (code, err) == (0, "")
    assert json.loads(out) == {"flavour": "qemu", "home": "/home/u"}


def test_envproperty_never_reads_the_real_process_environment(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SD_TEST_SECRET", "leak")
    job = write(tmp_path, 'sfConfig extends { s OPTIONAL("none") ENVPROPERTY SD_TEST_SECRET; }\n')
    assert json.loads(sd(site, "render", "--json", job)[1]) == {"s": "none"}


# -- usage and robustness --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["validate"], "sd validate: the following arguments are required: FILE"),
        (["validate", "-D", "novalue", "x.sf"], "-D novalue: expected NAME=VALUE"),
        (["validate", "--bogus", "x.sf"], "sd: unrecognized arguments: --bogus"),
    ],
)
def test_usage_errors_exit_2_with_one_line(site: Path, argv: list[str], message: str) -> None:
    code, out, err = sd(site, *argv)
    assert (code, out) == (2, "")
    assert err.startswith(f"sd: error: {message}") and err.count("\n") == 1


def test_a_missing_file_is_a_description_error(site: Path, tmp_path: Path) -> None:
    missing = str(tmp_path / "none.sf")
    assert sd(site, "validate", missing) == (
        4,
        "",
        f"sd: error: cannot read {missing}: No such file or directory\n",
    )


def test_no_traceback_without_debug_and_one_with_it(site: Path, tmp_path: Path) -> None:
    job = write(tmp_path, "sfConfig extends { a (1 / 0); }\n")
    code, _out, err = sd(site, "validate", job)
    assert code == 4 and "Traceback" not in err
    code, _out, err = sd(site, "--debug", "validate", job)
    assert code == 4 and "Traceback (most recent call last)" in err
    assert err.rstrip().endswith("^")


def test_a_description_too_deep_to_resolve_is_an_error_not_a_traceback(
    site: Path, tmp_path: Path
) -> None:
    chain = " ".join(f"a{i} a{i + 1};" for i in range(500))
    job = write(tmp_path, f"sfConfig extends {{ {chain} a500 1; }}\n")
    code, out, err = sd(site, "validate", job)
    assert (code, out) == (4, "")
    assert err.startswith(f"sd: error: {job}: too deeply nested to resolve; ")


def test_a_tree_too_deep_to_print_is_an_error_not_a_traceback(site: Path, tmp_path: Path) -> None:
    job = write(tmp_path, "sfConfig extends { v " + "[|" * 450 + "|]" * 450 + "; }\n")
    code, out, err = sd(site, "render", job)
    assert (code, out, err) == (
        4,
        "",
        f"sd: error: {job}: too deeply nested to print; flatten its nesting\n",
    )


def test_help_works(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = sd(site)
    assert code == 0 and out.startswith("usage: sd ")
    assert "Exit codes: 0 ok, 2 usage, 3 site config, 4 description" in out
    for argv in (["--help"], ["validate", "--help"], ["render", "--help"], ["templates", "-h"]):
        assert sd(site, *argv)[0] == 0
    assert "--syntax-only" in capsys.readouterr().out


# -- sd render -------------------------------------------------------------------------------------
RENDER = """base 1;
sfConfig extends {
    live LAZY PARENT:base;
    n extends { v [| 1, [| 2, "x" |] |]; deep extends { ok true; } }
    s "text";
    copy ATTRIB base;
}
"""


def test_render_json_keeps_order_nests_objects_and_keeps_lazy_refs(
    site: Path, tmp_path: Path
) -> None:
    code, out, err = sd(site, "render", "--json", write(tmp_path, RENDER))
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data == {
        "live": {"$ref": "LAZY PARENT:base"},
        "n": {"v": [1, [2, "x"]], "deep": {"ok": True}},
        "s": "text",
        "copy": 1,
    }
    assert list(data) == ["live", "n", "s", "copy"]


def test_render_text_parses_and_renders_again_identically(site: Path, tmp_path: Path) -> None:
    code, out, _err = sd(site, "render", write(tmp_path, SEED))
    assert code == 0 and out.startswith('sfConfig extends {\n    sfCodeBase "default";\n')
    assert "        scheduler LAZY simpleScheduler;\n" in out
    assert sd(site, "render", write(tmp_path, out, "again.sf")) == (0, out, "")


def test_render_refuses_tbds_unless_allowed(site: Path, tmp_path: Path) -> None:
    job = write(tmp_path, "sfConfig extends { a TBD; }\n")
    assert sd(site, "render", job)[0] == 4
    assert sd(site, "render", "--allow-tbd", job) == (0, "sfConfig extends {\n    a TBD;\n}\n", "")
    assert json.loads(sd(site, "render", "--json", "--allow-tbd", job)[1]) == {"a": {"$tbd": True}}


def test_render_of_a_library_prints_its_prototypes(site: Path, tmp_path: Path) -> None:
    job = write(tmp_path, 'sfCodeBase "d"; P extends NULL { c PARENT:ATTRIB sfCodeBase; }\n')
    assert sd(site, "render", job) == (0, 'sfCodeBase "d";\nP extends {\n    c "d";\n}\n', "")


# -- sd templates ----------------------------------------------------------------------------------
def test_templates_json_lists_each_template_with_its_tbd_fields(site: Path) -> None:
    code, out, err = sd(site, "templates", "--json")
    assert (code, err) == (0, "")
    templates = json.loads(out)
    assert {t["name"] for t in templates} == {p.stem for p in BUILTIN_TEMPLATE_DIR.glob("*.sf")}
    for template in templates:
        assert set(template) == {"name", "file", "description", "tbd", "error"}
        assert all(set(f) == {"path", "where"} for f in template["tbd"])


class LoggingOut(io.StringIO):
    """A stdout whose every write logs a warning naming NAME: a command that logs as it runs."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def write(self, text: str) -> int:
        logging.getLogger("sd_batch.test").warning("%s wrote", self.name)
        return super().write(text)


def test_each_in_process_main_logs_to_its_own_stderr(site: Path) -> None:
    """Not into the first call's stream, as logging.basicConfig would have it."""
    runs = []
    for name in ("first", "second"):
        out, err = LoggingOut(name), io.StringIO()
        code = main(["--config", str(site), "templates"], Environment(out, err, {}))
        runs.append((code, set(err.getvalue().splitlines())))
    assert runs == [
        (0, {"sd: WARNING sd_batch.test: first wrote"}),
        (0, {"sd: WARNING sd_batch.test: second wrote"}),
    ]
    logging.getLogger("sd_batch.test").warning("after")  # no call runs: no stream of theirs
    assert "after" not in err.getvalue()
