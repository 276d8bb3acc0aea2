"""Every consent path, end to end: real TCP, the emulator, a real database and real files.

The ledger and the disk must be exactly what the privacy statement promises: a
refused or withdrawn call leaves no recording file, no plaintext, no ciphertext.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from dataclasses import replace

import gevent
import gevent.subprocess
import pytest
from gevent import socket  # the server runs in this process: a blocking socket would stall it

from fs_consent import esl
from fs_consent.emulator import CallerScript, FreeSwitchEmulator, WireChaos
from fs_consent.runtime.server import ConsentServer
from fs_consent.store import ledger

from ..harness import TIME_SCALE, Harness, age_decrypt, sha256


@pytest.fixture
def harness(tmp_path):
    with Harness(tmp_path / "data") as h:
        yield h


def wait_until(predicate, timeout: float = 5.0) -> bool:
    """Server-side clean-up runs just after the switch's side of a call ends."""
    with gevent.Timeout(timeout, False):
        while not predicate():
            gevent.sleep(0.01)
    return predicate()


def apps(result):
    return [app for app, _arg in result.executed]


def assert_no_trace(h: Harness, call_uuid: str) -> None:
    """No plaintext, no ciphertext, no recording that is not deleted."""
    assert h.spool_files() == []
    assert h.store_files() == []
    assert all(r.state == ledger.DELETED for r in h.recordings_of(call_uuid))


def test_refusal_records_nothing_and_the_call_goes_on(harness):
    result = harness.call(digits=["1"])
    assert result.channel_vars["fs_consent"] == "refused"
    assert "record_session" not in apps(result) and result.recordings == {}
    assert apps(result)[-1] == "execute_extension"  # into the menu all the same
    call = harness.call_row(result.uuid)
    assert (call.outcome, call.decided_by) == ("refused", "key")
    assert call.ended_at is not None and call.hangup_cause == "NORMAL_CLEARING"
    assert harness.recordings_of(result.uuid) == []
    assert_no_trace(harness, result.uuid)


def test_silence_is_consent_and_the_recording_is_sealed_for_age(harness):
    result = harness.call(digits=[None])
    assert result.channel_vars["fs_consent"] == "granted"
    assert result.channel_vars["RECORD_STEREO"] == "true" and result.channel_vars["RECORD_BRIDGE_REQ"] == "true"
    # recording starts before the caller is sent on to the menu
    assert apps(result).index("record_session") < apps(result).index("execute_extension")
    (info,) = result.recordings.values()
    assert info.channels == 2 and info.frames > 0
    call = harness.call_row(result.uuid)
    assert (call.outcome, call.decided_by) == ("granted", "silence")
    # wait time counts from the menu to staff, not the consent prompt (0.25 s timeout here)
    assert call.answered_at <= call.bridged_at <= call.ended_at
    assert 0 < call.wait_seconds < 0.2 and call.duration_seconds > call.wait_seconds
    assert call.consent_mode == "opt-out" and call.prompt_id and call.prompt_version
    assert call.caller_hash and call.caller_sealed and b"0612345678" not in call.caller_sealed
    (rec,) = harness.recordings_of(result.uuid)
    assert rec.state == ledger.SEALED and rec.size > 0
    ciphertext = harness.store / f"{rec.id}.age"
    assert harness.store_files() == [ciphertext.name] and harness.spool_files() == []
    assert sha256(ciphertext.read_bytes()) == rec.sha256
    assert ciphertext.read_bytes().startswith(b"age-encryption.org/v1\n")
    assert sha256(age_decrypt(harness.identity, ciphertext)) == info.sha256  # the WAV the switch wrote


def test_pressing_1_during_the_prompt_ends_it_at_once(harness):
    # a prompt as long as a consent question may be (12 s); the caller presses 1 after 0.2 s.
    # FreeSWITCH stops the prompt at the key (capture s1), and fs-consent waits for nothing more
    result = harness.call(digits=["1"], prompt_seconds=12.0, digit_after=0.2)
    assert result.channel_vars["fs_consent"] == "refused"
    assert apps(result).count("play_and_get_digits") == 1 and "playback" not in apps(result)
    assert apps(result)[-1] == "execute_extension"  # straight into the menu
    assert result.duration < 3  # answer, 0.2 s of prompt, menu and agent: not the 12 s prompt
    call = harness.call_row(result.uuid)
    assert (call.outcome, call.decided_by) == ("refused", "key")
    assert (call.decided_at - call.answered_at).total_seconds() < 1
    assert_no_trace(harness, result.uuid)


