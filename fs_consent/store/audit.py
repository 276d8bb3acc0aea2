"""The audit trail: signed checkpoints, verification and export.

The trail itself is ``ledger.AuditEntry``: every entry commits to the one before it
(``hash = sha256(prev_hash + canonical entry)``, see ``ledger.entry_digest``), the
first one to ``GENESIS_HASH``. A hash chain alone only shows that the rows fit
together; someone who can write the database can rewrite the whole chain, or cut
entries off its end. So the chain head is *checkpointed*: an ``AuditCheckpoint``
row holds the seq and hash of the newest entry at that moment, signed with the
installation's Ed25519 key (``keys/signing.key``). Verification then pins every
entry up to the last checkpoint: an edited, deleted, reordered or inserted entry,
a rewritten chain, or a cut-off tail all show up, and the first bad entry is named.

Each checkpoint is itself recorded in the trail (action ``audit.checkpoint``, with its
``reason``: ``startup``, ``periodic``, ``shutdown`` or ``manual``), so deleting a
checkpoint row is detected too. A checkpoint is *due* (as CloudTrail's digest files
are): the server signs one at every start, every ``[audit] checkpoint_every_entries``
entries or ``checkpoint_every`` (whichever comes first, if anything is new), and at
every clean shutdown. Each run of the server begins with a ``server.start`` record,
which says whether the run before it ended with a shutdown checkpoint (``previous``:
``clean``, ``unclean`` after a crash, ``none``, ``unknown``). So verification can tell
a trail that stops short of a due checkpoint: a stopped server whose last run has no
shutdown checkpoint (a crash, or a cut tail), a running one that is overdue, a restart
that does not own up to an unclean stop.

A cut that removes the tail *and* the checkpoints covering it, back to an earlier
clean shutdown, still leaves a well-formed trail. Every checkpoint's head therefore
also leaves the database: one journal line each, and one JSON line each in the
``[audit] witness_file``; :func:`verify_trail` checks the trail against such a witness
(every witnessed checkpoint must be in the trail with the same hash), or against a
head pinned by hand (``--pin``).

Everything here streams in batches: memory stays flat however long the trail is.
The export format and the verification rule are documented in README.md
("Audit trail") precisely enough to re-implement them.
"""

from __future__ import annotations

import base64
import binascii
import csv
import datetime as dt
import hashlib
import itertools
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TextIO

import gevent
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from peewee import fn

from .. import __version__
from ..core.durations import format_duration
from ..core.logs import fields
from ..secure import keys as keyfiles
from . import audit_actions
from .ledger import GENESIS_HASH, AuditCheckpoint, AuditEntry, Meta, append_audit, database, lock_chain, utcnow

log = logging.getLogger(__name__)

FORMAT = "fs-consent-audit/1"
CHECKPOINT_DOMAIN = "fs-consent-audit-checkpoint/1"
REASONS = ("startup", "periodic", "shutdown", "manual")  # why a checkpoint was signed
WITNESS_FORMAT = "fs-consent-audit-witness/1"  # one line per checkpoint, outside the database
SERVER_STATES = ("running", "stopped", "unknown")  # what the verifier knows of the server
EXPORT_FORMATS = ("jsonl", "json", "csv")
# one row layout for every record in the csv export (and the key order of the json ones)
CSV_COLUMNS = ("record", "seq", "at", "actor", "action", "object_type", "object_id", "detail",
               "prev_hash", "hash", "signed_at", "public_key", "signature")
BATCH = 5000


_ENTRIES = AuditEntry._meta.table_name
_CHECKPOINTS = AuditCheckpoint._meta.table_name


def checkpoint_message(seq: int, head_hash: str, signed_at: str) -> bytes:
    """The bytes a checkpoint signs (``signed_at`` as in the export: ISO 8601, UTC, no zone)."""
    return f"{CHECKPOINT_DOMAIN}\n{seq}\n{head_hash}\n{signed_at}\n".encode()


def _iso(value) -> str:
    """A stored timestamp as the exact text the chain hashes (``datetime.isoformat()``)."""
    if isinstance(value, str):  # SQLite hands back text
        value = dt.datetime.fromisoformat(value)
    return value.replace(tzinfo=None).isoformat() if value.tzinfo else value.isoformat()


def _table_exists(table: str) -> bool:
    return table in database.get_tables()


def _sql(query: str, params: tuple = ()):
    return database.execute_sql(query.replace("?", database.param), params)


# --- checkpoints -------------------------------------------------------------------


def write_checkpoint(signing_key: Ed25519PrivateKey, actor: str, reason: str = "manual",
                     node: str | None = None) -> AuditCheckpoint | None:
    """Sign the current head; None when the trail is empty. Runs in one transaction.

    ``reason`` (one of :data:`REASONS`) is kept in the checkpoint's own trail entry, where
    the chain (and the next checkpoint) protects it, with the ``node`` that signed it. Call
    :func:`publish_checkpoint` once the transaction is committed, to log and witness it.
    The chain's head is locked first (``ledger.lock_chain``): another node's entry cannot
    come between the head signed and the checkpoint's own entry.
    """
    if reason not in REASONS:
        raise ValueError(f"checkpoint reason must be one of {', '.join(REASONS)}, got {reason!r}")
    public = keyfiles.signing_public_key(signing_key)
    with database.atomic():
        lock_chain()  # first: CREATE ... IF NOT EXISTS takes a table lock a waiting node could hold against us
        database.create_tables([AuditCheckpoint], safe=True)
        head = _sql(f"SELECT seq, hash FROM {_ENTRIES} ORDER BY seq DESC LIMIT 1").fetchone()
        if head is None:
            return None
        seq, head_hash = head
        signed_at = utcnow()
        signature = signing_key.sign(checkpoint_message(seq, head_hash, signed_at.isoformat()))
        checkpoint = AuditCheckpoint.create(
            seq=seq, head_hash=head_hash, signed_at=signed_at, public_key=public,
            signature=base64.b64encode(signature).decode("ascii"))
        signer = {"node": node} if node else {}
        append_audit(actor, audit_actions.AUDIT_CHECKPOINT, "audit", str(seq), checkpoint=checkpoint.id, seq=seq,
                     head_hash=head_hash, public_key=public, reason=reason, **signer)
    checkpoint.reason = reason
    return checkpoint


def witness_record(checkpoint: AuditCheckpoint) -> dict:
    """What leaves the database for a checkpoint: its head, signature and reason (no personal data)."""
    return {"format": WITNESS_FORMAT, "checkpoint": checkpoint.id, "seq": checkpoint.seq,
            "hash": checkpoint.head_hash, "signed_at": _iso(checkpoint.signed_at),
            "reason": getattr(checkpoint, "reason", None), "public_key": checkpoint.public_key,
            "signature": checkpoint.signature}


