"""Retention and legal hold end to end: the agent's aggression key, holds, and a purge
running next to the live server (real TCP, the emulator, a real database and files)."""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid

import gevent
import gevent.subprocess
import pytest

from fs_consent.emulator import CallerScript
from fs_consent.store import holds, ledger

from ..harness import Harness, age_decrypt, fs_consent, sha256


@pytest.fixture
def harness(tmp_path):
    with Harness(tmp_path / "data") as h:
        yield h




def future(days: int) -> str:
    return (ledger.utcnow() + dt.timedelta(days=days)).isoformat()


def test_the_agents_aggression_key_holds_the_recording_through_purges_until_released(harness):
    result = harness.call(digits=[None], talk_seconds=0.5, agent_keys=[(0.1, "*3")])
    assert ("bind_meta_app", "3 b a set::fs_consent_agent=aggression") in result.executed
    assert ("bind_meta_app", "2 b a set::fs_consent_agent=withdraw") in result.executed
    assert result.channel_vars["fs_consent"] == "granted"  # a flag changes nothing about consent
    call = harness.call_row(result.uuid)
    assert [(f.kind, f.by) for f in call.flags] == [("aggression", "agent_key")]
    (rec,) = harness.recordings_of(result.uuid)
    assert rec.state == ledger.SEALED
    (hold,) = holds.holds_on([rec.id])
    assert (hold.reason, hold.case_ref, hold.flag_id, hold.call_id) == ("aggression", None, call.flags[0].id, call.id)
    (info,) = result.recordings.values()
    assert sha256(age_decrypt(harness.identity, harness.store / f"{rec.id}.age")) == info.sha256

    purge = fs_consent(harness, "purge", "--as-of", future(61))
    assert purge.returncode == 0, purge.stderr
    assert "deleted 0 recordings" in purge.stdout and "kept under legal hold 1 recordings" in purge.stdout
    assert harness.store_files() == [f"{rec.id}.age"]

    release = fs_consent(harness, "hold", "release", rec.id)
    assert release.returncode == 0 and f"released hold #{hold.id}" in release.stdout
    purge = fs_consent(harness, "purge", "--as-of", future(61))
    assert purge.returncode == 0 and "deleted 1 recordings" in purge.stdout
    assert harness.store_files() == []
    assert ledger.Recording.get_by_id(rec.id).state_reason == "retention"


@pytest.mark.parametrize("script", [
    dict(digits=["1"], agent_keys=[(0.1, "*3")]),  # refused, then flagged
    dict(digits=[None], caller_keys=[(0.05, "*1")], agent_keys=[(0.3, "*3")], talk_seconds=0.6),  # withdrawn
], ids=["refused", "withdrawn"])
def test_a_call_flagged_without_consent_has_no_recording_but_keeps_the_flag(harness, script):
    result = harness.call(**script)
    assert result.channel_vars["fs_consent"] in ("refused", "withdrawn")
    call = harness.call_row(result.uuid)
    assert [f.kind for f in call.flags] == ["aggression"]
    assert all(r.state == ledger.DELETED for r in harness.recordings_of(result.uuid))
    assert ledger.LegalHold.select().count() == 0
    assert harness.store_files() == [] and harness.spool_files() == []
    assert ("call.flag", result.uuid) in [(e.action, e.object_id) for e in ledger.AuditEntry.select()]


def test_a_callback_refusal_leaves_a_held_recording_and_says_so(harness):
    flagged = harness.call(digits=[None], agent_keys=[(0.05, "*3")], caller_number="0611112222")
    (held,) = harness.recordings_of(flagged.uuid)
    assert holds.is_held(held.id)
    harness.call(digits=["1"], caller_number="+31611112222")  # the same number calls back and refuses
    harness.settle()
    assert ledger.Recording.get_by_id(held.id).state == ledger.SEALED
    assert harness.store_files() == [f"{held.id}.age"]
    assert harness.call_row(flagged.uuid).outcome == "granted"
    refused = [e for e in ledger.AuditEntry.select() if e.action == "consent.withdraw.refused"]
    assert [(e.object_id, json.loads(e.detail)["reason"]) for e in refused] == [(flagged.uuid, "legal-hold")]
    # and the withdraw command, through the server's control socket, names the hold
    cli = fs_consent(harness, "withdraw", flagged.uuid)
    assert cli.returncode != 0 and "under legal hold: hold #1 (agent flag, no case yet" in cli.stderr
    assert ledger.Recording.get_by_id(held.id).state == ledger.SEALED


def expired_history(h: Harness, n: int) -> None:
    """``n`` calls of 400 days ago, each with a sealed recording (small fake ciphertext)."""
    ended = ledger.utcnow() - dt.timedelta(days=400)
    with ledger.database.atomic():
        for i in range(n):
            call_id = ledger.Call.insert(uuid=str(uuid.uuid4()), started_at=ended, ended_at=ended,
                                         consent_mode="opt-out", language="nl", prompt_id="p", prompt_version="1",
                                         outcome="granted", caller_hash=f"{i:064x}", caller_sealed=b"x" * 40).execute()
            rid = uuid.uuid4().hex
            ledger.Recording.insert(id=rid, call=call_id, state=ledger.SEALED, started_at=ended).execute()
            path = h.store / f"{rid}.age"
            path.write_bytes(b"age-encryption.org/v1\n" + os.urandom(64))


def test_a_purge_runs_beside_live_calls(harness):
    expired_history(harness, 3000)
    purge = gevent.spawn(fs_consent, harness, "purge", "--batch-size", "100")
    results = []
    while not purge.ready():
        results.append(harness.emulator.place_call(CallerScript(digits=[None], talk_seconds=0.1), timeout=20))
    done = purge.get()
    harness.settle()
    assert done.returncode == 0, done.stderr
    assert "deleted 3000 recordings, erased 3000 call records" in done.stdout
    assert results and all(r.errors == [] for r in results)
    new = {r.uuid for r in results}
    for call_uuid in new:
        assert [rec.state for rec in harness.recordings_of(call_uuid)] == [ledger.SEALED]
        assert harness.call_row(call_uuid).caller_hash is not None
    assert len(harness.store_files()) == len(new)
