"""The HTCondor hook contract, hook by hook, as separate processes on libvirt's test driver.

condor_starter runs `condor_hooks/*` as programs: the job ad on stdin, argv, the scratch dir as
cwd, ad updates on stdout. These tests do the same and pin what the starter reads back:
PREPARE_JOB's updates and HookStatusCode/HookStatusMessage (0 runs the job, 1-299 holds it,
>= 300 sends it back to Idle), JOB_EXIT always 0 and fast (even twice, even first),
UPDATE_JOB_INFO 0 and silent, the startd cron's attributes. The hypervisor is
`test:///TMP/node.xml` from a private site config; every process gets a fresh simulated host,
so only the ledger and the job folder carry state between hooks, as across real processes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sd_batch.batch.key import JobKey
from sd_batch.condor.jobad import job_ad_from_submit
from sd_batch.config.site import BUILTIN_TEMPLATE_DIR, load_config
from sd_batch.data import HOOKS_DIR
from sd_batch.ledger.store import Ledger

from conftest import fake_kernel, write_node, write_site_toml

pytestmark = pytest.mark.libvirt
pytest.importorskip("libvirt", reason="libvirt-python is not installed")
classad2 = pytest.importorskip("classad2", reason="the htcondor bindings are not installed")

SUBMIT = """executable = hello.sh
arguments = "a 'b c'"
transfer_input_files = input.txt{extra_inputs}
output = out.txt
error = err.txt
{description}
queue
"""
#: A user description whose error is at a place we know: line 3, column 18.
BROKEN_SF = '#include "minimal.sf"\nsfConfig extends MinimalVM {\n    memory (512 +);\n}\n'
PREPARE_UPDATES = [
    "SDOriginalCmd",
    "SDOriginalArguments",
    "SDVMDomain",
    "SDVMMemoryMiB",
    "SDVMCpus",
    "Cmd",
    "Arguments",
    "Args",
    "HookStatusCode",
    "HookStatusMessage",
]


@dataclass(frozen=True)
class Done:
    code: int
    stdout: str
    stderr: str
    seconds: float

    def updates(self) -> dict[str, object]:
        """The hook's stdout as the starter reads it: an old-syntax ad, one line each."""
        names = [line.partition("=")[0].strip() for line in self.stdout.splitlines() if line]
        ad = classad2.parseOne(self.stdout, classad2.ParserType.Old)
        assert sorted(n.lower() for n in names) == sorted(k.lower() for k in ad), self.stdout
        return {name: ad.eval(name) for name in names}


@dataclass
class Site:
    root: Path
    sandbox: Path
    environ: dict[str, str]

    def job_ad(self, description: str | None = '"minimal"', extra_inputs: str = "") -> str:
        line = f"+SDVMDescription = {description}" if description else '+HookKeyword = "X"'
        text = SUBMIT.format(description=line, extra_inputs=extra_inputs)
        (ad,) = job_ad_from_submit(
            text,
            submit_dir=self.sandbox,
            owner="tester",
            schedd_name=f"contract-{os.getpid()}@test",
            qdate=1700000000,
        )
        return ad

    def hook(self, name: str, *argv: str, stdin: str = "") -> Done:
        return self.run([str(HOOKS_DIR / name), *argv], stdin=stdin)

    def run(self, argv: list[str], stdin: str = "") -> Done:
        """ARGV as the starter runs a hook: the ad on stdin, the scratch dir as cwd."""
        started = time.monotonic()
        done = subprocess.run(
            argv,
            input=stdin.encode(),
            capture_output=True,
            cwd=self.sandbox,
            env=self.environ,
            timeout=60,
            check=False,
        )
        return Done(
            done.returncode, done.stdout.decode(), done.stderr.decode(), time.monotonic() - started
        )

    def leftovers(self) -> list[str]:
        """Ledger rows and job folders: what a finished job must not leave."""
        config = load_config(Path(self.environ["SD_BATCH_CONFIG"]))
        with Ledger.for_site(config) as ledger:
            rows = [f"{o.kind.value} {o.owner_id}" for o in ledger.owners()]
        jobs = config.state_dir / "jobs"
        return rows + sorted(str(p) for p in jobs.iterdir()) if jobs.is_dir() else rows