def append_witness(path: Path, record: dict) -> None:
    """Append one witness line to ``path`` (created 0640), in one write, and fsync it."""
    line = json.dumps(record, separators=(",", ":"), ensure_ascii=True) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        os.write(fd, line.encode("ascii"))  # O_APPEND and one write: lines never interleave
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_checkpoint(checkpoint: AuditCheckpoint, witness_file: Path | None = None) -> bool:
    """After the commit: one journal line with the checkpoint's head, and one line in the
    witness file when one is configured. Returns False when the witness could not be written
    (logged; the checkpoint stands)."""
    record = witness_record(checkpoint)
    log.info("audit checkpoint %d (%s): entry %d has hash %s", checkpoint.id, record["reason"], checkpoint.seq,
             checkpoint.head_hash, extra=fields(**record))
    if witness_file is None:
        return True
    try:
        append_witness(Path(witness_file), record)
    except OSError as exc:
        log.error("audit witness file %s not written: %s", witness_file, exc.strerror or exc)
        return False
    return True


@dataclass(frozen=True)
class DuePolicy:
    """When a checkpoint is due (``[audit]`` in the config) and how late it may be."""

    every_entries: int = 1000
    every_seconds: float = 300.0
    grace: float = 60.0

    @classmethod
    def from_config(cls, config) -> DuePolicy:
        a = config.audit
        return cls(a.checkpoint_every_entries, a.checkpoint_every, a.checkpoint_grace)


def checkpoint_due(every_entries: int, every_seconds: float, now: dt.datetime | None = None) -> bool:
    """Whether there is something new to sign: ``every_entries`` entries since the last
    checkpoint, or any entry (other than that checkpoint's own) and ``every_seconds``."""
    head = _sql(f"SELECT seq FROM {_ENTRIES} ORDER BY seq DESC LIMIT 1").fetchone()
    if head is None:
        return False
    last = None
    if _table_exists(_CHECKPOINTS):
        last = _sql(f"SELECT seq, signed_at FROM {_CHECKPOINTS} ORDER BY seq DESC, id DESC LIMIT 1").fetchone()
    if last is None:
        return True
    new = head[0] - last[0] - 1  # the checkpoint's own entry does not count
    if new <= 0:
        return False
    age = ((now or utcnow()) - dt.datetime.fromisoformat(_iso(last[1]))).total_seconds()
    return new >= every_entries or age >= every_seconds


class Checkpointer:
    """The server's checkpoint greenlet: signs the head at start, when due, and at stop.

    :meth:`start` signs a ``startup`` checkpoint (covering the run's ``server.start``
    record) before it returns; every ``poll`` seconds a small write through the writer
    signs a ``periodic`` one when :func:`checkpoint_due`; :meth:`stop` always signs a
    ``shutdown`` one, so a clean shutdown leaves the whole trail covered and the run
    visibly ended. Each checkpoint is published (journal line, witness file) once the
    writer has committed it. A missing or bad signing key disables it (logged) and never
    stops calls; ``audit verify`` then finds the checkpoints overdue.
    """

    def __init__(self, writer, keys_dir: Path, *, every_entries: int = 1000, every_seconds: float = 300.0,
                 poll: float | None = None, witness_file: Path | None = None, node: str | None = None):
        self.writer, self.every_entries, self.every_seconds = writer, every_entries, every_seconds
        self.node = node
        self.poll = poll if poll is not None else min(10.0, max(0.05, every_seconds / 4))
        self.witness_file = witness_file
        self._greenlet = None
        self._unpublished: list[AuditCheckpoint] = []
        self._stopped = False
        try:
            self._key = keyfiles.load_signing_key(keys_dir)
        except keyfiles.KeyFileError as exc:
            log.error("audit checkpoints disabled: %s", exc)
            self._key = None

    @classmethod
    def from_config(cls, writer, config) -> Checkpointer:
        a = config.audit
        return cls(writer, Path(config.storage.keys_dir), every_entries=a.checkpoint_every_entries,
                   every_seconds=a.checkpoint_every, witness_file=a.witness_file, node=config.server.node)

    def start(self) -> None:
        if self._key is not None:
            self._sign("startup")
            self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._key is None or self._stopped:
            return
        self._stopped = True
        if self._greenlet is not None:
            self._greenlet.kill()
            self._greenlet = None
        self._sign("shutdown")

    def _run(self) -> None:
        while True:
            gevent.sleep(self.poll)
            self._sign("periodic")

    def _sign(self, reason: str) -> None:
        self.writer.submit(lambda: self._write(reason))
        self.writer.flush()  # the writer's batch is through: committed, or rolled back and retried
        while self._unpublished:
            checkpoint = self._unpublished[0]
            try:  # in a reader thread, as every read of the server's (never on the hub: it plays the prompts)
                row = self.writer.read(lambda c=checkpoint: _sql(f"SELECT signature FROM {_CHECKPOINTS} WHERE id = ?",
                                                                 (c.id,)).fetchone(), timeout=5.0)
            except Exception as exc:  # noqa: BLE001 - the ledger is away: published at the next round
                log.warning("audit checkpoint of entry %d not published yet: %s", checkpoint.seq, exc)
                return
            self._unpublished.pop(0)
            if row is None or row[0] != checkpoint.signature:  # its batch failed: never witness a phantom
                log.warning("audit checkpoint of entry %d was rolled back; not published", checkpoint.seq)
                continue
            publish_checkpoint(checkpoint, self.witness_file)

    def _write(self, reason: str) -> None:
        try:
            lock_chain()  # another node may be signing the same head: one of us does
            if reason != "periodic" or checkpoint_due(self.every_entries, self.every_seconds):
                checkpoint = write_checkpoint(self._key, "server", reason, self.node)
                if checkpoint is not None:
                    self._unpublished.append(checkpoint)
        except Exception:
            log.exception("audit checkpoint failed")


# --- start-up: configuration and key changes ------------------------------------------


def _meta_get(key: str, fallback: str | None = None):
    row = Meta.get_or_none(Meta.key == key)
    if row is None and fallback is not None:
        row = Meta.get_or_none(Meta.key == fallback)
    return None if row is None else json.loads(row.value)


def _node_key(key: str, node: str | None) -> str:
    """What a node last saw is its own (``audit.config@fs1``): nodes differ in name and keys,
    and must not record each other's settings as changes. Before schema 4: the one key."""
    return f"{key}@{node}" if node else key


def _meta_set(key: str, value) -> None:
    text = json.dumps(value, sort_keys=True)
    if Meta.update(value=text).where(Meta.key == key).execute() == 0:
        Meta.create(key=key, value=text)


