"""The state ledger: intent before creation, crash leftovers, several processes at once."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

import pytest

from sd_batch.config.site import SiteConfig
from sd_batch.errors import LedgerError
from sd_batch.ledger import store as ledger_module
from sd_batch.ledger.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Claim,
    Ledger,
    OwnerStatus,
    ProcessRef,
    ResourceKind,
    ResourceState,
    default_path,
)
from sd_batch.vm.domain_xml import OwnerKind

from conftest import wait_until

URI = "test:///default"
# Child processes start by "spawn": forking a pytest process that may run libvirt's event
# thread is asking for trouble, and spawn is what a fresh hook process looks like anyway.
SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "ledger.sqlite3"


@pytest.fixture
def ledger(path: Path) -> Iterator[Ledger]:
    with Ledger.open(path) as opened:
        yield opened


# --- children (module level, so "spawn" can import them) ---


def _create_then_die(path: Path) -> None:
    """A hook that records its intent, then is killed before it can create anything."""
    ledger = Ledger.open(path)
    owner = ledger.register_owner(OwnerKind.JOB, "13.0", URI)
    ledger.record_intent(owner, ResourceKind.DOMAIN, "job-13-0")
    os.kill(os.getpid(), signal.SIGKILL)


def _create_then_wait(path: Path, recorded: EventType) -> None:
    ledger = Ledger.open(path)
    owner = ledger.register_owner(OwnerKind.JOB, "14.0", URI)
    ledger.record_intent(owner, ResourceKind.VOLUME, "/overlays/job-14-0.qcow2")
    recorded.set()
    time.sleep(60)  # the parent kills us


def _claim_then_die(path: Path) -> None:
    """An `sd start` killed after placing its VMs, before creating any."""
    ledger = Ledger.open(path)
    owner = ledger.register_owner(OwnerKind.POOL, "crashed", URI, new_only=True)
    ledger.record_claims(owner, [Claim("crashed-vm1", URI, 512, 1)])
    os.kill(os.getpid(), signal.SIGKILL)


def killed_in_a_child(target: Callable[[Path], None], path: Path) -> None:
    """Run TARGET(PATH) on a fresh ledger in a child process that kills itself half-way."""
    Ledger.open(path).close()
    child = SPAWN.Process(target=target, args=(path,))
    child.start()
    child.join(30)
    assert child.exitcode == -signal.SIGKILL


def _churn(path: Path, worker: int, count: int) -> None:
    """Create and tear down COUNT resources, keeping every other one."""
    ledger = Ledger.open(path)
    owner = ledger.register_owner(OwnerKind.POOL, f"pool-{worker}", URI)
    for number in range(count):
        with ledger.intent(owner, ResourceKind.DOMAIN, f"w{worker}-vm{number}") as entry:
            pass
        if number % 2:
            ledger.forget(entry)
    ledger.set_status(owner, OwnerStatus.ACTIVE, pid=None)


# --- tests ---


def test_open_creates_a_versioned_wal_database(path: Path) -> None:
    Ledger.open(path).close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    Ledger.open(path).close()  # reopening migrates nothing and loses nothing


def test_opening_a_current_ledger_writes_nothing(path: Path) -> None:
    """Every hook's request opens the ledger: an open that finds the schema current takes no
    write lock and commits nothing (a commit is an fsync)."""
    Ledger.open(path).close()
    watcher = sqlite3.connect(path)
    before = watcher.execute("PRAGMA data_version").fetchone()
    wal = path.with_name(path.name + "-wal")
    wal_size = wal.stat().st_size if wal.exists() else 0
    with Ledger.open(path) as ledger:
        assert ledger.owners() == ()
    assert watcher.execute("PRAGMA data_version").fetchone() == before
    assert (wal.stat().st_size if wal.exists() else 0) == wal_size
    watcher.close()


def test_a_ledger_from_a_newer_sd_batch_is_refused(path: Path) -> None:
    Ledger.open(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(LedgerError, match=f"schema 99, newer than {SCHEMA_VERSION}; upgrade sd"):
        Ledger.open(path)


def test_the_default_ledger_lives_in_the_site_state_folder(tmp_path: Path) -> None:
    assert default_path(SiteConfig(state_dir=tmp_path)) == tmp_path / "ledger.sqlite3"
    assert default_path() == SiteConfig().state_dir / "ledger.sqlite3"
    with Ledger.for_site(SiteConfig(state_dir=tmp_path / "site")) as ledger:
        assert ledger.path == tmp_path / "site" / "ledger.sqlite3"


def test_an_unusable_location_is_a_ledger_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(LedgerError, match="cannot open the ledger .*a-file/ledger.sqlite3"):
        Ledger.open(tmp_path / "a-file" / "ledger.sqlite3")


def test_the_intent_is_on_disk_before_the_resource_is_created(ledger: Ledger, path: Path) -> None:
    owner = ledger.register_owner(OwnerKind.JOB, "12.0", URI, description="debian-batch")
    with ledger.intent(owner, ResourceKind.DOMAIN, "job-12-0") as entry:
        # What another process sees while we would be calling define():
        with Ledger.open(path) as other:
            (seen,) = other.resources(owner)
        assert seen.state is ResourceState.CREATING
        assert (seen.name, seen.host_uri, seen.owner_id) == ("job-12-0", URI, "12.0")
    assert entry.state is ResourceState.CREATING
    (after,) = ledger.resources(owner)
    assert after.state is ResourceState.CREATED


def test_a_failed_creation_leaves_the_row_creating(ledger: Ledger) -> None:
    owner = ledger.register_owner(OwnerKind.JOB, "12.1", URI)
    with pytest.raises(RuntimeError), ledger.intent(owner, ResourceKind.VOLUME, "/o/x.qcow2"):
        raise RuntimeError("libvirt said no")
    (row,) = ledger.resources(owner)
    assert row.state is ResourceState.CREATING  # maybe half made: teardown must look


def test_forget_removes_rows_and_is_idempotent(ledger: Ledger) -> None:
    owner = ledger.register_owner(OwnerKind.JOB, "12.2", URI)
    entry = ledger.mark_created(ledger.record_intent(owner, ResourceKind.FILE, "/tmp/in.img"))
    with pytest.raises(LedgerError, match="job 12.2 still has 1 resource"):
        ledger.forget_owner(owner)
    ledger.forget(entry)
    ledger.forget(entry)
    ledger.forget_owner(owner)
    ledger.forget_owner(owner)
    assert ledger.owners() == ()
    with pytest.raises(LedgerError, match="is gone"):
        ledger.mark_created(entry)


def test_resources_come_newest_first_for_teardown(ledger: Ledger) -> None:
    owner = ledger.register_owner(OwnerKind.POOL, "web", URI, description="pool.sf")
    for name in ("/o/web-1.qcow2", "/o/web-2.qcow2"):
        ledger.record_intent(owner, ResourceKind.VOLUME, name)
    ledger.record_intent(owner, ResourceKind.DOMAIN, "web-1")
    assert [r.name for r in ledger.resources(owner)] == [
        "web-1",
        "/o/web-2.qcow2",
        "/o/web-1.qcow2",
    ]


def test_registering_again_takes_the_owner_over(ledger: Ledger) -> None:
    first = ledger.register_owner(OwnerKind.JOB, "15.0", URI)
    ledger.record_intent(first, ResourceKind.DOMAIN, "job-15-0")
    again = ledger.register_owner(OwnerKind.JOB, "15.0", URI, status=OwnerStatus.ACTIVE)
    assert again.row_id == first.row_id
    assert again.created_at == first.created_at
    assert again.status is OwnerStatus.ACTIVE
    assert len(ledger.resources(again)) == 1
    # the requeued job retries the same domain: the row is taken over, not doubled
    ledger.record_intent(again, ResourceKind.DOMAIN, "job-15-0")
    assert len(ledger.resources(again)) == 1


def test_two_owners_cannot_claim_one_resource(ledger: Ledger) -> None:
    one = ledger.register_owner(OwnerKind.JOB, "16.0", URI)
    two = ledger.register_owner(OwnerKind.JOB, "16.1", URI)
    ledger.record_intent(one, ResourceKind.VOLUME, "/o/shared.qcow2")
    with pytest.raises(LedgerError, match="belongs to another owner"):
        ledger.record_intent(two, ResourceKind.VOLUME, "/o/shared.qcow2")
    ledger.record_intent(two, ResourceKind.VOLUME, "/o/shared.qcow2", host_uri="test:///other")


def test_owner_status_and_fields_round_trip(ledger: Ledger) -> None:
    owner = ledger.register_owner(OwnerKind.POOL, "web", URI, description="pools/web.sf")
    assert owner.process == ProcessRef.of(os.getpid())
    active = ledger.set_status(owner, OwnerStatus.ACTIVE, pid=None)
    assert (active.status, active.process, active.description) == (
        OwnerStatus.ACTIVE,
        None,
        "pools/web.sf",
    )
    assert ledger.owners() == (active,)
    assert ledger.owner(OwnerKind.POOL, "web", "test:///elsewhere") is None


def test_a_row_left_creating_by_a_killed_process_is_a_leftover(path: Path) -> None:
    killed_in_a_child(_create_then_die, path)
    with Ledger.open(path) as ledger:
        leftovers = ledger.leftovers()
    assert [r.name for r in leftovers.resources] == ["job-13-0"]
    assert [o.owner_id for o in leftovers.owners] == ["13.0"]


def test_work_in_progress_of_a_live_process_is_no_leftover(path: Path) -> None:
    Ledger.open(path).close()
    recorded = SPAWN.Event()
    child = SPAWN.Process(target=_create_then_wait, args=(path, recorded))
    child.start()
    try:
        assert recorded.wait(30)
        with Ledger.open(path) as ledger:
            assert not ledger.leftovers()
    finally:
        child.kill()
        child.join(30)
    with Ledger.open(path) as ledger:
        assert [r.name for r in ledger.leftovers().resources] == ["/overlays/job-14-0.qcow2"]


def test_owners_without_a_process_stay_until_terminated(ledger: Ledger) -> None:
    ledger.register_owner(OwnerKind.POOL, "web", URI, status=OwnerStatus.ACTIVE, pid=None)
    assert not ledger.leftovers()


def test_everything_of_a_previous_boot_is_left_over(
    ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = ledger.register_owner(OwnerKind.POOL, "web", URI, status=OwnerStatus.ACTIVE, pid=None)
    job = ledger.register_owner(OwnerKind.JOB, "17.0", URI)
    ledger.record_intent(job, ResourceKind.DOMAIN, "job-17-0")
    assert not ledger.leftovers()
    rebooted = tmp_path / "boot_id"
    rebooted.write_text("00000000-0000-0000-0000-000000000000\n")
    monkeypatch.setattr(ledger_module, "BOOT_ID_FILE", rebooted)
    leftovers = ledger.leftovers()
    assert leftovers.owners == (pool, job)
    assert [r.name for r in leftovers.resources] == ["job-17-0"]


def test_a_reused_pid_is_not_the_recorded_process() -> None:
    me = ProcessRef.of(os.getpid())
    assert me.is_alive()
    assert me.start_ticks is not None
    assert not ProcessRef(me.pid, me.start_ticks + 1, me.boot_id).is_alive()


def test_a_killed_process_not_yet_waited_for_is_dead() -> None:
    """A zombie (killed, its parent not waiting yet) still has /proc/PID: it is dead anyway."""
    import subprocess

    child = subprocess.Popen(["sleep", "60"])
    try:
        recorded = ProcessRef.of(child.pid)
        assert recorded.is_alive()
        os.kill(child.pid, signal.SIGKILL)
        wait_until(
            lambda: Path(f"/proc/{child.pid}/stat").read_text().split(") ")[1][0] == "Z",
            "the child to die",
            10,
            every=0.01,
        )
        assert not recorded.is_alive()
    finally:
        child.kill()
        child.wait()


def test_several_processes_write_at_once(path: Path) -> None:
    Ledger.open(path).close()
    workers, count = 4, 40
    children = [SPAWN.Process(target=_churn, args=(path, w, count)) for w in range(workers)]
    for child in children:
        child.start()
    for child in children:
        child.join(120)
    assert [child.exitcode for child in children] == [0] * workers
    with Ledger.open(path) as ledger:
        owners = ledger.owners()
        assert sorted(o.owner_id for o in owners) == [f"pool-{w}" for w in range(workers)]
        for owner in owners:
            kept = ledger.resources(owner)
            assert len(kept) == count // 2
            assert {r.state for r in kept} == {ResourceState.CREATED}
        assert not ledger.leftovers()


def test_an_owner_that_must_be_new_is_refused_when_it_exists(ledger: Ledger) -> None:
    """Two `sd start NAME` at once: the second one's claim fails in the same transaction."""
    first = ledger.register_owner(OwnerKind.POOL, "lab", "test:///default", new_only=True)
    with pytest.raises(ledger_module.OwnerExists, match="pool lab already exists"):
        ledger.register_owner(OwnerKind.POOL, "lab", "test:///default", new_only=True)
    assert ledger.owners() == (first,)