def write_site(root: Path, uri: str, *, kernel: bool = True) -> Path:
    (root / "images" / "minimal").mkdir(parents=True, exist_ok=True)
    if kernel:
        fake_kernel(root / "images")
    return write_site_toml(root, uri, template_dirs=[BUILTIN_TEMPLATE_DIR])


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    config = write_site(tmp_path, write_node(tmp_path / "node.xml", cpus=2, memory_kib=4 << 20))
    sandbox = tmp_path / "scratch"
    sandbox.mkdir()
    (sandbox / "hello.sh").write_text("#!/bin/sh\ncat input.txt\n", encoding="utf-8")
    (sandbox / "hello.sh").chmod(0o755)
    (sandbox / "input.txt").write_text("hello\n", encoding="utf-8")
    environ = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "SD_BATCH_CONFIG": str(config),
        "CONDOR_CONFIG": "/dev/null",
        "SD_BATCH_PYTHON": sys.executable,
        "_CONDOR_SCRATCH_DIR": str(sandbox),
        "_CONDOR_JOB_AD": str(sandbox / ".job.ad"),
        "_CONDOR_SLOT": "slot1",
        # the helper in-process as this user: no sudo, our private site config
        "_CONDOR_SMARTDOMAINS_HELPER": f"{sys.executable} -m sd_batch.batch.privileged",
    }
    made = Site(tmp_path, sandbox, environ)
    yield made
    assert made.leftovers() == [], "the test left a ledger row or a job folder"


def global_job_id(ad_text: str) -> str:
    match = re.search(r'^GlobalJobId = "(.*)"$', ad_text, re.MULTILINE)
    assert match is not None
    return match.group(1)


# --- PREPARE_JOB ------------------------------------------------------------------------------
def test_prepare_job_rewrites_cmd_to_our_runner_and_keeps_the_original(site: Site) -> None:
    ad = site.job_ad()
    job_id = global_job_id(ad)
    done = site.hook("prepare_job", stdin=ad)
    assert done.code == 0, done.stderr
    updates = done.updates()
    assert list(updates) == PREPARE_UPDATES
    domain = JobKey(os.getuid(), job_id).domain
    assert updates["SDOriginalCmd"] == str(site.sandbox / "hello.sh")
    assert updates["SDOriginalArguments"] == "a 'b c'"
    assert updates["SDVMDomain"] == domain
    assert (updates["SDVMMemoryMiB"], updates["SDVMCpus"]) == (256, 1)
    assert updates["Cmd"] == str(HOOKS_DIR / "runner")
    # the door PREPARE_JOB used (here the helper command, as the site's environment names
    # it), so the runner takes it from its arguments, never from the job's environment
    helper = site.environ["_CONDOR_SMARTDOMAINS_HELPER"]
    assert updates["Arguments"] == updates["Args"] == f"--job {job_id} --helper {helper}"
    assert updates["HookStatusCode"] == 0
    assert updates["HookStatusMessage"] == f"sd-batch: VM {domain} ready (minimal, 256 MiB, 1 vCPU)"
    assert site.leftovers() != []  # the ledger and the job folder hold the prepared VM
    exited = site.hook("job_exit", "exit", stdin=ad)
    assert (exited.code, exited.stdout) == (0, "")


