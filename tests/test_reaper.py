"""The reaper: pure decisions table-tested, then `sd reap` on libvirt's test driver.

The libvirt tests get a private site (tmp state and image folders, a site.toml) whose
`localhost` is `test:///TMP/host.xml`; `sd reap` runs in this process and shares its
connections (`connections.SHARED_CONNECTIONS`), so the domains it sees are the ones the test made.
A process "dies" for real: a `sleep` is recorded as the owner's process, then killed.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sd_batch.batch import jobs
from sd_batch.batch.key import JobKey, JobLimits
from sd_batch.config.site import BUILTIN_TEMPLATE_DIR, SiteConfig, load_config
from sd_batch.deploy.pools import start_pool, terminate_pool
from sd_batch.deploy.reaper import (
    ActionKind,
    LedgerView,
    Owned,
    ReapPolicy,
    decide,
    job_digest,
    reap,
)
from sd_batch.helper import hooks
from sd_batch.hypervisor.connection import DomainInfo, DomainOwner, DomainState, Hypervisor
from sd_batch.hypervisor.connections import SHARED_CONNECTIONS, Connections
from sd_batch.ledger.store import (
    Ledger,
    Owner,
    OwnerKind,
    OwnerStatus,
    ProcessRef,
    Resource,
    ResourceKind,
    ResourceState,
)
from sd_batch.vm.domain_xml import SD_NAMESPACE

from conftest import SdSite, fake_kernel, ledger_rows, site_environ, write_node, write_site_toml

URI = "test:///default"
BOOT = "boot-1"
NOW = 1_000_000.0
LIVE = {100, 200}


def process(pid: int, boot: str = BOOT) -> ProcessRef:
    return ProcessRef(pid, 1, boot)


def alive(ref: ProcessRef) -> bool:
    return ref.boot_id == BOOT and ref.pid in LIVE


def owner(
    kind: OwnerKind,
    oid: str,
    status: OwnerStatus,
    pid: int | None,
    *,
    row: int = 1,
    age: float = 60.0,
    boot: str = BOOT,
) -> Owner:
    ref = None if pid is None else process(pid, boot)
    return Owner(row, kind, oid, URI, "", status, NOW - age, ref, boot)


def resource(
    of: Owner, name: str, state: ResourceState = ResourceState.CREATED, pid: int = 100
) -> Resource:
    return Resource(
        1, of.kind, of.owner_id, ResourceKind.DOMAIN, name, URI, state, NOW, process(pid)
    )


POOL, JOB = OwnerKind.POOL, OwnerKind.JOB
STARTING, ACTIVE, TERMINATING = OwnerStatus.STARTING, OwnerStatus.ACTIVE, OwnerStatus.TERMINATING


# --- decisions (pure) -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("who", "reason"),
    [
        (owner(POOL, "lab", ACTIVE, None), None),
        (owner(POOL, "lab", ACTIVE, None, boot="boot-0"), None),  # rebooted: still the user's
        (owner(POOL, "lab", STARTING, 100), None),
        (owner(POOL, "lab", STARTING, 999), "pool start interrupted (process 999 died)"),
        (owner(POOL, "lab", TERMINATING, 999), "pool terminate interrupted (process 999 died)"),
        (
            owner(POOL, "lab", STARTING, None, boot="boot-0"),
            "pool start interrupted (the machine rebooted)",
        ),
        (owner(JOB, "0:j#1", ACTIVE, 200), None),
        (owner(JOB, "0:j#1", ACTIVE, 999), "its runner (process 999) died"),
        (
            owner(JOB, "0:j#1", ACTIVE, 200, boot="boot-0"),
            "its runner (process 200) died",
        ),  # same pid, an earlier boot
        (owner(JOB, "0:j#1", STARTING, None, age=600), None),
        (
            owner(JOB, "0:j#1", STARTING, None, age=7200),
            "prepared 120 min ago and never run (grace 60 min)",
        ),
        (
            owner(JOB, "0:j#1", STARTING, None, boot="boot-0"),
            "prepared before this machine rebooted, never run",
        ),
    ],
)
def test_who_is_reaped_and_why(who: Owner, reason: str | None) -> None:
    actions = decide(LedgerView((Owned(who),), {}, BOOT), {}, alive, now=NOW)
    assert [a.reason for a in actions] == ([] if reason is None else [reason])
    assert all(a.kind is ActionKind.OWNER and a.owner == who for a in actions)


def test_the_prepared_grace_is_the_policys() -> None:
    who = owner(JOB, "0:j#1", STARTING, None, age=120)
    view = LedgerView((Owned(who),), {}, BOOT)
    assert decide(view, {}, alive, now=NOW, policy=ReapPolicy(prepared_grace_seconds=300)) == []
    [action] = decide(view, {}, alive, now=NOW, policy=ReapPolicy(prepared_grace_seconds=60))
    assert action.reason == "prepared 2 min ago and never run (grace 1 min)"


def test_rows_stuck_creating_go_alone_but_never_under_an_active_pool() -> None:
    job = owner(JOB, "0:j#1", STARTING, None)
    pool = owner(POOL, "lab", ACTIVE, None, row=2)
    dead_row = resource(job, "sd-job-x", ResourceState.CREATING, pid=999)
    rows = (resource(job, "a"), dead_row, resource(job, "b", ResourceState.CREATING, pid=100))
    view = LedgerView(
        (
            Owned(job, rows),
            Owned(pool, (resource(pool, "lab-1", ResourceState.CREATING, pid=999),)),
        ),
        {},
        BOOT,
    )
    [action] = decide(view, {}, alive, now=NOW)
    assert (action.kind, action.resources) == (ActionKind.STUCK, (dead_row,))
    assert action.reason == "ledger row stuck `creating`, its process died (999)"
    assert action.describe() == f"1 stuck row of job 0:j#1 on {URI}"


def test_only_our_job_domains_with_a_folder_here_and_no_owner_are_reaped(tmp_path: Path) -> None:
    pool = owner(POOL, "lab", ACTIVE, None)
    ghost, elsewhere = job_digest("0:g#2"), job_digest("0:elsewhere#1")
    on_host = (
        DomainInfo("lab-1", DomainState.RUNNING, DomainOwner("pool", "lab")),
        DomainInfo("sd-job-0123456789abcdef", DomainState.SHUTOFF, None),
        DomainInfo("other", DomainState.RUNNING, DomainOwner("cluster", "x")),  # newer kind
        DomainInfo(f"sd-job-{ghost}", DomainState.SHUTOFF, DomainOwner("job", "0:g#2")),
        DomainInfo("renamed", DomainState.SHUTOFF, DomainOwner("job", "0:g#2")),
        DomainInfo(
            f"sd-job-{elsewhere}", DomainState.RUNNING, DomainOwner("job", "0:elsewhere#1")
        ),  # another site's: no folder here
        DomainInfo("old-1", DomainState.RUNNING, DomainOwner("pool", "old")),  # no proof: left
    )
    view = LedgerView((Owned(pool),), {ghost: tmp_path / ghost}, BOOT)
    assert [(a.kind, a.target, a.reason) for a in decide(view, {URI: on_host}, alive, now=NOW)] == [
        (
            ActionKind.DOMAIN,
            f"sd-job-{ghost}",
            "domain carries our metadata for job 0:g#2 but no ledger owner",
        ),
        (ActionKind.FOLDER, str(tmp_path / ghost), "job folder with no ledger owner"),
    ]


def test_job_folders_go_with_their_job_or_when_nobody_owns_them(tmp_path: Path) -> None:
    dead = owner(JOB, "0:dead#1", ACTIVE, 999)
    live = owner(JOB, "0:live#1", ACTIVE, 100, row=2)
    folders = {job_digest(o.owner_id): tmp_path / job_digest(o.owner_id) for o in (dead, live)}
    folders["0000000000000000"] = tmp_path / "0000000000000000"
    view = LedgerView((Owned(dead), Owned(live)), folders, BOOT)
    assert [(a.kind, a.target, a.reason) for a in decide(view, {}, alive, now=NOW)] == [
        (ActionKind.OWNER, "job 0:dead#1", "its runner (process 999) died"),
        (ActionKind.FOLDER, str(tmp_path / "0000000000000000"), "job folder with no ledger owner"),
        (ActionKind.FOLDER, str(folders[job_digest("0:dead#1")]), "its job is reaped"),
    ]


def test_the_job_digest_is_the_helpers() -> None:
    key = JobKey(1000, "sched#12.0#1700000000")
    assert job_digest(key.owner_id) == key.digest and key.domain.endswith(key.digest)


# --- on libvirt's test driver ---------------------------------------------------------------------
TWO_WITH_OVERLAYS = """#include "minimal.sf"
sfConfig extends Pool {
    count 2;
    template extends LAZY MinimalVM {
        disks extends DATA { root extends Disk { image "base.qcow2"; } }
    }
}
"""
FOREIGN = """<domain type='test'><name>{name}</name><memory>1024</memory>
  <os><type>hvm</type></os>{metadata}</domain>"""


@dataclass
class Site(SdSite):
    uri: str

    def config(self) -> SiteConfig:
        return load_config(self.config_file)

    def hv(self) -> Hypervisor:
        hv = SHARED_CONNECTIONS(self.uri)
        assert isinstance(hv, Hypervisor)
        return hv

    def domains(self) -> dict[str, DomainState]:
        return {d.name: d.state for d in self.hv().list_domains()}

    def volumes(self) -> list[str]:
        conn = self.hv().libvirt_connection()
        return sorted(
            v.path()
            for p in conn.listAllStoragePools(0)
            for v in p.listAllVolumes(0)
            if str(self.root / "state") in v.path()
        )

    def rows(self) -> tuple[list[str], list[str]]:
        return ledger_rows(self.config())

    def die_as(self, kind: OwnerKind, owner_id: str, status: OwnerStatus) -> int:
        """Make OWNER's recorded process one that then dies (a real pid, really gone)."""
        proc = subprocess.Popen(["sleep", "60"])
        with Ledger.for_site(self.config()) as ledger:
            found = ledger.owner(kind, owner_id, self.uri)
            assert found is not None
            ledger.set_status(found, status, pid=proc.pid)
        proc.kill()
        proc.wait()
        return proc.pid

    def job(self, name: str) -> JobKey:
        """A job prepared by the helper's own code (input disk, output disk, VM defined)."""
        from sd_batch.condor.jobad import job_ad_from_submit
        from sd_batch.guest.contract import Manifest
        from sd_batch.staging import write_input_tar

        sandbox = self.root / "scratch"
        sandbox.mkdir(exist_ok=True)
        (ad,) = job_ad_from_submit(
            'executable = /bin/true\n+SDVMDescription = "minimal"\nqueue\n',
            submit_dir=sandbox,
            owner="tester",
            schedd_name=f"{name}@reaper",
            qdate=1700000000,
        )
        job_id = next(
            line.split('"')[1] for line in ad.splitlines() if line.startswith("GlobalJobId = ")
        )
        disk = io.BytesIO()
        write_input_tar(
            sandbox, Manifest(("/bin/true",), {}, "."), disk, job_ad_text=ad, max_bytes=1 << 30
        )
        key = JobKey(os.getuid(), job_id)
        jobs.prepare(
            self.config(), key, io.BytesIO(disk.getvalue()), connections=SHARED_CONNECTIONS
        )
        return key


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    pytest.importorskip("libvirt", reason="libvirt-python is not installed")
    images = tmp_path / "images"
    fake_kernel(images)
    (images / "base.qcow2").write_bytes(b"QFI\xfb" + bytes(508))
    uri = write_node(tmp_path / "host.xml", images=images)
    config = write_site_toml(tmp_path, uri, template_dirs=[BUILTIN_TEMPLATE_DIR])
    made = Site(tmp_path, site_environ(config), uri)
    yield made
    SHARED_CONNECTIONS.forget(uri)  # this host file dies with the test


