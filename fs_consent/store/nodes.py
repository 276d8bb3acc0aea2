"""The nodes sharing a ledger: who they are, which release they run, when each was last seen.

Every server upserts its ``node`` row at start (:func:`register`: name, release, signing
key) and touches ``last_seen`` every :data:`HEARTBEAT_S` through its writer
(:class:`Heartbeat`); a clean stop sets ``stopped_at``. ``fs-consent check`` lists them
(:func:`status`): running, stopped, or silent since its last sign of life (killed, or cut
off from the database). A node's name is ``[server] node``; it is also on every call and
recording the node wrote, so a node's restart settles only what is its own.
"""

from __future__ import annotations

import datetime as dt
import logging

import gevent

from . import ledger
from .ledger import Node

log = logging.getLogger(__name__)

HEARTBEAT_S = 15.0  # how often a running node says it is alive
SILENT_AFTER_S = 3 * HEARTBEAT_S  # no sign of life for this long (and no clean stop): silent

_UPSERT = ("INSERT INTO node (name, version, started_at, last_seen, signing_key, stopped_at) "
           "VALUES (?, ?, ?, ?, ?, NULL) ON CONFLICT (name) DO UPDATE SET version = excluded.version, "
           "started_at = excluded.started_at, last_seen = excluded.last_seen, "
           "signing_key = excluded.signing_key, stopped_at = NULL")
# a run is its row's ``started_at``: a heartbeat or stop touches the row only while it is still this run's
_SEEN = "UPDATE node SET last_seen = ? WHERE name = ? AND started_at = ?"
_STOPPED = "UPDATE node SET last_seen = ?, stopped_at = ? WHERE name = ? AND started_at = ?"


def register(name: str, *, version: str, signing_key: str | None, at: dt.datetime | None = None) -> dt.datetime:
    """This node starts: its row, made or renewed (a node renamed in the config gets a new row).
    Returns the run's start, which :func:`seen` and :func:`stopped` name it by."""
    at = at or ledger.utcnow()
    ledger.sql(_UPSERT, (name, version, at, at, signing_key))
    return at


def seen(name: str, started_at: dt.datetime, at: dt.datetime | None = None) -> bool:
    """This run is alive; False when the row is no longer this run's: another server has
    started under the same name since (two servers given one ``[server] node``)."""
    return ledger.sql(_SEEN, (at or ledger.utcnow(), name, started_at)).rowcount == 1


def stopped(name: str, started_at: dt.datetime, at: dt.datetime | None = None) -> None:
    """A clean stop of this run (another server's run under the same name is left running)."""
    at = at or ledger.utcnow()
    ledger.sql(_STOPPED, (at, at, name, started_at))


def all_nodes() -> list[Node]:
    return list(Node.select().order_by(Node.name))


def names_by_key() -> dict[str, str]:
    """signing key -> the node that uses it (for naming a checkpoint's signer)."""
    return {n.signing_key: n.name for n in Node.select(Node.name, Node.signing_key)
            .where(Node.signing_key.is_null(False))}


def state(node: Node, now: dt.datetime | None = None) -> str:
    """``running`` (seen within SILENT_AFTER_S), ``stopped`` (a clean stop) or ``silent``."""
    if node.stopped_at is not None:
        return "stopped"
    now = now or ledger.utcnow()
    return "running" if (now - node.last_seen).total_seconds() <= SILENT_AFTER_S else "silent"


def describe(node: Node, now: dt.datetime | None = None) -> str:
    """One line: ``fs1 (fs-consent 1.2.0): running since ..., last seen 3 s ago``."""
    now = now or ledger.utcnow()
    ago = max(0, int((now - node.last_seen).total_seconds()))
    seen_at = f"{node.last_seen.isoformat(timespec='seconds')}Z ({ago} s ago)"
    started = node.started_at.isoformat(timespec="seconds") + "Z"
    what = state(node, now)
    if what == "running":
        text = f"running since {started}, last seen {seen_at}"
    elif what == "stopped":
        text = f"stopped cleanly at {node.stopped_at.isoformat(timespec='seconds')}Z (started {started})"
    else:
        text = (f"silent: last seen {seen_at}, no clean stop (killed, or cut off from the database; "
                f"started {started})")
    return f"{node.name} (fs-consent {node.version}): {text}"


class Heartbeat:
    """The server's sign of life: ``last_seen`` every ``every`` seconds, through its writer
    (so a slow database never stalls a call), and ``stopped_at`` at a clean stop.

    A beat that finds the row taken by another run (a second server started with this node's
    name) logs an error, once: the two would settle each other's calls as their own after a
    restart but for the bus, and ``check`` shows only the last to start.
    """

    def __init__(self, writer, name: str, started_at: dt.datetime, *, every: float = HEARTBEAT_S):
        self.writer, self.name, self.started_at, self.every = writer, name, started_at, every
        self.shared = False  # another server runs under this name
        self._greenlet = None

    def start(self) -> Heartbeat:
        self._greenlet = gevent.spawn(self._run)
        return self

    def _run(self) -> None:
        while True:
            gevent.sleep(self.every)
            self.writer.submit(self._beat)

    def _beat(self) -> None:
        if seen(self.name, self.started_at) or self.shared:
            return
        self.shared = True
        log.error("node %s: another server has started under this node name since this one did "
                  "(two servers with one [server] node): give each its own name; until then `check` "
                  "shows only the last one to start", self.name)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill()
            self._greenlet = None
            self.writer.submit(lambda: stopped(self.name, self.started_at))
            self.writer.flush()