def test_sd_run_judges_the_exit_on_the_shadows_ad_after_moving_the_outputs(
    tmp_path: Path,
) -> None:
    """The harness evaluates OnExitHold / OnExitRemove as the shadow does: on the submitted
    ad, transformed by the site (171 held, 172 back to Idle, the job's own exit 3 held), never
    on what PREPARE_JOB printed (its `OnExitHold = true` stays in the starter's copy)."""
    from sd_batch.localrun.harness import EXIT_HELD, EXIT_IDLE, Harness, SlotUser

    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "prepare_job").write_text(
        "#!/bin/sh\ncat >/dev/null\necho 'OnExitHold = true'\necho 'OnExitRemove = false'\n"
    )
    (hooks / "job_exit").write_text("#!/bin/sh\ncat >/dev/null\n")
    for hook in hooks.iterdir():
        hook.chmod(0o755)
    job = tmp_path / "job"
    job.mkdir()
    (job / "job.sh").write_text('#!/bin/sh\necho partial > part.txt\nexit "$1"\n')
    outcomes = {}
    for code in (0, 3, 171, 172):
        submit = job / f"job{code}.sub"
        submit.write_text(
            f'executable = job.sh\narguments = {code}\n+SDVMDescription = "x"\n'
            "on_exit_hold = ExitCode == 3\n"
            'on_exit_hold_reason = "my own reason"\nqueue\n'
        )
        harness = Harness(submit, SlotUser.current(), hooks_dir=hooks, environ={})
        (outcomes[code],) = harness.run(lambda _outcome: None)
    assert (outcomes[0].state, outcomes[0].process_exit_code) == ("exited", 0)
    held = outcomes[171]
    assert (held.state, held.process_exit_code) == ("held", EXIT_HELD)
    assert held.summary().startswith(
        "job 1.0: held: sd-batch: the job's VM stopped without a result"
    )
    assert (job / "part.txt").read_text() == "partial\n"  # the outputs came back first
    assert outcomes[3].summary() == "job 1.0: held: my own reason"
    assert (outcomes[172].state, outcomes[172].process_exit_code) == ("idle", EXIT_IDLE)


def test_prepare_job_holds_a_job_naming_an_unknown_template(site: Site) -> None:
    done = site.hook("prepare_job", stdin=site.job_ad('"no-such-template"'))
    assert done.code == 1, done.stderr  # the status code decides; 1 for starters without it
    updates = done.updates()
    assert list(updates) == ["HookStatusCode", "HookStatusMessage"]
    assert 1 <= int(updates["HookStatusCode"]) <= 299  # type: ignore[call-overload]
    assert "no-such-template" in str(updates["HookStatusMessage"])
    assert str(updates["HookStatusMessage"]).startswith("sd-batch: ")


def test_prepare_job_holds_a_broken_user_description_with_file_line_column(site: Site) -> None:
    (site.sandbox / "my.sf").write_text(BROKEN_SF, encoding="utf-8")
    done = site.hook("prepare_job", stdin=site.job_ad('"my.sf"', extra_inputs=", my.sf"))
    updates = done.updates()
    assert 1 <= int(updates["HookStatusCode"]) <= 299  # type: ignore[call-overload]
    message = str(updates["HookStatusMessage"])
    assert re.search(r"my\.sf:3:18: unexpected '\)'", message), message
    assert "\n" not in message


def test_prepare_job_hold_reason_names_the_file_as_the_user_wrote_it(site: Site) -> None:
    (site.sandbox / "my.sf").write_text(BROKEN_SF, encoding="utf-8")
    done = site.hook("prepare_job", stdin=site.job_ad('"my.sf"', extra_inputs=", my.sf"))
    message = str(done.updates()["HookStatusMessage"])
    assert message.startswith("sd-batch: my.sf:3:18: "), message


def test_prepare_job_leaves_a_job_without_sdvmdescription_to_run_natively(site: Site) -> None:
    done = site.hook("prepare_job", stdin=site.job_ad(None))
    assert done.code == 0, done.stderr
    assert done.updates() == {}  # no Cmd rewrite, no HookStatusCode: HTCondor runs it as it is


@pytest.mark.parametrize(
    "value",
    [
        "42",
        '{"minimal", "pool"}',
        "ClusterId * 2",
        "undefined",
        "NoSuchAttribute",
        "true",
        '[ name = "minimal" ]',
        '""',
        "1.5e300",
    ],
)
def test_prepare_job_holds_an_sdvmdescription_that_is_not_a_string(site: Site, value: str) -> None:
    """A job that wrote SDVMDescription meant a VM: it never runs natively without one."""
    done = site.hook("prepare_job", stdin=site.job_ad(value))
    assert done.code == 1, done.stderr
    updates = done.updates()
    assert list(updates) == ["HookStatusCode", "HookStatusMessage"]
    assert 1 <= int(updates["HookStatusCode"]) <= 299  # type: ignore[call-overload]
    message = str(updates["HookStatusMessage"])
    assert message.startswith("sd-batch: SDVMDescription = "), message
    assert (
        "does not name a VM description (it must be a string); write +SDVMDescription = "
        '"minimal"' in message
    )


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ('"mini" + 1', "SDVMDescription evaluates to an error"),
        # a cycle: the transform's RequestMemory reads SDVMDescription, which reads RequestMemory
        ("RequestMemory * 2", "the job attribute SDVMDescription cannot be evaluated"),
    ],
)
def test_an_sdvmdescription_error_value_is_held_too(site: Site, value: str, says: str) -> None:
    done = site.hook("prepare_job", stdin=site.job_ad(value))
    updates = done.updates()
    assert done.code == 1 and 1 <= int(updates["HookStatusCode"]) <= 299  # type: ignore[call-overload]
    assert says in str(updates["HookStatusMessage"])


