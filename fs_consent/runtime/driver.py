"""One call over outbound ESL: frames in, consent events, commands out.

The driver is the only code that touches the call's socket and timers. It reads
frames with ``esl.FrameParser``, turns them into ``consent`` events, and performs
the machine's commands: ESL writes, ledger writes (through the write-behind
queue), spool and vault operations.

It reaches the rest of the server only through ``CallServices`` (the ledger writes, the
vault, seals, the live-call registry, the clock): ``server.ServerContext`` is the real
one, ``tests/fakes.py`` a fake. Commands are dispatched by type (``_perform``); a
command type without a case there is a programming error, logged as one, never a
``Failed`` that would delete the call's recording.

Fail open for the call, fail closed for the recording: any exception while
handling an event becomes ``consent.Failed``, which stops and deletes the
recording and still sends the caller on into the menu. The same goes for the
objection look-up at the start of a call (``CallServices.objection``): when the ledger
cannot say whether the number objects, the call is not recorded (outcome ``error``,
note ``objection-unknown``) and goes straight on into the menu.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import gevent
import gevent.event
import gevent.lock

from .. import esl
from ..core import consent
from ..core.consent import (
    CancelTimer,
    Decide,
    DeleteRecording,
    Execute,
    Finish,
    FlagCall,
    MaskRecording,
    PlayToCaller,
    RecordingDiscarded,
    SealRecording,
    SetVariable,
    StartRecording,
    StartTimer,
    StopRecording,
    WithdrawEarlierCalls,
)
from ..core.logs import fields
from ..esl.session import ChannelEvent, Closed, Completed, Connected, Lingering, OutboundSession, Reply
from ..secure.protect import normalise_phone
from ..secure.spool import recording_path, remove_plaintext
from ..store import facts as ledger_facts
from ..store import recordings

log = logging.getLogger(__name__)

READ_SIZE = 65536
UNCONFIRMED_SEAL_DELAY_S = 1.0  # no RECORD_STOP seen: give FreeSWITCH time to close the file
EXIT_GRACE_S = 5.0  # after 'exit', FreeSWITCH closes at once; do not wait longer than this
TIMEOUT_TOLERANCE_MS = 100  # FreeSWITCH's timers run on 20 ms frames: a timeout is never this short


class SessionGone(Exception):
    """The socket closed."""


class LedgerWrites(Protocol):
    """The server's ledger writer (``ledger_writer.LedgerWriter``), as a call uses it."""

    @property
    def healthy(self) -> bool: ...  # False: new calls go on unrecorded

    @property
    def unhealthy_reason(self) -> str: ...

    def record(self, fact: ledger_facts.Fact) -> None: ...  # queued in order, never blocks the call


class Protector(Protocol):
    def lookup_hash(self, kind: str, value: str) -> str: ...

    def seal(self, kind: str, value: str) -> bytes: ...


class Ciphertexts(Protocol):
    def delete(self, recording_id: str, *, sync: bool = True, tmp: bool = True) -> bool: ...


class CallServices(Protocol):
    """Everything a CallSession uses of the server, built once at start-up."""

    policy: consent.Policy
    spool_dir: Path
    handshake_timeout: float
    vault_ready: bool  # a recipient to seal to
    store_problem: str | None  # why the store cannot take a recording now (None: it can)
    language: str
    prompt_id: str
    prompt_version: str
    node: str  # [server] node: on the call's and its recordings' rows
    staff_variable: str  # [recording] staff_variable ("": the bridged leg's destination number)
    route_variable: str  # [recording] route_variable ("": no route)
    registry: dict  # live calls: instance -> CallSession
    writer: LedgerWrites
    protector: Protector
    vault: Ciphertexts

    def now(self) -> dt.datetime: ...

    def objection(self, caller_hash: str) -> bool: ...  # raises when the ledger cannot say

    def seal_later(self, recording_id: str, withdrawn: set, *, delay: float = 0.0) -> None: ...

    def callback_withdrawal(self, caller_hash: str, refusing_call_uuid: str) -> None: ...


