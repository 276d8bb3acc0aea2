"""Binding the ledger's models to a database: open (creating or upgrading the schema), close."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from peewee import SqliteDatabase
from playhouse.db_url import connect as connect_url

from . import migrations
from .ledger import database


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def open_database(url: str, *, migrate: bool = True, announce: Callable[[str], None] | None = None,
                  busy_timeout: float = 5.0) -> None:
    """Bind the models to ``url``; create the schema of a new database, upgrade an older one.

    A database newer than this code raises ``migrations.SchemaTooNew`` (nothing changed); a
    failed upgrade step raises ``migrations.MigrationFailed`` (the database stays at the
    version before it). With ``migrate=False`` nothing is created or changed (a missing
    SQLite file is a ``migrations.SchemaError``): for checks that only read the version.
    ``busy_timeout``: how long (seconds) SQLite waits for another process's lock.
    """
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        created = not path.exists()
        if created and not migrate:
            raise migrations.SchemaError(f"no ledger database at {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        db = SqliteDatabase(
            str(path),
            lock_type="IMMEDIATE",  # writers queue at BEGIN, never fail on upgrade
            pragmas={"journal_mode": "wal", "synchronous": "normal", "foreign_keys": 1,
                     "busy_timeout": int(busy_timeout * 1000)},
        )
    else:
        db = connect_url(url)
        created = False
    database.initialize(db)
    db.connect(reuse_if_open=True)
    if created:
        os.chmod(path, 0o600)
    if not migrate:
        return
    try:
        migrations.prepare(db, announce=announce)
    except Exception:
        db.close()
        raise


def close_database() -> None:
    if database.obj is not None and not database.is_closed():
        database.close()
