"""Data subject rights end to end: calls from several numbers made through the emulator
(real TCP, the running server, a real database and files), then the command line in
another process: find in every written form, erase (with a held recording and a live
call), restrict, rectify, and bad input that changes nothing."""

from __future__ import annotations

import datetime as dt
import json

import gevent
import gevent.subprocess
import pytest

from fs_consent.emulator import CallerScript
from fs_consent.privacy import subjects
from fs_consent.privacy.errors import RecordingRestricted
from fs_consent.store import holds, ledger

from ..harness import Harness, fs_consent

A = "0612345678"
# every kind of prefix and separator (test_subjects.py generates the combinations in process)
A_FORMS = ["06-12345678", "06 12 34 56 78", "+31612345678", "00316 12345678", "+31 (0)6.1234.5678"]
G = "+31401234567"  # a geographic number, as the trunk delivers it
G_FORMS = ["040-1234567", "(040) 123 45 67", "0031 40 123 4567"]
B = "0687654321"


@pytest.fixture
def harness(tmp_path):
    with Harness(tmp_path / "data") as h:
        yield h




def register(h: Harness, ref: str, kind: str, *, days_ago: int = 1) -> None:
    received = (dt.date.today() - dt.timedelta(days=days_ago)).isoformat()
    done = fs_consent(h, "requests", "add", "--ref", ref, "--kind", kind, "--received", received,
                      "--identity-verified")
    assert done.returncode == 0, done.stderr


def found(h: Harness, number: str) -> list[str]:
    done = fs_consent(h, "subject", "find", "--phone", number, "--format", "json")
    assert done.returncode == 0, done.stderr
    assert "objection:" in done.stderr
    return [row["uuid"] for row in json.loads(done.stdout)]


def state(h: Harness) -> dict:
    return {
        "calls": sorted((c.uuid, c.caller_hash, bytes(c.caller_sealed) if c.caller_sealed else None,
                         c.personal_erased_at) for c in ledger.Call.select()),
        "recordings": sorted((r.id, r.state, r.deleted_at) for r in ledger.Recording.select()),
        "details": sorted((d.call_id, d.field, bytes(d.value_sealed)) for d in ledger.CallDetail.select()),
        "restrictions": sorted((r.id, r.lifted_at) for r in ledger.Restriction.select()),
        "store": h.store_files(), "spool": h.spool_files(),
        # the server's own periodic checkpoints may land meanwhile: they are not a subject command's doing
        "audit": ledger.AuditEntry.select().where(ledger.AuditEntry.action != "audit.checkpoint").count(),
    }


def test_every_written_form_of_a_number_finds_its_calls_and_only_those(harness):
    a1 = harness.call(caller_number=A).uuid
    a2 = harness.call(caller_number="+31612345678", digits=["1"]).uuid  # refused: no recording
    g1 = harness.call(caller_number=G).uuid
    harness.call(caller_number=B)
    for form in A_FORMS:
        assert found(harness, form) == [a1, a2], form
    for form in G_FORMS:
        assert found(harness, form) == [g1], form
    done = fs_consent(harness, "subject", "find", "--phone", "0612345678")
    assert done.returncode == 0
    assert "612345678" not in done.stdout + done.stderr and a1 in done.stdout
    (row,) = [r for r in json.loads(fs_consent(harness, "subject", "find", "--phone", G, "--format", "json").stdout)]
    (rec,) = harness.recordings_of(g1)
    assert (row["outcome"], row["recordings"]) == ("granted", f"{rec.id}:sealed")
    finds = [e for e in ledger.AuditEntry.select() if e.action == "subject.find"]
    assert len(finds) == len(A_FORMS) + len(G_FORMS) + 2
    assert all(A not in e.detail and "+31" not in e.detail for e in finds)


