"""The ledger file's layout: its tables (`MIGRATIONS`, `SCHEMA_VERSION`), the column lists rows
are read with, and the two steps that set up a connection: WAL mode (`use_wal`) and the schema
migrations (`migrate`, on `PRAGMA user_version`). SQL only: the Python values of a row are
`store`'s and `types`'. `store` re-exports `MIGRATIONS` and `SCHEMA_VERSION`.
May import: errors, sqlite3, tenacity (lazily: only a new file's switch to WAL needs it), the
standard library.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ..errors import LedgerError

#: Schema migrations: entry N takes the file from user_version N to N + 1. Append, never edit.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE owner (
        row_id      INTEGER PRIMARY KEY,
        kind        TEXT NOT NULL CHECK (kind IN ('pool', 'job')),
        owner_id    TEXT NOT NULL,
        host_uri    TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        status      TEXT NOT NULL,
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL,
        pid         INTEGER,
        pid_start   INTEGER,
        boot_id     TEXT NOT NULL,
        UNIQUE (kind, owner_id, host_uri)
    );
    CREATE TABLE resource (
        row_id      INTEGER PRIMARY KEY,
        owner_row   INTEGER NOT NULL REFERENCES owner (row_id) ON DELETE RESTRICT,
        kind        TEXT NOT NULL CHECK (kind IN ('domain', 'volume', 'file')),
        name        TEXT NOT NULL,
        host_uri    TEXT NOT NULL,
        state       TEXT NOT NULL CHECK (state IN ('creating', 'created')),
        created_at  REAL NOT NULL,
        pid         INTEGER NOT NULL,
        pid_start   INTEGER,
        boot_id     TEXT NOT NULL,
        UNIQUE (host_uri, kind, name)
    );
    CREATE INDEX resource_by_owner ON resource (owner_row);
    """,
    # 2: high availability's record of VMs moved off failed hosts (sd status shows them)
    """
    CREATE TABLE move (
        row_id      INTEGER PRIMARY KEY,
        owner_row   INTEGER NOT NULL REFERENCES owner (row_id) ON DELETE CASCADE,
        domain      TEXT NOT NULL,
        from_uri    TEXT NOT NULL,
        to_uri      TEXT,
        reason      TEXT NOT NULL,
        at          REAL NOT NULL
    );
    CREATE INDEX move_by_owner ON move (owner_row);
    """,
    # 3: the room a starting pool's placed VMs take before they run (concurrent `sd start`s)
    """
    CREATE TABLE claim (
        row_id      INTEGER PRIMARY KEY,
        owner_row   INTEGER NOT NULL REFERENCES owner (row_id) ON DELETE CASCADE,
        domain      TEXT NOT NULL,
        host_uri    TEXT NOT NULL,
        memory_mib  INTEGER NOT NULL,
        vcpus       INTEGER NOT NULL,
        UNIQUE (owner_row, domain)
    );
    CREATE INDEX claim_by_owner ON claim (owner_row);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

#: The columns `ledger._owner` and `ledger._resource` read a row from, in their order.
OWNER_COLUMNS = (
    "row_id, kind, owner_id, host_uri, description, status, created_at, pid, pid_start, boot_id"
)
RESOURCE_COLUMNS = (
    "r.row_id, o.kind, o.owner_id, r.kind, r.name, r.host_uri, r.state, r.created_at, "
    "r.pid, r.pid_start, r.boot_id FROM resource AS r JOIN owner AS o ON o.row_id = r.owner_row"
)


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Take the ledger PATH to SCHEMA_VERSION, inside the caller's write transaction on DB."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise LedgerError(
            f"ledger {path} has schema {version}, newer than {SCHEMA_VERSION}",
            hint="upgrade sd-batch on this machine",
        )
    if version == SCHEMA_VERSION:
        return  # another process migrated it meanwhile: nothing to write
    for number in range(version, SCHEMA_VERSION):
        for statement in MIGRATIONS[number].split(";"):
            if statement.strip():
                db.execute(statement)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def use_wal(db: sqlite3.Connection, timeout: float) -> None:
    """Switch a new ledger to WAL. Several processes opening a fresh file at once can get
    SQLITE_BUSY from the switch without sqlite's busy handler ever waiting, so retry it."""
    if str(db.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return  # the usual case: WAL is a property of the file, set once
    import tenacity

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_delay(timeout),
        wait=tenacity.wait_exponential(multiplier=0.01, max=0.25),
        retry=tenacity.retry_if_exception(
            lambda exc: isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)
        ),
        reraise=True,
    )
    retrying(db.execute, "PRAGMA journal_mode = WAL")
