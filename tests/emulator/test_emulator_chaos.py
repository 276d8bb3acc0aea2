"""The emulator's wire disorder, one behaviour at a time, as the app's socket sees it.

Each test forces one behaviour with :meth:`WireChaos.only` and reads the raw
bytes the emulator writes with a plain socket client (:class:`RawApp`, which
keeps every ``recv`` chunk) parsed by ``fs_consent.esl.FrameParser``.  The
property test at the end lets any seed loose on fixed calls: events may move,
replies keep command order, and no frame is lost, added (but CHANNEL_PARK) or
corrupted.
"""

from __future__ import annotations

import itertools
import re
import tempfile
import uuid as uuidlib
from collections import Counter
from pathlib import Path

import gevent
import pytest
from gevent import socket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fs_consent import esl
from fs_consent.emulator import CallerScript, FreeSwitchEmulator, WireChaos
from fs_consent.emulator.chaos import INSTANT_APPS, CallChaos

from .test_emulator import PAGD, REPLIES, App
from .test_emulator_captures import TIMES_SET_OR_NOT, VOLATILE

EVENT = "text/event-plain"
PORT = re.compile(r"127\.0\.0\.1:\d+")
SPOOL = re.compile(r"[^ ]*/fsc-chaos-[^/]+")


class RawApp(App):
    """:class:`App` that also keeps every chunk ``recv`` returned, byte-exact."""

    def __init__(self, conn, call) -> None:
        self.chunks: list[bytes] = []
        super().__init__(conn, call)

    def _read(self) -> None:
        parser = esl.FrameParser()
        while True:
            data = self.conn.recv(65536)
            if not data:
                break
            self.chunks.append(data)
            for message in parser.feed(data):
                self.log.append(message)
                for hook in self.hooks:
                    hook(message)
            self._new.set()
        self.closed = True
        self._new.set()

    def kinds(self) -> list[str]:
        """Each message as its event name, or ``reply:<text>`` / its content type."""
        out = []
        for m in self.log:
            if m.content_type == EVENT:
                out.append(m.event().name)
            elif m.content_type == "command/reply":
                out.append(f"reply:{m.reply_text}")
            else:
                out.append(m.content_type)
        return out

    def index(self, predicate) -> int:
        return next(i for i, m in enumerate(self.log) if predicate(m))


def is_event(name: str, **headers: str):
    def matches(m: esl.Message) -> bool:
        if m.content_type != EVENT:
            return False
        event = m.event()
        return event.name == name and all(event.get(k) == v for k, v in headers.items())

    return matches


@pytest.fixture
def listener():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    with sock:
        yield sock


@pytest.fixture
def dial(listener, tmp_path):
    """``dial(script, chaos, **options) -> RawApp``: one call, the emulator as forced."""
    apps: list[RawApp] = []

    def dial(script: CallerScript, chaos: WireChaos, **options) -> RawApp:
        options = {"time_scale": 0.01, "app_latency": 0.005, "linger_timeout": 1.0, **options}
        emulator = FreeSwitchEmulator("127.0.0.1", listener.getsockname()[1], spool_dir=tmp_path,
                                      chaos=chaos, **options)
        call = gevent.spawn(emulator.place_call, script, timeout=15)
        with gevent.Timeout(5):
            conn, _ = listener.accept()
        apps.append(RawApp(conn, call))
        return apps[-1]

    yield dial
    for app in apps:
        app._reader.kill()
        app.call.kill()
        app.conn.close()


def captured_event(captures_dir: Path, capture: str, name: str, **headers: str) -> esl.Event:
    messages = esl.FrameParser().feed((captures_dir / f"{capture}.rx.bin").read_bytes())
    return next(m.event() for m in messages if is_event(name, **headers)(m))


def names(event: esl.Event) -> list[str]:
    return [n for n, _ in event.items if n != "variable_origination_uuid"]  # the gs-* calls lack it


# ------------------------------------------------------------------ the decisions


