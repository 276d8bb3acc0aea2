"""How a CLI command opens the ledger: never creates one, and fails in one line.

Only ``serve`` (and ``keys init``, to record the new keys) may create a ledger. Every
other command opens an existing one, so a mistyped ``--data-dir`` is refused with
``no ledger at DIR: is --data-dir right?`` and nothing is created: no directory, no
file, no table (on PostgreSQL an absent schema is "no ledger" too). An older schema is
still upgraded here, as the README says.

Each way the ledger can be unusable is one line naming it, never a traceback: the data
dir is a file or unreadable, the database file is truncated, empty, not SQLite or
malformed, another process holds its write lock for longer than ``--lock-timeout``.
:func:`explain` turns a database error met later in a command (a lock, a damaged page)
into the same lines; ``cli.CliGroup`` calls it for whatever a command did not handle.

Exit status: 2 when the ledger is not where the command line or config says (no ledger,
a data dir that is not a directory), like a usage error; 1 for any other failure.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import click

SQLITE_MAGIC = b"SQLite format 3\x00"
DEFAULT_LOCK_TIMEOUT = 10.0  # seconds; --lock-timeout / FS_CONSENT_LOCK_TIMEOUT
MAX_LOCK_TIMEOUT = 3600.0


class LedgerUnavailable(click.ClickException):
    """The ledger cannot be used; the message says why in one line (exit status 1)."""


class LedgerMissing(LedgerUnavailable):
    """The ledger is not where the options say (exit status 2, as for a usage error)."""

    exit_code = 2


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (as ``connection.open_database`` reads it); None for a server."""
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None


def shown_url(config) -> str:
    return dict(config.describe())["storage.database"]  # a password masked


def _missing(config) -> LedgerMissing:
    path = sqlite_path(config.storage.database)
    data_dir = Path(config.storage.data_dir)
    if path is None:
        return LedgerMissing(f"no ledger at {shown_url(config)}: is storage.database right?")
    if path.parent == data_dir:  # the data dir's own ledger.db (the default)
        return LedgerMissing(f"no ledger at {data_dir}: is --data-dir right?")
    return LedgerMissing(f"no ledger at {path}: is storage.database right?")


def check_data_dir(config) -> None:
    """A data dir that exists must be a directory we can enter and read (a missing one is
    for the caller to judge: ``serve`` creates it, the others find no ledger in it)."""
    data_dir = Path(config.storage.data_dir)
    try:
        st = data_dir.stat()
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:
        raise LedgerUnavailable(f"cannot read the data dir {data_dir}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise LedgerMissing(f"the data dir {data_dir} is not a directory: is --data-dir right?")
    if not os.access(data_dir, os.R_OK | os.X_OK):  # the words of strerror(EACCES), as below
        raise LedgerUnavailable(f"cannot read the data dir {data_dir}: Permission denied")


def _check_sqlite_file(config, path: Path) -> None:
    """The file is there, readable, and looks like a whole SQLite database (its header)."""
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise _missing(config) from None
    except OSError as exc:
        raise LedgerUnavailable(f"cannot read the ledger at {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise LedgerUnavailable(f"the ledger at {path} is not a file")
    try:
        with open(path, "rb") as f:
            header = f.read(100)
    except OSError as exc:
        raise LedgerUnavailable(f"cannot read the ledger at {path}: {exc.strerror}") from None
    if not header:
        raise LedgerUnavailable(f"the ledger at {path} is damaged: the file is empty (0 bytes)")
    if not header.startswith(SQLITE_MAGIC[:len(header)]):
        raise LedgerUnavailable(f"the ledger at {path} is damaged: it is not a SQLite database file")
    if len(header) < 100:
        raise LedgerUnavailable(f"the ledger at {path} is damaged: truncated to {st.st_size} bytes")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    counted = header[92:96] == header[24:28]  # the page count is valid (SQLite >= 3.7.0 wrote it)
    wal = path.with_name(path.name + "-wal")
    wal_pending = wal.exists() and wal.stat().st_size > 0  # a checkpoint may be unfinished: SQLite sorts it out
    if counted and not wal_pending and st.st_size < pages * page_size:
        raise LedgerUnavailable(f"the ledger at {path} is damaged: truncated to {st.st_size} of "
                                f"{pages * page_size} bytes")


def open_ledger(config, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT, create: bool = False,
                announce=None) -> None:
    """Open the configured ledger for a command (``ledger.database`` is bound to it).

    Without ``create`` nothing is created: a missing database or an empty one (no
    fs-consent tables) raises :class:`LedgerMissing`. Any other problem raises
    :class:`LedgerUnavailable` with one line. An older schema is upgraded.
    """
    from ..store import ledger, migrations
    from ..store.connection import close_database, open_database

    url = config.storage.database
    path = sqlite_path(url)
    check_data_dir(config)
    if path is not None and not (create and not os.path.lexists(path)):
        _check_sqlite_file(config, path)  # an empty file is damaged even for ``keys init``
    try:
        try:
            if create:
                open_database(url, announce=announce, busy_timeout=lock_timeout)
                return
            open_database(url, migrate=False, busy_timeout=lock_timeout)
        except migrations.SchemaError as exc:
            raise LedgerUnavailable(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - each driver has its own errors; say it in one line
            raise LedgerUnavailable(explain(exc, config, lock_timeout)
                                    or f"cannot open the ledger at {shown_url(config)}: {_first_line(exc)}") from None
        try:
            db = ledger.database.obj
            version = migrations.read_schema_version(db)
            if version is None:
                if db.get_tables():
                    raise LedgerUnavailable(f"the database at {path or shown_url(config)} is not an fs-consent "
                                            "ledger: it has tables but no schema version")
                raise _missing(config)
            migrations.prepare(db, announce=announce)  # upgrades an older schema; refuses a newer one
        except migrations.SchemaError as exc:
            raise LedgerUnavailable(str(exc)) from None
        except LedgerUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001
            message = explain(exc, config, lock_timeout)
            if message is None:
                raise
            raise LedgerUnavailable(message) from None
    except BaseException:
        close_database()
        raise


_LOCKED = ("database is locked", "database table is locked", "database schema is locked")
_DAMAGED = ("database disk image is malformed", "file is not a database", "malformed database schema",
            "file is encrypted or is not a database")


def explain(exc: BaseException, config, lock_timeout: float) -> str | None:
    """One line for a database error that is about the ledger file itself, else None.

    SQLite's messages name no value from the data, so they may be shown.
    """
    from peewee import DatabaseError

    if not isinstance(exc, (DatabaseError, sqlite3.DatabaseError)):
        return None
    path = sqlite_path(config.storage.database)
    if path is None:
        return None
    text = _first_line(exc)
    lowered = text.lower()
    if any(m in lowered for m in _LOCKED):
        return f"the ledger at {path} is locked by another process; tried for {lock_timeout:g} s"
    if any(m in lowered for m in _DAMAGED):
        return f"the ledger at {path} is damaged: {text}"
    if "readonly database" in lowered:
        return f"cannot write the ledger at {path}: it is read-only for this user"
    if "unable to open database file" in lowered:
        return f"cannot open the ledger at {path}: unable to open the database file (can this user write its directory?)"
    if "disk i/o error" in lowered or "database or disk is full" in lowered:
        return f"cannot read or write the ledger at {path}: {text}"
    return None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