def test_prepare_job_requeues_when_the_hypervisor_is_unreachable(site: Site) -> None:
    write_site(site.root, "qemu+unix:///system?socket=/nonexistent/libvirt-sock")
    done = site.hook("prepare_job", stdin=site.job_ad())
    assert done.code == 1, done.stderr
    updates = done.updates()
    assert int(updates["HookStatusCode"]) >= 300, updates  # type: ignore[call-overload]
    assert "libvirt-sock" in str(updates["HookStatusMessage"])
    assert done.seconds < 25.0  # retries stay inside the starter's patience


# --- JOB_EXIT, UPDATE_JOB_INFO --------------------------------------------------------------
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_prepare_job_requeues_when_the_state_dir_is_full_and_leaves_nothing(site: Site) -> None:
    state = site.root / "state"
    state.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "sd-full", str(state)], check=True)
    try:
        (site.sandbox / "input.txt").write_bytes(b"x" * 3 * 1024**2)  # more than the disk
        ad = site.job_ad()
        done = site.hook("prepare_job", stdin=ad)
        assert done.code == 1
        updates = done.updates()
        assert updates["HookStatusCode"] == 380, done.stdout
        assert "cannot write the job's files" in str(updates["HookStatusMessage"])
        assert "No space left on device" in str(updates["HookStatusMessage"])
        assert site.hook("job_exit", "exit", stdin=ad).code == 0
        assert site.leftovers() == []
    finally:
        subprocess.run(["umount", str(state)], check=False)


def test_job_exit_is_idempotent_and_fast(site: Site) -> None:
    ad = site.job_ad()
    assert site.hook("prepare_job", stdin=ad).updates()["HookStatusCode"] == 0
    for reason in ("exit", "exit", "remove"):
        done = site.hook("job_exit", reason, stdin=ad)
        assert (done.code, done.stdout) == (0, ""), done.stderr
        assert done.seconds < 10.0
        assert site.leftovers() == []


@pytest.mark.parametrize("reason", ["exit", "remove", "hold", "evict"])
def test_job_exit_before_prepare_job_exits_zero(site: Site, reason: str) -> None:
    done = site.hook("job_exit", reason, stdin=site.job_ad())
    assert (done.code, done.stdout) == (0, ""), done.stderr
    assert done.seconds < 10.0


def test_job_exit_exits_zero_even_on_garbage(site: Site) -> None:
    done = site.hook("job_exit", "exit", stdin="this is not a job ad\n")
    assert (done.code, done.stdout) == (0, "")
    assert "cleanup incomplete" in done.stderr


def test_hooks_import_nothing_the_job_brings_in_its_scratch_dir(site: Site) -> None:
    """The starter runs the hooks in the job's scratch dir: a module the job ships there
    (json.py, tarfile.py) must not be imported in place of the real one (`python -I`)."""
    marker = site.root / "imported"
    # the helper command as condor_hooks/helper runs it (isolated), not the fixture's plain one
    site.environ["_CONDOR_SMARTDOMAINS_HELPER"] = (
        f"{sys.executable} -I -m sd_batch.batch.privileged"
    )
    for name in ("json", "tarfile", "socket"):
        (site.sandbox / f"{name}.py").write_text(
            f"open({str(marker)!r}, 'a').write('{name}')\nraise SystemExit(9)\n"
        )
    ad = site.job_ad()
    prepared = site.hook("prepare_job", stdin=ad)
    assert prepared.code == 0, prepared.stderr
    assert prepared.updates()["HookStatusCode"] == 0
    exited = site.hook("job_exit", "exit", stdin=ad)
    assert (exited.code, exited.stdout) == (0, ""), exited.stderr
    assert not marker.exists(), marker.read_text()
    assert site.leftovers() == []


