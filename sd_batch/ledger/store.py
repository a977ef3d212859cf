"""The state ledger: an sqlite record of everything sd-batch creates, so a crash is cleaned later.

Owns the ledger file (default `SiteConfig.state_dir / "ledger.sqlite3"`); its schema and its
migrations (`PRAGMA user_version`) are in `schema`, the values that carry no process in
`types` (both re-exported here). Protocol: record a resource (domain, volume, file) as
`creating` BEFORE creating it, mark it `created` after, forget the row once the thing is gone.
A row left `creating` by a process that died, or an owner whose process died, is a leftover
for the next run to finish. A pool being started records a claim per placed VM (its host,
memory, vCPUs), so that other starts count that room before the VM runs. Several processes
(two hooks on one worker) share the file: WAL mode, a busy timeout, and `BEGIN IMMEDIATE` for
every write so no two writers deadlock.
May import: errors, config, vm.domain_xml (OwnerKind), ledger.schema, ledger.types, sqlite3 and
the standard library.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.site import SiteConfig
from ..errors import LedgerError, OwnerExists
from ..vm.domain_xml import OwnerKind as OwnerKind  # one job/pool enum, the one domains carry
from .schema import MIGRATIONS, OWNER_COLUMNS, RESOURCE_COLUMNS, SCHEMA_VERSION, migrate, use_wal
from .types import Claim, Move, OwnerStatus, ResourceKind, ResourceState

#: The schema lives in ledger.schema, the process-free values in ledger.types; callers import
#: them from here too.
__all__ = [
    "BOOT_ID_FILE",
    "LEDGER_FILE",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "THIS_PROCESS",
    "Claim",
    "Ledger",
    "Leftovers",
    "Move",
    "Owner",
    "OwnerExists",
    "OwnerKind",
    "OwnerStatus",
    "ProcessRef",
    "Resource",
    "ResourceKind",
    "ResourceState",
    "current_boot_id",
    "default_path",
]

LEDGER_FILE = "ledger.sqlite3"
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


class _This(enum.Enum):
    PROCESS = "this process"


#: Default for `pid=`: the calling process answers for the row.
THIS_PROCESS = _This.PROCESS


@dataclass(frozen=True, slots=True)
class ProcessRef:
    """A process across time: pid, its start time (pids are reused) and the boot it ran in."""

    pid: int
    start_ticks: int | None
    boot_id: str

    @classmethod
    def of(cls, pid: int) -> ProcessRef:
        return cls(pid, _start_ticks(pid), current_boot_id())

    def is_alive(self) -> bool:
        if self.boot_id != current_boot_id():
            return False  # the machine rebooted since: every process of then is gone
        ticks = _start_ticks(self.pid)
        if ticks is not None or self.start_ticks is not None:
            return ticks is not None and ticks == self.start_ticks
        try:  # no /proc: signal 0 only says whether the pid exists
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


@dataclass(frozen=True, slots=True)
class Owner:
    """A pool or a job on a host; `process` is whose life bounds it (None: until terminated)."""

    row_id: int
    kind: OwnerKind
    owner_id: str
    host_uri: str
    description: str
    status: OwnerStatus
    created_at: float
    process: ProcessRef | None
    boot_id: str


@dataclass(frozen=True, slots=True)
class Resource:
    """One domain, volume or file an owner has (or is creating) on a host."""

    row_id: int
    owner_kind: OwnerKind
    owner_id: str
    kind: ResourceKind
    name: str
    host_uri: str
    state: ResourceState
    created_at: float
    process: ProcessRef


@dataclass(frozen=True, slots=True)
class Leftovers:
    """What crashed runs left: owners whose process died, rows stuck in `creating`."""

    owners: tuple[Owner, ...] = ()
    resources: tuple[Resource, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.owners or self.resources)


def current_boot_id() -> str:
    """This boot's id: a pid means nothing once the machine has rebooted."""
    try:
        return BOOT_ID_FILE.read_text(encoding="ascii").strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks after boot); None if unreadable
    or the process is a zombie (dead, only not yet waited for: its parent was killed too and
    the init of some containers reaps late)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # the command name may hold spaces and ')'
    if fields[:1] in (["Z"], ["X"]):
        return None
    return int(fields[19]) if len(fields) > 19 else None


def default_path(config: SiteConfig | None = None) -> Path:
    """The ledger of a site: its state folder (XDG state for users, /var/lib for root)."""
    return (config or SiteConfig()).state_dir / LEDGER_FILE