def _changes(old: dict, new: dict) -> dict:
    return {k: {"from": old.get(k), "to": new.get(k)}
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def record_config(config, actor: str = "server", node: str | None = None) -> AuditEntry | None:
    """Append ``config.change`` when the effective configuration differs from the one
    last seen (kept in the ``Meta`` table); the first time, ``config.initial``.

    ``Config.describe()`` masks database passwords and holds no personal data; the
    entry lists the keys that changed with their old and new values.
    """
    described = {k: v for k, v in config.describe()}
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()
    with database.atomic():
        seen = _meta_get(_node_key("audit.config", node), "audit.config")
        if seen is not None and seen.get("sha256") == digest:
            return None
        _meta_set(_node_key("audit.config", node), {"sha256": digest, "values": described})
        if seen is None:
            return append_audit(actor, audit_actions.CONFIG_INITIAL, "config", digest[:16], sha256=digest,
                                keys=len(described))
        return append_audit(actor, audit_actions.CONFIG_CHANGE, "config", digest[:16], sha256=digest,
                            previous_sha256=seen.get("sha256"),
                            changed=_changes(seen.get("values", {}), described))


def key_state(keys_dir: Path) -> dict:
    """Public facts about the key files: what a key change entry records (no secrets)."""
    state: dict[str, object] = {}
    try:
        state["recipients"] = sorted(keyfiles.load_recipients(keys_dir))
    except keyfiles.KeyFileError as exc:
        state["recipients"] = f"unreadable: {exc}"
    identity_path = keys_dir / keyfiles.IDENTITY_FILE
    if identity_path.exists():
        try:
            state["identity"] = str(keyfiles.load_identity(keys_dir).to_public())
        except keyfiles.KeyFileError as exc:
            state["identity"] = f"unreadable: {exc}"
    else:
        state["identity"] = None  # kept offline (write-only server)
    try:
        state["signing"] = keyfiles.signing_public_key(keyfiles.load_signing_key(keys_dir))
    except keyfiles.KeyFileError as exc:
        state["signing"] = f"unreadable: {exc}"
    try:
        field_key = keyfiles.load_field_key(keys_dir)
        state["field"] = "sha256:" + hashlib.sha256(b"fs-consent field key id\x00" + field_key).hexdigest()[:16]
    except keyfiles.KeyFileError as exc:
        state["field"] = f"unreadable: {exc}"
    return state


def record_keys(keys_dir: Path, actor: str = "server", via: str = "start-up",
                node: str | None = None) -> AuditEntry | None:
    """Append ``keys.change`` when the key files (of ``node``) differ from what was last seen."""
    state = key_state(keys_dir)
    with database.atomic():
        seen = _meta_get(_node_key("audit.keys", node), "audit.keys")
        if seen == state:
            return None
        _meta_set(_node_key("audit.keys", node), state)
        where = {"node": node} if node else {}
        return append_audit(actor, audit_actions.KEYS_CHANGE, "keys", str(keys_dir.name), via=via,
                            first=seen is None, changed=_changes(seen or {}, state), **where)


def _last_checkpoint() -> tuple[int, int] | None:
    """(id, seq) of the newest checkpoint row."""
    if not _table_exists(_CHECKPOINTS):
        return None
    return _sql(f"SELECT id, seq FROM {_CHECKPOINTS} ORDER BY seq DESC, id DESC LIMIT 1").fetchone()


def _record_after(seq: int, checkpoint_id: int) -> tuple[int, dict] | None:
    """(seq, detail) of the trail entry recording checkpoint ``checkpoint_id`` (of entry ``seq``):
    the entry right after it, written in the same transaction."""
    row = _sql(f"SELECT seq, action, detail FROM {_ENTRIES} WHERE seq > ? ORDER BY seq LIMIT 1", (seq,)).fetchone()
    if row is None or row[1] != audit_actions.AUDIT_CHECKPOINT:
        return None
    detail = _detail(row[2])
    return (row[0], detail) if detail.get("checkpoint") == checkpoint_id else None


def _detail(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


_SHUTDOWN_LIKE = '%"reason":"shutdown"%'  # append_audit's compact, sorted JSON


def _mine(detail: dict, node: str | None) -> bool:
    """An entry of ``node``'s runs: it names that node, or none (before schema 4: one node)."""
    return detail.get("node") in (node, None)


def _last_start(node: str | None) -> tuple[int] | None:
    """(seq,) of ``node``'s last ``server.start`` (backwards from the head: the other nodes'
    starts since then are skipped, one batch at a time)."""
    before = 2**62
    while True:
        rows = _sql(f"SELECT seq, detail FROM {_ENTRIES} WHERE action = ? AND seq < ? ORDER BY seq DESC LIMIT 100",
                    (audit_actions.SERVER_START, before)).fetchall()
        for seq, text in rows:
            if _mine(_detail(text), node):
                return (seq,)
        if len(rows) < 100:
            return None
        before = rows[-1][0]


def record_server_start(actor: str = "server", node: str | None = None) -> AuditEntry:
    """The first entry of a run: whether the run before it ended with a shutdown checkpoint.

    ``previous`` is ``clean`` (the last ``server.start`` is followed by a shutdown
    checkpoint), ``unclean`` (it is not: the server crashed, was killed or lost power;
    logged as a warning), ``none`` (no earlier run and no checkpoint) or ``unknown`` (no
    earlier start record, but checkpoints: a trail made by an earlier release). With it:
    the last checkpoint (id, seq, reason), how many entries the trail has after it
    (``unsigned``: after a crash, what the crash left unsigned; the startup checkpoint
    signs them now) and the seq of the head found. ``audit verify`` holds every start
    after a run without a shutdown checkpoint to say ``unclean``.

    With ``node`` (``[server] node``), the runs are that node's: its last start and its own
    shutdown checkpoint (other nodes start and stop on the same trail meanwhile).
    """
    with database.atomic():
        lock_chain()  # before the table lock below (see write_checkpoint), and the head read
        database.create_tables([AuditCheckpoint], safe=True)
        head = _sql(f"SELECT seq FROM {_ENTRIES} ORDER BY seq DESC LIMIT 1").fetchone()
        head_seq = head[0] if head else 0
        # (backwards from the head: this reads the entries since the last start, not the whole trail)
        start = _last_start(node)
        last = _last_checkpoint()
        if start is None:
            previous = "unknown" if last is not None else "none"
        else:
            previous = "unclean"
            for (text,) in _sql(f"SELECT detail FROM {_ENTRIES} WHERE seq > ? AND action = ? AND detail LIKE ? "
                                "ORDER BY seq DESC",
                                (start[0], audit_actions.AUDIT_CHECKPOINT, _SHUTDOWN_LIKE)).fetchall():
                if _detail(text).get("reason") == "shutdown" and _mine(_detail(text), node):
                    previous = "clean"
                    break
        last_checkpoint = None
        unsigned = _sql(f"SELECT COUNT(*) FROM {_ENTRIES}").fetchone()[0]  # no checkpoint: all of them
        if last is not None:
            record = _record_after(last[1], last[0])
            last_checkpoint = {"checkpoint": last[0], "seq": last[1],
                               "reason": record[1].get("reason", "unknown") if record else None}
            unsigned = _sql(f"SELECT COUNT(*) FROM {_ENTRIES} WHERE seq > ?", (last[1],)).fetchone()[0]
            unsigned -= 1 if record else 0
        where = {"node": node} if node else {}
        entry = append_audit(actor, audit_actions.SERVER_START, "server", str(os.getpid()), previous=previous,
                             previous_start=start[0] if start else None, last_checkpoint=last_checkpoint,
                             unsigned=unsigned, head_seq=head_seq, version=__version__, **where)
    if previous == "unclean":
        log.warning("the run of the server that started at audit entry %d ended without a shutdown checkpoint "
                    "(a crash, kill or power loss): %d entries after the last checkpoint were unsigned; recorded "
                    "as entry %d, the startup checkpoint signs them", start[0], unsigned, entry.seq,
                    extra=fields(previous_start=start[0], unsigned=unsigned, start_seq=entry.seq))
    return entry


def record_startup(config, actor: str = "server") -> list[AuditEntry]:
    """At server start: the run's ``server.start`` record, then the configuration and key
    changes seen since the last start."""
    node = config.server.node
    entries = [record_server_start(actor, node), record_config(config, actor, node),
               record_keys(Path(config.storage.keys_dir), actor, node=node)]
    return [e for e in entries if e is not None]


def signing_key_of(config) -> str | None:
    """This node's checkpoint key (ed25519:...), or None when it cannot be read."""
    try:
        return keyfiles.signing_public_key(keyfiles.load_signing_key(Path(config.storage.keys_dir)))
    except keyfiles.KeyFileError:
        return None


# --- reading the trail in batches -----------------------------------------------------


_canonical = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode


def digest_of(prev_hash: str, at: str, actor: str, action: str, object_type: str, object_id: str,
              detail: str) -> str:
    """``ledger.entry_digest`` with ``at`` already as text (the verifier's hot path; the
    tests hold the two equal)."""
    canonical = _canonical([at, actor, action, object_type, object_id, detail])
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


class Entry(NamedTuple):
    seq: int
    at: str  # exactly the text hashed
    actor: str
    action: str
    object_type: str
    object_id: str
    detail: str
    prev_hash: str
    hash: str

    def digest(self) -> str:
        return digest_of(self.prev_hash, self.at, self.actor, self.action, self.object_type, self.object_id,
                         self.detail)


class Checkpoint(NamedTuple):
    id: int
    seq: int
    head_hash: str
    signed_at: str
    public_key: str
    signature: str

    def signature_valid(self) -> bool:
        try:
            key = Ed25519PublicKey.from_public_bytes(decode_public_key(self.public_key))
            key.verify(base64.b64decode(self.signature, validate=True),
                       checkpoint_message(self.seq, self.head_hash, self.signed_at))
        except (ValueError, binascii.Error, InvalidSignature):
            return False
        return True


def decode_public_key(text: str) -> bytes:
    """``ed25519:<base64>`` -> 32 raw bytes (ValueError if it is not one)."""
    prefix, _, b64 = text.strip().partition(":")
    if prefix != "ed25519":
        raise ValueError(f"not an ed25519:<base64> public key: {text[:20]!r}")
    raw = base64.b64decode(b64, validate=True)
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key has 32 bytes")
    return raw


def iter_entries(first: int | None = None, last: int | None = None, batch: int = BATCH) -> Iterator[Entry]:
    """Entries in seq order, ``first`` <= seq <= ``last``, read ``batch`` rows at a time."""
    after = (first - 1) if first is not None else -(2**62)
    upper = last if last is not None else 2**62
    while True:
        rows = _sql(
            f"SELECT seq, at, actor, action, object_type, object_id, detail, prev_hash, hash FROM {_ENTRIES} "
            "WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?", (after, upper, batch)).fetchall()
        for r in rows:
            yield Entry(r[0], _iso(r[1]), *r[2:])
        if len(rows) < batch:
            return
        after = rows[-1][0]


def iter_checkpoints(first: int | None = None, last: int | None = None, batch: int = BATCH) -> Iterator[Checkpoint]:
    """Checkpoints in (seq, id) order whose seq lies in [first, last]."""
    if not _table_exists(_CHECKPOINTS):
        return
    seq, ident = ((first - 1) if first is not None else -(2**62)), 2**62
    upper = last if last is not None else 2**62
    while True:
        rows = _sql(
            f"SELECT id, seq, head_hash, signed_at, public_key, signature FROM {_CHECKPOINTS} "
            "WHERE (seq > ? OR (seq = ? AND id > ?)) AND seq <= ? ORDER BY seq, id LIMIT ?",
            (seq, seq, ident, upper, batch)).fetchall()
        for r in rows:
            yield Checkpoint(r[0], r[1], r[2], _iso(r[3]), r[4], r[5])
        if len(rows) < batch:
            return
        ident, seq = rows[-1][0], rows[-1][1]


def _entry_with_hash(value: str) -> int | None:
    """The seq of the entry whose hash is ``value`` (0 for the genesis hash); a full scan."""
    if value == GENESIS_HASH:
        return 0
    row = _sql(f"SELECT seq FROM {_ENTRIES} WHERE hash = ? ORDER BY seq LIMIT 1", (value,)).fetchone()
    return None if row is None else row[0]


# --- the witness: checkpoint heads kept outside the database ------------------------------


class WitnessError(ValueError):
    """A witness line that claims to be a checkpoint head but cannot be read (names file:line)."""


class WitnessedHead(NamedTuple):
    where: str  # FILE:LINE
    checkpoint: int | None
    seq: int
    hash: str
    signed_at: str | None
    reason: str | None
    public_key: str | None
    signature: str | None


_KV = re.compile(r'([A-Za-z_][A-Za-z0-9_.-]*)=("(?:[^"\\]|\\.)*"|[^\s"]*)')
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _kv_fields(text: str) -> dict:
    out = {}
    for key, value in _KV.findall(text):
        if value.startswith('"'):
            value = re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r", "t": "\t"}.get(m.group(1), m.group(1)),
                           value[1:-1])
        out[key] = value
    return out


def read_witness(lines: Iterable[str], name: str) -> Iterator[WitnessedHead]:
    """The checkpoint heads in a witness: the ``[audit] witness_file`` (one JSON object per
    line), or the server's journal lines (``logging.format`` kv or json, with or without
    journalctl's prefix). Lines without the witness format's name are skipped."""
    for number, line in enumerate(lines, start=1):
        if WITNESS_FORMAT not in line:
            continue
        where = f"{name}:{number}"
        text = line.strip()
        record: dict = {}
        if "{" in text:
            try:
                record = json.loads(text[text.index("{"):])
            except ValueError:
                record = {}
        if not isinstance(record, dict) or record.get("format") != WITNESS_FORMAT:
            record = _kv_fields(text)
        if record.get("format") != WITNESS_FORMAT:
            raise WitnessError(f"{where}: names {WITNESS_FORMAT} but is no witness record")
        try:
            seq = int(record["seq"])
            head = str(record["hash"])
        except (KeyError, TypeError, ValueError):
            raise WitnessError(f"{where}: a witness record needs seq and hash") from None
        if seq < 1 or not _HEX64.fullmatch(head):
            raise WitnessError(f"{where}: seq must be a positive number and hash 64 lower-case hex digits")
        checkpoint = record.get("checkpoint")
        yield WitnessedHead(where, int(checkpoint) if str(checkpoint).isdigit() else None, seq, head,
                            *(None if record.get(k) in (None, "", "none") else str(record[k])
                              for k in ("signed_at", "reason", "public_key", "signature")))


# --- verification -----------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    seq: int  # the entry (or the checkpoint's seq) at fault
    kind: str  # edited | missing | inserted | reordered | broken-link | rewritten | checkpoint-* |
    # unclean-stop | overdue | cut | witness-*
    message: str

    def __str__(self) -> str:
        return f"seq {self.seq}: {self.kind}: {self.message}"


@dataclass
class Verification:
    entries: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    checkpoints: int = 0
    last_checkpoint_seq: int | None = None
    faults: list[Fault] = field(default_factory=list)
    more_faults: int = 0  # beyond the ones kept
    public_keys: tuple[str, ...] = ()
    uncovered: int = 0  # entries after the last checkpoint (not counting its own audit.checkpoint record)
    server_state: str = "unknown"  # what the verifier was told or found: running | stopped | unknown
    server: str = ""  # one line: the server's last run as the trail shows it
    notes: list[str] = field(default_factory=list)  # unclean stops the restarts recorded, and the like
    unclean_stops: int = 0
    witnessed: int | None = None  # witnessed checkpoints checked (None: no witness given)
    witness_last_seq: int | None = None

    @property
    def ok(self) -> bool:
        return not self.faults

    @property
    def first_bad(self) -> Fault | None:
        return min(self.faults, key=lambda f: f.seq) if self.faults else None

    def summary(self) -> str:
        if not self.ok:
            total = len(self.faults) + self.more_faults
            return f"first bad entry: {self.first_bad} ({total} fault(s) in {self.entries} entries)"
        if not self.entries:
            return "the audit trail is empty"
        tail = (f"the last one covers seq {self.last_checkpoint_seq}" if self.last_checkpoint_seq
                else "none yet")
        return (f"{self.entries} entries (seq {self.first_seq}..{self.last_seq}) chain from genesis; "
                f"{self.checkpoints} signed checkpoints valid, {tail}"
                + (f"; {self.uncovered} newer entries are protected by the chain only" if self.uncovered
                   else "; the whole trail is signed"))

    def details(self) -> list[str]:
        """The lines after the summary: the server's runs, notes, the witness."""
        lines = [f"server: {self.server}"] if self.server else []
        lines += [f"note: {n}" for n in self.notes]
        if self.witnessed is not None:
            lines.append(f"witness: {self.witnessed} checkpoint heads" + (
                f" up to seq {self.witness_last_seq}" if self.witness_last_seq else "") + (
                ", every one in the trail" if not any(f.kind.startswith("witness") for f in self.faults) else ""))
        return lines


class _Run(NamedTuple):
    seq: int  # its server.start entry
    at: str


def _time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


class _Verifier:
    MAX_FAULTS = 100
    MAX_NOTES = 20

    def __init__(self, trusted: set[str], pins: dict[int, str], policy: DuePolicy, server_state: str,
                 now: dt.datetime | None, node_states: dict[str | None, str] | None = None,
                 key_names: dict[str, str] | None = None):
        if server_state not in SERVER_STATES:
            raise ValueError(f"server_state must be one of {', '.join(SERVER_STATES)}, got {server_state!r}")
        self.trusted, self.pins = trusted, dict(pins)
        self.policy, self.now = policy, now
        self.result = Verification(public_keys=tuple(sorted(trusted)), server_state=server_state)
        self._classified = False
        self._good_checkpoint_seq = 0  # the newest checkpoint whose head matched
        self._last_checkpoint: Checkpoint | None = None  # ... and that checkpoint
        # node -> its run that has not (yet) ended with a shutdown checkpoint (None: before schema 4)
        self._runs: dict[str | None, _Run] = {}
        # what is known of each node (``running``, ``stopped``, ``unknown``); the others: ``server_state``
        self.node_states = dict(node_states or {})
        self.key_names = dict(key_names or {})  # signing key -> the node that registered it
        self._shutdown: tuple[int, int, str] | None = None  # (record seq, checkpoint id, at) of the last one

    def fault(self, seq: int, kind: str, message: str) -> None:
        if len(self.result.faults) < self.MAX_FAULTS:
            self.result.faults.append(Fault(seq, kind, message))
        else:
            self.result.more_faults += 1

    def note(self, message: str) -> None:
        if len(self.result.notes) < self.MAX_NOTES:
            self.result.notes.append(message)
        elif len(self.result.notes) == self.MAX_NOTES:
            self.result.notes.append("... and more")

    def run(self, entries: Iterator[Entry], checkpoints: Iterator[Checkpoint],
            progress: Callable[[int], None] | None, witness: Iterable[WitnessedHead] | None = None) -> Verification:
        r = self.result
        prev_hash, prev_seq = GENESIS_HASH, 0
        pending = next(checkpoints, None)
        for n, e in enumerate(entries, start=1):
            # checkpoints (and pins) for seqs the trail no longer has
            while pending is not None and pending.seq < e.seq:
                self._checkpoint(pending, None, prev_seq + 1)
                pending = next(checkpoints, None)
            for seq in [s for s in self.pins if s < e.seq]:
                self.fault(seq, "missing", f"entry {seq} is pinned (--pin) but the trail has no entry {seq}")
                del self.pins[seq]
            if e.digest() != e.hash:  # (an edited prev_hash also breaks the link: this explains it)
                self.fault(e.seq, "edited", f"entry {e.seq} ({e.action}) does not match its hash: "
                                            "its content, prev_hash or hash was changed")
                if e.seq > prev_seq + 1:
                    self._link(e, prev_hash, prev_seq)
            else:
                self._link(e, prev_hash, prev_seq)
            while pending is not None and pending.seq == e.seq:
                self._checkpoint(pending, e, e.seq)
                pending = next(checkpoints, None)
            if e.seq in self.pins:
                if self.pins.pop(e.seq) != e.hash:
                    self.fault(e.seq, "rewritten", f"entry {e.seq} does not have the pinned hash")
            if e.action == audit_actions.AUDIT_CHECKPOINT:
                detail = self._recorded_checkpoint(e)
                if detail.get("reason") == "shutdown" and self._take_run(detail.get("node")) is not None:
                    self._shutdown = (e.seq, detail.get("checkpoint"), e.at)
            elif e.action == audit_actions.SERVER_START:
                self._start(e)
            prev_hash, prev_seq = e.hash, e.seq
            r.entries += 1
            r.first_seq = e.seq if r.first_seq is None else r.first_seq
            r.last_seq = e.seq
            if progress is not None and n % BATCH == 0:
                progress(BATCH)
        while pending is not None:  # checkpoints beyond the end: the tail was cut off
            self._checkpoint(pending, None, prev_seq + 1)
            pending = next(checkpoints, None)
        covered = r.last_checkpoint_seq or 0
        record = None
        if r.entries:
            if self._last_checkpoint is not None:
                record = _record_after(covered, self._last_checkpoint.id)
                if prev_seq == covered:  # written with it, in one transaction: only a cut removes it
                    self.fault(covered + 1, "missing",
                               f"entry {covered + 1}, the record of checkpoint #{self._last_checkpoint.id} "
                               f"(seq {covered}), is missing: the trail was cut right after its last checkpoint")
            r.uncovered = (_sql(f"SELECT COUNT(*) FROM {_ENTRIES} WHERE seq > ?", (covered,)).fetchone()[0]
                           - (1 if record else 0))
        for seq in sorted(self.pins):
            self.fault(prev_seq + 1, "missing", f"entries {prev_seq + 1}..{seq} are missing: the trail ends at "
                                                f"{prev_seq} but entry {seq} is pinned (--pin)")
        if r.entries:
            self._end_of_trail(record)
        if witness is not None:
            self._witness(witness)
        if progress is not None:
            progress(r.entries % BATCH)
        return r

    # --- the server's runs ------------------------------------------------------------

    def _state_of(self, node: str | None) -> str:
        return self.node_states.get(node, self.result.server_state)

    def _take_run(self, node: str | None) -> _Run | None:
        """End ``node``'s open run (or, for a named node, a run from before schema 4: one node then)."""
        run = self._runs.pop(node, None)
        if run is None and node is not None:
            run = self._runs.pop(None, None)
        return run

    def _start(self, e: Entry) -> None:
        detail = _detail(e.detail)
        previous, node = detail.get("previous"), detail.get("node")
        run = self._take_run(node)
        if run is not None:
            if previous == "unclean":
                self.result.unclean_stops += 1
                self.note(f"the run started at seq {run.seq} ({run.at}Z) ended without a shutdown "
                          f"checkpoint (a crash, kill or power loss); the start at seq {e.seq} ({e.at}Z) recorded "
                          "the unclean stop, and its startup checkpoint signs what the crash left")
            else:
                self.fault(e.seq, "unclean-stop",
                           f"the run started at seq {run.seq} has no shutdown checkpoint, yet the start at "
                           f"seq {e.seq} says the stop before it was {previous!r}: entries between them were cut "
                           "(its shutdown checkpoint with them), or the start record is forged")
        elif previous == "unclean":
            self.note(f"the start at seq {e.seq} recorded an unclean stop, but the trail shows a shutdown "
                      "checkpoint after the run before it")
        self._runs[node] = _Run(e.seq, e.at)

    def _uncovered(self, offset: int, where: str = "", params: tuple = ()) -> tuple[int, str, str] | None:
        """(seq, at, action) of an entry after the last checkpoint (its own record skipped)."""
        covered = self.result.last_checkpoint_seq or 0
        return _sql(f"SELECT seq, at, action FROM {_ENTRIES} WHERE seq > ? {where} ORDER BY seq LIMIT 1 OFFSET ?",
                    (covered, *params, offset)).fetchone()

    def _due_by(self, skip: int) -> tuple[dt.datetime, str] | None:
        """When the next checkpoint was or is due, and why; None when nothing is unsigned."""
        first = self._uncovered(skip)
        if first is None:
            return None
        p, cp = self.policy, self._last_checkpoint
        first_at = _time(_iso(first[1]))
        if cp is None:
            candidates = [(first_at, "a run's startup checkpoint is due at once")]
        else:
            candidates = [(max(_time(cp.signed_at) + dt.timedelta(seconds=p.every_seconds), first_at),
                           f"every {_seconds(p.every_seconds)} while anything is new")]
        start = self._uncovered(0, "AND action = ?", (audit_actions.SERVER_START,))
        if start is not None:
            candidates.append((_time(_iso(start[1])), f"the start at seq {start[0]} is signed at once"))
        nth = self._uncovered(skip + p.every_entries - 1)
        if nth is not None:
            candidates.append((_time(_iso(nth[1])), f"every {p.every_entries} entries"))
        return min(candidates)

    def _end_of_trail(self, record) -> None:
        r, cp = self.result, self._last_checkpoint
        runs = sorted(self._runs.items(), key=lambda item: item[1].seq)
        state, last = r.server_state, r.last_seq
        if cp is None:
            signed = "no checkpoint"
        else:
            signed = f"the last checkpoint (#{cp.id}, seq {cp.seq}, signed {cp.signed_at}Z"
            signed += f", {record[1].get('reason', 'no reason')})" if record else ")"
        unsigned = (f"{r.uncovered} entries after {signed} are not signed" if r.uncovered
                    else f"the trail ends at {signed}")
        if not runs:
            if self._shutdown is not None:
                seq, ident, at = self._shutdown
                r.server = f"stopped cleanly at seq {seq} (shutdown checkpoint #{ident}, {at}Z)"
                where = f"after its last shutdown checkpoint (#{ident}, seq {seq})"
            else:
                r.server = "no start record in the trail (written by an earlier release, or by commands only)"
                where = "in the trail"
            if state == "running":
                self.fault(last + 1, "cut", f"the server is running, but there is no start record {where}: "
                                            f"the trail was cut back to seq {last} while it ran")
            elif r.uncovered:
                r.server += (f"; {r.uncovered} later entries, added by commands, are protected by the chain only "
                             "until the server's next start signs them (or `fs-consent audit checkpoint`)")
            return
        skip = 1 if record else 0
        many = len(runs) > 1
        live = []
        for node, run in runs:
            state = self._state_of(node)
            who = f"node {node or '(unnamed)'}" if many else "the server"
            began = f"{'its' if not many else who + chr(39) + 's'} run started at seq {run.seq} ({run.at}Z)"
            if state == "stopped":
                self.fault((cp.seq + 1) if cp is not None else run.seq, "unclean-stop",
                           f"{who} is not running, but {began} has no shutdown checkpoint; {unsigned}: {who} "
                           f"crashed or was killed (its next start records an unclean stop), or the trail was cut "
                           f"after seq {last}, shutdown checkpoint included (--witness tells a cut of witnessed "
                           "heads)")
                continue
            live.append((node, run, state, who))
        if not live:
            return
        due = self._due_by(skip)
        now = self.now or utcnow()
        if due is not None and now > due[0] + dt.timedelta(seconds=self.policy.grace):
            self.fault(self._uncovered(skip)[0], "overdue",
                       f"{unsigned}; a checkpoint was due by {due[0].isoformat(timespec='seconds')}Z ({due[1]}, "
                       f"grace {_seconds(self.policy.grace)}): the server is not signing (its signing key? see "
                       f"`fs-consent check`), it stopped without a shutdown checkpoint (a crash: its next start "
                       f"records it), or the trail was cut after seq {last}")
            return
        lines = []
        for node, run, state, who in live:
            running = "running since seq" if state == "running" else "a run started at seq"
            line = f"{running} {run.seq} ({run.at}Z)"
            if state == "unknown":
                line += (f" has not ended with a shutdown checkpoint: {who} is running, or it crashed "
                         "(pass --server-state stopped when it is not running)")
            lines.append(f"{node}: {line}" if many else line)
        r.server = "; ".join(lines)
        if due is not None:
            r.server += (f"; {r.uncovered} entries after the last checkpoint, the next is due by "
                         f"{due[0].isoformat(timespec='seconds')}Z")

    # --- the witness ------------------------------------------------------------------

    def _witness(self, witness: Iterable[WitnessedHead]) -> None:
        r = self.result
        r.witnessed, last = 0, r.last_seq or 0
        beyond: list[WitnessedHead] = []  # heads past the end of the trail: one fault for them all
        for w in witness:
            r.witnessed += 1
            r.witness_last_seq = max(r.witness_last_seq or 0, w.seq)
            name = f"the witnessed checkpoint{f' #{w.checkpoint}' if w.checkpoint else ''} of entry {w.seq}" + (
                f" ({w.reason}, signed {w.signed_at}Z)" if w.reason and w.signed_at else "") + f" [{w.where}]"
            if w.signature and w.signed_at and w.public_key:
                if w.public_key not in self.trusted:
                    self.fault(w.seq, "witness-untrusted", f"{name} is signed by {w.public_key}, not a trusted key")
                    continue
                if not Checkpoint(0, w.seq, w.hash, w.signed_at, w.public_key, w.signature).signature_valid():
                    self.fault(w.seq, "witness-forged", f"{name} has an invalid signature")
                    continue
            if w.seq > last:
                beyond.append(w)
                continue
            row = _sql(f"SELECT hash FROM {_ENTRIES} WHERE seq = ?", (w.seq,)).fetchone()
            if row is None:
                self.fault(w.seq, "witness-missing", f"entry {w.seq} is missing: {name} covers it")
            elif row[0] != w.hash:
                self.fault(w.seq, "witness-rewritten", f"entry {w.seq} is not the one {name} signed")
            elif not _table_exists(_CHECKPOINTS) or _sql(
                    f"SELECT COUNT(*) FROM {_CHECKPOINTS} WHERE seq = ? AND head_hash = ?",
                    (w.seq, w.hash)).fetchone()[0] == 0:
                self.fault(w.seq, "witness-missing", f"{name} is not in the trail's checkpoints: deleted")
        if beyond:
            top = max(beyond, key=lambda w: w.seq)
            self.fault(last + 1, "witness-missing",
                       f"entries {last + 1}..{top.seq + 1} are missing: the trail ends at seq {last}, but the "
                       f"witness has "
                       f"{len(beyond)} checkpoint(s) after it, the last of entry {top.seq}"
                       + (f" ({top.reason}, signed {top.signed_at}Z)" if top.reason and top.signed_at else "")
                       + f" [{top.where}]: the tail was cut (or the database restored from an older backup)")

    # --- entries and checkpoints -----------------------------------------------------------

    def _link(self, e: Entry, prev_hash: str, prev_seq: int) -> None:
        if e.prev_hash == prev_hash:
            return  # (a gap in seq with an intact link is a skipped sequence number, not a deletion)
        if e.seq > prev_seq + 1:
            first, last = prev_seq + 1, e.seq - 1
            span = f"entry {first} is" if first == last else f"entries {first}..{last} are"
            self.fault(first, "missing", f"{span} missing: entry {e.seq} does not follow entry {prev_seq}")
            return
        if self._classified:  # explain the first break; the rest only follow from it
            self.fault(e.seq, "broken-link", f"entry {e.seq} does not follow entry {prev_seq}")
            return
        self._classified = True
        found = _entry_with_hash(e.prev_hash)
        if found is None:
            self.fault(prev_seq if prev_seq else e.seq, "broken-link",
                       f"entry {e.seq} does not follow entry {prev_seq}: the hash it chains to is in no entry "
                       f"(entry {prev_seq} was rewritten, or an entry between them was deleted and the rest renumbered)")
        elif found < prev_seq:
            span = f"entry {found + 1} was" if found + 1 == prev_seq else f"entries {found + 1}..{prev_seq} were"
            self.fault(found + 1, "inserted", f"{span} inserted: entry {e.seq} follows entry {found}")
        elif found > e.seq:
            self.fault(e.seq, "reordered", f"entry {e.seq} is out of order: it chains to entry {found}, after it")
        else:
            self.fault(e.seq, "broken-link", f"entry {e.seq} does not follow entry {prev_seq}")

    def _checkpoint(self, cp: Checkpoint, e: Entry | None, missing_from: int) -> None:
        r = self.result
        r.checkpoints += 1
        name = f"checkpoint #{cp.id} (seq {cp.seq}, signed {cp.signed_at}Z)"
        if cp.public_key not in self.trusted:
            signer = self.key_names.get(cp.public_key)
            by = f"node {signer}'s key {cp.public_key}" if signer else cp.public_key
            self.fault(cp.seq, "checkpoint-untrusted",
                       f"{name} is signed by {by}, not a trusted key (trust a node's key with [audit] trusted_keys "
                       "or --public-key: `fs-consent keys signing-key` on that node prints it)")
        elif not cp.signature_valid():
            self.fault(cp.seq, "checkpoint-forged", f"{name} has an invalid signature")
        elif e is None:
            span = f"entry {cp.seq} is" if missing_from >= cp.seq else f"entries {missing_from}..{cp.seq} are"
            self.fault(min(missing_from, cp.seq), "missing",
                       f"{span} missing: {name} covers entry {cp.seq} (deleted, or the tail was cut off)")
        elif cp.head_hash != e.hash:
            self.fault(cp.seq, "rewritten", f"entry {cp.seq} is not the one {name} signed: the trail from entry "
                                            f"{self._good_checkpoint_seq + 1} to {cp.seq} was rewritten")
        else:
            self._good_checkpoint_seq = cp.seq
            r.last_checkpoint_seq = max(r.last_checkpoint_seq or 0, cp.seq)
            self._last_checkpoint = cp  # (in (seq, id) order: the newest good one so far)

    def _recorded_checkpoint(self, e: Entry) -> dict:
        """Check that the checkpoint an ``audit.checkpoint`` entry records exists; its detail."""
        detail = _detail(e.detail)
        try:
            ident, seq, head = int(detail["checkpoint"]), int(detail["seq"]), detail["head_hash"]
        except (ValueError, KeyError, TypeError):
            return {}  # an edited entry: already reported by its hash
        row = None
        if _table_exists(_CHECKPOINTS):
            row = _sql(f"SELECT seq, head_hash FROM {_CHECKPOINTS} WHERE id = ?", (ident,)).fetchone()
        if row is None or (row[0], row[1]) != (seq, head):
            self.fault(seq, "checkpoint-deleted",
                       f"checkpoint #{ident} of entry {seq}, recorded by entry {e.seq}, is missing or changed")
        return detail


def trusted_keys(keys_dir: Path, extra: tuple[str, ...] = ()) -> set[str]:
    """The installation's signing key (if this user can read it) plus ``extra`` keys."""
    trusted = {k.strip() for k in extra}
    for key in trusted:
        decode_public_key(key)  # ValueError for a malformed one
    try:
        trusted.add(keyfiles.signing_public_key(keyfiles.load_signing_key(keys_dir)))
    except keyfiles.KeyFileError:
        if not trusted:
            raise
    return trusted


def verify_trail(trusted: set[str], *, pins: dict[int, str] | None = None, batch: int = BATCH,
                 progress: Callable[[int], None] | None = None, policy: DuePolicy | None = None,
                 server_state: str = "unknown", now: dt.datetime | None = None,
                 witness: Iterable[WitnessedHead] | None = None, node_states: dict[str | None, str] | None = None,
                 key_names: dict[str, str] | None = None) -> Verification:
    """Check the whole trail from genesis, every checkpoint's signature (by a ``trusted``
    key) and that each checkpointed head is still in the chain at its seq; that the trail
    does not stop short of a due checkpoint (``policy``; ``server_state`` says whether the
    server is running, ``now`` is naive UTC); and, with a ``witness``, that every witnessed
    checkpoint head is in the trail. The server's runs are followed per node (the ``node`` of
    each ``server.start`` and shutdown checkpoint); ``node_states`` says what is known of each
    node (the others are ``server_state``); ``key_names`` names the node of a signing key."""
    verifier = _Verifier(trusted, pins or {}, policy or DuePolicy(), server_state, now, node_states, key_names)
    return verifier.run(iter_entries(batch=batch), iter_checkpoints(batch=batch), progress, witness)


def _seconds(value: float) -> str:
    return format_duration(value)


def count_entries() -> int:
    return _sql(f"SELECT COUNT(*) FROM {_ENTRIES}").fetchone()[0]


# --- export ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportRange:
    first: int | None  # None: nothing to export
    last: int | None
    count: int


def export_range(since: dt.datetime | None, until: dt.datetime | None) -> ExportRange:
    """The contiguous seq range from the first entry with ``at >= since`` to the last with
    ``at < until`` (naive UTC; None: open end). A range, not a filter: the chain must be whole."""
    query = AuditEntry.select(fn.MIN(AuditEntry.seq), fn.MAX(AuditEntry.seq))
    if since is not None:
        query = query.where(AuditEntry.at >= since)
    if until is not None:
        query = query.where(AuditEntry.at < until)
    first, last = query.tuples().get()
    if first is None:
        return ExportRange(None, None, 0)
    count = _sql(f"SELECT COUNT(*) FROM {_ENTRIES} WHERE seq >= ? AND seq <= ?", (first, last)).fetchone()[0]
    return ExportRange(first, last, count)


def _entry_records(rng: ExportRange, batch: int) -> Iterator[dict]:
    if rng.first is None:
        return
    for e in iter_entries(rng.first, rng.last, batch):
        yield {"record": "entry", "seq": e.seq, "at": e.at, "actor": e.actor, "action": e.action,
               "object_type": e.object_type, "object_id": e.object_id, "detail": e.detail,
               "prev_hash": e.prev_hash, "hash": e.hash}


def _checkpoint_records(rng: ExportRange, batch: int) -> Iterator[dict]:
    if rng.first is None:
        return
    for c in iter_checkpoints(rng.first, rng.last, batch):
        yield {"record": "checkpoint", "seq": c.seq, "hash": c.head_hash, "signed_at": c.signed_at,
               "public_key": c.public_key, "signature": c.signature}


def export_header(rng: ExportRange, since, until, actor: str, public_key: str | None) -> dict:
    prev, from_genesis = None, False
    if rng.first is not None:
        prev = _sql(f"SELECT prev_hash FROM {_ENTRIES} WHERE seq = ?", (rng.first,)).fetchone()[0]
        from_genesis = _sql(f"SELECT COUNT(*) FROM {_ENTRIES} WHERE seq < ?", (rng.first,)).fetchone()[0] == 0
    return {
        "record": "header", "format": FORMAT, "genesis_hash": GENESIS_HASH,
        "from_genesis": from_genesis, "first_seq": rng.first, "last_seq": rng.last,
        "entries": rng.count, "first_prev_hash": prev,
        "since": since.isoformat() if since else None, "until": until.isoformat() if until else None,
        "exported_at": utcnow().isoformat(), "exported_by": actor, "public_key": public_key,
    }


def write_export(out: TextIO, fmt: str, rng: ExportRange, header: dict, *, batch: int = BATCH,
                 progress: Callable[[int], None] | None = None) -> int:
    """Stream the trail in ``fmt`` to ``out``: the header, the entries in seq order, then
    the checkpoints covering them. Returns the number of records written."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}")
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    counter = _Counter(progress)
    if fmt == "jsonl":
        out.write(dumps(header) + "\n")
        for rec in counter(itertools.chain(_entry_records(rng, batch), _checkpoint_records(rng, batch))):
            out.write(dumps(rec) + "\n")
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        writer.writerow(["header" if c == "record" else dumps(header) if c == "detail" else "" for c in CSV_COLUMNS])
        for rec in counter(itertools.chain(_entry_records(rng, batch), _checkpoint_records(rng, batch))):
            writer.writerow(["" if rec.get(c) is None else rec[c] for c in CSV_COLUMNS])
    else:  # one JSON document, written piece by piece
        out.write('{"header":' + dumps(header))
        for name, records in (("entries", _entry_records(rng, batch)),
                              ("checkpoints", _checkpoint_records(rng, batch))):
            out.write(f',\n"{name}":[')
            sep = "\n"
            for rec in counter(records):
                out.write(sep + dumps(rec))
                sep = ",\n"
            out.write("\n]")
        out.write("}\n")
    counter.done()
    return counter.n + 1


class _Counter:
    """Counts records passing through and reports progress every BATCH of them."""

    def __init__(self, progress: Callable[[int], None] | None):
        self.progress, self.n, self._reported = progress, 0, 0

    def __call__(self, records: Iterator[dict]) -> Iterator[dict]:
        for rec in records:
            self.n += 1
            if self.progress is not None and self.n - self._reported >= BATCH:
                self.progress(self.n - self._reported)
                self._reported = self.n
            yield rec

    def done(self) -> None:
        if self.progress is not None and self.n > self._reported:
            self.progress(self.n - self._reported)
            self._reported = self.n