#: What a hook process never loads: the language, the hypervisor, the root side's modules
#: (each costs a hook its import on every job); JOB_EXIT not even the ClassAd bindings.
NEVER_IN_A_HOOK = ("lark", "libvirt", "sqlite3", "sd_batch.lang", "sd_batch.hypervisor")
NEVER_IN_JOB_EXIT = (*NEVER_IN_A_HOOK, "classad2", "htcondor2", "htcondor", "classad")


@pytest.mark.parametrize(
    ("verb", "argv", "never"),
    [("prepare-job", [], NEVER_IN_A_HOOK), ("job-exit", ["exit"], NEVER_IN_JOB_EXIT)],
)
def test_a_hook_process_loads_only_what_it_needs(
    site: Site, verb: str, argv: list[str], never: tuple[str, ...]
) -> None:
    """Pinned by what is loaded, not by a clock (a loaded machine makes any time flaky)."""
    listing = site.root / f"{verb}.modules"
    code = (
        "import sys\n"
        "from sd_batch.helper.hooks import main\n"
        f"status = main({[verb, *argv]!r})\n"
        f"open({str(listing)!r}, 'w').write('\\n'.join(sorted(sys.modules)))\n"
        "sys.exit(status)\n"
    )
    ad = site.job_ad()
    done = site.run([sys.executable, "-I", "-c", code], stdin=ad)
    assert done.code == 0, done.stderr
    if verb == "prepare-job":
        assert "HookStatusCode = 0" in done.stdout, done.stdout
        assert site.hook("job_exit", "exit", stdin=ad).code == 0
    loaded = listing.read_text().splitlines()
    assert "sd_batch.helper.hooks" in loaded
    assert [m for m in loaded if m.split(".")[0] in never or m.startswith(never)] == []
    assert site.leftovers() == []


def test_update_job_info_exits_zero_silently(site: Site) -> None:
    ad = site.job_ad() + 'JobState = "Running"\nJobPid = 4242\nNumPids = 1\n'
    done = site.hook("update_job_info", stdin=ad)
    assert (done.code, done.stdout) == (0, "")


# --- the startd cron ------------------------------------------------------------------------
def test_startd_cron_advertises_smartdomains(site: Site) -> None:
    done = site.hook("startd_cron")
    assert done.code == 0, done.stderr
    updates = done.updates()
    assert list(updates) == [
        "HasSmartDomains",
        "SmartDomainsTemplates",
        "SmartDomainsFreeVMMemory",
        "SmartDomainsOfflineReason",
        "SmartDomainsOutputDisk",
        "SmartDomainsTemplateMemory",
        "SmartDomainsTemplateCpus",
        "SmartDomainsTemplateDisk",
    ]
    assert updates["HasSmartDomains"] is True
    # what a job naming each one-VM template needs (pools are no job's); disk in KiB: the
    # output disk (256 MiB by default), as minimal has no disk of its own
    assert updates["SmartDomainsOutputDisk"] == 256 * 1024  # every job VM's results disk
    needs = {attr: dict(updates[attr]) for attr in list(updates)[5:]}  # type: ignore[call-overload]
    assert [needs[a]["minimal"] for a in needs] == [256, 1, 256 * 1024]
    assert "pool" not in needs["SmartDomainsTemplateMemory"]
    assert "minimal" in str(updates["SmartDomainsTemplates"]).split(",")
    assert isinstance(updates["SmartDomainsFreeVMMemory"], int)
    assert int(updates["SmartDomainsFreeVMMemory"]) > 0
    assert updates["SmartDomainsOfflineReason"] == ""


def test_startd_cron_goes_offline_without_the_guest_image(site: Site, tmp_path: Path) -> None:
    other = tmp_path / "no-image"
    other.mkdir()
    write_site(other, f"test://{site.root / 'node.xml'}", kernel=False)
    site.environ["SD_BATCH_CONFIG"] = str(other / "site.toml")
    updates = site.hook("startd_cron").updates()
    assert updates["HasSmartDomains"] is False
    assert "scripts/build-guest" in str(updates["SmartDomainsOfflineReason"])
