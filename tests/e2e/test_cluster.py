"""Two nodes, one ledger: two `fs-consent serve` processes on one PostgreSQL and one store.

Each node has its own data dir and spool; both share the database, the store directory
and the keys (the caller hash is keyed: a number must hash the same on every node). The
emulator calls each node. What a caller, an officer or a sysadmin relies on across nodes:
a refusal on one node withdraws the number's recordings made on the other, live or ended;
an objection made through one node's config is honoured by the other at once; `withdraw`
run anywhere reaches the live call wherever it is (and says plainly when its node is
down); a node killed mid-run and restarted loses nothing and leaves the other's calls alone.

Each of these fails with two islands: the bus's parts (live calls elsewhere, recovery
that asks who holds an open call) with the bus disabled, the objection with separate
ledgers.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import socket
from pathlib import Path

import gevent
import pytest

from fs_consent.emulator import CallerScript
from fs_consent.store import ledger
from fs_consent.store.connection import close_database, open_database

from ..harness import SERVER_URL, age_decrypt, sha256
from ..harness import TestDatabase as Database
from .test_e2e_process import ServerProcess, free_port, wait_for

pytestmark = pytest.mark.skipif(not SERVER_URL, reason="FS_CONSENT_TEST_DATABASE not set")

NUMBER = "0612345678"  # as FreeSWITCH delivers it
WRITTEN = "+31 6 12 34 56 78"  # as the privacy officer writes it
RESTART = "UNKNOWN_FS_CONSENT_RESTART"


class Node(ServerProcess):
    def __init__(self, home: Path, config: Path):
        super().__init__(home, free_port())
        self.env["FS_CONSENT_CONFIG"] = str(config)

    @property
    def spool(self) -> Path:
        return self.data / "spool"

    def plaintexts(self) -> list[Path]:
        return sorted(self.spool.glob("*.wav")) if self.spool.exists() else []

    def call(self, **script) -> gevent.Greenlet:
        return gevent.spawn(self.emulator().place_call, CallerScript(**script), timeout=60)


class Cluster:
    def __init__(self, tmp_path: Path, database: Database):
        shared = tmp_path / "shared"  # the shared mount: store and keys
        self.store, self.keys = shared / "store", shared / "keys"
        config = tmp_path / "cluster.toml"
        config.write_text(f'[storage]\ndatabase = "{database.url}"\nstore_dir = "{self.store}"\n'
                          f'keys_dir = "{self.keys}"\n')
        self.a, self.b = Node(tmp_path / "a", config), Node(tmp_path / "b", config)

    def store_files(self) -> list[str]:
        return sorted(p.name for p in self.store.iterdir())


@pytest.fixture
def cluster(tmp_path):
    database = Database()
    c = Cluster(tmp_path, database)
    try:
        c.a.start()  # the first node creates the schema and the keys the second one finds
        c.b.start()
        open_database(database.url, migrate=False)
        yield c
    finally:
        close_database()
        for node in (c.a, c.b):
            if node.proc is not None and node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait()
        database.drop()


def row(call_uuid: str) -> ledger.Call:
    return ledger.Call.get(ledger.Call.uuid == call_uuid)


def recordings_of(call_uuid: str) -> list[ledger.Recording]:
    return list(ledger.Recording.select().join(ledger.Call).where(ledger.Call.uuid == call_uuid))


def sealed(call_uuid: str) -> bool:
    recs = recordings_of(call_uuid)
    return bool(recs) and all(r.state == ledger.SEALED for r in recs)


def apps(result) -> list[str]:
    return [app for app, _arg in result.executed]


def ok(job: gevent.Greenlet, *, killed: bool = False):
    """The call's result; one whose node was killed under it sees the app go without ``exit``."""
    result = job.get(timeout=90)
    assert [e for e in result.errors if not (killed and "without exit" in e)] == [], result.errors
    return result


def live_recording(node: Node, **script) -> tuple[gevent.Greenlet, Path]:
    """A call on ``node`` that gave consent and is being recorded now: its plaintext in that node's spool."""
    before = set(node.plaintexts())
    job = node.call(digits=[None], talk_seconds=8.0, **script)
    wait_for(lambda: set(node.plaintexts()) - before, timeout=15)
    (plaintext,) = set(node.plaintexts()) - before
    return job, plaintext