def test_another_digit_replays_the_prompt_then_silence_counts(harness):
    result = harness.call(digits=["5", None])
    assert apps(result).count("play_and_get_digits") == 2
    assert harness.call_row(result.uuid).outcome == "granted"


@pytest.mark.parametrize("completion_first", [False, True], ids=["hangup-first", "completion-first"])
def test_hangup_while_waiting_for_the_digit_is_abandoned(harness, completion_first):
    """s14: CHANNEL_HANGUP, then the completion; s13: the completion first, header for header a
    timeout's, then the socket app returns, then CHANNEL_HANGUP.  Both are a hang-up, not silence."""
    host, port = harness.server.address
    harness.emulator = FreeSwitchEmulator(
        host, port, spool_dir=harness.spool, time_scale=TIME_SCALE,
        chaos=WireChaos.only(completion_before_hangup=1.0 if completion_first else 0.0))
    result = harness.call(hangup_in_timeout=True)
    assert "record_session" not in apps(result) and "execute_extension" not in apps(result)
    assert harness.call_row(result.uuid).outcome == "abandoned"
    assert_no_trace(harness, result.uuid)


def test_hangup_during_the_prompt_is_abandoned(harness):
    result = harness.call(hangup_in_prompt=True)
    assert "record_session" not in apps(result) and "execute_extension" not in apps(result)
    assert harness.call_row(result.uuid).outcome == "abandoned"
    assert result.exited  # we said exit after the linger notice: FreeSWITCH is not held
    assert_no_trace(harness, result.uuid)


@pytest.mark.parametrize("keys, by", [
    (dict(caller_keys=[(0.1, "*1")]), "caller_keys"),
    (dict(agent_keys=[(0.1, "*2")]), "agent_key"),
])
def test_withdrawal_during_the_call_deletes_every_byte(harness, keys, by):
    result = harness.call(digits=[None], talk_seconds=0.5, **keys)
    assert result.channel_vars["fs_consent"] == "withdrawn"
    assert any(cmd.startswith("uuid_record ") and " stop " in cmd for cmd in result.api_commands)
    assert list(result.recordings)  # it had started
    call = harness.call_row(result.uuid)
    assert (call.outcome, call.withdrawn_by) == ("withdrawn", by)
    (rec,) = harness.recordings_of(result.uuid)
    assert (rec.state, rec.state_reason) == (ledger.DELETED, "withdrawn")
    assert_no_trace(harness, result.uuid)
    # the confirmation prompt went to the caller
    assert any(cmd.startswith("uuid_broadcast ") for cmd in result.api_commands)


def test_agent_key_listens_on_the_agent_leg_and_runs_on_ours(harness):
    result = harness.call(digits=["1"])
    assert ("bind_meta_app", "2 b a set::fs_consent_agent=withdraw") in result.executed


def test_withdraw_command_reaches_a_live_call(harness, tmp_path):
    call = gevent.spawn(harness.emulator.place_call,
                        CallerScript(
                            digits=[None], talk_seconds=3.0), timeout=20)
    with gevent.Timeout(10):
        while not harness.spool_files():
            gevent.sleep(0.02)
    (live_uuid,) = [session.facts.uuid for session in harness.server.ctx.registry.values()]
    cli = gevent.subprocess.run(
        [sys.executable, "-m", "fs_consent.cli", "--data-dir", str(harness.config.storage.data_dir),
         "withdraw", live_uuid], capture_output=True, text=True, timeout=20)
    assert cli.returncode == 0, cli.stderr
    assert f"withdrawn: live call {live_uuid}" in cli.stdout
    assert harness.spool_files() == []  # gone before the command returned
    result = call.get(timeout=20)
    harness.settle()
    assert result.channel_vars["fs_consent"] == "withdrawn"
    assert harness.call_row(live_uuid).withdrawn_by == "command"
    assert_no_trace(harness, live_uuid)


def test_withdraw_command_for_an_ended_call_and_for_an_unknown_one(harness):
    result = harness.call(digits=[None])
    assert len(harness.store_files()) == 1
    base = [sys.executable, "-m", "fs_consent.cli", "--data-dir", str(harness.config.storage.data_dir), "withdraw"]
    cli = gevent.subprocess.run(base + [result.uuid], capture_output=True, text=True, timeout=20)
    assert cli.returncode == 0, cli.stderr
    assert "withdrawn: ended call" in cli.stdout
    call = harness.call_row(result.uuid)
    assert (call.outcome, call.withdrawn_by) == ("withdrawn", "command")
    assert_no_trace(harness, result.uuid)
    cli = gevent.subprocess.run(base + ["no-such-call"], capture_output=True, text=True, timeout=20)
    assert cli.returncode != 0 and "unknown call no-such-call" in cli.stderr


