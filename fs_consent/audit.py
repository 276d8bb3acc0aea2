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

Each checkpoint is itself recorded in the trail (action ``audit.checkpoint``), so
deleting a checkpoint row is detected too, and its head is logged (journald keeps a
copy outside the database). Entries after the last checkpoint are protected by the
chain only: a cut that removes them *and* the checkpoints covering them can only be
detected against a head kept elsewhere (an earlier export, the log, ``--pin``).

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TextIO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from peewee import AutoField, CharField, DateTimeField, IntegerField, fn

from . import keys as keyfiles
from .ledger import (
    GENESIS_HASH,
    MODELS,
    AuditEntry,
    BaseModel,
    Meta,
    append_audit,
    database,
    utcnow,
)

log = logging.getLogger(__name__)

FORMAT = "fs-consent-audit/1"
CHECKPOINT_DOMAIN = "fs-consent-audit-checkpoint/1"
CHECKPOINT_ACTION = "audit.checkpoint"
EXPORT_FORMATS = ("jsonl", "json", "csv")
# one row layout for every record in the csv export (and the key order of the json ones)
CSV_COLUMNS = ("record", "seq", "at", "actor", "action", "object_type", "object_id", "detail",
               "prev_hash", "hash", "signed_at", "public_key", "signature")
BATCH = 5000


class AuditCheckpoint(BaseModel):
    """A signed statement "the trail's entry ``seq`` has hash ``head_hash``"."""

    id = AutoField()
    seq = IntegerField(index=True)  # the newest entry covered
    head_hash = CharField()  # its hash
    signed_at = DateTimeField()  # UTC
    public_key = CharField()  # ed25519:<base64>, as keys.signing_public_key
    signature = CharField()  # base64 Ed25519 signature over checkpoint_message()


if AuditCheckpoint not in MODELS:
    MODELS.append(AuditCheckpoint)

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


def write_checkpoint(signing_key: Ed25519PrivateKey, actor: str) -> AuditCheckpoint | None:
    """Sign the current head; None when the trail is empty. Runs in one transaction."""
    public = keyfiles.signing_public_key(signing_key)
    with database.atomic():
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
        append_audit(actor, CHECKPOINT_ACTION, "audit", str(seq), checkpoint=checkpoint.id, seq=seq,
                     head_hash=head_hash, public_key=public)
    log.info("audit checkpoint %d: entry %d has hash %s (signed by %s)", checkpoint.id, seq, head_hash, public)
    return checkpoint


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
    """The server's checkpoint greenlet: now and then, sign the head through the writer.

    Every ``poll`` seconds it queues a small write that checkpoints when
    :func:`checkpoint_due`; :meth:`stop` queues a final one, so a clean shutdown leaves
    the whole trail covered. A missing or bad signing key disables it (logged) and
    never stops calls.
    """

    def __init__(self, writer, keys_dir: Path, *, every_entries: int = 1000, every_seconds: float = 300.0,
                 poll: float = 10.0):
        self.writer, self.every_entries, self.every_seconds, self.poll = writer, every_entries, every_seconds, poll
        self._greenlet = None
        try:
            self._key = keyfiles.load_signing_key(keys_dir)
        except keyfiles.KeyFileError as exc:
            log.error("audit checkpoints disabled: %s", exc)
            self._key = None

    def start(self) -> None:
        import gevent

        if self._key is not None:
            self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill()
            self._greenlet = None
            self.writer.submit(lambda: self._write(final=True))
            self.writer.flush()

    def _run(self) -> None:
        import gevent

        while True:
            gevent.sleep(self.poll)
            self.writer.submit(self._write)

    def _write(self, final: bool = False) -> None:
        try:
            if checkpoint_due(1 if final else self.every_entries, 0 if final else self.every_seconds):
                write_checkpoint(self._key, "server")
        except Exception:
            log.exception("audit checkpoint failed")


# --- start-up: configuration and key changes ------------------------------------------


def _meta_get(key: str):
    row = Meta.get_or_none(Meta.key == key)
    return None if row is None else json.loads(row.value)


def _meta_set(key: str, value) -> None:
    text = json.dumps(value, sort_keys=True)
    if Meta.update(value=text).where(Meta.key == key).execute() == 0:
        Meta.create(key=key, value=text)


