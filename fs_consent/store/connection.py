"""Binding the ledger's models to a database: open (creating or upgrading the schema), close.

The server opens PostgreSQL through :class:`PooledLedgerDatabase` (a pool of
``storage.pool_size`` connections); a CLI command, which runs one statement after another
in one thread, opens a plain connection.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable

from peewee import PostgresqlDatabase, SqliteDatabase
from playhouse.db_url import connect as connect_url

from . import migrations
from .ledger import database

POOL_WAIT_S = 10.0  # a thread that finds every pooled connection in use waits this long, then fails (retried)


class PooledLedgerDatabase(PostgresqlDatabase):
    """peewee's PostgreSQL database whose connections come from a ``psycopg_pool.ConnectionPool``.

    Why psycopg_pool rather than peewee's own ``PooledPostgresqlDatabase``: peewee's pool
    sends ``SELECT 1`` on every check-out of an idle connection (a round trip per call-path
    read) and only notices a dead connection when a thread next asks for one; psycopg_pool
    hands out idle connections without a round trip, discards one returned broken (a
    terminated backend, a lost network) and opens its replacement in its own worker threads,
    off every caller's path, with backoff while the server is unreachable; its wait for a
    free connection is bounded (``PoolTimeout``, an ``OperationalError``: the writer retries
    it) and it counts what it did (``stats``). Both wait on native ``threading`` primitives,
    which is right here: the server does not monkey-patch, and only the ledger's native
    threads (the writer's, the readers') take connections, never the gevent hub while calls
    run.

    peewee keeps one connection per thread (``connect`` takes one from the pool, ``close``
    gives it back); the writer keeps its own for its life, each reader takes one per read.
    """

    def __init__(self, url: str, *, pool_size: int, **kwargs) -> None:
        self.pool_size = pool_size
        self._pool = None
        self._pool_lock = threading.Lock()
        self.main_thread_checkouts = 0  # connections taken on the main thread (the gevent hub's): start-up only
        super().__init__(url, prefer_psycopg3=True, **kwargs)
        # peewee holds one lock for every thread's connect and close, and _connect waits for a
        # free pooled connection inside it: a thread waiting there would keep the others from
        # giving theirs back (a deadlock until the wait times out). The state it guards is
        # per thread (peewee's thread-local connection), so each thread gets a lock of its own.
        self._lock = _ThreadLock()

    def _ledger_pool(self):
        with self._pool_lock:
            if self._pool is None:
                from psycopg_pool import ConnectionPool

                self._pool = ConnectionPool(self.database, min_size=1, max_size=self.pool_size, open=True,
                                            timeout=POOL_WAIT_S, configure=_autocommit,
                                            name="fs-consent-ledger")
            return self._pool

    def _connect(self):
        from psycopg_pool import PoolTimeout

        if threading.current_thread() is threading.main_thread():
            self.main_thread_checkouts += 1
        try:
            return self._ledger_pool().getconn()
        except PoolTimeout as exc:  # no connection within POOL_WAIT_S: unavailable, like a lost one
            import psycopg

            raise psycopg.OperationalError(f"no pooled ledger connection within {POOL_WAIT_S:g} s: {exc}") from exc

    def _close(self, conn) -> None:
        pool = self._pool
        if pool is None or pool.closed:
            conn.close()
        else:
            pool.putconn(conn)  # discarded and replaced by the pool if it came back broken

    def check_pool(self) -> None:
        """After a lost connection: the idle ones were most likely lost with it (a restarted
        server, terminated backends, a cut network). Test each (a round trip) and replace the
        dead, so the retry gets a live one instead of the next corpse."""
        pool = self._pool
        if pool is not None and not pool.closed:
            try:
                pool.check()
            except Exception:  # noqa: BLE001 - the server is away: the retry says so
                pass

    def stats(self) -> dict:
        """psycopg_pool's counters (pool_size, pool_available, requests_waiting, connections_lost, ...)."""
        return {} if self._pool is None else self._pool.get_stats()

    def close_pool(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.close(timeout=5)
                self._pool = None


class _ThreadLock(threading.local):
    """A lock per thread, for peewee's ``connect``/``close`` (see PooledLedgerDatabase)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()

    def __enter__(self):
        return self.lock.__enter__()

    def __exit__(self, *exc):
        return self.lock.__exit__(*exc)


def _autocommit(conn) -> None:
    conn.autocommit = True  # as peewee's own connections: its atomic() sends BEGIN itself


def pooled() -> bool:
    """Whether the ledger's connections come from a pool (the server on PostgreSQL)."""
    return isinstance(database.obj, PooledLedgerDatabase)


def reset_connection() -> None:
    """Forget this thread's connection after an error that may have broken it (a terminated
    backend, a lost network): it goes back to its pool, which discards it if it is broken,
    or is closed; the thread's next statement connects afresh. Any open transaction is gone
    with it (the caller retries the whole batch). SQLite keeps its connection: a lock or a
    full disk does not break it."""
    db = database.obj
    if db is None or isinstance(db, SqliteDatabase):
        return
    conn = db._state.conn
    db._state.reset()  # peewee's thread-local state: closed, no transaction
    if conn is not None:
        try:
            db._close(conn)
        except Exception:  # noqa: BLE001 - a broken connection may refuse even this
            pass
    if isinstance(db, PooledLedgerDatabase):
        db.check_pool()


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def open_database(url: str, *, migrate: bool = True, announce: Callable[[str], None] | None = None,
                  busy_timeout: float = 5.0, pool_size: int | None = None) -> None:
    """Bind the models to ``url``; create the schema of a new database, upgrade an older one.

    A database newer than this code raises ``migrations.SchemaTooNew`` (nothing changed); a
    failed upgrade step raises ``migrations.MigrationFailed`` (the database stays at the
    version before it). With ``migrate=False`` nothing is created or changed (a missing
    SQLite file is a ``migrations.SchemaError``): for checks that only read the version.
    ``busy_timeout``: how long (seconds) SQLite waits for another process's lock.
    ``pool_size``: PostgreSQL through a pool of at most that many connections (the server).
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
    elif pool_size is not None and url.split("://", 1)[0] in ("postgres", "postgresql"):
        db = PooledLedgerDatabase(url, pool_size=pool_size)
        created = False
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
    """Close this thread's connection (back to its pool, if pooled)."""
    if database.obj is not None and not database.is_closed():
        database.close()


def shutdown_database() -> None:
    """Close this thread's connection and the pool, if any (the server, at its very end)."""
    close_database()
    if isinstance(database.obj, PooledLedgerDatabase):
        database.obj.close_pool()