def test_erase_removes_every_trace_but_a_held_recording_which_it_names(harness):
    a1 = harness.call(caller_number=A, talk_seconds=0.3).uuid
    a2 = harness.call(caller_number="+31 6 12345678", talk_seconds=0.5, agent_keys=[(0.1, "*3")]).uuid  # held
    b1 = harness.call(caller_number=B).uuid
    (r1,), (r2,), (rb,) = (harness.recordings_of(u) for u in (a1, a2, b1))
    assert holds.is_held(r2.id) and harness.store_files() == sorted(f"{r.id}.age" for r in (r1, r2, rb))
    register(harness, "RE-1", "rectify")
    fixed = fs_consent(harness, "subject", "rectify", "--call", a1, "--field", "address", "--value", "-",
                       "--request", "RE-1", input="Stationsplein 1, Eindhoven\n")
    assert fixed.returncode == 0, fixed.stderr
    assert "Stationsplein" not in fixed.stdout
    register(harness, "ER-1", "erase")

    done = fs_consent(harness, "subject", "erase", "--phone", "0031 6 1234 5678", "--request", "ER-1")
    assert done.returncode == 1, done.stderr
    assert f"deleted 1 recordings ({r1.id}); erased the personal data of 1 calls ({a1})" in done.stdout
    assert f"kept the number of call {a2}: a recording of it is under legal hold" in done.stdout
    assert (f"refused: recording {r2.id} is under legal hold: hold #1 (agent flag, no case yet, aggression"
            in done.stderr)
    # no file of the erased recording, no plaintext, no number, no detail, not findable
    assert harness.store_files() == sorted([f"{r2.id}.age", f"{rb.id}.age"]) and harness.spool_files() == []
    call = harness.call_row(a1)
    assert (call.caller_hash, call.caller_sealed, call.personal_erased_reason) == (None, None, "erasure:ER-1")
    assert ledger.CallDetail.select().count() == 0
    assert ledger.Recording.get_by_id(r1.id).state == ledger.DELETED
    assert found(harness, A) == [a2]  # the hold keeps its call record
    assert found(harness, B) == [b1] and harness.call_row(b1).caller_sealed is not None
    (entry,) = [e for e in ledger.AuditEntry.select() if e.action == "subject.erase"]
    assert (entry.object_type, entry.object_id) == ("request", "ER-1")
    assert json.loads(entry.detail)["refused"] == {r2.id: 1}

    # once the hold is released, a rerun erases the rest
    assert fs_consent(harness, "hold", "release", "1").returncode == 0
    done = fs_consent(harness, "subject", "erase", "--phone", A, "--request", "ER-1")
    assert done.returncode == 0, done.stderr
    assert harness.store_files() == [f"{rb.id}.age"] and found(harness, A) == []
    again = fs_consent(harness, "subject", "erase", "--phone", A, "--request", "ER-1")
    assert again.returncode == 1 and "no calls from the number given" in again.stderr


def wait_for_live_call(h: Harness, number: str) -> ledger.Call:
    caller_hash = subjects.phone_hash(h.server.ctx.protector, number)
    with gevent.Timeout(10, AssertionError("the live call did not reach the ledger")):
        while True:
            h.server.ctx.writer.flush()
            live = [c for c in subjects.calls_of(caller_hash) if c.ended_at is None]
            if live and ledger.Recording.select().where(ledger.Recording.call == live[0].id).exists():
                return live[0]
            gevent.sleep(0.02)


def test_a_live_call_is_skipped_and_keeps_recording(harness):
    ended = harness.call(caller_number=A).uuid
    (old,) = harness.recordings_of(ended)
    register(harness, "ER-2", "erase")
    call = gevent.spawn(harness.emulator.place_call, CallerScript(caller_number=A, talk_seconds=2.0), timeout=20)
    live = wait_for_live_call(harness, A)
    done = fs_consent(harness, "subject", "erase", "--phone", A, "--request", "ER-2")
    assert done.returncode == 0, done.stderr
    assert f"skipped call {live.uuid}: still in progress" in done.stdout
    assert ledger.Recording.get_by_id(old.id).state == ledger.DELETED
    result = call.get()
    harness.settle()
    assert result.errors == [] and result.uuid == live.uuid
    (rec,) = harness.recordings_of(live.uuid)
    assert rec.state == ledger.SEALED and harness.store_files() == [f"{rec.id}.age"]
    assert found(harness, A) == [live.uuid]