def test_a_seed_and_a_call_index_give_the_same_decisions_every_time():
    def draws(chaos: CallChaos) -> list:
        return ([chaos.park_after() for _ in range(5)], [chaos.execute_first("answer") for _ in range(5)],
                [chaos.completion_first("play_and_get_digits") for _ in range(5)],
                [len(chaos.pieces(bytes(100))) for _ in range(5)])

    chaos = WireChaos(seed=7, park=0.5, execute_before_reply=0.5, split=0.5)
    assert draws(chaos.for_call(3)) == draws(WireChaos(seed=7, park=0.5, execute_before_reply=0.5,
                                                       split=0.5).for_call(3))
    assert draws(chaos.for_call(3)) != draws(chaos.for_call(4))
    assert draws(chaos.for_call(3)) != draws(WireChaos(seed=8, park=0.5, execute_before_reply=0.5,
                                                       split=0.5).for_call(3))
    # one behaviour's draws do not move another's: cutting writes leaves the park where it was
    quiet, busy = chaos.for_call(5), chaos.for_call(5)
    for _ in range(50):
        busy.pieces(bytes(1000))
    assert [quiet.park_after() for _ in range(10)] == [busy.park_after() for _ in range(10)]


def test_pieces_put_every_byte_back_in_order():
    chaos = WireChaos.only(seed=1, split=1.0, max_pieces=5).for_call(1)
    data = bytes(range(256)) * 4
    for _ in range(100):
        pieces = chaos.pieces(data)
        assert 2 <= len(pieces) <= 5 and all(pieces) and b"".join(pieces) == data
    assert chaos.splits == 100
    assert WireChaos.off().for_call(1).pieces(data) == [data]


def test_off_only_and_the_environment():
    assert not WireChaos.off().enabled and WireChaos().enabled
    forced = WireChaos.only(seed=3, park=1.0)
    assert forced.park == 1.0 and forced.split == 0.0 and forced.seed == 3 and forced.enabled
    assert not WireChaos.from_env({"FS_CONSENT_EMULATOR_CHAOS": "0"}).enabled
    assert not WireChaos.from_env({"FS_CONSENT_EMULATOR_CHAOS": "off"}).enabled
    seeded = WireChaos.from_env({"FS_CONSENT_EMULATOR_SEED": "42"})
    assert seeded.enabled and seeded.seed == 42 and seeded.describe() == "wire chaos seed 42"
    assert WireChaos.from_env({}).enabled  # on by default, with some seed


def test_the_emulator_takes_its_chaos_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FS_CONSENT_EMULATOR_SEED", "1234")
    monkeypatch.delenv("FS_CONSENT_EMULATOR_CHAOS", raising=False)
    assert FreeSwitchEmulator("127.0.0.1", 1, spool_dir=tmp_path).chaos.seed == 1234
    monkeypatch.setenv("FS_CONSENT_EMULATOR_CHAOS", "0")
    assert not FreeSwitchEmulator("127.0.0.1", 1, spool_dir=tmp_path).chaos.enabled
    assert not FreeSwitchEmulator("127.0.0.1", 1, spool_dir=tmp_path, chaos=False).chaos.enabled
    monkeypatch.delenv("FS_CONSENT_EMULATOR_CHAOS")
    assert FreeSwitchEmulator("127.0.0.1", 1, spool_dir=tmp_path, chaos=True).chaos.enabled


# ------------------------------------------------------------------ 1. events before replies


@pytest.mark.parametrize("after", [0, 1, 2])
def test_channel_park_goes_out_between_the_replies_after_myevents(dial, captures_dir, after):
    app = dial(CallerScript(), WireChaos.only(park=1.0, park_replies=(after, after)))
    app.handshake()
    app.execute("answer")
    kinds = app.kinds()
    myevents = kinds.index("reply:+OK Events Enabled")
    replies = ["reply:+OK will linger", "reply:+OK event listener enabled plain", "reply:+OK"]  # +OK: answer
    expected = [*replies[:after], "CHANNEL_PARK", *replies[after:], "CHANNEL_EXECUTE"]
    assert kinds[myevents + 1:myevents + 1 + len(expected)] == expected
    assert kinds.count("CHANNEL_PARK") == 1
    if after == 1:  # in the same write as the linger reply (13 of 15 in handshake_race.txt): one read
        spans = frame_spans(b"".join(app.chunks))
        ends = set(itertools.accumulate(len(c) for c in app.chunks))
        assert spans[myevents + 1][2] not in ends  # no read ended between the reply and the PARK
    park = app.log[app.index(is_event("CHANNEL_PARK"))].event()
    assert park.get("Unique-ID") == app.uuid
    assert (park.get("Event-Calling-Function"), park.get("Event-Calling-Line-Number")) == ("switch_ivr_park", "1002")
    assert (park.get("Answer-State"), park.get("Channel-Call-State")) == ("ringing", "RINGING")
    # the same layout as the real one in capture s2 (which came after the linger reply)
    assert names(park) == names(captured_event(captures_dir, "s2_no_digit.outbound", "CHANNEL_PARK"))
    app.execute("hangup")
    assert app.finish().errors == []


