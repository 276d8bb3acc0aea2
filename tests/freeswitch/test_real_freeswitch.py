"""fs-consent behind a real FreeSWITCH: the ledger says what the privacy statement promises.

Runs only when a FreeSWITCH answers on 127.0.0.1:8021 (password ClueCon) with the
acceptance dialplan of ``build-freeswitch.sh`` (``consent`` -> ``socket 127.0.0.1:8040 async full``,
``menu`` -> bridge to ``staff``, ``staff`` answers and plays a tone), and
``FS_CONSENT_REAL_FREESWITCH`` is not ``0``. The server under test runs in this process
(as ``tests/harness.py``'s Harness does) on 127.0.0.1:8040, where that dialplan connects;
nothing else may listen there. Calls are placed over the inbound event socket:
``bgapi originate {origination_uuid=A,...}loopback/consent/default &park()``. A is the
caller; B, the loopback leg that runs ``socket``, is the call fs-consent sees and the
ledger's ``uuid``; keys are the caller's when sent with ``uuid_send_dtmf A``.

    pytest -m freeswitch tests/freeswitch/test_real_freeswitch.py
"""

from __future__ import annotations

import io
import math
import os
import struct
import uuid
import wave
from collections import Counter
from dataclasses import replace
from pathlib import Path

import gevent
import gevent.lock
import gevent.queue
import pyrage
import pytest
from gevent import socket as gsocket

from fs_consent import esl
from fs_consent.core.config import load_config
from fs_consent.runtime.server import ConsentServer
from fs_consent.store import ledger

FS_HOST, FS_PORT, FS_PASSWORD = "127.0.0.1", 8021, "ClueCon"
LISTEN = "127.0.0.1:8040"  # the dialplan's socket target
PROMPT_SECONDS = 1.0


def _freeswitch_answers() -> bool:
    if os.environ.get("FS_CONSENT_REAL_FREESWITCH") == "0":
        return False
    import socket

    try:
        with socket.create_connection((FS_HOST, FS_PORT), timeout=0.5) as s:
            s.settimeout(1.0)
            return s.recv(64).startswith(b"Content-Type: auth/request")
    except OSError:
        return False


pytestmark = [
    pytest.mark.freeswitch,
    pytest.mark.skipif(not _freeswitch_answers(),
                       reason=f"no FreeSWITCH on {FS_HOST}:{FS_PORT} (or FS_CONSENT_REAL_FREESWITCH=0)"),
]


class Switch:
    """FreeSWITCH's inbound event socket, gevent-friendly: commands in order, events kept."""

    EVENTS = "CHANNEL_EXECUTE CHANNEL_EXECUTE_COMPLETE CHANNEL_BRIDGE CHANNEL_HANGUP CHANNEL_DESTROY RECORD_START RECORD_STOP"

    def __init__(self):
        self.sock = gsocket.create_connection((FS_HOST, FS_PORT), timeout=5)
        self.sock.settimeout(None)
        self.parser = esl.FrameParser()
        self.events: list[esl.Event] = []
        self.replies: gevent.queue.Queue = gevent.queue.Queue()
        self.lock = gevent.lock.RLock()
        self.reader = gevent.spawn(self._read)
        assert self.replies.get(timeout=5).content_type == "auth/request"
        assert self.command(f"auth {FS_PASSWORD}").reply_text.startswith("+OK")
        assert self.command(f"event plain {self.EVENTS}").reply_text.startswith("+OK")

    def _read(self) -> None:
        while True:
            data = self.sock.recv(65536)
            if not data:
                return
            for msg in self.parser.feed(data):
                if msg.content_type == "text/event-plain":
                    self.events.append(msg.event())
                elif msg.content_type in ("command/reply", "api/response", "auth/request"):
                    self.replies.put(msg)

    def command(self, line: str) -> esl.Message:
        with self.lock:
            self.sock.sendall(esl.encode_command(line))
            return self.replies.get(timeout=15)

    def api(self, command: str) -> str:
        return self.command(f"api {command}").body.decode().strip()

    def wait_event(self, timeout: float = 15.0, **match) -> esl.Event | None:
        """The first event whose headers equal ``match`` (``_`` in a key stands for ``-``)."""
        want = {(k if k.startswith("variable_") else k.replace("_", "-")): v for k, v in match.items()}
        seen = 0
        with gevent.Timeout(timeout, False):
            while True:
                while seen < len(self.events):
                    ev = self.events[seen]
                    seen += 1
                    if all(ev.headers.get(k) == v for k, v in want.items()):
                        return ev
                gevent.sleep(0.01)
        return None

    def close(self) -> None:
        self.reader.kill(block=False)
        self.sock.close()


