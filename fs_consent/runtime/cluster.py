"""The cluster bus: nodes that share one PostgreSQL ledger reach each other's live calls.

Several ``fs-consent serve`` processes (nodes) on one PostgreSQL ledger each hold their own
live calls; what must act on a live call elsewhere (``fs-consent withdraw`` run on another
machine, a callback refusal that lands on another node) goes through PostgreSQL
LISTEN/NOTIFY. With SQLite there is one node and no bus: the control socket serves it.

Channels and messages (one JSON object per NOTIFY payload, under PostgreSQL's 8000 bytes):

* :data:`CHANNEL`, to every node:
  ``{"op": "withdraw", "call_uuid", "actor", "id", "reply_to"}``: a node holding the call
  live withdraws it (the recording is gone when it answers) and answers on ``reply_to``;
  a node that does not hold it stays silent. ``{"op": "callback", "caller_hash",
  "exclude_uuid", "from"}``: every other node withdraws its live calls from that number
  (the caller hash is the ledger's keyed hash, never the number). ``{"op": "holding",
  "id", "reply_to"}``: a node starting up asks which open calls are live elsewhere, so its
  recovery ends only calls no node holds; each node with live calls answers with their
  instances, :data:`INSTANCES_PER_REPLY` a message.
* ``reply_to`` (:data:`REPLY_PREFIX` + random hex, one per question, LISTENed on by the
  asker before it asks): ``{"id", "ok", "live", "outcome", "ledger", "node", "pid"}`` to
  a withdrawal, ``{"id", "instances", "node", "pid"}`` to ``holding``.

NOTIFY reaches only who listens at that moment: a node cut off from the database misses
what is said meanwhile (an asker then hears no answer and says so; a callback refusal
also withdraws the call from the ledger once it has ended, ``ServerContext``'s follow-up).
Anyone who may connect to the ledger's database may speak on the bus, the same trust as
writing the ledger.

Threads: the server does not monkey-patch, so psycopg blocks its caller; the bus owns two
autocommit connections, each used by one native thread of its own (:class:`ThreadPool` of
one): the listener waits for notifications there and the hub gets them as the thread's
result; the sender NOTIFYs there. Either reconnects after a lost connection. Messages are
handled on the hub, one greenlet each.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import gevent
from gevent.threadpool import ThreadPool

__all__ = ["CHANNEL", "REPLY_PREFIX", "BusError", "ClusterBus", "ask", "conninfo", "gather"]

log = logging.getLogger(__name__)

CHANNEL = "fs_consent_cluster"
REPLY_PREFIX = "fs_consent_reply_"
_REPLY_CHANNEL = re.compile(r"^fs_consent_reply_[0-9a-f]{16,32}$")
POLL_S = 0.5  # the listener's longest wait in the database, so a stop is heard this fast
RECONNECT_FIRST_S, RECONNECT_MAX_S = 0.2, 5.0
MAX_PAYLOAD = 7900  # PostgreSQL refuses a NOTIFY payload of 8000 bytes or more
INSTANCES_PER_REPLY = 150  # 32 hex digits each: a reply well under MAX_PAYLOAD

Handler = Callable[[dict], None]


class BusError(Exception):
    """The bus cannot reach the database; the message says why (no password in it)."""


def conninfo(url: str) -> str | None:
    """The psycopg connection string of a PostgreSQL ledger URL; None for SQLite (no bus)."""
    scheme, sep, _rest = url.partition("://")
    base = scheme.removesuffix("+pool")
    if not sep or not base.startswith(("postgres", "psycopg")):
        return None
    parts = urlsplit(url)
    return urlunsplit(("postgresql", parts.netloc, parts.path, parts.query, ""))


def _connect(info: str):
    import psycopg

    try:
        return psycopg.connect(info, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        raise BusError(f"cannot connect to the ledger's database ({type(exc).__name__})") from None


def _encode(message: dict) -> str:
    payload = json.dumps(message, separators=(",", ":"), sort_keys=True)
    if len(payload.encode()) > MAX_PAYLOAD:
        raise ValueError(f"bus message of {len(payload)} bytes is too long for NOTIFY")
    return payload


def _decode(payload: str) -> dict | None:
    try:
        message = json.loads(payload)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


class ClusterBus:
    """One node's end of the bus: ``handler(message)`` runs on the hub for each message heard."""

    def __init__(self, url: str, node: str, handler: Handler):
        info = conninfo(url)
        if info is None:
            raise ValueError("the cluster bus needs a PostgreSQL ledger")
        self._info, self.node, self._handler = info, node, handler
        self.pid = os.getpid()
        self.id = f"{node}:{self.pid}:{secrets.token_hex(4)}"  # who said it: a node ignores its own broadcast
        self._listen_pool, self._send_pool = ThreadPool(1), ThreadPool(1)
        self._listener = self._sender = None  # each used only in its own pool's thread
        self._loop: gevent.Greenlet | None = None
        self._running = False
        self.connected = False

    def start(self) -> None:
        """Connect and LISTEN before returning (or log why not, and keep trying), then serve."""
        try:
            self._listen_pool.spawn(self._listen).get()
        except BusError as exc:
            log.error("cluster bus: %s; listening as soon as it answers", exc)
        self._running = True
        self._loop = gevent.spawn(self._serve)

    def stop(self) -> None:
        self._running = False
        if self._loop is not None:
            self._loop.join(timeout=POLL_S * 4)
            self._loop.kill()
        for pool, attr in ((self._listen_pool, "_listener"), (self._send_pool, "_sender")):
            pool.spawn(self._close, attr).get()
            pool.kill()

    def publish(self, message: dict, channel: str = CHANNEL) -> bool:
        """NOTIFY ``message`` on ``channel`` from the sender thread; False (logged) if it could not."""
        try:
            self._send_pool.spawn(self._send, channel, _encode({**message, "from": self.id})).get()
            return True
        except Exception as exc:  # noqa: BLE001 - the caller goes on; the log says the bus failed
            log.error("cluster bus: could not send %s (%s)", message.get("op", "a reply"), type(exc).__name__)
            return False

    def reply(self, request: dict, answer: dict) -> None:
        """Answer a question on the channel it names (only a reply channel, never another)."""
        channel = str(request.get("reply_to", ""))
        if _REPLY_CHANNEL.match(channel):
            self.publish({**answer, "id": request.get("id"), "node": self.node, "pid": self.pid}, channel)

    # --- in the listener's thread ---------------------------------------------------

    def _listen(self) -> None:
        conn = _connect(self._info)
        conn.execute(f"LISTEN {CHANNEL}")
        self._listener = conn

    def _receive(self) -> list[str]:
        if self._listener is None:
            self._listen()
        return [n.payload for n in self._listener.notifies(timeout=POLL_S, stop_after=1)]

    def _close(self, attr: str) -> None:
        conn, _ = getattr(self, attr), setattr(self, attr, None)
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001,S110 - closing a broken connection
                pass

    # --- in the sender's thread ---------------------------------------------------

    def _send(self, channel: str, payload: str) -> None:
        for attempt in (1, 2):  # a connection lost since the last message: reconnect once
            if self._sender is None:
                self._sender = _connect(self._info)
            try:
                self._sender.execute("SELECT pg_notify(%s, %s)", (channel, payload))
                return
            except Exception:
                self._close("_sender")
                if attempt == 2:
                    raise

    # --- on the hub -----------------------------------------------------------------

    def _serve(self) -> None:
        delay, self.connected = RECONNECT_FIRST_S, self._listener is not None
        while self._running:
            try:
                payloads = self._listen_pool.spawn(self._receive).get()
            except Exception as exc:  # noqa: BLE001 - a lost connection: listen again
                self._listen_pool.spawn(self._close, "_listener").get()
                if self.connected:
                    log.error("cluster bus: lost the ledger's database (%s); listening again as soon as it answers",
                              type(exc).__name__)
                self.connected = False
                gevent.sleep(delay)
                delay = min(RECONNECT_MAX_S, delay * 2)
                continue
            if not self.connected:
                log.warning("cluster bus: listening again")
                self.connected, delay = True, RECONNECT_FIRST_S
            for payload in payloads:
                message = _decode(payload)
                if message is not None and message.get("from") != self.id:
                    gevent.spawn(self._dispatch, message)

    def _dispatch(self, message: dict) -> None:
        try:
            self._handler(message)
        except Exception as exc:  # noqa: BLE001 - a message may hold personal data: name where it failed
            log.error("cluster bus: handling %r failed with %s", str(message.get("op"))[:20], type(exc).__name__,
                      exc_info=log.isEnabledFor(logging.DEBUG))


