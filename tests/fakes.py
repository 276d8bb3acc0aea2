"""Fakes for the driver's collaborators (``driver.CallServices``) and a scripted FreeSWITCH
on the other end of a socketpair, so ``CallSession`` runs without a server, a ledger or a vault."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import gevent
import gevent.socket

from fs_consent import esl
from fs_consent.core import consent
from fs_consent.runtime.driver import CallSession
from fs_consent.secure.protect import KEY_SIZE, FieldProtector

CHANNEL = "6f1c2a1e-0b4e-4c7b-9a55-0c6c2d1f0a11"
CALLER = "+31612345678"


class FakeWriter:
    """``driver.LedgerWrites``: the facts in the order the call recorded them."""

    def __init__(self, healthy: bool = True):
        self.facts: list = []
        self.healthy = healthy
        self.unhealthy_reason = "" if healthy else "the ledger is locked"

    def record(self, fact) -> None:
        self.facts.append(fact)

    def of(self, kind: type) -> list:
        return [fact for fact in self.facts if isinstance(fact, kind)]


class FakeVault:
    def __init__(self):
        self.deleted: list[str] = []

    def delete(self, recording_id: str, *, sync: bool = True, tmp: bool = True) -> bool:
        self.deleted.append(recording_id)
        return True


@dataclass
class FakeServices:
    """``driver.CallServices`` with everything in memory and a clock that moves one second a call."""

    spool_dir: Path
    policy: consent.Policy = field(default_factory=lambda: consent.Policy(timeout_ms=1000))
    objects: bool | Exception = False  # what the objection look-up answers (or raises)
    vault_ready: bool = True
    store_problem: str | None = None
    handshake_timeout: float = 2.0
    language: str = "nl"
    prompt_id: str = "consent-nl"
    prompt_version: str = "1"
    node: str = "node-a"
    staff_variable: str = ""
    route_variable: str = "fs_consent_route"
    registry: dict = field(default_factory=dict)
    writer: FakeWriter = field(default_factory=FakeWriter)
    vault: FakeVault = field(default_factory=FakeVault)
    protector: FieldProtector = field(default_factory=lambda: FieldProtector(os.urandom(KEY_SIZE)))
    seals: list = field(default_factory=list)  # (recording id, delay)
    callbacks: list = field(default_factory=list)  # (caller hash, refusing call uuid)
    clock: dt.datetime = dt.datetime(2026, 3, 2, 9, 0, 0)

    def now(self) -> dt.datetime:
        self.clock += dt.timedelta(seconds=1)
        return self.clock

    def objection(self, caller_hash: str) -> bool:
        if isinstance(self.objects, Exception):
            raise self.objects
        return self.objects

    def seal_later(self, recording_id: str, withdrawn: set, *, delay: float = 0.0) -> None:
        self.seals.append((recording_id, delay))

    def callback_withdrawal(self, caller_hash: str, refusing_call_uuid: str) -> None:
        self.callbacks.append((caller_hash, refusing_call_uuid))

    def with_policy(self, **changes) -> FakeServices:
        return replace(self, policy=replace(self.policy, **changes))


class FakeSwitch:
    """FreeSWITCH's end of one outbound connection: answers every command +OK, keeps them,
    and sends the events a test asks for (timestamps on its own microsecond clock)."""

    def __init__(self, sock, *, caller: str = CALLER):
        self.sock, self.caller = sock, caller
        self.commands: list[esl.Command] = []
        self._parser = esl.CommandParser()
        self._clock_us = 1_700_000_000_000_000
        self.refuse: set[str] = set()  # apps whose sendmsg is answered -ERR
        self._reader = gevent.spawn(self._serve)

    def _serve(self) -> None:
        while True:
            data = self.sock.recv(65536)
            if not data:
                return
            for command in self._parser.feed(data):
                self.commands.append(command)
                self.sock.sendall(self._reply_to(command))

    def _reply_to(self, command: esl.Command) -> bytes:
        if command.line == "connect":
            return esl.encode_connect_reply([("Unique-ID", CHANNEL), ("Caller-Caller-ID-Number", self.caller)])
        if command.line.startswith("api "):
            return esl.encode_api_response(b"+OK\n")
        if command.headers.get("execute-app-name") in self.refuse:
            return esl.encode_reply("-ERR no such application")
        return esl.encode_reply("+OK")

    # what the app sent ------------------------------------------------------------

    def executes(self) -> list[tuple[str, str | None]]:
        return [(c.headers["execute-app-name"], c.headers.get("execute-app-arg")) for c in self.commands
                if c.line == "sendmsg" and c.headers.get("call-command") == "execute"]

    def apis(self) -> list[str]:
        return [c.line[4:] for c in self.commands if c.line.startswith("api ")]

    def lines(self) -> list[str]:
        return [c.line for c in self.commands]

    # what FreeSWITCH says ---------------------------------------------------------

    def event(self, name: str, **headers: str) -> None:
        self._clock_us += headers.pop("after_us", 20_000)
        items = [("Event-Name", name), ("Unique-ID", CHANNEL), ("Event-Date-Timestamp", str(self._clock_us))]
        self.sock.sendall(esl.encode_event(items + [(k.replace("_", "-") if k[0].isupper() else k, v)
                                                    for k, v in headers.items()]))

    def complete(self, app: str, **variables: str) -> None:
        """CHANNEL_EXECUTE_COMPLETE of the latest execute of ``app``, matched by its Event-UUID."""
        sent = [c for c in self.commands if c.headers.get("execute-app-name") == app]
        self.event("CHANNEL_EXECUTE_COMPLETE", Application=app, Application_UUID=sent[-1].headers["Event-UUID"],
                   **variables)

    def linger_then_close(self) -> None:
        self.sock.sendall(esl.encode_disconnect_notice(CHANNEL, "loopback/consent-b", linger=True))

    def close(self) -> None:
        self._reader.kill()
        self.sock.close()

    def wait_for(self, predicate, timeout: float = 2.0) -> None:
        with gevent.Timeout(timeout, AssertionError(f"FreeSWITCH never saw it; it got {self.lines()}")):
            while not predicate():
                gevent.sleep(0.005)


def start_call(services: FakeServices, **switch) -> tuple[CallSession, FakeSwitch, gevent.Greenlet]:
    """A CallSession on one end of a socketpair, FreeSWITCH on the other, up to the answer."""
    ours, theirs = gevent.socket.socketpair()
    fs = FakeSwitch(theirs, **switch)
    session = CallSession(ours, services)
    runner = gevent.spawn(session.run)
    fs.wait_for(lambda: ("answer", None) in fs.executes())
    return session, fs, runner


def apps(fs: FakeSwitch) -> list[str]:
    return [app for app, _ in fs.executes()]


def answer_prompt(fs: FakeSwitch, policy: consent.Policy, digit: str | None = None) -> None:
    """Complete the answer, then the consent prompt: ``digit`` pressed, or silence with its proof
    (the prompt's PLAYBACK_STOP, then the completion a whole timeout later)."""
    fs.complete("answer")
    fs.wait_for(lambda: "play_and_get_digits" in apps(fs))
    if digit is not None:
        fs.complete("play_and_get_digits", variable_read_result="success",
                    **{f"variable_{consent.PROMPT_VARIABLE}": digit})
    else:
        fs.event("PLAYBACK_STOP", Playback_File_Path=policy.prompt_file)
        fs.complete("play_and_get_digits", variable_read_result="failure", after_us=policy.timeout_ms * 1000)
    fs.wait_for(lambda: policy.menu_app in apps(fs))
