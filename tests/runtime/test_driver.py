"""The driver on its own: a CallSession over a socketpair with a scripted FreeSWITCH and fake
collaborators (``tests/fakes.py``); frames in, ESL commands and ledger facts out."""

from __future__ import annotations

import dataclasses
import logging
import re
import typing
import uuid

from fs_consent.core import consent
from fs_consent.runtime import driver
from fs_consent.store import facts as f

from ..fakes import CALLER, CHANNEL, FakeServices, FakeWriter, answer_prompt, apps, start_call


def hang_up(fs, session, runner, *recorded_path) -> None:
    """CHANNEL_HANGUP (and the RECORD_STOP of a recording), the linger notice, then the exit."""
    fs.event("CHANNEL_HANGUP", Hangup_Cause="NORMAL_CLEARING")
    for path in recorded_path:
        fs.event("RECORD_STOP", Record_File_Path=str(path))
    fs.linger_then_close()
    fs.wait_for(lambda: "exit" in fs.lines())
    fs.close()
    runner.join(timeout=2)
    assert runner.dead


def decisions(writer: FakeWriter) -> list[tuple[str, str, str]]:
    return [(d.what, d.outcome, d.by) for d in writer.of(f.ConsentDecided)]


def test_a_refusal_records_nothing_sends_the_caller_on_and_withdraws_earlier_calls(tmp_path):
    services = FakeServices(tmp_path)
    session, fs, runner = start_call(services)
    assert services.registry == {session.facts.instance: session}
    assert fs.lines()[:4] == ["connect", "myevents", "linger",
                              "event plain RECORD_START RECORD_STOP CHANNEL_HOLD CHANNEL_UNHOLD PLAYBACK_STOP"]
    answer_prompt(fs, services.policy, "1")
    hang_up(fs, session, runner)

    assert apps(fs) == ["answer", "bind_meta_app", "play_and_get_digits", "execute_extension"]
    assert f"uuid_setvar {CHANNEL} fs_consent refused" in fs.apis()
    assert decisions(services.writer) == [("decision", "refused", "key")]
    assert services.writer.of(f.RecordingStarted) == []
    caller_hash = services.protector.lookup_hash("phone", CALLER)
    assert services.callbacks == [(caller_hash, CHANNEL)]
    [opened] = services.writer.of(f.CallOpened)
    assert (opened.uuid, opened.caller_hash, opened.recording_note) == (CHANNEL, caller_hash, None)
    [ended] = services.writer.of(f.CallEnded)
    assert ended.hangup_cause == "NORMAL_CLEARING" and services.registry == {}


def test_silence_records_masks_on_hold_and_seals_after_the_record_stop(tmp_path):
    services = FakeServices(tmp_path)
    session, fs, runner = start_call(services)
    answer_prompt(fs, services.policy)
    rid = session.machine.recording_id
    path = tmp_path / f"{rid}.wav"
    assert ("record_session", str(path)) in fs.executes()
    # the decision and the recording's settings in one round trip, before record_session
    setvars = [api for api in fs.apis() if api.startswith("uuid_setvar")]
    assert setvars == [f"uuid_setvar_multi {CHANNEL} fs_consent=granted;RECORD_STEREO=true;RECORD_BRIDGE_REQ=true"]
    fs.event("RECORD_START", Record_File_Path=str(path))
    fs.event("CHANNEL_HOLD")
    fs.wait_for(lambda: f"uuid_record {CHANNEL} mask {path}" in fs.apis())
    fs.event("CHANNEL_UNHOLD")
    fs.wait_for(lambda: f"uuid_record {CHANNEL} unmask {path}" in fs.apis())
    hang_up(fs, session, runner, path)

    assert decisions(services.writer) == [("decision", "granted", "silence")]
    assert [s.recording_id for s in services.writer.of(f.RecordingStarted)] == [rid]
    assert services.seals == [(rid, 0.0)] and services.vault.deleted == []


def test_the_caller_keys_stop_and_delete_every_byte_and_nothing_is_sealed(tmp_path):
    services = FakeServices(tmp_path)
    session, fs, runner = start_call(services)
    answer_prompt(fs, services.policy)
    rid = session.machine.recording_id
    path = tmp_path / f"{rid}.wav"
    fs.event("RECORD_START", Record_File_Path=str(path))
    path.write_bytes(b"RIFF what FreeSWITCH wrote so far")
    for digit in "*1":
        fs.event("DTMF", DTMF_Digit=digit)
    fs.wait_for(lambda: f"uuid_record {CHANNEL} stop {path}" in fs.apis())
    assert not path.exists() and services.vault.deleted == [rid]
    assert decisions(services.writer)[-1] == ("withdrawal", "withdrawn", "caller_keys")
    hang_up(fs, session, runner, path)

    deleted = services.writer.of(f.RecordingDeleted)
    assert [(d.recording_id, d.reason, d.sealed) for d in deleted] == [(rid, "withdrawn", False)]
    assert services.seals == []