def test_a_naive_reader_takes_channel_park_for_the_reply(dial):
    """What today's driver does: one frame read per handshake command."""
    app = dial(CallerScript(), WireChaos.only(park=1.0, park_replies=(1, 1)))
    app.handshake()
    sent = ["connect", "myevents", "linger", "event plain RECORD_START RECORD_STOP"]
    frames_in_order = app.kinds()[:len(sent)]
    assert frames_in_order[-1] == "CHANNEL_PARK"  # not the reply to 'event plain ...'
    assert app.kinds()[len(sent)] == "reply:+OK event listener enabled plain"
    app.execute("hangup")
    app.finish()


def test_a_late_channel_park_still_goes_out_first_and_as_it_was_fired(dial):
    """Its turn has not come when the first app starts: it goes out before that app's
    CHANNEL_EXECUTE, with the channel as it was at the park (ringing, no variables set since)."""
    app = dial(CallerScript(), WireChaos.only(park=1.0, park_replies=(9, 9)))
    app.handshake()
    assert app.api(f"uuid_setvar {app.uuid} after_the_park yes") == b"+OK\n"
    app.execute("answer")
    kinds = app.kinds()
    events = [k for k in kinds if not k.startswith("reply:") and k != "api/response"]
    assert events[:3] == ["CHANNEL_PARK", "CHANNEL_EXECUTE", "CHANNEL_ANSWER"]
    park = app.log[kinds.index("CHANNEL_PARK")].event()
    assert park.get("Answer-State") == "ringing" and park.get("variable_after_the_park") is None
    app.execute("hangup")
    app.finish()


def test_no_channel_park_without_myevents(dial):
    app = dial(CallerScript(), WireChaos.only(park=1.0, park_replies=(0, 0)))
    assert app.send(esl.encode_command("connect")).reply_text == "+OK\n"
    app.command("linger")
    app.command("event plain CHANNEL_EXECUTE_COMPLETE")
    app.execute("answer")
    app.execute("hangup")
    app.finish()
    assert "CHANNEL_PARK" not in app.kinds()


# ------------------------------------------------------------------ 2. CHANNEL_EXECUTE before +OK


def _around_reply(app: RawApp, app_name: str) -> list[str]:
    """The messages from the app's CHANNEL_EXECUTE to its COMPLETE, replies included."""
    start = app.index(is_event("CHANNEL_EXECUTE", Application=app_name))
    end = app.index(is_event("CHANNEL_EXECUTE_COMPLETE", Application=app_name))
    before = app.kinds()[start - 1]
    return [before, *app.kinds()[start:end + 1], *app.kinds()[end + 1:end + 2]]


def test_channel_execute_is_written_before_the_ok_of_its_sendmsg(dial):
    app = dial(CallerScript(prompt_seconds=0.1), WireChaos.only(execute_before_reply=1.0))
    app.handshake()
    event_uuid = str(uuidlib.uuid4())
    reply = app.send(esl.encode_execute("playback", "tone.wav", event_uuid=event_uuid))
    assert reply.reply_text == "+OK"
    app.event("CHANNEL_EXECUTE_COMPLETE", Application="playback")
    execute = app.index(is_event("CHANNEL_EXECUTE", **{"Application-UUID": event_uuid}))
    assert app.kinds()[execute - 1] == "reply:+OK event listener enabled plain"
    assert app.kinds()[execute:execute + 3] == ["CHANNEL_EXECUTE", "reply:+OK", "CHANNEL_EXECUTE_COMPLETE"]
    app.execute("hangup")
    result = app.finish()
    assert "playback: CHANNEL_EXECUTE before +OK" in result.chaos.notes