def prompt_answer(tag: str, completion: esl.Event, *, timeout_ms: int,
                  prompt_played_at: int | None) -> consent.PromptAnswered:
    """What play_and_get_digits' CHANNEL_EXECUTE_COMPLETE says the caller answered.

    The digit counts when ``read_result`` is ``success``. Without one, silence needs
    proof that the caller heard the whole prompt and the timeout ran out with them on
    the line; a real FreeSWITCH (captures s8, s13, ``pagd_hangup_race.txt``) shows:

    * a completion caused by a hang-up usually carries ``Answer-State: hangup`` and a
      ``Hangup-Cause`` (FreeSWITCH sets both before it fires CHANNEL_HANGUP), even when
      it comes first;
    * but one that wins the race inside the collection can look exactly like a timeout
      (``answered``, ``read_result`` ``failure``): only its time tells. So the end of the
      prompt's audio (``prompt_played_at``: the last PLAYBACK_STOP of this prompt, on
      FreeSWITCH's clock, microseconds) must lie at least ``timeout_ms`` before the
      completion, or it was cut short.
    """
    result = completion.get("variable_read_result")
    digit = completion.get(f"variable_{consent.PROMPT_VARIABLE}")
    if result == "success" and digit:
        return consent.PromptAnswered(tag, digit)
    if completion.get("Answer-State") == "hangup" or completion.get("Hangup-Cause"):
        return consent.PromptAnswered(tag, None, consent.PROMPT_CALLER_GONE)
    if result not in ("failure", "timeout"):
        return consent.PromptAnswered(tag, None, consent.PROMPT_INTERRUPTED)
    ended_at = _timestamp(completion)
    if prompt_played_at is None or ended_at is None:
        return consent.PromptAnswered(tag, None, consent.PROMPT_INTERRUPTED)  # no proof of a timeout
    waited_ms = (ended_at - prompt_played_at) / 1000
    if waited_ms < timeout_ms - TIMEOUT_TOLERANCE_MS:
        return consent.PromptAnswered(tag, None, consent.PROMPT_INTERRUPTED)
    return consent.PromptAnswered(tag, None, consent.PROMPT_TIMED_OUT)


def _timestamp(ev: esl.Event) -> int | None:
    value = ev.get("Event-Date-Timestamp")
    return int(value) if value and value.isdigit() else None


@dataclass
class CallFacts:
    """What the ledger learns about the call besides consent."""

    uuid: str
    started_at: dt.datetime
    instance: str = field(default_factory=lambda: uuidlib.uuid4().hex)  # this connection: the row's key
    caller_hash: str | None = None
    caller_sealed: bytes | None = None
    answered_at: dt.datetime | None = None
    menu_at: dt.datetime | None = None  # sent on into the menu: the wait for staff starts here
    bridged_at: dt.datetime | None = None
    hangup_cause: str | None = None
    objection: bool | None = False  # the number objects to recording (art. 21); None: the ledger could not say
    recording_note: str | None = None  # why the call may not be recorded at all (None: it may)
    route: str | None = None  # [recording] route_variable: at the first bridge that has one, else at the end
    staff_seq: int = 0  # CallStaff rows written (bridges whose member of staff was known)
    bridge_leg: str | None = None  # the other leg of the bridge that is up (None: not bridged)
    bridge_seq: int | None = None  # its CallStaff seq (None: no staff identifier for it)


#: what a bridged leg's number fields hold when they name nobody (loopback's callee is its context)
_NO_STAFF = frozenset({"", "_undef_", "undef", "unknown", "anonymous", "default", "outbound call", "0000000000"})
MAX_ROUTE = 128  # Call.route, CallStaff.route
MAX_STAFF = 256  # a longer identifier is no extension or agent name: not recorded


def staff_of(ev: esl.Event, variable: str) -> str | None:
    """Who took the call at this CHANNEL_BRIDGE, as FreeSWITCH says it; None if nobody is named.

    ``variable`` set: the channel variable (``variable_<name>``: our channel's variables come with
    the event, ``myevents`` in full mode), e.g. mod_callcenter's ``cc_agent``. Otherwise the bridged
    leg's destination number, the extension dialed (``Other-Leg-Destination-Number``; capture s18:
    ``Other-Leg-Callee-ID-Number`` holds loopback's context there), else its callee number.
    """
    candidates = ([ev.get(f"variable_{variable}")] if variable else
                  [ev.get("Other-Leg-Destination-Number"), ev.get("Other-Leg-Callee-ID-Number")])
    for value in candidates:
        text = (value or "").strip()
        if text.lower() not in _NO_STAFF and len(text) <= MAX_STAFF and text.isprintable():
            return text
    return None


