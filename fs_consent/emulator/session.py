"""One emulated call: the outbound ESL connection FreeSWITCH opens to the app.

Three kinds of greenlet share the session, as FreeSWITCH's threads do:

* the reader answers each command at once (replies, ``api``, ``getvar``) and
  queues ``sendmsg`` messages, like mod_event_socket's listener thread;
* the runner executes the queued messages one at a time and, once the channel
  hangs up, walks the hang-up sequence, like the session thread;
* timers play the caller's and the agent's part from the :class:`CallerScript`.

Every byte goes out through one writer (:meth:`CallSession._send`), where the
call's :class:`~.chaos.CallChaos` may cut a write in pieces or hold a frame back
to share a write with the next ones; the same object decides when CHANNEL_PARK
goes out, whether a caller who hangs up while the prompt waits for a digit
makes it complete (as a timeout) before CHANNEL_HANGUP, and, only when forced,
whether a sendmsg's CHANNEL_EXECUTE beats its ``+OK``.

Every wait is bounded by the call's state: a hang-up interrupts any app.  If
the app goes away (``exit`` or a closed socket) the running app still ends
normally and then the call hangs up, without events: the caller is not
dropped with the socket.
"""

from __future__ import annotations

import functools
import os
import re
import time
import uuid as uuidlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import gevent
import gevent.event
import gevent.lock
import gevent.pool

from .. import esl
from .channel import Channel, now_us
from .chaos import CallChaos, WireChaos
from .events import Core, application_headers
from .script import CallerScript, CallResult, RecordingInfo
from .wav import RATE, WavRecording, sha256_of

VERSION = (
    "FreeSWITCH Version 1.10.12-release+git~20240802T210227Z~a88d069d6f~64bit "
    "(git a88d069 2024-08-02 21:02:27Z 64bit)\n"
)
_SETVAR_MULTI_SYNTAX = "<uuid> <var>=<value>;<var>=<value>..."
_UUID_RECORD_USAGE = "-USAGE: <uuid> [start|stop|mask|unmask] <path> [<limit>] [<recording_vars>]\n"

#: The events ``myevents`` subscribes to (mod_event_socket.c).  No CHANNEL_HOLD,
#: CHANNEL_UNHOLD, RECORD_START or RECORD_STOP: those need ``event plain ...``.
WRITE_EVERY_S = 0.25  # a running recording's audio reaches its file this often
MYEVENTS = frozenset(
    "CHANNEL_ANSWER CHANNEL_APPLICATION CHANNEL_BRIDGE CHANNEL_CREATE CHANNEL_DATA "
    "CHANNEL_DESTROY CHANNEL_EXECUTE CHANNEL_EXECUTE_COMPLETE CHANNEL_HANGUP "
    "CHANNEL_HANGUP_COMPLETE CHANNEL_ORIGINATE CHANNEL_UUID CHANNEL_OUTGOING CHANNEL_PARK "
    "CHANNEL_PROGRESS CHANNEL_PROGRESS_MEDIA CHANNEL_STATE CHANNEL_UNBRIDGE CHANNEL_UNPARK "
    "DETECTED_SPEECH DTMF NOTALK TALK".split()
)


@dataclass(frozen=True)
class Settings:
    """Emulator-wide knobs (see :class:`FreeSwitchEmulator`)."""

    spool_dir: Path
    linger: bool
    time_scale: float
    app_latency: float
    linger_timeout: float


@dataclass
class _Message:
    """A queued ``sendmsg``: an execute, or a hang-up (``app`` is None).

    ``early`` ('execute' or 'complete'): that event of the app goes out before the
    sendmsg's ``+OK``; the runner sets ``started`` once it has, the reader sets
    ``replied`` once the ``+OK`` is out.
    """

    app: str | None
    arg: str | None
    app_uuid: str
    early: str | None = None
    started: gevent.event.Event | None = None
    replied: gevent.event.Event | None = None


@dataclass
class _MetaBinding:
    listen: str
    respond: str
    app: str
    arg: str | None


