"""The /etc/condor/config.d drop-in, read by HTCondor's own config code (htcondor2.param in a
child process pointed at a temporary condor_config), and its schedd transform's effect."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sd_batch.condor.jobad import (
    SMARTDOMAINS_TRANSFORM,
    apply_job_transform,
    job_ad_from_submit,
    parse_job_ad,
)

REPO = Path(__file__).resolve().parent.parent
DROP_IN = REPO / "condor_hooks" / "99-smartdomains.conf"
HOOKS = ("prepare_job", "update_job_info", "job_exit")
KNOBS = (
    "SMARTDOMAINS_HOME",
    "SMARTDOMAINS_HELPER",
    "SMARTDOMAINS_HYPERVISOR_URI",
    "SMARTDOMAINS_TEMPLATE_DIRS",
    "SMARTDOMAINS_HOOK_PREPARE_JOB",
    "SMARTDOMAINS_HOOK_UPDATE_JOB_INFO",
    "SMARTDOMAINS_HOOK_JOB_EXIT",
    "SMARTDOMAINS_HOOK_JOB_EXIT_TIMEOUT",
    "HasSmartDomains",
    "STARTD_ATTRS",
    "STARTD_CRON_JOBLIST",
    "STARTD_CRON_SMARTDOMAINS_EXECUTABLE",
    "STARTD_CRON_SMARTDOMAINS_MODE",
    "STARTD_CRON_SMARTDOMAINS_PERIOD",
    "STARTD_CRON_SMARTDOMAINS_KILL",
    "JOB_TRANSFORM_NAMES",
    "JOB_TRANSFORM_SmartDomains",
    "STARTER_JOB_HOOK_KEYWORD",
    "STARTER_DEFAULT_JOB_HOOK_KEYWORD",
)


def condor_params(tmp_path: Path, before: str = "", after: str = "") -> dict[str, str | None]:
    """The knobs as the HTCondor config code sees them with the drop-in included."""
    config = tmp_path / "condor_config"
    config.write_text(f"{before}\ninclude : {DROP_IN}\n{after}\n")
    code = (
        "import json, sys, htcondor2\n"
        "print(json.dumps({k: htcondor2.param.get(k) for k in sys.argv[1:]}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *KNOBS],
        capture_output=True,
        text=True,
        env={"CONDOR_CONFIG": str(config), "PATH": os.environ.get("PATH", "")},
        check=False,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr  # no config error
    params: dict[str, str | None] = json.loads(done.stdout)
    return params


def raw_block(name: str) -> str:
    """A multi-line `NAME @=end ... @end` value as written (what the schedd's
    param_unexpanded sees; htcondor2.param expands $(MY.x) to nothing)."""
    match = re.search(rf"^{name} @=end\n(.*?)^@end$", DROP_IN.read_text(), re.M | re.S)
    assert match, f"{name} not found as an @=end block"
    return match.group(1)


def statements(rules: str) -> list[str]:
    return [line.strip() for line in rules.splitlines() if line.strip() and line.strip()[0] != "#"]


def test_the_hooks_point_at_the_executables_under_smartdomains_home(tmp_path: Path) -> None:
    params = condor_params(tmp_path)
    home = "/usr/lib/sd-batch"  # the Debian package's
    assert params["SMARTDOMAINS_HOME"] == home
    for hook in HOOKS:
        assert params[f"SMARTDOMAINS_HOOK_{hook.upper()}"] == f"{home}/condor_hooks/{hook}"
    assert params["STARTD_CRON_SMARTDOMAINS_EXECUTABLE"] == f"{home}/condor_hooks/startd_cron"
    assert int(params["SMARTDOMAINS_HOOK_JOB_EXIT_TIMEOUT"] or 0) > 25  # the hook's own limit
    assert params["SMARTDOMAINS_HELPER"] == "sudo -n /usr/lib/sd-batch/condor_hooks/helper"
    assert params["SMARTDOMAINS_HYPERVISOR_URI"] == "qemu:///system"
    assert params["SMARTDOMAINS_TEMPLATE_DIRS"] == "/usr/lib/sd-batch/job_templates"


def test_the_executables_the_config_names_exist_in_the_tree() -> None:
    for name in (*HOOKS, "startd_cron", "helper"):
        assert os.access(REPO / "condor_hooks" / name, os.X_OK), name


@pytest.mark.parametrize("where", ["before", "after"])
def test_a_site_can_move_smartdomains_home_in_its_own_config(tmp_path: Path, where: str) -> None:
    setting = {where: "SMARTDOMAINS_HOME = /srv/sd"}
    params = condor_params(tmp_path, **setting)
    assert params["SMARTDOMAINS_HOOK_PREPARE_JOB"] == "/srv/sd/condor_hooks/prepare_job"


def test_no_keyword_is_forced_on_every_job(tmp_path: Path) -> None:
    params = condor_params(tmp_path)
    assert params["STARTER_JOB_HOOK_KEYWORD"] is None
    assert params["STARTER_DEFAULT_JOB_HOOK_KEYWORD"] is None


def test_a_node_advertises_no_smartdomains_until_its_probe_says_so(tmp_path: Path) -> None:
    params = condor_params(tmp_path)
    assert params["HasSmartDomains"] == "false"
    assert "HasSmartDomains" in (params["STARTD_ATTRS"] or "").split()
    assert (params["STARTD_CRON_SMARTDOMAINS_MODE"], params["STARTD_CRON_SMARTDOMAINS_PERIOD"]) == (
        "Periodic",
        "5m",
    )
    assert params["STARTD_CRON_SMARTDOMAINS_KILL"] == "true"


def test_lists_are_appended_to_not_replaced(tmp_path: Path) -> None:
    before = "STARTD_ATTRS = HasGPU\nSTARTD_CRON_JOBLIST = GPUS\nJOB_TRANSFORM_NAMES = Acct"
    params = condor_params(tmp_path, before=before)
    assert (params["STARTD_ATTRS"] or "").split() == ["HasGPU", "HasSmartDomains"]
    assert (params["STARTD_CRON_JOBLIST"] or "").split() == ["GPUS", "SMARTDOMAINS"]
    assert (params["JOB_TRANSFORM_NAMES"] or "").split() == ["Acct", "SmartDomains"]


def test_the_transform_is_the_one_sd_run_applies(tmp_path: Path) -> None:
    assert statements(raw_block("JOB_TRANSFORM_SmartDomains")) == statements(SMARTDOMAINS_TRANSFORM)
    # HTCondor's config code reads the same block; only the $(MY.x) part is the schedd's to fill
    as_param = condor_params(tmp_path)["JOB_TRANSFORM_SmartDomains"] or ""
    assert statements(as_param) == [
        re.sub(r"\$\(MY\.[A-Za-z]+\)", "", line) for line in statements(SMARTDOMAINS_TRANSFORM)
    ]


def test_the_transforms_effect_on_a_submitted_job(tmp_path: Path) -> None:
    submit = 'executable = run.sh\n+SDVMDescription = "debian-batch"\nqueue\n'
    common = {"submit_dir": tmp_path, "owner": "alice", "schedd_name": "ap", "qdate": 1}
    [untransformed] = job_ad_from_submit(submit, transform=None, **common)  # type: ignore[arg-type]
    [by_sd_run] = job_ad_from_submit(submit, **common)  # type: ignore[arg-type]
    by_config = apply_job_transform(untransformed, raw_block("JOB_TRANSFORM_SmartDomains"))
    assert by_config == by_sd_run
    ad, before = parse_job_ad(by_config), parse_job_ad(untransformed)
    assert ad.get("HookKeyword") == "SMARTDOMAINS"
    needs = "[string(MY.SDVMDescription)] ?: 0"
    assert ad.expression("Requirements") == (
        f"({before.expression('Requirements')}) && (TARGET.HasSmartDomains =?= true) && "
        f"(TARGET.Memory >= (TARGET.SmartDomainsTemplateMemory{needs})) && "
        f"(TARGET.Cpus >= (TARGET.SmartDomainsTemplateCpus{needs}))"
    )
    assert ad.expression("RequestMemory") == (
        f"max({{ ({before.expression('RequestMemory')}),"
        f"TARGET.SmartDomainsTemplateMemory{needs} }})"
    )


#: A worker's partitionable slot as the startd publishes it with our cron's attributes.
PSLOT = """MyType = "Machine"
Arch = "X86_64"
OpSys = "LINUX"
FileSystemDomain = "worker"
HasFileTransfer = true
HasSmartDomains = true
Cpus = {cpus}
Memory = {memory}
Disk = 100000000
SmartDomainsTemplateMemory = [ minimal = 256; 'debian-batch' = 512 ]
SmartDomainsTemplateCpus = [ minimal = 1; 'debian-batch' = 2 ]
SmartDomainsTemplateDisk = [ minimal = 262144; 'debian-batch' = 8650752 ]
SmartDomainsOutputDisk = 262144
Requirements = true
"""


@pytest.mark.parametrize(
    ("requests", "slot", "matches", "carved"),
    [
        ("", (8, 16384), True, (512, 2, 8650752)),  # asks for nothing: the template's needs
        ("request_memory = 1024\nrequest_cpus = 4\n", (8, 16384), True, (1024, 4, 8650752)),
        ("request_memory = 100\n", (8, 16384), True, (512, 2, 8650752)),  # never below them
        ("", (8, 400), False, None),  # what is left of the slot cannot hold the template
        ("", (1, 16384), False, None),
    ],
)
# (a job's own my.sf is in no record: its requests count, its disk at least the output disk)
def test_the_transformed_job_matches_only_slots_its_template_fits(
    tmp_path: Path,
    requests: str,
    slot: tuple[int, int],
    matches: bool,
    carved: tuple[int, int, int] | None,
) -> None:
    """Matchmaking with the real bindings: the job's Requirements against the worker's slot,
    and its requests evaluated against it, as the startd does when it carves the slot."""
    classad2 = pytest.importorskip("classad2")
    submit = f'executable = run.sh\n+SDVMDescription = "debian-batch"\n{requests}queue\n'
    [text] = job_ad_from_submit(
        submit, submit_dir=tmp_path, owner="alice", schedd_name="ap", qdate=1
    )
    job = classad2.parseOne(text, classad2.ParserType.Old)
    machine = classad2.parseOne(PSLOT.format(cpus=slot[0], memory=slot[1]), classad2.ParserType.Old)
    assert job.symmetricMatch(machine) is matches  # both Requirements hold
    if carved is not None:
        assert (
            tuple(
                job.lookup(name).eval(job, machine)
                for name in ("RequestMemory", "RequestCpus", "RequestDisk")
            )
            == carved
        )
    # without a machine (condor_q, the schedd): the job's own requests
    assert job.eval("RequestMemory") == parse_job_ad(text).request_memory_mib


@pytest.mark.parametrize(
    ("code", "held", "says"),
    [
        (0, False, None),
        (170, True, "did not power off"),
        (171, True, "without a result"),
        (3, True, "my own reason"),
        (172, False, None),
    ],
)
def test_the_transforms_exit_policy_holds_on_the_runners_codes_and_keeps_the_jobs_own(
    tmp_path: Path, code: int, held: bool, says: str | None
) -> None:
    """The shadow evaluates the job's exit policy on its own ad: the transform sets it at
    submit (a hook's updates never reach the shadow), or'd with the job's own."""
    submit = (
        'executable = run.sh\n+SDVMDescription = "minimal"\non_exit_hold = ExitCode == 3\n'
        'on_exit_hold_reason = "my own reason"\nqueue\n'
    )
    common = {"submit_dir": tmp_path, "owner": "alice", "schedd_name": "ap", "qdate": 1}
    [plain] = job_ad_from_submit(submit, transform=None, **common)  # type: ignore[arg-type]
    by_config = apply_job_transform(plain, raw_block("JOB_TRANSFORM_SmartDomains"))
    after = parse_job_ad(by_config + f"ExitBySignal = false\nExitCode = {code}\n")
    assert after.get("OnExitHold") is held
    assert after.get("OnExitRemove") is (code != 172)  # 172: the host failed, back to Idle
    if says is not None:
        assert says in str(after.get("OnExitHoldReason"))
    if code in (170, 171):
        assert after.get("OnExitHoldSubCode") == code
    signaled = parse_job_ad(by_config + "ExitBySignal = true\nExitSignal = 9\n")
    assert signaled.get("OnExitHold") is False and signaled.get("OnExitRemove") is True


def test_a_job_without_sdvmdescription_is_untouched_by_the_configs_transform(
    tmp_path: Path,
) -> None:
    common = {"submit_dir": tmp_path, "owner": "alice", "schedd_name": "ap", "qdate": 1}
    [plain] = job_ad_from_submit("executable = run.sh\nqueue\n", transform=None, **common)  # type: ignore[arg-type]
    assert apply_job_transform(plain, raw_block("JOB_TRANSFORM_SmartDomains")) == plain


def test_every_setting_is_explained_for_a_site_admin() -> None:
    """Each paragraph opens with a comment; no setting line stands without one."""
    text = DROP_IN.read_text()
    text = re.sub(r"@=end\n.*?^@end$", "@=end", text, flags=re.M | re.S)  # the block's own
    for paragraph in text.split("\n\n"):
        lines = [line for line in paragraph.splitlines() if line.strip()]
        if lines:
            assert lines[0].lstrip().startswith("#"), f"uncommented setting:\n{paragraph}"