def route_of(ev: esl.Event, variable: str) -> str | None:
    if not variable:
        return None
    text = (ev.get(f"variable_{variable}") or "").strip()
    return text[:MAX_ROUTE] if text and text.isprintable() else None


def _multi_safe(value: str) -> bool:
    """A value ``uuid_setvar_multi`` carries intact: it splits on ';' and at the first '='."""
    return value != "" and ";" not in value and "=" not in value and not any(c.isspace() for c in value)


@dataclass
class CallSession:
    """Drives one FreeSWITCH outbound connection from handshake to ``exit``.

    The wire (reply order, completions by ``Application-UUID``, other legs, linger) is
    ``esl.session.OutboundSession``'s; this class does the socket I/O, turns what the
    session yields into ``consent`` events, and performs the machine's commands.
    """

    sock: object
    ctx: CallServices
    facts: CallFacts | None = None
    machine: consent.ConsentCall | None = None
    _wire: OutboundSession = field(default_factory=OutboundSession)
    _on_reply: dict = field(default_factory=dict)  # command token -> callback(Reply)
    _prompts: set = field(default_factory=set)  # tags of the executes that are the consent prompt
    _tokens: itertools.count = field(default_factory=itertools.count)
    _timers: dict = field(default_factory=dict)
    _deleted: set = field(default_factory=set)  # recording ids withdrawn in this call (a seal in flight checks it)
    _backlog: list = field(default_factory=list)  # what the wire yielded before the machine ran
    _prompt_played_at: int | None = None  # FreeSWITCH's clock (us) when the running prompt's audio ended
    _lock: gevent.lock.RLock = field(default_factory=gevent.lock.RLock)
    _finished: bool = False
    _lingering: bool = False
    _exit_sent: bool = False
    _closed: bool = False
    _out: list | None = None  # while the machine's commands run: their bytes, for one write

    # --- socket ---------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        if self._out is not None:
            self._out.append(data)
        elif not self._closed:
            self.sock.sendall(data)

    def _flush(self) -> None:
        out, self._out = self._out, None
        if out and not self._closed:
            self.sock.sendall(b"".join(out))

    def _receive(self) -> list:
        """What the next bytes from the socket complete (possibly nothing)."""
        data = self.sock.recv(READ_SIZE)
        if not data:
            raise SessionGone()
        return self._wire.receive(data)

    def _request(self, make, timeout: float):
        """Send one command and wait for its reply; everything else that comes is kept.

        Events can come before any reply (CHANNEL_PARK after ``myevents``), so the next
        frame is never taken for the reply: the session matches replies by order.
        """
        token = next(self._tokens)
        self.sock.sendall(make(token))
        with gevent.Timeout(timeout, SessionGone("handshake timeout")):
            while True:
                items = self._receive()
                for index, item in enumerate(items):
                    if isinstance(item, (Reply, Connected)) and item.token == token:
                        self._backlog += items[index + 1:]
                        return item
                    self._backlog.append(item)

    # --- life cycle -----------------------------------------------------------

    def run(self) -> None:
        try:
            self._handshake()
        except (SessionGone, esl.ProtocolError, OSError) as exc:
            log.warning("call dropped during handshake: %s", type(exc).__name__)
            self._close()
            return
        self.ctx.registry[self.facts.instance] = self
        try:
            self._feed(consent.CallStarted(can_record=self.facts.recording_note is None,
                                           objection=self.facts.objection))
            backlog, self._backlog = self._backlog, []
            for item in backlog:
                self._dispatch(item)
            while not self._closed:
                for item in self._receive():
                    self._dispatch(item)
        except (SessionGone, OSError):
            pass
        except esl.ProtocolError as exc:
            log.warning("call %s: malformed frame from FreeSWITCH (%s)", self.facts.uuid, exc)
            self._feed(consent.Failed("protocol"))
        finally:
            self._feed(consent.Disconnected())
            self._close()
            self.ctx.registry.pop(self.facts.instance, None)

    def _handshake(self) -> None:
        timeout = self.ctx.handshake_timeout
        connected = self._request(self._wire.send_connect, timeout)
        self.facts = CallFacts(uuid=connected.channel_uuid, started_at=self.ctx.now())
        self._protect_caller(connected.headers.get("Caller-Caller-ID-Number", ""))
        for line in ("myevents", "linger", "event plain RECORD_START RECORD_STOP CHANNEL_HOLD CHANNEL_UNHOLD PLAYBACK_STOP"):
            reply = self._request(lambda token, line=line: self._wire.send_command(line, token), timeout)
            if not reply.text.startswith("+OK"):
                raise esl.ProtocolError(f"'{line}' was refused")
        self.machine = consent.ConsentCall(policy=self.ctx.policy, recording_id=uuidlib.uuid4().hex)
        self.facts.objection = self._objection()
        facts, policy, ctx = self.facts, self.ctx.policy, self.ctx
        facts.recording_note = consent.recording_note(objection=facts.objection, can_seal=ctx.vault_ready,
                                                      ledger_healthy=ctx.writer.healthy,
                                                      store_writable=ctx.store_problem is None)
        if facts.recording_note == "ledger-unavailable":
            log.error("call %s: %s: the call goes on unrecorded", facts.uuid, ctx.writer.unhealthy_reason)
        elif facts.recording_note == "store-unwritable":
            log.error("call %s: the store cannot be written (%s): the call goes on unrecorded",
                      facts.uuid, ctx.store_problem)
        ctx.writer.record(ledger_facts.CallOpened(
            instance=facts.instance, uuid=facts.uuid, started_at=facts.started_at, consent_mode=policy.mode,
            language=ctx.language, prompt_id=ctx.prompt_id, prompt_version=ctx.prompt_version,
            caller_hash=facts.caller_hash, caller_sealed=facts.caller_sealed, recording_note=facts.recording_note,
            node=ctx.node))

    def hand_back(self) -> None:
        """Give the call back to the dialplan untouched: its fallback continues unrecorded.

        Closing without ``connect`` would leave ``socket`` waiting; ``exit`` after
        ``connect`` makes it return at once.
        """
        try:
            self._request(self._wire.send_connect, self.ctx.handshake_timeout)
            self.sock.sendall(self._wire.send_exit())
        except (SessionGone, esl.ProtocolError, OSError):
            pass
        self._close()

    def _protect_caller(self, number: str) -> None:
        try:
            normalised = normalise_phone(number)
        except ValueError:
            normalised = ""
        if normalised:
            self.facts.caller_hash = self.ctx.protector.lookup_hash("phone", normalised)
            self.facts.caller_sealed = self.ctx.protector.seal("phone", number)

    def _objection(self) -> bool | None:
        """Whether the caller's number objects to recording; None if the ledger could not say.

        One indexed read, off the hub with a short bound (``CallServices.objection``: it must
        be known before the first command; a locked ledger must not delay the prompt). An
        anonymous caller has no number to object with.
        """
        if not self.facts.caller_hash:
            return False
        try:
            return self.ctx.objection(self.facts.caller_hash)
        except Exception as exc:  # noqa: BLE001 - fail closed for the recording, open for the call
            log.error("call %s: objection look-up failed (%s): the call is not recorded",
                      self.facts.uuid, type(exc).__name__)
            return None

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for timer in self._timers.values():
            timer.kill(block=False)
        try:
            self.sock.close()
        except OSError:
            pass

    # --- inbound frames -------------------------------------------------------

    def _dispatch(self, item) -> None:
        match item:
            case Reply(token=token):
                callback = self._on_reply.pop(token, None)
                if callback is not None:
                    callback(item)
            case Completed(token=tag, event=ev):
                if tag in self._prompts:
                    played, self._prompt_played_at = self._prompt_played_at, None
                    self._feed(prompt_answer(tag, ev, timeout_ms=self.ctx.policy.timeout_ms,
                                             prompt_played_at=played))
                else:
                    self._feed(consent.AppCompleted(tag))
            case ChannelEvent(event=ev):
                self._on_event(ev)
            case Lingering():
                self._lingering = True
                self._feed(consent.Disconnected())
                self._maybe_exit()
            case Closed():
                self._feed(consent.Disconnected())
                self._close()

    def _on_event(self, ev: esl.Event) -> None:
        name = ev.name
        if name == "CHANNEL_EXECUTE":
            if ev.get("Application") == "set":
                data = ev.get("Application-Data")
                if data == f"{consent.AGENT_MARKER_VARIABLE}={consent.AGENT_MARKER_VALUE}":
                    self._feed(consent.AgentWithdraw())
                elif data == f"{consent.AGENT_MARKER_VARIABLE}={consent.AGENT_FLAG_AGGRESSION}":
                    self._feed(consent.AgentFlag(consent.AGENT_FLAG_AGGRESSION))
        elif name == "DTMF":
            digit = ev.get("DTMF-Digit")
            if digit:
                self._feed(consent.CallerDigit(digit))
        elif name in ("RECORD_START", "RECORD_STOP"):
            rid = self._recording_id_of(ev.get("Record-File-Path", ""))
            if rid is None:
                return
            if name == "RECORD_START":
                self._feed(consent.RecordStarted(rid))
            else:
                discarded = ev.get("variable_RECORD_DISCARDED") == "true"
                self._feed(consent.RecordStopped(rid, discarded))
        elif name == "PLAYBACK_STOP":
            # the prompt's own audio, not the invalid-input file played after a failed collection
            if ev.get("Playback-File-Path") != consent.PROMPT_INVALID_FILE:
                self._prompt_played_at = _timestamp(ev)
        elif name == "CHANNEL_ANSWER":
            self.facts.answered_at = self.ctx.now()
        elif name == "CHANNEL_BRIDGE":
            now = self.ctx.now()
            if self.facts.bridged_at is None:
                self.facts.bridged_at = now
            self._guarded(self._bridged, ev, now)
        elif name == "CHANNEL_UNBRIDGE":
            self._guarded(self._unbridged, ev, self.ctx.now())
        elif name == "CHANNEL_HOLD":
            self._feed(consent.Held())
        elif name == "CHANNEL_UNHOLD":
            self._feed(consent.Unheld())
        elif name == "CHANNEL_HANGUP":
            self.facts.hangup_cause = ev.get("Hangup-Cause")
            self._guarded(self._route, ev)
            self._feed(consent.HungUp(self.facts.hangup_cause or ""))

    # --- who took the call, and its route -------------------------------------------------

    def _guarded(self, method, *args) -> None:
        """Staff and route are for the ledger: a failure there costs the call nothing."""
        try:
            method(*args)
        except Exception as exc:  # noqa: BLE001 - never the identifier, only what went wrong
            log.error("call %s: cannot record the staff or route (%s)", self.facts.uuid, type(exc).__name__)

    def _route(self, ev: esl.Event) -> None:
        route = route_of(ev, self.ctx.route_variable)
        if route is not None and self.facts.route is None:
            self.facts.route = route
            self.ctx.writer.record(ledger_facts.CallRouted(self.facts.instance, route))

    def _bridged(self, ev: esl.Event, now: dt.datetime) -> None:
        """A bridge: a CallStaff row for its member of staff (the next seq); a transfer to a
        colleague unbridges and bridges again, or bridges the new leg at once (then the
        bridge that was up ends here)."""
        facts = self.facts
        leg = ev.get("Other-Leg-Unique-ID") or ev.get("Bridge-B-Unique-ID") or ""
        if facts.bridge_leg is not None:
            if leg == facts.bridge_leg:
                return  # the same bridge, told again
            self._unbridged(ev, now)
        facts.bridge_leg, facts.bridge_seq = leg, None
        self._route(ev)
        staff = staff_of(ev, self.ctx.staff_variable)
        if staff is None:
            log.info("call %s: bridged, but no staff identifier in the event: not recorded", facts.uuid)
            return
        protector = self.ctx.protector
        staff_hash, sealed = protector.lookup_hash("staff", staff), protector.seal("staff", staff)
        facts.staff_seq += 1
        facts.bridge_seq = facts.staff_seq
        self.ctx.writer.record(ledger_facts.StaffBridged(facts.instance, facts.staff_seq, staff_hash, sealed,
                                                         route_of(ev, self.ctx.route_variable), now))

    def _unbridged(self, _ev, now: dt.datetime) -> None:
        facts = self.facts
        if facts.bridge_seq is not None:
            self.ctx.writer.record(ledger_facts.StaffUnbridged(facts.instance, facts.bridge_seq, now))
        facts.bridge_leg = facts.bridge_seq = None

    def _recording_id_of(self, path: str) -> str | None:
        rid = Path(path).stem
        if self.machine and rid == self.machine.recording_id:
            return rid
        return None

    # --- the machine ----------------------------------------------------------

    def _feed(self, event) -> None:
        """Run one event through the machine and perform its commands; never raises."""
        if self.machine is None:
            return
        with self._lock:
            outermost = self._out is None
            if outermost:
                self._out = []  # what the commands send goes out in one write, in order
            try:
                variables: list[SetVariable] = []  # consecutive ones go out as one api command
                for command in self.machine.handle(event):
                    if isinstance(command, SetVariable) and _multi_safe(command.value):
                        variables.append(command)
                        continue
                    self._set_variables(variables)
                    self._perform(command)
                self._set_variables(variables)
            except Exception as exc:  # noqa: BLE001 - fail closed, keep the call
                if isinstance(event, consent.Failed):
                    log.error("call %s: failure handling failed (%s)", self.facts.uuid, type(exc).__name__)
                    return
                log.error("call %s: %s while handling %s; failing closed",
                          self.facts.uuid, type(exc).__name__, type(event).__name__)
                self._feed(consent.Failed(type(exc).__name__))
            finally:
                if outermost:
                    try:
                        self._flush()
                    except OSError as exc:  # as a failed send inside the commands was
                        if isinstance(event, consent.Failed):
                            log.error("call %s: failure handling failed (%s)", self.facts.uuid, type(exc).__name__)
                        else:
                            log.error("call %s: %s while handling %s; failing closed",
                                      self.facts.uuid, type(exc).__name__, type(event).__name__)
                            self._feed(consent.Failed(type(exc).__name__))

    def shutdown(self, wait: float = 2.0) -> None:
        """Server stopping with this call still live: close the recording, seal it, let go.

        FreeSWITCH closes the file before it answers ``uuid_record stop``, so once the
        reply is in, what was recorded with consent can be sealed.
        """
        if self.machine is not None and self.machine.recording_open:
            stopped = gevent.event.Event()
            path = self._path(self.machine.recording_id)
            with self._lock:
                self._api(f"uuid_record {self.facts.uuid} stop {path}", lambda _msg: stopped.set())
            stopped.wait(wait)
        self._feed(consent.Disconnected())
        self._close()

    def withdraw(self, by: str = consent.BY_COMMAND) -> str:
        """Withdraw consent from another greenlet (control socket, callback). Returns the outcome."""
        self._feed(consent.WithdrawRequested(by))
        return self.machine.outcome or ""

    def _perform(self, command) -> None:
        """Carry out one command of the machine's, by its type."""
        match command:
            case Execute():
                self._execute(command)
            case SetVariable(name=name, value=value):
                self._api(f"uuid_setvar {self.facts.uuid} {name} {value}")
            case StartRecording(recording_id=rid, tag=tag):
                self._execute(Execute("record_session", str(self._path(rid)), tag, consent.RECORD))
                self.ctx.writer.record(ledger_facts.RecordingStarted(self.facts.instance, rid, self.ctx.now(),
                                                                     node=self.ctx.node))
            case StopRecording(recording_id=rid):
                path = self._path(rid)
                # the reply comes after FreeSWITCH closed the file: unlink again then if withdrawn
                self._api(f"uuid_record {self.facts.uuid} stop {path}",
                          lambda _msg: remove_plaintext(self.ctx.spool_dir, rid) if rid in self._deleted else None)
            case MaskRecording(recording_id=rid, masked=masked):
                self._api(f"uuid_record {self.facts.uuid} {'mask' if masked else 'unmask'} {self._path(rid)}")
            case DeleteRecording():
                self._delete(command)
            case SealRecording(recording_id=rid, confirmed=confirmed):
                self.ctx.seal_later(rid, self._deleted, delay=0.0 if confirmed else UNCONFIRMED_SEAL_DELAY_S)
            case RecordingDiscarded(recording_id=rid):
                remove_plaintext(self.ctx.spool_dir, rid)
                self.ctx.writer.record(ledger_facts.RecordingDiscarded(rid))
            case PlayToCaller(file=file):
                self._api(f"uuid_broadcast {self.facts.uuid} {file} aleg")
            case Decide(outcome=outcome, by=by):
                facts = self.facts
                self.ctx.writer.record(ledger_facts.ConsentDecided(facts.instance, facts.uuid, command.kind, outcome,
                                                                   by, self.ctx.now()))
                log.debug("consent %s", command.kind, extra=fields(call=facts.uuid, outcome=outcome, by=by))
            case FlagCall(kind=kind, by=by):
                self.ctx.writer.record(ledger_facts.CallFlagged(self.facts.instance, self.facts.uuid, kind, by,
                                                                self.ctx.now()))
            case WithdrawEarlierCalls():
                if self.facts.caller_hash:
                    gevent.spawn(self.ctx.callback_withdrawal, self.facts.caller_hash, self.facts.uuid)
            case StartTimer(name=name, seconds=seconds):
                self._timers[name] = gevent.spawn_later(seconds, self._feed, consent.TimerFired(name))
            case CancelTimer(name=name):
                timer = self._timers.pop(name, None)
                if timer is not None:
                    timer.kill(block=False)
            case Finish():
                self._finish()
            case _:
                # a programming error (tests/runtime/test_driver.py checks every command type has a case):
                # said loudly, and not turned into a Failed that would delete the call's recording
                log.critical("call %s: the driver has no case for %s", self.facts.uuid, type(command).__name__)

    def _path(self, recording_id: str) -> Path:
        return recording_path(self.ctx.spool_dir, recording_id)

    def _set_variables(self, variables: list) -> None:
        """One ``uuid_setvar_multi`` for several (one round trip before the recording starts;
        FreeSWITCH sets them in order, mod_commands.c), ``uuid_setvar`` for one."""
        if len(variables) == 1:
            self._perform(variables[0])
        elif variables:
            pairs = ";".join(f"{v.name}={v.value}" for v in variables)
            self._api(f"uuid_setvar_multi {self.facts.uuid} {pairs}")
        variables.clear()

    def _api(self, command: str, on_reply=None) -> None:
        if self._closed or self._exit_sent:
            return
        token = next(self._tokens)
        if on_reply is not None:
            self._on_reply[token] = on_reply
        self._send(self._wire.send_api(command, token))

    def _execute(self, cmd: Execute) -> None:
        if self._closed or self._exit_sent:
            return
        if cmd.purpose == consent.PROMPT:
            self._prompts.add(cmd.tag)
        self._on_reply[cmd.tag] = self._execute_refused
        self._send(self._wire.send_execute(cmd.app, cmd.arg, cmd.tag))
        if cmd.purpose == consent.MENU:
            self.facts.menu_at = self.ctx.now()

    def _execute_refused(self, reply: Reply) -> None:
        """A sendmsg answered -ERR runs nothing and never completes: fail closed, go on."""
        if not reply.ok and not self._lingering:
            log.warning("call %s: FreeSWITCH refused an execute (%s)", self.facts.uuid, reply.text.strip()[:60])
            self._feed(consent.Failed("execute-refused"))

    def _delete(self, cmd: DeleteRecording) -> None:
        """The files first (unless sealed: then the ledger decides, in order, as it knows the
        holds), then the ledger's part."""
        rid = cmd.recording_id
        self._deleted.add(rid)
        if not cmd.sealed:
            recordings.remove_files(rid, self.ctx.vault, self.ctx.spool_dir)
        self.ctx.writer.record(ledger_facts.RecordingDeleted(rid, cmd.reason, self.ctx.now(), sealed=cmd.sealed))

    def _finish(self) -> None:
        self._finished = True
        facts, now = self.facts, self.ctx.now()
        if facts.bridge_leg is not None:  # no CHANNEL_UNBRIDGE came: the bridge ended with the call
            self._guarded(self._unbridged, None, now)
        since = facts.answered_at or facts.started_at
        # wachttijd: from entering the menu to reaching staff (the consent prompt is not waiting)
        wait = (facts.bridged_at - facts.menu_at).total_seconds() if facts.bridged_at and facts.menu_at else None
        duration = (now - since).total_seconds()
        self.ctx.writer.record(ledger_facts.CallEnded(
            facts.instance, answered_at=facts.answered_at, bridged_at=facts.bridged_at, ended_at=now,
            duration_seconds=duration, wait_seconds=wait, hangup_cause=facts.hangup_cause))
        log.info("call ended", extra=fields(call=facts.uuid, outcome=self.machine.outcome,
                                            hangup_cause=facts.hangup_cause, seconds=round(duration, 1)))
        self._maybe_exit()

    def _maybe_exit(self) -> None:
        """With linger, FreeSWITCH holds the session until we say ``exit``: say it once we are done."""
        if self._finished and self._lingering and not self._exit_sent:
            self._exit_sent = True
            self._send(self._wire.send_exit())
            self._timers["exit"] = gevent.spawn_later(EXIT_GRACE_S, self._close)