libvirt_test = pytest.mark.libvirt


@libvirt_test
def test_a_pool_start_killed_half_way_is_reaped_and_a_second_reap_finds_nothing(
    site: Site,
) -> None:
    start_pool(site.config(), "localhost", "lab", Path(site.root / "pool.sf"))
    assert sorted(site.domains()) == ["lab-1", "lab-2"] and len(site.volumes()) == 2
    pid = site.die_as(OwnerKind.POOL, "lab", OwnerStatus.STARTING)  # as if killed mid-start

    dry = site.sd("reap", "--dry-run")
    assert (dry.code, dry.out) == (
        0,
        f"would remove pool lab on {site.uri}: pool start interrupted (process {pid} died)\n",
    )
    assert sorted(site.domains()) == ["lab-1", "lab-2"] and site.rows()[0] == ["pool lab"]

    done = site.sd("reap")
    assert (done.code, done.out) == (
        0,
        f"removed pool lab on {site.uri} (2 domains, 2 volumes, "
        f"2 files): pool start interrupted (process {pid} "
        "died)\n",
    )
    assert site.domains() == {} and site.volumes() == [] and site.rows() == ([], [])
    assert site.sd("reap").out == "nothing to reap\n"


@libvirt_test
def test_a_healthy_active_pool_is_untouched(site: Site) -> None:
    start_pool(site.config(), "localhost", "lab", Path(site.root / "pool.sf"))
    assert site.sd("reap").out == "nothing to reap\n"
    assert site.domains() == {"lab-1": DomainState.RUNNING, "lab-2": DomainState.RUNNING}
    assert terminate_pool(site.config(), "localhost", "lab", grace_seconds=0).startswith("2 dom")