class Call:
    """One loopback test call: A the caller, B the leg fs-consent controls."""

    def __init__(self, switch: Switch):
        self.switch = switch
        self.a = str(uuid.uuid4())
        reply = switch.command(
            f"bgapi originate {{origination_uuid={self.a},origination_caller_id_number=0612345678,"
            f"origination_caller_id_name=Test}}loopback/consent/default &park()")
        assert reply.reply_text.startswith("+OK"), reply.reply_text
        socket_app = switch.wait_event(Event_Name="CHANNEL_EXECUTE", Application="socket",
                                       variable_other_loopback_leg_uuid=self.a)
        assert socket_app is not None, "B never ran the socket application"
        self.b = socket_app.headers["Unique-ID"]

    def wait(self, name: str, timeout: float = 15.0, **match) -> esl.Event | None:
        return self.switch.wait_event(timeout, Event_Name=name, Unique_ID=self.b, **match)

    def prompt_started(self) -> bool:
        return self.wait("CHANNEL_EXECUTE", Application="play_and_get_digits") is not None

    def dropped_in_handshake(self) -> bool:
        """``socket`` returned before fs-consent ran anything: it closed the connection during the handshake."""
        done = self.wait("CHANNEL_EXECUTE_COMPLETE", 0, Application="socket")
        answered = self.wait("CHANNEL_EXECUTE", 0, Application="answer")
        return done is not None and answered is None

    def bridged(self, timeout: float = 20.0) -> bool:
        return self.wait("CHANNEL_BRIDGE", timeout) is not None

    def keys(self, digits: str) -> None:
        self.switch.api(f"uuid_send_dtmf {self.a} {digits}")

    def hang_up(self) -> None:
        self.switch.api(f"uuid_kill {self.a}")

    def ended(self, timeout: float = 20.0) -> bool:
        return self.wait("CHANNEL_DESTROY", timeout) is not None


def _write_prompt(path: Path) -> None:
    """A stand-in for the spoken prompt: PROMPT_SECONDS of a 500 Hz tone, 8 kHz mono 16-bit."""
    rate = 8000
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(struct.pack("<h", int(12000 * math.sin(2 * math.pi * 500 * n / rate)))
                               for n in range(int(rate * PROMPT_SECONDS))))


class RealHarness:
    """The real server on 127.0.0.1:8040 with a short prompt and a 1 s timeout, and a Switch."""

    def __init__(self, tmp_path: Path):
        data_dir = tmp_path / "data"
        prompt = tmp_path / "prompt.wav"
        _write_prompt(prompt)
        config_file = tmp_path / "config.toml"
        config_file.write_text(
            '[consent]\ntimeout = "1s"\n'
            f'[consent.prompts.nl]\nfile = "{prompt}"\n'
            '[consent.confirmation_prompts]\nnl = "tone_stream://%(300,0,880)"\n')
        config = load_config(config_file, data_dir=data_dir, listen=LISTEN, env={"HOME": str(tmp_path)})
        self.config = replace(config, server=replace(config.server, drain_seconds=5.0))
        self.server = ConsentServer(self.config, announce=lambda _m: None)

    def __enter__(self):
        self.server.start()
        self.switch = Switch()
        return self

    def __exit__(self, *exc):
        try:
            self.switch.api("hupall NORMAL_CLEARING")
            self.switch.close()
        finally:
            self.server.stop()

    def settle(self, timeout: float = 30.0) -> None:
        with gevent.Timeout(timeout, AssertionError("the server did not finish its calls")):
            while self.server.ctx.registry:
                gevent.sleep(0.05)
        self.server.ctx.seals.join(timeout=timeout)
        self.server.ctx.writer.flush()

    def row(self, call: Call) -> ledger.Call | None:
        return ledger.Call.get_or_none(ledger.Call.uuid == call.b)

    def recordings(self, call: Call) -> list[ledger.Recording]:
        return list(ledger.Recording.select().join(ledger.Call).where(ledger.Call.uuid == call.b))

    def files(self) -> tuple[list[str], list[str]]:
        spool, store = Path(self.config.storage.spool_dir), Path(self.config.storage.store_dir)
        return sorted(p.name for p in spool.iterdir()), sorted(p.name for p in store.iterdir())


