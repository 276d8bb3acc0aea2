"""Objection (art. 21) end to end: real TCP, the emulator, a real database and real files.

While a number objects, its calls are not recorded (refused by objection, in the
ledger) and, by default, the caller hears no consent prompt; other numbers and
anonymous callers are untouched; once the objection is withdrawn, the number's next
call is asked and recorded again.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from fs_consent.privacy import objections, subject_requests
from fs_consent.privacy.subjects import phone_hash, protector_for
from fs_consent.store import ledger

from ..harness import Harness

A_CALLER_ID = "0612345678"  # how FreeSWITCH delivers A's first call
A_WRITTEN = "+31 6 12 34 56 78"  # how the privacy officer writes A's number
B_CALLER_ID = "0687654321"


@pytest.fixture
def harness(tmp_path):
    with Harness(tmp_path / "data") as h:
        yield h


def apps(result) -> list[str]:
    return [app for app, _arg in result.executed]


def hash_of(h: Harness, number: str) -> str:
    return phone_hash(protector_for(Path(h.config.storage.keys_dir)), number)


def new_request(ref: str) -> ledger.SubjectRequest:
    return subject_requests.add(ref, "object", dt.date.today(), actor="privacy-officer")


def assert_recorded(h: Harness, result) -> ledger.Recording:
    assert "play_and_get_digits" in apps(result) and "record_session" in apps(result)
    call = h.call_row(result.uuid)
    assert (call.outcome, call.decided_by) == ("granted", "silence")
    (rec,) = h.recordings_of(result.uuid)
    assert rec.state == ledger.SEALED and f"{rec.id}.age" in h.store_files()
    return rec


def assert_refused_by_objection(h: Harness, result) -> None:
    """Nothing recorded, the reason in the ledger, the caller still in the menu."""
    assert "record_session" not in apps(result) and result.recordings == {}
    assert apps(result)[-1] == "execute_extension"
    assert result.channel_vars["fs_consent"] == "refused"
    call = h.call_row(result.uuid)
    assert (call.outcome, call.decided_by) == ("refused", "objection")
    assert call.ended_at is not None and call.bridged_at is not None
    assert [(e.kind, e.outcome, e.by) for e in call.consent_events] == [("decision", "refused", "objection")]
    assert h.recordings_of(result.uuid) == [] and h.spool_files() == []
    (entry,) = ledger.AuditEntry.select().where((ledger.AuditEntry.object_id == result.uuid)
                                                & (ledger.AuditEntry.action == "consent.decision"))
    assert json.loads(entry.detail) == {"outcome": "refused", "by": "objection"}


def test_objection_stops_recording_the_next_call_until_it_is_withdrawn(harness):
    first = harness.call(digits=[None], caller_number=A_CALLER_ID)
    earlier = assert_recorded(harness, first)

    objections.place(hash_of(harness, A_WRITTEN), new_request("OBJ-2027-1"), actor="privacy-officer")

    objected = harness.call(digits=[None], caller_number="+31612345678")  # A, delivered in another form
    assert_refused_by_objection(harness, objected)
    assert "play_and_get_digits" not in apps(objected)  # objection_prompt = "skip": no consent prompt
    assert harness.call_row(objected.uuid).caller_hash == harness.call_row(first.uuid).caller_hash

    # meanwhile another number, and a caller without one, are asked and recorded as always
    other = assert_recorded(harness, harness.call(digits=[None], caller_number=B_CALLER_ID))
    anonymous = harness.call(digits=[None], caller_number="anonymous")
    assert harness.call_row(anonymous.uuid).caller_hash is None
    unknown = assert_recorded(harness, anonymous)

    # the objection is about what comes next: A's earlier recording is not withdrawn by it
    assert harness.call_row(first.uuid).outcome == "granted"
    assert sorted(harness.store_files()) == sorted(f"{r.id}.age" for r in (earlier, other, unknown))

    objections.withdraw(hash_of(harness, "06-12345678"), new_request("OBJ-2027-2"), actor="privacy-officer")
    again = harness.call(digits=[None], caller_number="0031612345678")
    assert_recorded(harness, again)
    # and asked means asked: A may refuse as anyone can
    refused = harness.call(digits=["1"], caller_number=A_CALLER_ID)
    assert (harness.call_row(refused.uuid).outcome, harness.call_row(refused.uuid).decided_by) == ("refused", "key")


def test_objection_with_the_prompt_played_records_nothing_whatever_the_caller_answers(tmp_path):
    with Harness(tmp_path / "data", objection_prompt="play") as h:
        first = h.call(digits=[None], caller_number=A_CALLER_ID)
        earlier = assert_recorded(h, first)
        objections.place(hash_of(h, A_WRITTEN), new_request("OBJ-1"), actor="privacy-officer")

        # the caller hears the prompt like everyone; silence (which is consent in opt-out mode) records nothing
        silent = h.call(digits=[None], caller_number=A_CALLER_ID)
        assert_refused_by_objection(h, silent)
        assert apps(silent).count("play_and_get_digits") == 1
        assert apps(silent).index("play_and_get_digits") < apps(silent).index("execute_extension")
        assert h.recordings_of(first.uuid)[0].state == ledger.SEALED

        # pressing the refuse digit is still the statement's "call again and press 1": it withdraws
        # consent for the recording made before the objection, within the callback window
        pressed = h.call(digits=["1"], caller_number=A_CALLER_ID)
        assert_refused_by_objection(h, pressed)
        h.settle()
        call = h.call_row(first.uuid)
        assert (call.outcome, call.withdrawn_by) == ("withdrawn", "callback")
        assert ledger.Recording.get_by_id(earlier.id).state == ledger.DELETED
        assert h.store_files() == []


def test_when_the_ledger_cannot_say_whether_the_number_objects_the_call_is_not_recorded(harness):
    """Fail closed for the recording, open for the call."""
    ledger.database.execute_sql("DROP TABLE objection")  # the look-up now fails in the database itself
    result = harness.call(digits=[None], caller_number=A_CALLER_ID)
    assert "record_session" not in apps(result) and "play_and_get_digits" not in apps(result)
    assert apps(result)[-1] == "execute_extension" and result.recordings == {}
    call = harness.call_row(result.uuid)
    assert (call.outcome, call.decided_by, call.recording_note) == ("error", "failure", "objection-unknown")
    assert call.bridged_at is not None and harness.store_files() == [] and harness.spool_files() == []

    # an anonymous caller needs no look-up and is asked as always
    assert_recorded(harness, harness.call(digits=[None], caller_number="anonymous"))