@libvirt_test
def test_a_job_whose_runner_died_loses_its_domain_disks_and_folder(site: Site) -> None:
    key = site.job("dead")
    folder = key.folder(site.config())
    assert sorted(p.name for p in folder.iterdir()) == ["input.img", "output.img"]
    assert key.domain in site.domains()
    pid = site.die_as(OwnerKind.JOB, key.owner_id, OwnerStatus.ACTIVE)

    [data] = [json.loads(site.sd("reap", "--json").out)]
    assert data["dry_run"] is False
    assert [(a["action"], a["target"], a["reason"], a["done"]) for a in data["actions"]] == [
        ("owner", f"job {key.owner_id}", f"its runner (process {pid}) died", True),
        ("folder", str(folder), "its job is reaped", True),
    ]
    assert data["actions"][0]["removed"] == "1 domain, 0 volumes, 3 files"
    assert key.domain not in site.domains() and not folder.exists()
    assert site.rows() == ([], []) and site.sd("reap").out == "nothing to reap\n"


@libvirt_test
def test_a_running_job_is_untouched_and_a_prepared_one_only_after_its_grace(site: Site) -> None:
    running, prepared = site.job("running"), site.job("prepared")
    with pytest.raises(Exception, match="did not power off"):  # the test driver never does
        jobs.run(
            site.config(),
            running,
            io.BytesIO(),
            connections=SHARED_CONNECTIONS,
            limits=JobLimits(run_timeout_seconds=0.2),
        )
    with Ledger.for_site(site.config()) as ledger:
        row = ledger.owner(OwnerKind.JOB, running.owner_id, site.uri)
    assert row is not None and row.status is OwnerStatus.ACTIVE
    assert row.process == ProcessRef.of(os.getpid())  # jobs.run answers for its job
    assert site.sd("reap").out == "nothing to reap\n"

    later = reap(site.config(), clock=lambda: time.time() + 2 * 3600)
    assert [o.line(dry_run=False).split(": ")[0] for o in later] == [
        f"removed job {prepared.owner_id} on {site.uri} (1 domain, 0 volumes, 3 files)",
        f"removed job folder {prepared.folder(site.config())}",
    ]
    assert later[0].action.reason.endswith("prepared 120 min ago and never run (grace 60 min)")
    assert sorted(site.domains()) == [running.domain]
    jobs.cleanup(site.config(), running, connections=SHARED_CONNECTIONS)
    assert site.domains() == {} and site.rows() == ([], [])