def _no_prompt(call: Call) -> str:
    if call.dropped_in_handshake():
        return (f"fs-consent closed call {call.b} during the handshake (the socket app returned before any "
                "command; an event where a reply was due? see captures s10/s11)")
    return f"fs-consent never started the prompt for {call.b}"


def _outcomes(fs: "RealHarness", calls: list[Call]) -> dict[str, str | None]:
    """B uuid -> ledger outcome; None: not in the ledger ('dropped' when the handshake was dropped)."""
    out = {}
    for call in calls:
        row = fs.row(call)
        out[call.b] = row.outcome if row else ("dropped in the handshake" if call.dropped_in_handshake() else None)
    return out


@pytest.fixture
def fs(tmp_path):
    with RealHarness(tmp_path) as h:
        yield h


def test_digit_1_refuses_and_nothing_is_recorded(fs):
    call = Call(fs.switch)
    assert call.prompt_started(), _no_prompt(call)
    gevent.sleep(0.3)
    call.keys("1")
    assert call.bridged(), "the refusing caller goes on into the menu all the same"
    gevent.sleep(0.5)
    call.hang_up()
    assert call.ended()
    fs.settle()
    row = fs.row(call)
    assert row is not None, "the call is not in the ledger"
    assert (row.outcome, row.decided_by) == ("refused", "key")
    assert fs.recordings(call) == []
    assert fs.files() == ([], [])


def test_silence_grants_and_the_recording_is_sealed_after_the_bridge(fs):
    call = Call(fs.switch)
    assert call.bridged(), _no_prompt(call) if call.dropped_in_handshake() else "silence goes on into the menu"
    assert call.wait("RECORD_START", 5) is not None
    # the decision and the recording's settings arrived in one uuid_setvar_multi
    assert [fs.switch.api(f"uuid_getvar {call.b} {name}") for name in ("fs_consent", "RECORD_STEREO",
                                                                         "RECORD_BRIDGE_REQ")] == ["granted", "true", "true"]
    gevent.sleep(1.5)
    call.hang_up()
    assert call.ended()
    fs.settle()
    row = fs.row(call)
    assert row is not None, "the call is not in the ledger"
    assert (row.outcome, row.decided_by) == ("granted", "silence")
    assert row.bridged_at is not None and row.hangup_cause
    (rec,) = fs.recordings(call)
    assert rec.state == ledger.SEALED and rec.size > 0
    spool, store = fs.files()
    assert spool == [] and store == [f"{rec.id}.age"]
    identity = pyrage.x25519.Identity.from_str(
        next(line for line in (Path(fs.config.storage.keys_dir) / "identity.txt").read_text().splitlines()
             if line.startswith("AGE-SECRET-KEY-")))
    plain = pyrage.decrypt((Path(fs.config.storage.store_dir) / f"{rec.id}.age").read_bytes(), [identity])
    with wave.open(io.BytesIO(plain)) as w:
        assert w.getnchannels() == 2  # RECORD_STEREO took effect: caller and staff apart


def test_caller_hangup_during_the_prompt_is_abandoned(fs):
    call = Call(fs.switch)
    assert call.prompt_started(), _no_prompt(call)
    gevent.sleep(PROMPT_SECONDS / 2)
    call.hang_up()
    assert call.ended()
    fs.settle()
    row = fs.row(call)
    assert row is not None, "the call is not in the ledger"
    assert row.outcome == "abandoned" and row.outcome != "granted"
    assert fs.recordings(call) == []
    assert fs.files() == ([], [])


