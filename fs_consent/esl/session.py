"""One outbound Event Socket connection, sans-IO: the ``h11.Connection`` of fs-consent.

Bytes from FreeSWITCH go in (:meth:`OutboundSession.receive`), what they mean comes
out as a list of :class:`Connected`, :class:`Reply`, :class:`Completed`,
:class:`ChannelEvent`, :class:`Lingering` and :class:`Closed`. Commands go out as
the bytes the ``send_*`` methods return, each with a token of the caller's choosing
that comes back on its reply (and, for an execute, on its completion).

What the wire promises, and all this class relies on (checked on a real
FreeSWITCH 1.10.12, ``freeswitch/captures``):

* replies (``command/reply``, ``api/response``) come in the order of the commands;
* events come anywhere: between a command and its reply (CHANNEL_PARK after
  ``myevents`` and before the next reply; CHANNEL_EXECUTE before the ``+OK`` of
  the sendmsg that started it), and frames are split at any byte;
* a sendmsg execute's ``Event-UUID`` comes back as ``Application-UUID`` on its
  CHANNEL_EXECUTE_COMPLETE, which is how completions are matched (not by name);
* with ``linger``, a hang-up sends a ``linger`` disconnect notice and events keep
  coming until the client says ``exit``; the final notice ends the connection.

No sockets, no clock, no consent rules: the driver does the I/O, the consent
machine decides.
"""

from __future__ import annotations

import uuid as uuidlib
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Hashable

from .codec import Event, FrameParser, Message, ProtocolError, encode_api, encode_command, encode_execute

__all__ = [
    "OutboundSession",
    "State",
    "Connected",
    "Reply",
    "Completed",
    "ChannelEvent",
    "Lingering",
    "Closed",
]


# --- what comes out ---------------------------------------------------------------


@dataclass(frozen=True)
class Connected:
    """The reply to ``connect``: the channel's data (URL-decoded headers)."""

    token: Hashable
    channel_uuid: str
    headers: dict


@dataclass(frozen=True)
class Reply:
    """The reply to one command (``command/reply`` or ``api/response``), in command order."""

    token: Hashable
    message: Message

    @property
    def text(self) -> str:
        if self.message.content_type == "api/response":
            return self.message.body.decode("utf-8", "replace")
        return self.message.reply_text or ""

    @property
    def ok(self) -> bool:
        return not self.text.startswith("-ERR")


@dataclass(frozen=True)
class Completed:
    """CHANNEL_EXECUTE_COMPLETE of an execute sent with :meth:`OutboundSession.send_execute`."""

    token: Hashable
    event: Event


@dataclass(frozen=True)
class ChannelEvent:
    """Any other event of this session's channel (other legs' events are filtered out)."""

    event: Event


@dataclass(frozen=True)
class Lingering:
    """The channel hung up; events keep coming until :meth:`OutboundSession.send_exit`."""


@dataclass(frozen=True)
class Closed:
    """FreeSWITCH's final disconnect notice: nothing more will come."""


class State(Enum):
    NEW = "new"  # nothing sent yet
    CONNECTING = "connecting"  # connect sent, its reply not in
    OPEN = "open"
    LINGERING = "lingering"  # hung up, still talking until exit
    EXITING = "exiting"  # exit sent
    CLOSED = "closed"


# --- the session -------------------------------------------------------------------


class OutboundSession:
    """The client side of one outbound ESL connection."""

    def __init__(self, parser: FrameParser | None = None, *, new_event_uuid=lambda: str(uuidlib.uuid4())) -> None:
        self._parser = parser or FrameParser()
        self._new_event_uuid = new_event_uuid  # tests replaying a capture give its Event-UUIDs
        self._awaiting: deque[tuple[Hashable, bool]] = deque()  # (token, is connect) per command sent
        self._executes: dict[str, Hashable] = {}  # Event-UUID -> token, until its completion
        self.state = State.NEW
        self.channel_uuid: str | None = None

    # --- sending ---------------------------------------------------------------------

    def send_connect(self, token: Hashable = "connect") -> bytes:
        if self.state is not State.NEW:
            raise ProtocolError("connect sent twice")
        self.state = State.CONNECTING
        self._awaiting.append((token, True))
        return encode_command("connect")

    def send_command(self, line: str, token: Hashable = None) -> bytes:
        """A one-line command (``myevents``, ``linger``, ``event plain ...``)."""
        self._sendable()
        self._awaiting.append((token, False))
        return encode_command(line)

    def send_api(self, command: str, token: Hashable = None) -> bytes:
        self._sendable()
        self._awaiting.append((token, False))
        return encode_api(command)

    def send_execute(self, app: str, arg: str | None, token: Hashable) -> bytes:
        """A sendmsg execute; its reply and its completion both carry ``token``."""
        self._sendable()
        event_uuid = self._new_event_uuid()
        self._executes[event_uuid] = token
        self._awaiting.append((token, False))
        return encode_execute(app, arg, event_uuid=event_uuid)

    def send_exit(self, token: Hashable = "exit") -> bytes:
        self._sendable()
        self.state = State.EXITING
        self._awaiting.append((token, False))
        return encode_command("exit")

    def _sendable(self) -> None:
        if self.state is State.NEW:
            raise ProtocolError("a command before connect")
        if self.state in (State.EXITING, State.CLOSED):
            raise ProtocolError("a command after exit")

    @property
    def awaiting_replies(self) -> int:
        return len(self._awaiting)

    # --- receiving -------------------------------------------------------------------

    def receive(self, data: bytes) -> list:
        """Feed bytes as they came (any split); returns what they completed, in order."""
        if self.state is State.CLOSED:
            return []
        out = []
        for message in self._parser.feed(data):
            item = self._interpret(message)
            if item is not None:
                out.append(item)
        return out

    def _interpret(self, message: Message):
        kind = message.content_type
        if kind in ("command/reply", "api/response"):
            return self._reply(message)
        if kind == "text/event-plain":
            return self._event(message.event())
        if kind == "text/disconnect-notice":
            if message.headers.get("Content-Disposition") == "linger":
                if self.state is State.OPEN:
                    self.state = State.LINGERING
                return Lingering()
            self.state = State.CLOSED
            return Closed()
        return None  # log/data and the like: not asked for, nothing to act on

    def _reply(self, message: Message):
        if not self._awaiting:
            raise ProtocolError("a reply to no command")
        token, is_connect = self._awaiting.popleft()
        if not is_connect:
            return Reply(token, message)
        channel_uuid = message.headers.get("Unique-ID")
        if message.content_type != "command/reply" or not channel_uuid:
            raise ProtocolError("connect reply without Unique-ID")
        self.channel_uuid = channel_uuid
        if self.state is State.CONNECTING:
            self.state = State.OPEN
        return Connected(token, channel_uuid, message.headers)

    def _event(self, event: Event):
        if self.channel_uuid is None or event.get("Unique-ID") != self.channel_uuid:
            return None  # another leg's (the agent's DTMF must never count as the caller's)
        if event.name == "CHANNEL_EXECUTE_COMPLETE":
            token = self._executes.pop(event.get("Application-UUID", ""), _MISSING)
            if token is not _MISSING:
                return Completed(token, event)
        return ChannelEvent(event)


_MISSING = object()