@libvirt_test
def test_a_job_removed_between_prepare_and_run_leaves_nothing_of_its_paused_vm(
    site: Site,
) -> None:
    """The service starts a prepared VM paused; a job held or removed before its runner ran
    meets JOB_EXIT's cleanup (or, if that never came, the reaper past the grace) with a live,
    paused domain: it is destroyed and undefined with its disks and folder."""
    removed, forgotten = site.job("removed"), site.job("forgotten")
    for key in (removed, forgotten):
        assert jobs.start_paused(site.config(), key, connections=SHARED_CONNECTIONS)
        assert site.domains()[key.domain] is DomainState.PAUSED

    assert jobs.cleanup(site.config(), removed, connections=SHARED_CONNECTIONS) == (
        "1 domain, 0 volumes, 3 files"
    )
    assert removed.domain not in site.domains() and not removed.folder(site.config()).exists()

    later = reap(site.config(), clock=lambda: time.time() + 2 * 3600)
    assert [o.line(dry_run=False).split(": ")[0] for o in later] == [
        f"removed job {forgotten.owner_id} on {site.uri} (1 domain, 0 volumes, 3 files)",
        f"removed job folder {forgotten.folder(site.config())}",
    ]
    assert site.domains() == {} and site.rows() == ([], [])


@libvirt_test
def test_a_paused_start_is_resumed_by_the_run(site: Site) -> None:
    key = site.job("resumed")
    assert jobs.start_paused(site.config(), key, connections=SHARED_CONNECTIONS)
    seen: list[DomainState] = []
    hv = site.hv()
    original = hv.start_or_resume

    def watched(name: str) -> None:
        original(name)
        seen.append(hv.state(name).state)

    hv.start_or_resume = watched  # type: ignore[method-assign]
    try:
        with pytest.raises(Exception, match="did not power off"):  # the test driver never does
            jobs.run(
                site.config(),
                key,
                io.BytesIO(),
                connections=SHARED_CONNECTIONS,
                limits=JobLimits(run_timeout_seconds=0.2),
            )
    finally:
        del hv.start_or_resume
    assert seen == [DomainState.RUNNING]
    jobs.cleanup(site.config(), key, connections=SHARED_CONNECTIONS)
    assert site.domains() == {} and site.rows() == ([], [])