@pytest.mark.parametrize("app_name", ["answer", "set"])
def test_an_instant_app_can_complete_before_the_ok_of_its_sendmsg(dial, app_name):
    assert app_name in INSTANT_APPS
    app = dial(CallerScript(), WireChaos.only(execute_before_reply=1.0, complete_before_reply=1.0))
    app.handshake()
    event_uuid = str(uuidlib.uuid4())
    arg = "a=b" if app_name == "set" else None
    assert app.send(esl.encode_execute(app_name, arg, event_uuid=event_uuid)).reply_text == "+OK"
    middle = ["CHANNEL_ANSWER"] if app_name == "answer" else []
    assert _around_reply(app, app_name) == [
        "reply:+OK event listener enabled plain", "CHANNEL_EXECUTE", *middle,
        "CHANNEL_EXECUTE_COMPLETE", "reply:+OK",
    ]
    complete = app.log[app.index(is_event("CHANNEL_EXECUTE_COMPLETE", Application=app_name))].event()
    assert complete.get("Application-UUID") == event_uuid
    app.execute("hangup")
    assert app.finish().errors == []


def test_a_sendmsg_behind_a_running_app_is_answered_at_once(dial):
    """Only an app that starts at once can beat its +OK; one queued behind another cannot."""
    app = dial(CallerScript(prompt_seconds=0.3), WireChaos.only(execute_before_reply=1.0))
    app.handshake()
    assert app.send(esl.encode_execute("playback", "long.wav", event_uuid="first")).reply_text == "+OK"
    app.event("CHANNEL_EXECUTE", **{"Application-UUID": "first"})
    assert app.send(esl.encode_execute("set", "x=1", event_uuid="second")).reply_text == "+OK"
    reply = len(app.log) - 1
    app.event("CHANNEL_EXECUTE_COMPLETE", **{"Application-UUID": "second"})
    assert app.index(is_event("CHANNEL_EXECUTE", **{"Application-UUID": "second"})) > reply
    app.execute("hangup")
    app.finish()


# ------------------------------------------------------------------ 3. frames cut and joined


def frame_spans(stream: bytes) -> list[tuple[int, int, int]]:
    """(start, end of the header block, end of the body) of every frame in ``stream``."""
    spans, pos = [], 0
    while pos < len(stream):
        head_end = stream.index(b"\n\n", pos) + 2
        length = 0
        for line in stream[pos:head_end].decode().splitlines():
            if line.startswith("Content-Length:"):
                length = int(line.split(":", 1)[1])
        spans.append((pos, head_end, head_end + length))
        pos = head_end + length
    return spans


def test_frames_are_cut_at_any_byte_even_inside_header_lines_and_bodies(dial, tmp_path):
    chaos = WireChaos.only(split=1.0, max_pieces=6, max_pause=0.002)
    app = dial(CallerScript(digits=["1"]), chaos)
    app.handshake()
    app.execute("answer")
    app.execute("play_and_get_digits", PAGD)
    app.execute("record_session", str(tmp_path / "cut.wav"))
    app.execute("stop_record_session", str(tmp_path / "cut.wav"))
    app.execute("hangup")
    result = app.finish()
    stream = b"".join(app.chunks)
    spans = frame_spans(stream)
    # nothing lost or corrupted: parsed in pieces as arrived == parsed in one go
    whole = esl.FrameParser().feed(stream)
    assert len(spans) == len(whole) == len(app.log)
    assert [(m.headers, m.body) for m in whole] == [(m.headers, m.body) for m in app.log]
    cuts = list(itertools.accumulate(len(c) for c in app.chunks))[:-1]
    in_header_line = [c for c in cuts if any(s < c < h for s, h, _ in spans) and stream[c - 1:c] != b"\n"]
    in_body = [c for c in cuts if any(h < c < e for _, h, e in spans)]
    assert in_header_line and in_body, (len(cuts), result.chaos)
    assert result.chaos.splits > 0


def test_frames_run_together_in_one_write(dial):
    app = dial(CallerScript(), WireChaos.only(coalesce=1.0, hold_seconds=0.005))
    app.handshake()
    app.execute("answer")
    app.execute("hangup")
    result = app.finish()
    assert result.chaos.coalesced > 0
    stream = b"".join(app.chunks)
    spans = frame_spans(stream)
    ends = set(itertools.accumulate(len(c) for c in app.chunks))
    # the answer's CHANNEL_EXECUTE, CHANNEL_ANSWER and COMPLETE arrive in one chunk
    execute = app.index(is_event("CHANNEL_EXECUTE", Application="answer"))
    assert app.kinds()[execute:execute + 3] == ["CHANNEL_EXECUTE", "CHANNEL_ANSWER", "CHANNEL_EXECUTE_COMPLETE"]
    assert not {spans[execute][2], spans[execute + 1][2]} & ends
    assert [(m.headers, m.body) for m in esl.FrameParser().feed(stream)] == [(m.headers, m.body) for m in app.log]


