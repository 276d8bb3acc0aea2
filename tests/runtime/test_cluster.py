"""The cluster bus on a real PostgreSQL: a question reaches a node and its answer comes back,
naming the node; a node does not hear its own broadcast."""

from __future__ import annotations

import gevent
import pytest

from fs_consent.runtime import cluster

from ..harness import SERVER_URL
from ..harness import TestDatabase as Database

needs_postgresql = pytest.mark.skipif(not SERVER_URL, reason="FS_CONSENT_TEST_DATABASE not set")


def test_only_a_postgresql_ledger_has_a_bus():
    assert cluster.conninfo("sqlite:////var/lib/fs-consent/ledger.db") is None
    assert cluster.conninfo("postgresql://u:p@db:5432/fsc?sslmode=require") == "postgresql://u:p@db:5432/fsc?sslmode=require"
    assert cluster.conninfo("postgres+pool://u@db/fsc") == "postgresql://u@db/fsc"
    assert cluster.conninfo("postgresqlext://u@db/fsc") == "postgresql://u@db/fsc"


@pytest.fixture
def database():
    db = Database()
    yield db
    db.drop()


def answering_bus(url: str, heard: list) -> cluster.ClusterBus:
    def handler(message):
        heard.append(message)
        bus.reply(message, {"ok": True, "echo": message.get("call_uuid")})
    bus = cluster.ClusterBus(url, "node-a", handler)
    return bus


def ask(url: str, message: dict, timeout: float = 3.0):
    return gevent.get_hub().threadpool.spawn(cluster.ask, url, message, timeout=timeout).get()


@needs_postgresql
def test_a_question_reaches_every_node_and_the_answer_names_the_node(database):
    heard: list = []
    bus = answering_bus(database.url, heard)
    bus.start()
    try:
        answer = ask(database.url, {"op": "withdraw", "call_uuid": "c-1"})
        assert answer["ok"] and answer["echo"] == "c-1" and answer["node"] == "node-a" and answer["pid"] == bus.pid
        assert [m["op"] for m in heard] == ["withdraw"]
        bus.publish({"op": "callback", "caller_hash": "h"})  # a node does not hear its own broadcast
        gevent.sleep(cluster.POLL_S * 2)
        assert [m["op"] for m in heard] == ["withdraw"]
    finally:
        bus.stop()


@needs_postgresql
def test_a_bus_whose_connections_are_terminated_listens_again_and_answers(database, caplog):
    import psycopg

    heard: list = []
    bus = answering_bus(database.url, heard)
    bus.start()
    try:
        assert ask(database.url, {"op": "withdraw", "call_uuid": "before"})["echo"] == "before"
        with psycopg.connect(database.url, autocommit=True) as admin:  # a restart or failover of PostgreSQL, for real
            ended = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchall()
        assert len(ended) >= 2  # the bus's listener and its sender
        with gevent.Timeout(10, AssertionError("the bus never noticed its lost connection")):
            while bus.connected:
                gevent.sleep(0.02)
        with gevent.Timeout(10, AssertionError("the bus never listened again")):
            while not bus.connected:
                gevent.sleep(0.02)
        # its answer goes out through the sender, whose connection was cut off too: it reconnects for it
        assert ask(database.url, {"op": "withdraw", "call_uuid": "after"})["echo"] == "after"
    finally:
        bus.stop()
    said = [r.getMessage() for r in caplog.records if r.name == "fs_consent.runtime.cluster"]
    assert any("lost the ledger's database" in m for m in said) and any("listening again" in m for m in said), said
    assert [m["call_uuid"] for m in heard] == ["before", "after"]