def test_a_paused_start_that_fails_is_left_to_the_run(site: Site) -> None:
    """No domain to start (a prepare that did not finish): logged, False, nothing raised."""
    key = JobKey(os.getuid(), "nobody#1.0#1")
    assert jobs.start_paused(site.config(), key, connections=SHARED_CONNECTIONS) is False


@libvirt_test
def test_domains_we_did_not_create_are_never_touched(site: Site) -> None:
    hv = site.hv()
    other_tool = "<metadata><x:owner xmlns:x='urn:other' kind='job' id='1:a#1'/></metadata>"
    ours = "<metadata><sd:owner xmlns:sd='{ns}' kind='job' id='{id}'/></metadata>"
    ghost, elsewhere = job_digest("1:ghost#1"), job_digest("1:elsewhere#1")
    hv.define(FOREIGN.format(name="sd-job-0123456789abcdef", metadata=""))
    hv.define(FOREIGN.format(name="sd-job-1111111111111111", metadata=other_tool))
    hv.define(
        FOREIGN.format(
            name=f"sd-job-{ghost}", metadata=ours.format(ns=SD_NAMESPACE, id="1:ghost#1")
        )
    )
    hv.define(
        FOREIGN.format(
            name=f"sd-job-{elsewhere}",  # another site's job on this host
            metadata=ours.format(ns=SD_NAMESPACE, id="1:elsewhere#1"),
        )
    )
    hv.start("sd-job-0123456789abcdef")
    jobs_dir = site.root / "state" / "jobs"
    (jobs_dir / ghost).mkdir(parents=True)
    (jobs_dir / "0000000000000000").mkdir()

    done = site.sd("reap")
    assert done.out.splitlines() == [
        f"removed domain sd-job-{ghost} on {site.uri}: domain carries our metadata for "
        "job 1:ghost#1 but no ledger owner",
        f"removed job folder {jobs_dir / '0000000000000000'}: job folder with no ledger owner",
        f"removed job folder {jobs_dir / ghost}: job folder with no ledger owner",
    ]
    assert site.domains() == {
        "sd-job-0123456789abcdef": DomainState.RUNNING,
        "sd-job-1111111111111111": DomainState.SHUTOFF,
        f"sd-job-{elsewhere}": DomainState.SHUTOFF,
    }
    assert site.sd("reap").out == "nothing to reap\n"
    for name in ("sd-job-0123456789abcdef", "sd-job-1111111111111111", f"sd-job-{elsewhere}"):
        hv.destroy(name)
        hv.undefine(name)