# ------------------------------------------------------------------ 4. prompt completion vs hang-up

PAGD_5S = "1 1 1 5000 # prompt.wav silence_stream://250 consent_digit \\d 5000"  # a 50 ms wait, scaled
TAIL = ["CHANNEL_UNPARK", "CHANNEL_EXECUTE_COMPLETE", "CHANNEL_STATE", "CHANNEL_STATE", "CHANNEL_HANGUP_COMPLETE"]


def _prompt_call(dial, script: CallerScript, completion_before_hangup: float) -> tuple[RawApp, esl.Event]:
    app = dial(script, WireChaos.only(completion_before_hangup=completion_before_hangup))
    app.handshake()
    app.execute("answer")
    app.execute("playback", "tone.wav")  # as in s8
    return app, app.execute("play_and_get_digits", PAGD_5S)


def _from_pagd_on(app: RawApp) -> list[str]:
    start = app.index(is_event("CHANNEL_EXECUTE", Application="play_and_get_digits")) + 1
    return [k for k in app.kinds()[start:] if not k.startswith("reply:") and "/" not in k]


def test_a_hangup_in_the_prompt_audio_always_comes_first(dial, captures_dir):
    """s8 and all 63 such runs of pagd_hangup_race.txt: never the other order, whatever the odds."""
    app, complete = _prompt_call(dial, CallerScript(hangup_in_prompt=True, prompt_seconds=0.2), 1.0)
    app.event("CHANNEL_HANGUP_COMPLETE")
    assert _from_pagd_on(app) == ["CHANNEL_HANGUP", "CHANNEL_EXECUTE_COMPLETE", *TAIL]
    assert (complete.get("Answer-State"), complete.get("Hangup-Cause")) == ("hangup", "NORMAL_CLEARING")
    assert complete.get("Channel-State-Number") == "10"  # CS_HANGUP, set before the event fires
    assert complete.get("variable_read_result") is None and complete.get("variable_consent_digit") is None
    s8 = "s8_caller_hangup_during_pagd.outbound"
    assert names(complete) == names(captured_event(captures_dir, s8, "CHANNEL_EXECUTE_COMPLETE",
                                                   Application="play_and_get_digits"))
    assert names(app.event("CHANNEL_HANGUP")) == names(captured_event(captures_dir, s8, "CHANNEL_HANGUP"))
    result = app.finish()
    assert result.errors == [] and result.chaos.notes == []


def test_a_hangup_while_waiting_for_the_digit_usually_comes_first(dial):
    """s14: CHANNEL_HANGUP, then the completion: hung up, and read_result failure."""
    app, complete = _prompt_call(dial, CallerScript(hangup_in_timeout=True), 0.0)
    app.event("CHANNEL_HANGUP_COMPLETE")
    assert _from_pagd_on(app) == ["CHANNEL_HANGUP", "CHANNEL_EXECUTE_COMPLETE", *TAIL]
    assert (complete.get("Answer-State"), complete.get("Hangup-Cause")) == ("hangup", "NORMAL_CLEARING")
    assert complete.get("variable_read_result") == "failure" and complete.get("variable_consent_digit") is None
    assert app.finish().errors == []