# --- claims: the room of VMs placed, not yet running ---


def test_a_starting_pool_claims_room_until_its_start_is_over(ledger: Ledger, path: Path) -> None:
    owner = ledger.register_owner(OwnerKind.POOL, "lab", URI, new_only=True)
    claims = [Claim("lab-v1", URI, 384, 1), Claim("lab-v2", "test:///other", 768, 2)]
    ledger.record_claims(owner, claims)
    with Ledger.open(path) as other:  # what another `sd start` sees while placing
        assert other.claims() == tuple(claims)
    ledger.record_claims(owner, claims[:1])  # placed again: replaced, never doubled
    assert ledger.claims() == tuple(claims[:1])
    ledger.set_status(owner, OwnerStatus.ACTIVE, pid=None)
    assert ledger.claims() == ()  # running now: libvirt counts its VMs
    ledger.drop_claims(owner)
    ledger.forget_owner(owner)


def test_claims_go_with_their_owner(ledger: Ledger) -> None:
    owner = ledger.register_owner(OwnerKind.POOL, "lab", URI)
    ledger.record_claims(owner, [Claim("lab-v1", URI, 384, 1)])
    ledger.forget_owner(owner)  # a rolled-back start
    assert ledger.claims() == ()
    again = ledger.register_owner(OwnerKind.POOL, "lab", URI)
    assert again.row_id == owner.row_id and ledger.claims() == ()  # sqlite reuses the row id
    ledger.record_claims(again, [Claim("lab-v1", URI, 384, 1)])
    ledger.drop_claims(owner)  # the first start, late: the new owner keeps its claim
    assert ledger.claims() == (Claim("lab-v1", URI, 384, 1),)
    ledger.drop_claims(again)
    ledger.forget_owner(again)


