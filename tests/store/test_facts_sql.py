"""The consent facts' hand-written SQL: what the ledger holds after each fact, once and twice.

Every fact is applied twice here (as a journal replay after a crash does): the second time
must change nothing, and the audit trail must still chain from genesis.
"""

from __future__ import annotations

import datetime as dt

import pytest
from peewee import IntegrityError

from fs_consent.core import consent
from fs_consent.privacy import withdrawal
from fs_consent.store import facts, holds, ledger
from fs_consent.store.connection import close_database, open_database, sqlite_url
from fs_consent.store.ledger import AuditEntry, Call, ConsentEvent, Recording
from fs_consent.store.writer import Journal


class NoVault:
    def __init__(self):
        self.deleted = []

    def delete(self, recording_id, *, sync=True, tmp=True):
        self.deleted.append(recording_id)
        return True


@pytest.fixture
def db(tmp_path):
    open_database(sqlite_url(tmp_path / "ledger.db"))
    yield
    close_database()


T0 = dt.datetime(2025, 3, 1, 12, 0, 0, 123456)


def opened(instance="a" * 32, uuid="call-1", caller_hash="h1"):
    return facts.CallOpened(instance=instance, uuid=uuid, started_at=T0, consent_mode="opt-out", language="nl",
                            prompt_id="p", prompt_version="1", caller_hash=caller_hash, caller_sealed=b"\x00sealed",
                            recording_note=None)


def twice(fact, vault=None):
    for _ in range(2):
        with ledger.database.atomic():
            fact.apply(vault or NoVault())


def assert_chain_intact():
    prev = ledger.GENESIS_HASH
    for entry in AuditEntry.select().order_by(AuditEntry.seq):
        assert entry.prev_hash == prev
        assert entry.hash == ledger.entry_digest(prev, entry.at, entry.actor, entry.action, entry.object_type,
                                                 entry.object_id, entry.detail)
        prev = entry.hash


def test_a_whole_call_applied_twice_is_in_the_ledger_once(db):
    instance, rid = "a" * 32, "b" * 32
    twice(opened(instance))
    twice(facts.ConsentDecided(instance, "call-1", "decision", consent.GRANTED, consent.BY_SILENCE,
                               T0 + dt.timedelta(seconds=5)))
    twice(facts.RecordingStarted(instance, rid, T0 + dt.timedelta(seconds=5)))
    twice(facts.CallEnded(instance, answered_at=T0, bridged_at=T0 + dt.timedelta(seconds=7),
                          ended_at=T0 + dt.timedelta(seconds=30), duration_seconds=30.0, wait_seconds=2.0,
                          hangup_cause="NORMAL_CLEARING"))
    twice(facts.RecordingSealed(rid, 1234, "f" * 64, T0 + dt.timedelta(seconds=31)))

    call = Call.get(Call.instance == instance)
    assert (call.uuid, call.started_at, call.caller_hash, bytes(call.caller_sealed)) == ("call-1", T0, "h1",
                                                                                        b"\x00sealed")
    assert (call.outcome, call.decided_by, call.decided_at) == (consent.GRANTED, consent.BY_SILENCE,
                                                                 T0 + dt.timedelta(seconds=5))
    assert (call.ended_at, call.duration_seconds, call.wait_seconds, call.hangup_cause) == (
        T0 + dt.timedelta(seconds=30), 30.0, 2.0, "NORMAL_CLEARING")
    assert Call.select().count() == 1
    assert [(e.kind, e.outcome) for e in ConsentEvent.select()] == [("decision", consent.GRANTED)]
    rec = Recording.get_by_id(rid)
    assert (rec.call_id, rec.state, rec.size, rec.sha256) == (call.id, ledger.SEALED, 1234, "f" * 64)
    assert [e.action for e in AuditEntry.select().order_by(AuditEntry.seq)] == ["consent.decision",
                                                                               "recording.seal"]
    assert_chain_intact()


def test_a_withdrawal_after_the_decision_is_its_own_event(db):
    instance = "a" * 32
    twice(opened(instance))
    twice(facts.ConsentDecided(instance, "call-1", "decision", consent.GRANTED, consent.BY_SILENCE, T0))
    twice(facts.ConsentDecided(instance, "call-1", "withdrawal", consent.WITHDRAWN, consent.BY_COMMAND,
                               T0 + dt.timedelta(seconds=9)))
    call = Call.get(Call.instance == instance)
    assert (call.outcome, call.decided_by, call.withdrawn_by, call.withdrawn_at) == (
        consent.WITHDRAWN, consent.BY_SILENCE, consent.BY_COMMAND, T0 + dt.timedelta(seconds=9))
    assert [e.kind for e in ConsentEvent.select().order_by(ConsentEvent.id)] == ["decision", "withdrawal"]
    assert AuditEntry.select().count() == 2
    assert_chain_intact()