class Ledger:
    """One open ledger file. Each method is one transaction; nothing is cached in memory."""

    def __init__(self, db: sqlite3.Connection, path: Path, clock: Callable[[], float]) -> None:
        self._db = db
        self.path = path
        self._clock = clock

    @classmethod
    def open(
        cls,
        path: Path | None = None,
        *,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> Ledger:
        """Open (creating or migrating) the ledger at PATH, default the site state folder."""
        path = path if path is not None else default_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN ourselves (IMMEDIATE), Python issues none.
            db = sqlite3.connect(path, timeout=timeout, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(f"cannot open the ledger {path}: {exc}", hint=_HINT) from exc
        ledger = cls(db, path, clock)
        with ledger._errors("set up"):
            db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            use_wal(db, timeout)  # readers never block the writer
            db.execute("PRAGMA synchronous = FULL")  # an intent must survive a power cut
            db.execute("PRAGMA foreign_keys = ON")
            ledger._migrate()
        return ledger

    @classmethod
    def for_site(cls, config: SiteConfig) -> Ledger:
        return cls.open(default_path(config))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger {self.path}: cannot {what}: {exc}", hint=_HINT) from exc

    @contextlib.contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction, taking the write lock at BEGIN (no deadlock on upgrade)."""
        with self._errors(what):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _migrate(self) -> None:
        """Take the file to this schema. The usual open finds it there already: one read,
        no write transaction (each open took the write lock and committed a rewrite of
        user_version before: a WAL commit and its fsync on every open, ~1 ms a hook's request
        and more on a busy disk). Migrating re-reads the version under the lock."""
        with self._errors("read the schema version"):
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        with self._write("migrate the schema") as db:
            migrate(db, self.path)

    # --- owners ---

    def register_owner(
        self,
        kind: OwnerKind,
        owner_id: str,
        host_uri: str,
        *,
        description: str = "",
        status: OwnerStatus = OwnerStatus.STARTING,
        pid: int | None | _This = THIS_PROCESS,
        new_only: bool = False,
    ) -> Owner:
        """Record an owner, or take over an existing one (a requeued job, a restarted pool).

        PID is the process whose death leaves the owner's resources behind: the HTCondor
        starter for a job; None for a started pool, which lives until `sd terminate`.
        NEW_ONLY refuses an owner that exists (OwnerExists), in the same transaction as the
        write: two `sd start NAME` at once cannot both win.
        """
        process = _process(pid)
        now = self._clock()
        upsert = (
            " ON CONFLICT (kind, owner_id, host_uri) DO UPDATE SET"
            " description = excluded.description, status = excluded.status,"
            " updated_at = excluded.updated_at, pid = excluded.pid,"
            " pid_start = excluded.pid_start, boot_id = excluded.boot_id"
        )
        try:
            with self._write("record an owner") as db:
                db.execute(
                    "INSERT INTO owner (kind, owner_id, host_uri, description, status, created_at,"
                    " updated_at, pid, pid_start, boot_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    + ("" if new_only else upsert),
                    (
                        kind.value,
                        owner_id,
                        host_uri,
                        description,
                        status.value,
                        now,
                        now,
                        *_process_columns(process),
                    ),
                )
        except LedgerError as exc:
            if new_only and isinstance(exc.__cause__, sqlite3.IntegrityError):
                raise OwnerExists(
                    f"{kind.value} {owner_id} already exists on {host_uri}"
                ) from exc.__cause__
            raise
        found = self.owner(kind, owner_id, host_uri)
        if found is None:
            raise LedgerError(f"{kind.value} {owner_id} on {host_uri} does not read back")
        return found

    def set_status(
        self, owner: Owner, status: OwnerStatus, *, pid: int | None | _This = THIS_PROCESS
    ) -> Owner:
        """Move an owner on (`sd terminate` sets TERMINATING under its own pid)."""
        with self._write("update an owner") as db:
            db.execute(
                "UPDATE owner SET status = ?, updated_at = ?, pid = ?, pid_start = ?, boot_id = ?"
                " WHERE row_id = ?",
                (status.value, self._clock(), *_process_columns(_process(pid)), owner.row_id),
            )
        found = self.owner(owner.kind, owner.owner_id, owner.host_uri)
        if found is None:
            raise LedgerError(f"ledger {self.path}: {owner.kind.value} {owner.owner_id} is gone")
        return found

    def owner(self, kind: OwnerKind, owner_id: str, host_uri: str) -> Owner | None:
        with self._errors("read owners"):
            row = self._db.execute(
                f"SELECT {OWNER_COLUMNS} FROM owner"
                " WHERE kind = ? AND owner_id = ? AND host_uri = ?",
                (kind.value, owner_id, host_uri),
            ).fetchone()
        return _owner(row) if row else None

    def owners(self) -> tuple[Owner, ...]:
        with self._errors("read owners"):
            rows = self._db.execute(f"SELECT {OWNER_COLUMNS} FROM owner ORDER BY row_id").fetchall()
        return tuple(_owner(row) for row in rows)

    def forget_owner(self, owner: Owner) -> None:
        """Drop an owner once all its resources are forgotten; already gone is fine."""
        with self._write("forget an owner") as db:
            left = db.execute(
                "SELECT count(*) FROM resource WHERE owner_row = ?", (owner.row_id,)
            ).fetchone()[0]
            if left:
                raise LedgerError(
                    f"ledger {self.path}: {owner.kind.value} {owner.owner_id} still has "
                    f"{left} resource(s)",
                    hint="tear them down and forget them first",
                )
            db.execute("DELETE FROM owner WHERE row_id = ?", (owner.row_id,))

    def hand_over(self, giver: Owner, taker: Owner) -> None:
        """Every resource of GIVER becomes TAKER's, and GIVER is forgotten, in one step: a
        warm VM a job takes (`batch.warm`) is never without an owner, nor with two."""
        with self._write("hand resources over") as db:
            db.execute(
                "UPDATE resource SET owner_row = ? WHERE owner_row = ?",
                (taker.row_id, giver.row_id),
            )
            db.execute("DELETE FROM claim WHERE owner_row = ?", (giver.row_id,))
            db.execute("DELETE FROM move WHERE owner_row = ?", (giver.row_id,))
            db.execute("DELETE FROM owner WHERE row_id = ?", (giver.row_id,))

    # --- resources ---

    def record_intent(
        self, owner: Owner, kind: ResourceKind, name: str, host_uri: str | None = None
    ) -> Resource:
        """Write down, before creating it, that OWNER is about to create this resource.

        A row the same owner left behind (a crashed attempt) is taken over; one of another
        owner is a conflict: two owners must never share a domain name or a volume path.
        """
        uri = owner.host_uri if host_uri is None else host_uri
        process = ProcessRef.of(os.getpid())
        with self._write("record an intent") as db:
            row = db.execute(
                "SELECT owner_row FROM resource WHERE host_uri = ? AND kind = ? AND name = ?",
                (uri, kind.value, name),
            ).fetchone()
            if row is not None and row[0] != owner.row_id:
                raise LedgerError(
                    f"ledger {self.path}: {kind.value} {name} on {uri} belongs to another owner"
                )
            db.execute(
                "INSERT INTO resource (owner_row, kind, name, host_uri, state, created_at, pid,"
                " pid_start, boot_id) VALUES (?, ?, ?, ?, 'creating', ?, ?, ?, ?)"
                " ON CONFLICT (host_uri, kind, name) DO UPDATE SET state = 'creating',"
                " pid = excluded.pid, pid_start = excluded.pid_start, boot_id = excluded.boot_id",
                (owner.row_id, kind.value, name, uri, self._clock(), *_process_columns(process)),
            )
            found = db.execute(
                f"SELECT {RESOURCE_COLUMNS} WHERE r.host_uri = ? AND r.kind = ? AND r.name = ?",
                (uri, kind.value, name),
            ).fetchone()
        return _resource(found)

    def mark_created(self, resource: Resource) -> Resource:
        with self._write("mark a resource created") as db:
            changed = db.execute(
                "UPDATE resource SET state = 'created' WHERE row_id = ?", (resource.row_id,)
            ).rowcount
        if not changed:
            raise LedgerError(f"ledger {self.path}: {resource.kind.value} {resource.name} is gone")
        return dataclasses.replace(resource, state=ResourceState.CREATED)

    def forget(self, resource: Resource) -> None:
        """Drop the row of a resource that no longer exists; already forgotten is fine."""
        with self._write("forget a resource") as db:
            db.execute("DELETE FROM resource WHERE row_id = ?", (resource.row_id,))

    @contextlib.contextmanager
    def intent(
        self, owner: Owner, kind: ResourceKind, name: str, host_uri: str | None = None
    ) -> Iterator[Resource]:
        """`with ledger.intent(owner, ResourceKind.DOMAIN, name): hv.define(xml)`.

        Marks the resource created when the block succeeds. When it fails the row stays
        `creating`: the thing may exist half-made, and teardown must look for it.
        """
        resource = self.record_intent(owner, kind, name, host_uri)
        yield resource
        self.mark_created(resource)

    def resources(self, owner: Owner) -> tuple[Resource, ...]:
        """OWNER's resources, newest first: the order to tear them down in."""
        with self._errors("read resources"):
            rows = self._db.execute(
                f"SELECT {RESOURCE_COLUMNS} WHERE r.owner_row = ? ORDER BY r.row_id DESC",
                (owner.row_id,),
            ).fetchall()
        return tuple(_resource(row) for row in rows)

    # --- moves ---

    def record_move(
        self, owner: Owner, domain: str, from_uri: str, to_uri: str | None, reason: str
    ) -> Move:
        """Write down that DOMAIN left FROM_URI (for TO_URI, or for nowhere) and why."""
        move = Move(domain, from_uri, to_uri, reason, self._clock())
        with self._write("record a move") as db:
            db.execute(
                "INSERT INTO move (owner_row, domain, from_uri, to_uri, reason, at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (owner.row_id, domain, from_uri, to_uri, reason, move.at),
            )
        return move

    def moves(self, owner: Owner) -> tuple[Move, ...]:
        """OWNER's moves, oldest first (they go when the owner is forgotten)."""
        with self._errors("read moves"):
            rows = self._db.execute(
                "SELECT domain, from_uri, to_uri, reason, at FROM move WHERE owner_row = ?"
                " ORDER BY row_id",
                (owner.row_id,),
            ).fetchall()
        return tuple(Move(*row) for row in rows)

    # --- claims ---

    def record_claims(self, owner: Owner, claims: Iterable[Claim]) -> None:
        """Write down the room OWNER's placed VMs take on their hosts before any of them
        exists (replacing OWNER's earlier claims), for placements made meanwhile to count."""
        with self._write("record claims") as db:
            db.execute("DELETE FROM claim WHERE owner_row = ?", (owner.row_id,))
            db.executemany(
                "INSERT INTO claim (owner_row, domain, host_uri, memory_mib, vcpus)"
                " VALUES (?, ?, ?, ?, ?)",
                [(owner.row_id, c.domain, c.host_uri, c.memory_mib, c.vcpus) for c in claims],
            )

    def drop_claims(self, owner: Owner) -> None:
        """OWNER's start is over: its VMs run (libvirt counts them) or are gone. Safe once
        OWNER is forgotten: a new owner given its row id (another created_at) keeps its own."""
        with self._write("drop claims") as db:
            db.execute(
                "DELETE FROM claim WHERE owner_row IN"
                " (SELECT row_id FROM owner WHERE row_id = ? AND created_at = ?)",
                (owner.row_id, owner.created_at),
            )

    def claims(self) -> tuple[Claim, ...]:
        """The claims that hold room: those of owners still starting in a live process. A
        start whose process died (or ran before this boot) holds nothing, as for the reaper."""
        with self._errors("read claims"):
            rows = self._db.execute(
                "SELECT c.domain, c.host_uri, c.memory_mib, c.vcpus, o.pid, o.pid_start,"
                " o.boot_id FROM claim AS c JOIN owner AS o ON o.row_id = c.owner_row"
                " WHERE o.status = 'starting' AND o.pid IS NOT NULL ORDER BY c.row_id"
            ).fetchall()
        return tuple(Claim(*row[:4]) for row in rows if ProcessRef(*row[4:]).is_alive())

    def leftovers(self) -> Leftovers:
        """Owners whose process died (or whose machine rebooted), rows whose creator died."""
        owners = tuple(o for o in self.owners() if _owner_is_left(o))
        with self._errors("read resources"):
            rows = self._db.execute(
                f"SELECT {RESOURCE_COLUMNS} WHERE r.state = 'creating' ORDER BY r.row_id"
            ).fetchall()
        stuck = tuple(r for r in map(_resource, rows) if not r.process.is_alive())
        return Leftovers(owners, stuck)


_HINT = "check the state folder (state_dir in the site config) is writable by this user"


def _process(pid: int | None | _This) -> ProcessRef | None:
    if pid is None:
        return None
    return ProcessRef.of(os.getpid() if pid is THIS_PROCESS else int(pid))


def _process_columns(process: ProcessRef | None) -> tuple[Any, Any, str]:
    if process is None:
        return (None, None, current_boot_id())
    return (process.pid, process.start_ticks, process.boot_id)


def _owner_is_left(owner: Owner) -> bool:
    if owner.boot_id != current_boot_id():
        return True  # rebooted: its VMs are off and its process gone
    return owner.process is not None and not owner.process.is_alive()


def _owner(row: tuple[Any, ...]) -> Owner:
    row_id, kind, owner_id, host_uri, description, status, created, pid, start, boot = row
    process = ProcessRef(pid, start, boot) if pid is not None else None
    return Owner(
        row_id,
        OwnerKind(kind),
        owner_id,
        host_uri,
        description,
        OwnerStatus(status),
        created,
        process,
        boot,
    )


def _resource(row: tuple[Any, ...]) -> Resource:
    row_id, owner_kind, owner_id, kind, name, uri, state, created, pid, start, boot = row
    return Resource(
        row_id,
        OwnerKind(owner_kind),
        owner_id,
        ResourceKind(kind),
        name,
        uri,
        ResourceState(state),
        created,
        ProcessRef(pid, start, boot),
    )