class CallSession:
    def __init__(
        self,
        sock,
        *,
        core: Core,
        settings: Settings,
        script: CallerScript,
        call_uuid: str,
        session_id: int,
        socket_target: str,
        wire: CallChaos | None = None,
    ) -> None:
        self._sock = sock
        self._wire = wire or WireChaos.off().for_call(session_id)
        self._core = core
        self._settings = settings
        self._script = script
        self._socket_target = socket_target
        self.channel = Channel(
            uuid=call_uuid,
            caller_number=script.caller_number,
            caller_name=script.caller_name,
            session_id=session_id,
            socket_target=socket_target,
        )
        self.result = CallResult(uuid=call_uuid, chaos=self._wire)
        self._parser = esl.CommandParser()
        self._send_lock = gevent.lock.Semaphore()
        self._greenlets = gevent.pool.Group()
        self._queue: deque[_Message] = deque()
        self._work = gevent.event.Event()
        self._hung = gevent.event.Event()
        self._closed = gevent.event.Event()
        self._done = gevent.event.Event()
        self._connected = False
        self._subscribed: set[str] = set()
        self._all_events = False
        self._myevents = False
        self._linger: int | None = None  # None: not lingering; -1: until exit
        self._destroyed = False
        self._transfer_to: str | None = None
        self._recordings: dict[str, WavRecording] = {}
        self._record_started = False
        self._bridged = False
        self._bridges = 0
        self._legs: list[tuple[str, str]] = []  # Bridge-A/B-Unique-ID of the bridge that is up
        self._meta: dict[str, _MetaBinding] = {}
        self._pagd_runs = 0
        self._last_decision: float | None = None
        self._received_at = 0.0  # time.monotonic() of the last read from the app
        self._pending: list[bytes] = []  # frames held back to share a write
        self._runner: gevent.Greenlet | None = None
        self._idle = False  # the runner waits for a message
        self._park: list[tuple[str, str]] | None = None  # CHANNEL_PARK not yet written...
        self._park_after = 0  # ...until this many more replies have gone out
        self._collecting = False  # play_and_get_digits waits for a digit
        self._unlinked: str | None = None  # the caller hung up; our leg hangs up after the socket app
        self._link_lost = gevent.event.Event()
        self._dtmf_queued = False  # transferred away from the park: caller keys raise no event...
        self._dtmf_queue = ""  # ...until an app that reads DTMF dequeues them (s19)

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> CallResult:
        """Serve the connection until it closes; every greenlet ends with it."""
        started = self._started = time.monotonic()
        self._greenlets.spawn(self._read_loop)
        self._runner = self._greenlets.spawn(self._run_apps)
        try:
            self._done.wait()
        finally:
            self._close()
            self._greenlets.kill()
            for path in list(self._recordings):
                self._close_recording(path, "success-silence")
            self.result.duration = time.monotonic() - started
        return self.result

    def abort(self, reason: str) -> None:
        """End the call from outside (the caller's timeout)."""
        self.result.errors.append(reason)
        self._done.set()

    def _close(self) -> None:
        """Write what is held back (briefly: the app may have stopped reading), then close."""
        if self._closed.is_set():
            return
        try:
            with gevent.Timeout(1.0):
                self._flush()
        except gevent.Timeout:
            pass
        self._shut()

    def _shut(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        try:
            self._sock.close()
        except OSError:
            pass

    # ------------------------------------------------------------------ the wire

    def _send(self, data: bytes) -> None:
        """Queue ``data`` for the wire, in call order; it goes out now unless held back."""
        if self._closed.is_set():
            return
        with self._send_lock:
            self._pending.append(data)
            if self._wire.hold_back():
                if len(self._pending) == 1:
                    self._greenlets.spawn(self._flush_later)
                return
            self._write_pending()

    def _flush_later(self) -> None:
        gevent.sleep(self._wire.config.hold_seconds)
        self._flush()

    def _flush(self) -> None:
        with self._send_lock:
            self._write_pending()

    def _write_pending(self) -> None:
        """One write of every queued frame, perhaps cut in pieces (the send lock is held)."""
        if not self._pending:
            return
        frames, self._pending = self._pending, []
        if len(frames) > 1:
            self._wire.coalesced += 1
        if self._closed.is_set():
            return
        try:
            for number, piece in enumerate(self._wire.pieces(b"".join(frames))):
                if number:
                    self._wire.pause()
                self._sock.sendall(piece)
        except OSError:
            self._shut()

    def _reply(self, data: bytes) -> None:
        """A command's reply; a CHANNEL_PARK whose turn comes after it goes in the same write
        (as in 13 of the 15 calls of handshake_race.txt)."""
        if self._park is not None:
            self._park_after -= 1
            if self._park_after <= 0:
                self._send(data + self._park_bytes())
                return
        self._send(data)

    def _park_bytes(self) -> bytes:
        headers, self._park = self._park, None
        if self._all_events or "CHANNEL_PARK" in self._subscribed:
            return esl.encode_event(headers)
        return b""

    def _emit(self, name: str, *, before=(), after=()) -> None:
        """Fire an event; deliver it if this socket listens for it (after a CHANNEL_PARK
        still waiting for its turn: the park came before anything the channel does)."""
        if self._park is not None:
            self._send(self._park_bytes())
        headers = self._core.channel_event(name, self.channel, before=before, after=after)
        if self._all_events or name in self._subscribed:
            self._send(esl.encode_event(headers))

    def _spawn_after(self, delay: float, action: Callable, *args, bridged: bool = False) -> None:
        """``action(*args)`` after ``delay``, unless the call (or, if ``bridged``, this bridge) ended."""
        bridge = self._bridges

        def fire() -> None:
            if self._hung.wait(delay):
                return
            if bridged and not (self._bridged and self._bridges == bridge):
                return
            action(*args)

        self._greenlets.spawn(fire)

    def _sleep(self, seconds: float) -> bool:
        """Wait like a playing app: True if the time passed, False on hang-up."""
        return not self._hung.wait(max(0.0, seconds))

    def _scaled(self, ms: str | int, default_ms: int = 0) -> float:
        try:
            value = int(ms)
        except (TypeError, ValueError):
            value = default_ms
        return max(0, value) / 1000 * self._settings.time_scale

    # ------------------------------------------------------------------ reader

    def _read_loop(self) -> None:
        try:
            while not self._closed.is_set():
                try:
                    data = self._sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    break
                self._received_at = time.monotonic()  # when the commands this completes arrived
                try:
                    commands = self._parser.feed(data)
                except esl.ProtocolError as exc:
                    self.result.errors.append(f"malformed command: {exc}")
                    break
                for command in commands:
                    self._command(command)
        finally:
            # Like FreeSWITCH, the app running now carries on to its end (the call is
            # not dropped with the socket); then the runner hangs up.
            if not self._closed.is_set() and not self.result.exited:
                self.result.errors.append("the app closed the connection without exit")
            self._close()
            self._work.set()

    def _command(self, command: esl.Command) -> None:
        line = command.line.strip()
        verb, _, rest = line.partition(" ")
        self.result.commands.append(verb)
        if not self._connected and verb != "connect":
            self.result.errors.append(f"'{verb}' sent before connect")
        handler = {
            "connect": self._cmd_connect,
            "myevents": self._cmd_myevents,
            "event": self._cmd_event,
            "noevents": self._cmd_noevents,
            "linger": self._cmd_linger,
            "nolinger": self._cmd_nolinger,
            "getvar": self._cmd_getvar,
            "api": self._cmd_api,
            "sendmsg": functools.partial(self._cmd_sendmsg, command=command),
            "exit": self._cmd_exit,
        }.get(verb)
        if handler is None:
            self.result.errors.append(f"unknown command '{verb}'")
            self._reply(esl.encode_reply("-ERR command not found"))
            return
        handler(rest.strip())

    def _cmd_connect(self, _rest: str) -> None:
        self._connected = True
        headers = self._core.connect_data(self.channel)
        self._reply(esl.encode_connect_reply(headers))

    def _cmd_myevents(self, rest: str) -> None:
        if self._myevents:
            self._reply(esl.encode_reply("-ERR aready enabled."))
            return
        if rest and rest != "plain":
            self.result.errors.append(f"myevents {rest}: only plain events are emulated")
        self._myevents = True
        self._subscribed |= MYEVENTS
        self._reply(esl.encode_reply("+OK Events Enabled"))
        # The socket app parks the channel while the listener handles our commands: when the
        # park comes after this subscription, CHANNEL_PARK (the channel as it is now) goes out
        # between replies.  Before any other event of the channel, in any case.
        after = self._wire.park_after()
        if after is not None and self._park is None:
            self._park = self._core.channel_event("CHANNEL_PARK", self.channel)
            self._park_after = after
            if after == 0:  # its own write, after the reply (s10: it beat the next reply)
                self._send(self._park_bytes())

    def _cmd_event(self, rest: str) -> None:
        names = rest.split()
        fmt = "plain"
        if names and names[0] in ("plain", "json", "xml"):
            fmt = names.pop(0)
        if fmt != "plain":
            self.result.errors.append(f"event {fmt}: only plain events are emulated")
        for name in names:
            if name == "ALL":
                self._all_events = True
            else:
                self._subscribed.add(name)
        self._reply(esl.encode_reply(f"+OK event listener enabled {fmt}"))

    def _cmd_noevents(self, _rest: str) -> None:
        self._subscribed.clear()
        self._all_events = self._myevents = False
        self._reply(esl.encode_reply("+OK no longer listening for events"))

    def _cmd_linger(self, rest: str) -> None:
        if rest.isdigit() and int(rest) > 0:
            self._linger = int(rest)
            self._reply(esl.encode_reply(f"+OK will linger {rest} seconds"))
        else:
            self._linger = -1
            self._reply(esl.encode_reply("+OK will linger"))

    def _cmd_nolinger(self, _rest: str) -> None:
        self._linger = None
        self._reply(esl.encode_reply("+OK will not linger"))

    def _cmd_getvar(self, name: str) -> None:
        self._reply(esl.encode_reply(self.channel.lookup(name) or ""))

    def _cmd_exit(self, _rest: str) -> None:
        self.result.exited = True
        self._reply(esl.encode_reply("+OK bye"))
        self._goodbye()

    def _goodbye(self) -> None:
        self._send(esl.encode_disconnect_notice(self.channel.uuid, self.channel.name, linger=False))
        self._close()

    def _cmd_sendmsg(self, target: str, *, command: esl.Command) -> None:
        if target and target != self.channel.uuid:
            self._reply(esl.encode_reply(f"-ERR invalid session id [{target}]"))
            return
        headers = command.headers
        call_command = headers.get("call-command", "")
        event_uuid = headers.get("Event-UUID")
        if call_command != "execute":
            self._reply(esl.encode_reply("+OK"))
        if call_command == "execute":
            app = headers.get("execute-app-name", "")
            arg = headers.get("execute-app-arg")
            if arg is None and command.body:
                arg = command.body.decode("utf-8", "replace")
            self.result.executed.append((app, arg))
            if event_uuid is None:
                self.result.errors.append(f"sendmsg execute '{app}' without Event-UUID")
            if app == "play_and_get_digits" and self.result.prompt_latency is None:
                self.result.prompt_latency = self._received_at - self._started
            if app == "record_session" and self._last_decision is not None:
                if self.result.decision_latency is None:
                    self.result.decision_latency = self._received_at - self._last_decision
                    self.result.decision_handled_latency = time.monotonic() - self._last_decision
            message = _Message(app, arg, event_uuid or str(uuidlib.uuid4()))
            if self._idle and not self._queue and not self._hung.is_set():
                message.early = self._wire.execute_first(app)
            if message.early is not None:
                # The app starts at once and its event is written first; the +OK follows.
                message.started, message.replied = gevent.event.Event(), gevent.event.Event()
                self._queue.append(message)
                self._work.set()
                gevent.wait([message.started, self._hung, self._closed], count=1, timeout=1.0)
                self._reply(esl.encode_reply("+OK"))
                message.replied.set()
                return
            self._reply(esl.encode_reply("+OK"))
        elif call_command == "hangup":
            message = _Message(None, headers.get("hangup-cause", "NORMAL_CLEARING"), "")
        else:
            self.result.errors.append(f"sendmsg call-command '{call_command}' not emulated")
            return
        if self._dtmf_queued:  # transferred: the running app runs it at once (s19)
            self._spawn_app(message.app, message.arg, message.app_uuid)
        elif not self._hung.is_set():
            self._queue.append(message)
            self._work.set()

    # ------------------------------------------------------------------ api

    def _cmd_api(self, rest: str) -> None:
        self.result.api_commands.append(rest)
        name, _, args = rest.partition(" ")
        handler = {
            "version": lambda _a: (VERSION, None),
            "uuid_record": self._api_uuid_record,
            "uuid_setvar": self._api_uuid_setvar,
            "uuid_setvar_multi": self._api_uuid_setvar_multi,
            "uuid_getvar": self._api_uuid_getvar,
            "uuid_kill": self._api_uuid_kill,
            "uuid_broadcast": self._api_uuid_broadcast,
        }.get(name)
        if handler is None:
            self.result.errors.append(f"api command '{name}' not emulated")
            body, effect = f"-ERR {name} Command not found!\n", None
        else:
            body, effect = handler(args.split())
        # an api that wrote nothing: mod_event_socket answers for it
        self._reply(esl.encode_api_response(body.encode() or b"-ERR no reply\n"))
        if effect is not None:
            effect()

    def _live(self, uuid: str) -> bool:
        return uuid == self.channel.uuid and not self._destroyed

    def _api_uuid_record(self, args: list[str]):
        if len(args) < 3 or args[1] not in ("start", "stop", "mask", "unmask"):
            return _UUID_RECORD_USAGE, None
        uuid, action, path = args[:3]
        if not self._live(uuid):
            return "-ERR Cannot locate session!\n", None
        path = self._resolve(path)
        if action == "start":
            if path is None or path in self._recordings or not self._open_recording(path):
                return "-ERR Cannot record session!\n", None
            return "+OK Success\n", functools.partial(self._announce_record_start, path)
        if path not in self._recordings:
            noun = "record" if action == "stop" else "recording"  # mod_commands' wording
            return f"-ERR Cannot {action} {noun} session!\n", None
        if action == "stop":
            size, frames = self._close_recording(path, "success-maxtime")
            announce = functools.partial(self._announce_record_stop, path, "success-maxtime", size, frames)
            return "+OK Success\n", announce
        self._recordings[path].update(time.monotonic(), masked=action == "mask")
        return "+OK Success\n", None

    def _api_uuid_setvar(self, args: list[str]):
        if len(args) < 2:
            return "-USAGE: <uuid> <var> [value]\n", None
        if not self._live(args[0]):
            return "-ERR No such channel!\n", None
        self._set_var(args[1], " ".join(args[2:]) or None)
        return "+OK\n", None

    def _api_uuid_setvar_multi(self, args: list[str]):
        """``<uuid> <var>=<value>;<var>=<value>...``, answered as mod_commands.c does: split on
        ';', each at its first '='; +OK once one is set (the usage after any other outcome, and
        nothing at all for a uuid alone, which mod_event_socket turns into "-ERR no reply")."""
        usage = f"-USAGE: {_SETVAR_MULTI_SYNTAX}\n"
        if not args:
            return usage, None
        if len(args) == 1:
            return "", None
        if not self._live(args[0]):
            return "-ERR No such channel!\n" + usage, None
        body, set_any = "", False
        items = " ".join(args[1:]).split(";")
        if len(items) > 1 and items[-1] == "":
            items.pop()  # no empty field after the last ";" (test_real_freeswitch: uuid_setvar_multi)
        for name, eq, value in (item.partition("=") for item in items):
            if not name:
                body += "-ERR No variable specified\n"
                continue
            self._set_var(name, value if eq else None)
            set_any = True
        return (body + "+OK\n" if set_any else body + usage), None

    def _api_uuid_getvar(self, args: list[str]):
        if len(args) < 2:
            return "-USAGE: <uuid> <var>\n", None
        if not self._live(args[0]):
            return "-ERR No such channel!\n", None
        return self.channel.lookup(args[1]) or "_undef_", None

    def _api_uuid_kill(self, args: list[str]):
        if not args or not self._live(args[0]):
            return "-ERR No such channel!\n", None
        cause = args[1] if len(args) > 1 else "NORMAL_CLEARING"
        return "+OK\n", functools.partial(self._hangup, cause)

    def _api_uuid_broadcast(self, args: list[str]):
        if len(args) < 2:
            return "-USAGE: <uuid> <path> [aleg|bleg|holdb|both]\n", None
        if self._live(args[0]):
            app, _, arg = args[1].partition("::")
            if "::" not in args[1]:
                app, arg = "playback", args[1]
            run = functools.partial(self._spawn_app, app, arg or None)
            return "+OK Message Sent\n", run
        return "+OK Message Sent\n", None

    # ------------------------------------------------------------------ runner

    def _run_apps(self) -> None:
        while not self._hung.is_set() and not self._closed.is_set():
            if not self._queue:
                self._idle = True
                self._work.wait()
                self._idle = False
                self._work.clear()
                continue
            message = self._queue.popleft()
            if message.app is None:
                self._hangup(message.arg or "NORMAL_CLEARING")
            elif message.early is not None or self._sleep(self._settings.app_latency):
                self._execute(message.app, message.arg, message.app_uuid, message)
                if self._transfer_to is not None or self._unlinked is not None:
                    break
        self._queue.clear()
        if self._unlinked is not None and not self._hung.is_set():
            # The caller is gone and our leg can no longer read: the socket app returns,
            # then the channel hangs up (s13).
            self._leave_socket_app()
            self._hangup(self._unlinked)
        elif self._transfer_to is not None:
            self._leave_socket_app()
            self.channel.enter_state("CS_ROUTING")
            self._emit("CHANNEL_STATE")
            self.channel.vars.set("call_uuid", self.channel.uuid)  # routing sets it again
            self._hangup("NO_ROUTE_DESTINATION")  # the emulator has no dialplan
        else:
            self._hangup("NORMAL_CLEARING")
            self._leave_socket_app()
        self._finish_hangup()
        self._done.set()

    def _execute(self, app: str, arg: str | None, app_uuid: str, message: _Message | None = None) -> None:
        """switch_core_session_exec: CHANNEL_EXECUTE, the app, CHANNEL_EXECUTE_COMPLETE."""
        try:
            self._run_app(app, arg, app_uuid, message)
        finally:
            if message is not None and message.started is not None:
                message.started.set()  # whatever happened, the sendmsg's +OK may go out now

    def _run_app(self, app: str, arg: str | None, app_uuid: str, message: _Message | None) -> None:
        run = self._APPS.get(app)
        if run is None:
            self.result.errors.append(f"application '{app}' not emulated")
            return
        variables = self.channel.vars
        variables.set("current_loop", "1")
        variables.set("total_loops", "1")
        variables.set("current_application_response", None)
        variables.set("current_application", app)
        variables.set("current_application_data", arg)
        self._emit("CHANNEL_EXECUTE", after=application_headers(app, arg, app_uuid, complete=False))
        if message is not None and message.early == "execute":
            message.started.set()
            gevent.wait([message.replied, self._hung, self._closed], count=1, timeout=1.0)
        variables.set("current_application", app)
        run(self, arg)
        response = variables.get("current_application_response")
        self._emit(
            "CHANNEL_EXECUTE_COMPLETE",
            after=application_headers(app, arg, app_uuid, response, complete=True),
        )
        variables.set("current_loop", None)
        variables.set("total_loops", None)
        if app == "play_and_get_digits":
            self._last_decision = time.monotonic()

    # ------------------------------------------------------------------ hang-up

    def _lingering(self) -> bool:
        return self._linger is not None and self._settings.linger

    def _hangup(self, cause: str) -> None:
        """switch_channel_hangup: CHANNEL_HANGUP now; the runner does the rest.

        The state and the cause are set first, so whatever the channel reports from
        now on says ``Answer-State: hangup``.
        """
        if self._hung.is_set():
            return
        channel = self.channel
        channel.hangup_cause = cause
        channel.answer_state = "hangup"
        channel.set_state("CS_HANGUP")
        self.result.hangup_cause = cause
        self.result.hung_up_at = time.time()
        self._emit("CHANNEL_HANGUP")
        if not self._lingering() and not self._closed.is_set():
            self._goodbye()
        self._hung.set()
        self._work.set()

    def _caller_hangup(self, cause: str = "NORMAL_CLEARING") -> None:
        """The caller (the loopback A leg) hangs up.

        Usually our leg hangs up at once.  But while play_and_get_digits waits for
        the digit, mod_loopback may first unlink our leg (its reads fail): the
        prompt then completes exactly as a timeout would, the socket app returns,
        and only then does CHANNEL_HANGUP come (s13, pagd_hangup_race.txt).
        """
        if self._hung.is_set() or self._unlinked is not None:
            return
        if self._collecting and self._wire.completion_first("play_and_get_digits"):
            self._unlinked = cause
            self._link_lost.set()
            return
        self._hangup(cause)

    def _leave_socket_app(self) -> None:
        """The socket application returns: unpark, then its own completion."""
        self._emit("CHANNEL_UNPARK")
        self._emit(
            "CHANNEL_EXECUTE_COMPLETE",
            after=application_headers(
                "socket", self._socket_target, str(uuidlib.uuid4()), complete=True
            ),
        )

    def _finish_hangup(self) -> None:
        channel = self.channel
        channel.enter_state("CS_HANGUP")
        self._emit("CHANNEL_STATE")
        channel.hangup_us = now_us()
        for path in list(self._recordings):
            self._stop_recording(path, "success-silence")
        channel.enter_state("CS_REPORTING")
        self._emit("CHANNEL_STATE")
        channel.hangup_stats()
        self._emit("CHANNEL_HANGUP_COMPLETE", before=[("Hangup-Cause", channel.hangup_cause)])
        self._destroyed = True
        if self._lingering() and not self._closed.is_set():
            self._send(
                esl.encode_disconnect_notice(
                    channel.uuid, channel.name, linger=True, linger_time=self._linger
                )
            )
            wait = self._settings.linger_timeout
            if self._linger > 0:
                wait = self._linger * self._settings.time_scale
            if not self._closed.wait(wait):
                self._goodbye()

    # ------------------------------------------------------------------ recordings

    def _resolve(self, path: str) -> str | None:
        """The file for a recording path (relative ones go to the spool, as to
        FreeSWITCH's recordings dir); None for anything outside the spool."""
        spool = self._settings.spool_dir
        candidate = path if os.path.isabs(path) else os.path.join(spool, path)
        try:
            inside = spool.resolve() in Path(candidate).resolve().parents
        except (OSError, ValueError):
            inside = False
        if inside:
            return candidate
        self.result.errors.append("recording path outside the spool directory refused")
        return None

    def _open_recording(self, path: str) -> bool:
        """Create the file as record_session does; False if that fails."""
        variables = self.channel.vars
        try:
            recording = WavRecording(
                path,
                stereo=(variables.get("RECORD_STEREO") or "").lower() == "true",
                bridge_req=(variables.get("RECORD_BRIDGE_REQ") or "").lower() == "true",
                now=time.monotonic(),
            )
        except OSError as exc:
            self.result.errors.append(f"cannot create a recording file: {exc.strerror}")
            return False
        recording.update(time.monotonic(), bridged=self._bridged)
        self._recordings[path] = recording
        self.result.recordings[path] = RecordingInfo(path=path, channels=recording.channels)
        self._greenlets.spawn(self._keep_writing, path, recording)
        return True

    def _keep_writing(self, path: str, recording) -> None:
        """FreeSWITCH writes a running recording every few seconds (s21), its header only at
        the close: so does this, faster."""
        while self._recordings.get(path) is recording:
            gevent.sleep(WRITE_EVERY_S)
            if self._recordings.get(path) is recording:
                recording.update(time.monotonic())

    def _announce_record_start(self, path: str) -> None:
        self._emit("RECORD_START", after=[("Record-File-Path", path)])
        if not self._record_started:
            self._record_started = True
            script = self._script
            for delay, digits in script.record_keys:
                self._spawn_after(delay, self._caller_keys, digits)
            if script.hangup_after_record is not None:
                self._spawn_after(script.hangup_after_record, self._caller_hangup)

    def _close_recording(self, path: str, cause: str) -> tuple[int, int]:
        """Close the file (discarding it when empty); returns (file size, frames)."""
        recording = self._recordings.pop(path)
        recording.close(time.monotonic())
        info = self.result.recordings[path]
        info.frames = recording.frames
        info.masked_seconds = recording.masked_seconds
        info.completion_cause = cause
        if recording.frames == 0:
            if os.path.exists(path):
                os.unlink(path)
            info.discarded = True
            self.channel.vars.set("RECORD_DISCARDED", "true")
        else:
            info.sha256 = sha256_of(path)
        return recording.size, recording.frames

    def _announce_record_stop(self, path: str, cause: str, size: int, frames: int) -> None:
        variables = self.channel.vars
        for name, value in [
            ("record_file_size", str(size)),
            ("record_samples", str(frames)),
            ("record_seconds", str(frames // RATE)),
            ("record_ms", str(frames * 1000 // RATE)),
            ("record_completion_cause", cause),
        ]:
            variables.set(name, value)
        self._emit(
            "RECORD_STOP",
            after=[("Record-File-Path", path), ("Record-Completion-Cause", cause)],
        )

    def _stop_recording(self, path: str, cause: str) -> None:
        """The file is complete before RECORD_STOP goes out."""
        size, frames = self._close_recording(path, cause)
        self._announce_record_stop(path, cause, size, frames)

    def _update_recordings(self, **state: bool) -> None:
        now = time.monotonic()
        for recording in self._recordings.values():
            recording.update(now, **state)

    # ------------------------------------------------------------------ callers

    def _dtmf(self, digit: str, source: str) -> None:
        self.channel.digits_dialed += digit
        self._emit(
            "DTMF",
            after=[("DTMF-Digit", digit), ("DTMF-Duration", "2000"), ("DTMF-Source", source)],
        )

    def _caller_keys(self, digits: str) -> None:
        if self._dtmf_queued:  # queued on the channel: no DTMF event until an app reads DTMF
            self.result.queued_dtmf += digits
            self._dtmf_queue += digits
            return
        for digit in digits:
            self._dtmf(digit, self._script.dtmf_source)
        self._meta_keys(digits, "a")

    def _meta_keys(self, digits: str, dialer: str) -> None:
        """A ``*<key>`` sequence matched against bind_meta_app (meta_on_dtmf)."""
        if len(digits) != 2 or digits[0] != "*":
            return
        binding = self._meta.get(digits[1])
        if binding is None or dialer not in binding.listen:
            return
        other = "b" if dialer == "a" else "a"
        leg = "a"
        for flag, target in (("a", "a"), ("b", "b"), ("s", dialer), ("o", other)):
            if flag in binding.respond:
                leg = target
        # Only our channel's events reach this socket; an app on the agent leg is invisible.
        if leg == "a":
            self._spawn_app(binding.app, binding.arg)

    def _spawn_app(self, app: str, arg: str | None, app_uuid: str | None = None) -> None:
        """An app FreeSWITCH runs beside the queue (meta keys, broadcasts, and every sendmsg
        once the call is transferred away from the park)."""
        if not self._hung.is_set():
            self._greenlets.spawn(self._execute, app, arg, app_uuid or str(uuidlib.uuid4()))

    def _set_var(self, name: str, value: str | None) -> None:
        self.channel.vars.set(name, value)
        if value is None:
            self.result.channel_vars.pop(name, None)
        else:
            self.result.channel_vars[name] = value

    # ------------------------------------------------------------------ applications

    def _app_answer(self, _arg: str | None) -> None:
        channel = self.channel
        if channel.answered_us:
            return
        channel.answered_us = now_us()
        channel.answer_state = "answered"
        self._emit("CHANNEL_ANSWER")
        channel.call_state = "ACTIVE"
        channel.vars.set("endpoint_disposition", "ANSWER")

    def _play(self, file: str, stop_after: float | None = None) -> bool:
        """Play one file for the script's prompt time (a ``silence_stream://N`` for its N ms
        on the switch's clock), or until a key at ``stop_after`` seconds; False if the call
        hung up (or our leg is unlinked from the caller: then it fails at once). Ends with
        PLAYBACK_STOP, as switch_ivr_play_file does, whatever stopped it."""
        started = time.monotonic()
        queued, self._dtmf_queue = self._dtmf_queue, ""
        for digit in queued:  # playing reads DTMF: keys queued since a transfer come out now
            self._dtmf(digit, self._script.dtmf_source)
        silence = re.fullmatch(r"silence_stream://(\d+)", file or "")
        seconds = self._scaled(silence.group(1)) if silence else self._script.prompt_seconds
        length_ms = int(silence.group(1)) if silence else round(seconds * 1000)
        until = seconds
        if stop_after is not None:
            until = min(until, max(0.0, stop_after))
        played = not self._link_lost.is_set() and self._sleep(until)
        elapsed_ms = round(until * 1000) if played else round((time.monotonic() - started) * 1000)
        for name, value in [
            ("playback_last_offset_pos", str(min(elapsed_ms, length_ms) * 8)),
            ("playback_seconds", str(length_ms // 1000)),
            ("playback_ms", str(length_ms)),
            ("playback_samples", str(length_ms * 8)),
        ]:
            self.channel.vars.set(name, value)
        status = "break" if played and until < seconds else "done"
        self._emit("PLAYBACK_STOP", after=[("Playback-File-Path", file or ""), ("Playback-Status", status)])
        return played

    def _app_playback(self, _arg: str | None) -> None:
        if self._play(_arg or ""):
            self.channel.vars.set("current_application_response", "FILE PLAYED")

    def _app_play_and_get_digits(self, arg: str | None) -> None:
        """``min max tries timeout terminators file invalid_file var regexp [digit_timeout] [transfer]``."""
        args = (arg or "").split()
        for position, value in enumerate(args, start=1):
            if value == "None":
                self.result.errors.append(
                    f"play_and_get_digits argument {position} is the text 'None' (greenswitch default)"
                )
        if len(args) < 9:
            self.result.errors.append("play_and_get_digits needs at least 9 arguments")
            args += [""] * (9 - len(args))
        run = self._pagd_runs
        self._pagd_runs += 1
        script = self._script
        digit = script.digits[run] if run < len(script.digits) else None
        wait = self._scaled(args[3], 5000)
        if run == 0 and script.hangup_in_prompt:
            self._spawn_after(script.prompt_seconds / 2, self._caller_hangup)
        if run == 0 and script.hangup_in_timeout and digit is None:
            self._spawn_after(script.prompt_seconds + wait / 2, self._caller_hangup)
        try:
            self._get_digits(args, digit, wait)
        finally:
            self._collecting = False
            if run == 0 and script.hangup_after_digits is not None:
                self._spawn_after(script.hangup_after_digits, self._caller_hangup)

    def _get_digits(self, args: list[str], digit: str | None, wait: float) -> None:
        minimum, _maximum, tries, _timeout, terminators, prompt, invalid, var, regexp = args[:9]
        transfer = args[10] if len(args) > 10 else None
        script = self._script
        variables = self.channel.vars
        for _ in range(max(1, int(tries) if tries.isdigit() else 1)):
            # switch_ivr_read clears both first: a hang-up in the prompt leaves neither (s8)
            variables.set("read_result", None)
            if var:
                variables.set(var, None)
            if not self._play(prompt, script.digit_after if digit is not None else None):
                return
            if digit is not None:
                self._dtmf(digit, script.digit_source or script.dtmf_source)
                collected = "" if digit in terminators else digit
                digit = None
            else:
                self._collecting = True
                gevent.wait([self._hung, self._link_lost], timeout=wait, count=1)
                self._collecting = False
                collected = ""
                if self._hung.is_set():
                    # the collection fails: read_result failure, and, the channel not being
                    # ready, no bad-input file and no more tries (s14)
                    variables.set("read_result", "failure")
                    return
                # timed out, or unlinked (s13): the same from here on, except that the
                # bad-input file then fails at once
            valid = len(collected) >= (int(minimum) if minimum.isdigit() else 1)
            valid = valid and self._matches(regexp, collected)
            variables.set("read_result", "success" if valid else "failure")
            if valid:
                if var:
                    variables.set(var, collected)
                return
            if invalid and not self._play(invalid):
                return
        if transfer:
            self.result.errors.append(f"play_and_get_digits failed and transferred the call to '{transfer}'")
            self.channel.transfer(transfer)
            self._transfer_to = transfer

    def _matches(self, regexp: str, digits: str) -> bool:
        if not regexp:
            return True
        try:
            return re.fullmatch(regexp, digits) is not None
        except re.error:
            self.result.errors.append("play_and_get_digits regexp does not compile")
            return False

    def _app_record_session(self, arg: str | None) -> None:
        path = self._resolve(arg or "")
        if path is not None and path not in self._recordings and self._open_recording(path):
            self._announce_record_start(path)

    def _app_stop_record_session(self, arg: str | None) -> None:
        if not arg:
            self.result.errors.append("stop_record_session without a path (crashes FreeSWITCH)")
            return
        paths = list(self._recordings) if arg == "all" else [self._resolve(arg)]
        for path in paths:
            if path in self._recordings:
                self._stop_recording(path, "success-maxtime")

    def _mask(self, arg: str | None, masked: bool) -> None:
        path = self._resolve(arg or "")
        if path in self._recordings:
            self._recordings[path].update(time.monotonic(), masked=masked)

    def _app_record_session_mask(self, arg: str | None) -> None:
        self._mask(arg, True)

    def _app_record_session_unmask(self, arg: str | None) -> None:
        self._mask(arg, False)

    def _app_set(self, arg: str | None) -> None:
        name, _, value = (arg or "").partition("=")
        if name:
            self._set_var(name, value or None)

    def _app_export(self, arg: str | None) -> None:
        self._app_set(arg)
        name = (arg or "").partition("=")[0]
        exported = [v for v in (self.channel.vars.get("export_vars") or "").split(",") if v]
        if name and name not in exported:
            self.channel.vars.set("export_vars", ",".join(exported + [name]))

    def _app_bind_meta_app(self, arg: str | None) -> None:
        """``<key> <listen a|b|ab> <respond a|b|o|s|i|1> <app>[::<args>]``."""
        parts = (arg or "").split(" ", 3)
        if len(parts) != 4 or len(parts[0]) != 1:
            self.result.errors.append("bind_meta_app needs '<key> <listen> <respond> <app>[::<args>]'")
            return
        key, listen, respond, target = parts
        app, sep, app_arg = target.partition("::")
        self._meta[key] = _MetaBinding(listen, respond, app, app_arg if sep else None)

    def _app_hangup(self, arg: str | None) -> None:
        self._hangup(arg or "NORMAL_CLEARING")

    def _app_sleep(self, arg: str | None) -> None:
        self._sleep(self._scaled(arg or 0))

    def _app_execute_extension(self, _arg: str | None) -> None:
        """The menu: time in it, then an agent (bridge) or the end of the menu."""
        script = self._script
        if not self._sleep(script.menu_seconds):
            return
        if script.transfer_without_bridge:
            self._transfer_away()
            return
        if not script.bridge:
            self._hangup("NORMAL_CLEARING")
            return
        if script.route is not None:  # the menu's <action application="set" data="route=..."/>
            self._set_var(script.route_variable, script.route)
        staff = script.staff or ["agent"]
        for extension in staff:  # more than one: transferred on to the next member of staff
            if not self._bridge(extension):
                return
            talked = self._sleep(script.talk_seconds)
            self._unbridge()
            if not talked:
                return
        self._hangup("NORMAL_CLEARING")

    def _bridge(self, extension: str) -> bool:
        """A CHANNEL_BRIDGE to ``extension``'s phone; the script's keys, holds and hang-up are
        timed from the first bridge. False if the call ended before it."""
        if self._hung.is_set():
            return False
        script, channel = self._script, self.channel
        if script.staff_variable:
            self._set_var(script.staff_variable, extension)
        agent_uuid = str(uuidlib.uuid4())
        self._legs = [("Bridge-A-Unique-ID", channel.uuid), ("Bridge-B-Unique-ID", agent_uuid)]
        channel.bridge_to(agent_uuid, extension)
        self._bridges += 1
        self._bridged = True
        self._update_recordings(bridged=True)
        self._emit("CHANNEL_BRIDGE", before=self._legs)
        if self._bridges > 1:
            return True
        for delay, digits in script.caller_keys:
            self._spawn_after(delay, self._caller_keys, digits, bridged=True)
        for delay, digits in script.agent_keys:
            self._spawn_after(delay, self._meta_keys, digits, "b", bridged=True)
        for start, length in script.hold:
            self._spawn_after(start, self._hold, bridged=True)
            self._spawn_after(start + length, self._unhold, bridged=True)
        if script.caller_hangup_after is not None:
            self._spawn_after(script.caller_hangup_after, self._caller_hangup, bridged=True)
        return True

    def _unbridge(self) -> None:
        self._bridged = False
        self._update_recordings(bridged=False)
        self._emit("CHANNEL_UNBRIDGE", before=self._legs)

    def _transfer_away(self) -> None:
        """The menu transfers the call to a target that does not bridge (DESIGN §7, s19):
        the caller's keys queue on this channel and raise no DTMF event, until an app
        that reads DTMF runs (the app's sendmsg runs at once, beside the target's app)."""
        script = self._script
        self._dtmf_queued = True
        self.result.transferred = True
        for delay, digits in script.caller_keys:
            self._spawn_after(delay, self._caller_keys, digits)
        if script.caller_hangup_after is not None:
            self._spawn_after(script.caller_hangup_after, self._caller_hangup)
        if self._sleep(script.talk_seconds):
            self._caller_hangup()

    def _hold(self) -> None:
        self.channel.hold()
        self._emit("CHANNEL_HOLD")

    def _unhold(self) -> None:
        self.channel.unhold()
        self._emit("CHANNEL_UNHOLD")

    _APPS: dict[str, Callable[["CallSession", str | None], None]] = {
        "answer": _app_answer,
        "playback": _app_playback,
        "play_and_get_digits": _app_play_and_get_digits,
        "record_session": _app_record_session,
        "stop_record_session": _app_stop_record_session,
        "record_session_mask": _app_record_session_mask,
        "record_session_unmask": _app_record_session_unmask,
        "set": _app_set,
        "export": _app_export,
        "bind_meta_app": _app_bind_meta_app,
        "hangup": _app_hangup,
        "sleep": _app_sleep,
        "execute_extension": _app_execute_extension,
    }