def _changes(old: dict, new: dict) -> dict:
    return {k: {"from": old.get(k), "to": new.get(k)}
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def record_config(config, actor: str = "server") -> AuditEntry | None:
    """Append ``config.change`` when the effective configuration differs from the one
    last seen (kept in the ``Meta`` table); the first time, ``config.initial``.

    ``Config.describe()`` masks database passwords and holds no personal data; the
    entry lists the keys that changed with their old and new values.
    """
    described = {k: v for k, v in config.describe()}
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()
    with database.atomic():
        seen = _meta_get("audit.config")
        if seen is not None and seen.get("sha256") == digest:
            return None
        _meta_set("audit.config", {"sha256": digest, "values": described})
        if seen is None:
            return append_audit(actor, "config.initial", "config", digest[:16], sha256=digest,
                                keys=len(described))
        return append_audit(actor, "config.change", "config", digest[:16], sha256=digest,
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


def record_keys(keys_dir: Path, actor: str = "server", via: str = "start-up") -> AuditEntry | None:
    """Append ``keys.change`` when the key files differ from what was last seen."""
    state = key_state(keys_dir)
    with database.atomic():
        seen = _meta_get("audit.keys")
        if seen == state:
            return None
        _meta_set("audit.keys", state)
        return append_audit(actor, "keys.change", "keys", str(keys_dir.name), via=via,
                            first=seen is None, changed=_changes(seen or {}, state))


def record_startup(config, actor: str = "server") -> list[AuditEntry]:
    """At server start: record configuration and key changes seen since the last start."""
    entries = [record_config(config, actor), record_keys(Path(config.storage.keys_dir), actor)]
    return [e for e in entries if e is not None]


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


# --- verification -----------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    seq: int  # the entry (or the checkpoint's seq) at fault
    kind: str  # edited | missing | inserted | reordered | broken-link | rewritten | checkpoint-*
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


class _Verifier:
    MAX_FAULTS = 100

    def __init__(self, trusted: set[str], pins: dict[int, str]):
        self.trusted, self.pins = trusted, dict(pins)
        self.result = Verification(public_keys=tuple(sorted(trusted)))
        self._classified = False
        self._good_checkpoint_seq = 0  # the newest checkpoint whose head matched

    def fault(self, seq: int, kind: str, message: str) -> None:
        if len(self.result.faults) < self.MAX_FAULTS:
            self.result.faults.append(Fault(seq, kind, message))
        else:
            self.result.more_faults += 1

    def run(self, entries: Iterator[Entry], checkpoints: Iterator[Checkpoint],
            progress: Callable[[int], None] | None) -> Verification:
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
            if e.action == CHECKPOINT_ACTION:
                self._recorded_checkpoint(e)
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
        r.uncovered = _sql(f"SELECT COUNT(*) FROM {_ENTRIES} WHERE seq > ? AND NOT (seq = ? AND action = ?)",
                           (covered, covered + 1, CHECKPOINT_ACTION)).fetchone()[0] if r.entries else 0
        for seq in sorted(self.pins):
            self.fault(prev_seq + 1, "missing", f"entries {prev_seq + 1}..{seq} are missing: the trail ends at "
                                                f"{prev_seq} but entry {seq} is pinned (--pin)")
        if progress is not None:
            progress(r.entries % BATCH)
        return r

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
            self.fault(cp.seq, "checkpoint-untrusted", f"{name} is signed by {cp.public_key}, not a trusted key")
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

    def _recorded_checkpoint(self, e: Entry) -> None:
        try:
            detail = json.loads(e.detail)
            ident, seq, head = int(detail["checkpoint"]), int(detail["seq"]), detail["head_hash"]
        except (ValueError, KeyError, TypeError):
            return  # an edited entry: already reported by its hash
        row = None
        if _table_exists(_CHECKPOINTS):
            row = _sql(f"SELECT seq, head_hash FROM {_CHECKPOINTS} WHERE id = ?", (ident,)).fetchone()
        if row is None or (row[0], row[1]) != (seq, head):
            self.fault(seq, "checkpoint-deleted",
                       f"checkpoint #{ident} of entry {seq}, recorded by entry {e.seq}, is missing or changed")


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
                 progress: Callable[[int], None] | None = None) -> Verification:
    """Check the whole trail from genesis, every checkpoint's signature (by a ``trusted``
    key) and that each checkpointed head is still in the chain at its seq."""
    return _Verifier(trusted, pins or {}).run(iter_entries(batch=batch), iter_checkpoints(batch=batch), progress)


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