def test_callback_refusal_deletes_the_earlier_recording_of_that_number(harness):
    earlier = harness.call(digits=[None], caller_number="06 1111 2222")
    other = harness.call(digits=[None], caller_number="0633334444")
    assert len(harness.store_files()) == 2
    harness.call(digits=["1"], caller_number="+31611112222")  # same number, written differently
    harness.settle()
    call = harness.call_row(earlier.uuid)
    assert (call.outcome, call.withdrawn_by) == ("withdrawn", "callback")
    assert [r.state for r in harness.recordings_of(earlier.uuid)] == [ledger.DELETED]
    (kept,) = harness.recordings_of(other.uuid)
    assert kept.state == ledger.SEALED and harness.store_files() == [f"{kept.id}.age"]


def test_caller_hangup_while_recording_seals_what_was_said(harness):
    result = harness.call(digits=[None], talk_seconds=2.0, caller_hangup_after=0.2)
    (info,) = result.recordings.values()
    assert info.completion_cause == "success-silence"
    (rec,) = harness.recordings_of(result.uuid)
    assert rec.state == ledger.SEALED
    assert sha256(age_decrypt(harness.identity, harness.store / f"{rec.id}.age")) == info.sha256


def test_hold_masks_the_recording(harness):
    result = harness.call(digits=[None], talk_seconds=0.6, hold=[(0.1, 0.3)])
    (info,) = result.recordings.values()
    assert info.masked_seconds > 0.2
    assert any(" mask " in c for c in result.api_commands) and any(" unmask " in c for c in result.api_commands)


def test_never_bridged_recording_is_discarded_not_kept(harness):
    result = harness.call(digits=[None], bridge=False)
    (info,) = result.recordings.values()
    assert info.discarded
    (rec,) = harness.recordings_of(result.uuid)
    assert rec.state == ledger.DISCARDED
    assert harness.spool_files() == [] and harness.store_files() == []


def test_opt_in_mode(tmp_path):
    with Harness(tmp_path / "data", mode="opt-in") as h:
        granted = h.call(digits=["2"])
        silent = h.call(digits=[None])
        assert h.call_row(granted.uuid).outcome == "granted" and len(granted.recordings) == 1
        assert (h.call_row(silent.uuid).outcome, h.call_row(silent.uuid).decided_by) == ("refused", "silence")
        assert silent.recordings == {} and silent.channel_vars["fs_consent"] == "refused"


def test_no_recipient_means_no_recording_but_the_call_goes_on(tmp_path):
    (tmp_path / "data").mkdir(mode=0o700)
    keys_dir = tmp_path / "data" / "keys"
    keys_dir.mkdir(mode=0o700)
    (keys_dir / "recipients.txt").write_text("# nobody yet\n")
    with Harness(tmp_path / "data") as h:
        result = h.call(digits=[None])
        assert result.channel_vars["fs_consent"] == "granted"
        assert "record_session" not in apps(result) and apps(result)[-1] == "execute_extension"
        assert h.call_row(result.uuid).recording_note == "no-recipient"


# --- bad input: the call's handler ends cleanly, other calls go on, no plaintext stays ---------


def raw_peer(harness, steps: list[bytes], *, read_between: bool = True) -> bytes:
    """A fake FreeSWITCH that sends ``steps`` and returns what it received."""
    host, port = harness.server.address
    sock = socket.create_connection((host, port), timeout=5)
    received = b""
    try:
        for step in steps:
            if read_between:
                received += sock.recv(65536)
            sock.sendall(step)
        sock.settimeout(1)
        while chunk := sock.recv(65536):
            received += chunk
    except OSError:
        pass
    finally:
        sock.close()
    return received


CONNECT_REPLY = esl.encode_connect_reply([("Unique-ID", "c0ffee00-0000-4000-8000-000000000001"),
                                          ("Caller-Caller-ID-Number", "0612345678")])


