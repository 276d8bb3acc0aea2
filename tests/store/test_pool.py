"""The server's pool of PostgreSQL ledger connections (``storage.pool_size``), on a real server."""

from __future__ import annotations

import threading
import time

import pytest

from fs_consent.store import ledger
from fs_consent.store.connection import database, open_database, pooled, shutdown_database

from .. import harness
from ..harness import SERVER_URL

pytestmark = pytest.mark.skipif(not SERVER_URL, reason="FS_CONSENT_TEST_DATABASE not set")


@pytest.fixture
def pool_of_two():
    db = harness.TestDatabase()
    open_database(db.url, pool_size=2)
    database.close()  # the opening thread gives its connection back, as the server's hub does
    yield db
    shutdown_database()
    db.drop()


def backends(url: str) -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                            "AND pid <> pg_backend_pid()").fetchone()[0]


def test_a_thread_waiting_for_a_connection_does_not_keep_the_others_from_giving_theirs_back(pool_of_two):
    """Two threads hold both connections; a third asks and waits; the first gives its back:
    the third has it at once (peewee's one connect/close lock would hold the giver back until
    the waiter's 10 s timed out), and the database never sees more than pool_size backends."""
    assert pooled()
    release = [threading.Event(), threading.Event()]
    holding = threading.Barrier(3)
    got: list[float] = []

    def holder(n: int) -> None:
        ledger.sql("SELECT 1")
        holding.wait()
        release[n].wait()
        database.close()  # back to the pool

    def waiter() -> None:
        asked = time.monotonic()
        ledger.sql("SELECT 1")
        got.append(time.monotonic() - asked)
        database.close()

    holders = [threading.Thread(target=holder, args=(n,)) for n in (0, 1)]
    for t in holders:
        t.start()
    holding.wait()
    assert backends(pool_of_two.url) == 2
    late = threading.Thread(target=waiter)
    late.start()
    time.sleep(0.3)  # it waits in the pool
    assert got == []
    given = time.monotonic()
    release[0].set()
    late.join(timeout=15)
    waited_after_release = time.monotonic() - given
    release[1].set()
    for t in holders:
        t.join(timeout=15)
    assert got and waited_after_release < 1.0, waited_after_release
    assert backends(pool_of_two.url) <= 2


def test_check_names_the_pool_beside_the_servers_max_connections(tmp_path):
    """An operator sizing a shared PostgreSQL reads what each node may open from ``check``."""
    from dataclasses import replace

    from fs_consent.core.config import load_config
    from fs_consent.reports.check import OK, check_database
    from fs_consent.store.connection import close_database

    db = harness.TestDatabase()
    try:
        open_database(db.url)
        close_database()
        config = load_config(None, data_dir=tmp_path, env={"HOME": str(tmp_path)})
        config = replace(config, storage=replace(config.storage, database=db.url, pool_size=6))
        result = check_database(config)
        assert result.status == OK, result
        assert "at most 6 connections (storage.pool_size: 1 writer, 5 readers)" in result.detail
        assert "the PostgreSQL server allows" in result.detail
    finally:
        db.drop()