def test_restrict_and_unrestrict_a_numbers_calls(harness):
    a1 = harness.call(caller_number=A).uuid
    a2 = harness.call(caller_number=A, digits=["1"]).uuid
    b1 = harness.call(caller_number=B).uuid
    register(harness, "RS-1", "restrict")
    done = fs_consent(harness, "subject", "restrict", "--phone", "+31 6 12 34 56 78", "--request", "RS-1")
    assert done.returncode == 0, done.stderr
    assert f"restricted 2 calls ({a1}, {a2})" in done.stdout
    rows = json.loads(fs_consent(harness, "subject", "find", "--phone", A, "--format", "json").stdout)
    assert [r["restricted"] for r in rows] == ["RS-1", "RS-1"]
    with pytest.raises(RecordingRestricted):
        subjects.refuse_if_restricted(harness.call_row(a1).id, legal_claim=None)
    assert subjects.refuse_if_restricted(harness.call_row(b1).id, legal_claim=None) is None
    register(harness, "RS-2", "restrict")
    done = fs_consent(harness, "subject", "unrestrict", "--phone", A, "--request", "RS-2")
    assert done.returncode == 0 and "lifted the restriction of 2 calls" in done.stdout
    assert subjects.refuse_if_restricted(harness.call_row(a1).id, legal_claim=None) is None
    actions = [e.action for e in ledger.AuditEntry.select() if e.action.startswith("subject.")]
    assert actions == ["subject.restrict", "subject.find", "subject.unrestrict"]


def test_bad_input_is_one_clear_error_and_changes_nothing(harness):
    harness.call(caller_number=A)
    b1 = harness.call(caller_number=B).uuid
    harness.call(caller_number=A, talk_seconds=0.5, agent_keys=[(0.1, "*3")])
    register(harness, "ER-3", "erase")
    register(harness, "ER-LATE", "erase", days_ago=45)
    register(harness, "RE-3", "rectify")
    before = state(harness)
    held = [r.id for r in ledger.Recording.select() if holds.is_held(r.id)][0]
    for args, message in (
        (["erase", "--phone", "06-1234", "--request", "ER-3"], "phone number given is not usable"),
        (["erase", "--phone", "Jan Jansen 12", "--request", "ER-3"], "phone number given is not usable"),
        (["erase", "--phone", A, "--request", "NOPE-1"], "no request NOPE-1"),
        (["erase", "--phone", A, "--request", "ER-LATE"], "is undecided"),
        (["erase", "--phone", A, "--request", "RE-3"], "needs a request of kind erase"),
        (["erase", "--phone", A, "--request", "ER-3", "--call", b1], "is not from the number given"),
        (["erase", "--phone", A, "--request", "ER-3", "--call", "nope"], "no call with uuid nope"),
        (["erase", "--phone", A, "--request", "ER-3", "--call",
          ledger.Recording.get_by_id(held).call.uuid], f"nothing was erased: recording {held} is under legal hold"),
        (["restrict", "--phone", "0201234567", "--request", "ER-3"], "needs a request of kind restrict"),
        (["rectify", "--call", "nope", "--field", "name", "--value", "X", "--request", "RE-3"], "no call with uuid"),
    ):
        done = fs_consent(harness, "subject", *args)
        assert done.returncode == 1, (args, done.stdout)
        assert done.stdout == "" and done.stderr.startswith("Error: ") and message in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1
        assert "Jansen" not in done.stderr and "06-1234" not in done.stderr
    assert state(harness) == before