def test_a_hangup_while_waiting_for_the_digit_can_look_exactly_like_a_timeout(dial):
    """s13: the completion comes first, header for header a timeout's; the socket app returns;
    only then CHANNEL_HANGUP.  Silence that is not silence."""
    app, complete = _prompt_call(dial, CallerScript(hangup_in_timeout=True), 1.0)
    app.event("CHANNEL_HANGUP_COMPLETE")
    assert _from_pagd_on(app) == [
        "CHANNEL_EXECUTE_COMPLETE", "CHANNEL_UNPARK", "CHANNEL_EXECUTE_COMPLETE", "CHANNEL_HANGUP",
        "CHANNEL_STATE", "CHANNEL_STATE", "CHANNEL_HANGUP_COMPLETE",
    ]
    assert (complete.get("Answer-State"), complete.get("Hangup-Cause")) == ("answered", None)
    assert (complete.get("Channel-State"), complete.get("Channel-State-Number")) == ("CS_EXECUTE", "4")
    assert complete.get("variable_read_result") == "failure" and complete.get("variable_consent_digit") is None
    unpark = app.event("CHANNEL_UNPARK")
    assert (unpark.get("Answer-State"), unpark.get("Hangup-Cause")) == ("answered", None)
    hangup = app.event("CHANNEL_HANGUP")
    assert (hangup.get("Answer-State"), hangup.get("Hangup-Cause")) == ("hangup", "NORMAL_CLEARING")
    result = app.finish()
    assert result.errors == [] and result.hangup_cause == "NORMAL_CLEARING"
    assert result.chaos.notes == ["play_and_get_digits completion before CHANNEL_HANGUP"]

    # a genuine timeout on the same emulator: the same headers, the same values but the clock's
    timeout_app, timeout = _prompt_call(dial, CallerScript(digits=[None]), 0.0)
    timeout_app.execute("hangup")
    timeout_app.finish()
    assert _normal_event(timeout) == _normal_event(complete)


def test_a_hangup_in_a_later_prompt_leaves_no_earlier_result(dial):
    """play_and_get_digits clears read_result and its variable when it starts (switch_ivr_read):
    a hang-up in the second prompt does not report the first prompt's success."""
    app = dial(CallerScript(digits=["1", None], prompt_seconds=0.3), WireChaos.off())
    app.handshake()
    first = app.execute("play_and_get_digits", PAGD)
    assert (first.get("variable_read_result"), first.get("variable_consent_digit")) == ("success", "1")
    assert app.send(esl.encode_execute("play_and_get_digits", PAGD, event_uuid="second")).reply_text == "+OK"
    app.event("CHANNEL_EXECUTE", **{"Application-UUID": "second"})
    gevent.sleep(0.1)  # into the prompt
    assert app.api(f"uuid_kill {app.uuid}") == b"+OK\n"
    second = app.event("CHANNEL_EXECUTE_COMPLETE", **{"Application-UUID": "second"})
    assert second.get("variable_read_result") is None and second.get("variable_consent_digit") is None
    assert (second.get("Answer-State"), second.get("Hangup-Cause")) == ("hangup", "NORMAL_CLEARING")
    app.finish()



# ------------------------------------------------------------------ 5. DTMF queued after a transfer


def test_caller_keys_after_a_transfer_without_bridge_raise_no_dtmf_event(dial):
    script = CallerScript(transfer_without_bridge=True, caller_keys=[(0.05, "*1")], talk_seconds=0.3)
    app = dial(script, WireChaos.off())
    app.handshake()
    app.execute("bind_meta_app", "1 a a set::fs_consent_caller=withdraw")
    app.execute("execute_extension", "menu XML default")
    result = app.finish()
    kinds = app.kinds()
    assert "DTMF" not in kinds and "CHANNEL_BRIDGE" not in kinds
    assert result.transferred and result.queued_dtmf == "*1"
    assert result.channel_vars == {}  # no meta app ran: the keys never reached the socket leg
    assert result.hangup_cause == "NORMAL_CLEARING" and result.errors == []


def test_keys_queued_after_a_transfer_come_out_when_the_app_plays_something(dial):
    """s19: the app's sendmsg playback runs at once, inside the target's app, reads the queued
    digit, and only then does its DTMF event reach the socket."""
    script = CallerScript(transfer_without_bridge=True, caller_keys=[(0.02, "5")], talk_seconds=0.5)
    app = dial(script, WireChaos.off())
    app.handshake()
    app.execute("execute_extension", "menu XML default", wait=False)
    app.event("CHANNEL_EXECUTE", Application="execute_extension")
    gevent.sleep(0.15)  # the menu (20 ms), the transfer, the key
    assert "DTMF" not in app.kinds()
    app.execute("playback", "tone.wav")  # completes while execute_extension still runs
    played = app.index(is_event("CHANNEL_EXECUTE", Application="playback"))
    assert app.kinds()[played:played + 3] == ["CHANNEL_EXECUTE", "DTMF", "CHANNEL_EXECUTE_COMPLETE"]
    assert app.log[played + 1].event().get("DTMF-Digit") == "5"
    result = app.finish()
    assert result.queued_dtmf == "5" and result.errors == []