def test_a_refusal_on_b_withdraws_the_numbers_recordings_on_a_live_and_ended(cluster):
    a, b = cluster.a, cluster.b
    ended = ok(a.call(digits=[None], caller_number=NUMBER))
    wait_for(lambda: sealed(ended.uuid))
    (ended_rec,) = recordings_of(ended.uuid)
    assert f"{ended_rec.id}.age" in cluster.store_files()
    live, plaintext = live_recording(a, caller_number=NUMBER)

    refusal = ok(b.call(digits=["1"], caller_number=WRITTEN.replace(" ", "")))  # the same number, written otherwise
    assert refusal.channel_vars["fs_consent"] == "refused" and apps(refusal)[-1] == "execute_extension"

    # A's live recording is gone while the caller is still talking on A (not once the call ends)
    wait_for(lambda: not plaintext.exists(), timeout=5)
    assert not live.ready()
    result = ok(live)
    wait_for(lambda: row(result.uuid).ended_at is not None)
    for call_uuid in (ended.uuid, result.uuid):
        call = row(call_uuid)
        assert (call.outcome, call.withdrawn_by) == ("withdrawn", "callback"), call_uuid
        assert all(r.state == ledger.DELETED for r in recordings_of(call_uuid))
    assert cluster.store_files() == [] and a.plaintexts() == [] and b.plaintexts() == []
    assert (row(refusal.uuid).outcome, row(refusal.uuid).decided_by) == ("refused", "key")


def test_an_objection_placed_through_a_stops_recording_on_b_at_once(cluster):
    a, b = cluster.a, cluster.b
    before = ok(b.call(digits=[None], caller_number=NUMBER))
    wait_for(lambda: sealed(before.uuid))

    a.cli("requests", "add", "--ref", "OBJ-1", "--kind", "object", "--received", dt.date.today().isoformat(),
          "--identity-verified")
    a.cli("subject", "object", "--phone", WRITTEN, "--request", "OBJ-1")

    after = ok(b.call(digits=[None], caller_number=NUMBER))  # B's very next call from the number
    assert "record_session" not in apps(after) and after.recordings == {}
    assert apps(after)[-1] == "execute_extension"  # the caller still reaches the menu
    wait_for(lambda: row(after.uuid).ended_at is not None)
    call = row(after.uuid)
    assert (call.outcome, call.decided_by) == ("refused", "objection")
    assert recordings_of(after.uuid) == [] and b.plaintexts() == []
    assert cluster.store_files() == [f"{recordings_of(before.uuid)[0].id}.age"]  # the earlier one stays


def test_withdraw_run_against_b_reaches_the_live_call_on_a(cluster):
    a, b = cluster.a, cluster.b
    live, plaintext = live_recording(a)
    call_uuid = row_uuid_of(plaintext)

    done = b.cli("withdraw", call_uuid)
    assert done.stdout.strip() == f"withdrawn: live call {call_uuid}; by node {socket.gethostname()} (pid {a.proc.pid})"
    assert not plaintext.exists() and not live.ready()  # gone when the command answered, the call still on
    result = ok(live)
    assert result.uuid == call_uuid
    wait_for(lambda: row(call_uuid).ended_at is not None)
    call = row(call_uuid)
    assert (call.outcome, call.withdrawn_by) == ("withdrawn", "command")
    assert all(r.state == ledger.DELETED for r in recordings_of(call_uuid)) and cluster.store_files() == []
    (request,) = ledger.AuditEntry.select().where((ledger.AuditEntry.object_id == call_uuid)
                                                  & (ledger.AuditEntry.action == "consent.withdraw.request"))
    assert json.loads(request.detail) == {"live": True, "node": socket.gethostname()}


def row_uuid_of(plaintext: Path) -> str:
    """The call a spool file records (its name is the recording's id)."""
    wait_for(lambda: ledger.Recording.get_or_none(ledger.Recording.id == plaintext.stem) is not None)
    return ledger.Recording.get_by_id(plaintext.stem).call.uuid