def test_the_claims_of_a_killed_start_hold_no_room(path: Path) -> None:
    killed_in_a_child(_claim_then_die, path)
    with Ledger.open(path) as ledger:
        assert ledger.claims() == ()
        [crashed] = ledger.leftovers().owners  # the reaper's view agrees: it is a leftover
        assert crashed.owner_id == "crashed"


def test_a_ledger_of_schema_2_is_upgraded_and_keeps_its_rows(path: Path) -> None:
    """A ledger written before claims existed: its owners, resources and moves stay."""
    path.parent.mkdir(parents=True)
    db = sqlite3.connect(path)
    for script in MIGRATIONS[:2]:
        db.executescript(script)
    db.execute("PRAGMA user_version = 2")
    db.execute(
        "INSERT INTO owner (kind, owner_id, host_uri, description, status, created_at,"
        " updated_at, pid, pid_start, boot_id) VALUES ('pool', 'old', ?, 'old.sf', 'active',"
        " 1.0, 1.0, NULL, NULL, ?)",
        (URI, ledger_module.current_boot_id()),
    )
    db.execute(
        "INSERT INTO resource (owner_row, kind, name, host_uri, state, created_at, pid,"
        " pid_start, boot_id) VALUES (1, 'domain', 'old-vm1', ?, 'created', 1.0, 1, NULL, '')",
        (URI,),
    )
    db.execute(
        "INSERT INTO move (owner_row, domain, from_uri, to_uri, reason, at)"
        " VALUES (1, 'old-vm1', 'test:///a', ?, 'host a died', 2.0)",
        (URI,),
    )
    db.commit()
    db.close()
    assert SCHEMA_VERSION >= 3  # claims came with 3
    with Ledger.open(path) as ledger:
        [owner] = ledger.owners()
        assert (owner.owner_id, owner.status, owner.description) == (
            "old",
            OwnerStatus.ACTIVE,
            "old.sf",
        )
        assert [r.name for r in ledger.resources(owner)] == ["old-vm1"]
        assert [m.reason for m in ledger.moves(owner)] == ["host a died"]
        assert ledger.claims() == ()
        starting = ledger.register_owner(OwnerKind.POOL, "new", URI, new_only=True)
        ledger.record_claims(starting, [Claim("new-vm1", URI, 256, 1)])
        assert ledger.claims() == (Claim("new-vm1", URI, 256, 1),)
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    check.close()


def test_a_hand_over_moves_every_row_and_forgets_the_giver_in_one_step(ledger: Ledger) -> None:
    warm = ledger.register_owner(OwnerKind.JOB, "warm:minimal.ab12", URI)
    ledger.record_intent(warm, ResourceKind.FILE, "/s/jobs/ab12/sd-job-ab12.log")
    ledger.record_intent(warm, ResourceKind.DOMAIN, "sd-job-ab12")
    job = ledger.register_owner(OwnerKind.JOB, "1000:17.0", URI)
    ledger.record_intent(job, ResourceKind.FILE, "/s/jobs/cd34/input.img")
    ledger.hand_over(warm, job)
    assert [o.owner_id for o in ledger.owners()] == ["1000:17.0"]
    assert [r.name for r in ledger.resources(job)] == [  # newest first, as recorded
        "/s/jobs/cd34/input.img",
        "sd-job-ab12",
        "/s/jobs/ab12/sd-job-ab12.log",
    ]
    assert ledger.resources(warm) == ()