def test_the_same_keys_while_bridged_do_raise_dtmf_events(dial):
    app = dial(CallerScript(caller_keys=[(0.05, "*1")], talk_seconds=0.3), WireChaos.off())
    app.handshake()
    app.execute("execute_extension", "menu XML default")
    result = app.finish()
    assert app.kinds().count("DTMF") == 2 and not result.transferred and result.queued_dtmf == ""


# ------------------------------------------------------------------ any seed: same frames, same replies


def _flow_digit(app: RawApp, spool: Path) -> None:
    app.handshake()
    app.execute("answer")
    app.execute("playback", "tone.wav")
    app.execute("play_and_get_digits", PAGD)
    assert app.command("getvar caller_id_number") == "0612345678"
    app.execute("record_session", str(spool / "prop.wav"))
    gevent.sleep(0.05)
    app.execute("stop_record_session", str(spool / "prop.wav"))
    assert app.api("version").startswith(b"FreeSWITCH")
    app.execute("hangup")


def _flow_hangup(app: RawApp, spool: Path) -> None:
    app.handshake()
    app.execute("answer")
    app.execute("playback", "tone.wav")
    app.execute("play_and_get_digits", PAGD)


FLOWS = {
    "digit": (CallerScript(digits=["1"]), _flow_digit),
    "hangup-in-prompt": (CallerScript(hangup_in_prompt=True, prompt_seconds=0.1), _flow_hangup),
    "hangup-in-timeout": (CallerScript(hangup_in_timeout=True), _flow_hangup),
}
RACE = "play_and_get_digits completion before CHANNEL_HANGUP"
CALL_UUID = "5ca1ab1e-0000-4000-8000-00000000c0de"
CORE_UUID = "c0de0000-0000-4000-8000-000000000000"


def _normal_event(event: esl.Event) -> list:
    return [(n, v) for n, v in _normal(esl.Message({"Content-Type": EVENT}, b""), {}, event.items)[1]
            if n not in ("Application-UUID", "Unique-ID", "Channel-Call-UUID", "Caller-Unique-ID",
                         "variable_uuid", "variable_call_uuid")]


def _normal(message: esl.Message, app_uuids: dict[str, str], items=None):
    """A frame without what differs between any two runs (clock, made-up ids, media times)."""
    if message.content_type != EVENT and "Event-Name" not in message.headers:
        return (message.content_type, tuple(sorted(message.headers.items())), message.body)
    if items is None:
        items = message.event().items if message.content_type == EVENT else list(message.headers.items())
    out = []
    for name, value in items:
        if name in VOLATILE:
            continue
        if name == "Application-UUID":
            value = app_uuids.setdefault(value, f"app-{len(app_uuids)}")
        elif name.endswith(TIMES_SET_OR_NOT):
            value = "0" if value == "0" else "set"
        value = PORT.sub("127.0.0.1:PORT", value)  # each run listens on a port of its own...
        value = SPOOL.sub("SPOOL", value)  # ...and records into a spool of its own
        out.append((name, value))
    return (message.content_type, tuple(out))


def run_flow(flow: str, chaos: WireChaos) -> tuple[RawApp, object]:
    script, drive = FLOWS[flow]
    spool = Path(tempfile.mkdtemp(prefix="fsc-chaos-"))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        emulator = FreeSwitchEmulator("127.0.0.1", listener.getsockname()[1], spool_dir=spool,
                                      core_uuid=CORE_UUID, time_scale=0.01, app_latency=0.005,
                                      linger_timeout=1.0, chaos=chaos)
        call = gevent.spawn(emulator.place_call, script, uuid=CALL_UUID, timeout=15)
        with gevent.Timeout(5):
            conn, _ = listener.accept()
    app = RawApp(conn, call)
    try:
        drive(app, spool)
        result = app.finish()
    finally:
        app._reader.kill()
        call.kill()
        conn.close()
    return app, result