def test_withdraw_of_a_call_whose_node_is_down_says_so_and_changes_nothing(cluster):
    a, b = cluster.a, cluster.b
    live, plaintext = live_recording(a)
    call_uuid = row_uuid_of(plaintext)
    a.stop(signal.SIGKILL)
    ok(live, killed=True)  # FreeSWITCH carries on: the caller talks to the end, recorded into A's spool

    refused = b.cli("withdraw", call_uuid, check=False)
    assert refused.returncode == 1
    assert "has not ended, but no node holds it live" in refused.stderr
    assert "its recovery will end the call" in refused.stderr and "Nothing was changed" in refused.stderr
    call = row(call_uuid)
    assert (call.outcome, call.ended_at, call.withdrawn_at) == ("granted", None, None)
    assert [r.state for r in recordings_of(call_uuid)] == [ledger.RECORDING] and plaintext.exists()

    a.start()  # recovery ends the call and seals what was recorded with consent
    assert sealed(call_uuid) and row(call_uuid).ended_at is not None
    (rec,) = recordings_of(call_uuid)
    done = b.cli("withdraw", call_uuid)  # now an ended call: withdrawn from B, its file in the shared store
    assert done.stdout.strip() == f"withdrawn: ended call {call_uuid}; deleted recordings: {rec.id}"
    assert cluster.store_files() == [] and row(call_uuid).outcome == "withdrawn"


def test_a_node_killed_mid_run_and_restarted_loses_nothing_and_leaves_the_other_nodes_calls_alone(cluster):
    a, b = cluster.a, cluster.b
    numbers = iter(f"06{20000000 + i:08d}" for i in range(100))

    def wave(node: Node, talk: float) -> list[tuple[gevent.Greenlet, str]]:
        scripts = [([None], talk), (["1"], talk), ([None], talk / 2), ([None], talk)]
        return [(node.call(digits=d, talk_seconds=t, caller_number=next(numbers)), d[0]) for d, t in scripts]

    on_a = wave(a, 3.0) + wave(a, 3.0)
    on_b = wave(b, 2.0)
    wait_for(lambda: len(a.plaintexts()) >= 3, timeout=15)
    a.stop(signal.SIGKILL)  # mid-run: A's callers carry on, FreeSWITCH records into A's spool
    a_results = [(ok(job, killed=True), digit) for job, digit in on_a]
    on_b += wave(b, 8.0)  # B's calls live while A starts again
    wait_for(lambda: len(b.plaintexts()) >= 3, timeout=15)
    a.start()
    b_results = [(ok(job), digit) for job, digit in on_b]
    gevent.sleep(0.5)

    wait_for(lambda: all(row(r.uuid).ended_at is not None for r, _ in a_results + b_results), timeout=20)
    wait_for(lambda: a.plaintexts() == [] and b.plaintexts() == [], timeout=20)
    assert ledger.Call.select().count() == len(a_results) + len(b_results)
    for result, digit in a_results:  # each has an outcome: decided before the kill, or error by the restart
        call = row(result.uuid)
        expected = "refused" if digit == "1" else "granted"
        assert call.outcome == expected or (call.outcome, call.decided_by) == ("error", "restart"), call.__data__
    for result, digit in b_results:  # untouched by A's recovery: decided by their callers, ended by their hang-up
        call = row(result.uuid)
        assert call.outcome == ("refused" if digit == "1" else "granted"), call.__data__
        assert call.hangup_cause != RESTART, call.__data__
    for result, _digit in a_results + b_results:
        if row(result.uuid).outcome != "granted":
            assert recordings_of(result.uuid) == []
            continue
        if all(info.discarded for info in result.recordings.values()):
            # A was killed between the decision and record_session, or before the bridge (FreeSWITCH then
            # discards the empty file): no audio was made, and recovery, finding no file, says it is lost
            states = [(r.state, r.state_reason) for r in recordings_of(result.uuid)]
            assert all(state == ledger.DISCARDED or (state, why) == (ledger.FAILED, "lost-in-crash")
                       for state, why in states), states
            continue
        try:  # made with consent: in the store, whole (recovery seals A's spool; a loaded machine takes a while)
            wait_for(lambda result=result: sealed(result.uuid), timeout=30)
        except AssertionError:
            raise AssertionError((row(result.uuid).__data__, [r.__data__ for r in recordings_of(result.uuid)],
                                  sorted(result.recordings))) from None
        (rec,) = recordings_of(result.uuid)
        (info,) = [i for p, i in result.recordings.items() if Path(p).stem == rec.id]
        assert sha256(age_decrypt(cluster.keys / "identity.txt", cluster.store / f"{rec.id}.age")) == info.sha256
