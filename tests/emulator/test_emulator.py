"""The emulator as an app sees it, over real TCP on 127.0.0.1.

Two independent clients drive it: greenswitch 0.0.19 (as in the captures'
gs-outbound-1) and :class:`App`, a minimal client built on ``fs_consent.esl``
that takes events wherever they come.  The emulator runs with its default wire
disorder (seeded from the environment, see conftest.py); each wire behaviour on
its own, forced, is in test_emulator_chaos.py.
"""

from __future__ import annotations

import hashlib
import uuid as uuidlib
import wave
from array import array
from pathlib import Path

import gevent
import gevent.event
import greenswitch
import pytest
from gevent import socket

from fs_consent import esl
from fs_consent.emulator import CallerScript, FreeSwitchEmulator

PAGD = "1 1 1 3000 # prompt.wav silence_stream://250 consent_digit \\d 3000"
REPLIES = ("command/reply", "api/response")


class App:
    """The app's side of one call: every message is logged in arrival order."""

    def __init__(self, conn: socket.socket, call: gevent.Greenlet) -> None:
        self.conn = conn
        self.call = call
        self.log: list[esl.Message] = []
        self.closed = False
        self.hooks: list = []  # called by the reader as each message arrives
        self._new = gevent.event.Event()
        self._replies = 0
        self._reader = gevent.spawn(self._read)

    def _read(self) -> None:
        parser = esl.FrameParser()
        while True:
            data = self.conn.recv(65536)
            if not data:
                break
            for message in parser.feed(data):
                self.log.append(message)
                for hook in self.hooks:
                    hook(message)
            self._new.set()
        self.closed = True
        self._new.set()

    def wait(self, predicate, start: int = 0, timeout: float = 5.0) -> int:
        """Index of the first logged message from ``start`` that matches."""
        with gevent.Timeout(timeout, AssertionError("message did not arrive")):
            while True:
                for index in range(start, len(self.log)):
                    if predicate(self.log[index]):
                        return index
                assert not self.closed, "connection closed"
                self._new.clear()
                self._new.wait()

    def event(self, name: str, start: int = 0, timeout: float = 5.0, **headers: str) -> esl.Event:
        def matches(m: esl.Message) -> bool:
            if m.content_type != "text/event-plain":
                return False
            event = m.event()
            return event.name == name and all(event.headers.get(k) == v for k, v in headers.items())

        return self.log[self.wait(matches, start, timeout)].event()

    def events(self) -> list[str]:
        return [m.event().name for m in self.log if m.content_type == "text/event-plain"]

    def send(self, data: bytes) -> esl.Message:
        self.conn.sendall(data)
        index = self.wait(lambda m: m.content_type in REPLIES, self._replies)
        self._replies = index + 1
        return self.log[index]

    def command(self, line: str) -> str | None:
        return self.send(esl.encode_command(line)).reply_text

    def api(self, command: str) -> bytes:
        return self.send(esl.encode_api(command)).body

    def execute(self, app: str, arg: str | None = None, *, wait: bool = True) -> esl.Event | None:
        event_uuid = str(uuidlib.uuid4())
        assert self.send(esl.encode_execute(app, arg, event_uuid=event_uuid)).reply_text == "+OK"
        if wait:
            return self.event("CHANNEL_EXECUTE_COMPLETE", **{"Application-UUID": event_uuid})
        return None

    def handshake(self, *, linger: bool = True, extra_events: str = "") -> None:
        connect = self.send(esl.encode_command("connect"))
        assert connect.headers["Socket-Mode"] == "async" and connect.reply_text == "+OK\n"
        self.uuid = connect.headers["Unique-ID"]
        assert self.command("myevents") == "+OK Events Enabled"
        if linger:
            assert self.command("linger") == "+OK will linger"
        reply = self.command(f"event plain RECORD_START RECORD_STOP {extra_events}".strip())
        assert reply == "+OK event listener enabled plain"

    def finish(self):
        """After the hang-up: wait for the linger notice, exit, and return the CallResult."""
        self.wait(lambda m: m.headers.get("Content-Disposition") == "linger")
        assert self.command("exit") == "+OK bye"
        self.wait(lambda m: m.headers.get("Content-Disposition") == "disconnect")
        return self.result()

    def result(self, timeout: float = 10.0):
        result = self.call.get(timeout=timeout)
        self._reader.join(timeout=timeout)
        assert self.closed
        return result


