"""The nodes sharing a ledger: a heartbeat and a clean stop touch only their own run's row, and
a second server started under a node's name is found by the first one's next beat.

A real SQLite ledger and the real writer thread; PostgreSQL runs the same SQL (test_e2e_nodes.py)."""

from __future__ import annotations

import logging

import gevent
import pytest

from fs_consent.store import ledger, nodes
from fs_consent.store.connection import close_database, open_database, sqlite_url
from fs_consent.store.writer import LedgerWriter


@pytest.fixture
def writer(tmp_path):
    open_database(sqlite_url(tmp_path / "ledger.db"))
    w = LedgerWriter()
    w.start()
    yield w
    w.stop()
    close_database()


def row(name: str) -> ledger.Node:
    return ledger.Node.get_by_id(name)


def test_a_second_server_under_one_node_name_is_reported_once_and_keeps_running_when_the_first_stops(writer, caplog):
    first_run = nodes.register("fs1", version="1", signing_key="ed25519:first")
    first = nodes.Heartbeat(writer, "fs1", first_run, every=0.02).start()
    gevent.sleep(0.1)
    writer.flush()
    assert not first.shared and row("fs1").last_seen > first_run  # alone: it beats

    second_run = nodes.register("fs1", version="1", signing_key="ed25519:second")  # the same name, elsewhere
    second = nodes.Heartbeat(writer, "fs1", second_run, every=0.02).start()
    with caplog.at_level(logging.ERROR, logger="fs_consent.store.nodes"):
        gevent.sleep(0.2)
        writer.flush()
    assert first.shared and not second.shared
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "another server has started under this node name" in errors[0]  # once, not per beat

    first.stop()  # the first one's clean stop does not mark the second one stopped
    assert row("fs1").stopped_at is None and row("fs1").signing_key == "ed25519:second"
    assert nodes.state(row("fs1")) == "running"
    second.stop()
    assert row("fs1").stopped_at is not None and nodes.state(row("fs1")) == "stopped"


def test_a_restart_takes_the_row_over_and_beats_as_before(writer):
    before = nodes.register("fs1", version="1", signing_key=None)
    after = nodes.register("fs1", version="2", signing_key=None)  # the same server, started again
    assert not nodes.seen("fs1", before)  # the killed run's beat (had it one left) finds the row not its own
    assert nodes.seen("fs1", after) and row("fs1").version == "2"