def ask(url: str, message: dict, *, timeout: float) -> dict | None:
    """Broadcast a question to every node and return the first answer, or None if none came
    within ``timeout`` seconds. Blocking (for the command line, or a native thread)."""
    answers = gather(url, message, window=timeout, first=True)
    return answers[0] if answers else None


def gather(url: str, message: dict, *, window: float, first: bool = False) -> list[dict]:
    """Broadcast a question and collect every answer that comes within ``window`` seconds
    (only the first, with ``first``). Blocking (for the command line, or a native thread)."""
    info = conninfo(url)
    if info is None:
        raise ValueError("the cluster bus needs a PostgreSQL ledger")
    channel, request_id = REPLY_PREFIX + secrets.token_hex(8), secrets.token_hex(8)
    answers: list[dict] = []
    conn = _connect(info)
    try:
        conn.execute(f"LISTEN {channel}")  # before asking: an answer cannot come before we listen
        conn.execute("SELECT pg_notify(%s, %s)",
                     (CHANNEL, _encode({**message, "id": request_id, "reply_to": channel})))
        deadline = time.monotonic() + window
        while (left := deadline - time.monotonic()) > 0:
            for notification in conn.notifies(timeout=left, stop_after=1):
                answer = _decode(notification.payload)
                if answer is not None and answer.get("id") == request_id:
                    answers.append(answer)
                    if first:
                        return answers
        return answers
    finally:
        conn.close()