@pytest.fixture
def dial(tmp_path):
    """``dial(script, **emulator_options) -> App`` for a call the emulator places to us."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    apps: list[App] = []

    def dial(script: CallerScript, **options) -> App:
        options = {"time_scale": 0.01, "app_latency": 0.005, "linger_timeout": 1.0, **options}
        emulator = FreeSwitchEmulator("127.0.0.1", port, spool_dir=tmp_path, **options)
        call = gevent.spawn(emulator.place_call, script, timeout=15)
        with gevent.Timeout(5):
            conn, _ = listener.accept()
        apps.append(App(conn, call))
        return apps[-1]

    yield dial
    for app in apps:
        app._reader.kill()
        app.call.kill()
        app.conn.close()
    listener.close()


def read_wav(path: Path) -> tuple[int, int, int, array]:
    with wave.open(str(path), "rb") as f:
        samples = array("h", f.readframes(f.getnframes()))
        return f.getnchannels(), f.getframerate(), f.getsampwidth(), samples


def crossings_per_second(samples) -> float:
    signs = [s >= 0 for s in samples if s != 0]
    return sum(a != b for a, b in zip(signs, signs[1:])) / (len(samples) / 8000)


def longest_silence(frames: list) -> int:
    best = run = 0
    for frame in frames:
        run = run + 1 if not any(frame) else 0
        best = max(best, run)
    return best


# ------------------------------------------------------------------ greenswitch


@pytest.mark.slow
def test_greenswitch_app_runs_a_whole_call(tmp_path):
    """greenswitch 0.0.19, an independent client, agrees with the emulator end to end."""
    seen: dict = {}
    path = tmp_path / "gs.wav"

    class ConsentApp:
        def __init__(self, session):
            self.session = session

        def run(self):
            s = self.session
            s.myevents()
            s.linger()
            s.send("event plain RECORD_START RECORD_STOP")
            seen["caller"] = s.caller_id_number
            s.answer()
            s.playback("tone_stream://%(1000,0,440)")
            seen["digit"] = s.play_and_get_digits(
                1, 1, 1, 3000, "#", "prompt.wav", "silence_stream://250", "consent_digit",
                "\\d", 3000, "",
            )
            s.call_command("record_session", str(path), block=True)
            gevent.sleep(0.2)
            s.call_command("stop_record_session", str(path), block=True)
            s.hangup()
            with gevent.Timeout(5):  # greenswitch only exposes lingering as this flag
                while not s._lingering:
                    gevent.sleep(0.01)

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    server = greenswitch.OutboundESLServer("127.0.0.1", port, application=ConsentApp)
    listening = gevent.spawn(server.listen)
    try:
        gevent.sleep(0.05)
        emulator = FreeSwitchEmulator("127.0.0.1", port, spool_dir=tmp_path, time_scale=0.01)
        result = emulator.place_call(CallerScript(digits=["1"]), timeout=15)
    finally:
        server.stop()
        listening.join(timeout=5)
    assert seen == {"caller": "0612345678", "digit": "1"}
    assert [app for app, _ in result.executed] == [
        "answer", "playback", "play_and_get_digits", "record_session", "stop_record_session", "hangup",
    ]
    assert result.exited and result.hangup_cause == "NORMAL_CLEARING"
    assert result.channel_vars == {}  # only set/export/uuid_setvar count
    info = result.recordings[str(path)]
    assert info.completion_cause == "success-maxtime" and not info.discarded
    assert abs(info.frames - 0.2 * 8000) < 0.15 * 8000
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    # greenswitch's layout: no Event-UUID, noted but working
    assert "sendmsg execute 'answer' without Event-UUID" in result.errors


# ------------------------------------------------------------------ recordings


@pytest.mark.slow
def test_stereo_bridge_only_recording_with_a_masked_stretch(dial, tmp_path):
    path = tmp_path / "call.wav"
    app = dial(CallerScript(digits=[None], menu_seconds=0.3, talk_seconds=0.6))
    app.handshake()
    app.execute("answer")
    assert app.execute("play_and_get_digits", PAGD).get("variable_read_result") == "failure"
    app.execute("set", "RECORD_STEREO=true")
    app.execute("set", "RECORD_BRIDGE_REQ=true")
    app.execute("record_session", str(path))
    app.execute("execute_extension", "menu XML default", wait=False)
    app.event("CHANNEL_BRIDGE")
    gevent.sleep(0.15)
    assert app.api(f"uuid_record {app.uuid} mask {path}") == b"+OK Success\n"
    gevent.sleep(0.15)
    assert app.api(f"uuid_record {app.uuid} unmask {path}") == b"+OK Success\n"
    stop = app.event("RECORD_STOP")
    assert stop.get("Record-Completion-Cause") == "success-silence"
    result = app.finish()

    channels, rate, width, samples = read_wav(path)
    assert (channels, rate, width) == (2, 8000, 2)
    frames = list(zip(samples[0::2], samples[1::2]))
    assert abs(len(frames) - 0.6 * 8000) < 0.1 * 8000  # the 0.3 s in the menu is not recorded
    assert abs(longest_silence(frames) - 0.15 * 8000) < 0.06 * 8000
    left, right = samples[0:1600:2], samples[1:1600:2]  # the first 0.1 s, before the mask
    assert abs(crossings_per_second(left) - 800) < 40  # caller: 400 Hz, left
    assert abs(crossings_per_second(right) - 1600) < 80  # agent: 800 Hz, right
    info = result.recordings[str(path)]
    assert abs(info.masked_seconds - 0.15) < 0.06
    assert info.frames == len(frames) == int(stop.get("variable_record_samples"))
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_mono_recording_without_bridge_req_starts_at_once(dial, tmp_path):
    path = tmp_path / "mono.wav"
    app = dial(CallerScript(menu_seconds=0.3, talk_seconds=0.2))
    app.handshake()
    app.execute("answer")
    app.execute("record_session", str(path))
    app.execute("execute_extension", "menu")
    app.finish()
    channels, _, _, samples = read_wav(path)
    assert channels == 1
    assert abs(len(samples) - 0.5 * 8000) < 0.12 * 8000
    assert max(samples[:800]) > 1000  # the caller is heard in the menu already


@pytest.mark.parametrize("how", ["stop_record_session", "uuid_record stop"])
def test_recording_is_complete_on_disk_when_it_is_reported_stopped(dial, tmp_path, how):
    path = tmp_path / "stop.wav"
    app = dial(CallerScript())
    app.handshake()
    app.execute("answer")
    app.execute("record_session", str(path))
    gevent.sleep(0.2)
    on_disk = []
    app.hooks.append(
        lambda m: m.content_type == "text/event-plain" and m.event().name == "RECORD_STOP"
        and on_disk.append(path.read_bytes())  # the moment the app hears about it
    )
    if how == "stop_record_session":
        app.execute("stop_record_session", str(path))
    else:
        assert app.api(f"uuid_record {app.uuid} stop {path}") == b"+OK Success\n"
    stop = app.event("RECORD_STOP")
    assert stop.get("Record-Completion-Cause") == "success-maxtime"
    samples = int(stop.get("variable_record_samples"))
    assert samples > 0.1 * 8000
    assert len(on_disk[0]) == 44 + 2 * samples == int(stop.get("variable_record_file_size"))
    assert on_disk[0] == path.read_bytes()
    assert read_wav(path)[3] == array("h", on_disk[0][44:])
    app.execute("hangup")
    app.finish()


def test_recording_without_audio_is_discarded(dial, tmp_path):
    path = tmp_path / "empty.wav"
    app = dial(CallerScript(bridge=False))
    app.handshake()
    app.execute("answer")
    app.execute("set", "RECORD_BRIDGE_REQ=true")
    app.execute("record_session", str(path))
    assert path.exists()  # opened at RECORD_START like FreeSWITCH
    app.execute("execute_extension", "menu")  # the menu ends without an agent
    stop = app.event("RECORD_STOP")
    assert stop.get("variable_RECORD_DISCARDED") == "true"
    result = app.finish()
    assert not path.exists()
    assert result.recordings[str(path)].discarded
    assert result.recordings[str(path)].sha256 is None


def test_recording_outside_the_spool_is_refused(dial, tmp_path):
    app = dial(CallerScript())
    app.handshake()
    app.execute("record_session", "/etc/fs-consent-should-never-exist.wav")
    assert "RECORD_START" not in app.events()
    assert app.api(f"uuid_record {app.uuid} start ../outside.wav") == b"-ERR Cannot record session!\n"
    app.execute("hangup")
    result = app.finish()
    assert not Path("/etc/fs-consent-should-never-exist.wav").exists()
    assert "recording path outside the spool directory refused" in result.errors


# ------------------------------------------------------------------ hang-up


TAIL = ["CHANNEL_UNPARK", "CHANNEL_EXECUTE_COMPLETE", "CHANNEL_STATE"]
END = ["CHANNEL_STATE", "CHANNEL_HANGUP_COMPLETE"]


@pytest.mark.parametrize(
    ("point", "script", "running", "expected"),
    [
        ("in the prompt", CallerScript(hangup_in_prompt=True, prompt_seconds=0.2),
         "play_and_get_digits", ["CHANNEL_HANGUP", "CHANNEL_EXECUTE_COMPLETE", *TAIL, *END]),
        ("while recording, parked", CallerScript(hangup_after_record=0.1), None,
         ["CHANNEL_HANGUP", *TAIL, "RECORD_STOP", *END]),
        ("in the menu", CallerScript(bridge=False, menu_seconds=0.1), "execute_extension",
         ["CHANNEL_HANGUP", "CHANNEL_EXECUTE_COMPLETE", *TAIL, "RECORD_STOP", *END]),
        ("while bridged", CallerScript(caller_hangup_after=0.1, talk_seconds=5), "execute_extension",
         ["CHANNEL_HANGUP", "CHANNEL_UNBRIDGE", "CHANNEL_EXECUTE_COMPLETE", *TAIL, "RECORD_STOP",
          *END]),
        ("agent hangs up", CallerScript(talk_seconds=0.1), "execute_extension",
         ["CHANNEL_UNBRIDGE", "CHANNEL_HANGUP", "CHANNEL_EXECUTE_COMPLETE", *TAIL, "RECORD_STOP",
          *END]),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
@pytest.mark.slow
def test_hangup_at_each_point_follows_the_captured_order(dial, tmp_path, point, script, running, expected):
    # none of these hang-ups races the completion (that one, s13, is in test_emulator_chaos.py)
    app = dial(script)
    app.handshake()
    app.execute("answer")
    if running == "play_and_get_digits":
        complete = app.execute("play_and_get_digits", PAGD)
        assert complete.get("variable_read_result") is None
        assert complete.get("Hangup-Cause") == "NORMAL_CLEARING"
    else:
        app.execute("record_session", str(tmp_path / "r.wav"))
        if running:
            app.execute(running, "menu", wait=False)
    app.event("CHANNEL_HANGUP_COMPLETE")
    result = app.finish()
    assert app.events()[-len(expected):] == expected, point
    completes = [m.event() for m in app.log if m.content_type == "text/event-plain"
                 and m.event().name == "CHANNEL_EXECUTE_COMPLETE"]
    assert completes[-1].get("Application") == "socket"
    if running:
        assert completes[-2].get("Application") == running
    assert result.hangup_cause == "NORMAL_CLEARING" and result.exited


def test_commands_after_the_hangup_are_answered_but_run_nothing(dial):
    app = dial(CallerScript(hangup_after_record=0.0))
    app.handshake()
    app.execute("record_session", "after.wav")
    app.wait(lambda m: m.headers.get("Content-Disposition") == "linger")
    before = len(app.events())
    assert app.send(esl.encode_execute("playback", "x.wav", event_uuid="late")).reply_text == "+OK"
    assert app.command("getvar caller_id_number") == "0612345678"
    assert app.api(f"uuid_getvar {app.uuid} caller_id_number") == b"-ERR No such channel!\n"
    assert app.command("exit") == "+OK bye"
    result = app.result()
    assert len(app.events()) == before
    assert result.executed[-1] == ("playback", "x.wav")


def test_when_the_app_goes_away_the_call_carries_on(dial, tmp_path):
    """A crashed app does not drop the caller: the running app ends normally, then the call."""
    path = tmp_path / "orphan.wav"
    app = dial(CallerScript(menu_seconds=0.05, talk_seconds=0.4))
    app.handshake()
    app.execute("record_session", str(path))
    app.execute("execute_extension", "menu", wait=False)
    app.event("CHANNEL_BRIDGE")
    app._reader.kill()
    app.conn.close()
    result = app.call.get(timeout=5)
    assert result.errors == ["the app closed the connection without exit"]
    assert result.hangup_cause == "NORMAL_CLEARING" and not result.exited
    info = result.recordings[str(path)]
    assert info.completion_cause == "success-silence"
    assert abs(info.frames - 0.45 * 8000) < 0.12 * 8000  # the whole talk, not cut at the crash
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ linger


def test_without_linger_the_socket_closes_right_after_channel_hangup(dial, tmp_path):
    """s6: no RECORD_STOP, no CHANNEL_HANGUP_COMPLETE; the file is still closed."""
    app = dial(CallerScript(hangup_after_record=0.1))
    app.handshake(linger=False)
    app.execute("record_session", str(tmp_path / "s6.wav"))
    result = app.result()
    assert app.events()[-1] == "CHANNEL_HANGUP"
    last = app.log[-1]
    assert last.headers["Content-Disposition"] == "disconnect" and last.body == esl.GOODBYE
    assert not result.exited
    assert result.recordings[str(tmp_path / "s6.wav")].sha256 is not None


def test_emulator_without_linger_ignores_the_linger_command(dial, tmp_path):
    app = dial(CallerScript(hangup_after_record=0.1), linger=False)
    app.handshake(linger=True)
    app.execute("record_session", str(tmp_path / "x.wav"))
    app.result()
    assert "CHANNEL_HANGUP_COMPLETE" not in app.events()
    assert app.log[-1].headers["Content-Disposition"] == "disconnect"


@pytest.mark.slow
@pytest.mark.parametrize(("command", "waited"), [("linger", 1.0), ("linger 30", 0.3)])
def test_linger_without_exit_times_out(dial, command, waited):
    """s5: the switch says goodbye by itself (linger N is scaled by time_scale)."""
    app = dial(CallerScript(hangup_after_record=0.0), linger_timeout=1.0)
    assert app.send(esl.encode_command("connect")).reply_text == "+OK\n"
    app.command("myevents")
    app.command(command)
    app.execute("record_session", "t.wav", wait=False)
    notice = app.log[app.wait(lambda m: m.headers.get("Content-Disposition") == "linger")]
    assert notice.headers["Linger-Time"] == ("-1" if command == "linger" else "30")
    started = gevent.get_hub().loop.now()
    result = app.result()
    assert abs(gevent.get_hub().loop.now() - started - waited) < 0.25
    assert app.log[-1].headers["Content-Disposition"] == "disconnect"
    assert not result.exited


# ------------------------------------------------------------------ events and commands


def test_events_are_filtered_like_myevents(dial, tmp_path):
    script = CallerScript(menu_seconds=0.05, talk_seconds=0.4, hold=[(0.05, 0.1)])
    app = dial(script)
    assert app.send(esl.encode_command("connect")).reply_text == "+OK\n"
    app.execute("answer", wait=False)  # before myevents: runs, but no events
    gevent.sleep(0.1)
    assert app.events() == []
    app.command("myevents")
    app.command("linger")
    app.execute("record_session", str(tmp_path / "f.wav"))
    app.execute("execute_extension", "menu")
    app.finish()
    names = app.events()
    assert "CHANNEL_BRIDGE" in names and "CHANNEL_UNBRIDGE" in names
    for hidden in ("RECORD_START", "RECORD_STOP", "CHANNEL_HOLD", "CHANNEL_UNHOLD", "CHANNEL_ANSWER"):
        assert hidden not in names


def test_hold_events_need_their_own_subscription(dial):
    app = dial(CallerScript(menu_seconds=0.05, talk_seconds=0.4, hold=[(0.05, 0.1)]))
    app.handshake(extra_events="CHANNEL_HOLD CHANNEL_UNHOLD")
    app.execute("execute_extension", "menu")
    app.finish()
    names = app.events()
    bridge = names.index("CHANNEL_BRIDGE")
    assert names[bridge:bridge + 3] == ["CHANNEL_BRIDGE", "CHANNEL_HOLD", "CHANNEL_UNHOLD"]
    hold = app.event("CHANNEL_HOLD")
    assert hold.get("Channel-Call-State") == "HELD"
    assert app.event("CHANNEL_UNHOLD").get("Channel-Call-State") == "ACTIVE"


def test_event_uuid_is_echoed_and_its_absence_noted(dial):
    app = dial(CallerScript())
    app.handshake()
    complete = app.execute("set", "a=b")
    execute = app.event("CHANNEL_EXECUTE", **{"Application": "set"})
    assert execute.get("Application-UUID") == complete.get("Application-UUID")
    app.send(esl.encode_execute("set", "c=d"))
    plain = app.event("CHANNEL_EXECUTE_COMPLETE", **{"Application-Data": "c=d"})
    assert uuidlib.UUID(plain.get("Application-UUID"))
    assert app.command("getvar c") == "d"
    app.execute("hangup")
    result = app.finish()
    assert result.errors == ["sendmsg execute 'set' without Event-UUID"]
    assert result.channel_vars == {"a": "b", "c": "d"}


def test_command_replies(dial):
    app = dial(CallerScript())
    app.handshake()
    assert app.command("myevents") == "-ERR aready enabled."
    assert app.command("no_such_command") == "-ERR command not found"
    assert app.command("linger 5") == "+OK will linger 5 seconds"
    assert app.command("getvar nothing_here") == ""
    assert app.api("no_such_command") == b"-ERR no_such_command Command not found!\n"
    assert app.api("version").startswith(b"FreeSWITCH Version 1.10.12-release")
    assert app.api(f"uuid_setvar {app.uuid} fs_consent_state recorded") == b"+OK\n"
    assert app.api(f"uuid_getvar {app.uuid} fs_consent_state") == b"recorded"
    assert app.api(f"uuid_getvar {app.uuid} unset_var") == b"_undef_"
    assert app.api("uuid_setvar 00000000-0000-0000-0000-000000000000 a b") == b"-ERR No such channel!\n"
    # uuid_setvar_multi answers as mod_commands.c does
    assert app.api(f"uuid_setvar_multi {app.uuid} a=1;b=x=y;;c") == b"-ERR No variable specified\n+OK\n"
    assert [app.api(f"uuid_getvar {app.uuid} {name}") for name in "abc"] == [b"1", b"x=y", b"_undef_"]
    syntax = b"-USAGE: <uuid> <var>=<value>;<var>=<value>...\n"
    assert app.api("uuid_setvar_multi 00000000-0000-0000-0000-000000000000 a=1") == b"-ERR No such channel!\n" + syntax
    assert app.api(f"uuid_setvar_multi {app.uuid} ;") == b"-ERR No variable specified\n" + syntax
    assert app.api(f"uuid_setvar_multi {app.uuid}") == b"-ERR no reply\n"  # mod_event_socket's word for nothing
    assert app.api("uuid_record 00000000-0000-0000-0000-000000000000 stop x.wav") == (
        b"-ERR Cannot locate session!\n"
    )
    assert app.api(f"uuid_record {app.uuid} stop never-started.wav") == (
        b"-ERR Cannot stop record session!\n"
    )
    assert app.api(f"uuid_broadcast {app.uuid} notice.wav aleg") == b"+OK Message Sent\n"
    app.event("CHANNEL_EXECUTE_COMPLETE", Application="playback", **{"Application-Data": "notice.wav"})
    app.execute("stop_record_session")
    assert app.api(f"uuid_kill {app.uuid}") == b"+OK\n"
    app.event("CHANNEL_HANGUP")
    result = app.finish()
    assert result.channel_vars == {"fs_consent_state": "recorded", "a": "1", "b": "x=y"}  # c was unset
    assert result.api_commands[:2] == ["no_such_command", "version"]
    assert "unknown command 'no_such_command'" in result.errors
    assert "stop_record_session without a path (crashes FreeSWITCH)" in result.errors


def test_greenswitch_default_play_and_get_digits_transfers_to_none(dial):
    """gs-outbound-2: 'None' arguments; on failure the call goes to extension None and dies."""
    app = dial(CallerScript(digits=[None]))
    app.handshake()
    app.execute("answer")
    complete = app.execute(
        "play_and_get_digits", "1 1 1 3000 # p.wav silence_stream://250 consent_digit \\d None None"
    )
    assert complete.get("Caller-Destination-Number") == "None"
    hangup = app.event("CHANNEL_HANGUP")
    assert hangup.get("Hangup-Cause") == "NO_ROUTE_DESTINATION"
    result = app.finish()
    assert result.hangup_cause == "NO_ROUTE_DESTINATION"
    assert any("'None'" in error for error in result.errors)


@pytest.mark.parametrize(
    ("respond", "runs_here"), [("a", True), ("o", True), ("s", False), ("b", False)]
)
@pytest.mark.slow
def test_agent_meta_keys_run_the_bound_app_on_our_channel_or_not(dial, respond, runs_here):
    """listen b (the agent dials): respond a (our leg) or o (opposite the dialer) runs it here;
    s (the dialer's own leg) and b run it on the agent's leg, whose events never reach us."""
    app = dial(CallerScript(talk_seconds=0.3, agent_keys=[(0.1, "*2")], caller_keys=[(0.05, "*1")]))
    app.handshake()
    app.execute("bind_meta_app", f"2 b {respond} set::fs_consent_agent=withdraw")
    app.execute("execute_extension", "menu")
    result = app.finish()
    sets = [m.event() for m in app.log if m.content_type == "text/event-plain"
            and m.event().get("Application") == "set"]
    dtmf = [m.event().get("DTMF-Digit") for m in app.log if m.content_type == "text/event-plain"
            and m.event().name == "DTMF"]
    assert dtmf == ["*", "1"]  # the caller's keys; the agent's never reach this socket
    if runs_here:
        assert [e.name for e in sets] == ["CHANNEL_EXECUTE", "CHANNEL_EXECUTE_COMPLETE"]
        assert sets[0].get("Application-Data") == "fs_consent_agent=withdraw"
        assert result.channel_vars == {"fs_consent_agent": "withdraw"}
    else:
        assert sets == [] and result.channel_vars == {}


def test_decision_latency_and_digits(dial, tmp_path):
    app = dial(CallerScript(digits=["1", None], prompt_seconds=0.05))
    app.handshake()
    first = app.execute("play_and_get_digits", PAGD)
    assert (first.get("variable_consent_digit"), first.get("variable_read_result")) == ("1", "success")
    dtmf = app.event("DTMF")
    assert (dtmf.get("DTMF-Digit"), dtmf.get("DTMF-Source")) == ("1", "UNKNOWN")
    second = app.execute("play_and_get_digits", PAGD.replace("consent_digit", "again"))
    assert second.get("variable_read_result") == "failure" and second.get("variable_again") is None
    gevent.sleep(0.1)
    app.execute("record_session", str(tmp_path / "d.wav"))
    app.execute("hangup")
    result = app.finish()
    assert 0.1 <= result.decision_latency < 0.3
    assert app.event("CHANNEL_HANGUP_COMPLETE").get("variable_digits_dialed") == "1"


def test_a_key_during_the_prompt_stops_it_there(dial):
    # capture s1: the key 0.52 s into a 1.5 s prompt; play_and_get_digits completes at once
    # with playback_last_offset_pos 4160 (samples played) and playback_ms the whole file
    app = dial(CallerScript(digits=["1"], prompt_seconds=5.0, digit_after=0.1))
    app.handshake()
    started = gevent.get_hub().loop.now()
    complete = app.execute("play_and_get_digits", PAGD)
    took = gevent.get_hub().loop.now() - started
    assert (complete.get("variable_consent_digit"), complete.get("variable_read_result")) == ("1", "success")
    assert complete.get("variable_playback_last_offset_pos") == "800"
    assert complete.get("variable_playback_ms") == "5000"
    assert 0.05 < took < 1.0
    app.execute("hangup")
    app.finish()


def test_a_call_that_never_ends_is_cut_off(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    emulator = FreeSwitchEmulator("127.0.0.1", listener.getsockname()[1], spool_dir=tmp_path)
    started = gevent.get_hub().loop.now()
    result = emulator.place_call(CallerScript(), timeout=0.3)  # the app never says anything
    assert gevent.get_hub().loop.now() - started < 1.0
    assert result.errors == ["call did not end within 0.3 s"]
    listener.close()


@pytest.mark.slow
def test_many_concurrent_calls(tmp_path):
    """Calls run side by side in one process, each with its own recording."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    emulator = FreeSwitchEmulator(
        "127.0.0.1", listener.getsockname()[1], spool_dir=tmp_path, time_scale=0.01,
        app_latency=0.005,
    )

    def serve_one(conn) -> None:
        app = App(conn, gevent.spawn(lambda: None))
        app.handshake()
        app.execute("answer")
        app.execute("record_session", f"{app.uuid}.wav")
        app.execute("execute_extension", "menu")
        app.wait(lambda m: m.headers.get("Content-Disposition") == "linger")
        app.command("exit")

    calls = [gevent.spawn(emulator.place_call, CallerScript(talk_seconds=0.2), timeout=20)
             for _ in range(100)]
    servers = [gevent.spawn(serve_one, listener.accept()[0]) for _ in range(100)]
    gevent.joinall(calls + servers, timeout=30, raise_error=True)
    listener.close()
    results = [c.value for c in calls]
    assert all(r.exited and not r.errors for r in results)
    assert len({r.uuid for r in results}) == 100
    assert all(info.frames > 0.15 * 8000 for r in results for info in r.recordings.values())