def test_a_fact_for_a_call_without_a_row_fails_loudly_and_attaches_to_no_other_call(db):
    twice(opened("a" * 32, uuid="other"))
    with pytest.raises(IntegrityError):
        with ledger.database.atomic():
            facts.ConsentDecided("c" * 32, "missing", "decision", consent.GRANTED, consent.BY_KEY, T0).apply(None)
    with pytest.raises(IntegrityError):
        with ledger.database.atomic():
            facts.RecordingStarted("c" * 32, "d" * 32, T0).apply(None)
    assert ConsentEvent.select().count() == 0 and Recording.select().count() == 0
    assert Call.get(Call.uuid == "other").outcome is None


def test_the_same_channel_uuid_twice_is_two_calls(db):
    twice(opened("a" * 32, uuid="same"))
    twice(opened("b" * 32, uuid="same"))
    assert sorted(c.instance for c in Call.select().where(Call.uuid == "same")) == ["a" * 32, "b" * 32]


def test_a_seal_of_a_flagged_call_places_the_hold(db):
    instance, rid = "a" * 32, "b" * 32
    twice(opened(instance))
    twice(facts.RecordingStarted(instance, rid, T0))
    twice(facts.CallFlagged(instance, "call-1", "aggression", consent.BY_AGENT_KEY, T0))
    twice(facts.RecordingSealed(rid, 10, "e" * 64, T0))
    assert holds.is_held(rid)
    assert_chain_intact()


def test_a_seal_after_a_withdrawal_deletes_the_ciphertext(db):
    instance, rid = "a" * 32, "b" * 32
    twice(opened(instance))
    twice(facts.RecordingStarted(instance, rid, T0))
    twice(facts.RecordingDeleted(rid, "withdrawn", T0))
    vault = NoVault()
    twice(facts.RecordingSealed(rid, 10, "e" * 64, T0), vault)
    assert Recording.get_by_id(rid).state == ledger.DELETED and vault.deleted == [rid, rid]


def test_the_callback_pre_check_agrees_with_the_full_look_up(db):
    window = dt.timedelta(days=1)
    now = ledger.utcnow()
    for n, (caller, outcome, state) in enumerate([("h1", consent.GRANTED, ledger.SEALED),
                                                  ("h2", consent.REFUSED, ledger.SEALED),
                                                  ("h3", consent.GRANTED, ledger.DELETED)]):
        instance, rid = f"{n:032d}", f"{n + 10:032d}"
        twice(facts.CallOpened(instance=instance, uuid=f"call-{n}", started_at=now, consent_mode="opt-out",
                               language="nl", prompt_id="p", prompt_version="1", caller_hash=caller,
                               caller_sealed=None, recording_note=None))
        twice(facts.ConsentDecided(instance, f"call-{n}", "decision", outcome, consent.BY_SILENCE, now))
        twice(facts.RecordingStarted(instance, rid, now))
        Recording.update(state=state).where(Recording.id == rid).execute()
    for caller in ("h1", "h2", "h3", "nobody"):
        full = (withdrawal.recent_recorded_calls(caller, window, exclude_uuid="x")
                + withdrawal.recent_recorded_calls(caller, window, exclude_uuid="x", held=True))
        assert withdrawal.any_recent_recorded_call(caller, window, exclude_uuid="x") == bool(full)
    assert withdrawal.any_recent_recorded_call("h1", window, exclude_uuid="x")
    assert not withdrawal.any_recent_recorded_call("h1", window, exclude_uuid="call-0")


def test_journal_lines_are_as_they_were_and_replay_to_the_same_fact(db):
    """The journal a previous version wrote must replay: the line format is unchanged."""
    import base64
    import dataclasses
    import json

    def old_to_json(fact):  # the former Fact.to_json, by dataclasses.asdict
        fields = {}
        for name, value in dataclasses.asdict(fact).items():
            if isinstance(value, dt.datetime):
                value = value.isoformat()
            elif isinstance(value, bytes):
                value = base64.b64encode(value).decode()
            fields[name] = value
        return json.dumps({"kind": fact.kind, **fields}, separators=(",", ":"), sort_keys=True)

    for fact in (opened(), facts.CallEnded("a" * 32, answered_at=None, bridged_at=None, ended_at=T0,
                                           duration_seconds=None, wait_seconds=None, hangup_cause=None),
                 facts.RecordingDeleted("b" * 32, "withdrawn", T0, sealed=True)):
        assert fact.to_json() == old_to_json(fact)
        assert facts.from_json(fact.to_json()).to_json() == fact.to_json()


def test_the_journal_knows_its_size_without_asking_the_disk(tmp_path):
    path = tmp_path / "ledger.journal"
    path.write_bytes(b"")
    path.chmod(0o600)
    journal = Journal(path)
    for seq in range(1, 4):
        assert journal.append(seq, facts.RecordingDiscarded(f"{seq:032d}"))
        assert journal.size() == path.stat().st_size
    assert [seq for seq, _ in Journal.read(path)] == [1, 2, 3]
    journal.reset()
    assert journal.size() == 0 == path.stat().st_size
    journal.close()
    reopened = Journal(path)
    assert reopened.append(4, facts.RecordingDiscarded("4" * 32)) and reopened.size() == path.stat().st_size
    reopened.close()
