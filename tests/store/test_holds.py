"""Legal hold: placing, releasing, listing; what a hold protects against; bad input."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from fs_consent.core import consent
from fs_consent.privacy.withdrawal import recent_recorded_calls, withdraw_ended_call
from fs_consent.store import holds, ledger
from fs_consent.store.connection import close_database

from ..ledger_data import DAY, DataDir


@pytest.fixture
def data(tmp_path):
    d = DataDir(tmp_path / "data")
    yield d
    close_database()


def state(d: DataDir) -> tuple:
    """What a refused command must leave exactly as it was."""
    return (
        [(h.id, h.released_at) for h in ledger.LegalHold.select().order_by(ledger.LegalHold.id)],
        [(r.id, r.state) for r in ledger.Recording.select().order_by(ledger.Recording.id)],
        ledger.AuditEntry.select().count(),
        d.store_files(),
    )


# --- add, list, release through the CLI --------------------------------------------------


def test_hold_add_list_release(data):
    call, rec = data.add_call(age=3 * DAY)
    result = data.cli("hold", "add", rec.id, "--reason", "aggression", "--case", "PV-2027.001_a",
                      "--note", "caller threatened staff")
    assert result.exit_code == 0, result.output
    assert "placed hold #1 (case PV-2027.001_a, aggression, placed " in result.output
    assert f"on recording {rec.id} (call {call.uuid})" in result.output
    hold = ledger.LegalHold.get_by_id(1)
    assert (hold.recording_id, hold.call_id, hold.reason, hold.case_ref) == (rec.id, call.id, "aggression",
                                                                            "PV-2027.001_a")
    assert hold.placed_by == ledger.os_user() and hold.note == "caller threatened staff"
    (entry,) = data.audit("hold.")
    assert (entry.action, entry.actor, entry.object_id) == ("hold.add", ledger.os_user(), rec.id)
    assert "threatened" not in entry.detail  # free text stays out of the audit trail
    listed = json.loads(data.cli("hold", "list", "--format", "json").output)
    assert [(h["hold"], h["recording_id"], h["call_uuid"], h["case_ref"]) for h in listed] == [
        (1, rec.id, call.uuid, "PV-2027.001_a")]

    result = data.cli("hold", "release", rec.id, "--note", "case closed")
    assert result.exit_code == 0, result.output
    assert "released hold #1" in result.output
    hold = ledger.LegalHold.get_by_id(1)
    assert hold.released_at is not None and hold.released_by == ledger.os_user()
    assert [e.action for e in data.audit("hold.")] == ["hold.add", "hold.release"]
    assert json.loads(data.cli("hold", "list", "--format", "json").output) == []
    assert len(json.loads(data.cli("hold", "list", "--all", "--format", "json").output)) == 1


def test_hold_by_call_uuid_and_release_by_number_or_case(data):
    call, rec = data.add_call(age=3 * DAY)
    assert data.cli("hold", "add", call.uuid, "--reason", "intimidation", "--case", "A").exit_code == 0
    assert data.cli("hold", "add", call.uuid, "--reason", "other", "--case", "B").exit_code == 0
    assert holds.is_held(rec.id)
    assert data.cli("hold", "release", call.uuid, "--case", "A").exit_code == 0
    assert holds.is_held(rec.id)  # B still holds it
    result = data.cli("hold", "release", "2")
    assert result.exit_code == 0 and "released hold #2" in result.output
    assert not holds.is_held(rec.id)


def test_releasing_a_hold_past_the_term_says_the_next_purge_deletes_it(data):
    _, rec = data.add_call(age=0 * DAY, as_of=ledger.utcnow() - 90 * DAY)
    data.cli("hold", "add", rec.id, "--reason", "aggression", "--case", "X")
    result = data.cli("hold", "release", rec.id)
    assert "past its retention term: the next purge deletes it" in result.output


@pytest.mark.parametrize("args, message", [
    (["hold", "add", "0" * 32, "--reason", "aggression", "--case", "X"], "no recording or call with id"),
    (["hold", "add", "5c1b8c5e2a9f4d3b8e7f6a5b4c3d2e1f", "--reason", "aggression", "--case", "X"],
     "no recording with id 5c1b8c5e2a9f4d3b8e7f6a5b4c3d2e1f"),
    (["hold", "add", "no-such-call", "--reason", "aggression", "--case", "X"], "no recording or call with id"),
    (["hold", "add", "{rec}", "--reason", "aggression", "--case", "../etc"], "case reference '../etc' is not allowed"),
    (["hold", "add", "{rec}", "--reason", "aggression", "--case", "a/b"], "is not allowed"),
    (["hold", "add", "{rec}", "--reason", "aggression", "--case", ".hidden"], "is not allowed"),
    (["hold", "add", "{rec}", "--reason", "aggression", "--case", "x" * 65], "is not allowed"),
    (["hold", "add", "{rec}", "--reason", "aggression", "--case", "a b"], "is not allowed"),
    (["hold", "add", "{rec}", "--reason", "rudeness", "--case", "X"], "'rudeness' is not one of"),
    (["hold", "add", "{deleted}", "--reason", "aggression", "--case", "X"], "was deleted on"),
    (["hold", "add", "{deleted_call}", "--reason", "aggression", "--case", "X"], "was deleted on"),
    (["hold", "add", "{refused_call}", "--reason", "aggression", "--case", "X"], "has no recording (outcome refused)"),
    (["hold", "add", "{rec}", "--reason", "other", "--case", "EXISTING"], "is already under hold #1 (case EXISTING"),
    (["hold", "release", "{other}"], "no active hold on"),
    (["hold", "release", "{rec}", "--case", "OTHER"], "no active hold on"),
    (["hold", "release", "99"], "no hold #99"),
])
def test_bad_input_is_a_clear_error_and_changes_nothing(data, args, message):
    _, rec = data.add_call(age=3 * DAY)
    _, other = data.add_call(age=3 * DAY)
    deleted_call, deleted = data.add_call(age=3 * DAY, recording=ledger.DELETED)
    refused_call, _ = data.add_call(age=3 * DAY, recording=None, outcome="refused")
    holds.add(rec.id, reason="aggression", case_ref="EXISTING", note=None, actor="officer")
    names = {"rec": rec.id, "other": other.id, "deleted": deleted.id, "deleted_call": deleted_call.uuid,
             "refused_call": refused_call.uuid}
    before = state(data)
    result = data.cli(*[a.format(**names) for a in args])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert state(data) == before


def test_releasing_twice_is_refused(data):
    _, rec = data.add_call(age=3 * DAY)
    holds.add(rec.id, reason="other", case_ref="X", note=None, actor="a")
    holds.release("1", actor="a")
    with pytest.raises(holds.HoldError, match="hold #1 was already released on"):
        holds.release("1", actor="a")


def test_a_live_recording_cannot_be_held_yet(data):
    _, rec = data.add_call(age=0 * DAY, recording=ledger.RECORDING)
    with pytest.raises(holds.HoldError, match="still being recorded"):
        holds.add(rec.id, reason="aggression", case_ref="X", note=None, actor="a")


# --- what a hold protects against --------------------------------------------------------


def test_withdrawal_of_an_ended_held_call_is_refused_with_the_hold_named(data):
    call, rec = data.add_call(age=1 * DAY)
    holds.add(rec.id, reason="aggression", case_ref="PV-9", note=None, actor="officer")
    before = state(data)
    with pytest.raises(holds.RecordingHeld, match=r"under legal hold: hold #1 \(case PV-9, aggression"):
        withdraw_ended_call(call, by=consent.BY_COMMAND, actor="x", spool_dir=data.spool, vault=data.vault)
    assert state(data) == before
    # the command line, with no server running
    result = data.cli("withdraw", call.uuid)
    assert result.exit_code != 0 and "hold #1 (case PV-9" in result.output and "Traceback" not in result.output
    assert state(data) == before and data.call(call.id).outcome == "granted"


def test_callback_withdrawal_skips_held_recordings(data):
    held_call, held = data.add_call(age=dt.timedelta(hours=2), as_of=ledger.utcnow())
    free_call, free = data.add_call(age=dt.timedelta(hours=1), as_of=ledger.utcnow())
    holds.add(held.id, reason="aggression", case_ref="PV-1", note=None, actor="officer")
    window = dt.timedelta(hours=24)
    found = recent_recorded_calls(held_call.caller_hash, window, exclude_uuid="x")
    assert [c.uuid for c in found] == [free_call.uuid]
    assert [c.uuid for c in recent_recorded_calls(held_call.caller_hash, window, exclude_uuid="x", held=True)] == [
        held_call.uuid]


# --- agent flags ---------------------------------------------------------------------------


def test_a_flag_holds_the_recording_once_it_is_sealed(data):
    call, rec = data.add_call(age=0 * DAY, recording=ledger.RECORDING)
    flag = holds.flag_call(call.id, call.uuid, "aggression", by="agent_key", at=ledger.utcnow())
    assert not holds.is_held(rec.id)
    assert holds.hold_flagged(rec.id) == []  # not sealed yet
    ledger.Recording.update(state=ledger.SEALED).where(ledger.Recording.id == rec.id).execute()
    (hold,) = holds.hold_flagged(rec.id)
    assert (hold.flag_id, hold.reason, hold.case_ref, hold.placed_by) == (flag.id, "aggression", None, "server")
    assert holds.hold_flagged(rec.id) == []  # once
    assert "agent flag, no case yet" in holds.describe(hold)
    assert [e.action for e in data.audit()][-2:] == ["call.flag", "hold.add"]


def test_a_flag_after_the_seal_holds_at_once_and_a_flag_without_recording_stays(data):
    call, rec = data.add_call(age=0 * DAY)
    holds.flag_call(call.id, call.uuid, "aggression", by="agent_key", at=ledger.utcnow())
    assert holds.is_held(rec.id)
    refused, _ = data.add_call(age=0 * DAY, recording=None, outcome="refused")
    holds.flag_call(refused.id, refused.uuid, "aggression", by="agent_key", at=ledger.utcnow())
    assert [f.kind for f in refused.flags] == ["aggression"]
    assert ledger.LegalHold.select().where(ledger.LegalHold.call == refused.id).count() == 0


def test_a_live_withdrawal_after_the_seal_leaves_a_held_recording(data):
    """The bridge ended and the recording was sealed and held while the call went on:
    a withdrawal then (caller keys) is an erasure of a held recording, refused."""
    from types import SimpleNamespace

    from fs_consent.core.consent import DeleteRecording
    from fs_consent.runtime.driver import CallSession

    call, rec = data.add_call(age=0 * DAY, as_of=ledger.utcnow())
    _, free = data.add_call(age=0 * DAY, as_of=ledger.utcnow())
    holds.flag_call(call.id, call.uuid, "aggression", by="agent_key", at=ledger.utcnow())
    writer = SimpleNamespace(record=lambda fact: fact.apply(data.vault))
    ctx = SimpleNamespace(writer=writer, vault=data.vault, spool_dir=data.spool, now=ledger.utcnow)
    session = CallSession(sock=None, ctx=ctx)
    session._perform(DeleteRecording(rec.id, "withdrawn", sealed=True))
    assert data.recording(rec.id).state == ledger.SEALED and f"{rec.id}.age" in data.store_files()
    refused = data.audit("recording.delete.refused")
    assert [(e.object_id, json.loads(e.detail)["holds"]) for e in refused] == [(rec.id, [1])]
    session._perform(DeleteRecording(free.id, "withdrawn", sealed=True))  # not held: deleted as ever
    assert data.recording(free.id).state == ledger.DELETED and f"{free.id}.age" not in data.store_files()


def test_the_aggression_key_is_configurable_and_must_differ_from_the_withdraw_key(tmp_path):
    from fs_consent.core.config import ConfigError, load_config

    path = tmp_path / "c.toml"
    path.write_text('[consent]\naggression_key = "7"\n')
    assert load_config(path, env={"HOME": str(tmp_path)}).consent.aggression_key == "7"
    path.write_text('[consent]\naggression_key = "2"\n')
    with pytest.raises(ConfigError, match="consent.aggression_key: must differ from consent.agent_withdraw_key"):
        load_config(path, env={"HOME": str(tmp_path)})