def summary(app: RawApp) -> tuple[Counter, list]:
    app_uuids: dict[str, str] = {}
    for m in app.log:  # number the Application-UUIDs in the order of their CHANNEL_EXECUTE
        if m.content_type == EVENT and m.event().name == "CHANNEL_EXECUTE":
            app_uuids.setdefault(m.event().get("Application-UUID"), f"app-{len(app_uuids)}")
    frames = Counter(_normal(m, app_uuids) for m in app.log
                     if not (m.content_type == EVENT and m.event().name == "CHANNEL_PARK"))
    replies = [(m.content_type, m.reply_text, m.body) for m in app.log if m.content_type in REPLIES]
    return frames, replies


_REFERENCE: dict[tuple[str, bool], tuple[Counter, list]] = {}


def reference(flow: str, race: bool) -> tuple[Counter, list]:
    """The polite call's frames; with ``race``, the one hang-up race forced (it changes what
    the completion says, not only where it goes)."""
    if (flow, race) not in _REFERENCE:
        chaos = WireChaos.only(completion_before_hangup=1.0) if race else WireChaos.off()
        _REFERENCE[flow, race] = summary(run_flow(flow, chaos)[0])
    return _REFERENCE[flow, race]


@pytest.mark.slow
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), flow=st.sampled_from(sorted(FLOWS)))
def test_any_seed_moves_events_but_keeps_every_frame_and_the_reply_order(seed, flow):
    chaos = WireChaos(seed=seed, park=0.5, execute_before_reply=0.5, split=0.4, coalesce=0.3,
                      completion_before_hangup=0.5)
    app, result = run_flow(flow, chaos)
    assert result.errors == [], str(result.chaos)
    frames, replies = reference(flow, RACE in result.chaos.notes)
    assert flow == "hangup-in-timeout" or RACE not in result.chaos.notes
    ours_frames, ours_replies = summary(app)
    assert ours_replies == replies, str(result.chaos)
    assert ours_frames == frames, (str(result.chaos), ours_frames - frames, frames - ours_frames)
    kinds = app.kinds()
    parks = [i for i, k in enumerate(kinds) if k == "CHANNEL_PARK"]
    assert len(parks) <= 1
    if parks:  # before every other event of the channel
        first_event = next(i for i, m in enumerate(app.log) if m.content_type == EVENT)
        assert parks[0] == first_event
    stream = b"".join(app.chunks)
    assert len(frame_spans(stream)) == len(app.log)  # every byte belongs to a whole frame


def test_the_environment_can_keep_only_some_behaviours():
    chaos = WireChaos.from_env({"FS_CONSENT_EMULATOR_CHAOS": "park, hangup", "FS_CONSENT_EMULATOR_SEED": "5"})
    assert (chaos.park, chaos.completion_before_hangup) == (WireChaos().park, WireChaos().completion_before_hangup)
    assert chaos.split == chaos.coalesce == chaos.execute_before_reply == 0.0
    assert chaos.describe() == "wire chaos seed 5 (park, hangup)"
    forced = WireChaos.from_env({"FS_CONSENT_EMULATOR_CHAOS": "execute", "FS_CONSENT_EMULATOR_SEED": "5"})
    assert forced.execute_before_reply == 0.2 and forced.park == 0.0  # not FreeSWITCH: only when named
    with pytest.raises(ValueError, match="unknown behaviour nagle"):
        WireChaos.from_env({"FS_CONSENT_EMULATOR_CHAOS": "split,nagle"})


# ------------------------------------------------------------------ fs-consent simulate


def _closed_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def test_simulate_prints_its_seed_and_takes_one(tmp_path):
    from click.testing import CliRunner

    from fs_consent.cli import main

    runner = CliRunner()
    args = ["--data-dir", str(tmp_path), "simulate", "--calls", "1", "--server", f"127.0.0.1:{_closed_port()}"]
    seeded = runner.invoke(main, [*args, "--seed", "4242"])
    assert "emulator wire chaos seed 4242 (--seed 4242 replays it, --polite turns it off)" in seeded.output
    footer = next(line for line in seeded.output.splitlines() if " calls in " in line)
    assert footer.endswith("emulator wire chaos seed 4242")  # the summary says it too
    polite = runner.invoke(main, [*args, "--polite"])
    assert "replays it" not in polite.output and "emulator wire chaos off" in polite.output
    both = runner.invoke(main, [*args, "--polite", "--seed", "1"])
    assert both.exit_code == 2 and "--seed and --polite exclude each other" in both.output