def test_caller_hangups_at_any_moment_of_the_prompt_are_never_taken_as_silence(fs):
    """20 callers at once hang up at moments spread over the prompt and its collection timeout.

    A real FreeSWITCH can report play_and_get_digits complete (answered, read_result=failure,
    no Hangup-Cause) just before CHANNEL_HANGUP when the caller hangs up (captures s13,
    pagd_hangup_race.txt): that is a hang-up, not silence.
    """
    calls = [Call(fs.switch) for _ in range(20)]

    def hang_up_later(call: Call, delay: float) -> None:
        if call.prompt_started():
            gevent.sleep(delay)
            call.hang_up()

    # 0.05 .. 1.95 s after the prompt starts: the 1 s prompt, then the 1 s collection
    gevent.joinall([gevent.spawn(hang_up_later, c, 0.05 + i * 0.1) for i, c in enumerate(calls)])
    for call in calls:
        assert call.ended()
    fs.settle()
    outcomes = _outcomes(fs, calls)
    counts = Counter(outcomes.values())
    taken_as_silence = [b for b, o in outcomes.items() if o == "granted"]
    assert taken_as_silence == [], f"hang-ups taken as silence (granted): {taken_as_silence}; all: {dict(counts)}"
    assert counts == {"abandoned": len(calls)}, f"outcomes: {dict(counts)}"
    assert fs.files() == ([], [])


def test_caller_star1_during_the_bridge_withdraws_and_deletes_the_recording(fs):
    call = Call(fs.switch)
    assert call.bridged(), _no_prompt(call) if call.dropped_in_handshake() else "never bridged"
    assert call.wait("RECORD_START", 5) is not None
    gevent.sleep(1.0)
    call.keys("*1")
    assert call.wait("RECORD_STOP", 5) is not None, "the recording is stopped at once"
    gevent.sleep(1.0)
    call.hang_up()
    assert call.ended()
    fs.settle()
    row = fs.row(call)
    assert row is not None, "the call is not in the ledger"
    assert (row.outcome, row.withdrawn_by) == ("withdrawn", "caller_keys")
    (rec,) = fs.recordings(call)
    assert (rec.state, rec.state_reason) == (ledger.DELETED, "withdrawn")
    assert fs.files() == ([], [])


def test_40_concurrent_calls_are_all_in_the_ledger_with_an_outcome(fs):
    """Every call the switch handed to fs-consent ends up in the ledger, decided.

    With 40 handshakes at once, FreeSWITCH sometimes sends CHANNEL_PARK where a reply is
    due (captures s10/s11, handshake_race.txt).
    """
    calls = [Call(fs.switch) for _ in range(int(os.environ.get("FS_CONSENT_REAL_CALLS", "40")))]

    def talk(call: Call) -> None:
        with gevent.Timeout(30, False):  # bridged, or gone (a call dropped in the handshake ends at once)
            while call.wait("CHANNEL_BRIDGE", 0) is None and call.wait("CHANNEL_HANGUP", 0) is None:
                gevent.sleep(0.1)
        gevent.sleep(1.0)
        call.hang_up()

    gevent.joinall([gevent.spawn(talk, c) for c in calls])
    for call in calls:
        assert call.ended(30)
    fs.settle(60)
    outcomes = _outcomes(fs, calls)
    counts = Counter(outcomes.values())
    assert counts == {"granted": len(calls)}, f"of {len(calls)} calls: {dict(counts)}"


def test_uuid_setvar_multi_answers_as_the_emulator_does(fs):
    """The emulator's uuid_setvar_multi (tests/emulator/test_emulator.py) against the real one."""
    call = Call(fs.switch)
    assert call.prompt_started(), _no_prompt(call)
    real = [fs.switch.api(f"uuid_setvar_multi {call.b} a=1;b=x=y;;c"),
            *[fs.switch.api(f"uuid_getvar {call.b} {name}") for name in "abc"],
            fs.switch.api("uuid_setvar_multi 00000000-0000-0000-0000-000000000000 a=1"),
            fs.switch.api(f"uuid_setvar_multi {call.b} ;"),
            fs.switch.api(f"uuid_setvar_multi {call.b}")]
    call.hang_up()
    assert call.ended()
    syntax = "-USAGE: <uuid> <var>=<value>;<var>=<value>..."
    # as the emulator answers (the Switch helper strips the body's surrounding whitespace)
    assert real == ["-ERR No variable specified\n+OK", "1", "x=y", "_undef_", f"-ERR No such channel!\n{syntax}",
                    f"-ERR No variable specified\n{syntax}", "-ERR no reply"]