def _write_pool(site: Site) -> None:
    (site.root / "pool.sf").write_text(TWO_WITH_OVERLAYS, encoding="utf-8")


@pytest.fixture(autouse=True)
def _pool_file(request: pytest.FixtureRequest) -> None:
    if "site" in request.fixturenames:
        _write_pool(request.getfixturevalue("site"))


def start_and_die(config_file: str, file: str) -> None:
    """Child process: start pool `lab` and be killed (SIGKILL) once its first VM has started."""

    def progress(line: str) -> None:
        if line.startswith("[1/"):
            os.kill(os.getpid(), signal.SIGKILL)

    start_pool(load_config(Path(config_file)), "localhost", "lab", Path(file), progress=progress)


@libvirt_test
def test_a_pool_start_really_killed_half_way_leaves_nothing_after_a_reap(site: Site) -> None:
    child = multiprocessing.get_context("spawn").Process(
        target=start_and_die, args=(str(site.root / "site.toml"), str(site.root / "pool.sf"))
    )
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    assert site.rows()[0] == ["pool lab"]
    [line] = site.sd("reap").out.splitlines()  # its test:/// host died with it: rows only
    assert line.startswith(f"removed pool lab on {site.uri} (2 domains, 2 volumes")
    assert line.endswith(f"pool start interrupted (process {child.pid} died)")
    assert site.rows() == ([], [])


@libvirt_test
def test_the_helper_reaps_and_answers_one_json_line(site: Site) -> None:
    orphan = site.root / "state" / "jobs" / "0000000000000000"
    orphan.mkdir(parents=True)
    env = {**site.environ, "CONDOR_CONFIG": "/dev/null"}
    done = subprocess.run(
        [sys.executable, "-m", "sd_batch.batch.privileged", "reap"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "ok": True,
        "actions": [f"removed job folder {orphan}: job folder with no ledger owner"],
    }
    assert not orphan.exists()


def test_a_failing_reaper_never_takes_the_node_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    helper = tmp_path / "helper"
    helper.write_text(
        '#!/bin/sh\n[ "$1" = probe ] || { echo "reap broke" >&2; exit 3; }\n'
        'echo \'{"ok": true, "templates": ["minimal"], "free_memory_mib": 512}\'\n',
        encoding="utf-8",
    )
    helper.chmod(0o755)
    monkeypatch.setenv("_CONDOR_SMARTDOMAINS_HELPER", str(helper))
    out = io.StringIO()
    assert hooks.startd_cron(out) == 0
    assert "HasSmartDomains = true" in out.getvalue()


@libvirt_test
def test_sd_reap_takes_the_prepared_grace_and_a_dry_run_in_json_changes_nothing(
    site: Site,
) -> None:
    key = site.job("waiting")
    assert site.sd("reap").out == "nothing to reap\n"  # prepared a moment ago: within the hour
    dry = site.sd("reap", "--prepared-grace", "0", "--dry-run", "--json")
    data = json.loads(dry.out)
    assert data["dry_run"] is True
    assert [(a["target"], a["reason"], a["done"]) for a in data["actions"]] == [
        (f"job {key.owner_id}", "prepared 0 min ago and never run (grace 0 min)", False),
        (str(key.folder(site.config())), "its job is reaped", False),
    ]
    assert key.domain in site.domains() and key.folder(site.config()).is_dir()
    assert site.sd("reap", "--prepared-grace", "0").code == 0
    assert site.domains() == {} and site.rows() == ([], [])


def test_with_nothing_left_the_reaper_asks_no_hypervisor(tmp_path: Path) -> None:
    config = SiteConfig(state_dir=tmp_path / "state", default_uri="qemu:///nowhere")

    def no_connection(uri: str) -> Hypervisor:
        raise AssertionError(f"the reaper opened {uri}")

    assert reap(config, connections=Connections(no_connection)) == []