def test_an_objection_the_ledger_cannot_check_goes_to_the_menu_unrecorded(tmp_path):
    services = FakeServices(tmp_path, objects=TimeoutError())
    session, fs, runner = start_call(services)
    fs.wait_for(lambda: "execute_extension" in apps(fs))
    hang_up(fs, session, runner)
    assert apps(fs) == ["answer", "execute_extension"]  # no prompt, no key bound
    assert services.writer.of(f.CallOpened)[0].recording_note == "objection-unknown"
    assert decisions(services.writer) == [("decision", "error", "failure")]


def test_an_unhealthy_ledger_means_consent_without_a_recording(tmp_path):
    services = FakeServices(tmp_path, writer=FakeWriter(healthy=False))
    session, fs, runner = start_call(services)
    answer_prompt(fs, services.policy)
    hang_up(fs, session, runner)
    assert services.writer.of(f.CallOpened)[0].recording_note == "ledger-unavailable"
    assert decisions(services.writer) == [("decision", "granted", "silence")]
    assert "record_session" not in apps(fs) and services.writer.of(f.RecordingStarted) == []


def test_a_refused_prompt_fails_open_into_the_menu(tmp_path):
    services = FakeServices(tmp_path)
    session, fs, runner = start_call(services)
    fs.refuse.add("play_and_get_digits")
    fs.complete("answer")
    fs.wait_for(lambda: "execute_extension" in apps(fs))
    hang_up(fs, session, runner)
    assert decisions(services.writer) == [("decision", "error", "failure")]


def test_a_withdrawal_from_another_greenlet_returns_the_outcome(tmp_path):
    services = FakeServices(tmp_path)
    session, fs, runner = start_call(services)
    answer_prompt(fs, services.policy)
    assert session.withdraw(consent.BY_COMMAND) == consent.WITHDRAWN
    assert services.vault.deleted == [session.machine.recording_id]
    hang_up(fs, session, runner)
    assert decisions(services.writer)[-1] == ("withdrawal", "withdrawn", "command")


# --- commands dispatched by type ----------------------------------------------------------


def sample(cls):
    """An instance of a command class, every field without a default given a plausible value."""
    hints = typing.get_type_hints(cls)
    values = {}
    for fld in dataclasses.fields(cls):
        if fld.default is not dataclasses.MISSING:
            continue
        kind = hints[fld.name]
        values[fld.name] = (60.0 if kind is float else True if kind is bool else uuid.uuid4().hex)
    return cls(**values)


def test_every_command_the_machine_can_emit_has_a_case_in_the_driver(tmp_path, caplog):
    services = FakeServices(tmp_path)
    session, fs, runner = start_call(services)
    with caplog.at_level(logging.CRITICAL, logger="fs_consent.runtime.driver"):
        for cls in consent.COMMANDS:
            session._perform(sample(cls))
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL] == []
    hang_up(fs, session, runner)


def test_the_command_list_is_every_command_dataclass_in_consent():
    emitted = {obj for obj in vars(consent).values() if dataclasses.is_dataclass(obj) and isinstance(obj, type)
               and obj not in consent.EVENTS and obj not in (consent.Policy, consent.ConsentCall)}
    assert emitted == set(consent.COMMANDS)


def test_a_command_without_a_case_is_a_loud_programming_error_not_a_deleted_recording(tmp_path, caplog, monkeypatch):
    services = FakeServices(tmp_path)
    session, fs, runner = start_call(services)
    answer_prompt(fs, services.policy)

    @dataclasses.dataclass(frozen=True)
    class Unheard:
        pass

    monkeypatch.setattr(session.machine, "handle", lambda _event: [Unheard()])
    with caplog.at_level(logging.CRITICAL, logger="fs_consent.runtime.driver"):
        session._feed(consent.Held())
    assert "the driver has no case for Unheard" in caplog.text
    monkeypatch.undo()
    assert session.machine.recording_open and services.vault.deleted == []
    assert decisions(services.writer) == [("decision", "granted", "silence")]  # no error, nothing deleted
    hang_up(fs, session, runner, tmp_path / f"{session.machine.recording_id}.wav")
    assert services.seals == [(session.machine.recording_id, 0.0)]


def test_the_server_context_provides_what_a_call_session_uses():
    """ServerContext is the real CallServices: each member is a field, a method or property,
    or set when it opens."""
    import inspect

    from fs_consent.runtime.server import ServerContext

    members = set(typing.get_type_hints(driver.CallServices)) | {
        name for name, value in vars(driver.CallServices).items() if callable(value) and not name.startswith("_")}
    opened = set(re.findall(r"self\.(\w+)", inspect.getsource(ServerContext.open)))
    fields = {fld.name for fld in dataclasses.fields(ServerContext)}
    assert {name for name in members if not hasattr(ServerContext, name)} - fields - opened == set()