@pytest.mark.parametrize("garbage", [
    b"this is not esl\n\n",
    b"Content-Length: banana\n\n",
    b"Content-Length: 5\nContent-Type: text/event-plain\n\n\xff\xfe\x00\x01\x02",
    b"Content-Type: text/event-plain\nContent-Length: 99999999999\n\n",
])
def test_malformed_frames_end_that_call_only(harness, garbage):
    other = gevent.spawn(harness.emulator.place_call,
                         CallerScript(digits=[None]),
                         timeout=20)
    ok = esl.encode_reply("+OK")
    raw_peer(harness, [CONNECT_REPLY, ok, ok, ok, garbage])
    result = other.get(timeout=20)
    harness.settle()
    assert result.errors == [] and harness.call_row(result.uuid).outcome == "granted"
    assert harness.spool_files() == []
    bad = harness.call_row("c0ffee00-0000-4000-8000-000000000001")
    assert bad.ended_at is not None
    assert wait_until(lambda: harness.server.ctx.registry == {})


@pytest.mark.parametrize("cut_after", range(1, 6))
def test_disconnect_at_every_step_leaves_nothing(harness, cut_after):
    """The switch vanishes after the n-th exchange: the handler ends, nothing is kept."""
    ok = esl.encode_reply("+OK")
    steps = [CONNECT_REPLY, ok, ok, ok, ok, ok][:cut_after]
    raw_peer(harness, steps)
    gevent.sleep(0.1)
    harness.settle()
    assert wait_until(lambda: harness.server.ctx.registry == {})
    assert harness.spool_files() == []
    follow_up = harness.call(digits=["1"])
    assert harness.call_row(follow_up.uuid).outcome == "refused"


def test_peer_outside_the_allow_list_is_closed(tmp_path):
    h = Harness(tmp_path / "data")
    h.config = replace(h.config, server=replace(h.config.server, allowed_peers=(ipaddress.ip_network("10.0.0.0/8"),)))
    h.server = ConsentServer(h.config, announce=lambda _m: None)
    with h:
        host, port = h.server.address
        sock = socket.create_connection((host, port), timeout=5)
        sock.settimeout(2)
        assert sock.recv(100) == b""  # closed without a word: not even 'connect'
        sock.close()
        assert ledger.Call.select().count() == 0


def test_many_concurrent_calls_of_every_kind(harness):
    from fs_consent.emulator.scenarios import run_simulation

    summary = run_simulation(*harness.server.address, spool_dir=harness.spool, calls=45, concurrency=15,
                             time_scale=1.0)  # keys 0.1 s into 0.3 s of talk: room for a loaded CI machine
    harness.settle()
    assert summary.errors == [] and sum(summary.mismatches.values()) == 0, summary.rows()
    assert ledger.Call.select().count() == 45
    sealed = ledger.Recording.select().where(ledger.Recording.state == ledger.SEALED).count()
    assert sealed == len(harness.store_files()) and harness.spool_files() == []


def test_audit_trail_records_decisions_and_deletions(harness):
    result = harness.call(digits=[None], caller_keys=[(0.1, "*1")], talk_seconds=0.4)
    actions = [(e.action, e.object_id) for e in ledger.AuditEntry.select().order_by(ledger.AuditEntry.seq)]
    (rec,) = harness.recordings_of(result.uuid)
    assert ("consent.decision", result.uuid) in actions
    assert ("consent.withdrawal", result.uuid) in actions
    assert ("recording.delete", rec.id) in actions
    entries = list(ledger.AuditEntry.select().order_by(ledger.AuditEntry.seq))
    for before, entry in zip(entries, entries[1:]):
        assert entry.prev_hash == before.hash
    assert "0612345678" not in "".join(e.detail for e in entries)


def test_age_cli_rejects_a_tampered_recording(harness):
    harness.call(digits=[None])
    (name,) = harness.store_files()
    path = harness.store / name
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x01
    path.write_bytes(bytes(data))
    proc = subprocess.run(["age", "-d", "-i", str(harness.identity), str(path)], capture_output=True)
    assert proc.returncode != 0


def test_switch_without_linger_still_seals_a_complete_recording(harness):
    """s6: no linger, so the socket closes right after CHANNEL_HANGUP and RECORD_STOP never comes."""
    host, port = harness.server.address
    emulator = FreeSwitchEmulator(host, port, spool_dir=harness.spool, time_scale=0.05, linger=False)
    result = emulator.place_call(CallerScript(digits=[None], talk_seconds=2.0, caller_hangup_after=0.3), timeout=20)
    assert result.errors == []
    harness.settle()
    (info,) = result.recordings.values()
    (rec,) = harness.recordings_of(result.uuid)
    assert rec.state == ledger.SEALED and harness.spool_files() == []
    assert sha256(age_decrypt(harness.identity, harness.store / f"{rec.id}.age")) == info.sha256
