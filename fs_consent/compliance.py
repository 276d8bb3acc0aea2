"""``fs-consent compliance``: the running configuration and the data, checked against
the privacy statement. One line per check (``OK|FAIL name: detail``), so it can run
from a timer or a monitoring system; any FAIL makes the command exit non-zero.

The checks, each about one promise:

* ``retention.terms``: the configured terms are no longer than the statement's
  (recordings 60 days, call data 1 year);
* ``retention.recordings`` / ``retention.calls``: nothing is stored past its term,
  except what is under a legal hold;
* ``recordings.encrypted``: every stored recording is an age file in the store, of
  the size the ledger recorded, whose header opens (X25519 unwrap and header MAC)
  with an identity that is a configured recipient;
* ``recordings.deleted``: the store holds no ciphertext of a deleted (withdrawn,
  refused, purged) recording, nor any file the ledger does not know;
* ``spool.plaintext``: no plaintext in the spool older than the longest live call;
* ``keys.permissions``: private key files 0600 and ours, recipients not writable by
  others, the keys directory private;
* ``requests.due``: no subject request is undecided past its due date (one calendar
  month after receipt, three after an extension);
* ``audit.chain``: the audit trail verifies (``fs-consent audit verify``).

Retention terms come from the ``[retention]`` config section when there is one
(``retention.recordings``, ``retention.calls``); legal holds from the ``LegalHold``
table when there is one. Both are read defensively: either may not exist yet.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import consent, ledger
from . import keys as keyfiles
from .durations import format_duration, parse_duration
from .files import NotPrivate, check_private, check_private_dir
from .spool import is_recording_id

DAY = 86400.0
# the privacy statement's terms (seed/000: "opnames 60 dagen", "belgegevens 1 jaar")
STATEMENT_TERMS = {"recordings": 60 * DAY, "calls": 365 * DAY}
SHOW = 5  # problems named per check line; the rest are counted


# --- retention terms and legal holds (shared with the report) ------------------------------


@dataclass(frozen=True)
class RetentionTerms:
    recordings: float  # seconds
    calls: float
    source: str  # "config" or "defaults"

    def describe(self) -> str:
        return f"recordings {format_duration(self.recordings)}, call data {format_duration(self.calls)}"


def _seconds(value) -> float:
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, str):
        return parse_duration(value)
    return float(value)


def retention_terms(config) -> RetentionTerms:
    """``[retention]`` from the config (``recordings``, and ``call_records`` or ``calls``) if
    it has that section, else the statement's terms (60 days, 1 year)."""
    section = getattr(config, "retention", None)
    if section is None:
        return RetentionTerms(STATEMENT_TERMS["recordings"], STATEMENT_TERMS["calls"], "defaults")
    values = {}
    for name, aliases in (("recordings", ("recordings",)), ("calls", ("call_records", "calls"))):
        value = next((v for v in (getattr(section, a, None) for a in aliases) if v is not None), None)
        values[name] = STATEMENT_TERMS[name] if value is None else _seconds(value)
    return RetentionTerms(values["recordings"], values["calls"], "config")


@dataclass(frozen=True)
class Holds:
    recording_ids: frozenset = frozenset()
    call_ids: frozenset = frozenset()  # Call.id (integer) of calls whose record is held
    present: bool = False  # a LegalHold table exists
    per_call: bool = False  # holds name calls only: a held call holds all its recordings

    def holds_recording(self, recording_id: str, call_id: int) -> bool:
        return recording_id in self.recording_ids or (self.per_call and call_id in self.call_ids)

    @property
    def count(self) -> int:
        return len(self.call_ids) if self.per_call else len(self.recording_ids)


def legal_holds() -> Holds:
    """Active legal holds, from ``ledger.LegalHold`` if that model and its table exist.

    Tolerates the shapes such a table is likely to have: a ``recording`` and/or ``call``
    foreign key (or ``*_id`` column), and ``released_at`` (active while null) or ``active``.
    """
    model = getattr(ledger, "LegalHold", None)
    if model is None or not model.table_exists():
        return Holds()
    fields = model._meta.fields
    query = model.select()
    if "released_at" in fields:
        query = query.where(fields["released_at"].is_null())
    elif "active" in fields:
        query = query.where(fields["active"] == True)  # noqa: E712 (peewee expression)
    columns = {}
    for name in ("recording", "call"):
        column = fields.get(name) or fields.get(f"{name}_id")
        if column is not None:
            columns[name] = {v for (v,) in query.select(column).tuples() if v is not None}
    return Holds(frozenset(columns.get("recording", ())), frozenset(columns.get("call", ())), True,
                 per_call="recording" not in columns)


@dataclass
class Overdue:
    count: int = 0
    rows: list[dict] = field(default_factory=list)  # the first ``limit``


# recording states that may still have bytes on disk: sealed (ciphertext), failed (plaintext
# kept for recovery), recording (a crash nobody recovered from); the purge's own list
RETAINED_STATES = (ledger.SEALED, ledger.FAILED, ledger.RECORDING)


def overdue_recordings(terms: RetentionTerms, holds: Holds, now: dt.datetime, *, grace: float = 0.0,
                       limit: int = 1000) -> Overdue:
    """Recordings that may still have bytes on disk, started longer ago than their term,
    not under a legal hold."""
    from .ledger import Call, Recording

    cutoff = now - dt.timedelta(seconds=terms.recordings + grace)
    found = Overdue()
    query = (Recording.select(Recording.id, Recording.started_at, Recording.call, Call.uuid).join(Call)
             .where(Recording.state.in_(RETAINED_STATES) & (Recording.started_at < cutoff))
             .order_by(Recording.started_at).tuples())
    for rec_id, started_at, call_id, call_uuid in query.iterator():
        if holds.holds_recording(rec_id, call_id):
            continue
        found.count += 1
        if len(found.rows) < limit:
            found.rows.append({"recording_id": rec_id, "call_uuid": call_uuid, "counted_from": started_at,
                               "age_days": round((now - started_at).total_seconds() / DAY, 1),
                               "term": format_duration(terms.recordings)})
    return found


def overdue_calls(terms: RetentionTerms, holds: Holds, now: dt.datetime, *, grace: float = 0.0,
                  limit: int = 1000) -> Overdue:
    """Call records that ended longer ago than their term and still hold personal fields
    (the caller's number or a rectified detail: ``retention.has_personal_fields``), not under a
    legal hold. What remains of a call once those are erased is anonymous statistics."""
    from .ledger import Call
    from .retention import has_personal_fields

    cutoff = now - dt.timedelta(seconds=terms.calls + grace)
    found = Overdue()
    query = (Call.select(Call.id, Call.uuid, Call.ended_at)
             .where((Call.ended_at < cutoff) & has_personal_fields())
             .order_by(Call.ended_at).tuples())
    for call_id, call_uuid, ended_at in query.iterator():
        if call_id in holds.call_ids:
            continue
        found.count += 1
        if len(found.rows) < limit:
            found.rows.append({"call_uuid": call_uuid, "counted_from": ended_at,
                               "age_days": round((now - ended_at).total_seconds() / DAY, 1),
                               "term": format_duration(terms.calls)})
    return found


# --- age headers (age-encryption.org/v1) ---------------------------------------------------

_AGE_MAGIC = b"age-encryption.org/v1\n"
_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


class AgeHeaderError(Exception):
    pass


def _b64(text: bytes) -> bytes:
    """age's base64: standard alphabet, no padding (canonical)."""
    try:
        return base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise AgeHeaderError("bad base64 in the header") from None


@dataclass(frozen=True)
class AgeHeader:
    stanzas: list  # (type, [args], body bytes)
    mac: bytes
    mac_input: bytes  # the header up to and including "---"


def read_age_header(path: Path, limit: int = 1 << 16) -> AgeHeader:
    """Parse the header of an age v1 file (reads only the header)."""
    with open(path, "rb") as f:
        data = f.read(limit)
    if not data.startswith(_AGE_MAGIC):
        raise AgeHeaderError("not an age v1 file (no age-encryption.org/v1 header)")
    lines = data[len(_AGE_MAGIC):].split(b"\n")
    pos, stanzas, i = len(_AGE_MAGIC), [], 0
    while i < len(lines) - 1:  # the last piece has no newline: payload or a cut
        line = lines[i]
        if line.startswith(b"---"):
            if not line.startswith(b"--- "):
                raise AgeHeaderError("malformed header MAC line")
            return AgeHeader(stanzas, _b64(line[4:]), data[:pos + 3])
        if not line.startswith(b"-> "):
            raise AgeHeaderError("malformed header line")
        args = line[3:].split(b" ")
        pos += len(line) + 1
        body = b""
        while True:
            i += 1
            if i >= len(lines) - 1:
                raise AgeHeaderError("header is cut off")
            chunk = lines[i]
            pos += len(chunk) + 1
            body += chunk
            if len(chunk) < 64:
                break
        stanzas.append((args[0].decode("ascii", "replace"), args[1:], _b64(body)))
        i += 1
    raise AgeHeaderError("no end of header (--- line) found")


def _bech32_decode(text: str, hrp: str) -> bytes:
    text = text.strip().lower()
    sep = text.rfind("1")
    if text[:sep] != hrp or sep < 1 or any(c not in _BECH32 for c in text[sep + 1:]):
        raise ValueError(f"not a bech32 {hrp} string")
    data = [_BECH32.index(c) for c in text[sep + 1:]]
    chk = 1
    for value in [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp] + data:
        top, chk = chk >> 25, ((chk & 0x1FFFFFF) << 5) ^ value
        for i, gen in enumerate((0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)):
            chk ^= gen if (top >> i) & 1 else 0
    if chk != 1:
        raise ValueError("bech32 checksum mismatch")
    acc, bits, out = 0, 0, bytearray()
    for value in data[:-6]:
        acc, bits = (acc << 5) | value, bits + 5
        if bits >= 8:
            bits -= 8
            out.append((acc >> bits) & 0xFF)
    return bytes(out)


class HeaderOpener:
    """Opens age headers with one X25519 identity: unwraps the file key, checks the MAC."""

    def __init__(self, identity_text: str):
        self._key = X25519PrivateKey.from_private_bytes(_bech32_decode(identity_text, "age-secret-key-"))
        self._public = self._key.public_key().public_bytes_raw()

    def file_key(self, header: AgeHeader) -> bytes:
        for kind, args, body in header.stanzas:
            if kind != "X25519" or len(args) != 1 or len(body) != 32:
                continue
            share = _b64(args[0])
            if len(share) != 32:
                continue
            shared = self._key.exchange(X25519PublicKey.from_public_bytes(share))
            wrap = HKDF(hashes.SHA256(), 32, share + self._public, b"age-encryption.org/v1/X25519").derive(shared)
            try:
                file_key = ChaCha20Poly1305(wrap).decrypt(b"\x00" * 12, body, None)
            except InvalidTag:
                continue  # another recipient's stanza
            mac_key = HKDF(hashes.SHA256(), 32, b"", b"header").derive(file_key)
            if not hmac.compare_digest(hmac.new(mac_key, header.mac_input, sha256).digest(), header.mac):
                raise AgeHeaderError("the header MAC does not match (the header was altered)")
            return file_key
        raise AgeHeaderError("no stanza opens with the identity (not sealed to this recipient)")


# --- the checks ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'OK' if self.ok else 'FAIL'} {self.name}: {self.detail}"


def _listed(problems: list[str], total: int | None = None) -> str:
    total = len(problems) if total is None else total
    shown = "; ".join(problems[:SHOW])
    return shown + (f"; and {total - SHOW} more" if total > SHOW else "")


@dataclass
class Options:
    identity: Path | None = None  # default: keys/identity.txt when present
    retention_grace: float = 0.0  # allowance past a term (the purge timer's period)
    spool_grace: float = 120.0  # allowance for sealing after a call ends
    now: dt.datetime | None = None  # UTC naive; for tests


def check_retention_terms(config, opts: Options) -> CheckResult:
    terms = retention_terms(config)
    longer = [f"{name} {format_duration(getattr(terms, name))} exceeds the statement's "
              f"{format_duration(STATEMENT_TERMS[name])}"
              for name in ("recordings", "calls") if getattr(terms, name) > STATEMENT_TERMS[name]]
    source = "retention.* in the config" if terms.source == "config" else "no [retention] section: statement defaults"
    if longer:
        return CheckResult("retention.terms", False, "; ".join(longer))
    return CheckResult("retention.terms", True, f"{terms.describe()} ({source})")


def check_retention_recordings(config, opts: Options) -> CheckResult:
    terms, holds = retention_terms(config), legal_holds()
    found = overdue_recordings(terms, holds, opts.now, grace=opts.retention_grace, limit=SHOW)
    if found.count:
        named = [f"recording {r['recording_id']} ({r['age_days']} days old)" for r in found.rows]
        return CheckResult("retention.recordings", False,
                           f"{found.count} stored past the {format_duration(terms.recordings)} term: "
                           + _listed(named, found.count))
    held = f"; {holds.count} held recording(s) exempt" if holds.present else ""
    return CheckResult("retention.recordings", True,
                       f"no stored recording is older than {format_duration(terms.recordings)}{held}")


def check_retention_calls(config, opts: Options) -> CheckResult:
    terms, holds = retention_terms(config), legal_holds()
    found = overdue_calls(terms, holds, opts.now, grace=opts.retention_grace, limit=SHOW)
    if found.count:
        named = [f"call {r['call_uuid']} ({r['age_days']} days old)" for r in found.rows]
        return CheckResult("retention.calls", False,
                           f"{found.count} call(s) kept past the {format_duration(terms.calls)} term: "
                           + _listed(named, found.count))
    return CheckResult("retention.calls", True, f"no call data is older than {format_duration(terms.calls)}")


def _sealed_recordings() -> Iterator[tuple[str, int | None]]:
    from .ledger import SEALED, Recording

    yield from (Recording.select(Recording.id, Recording.size).where(Recording.state == SEALED)
                .order_by(Recording.id).tuples().iterator())


def check_recordings_encrypted(config, opts: Options) -> CheckResult:
    s = config.storage
    keys_dir, store = Path(s.keys_dir), Path(s.store_dir)
    recipients = keyfiles.load_recipients(keys_dir)
    identity_path = opts.identity or keys_dir / keyfiles.IDENTITY_FILE
    opener, note = None, ""
    if identity_path.exists():
        identity = keyfiles.load_identity(keys_dir, identity_path)
        if str(identity.to_public()) not in recipients:
            return CheckResult("recordings.encrypted", False,
                               f"the identity {identity_path} is not a configured recipient in "
                               f"{keys_dir / keyfiles.RECIPIENTS_FILE}: recordings are not sealed to it")
        opener = HeaderOpener(str(identity))
    else:
        note = " (no identity here, as on a write-only server: header structure checked only; pass --identity)"
    problems, total, checked = [], 0, 0
    for rec_id, size in _sealed_recordings():
        checked += 1
        path = store / f"{rec_id}.age"
        try:
            if not path.is_file():
                raise AgeHeaderError("its file is missing from the store")
            if size is not None and path.stat().st_size != size:
                raise AgeHeaderError(f"its file has {path.stat().st_size} bytes, the ledger says {size}")
            header = read_age_header(path)
            if opener is not None:
                opener.file_key(header)
            elif not any(kind == "X25519" for kind, _a, _b in header.stanzas):
                raise AgeHeaderError("no X25519 recipient stanza")
        except (AgeHeaderError, OSError) as exc:
            total += 1
            if len(problems) < SHOW:
                problems.append(f"recording {rec_id}: {exc}")
    if total:
        return CheckResult("recordings.encrypted", False, f"{total} of {checked} stored recordings: "
                           + _listed(problems, total))
    how = "headers open for a configured recipient" if opener else "age headers well-formed"
    return CheckResult("recordings.encrypted", True, f"{checked} stored recordings are age files; {how}{note}")


def check_recordings_deleted(config, opts: Options) -> CheckResult:
    from .ledger import SEALED, PurgePending, Recording

    store = Path(config.storage.store_dir)
    now = time.time()
    problems, unknown, files = [], 0, 0
    batch: list[str] = []

    def settle(ids: list[str]) -> None:
        states = dict(Recording.select(Recording.id, Recording.state).where(Recording.id << ids).tuples())
        pending = {row[0] for row in PurgePending.select(PurgePending.recording).where(
            PurgePending.recording << ids).tuples()}
        for rec_id in ids:
            state = states.get(rec_id)
            if rec_id in pending:
                problems.append(f"recording {rec_id} was purged but an interrupted purge left its ciphertext: "
                                "`fs-consent purge` removes it")
            elif state != SEALED:
                problems.append(f"recording {rec_id} is {state or 'not in the ledger'} but its ciphertext remains")

    for entry in (os.scandir(store) if store.exists() else ()):
        files += 1
        name = entry.name
        if name.endswith(".age.tmp") and now - entry.stat().st_mtime < opts.spool_grace:
            continue  # a seal in progress
        rec_id = name[:-4] if name.endswith(".age") else ""
        if not is_recording_id(rec_id):
            unknown += 1  # not named: a stray name could hold anything
            continue
        batch.append(rec_id)
        if len(batch) == 500:
            settle(batch)
            batch = []
    if batch:
        settle(batch)
    if unknown:
        problems.append(f"{unknown} other file(s) in the store that are no recording")
    if problems:
        return CheckResult("recordings.deleted", False, _listed(problems))
    return CheckResult("recordings.deleted", True,
                       f"the store holds {files} file(s), each a stored recording; no deleted one remains")


def check_spool_plaintext(config, opts: Options) -> CheckResult:
    from peewee import fn

    from .ledger import Call

    spool = Path(config.storage.spool_dir)
    oldest_live = Call.select(fn.MIN(Call.started_at)).where(Call.ended_at.is_null()).scalar()
    longest = max(0.0, (opts.now - oldest_live).total_seconds()) if oldest_live else 0.0
    allowed = longest + opts.spool_grace
    now = time.time()
    stale, others = [], 0
    try:
        entries = list(os.scandir(spool)) if spool.exists() else []
    except OSError as exc:
        return CheckResult("spool.plaintext", False, f"cannot read the spool {spool}: {exc.strerror}")
    for entry in entries:
        age = now - entry.stat(follow_symlinks=False).st_mtime
        if age <= allowed:
            continue
        rec_id = entry.name[:-4] if entry.name.endswith(".wav") else ""
        if is_recording_id(rec_id):
            stale.append(f"recording {rec_id} ({format_duration(round(age))} old)")
        else:
            others += 1
    if others:
        stale.append(f"{others} other file(s)")
    limit = f"the longest live call ({format_duration(round(longest))}) plus {format_duration(opts.spool_grace)}"
    if stale:
        return CheckResult("spool.plaintext", False, f"plaintext older than {limit}: " + _listed(stale))
    return CheckResult("spool.plaintext", True, f"{len(entries)} file(s) in the spool, none older than {limit}")


def check_key_permissions(config, opts: Options) -> CheckResult:
    keys_dir = Path(config.storage.keys_dir)
    problems = []
    try:
        check_private_dir(keys_dir)
    except NotPrivate as exc:
        problems.append(str(exc))
    except OSError as exc:
        problems.append(f"{keys_dir}: {exc.strerror}")
    checked = []
    for name in (keyfiles.IDENTITY_FILE, keyfiles.FIELD_KEY_FILE, keyfiles.SIGNING_KEY_FILE):
        path = keys_dir / name
        if name == keyfiles.IDENTITY_FILE and not path.exists():
            continue  # kept offline
        try:
            check_private(path, error=keyfiles.KeyFileError)
            checked.append(name)
        except keyfiles.KeyFileError as exc:
            problems.append(str(exc))
    try:
        keyfiles.load_recipients(keys_dir)
        checked.append(keyfiles.RECIPIENTS_FILE)
    except keyfiles.KeyFileError as exc:
        problems.append(str(exc))
    if problems:
        return CheckResult("keys.permissions", False, _listed(problems))
    return CheckResult("keys.permissions", True, f"{', '.join(checked)} in {keys_dir} are private to this user")


def check_requests_due(config, opts: Options) -> CheckResult:
    from . import subject_requests

    today = opts.now.replace(tzinfo=dt.timezone.utc).astimezone().date()  # due dates are local calendar days
    late = subject_requests.rows(overdue_only=True, today=today)
    if late:
        named = [f"request {r['ref']} ({r['kind']}, due {r['due']}, {-r['days_left']} day(s) overdue)"
                 for r in late[:SHOW]]
        return CheckResult("requests.due", False, f"{len(late)} undecided past the due date: "
                           + _listed(named, len(late)))
    undecided = subject_requests.counts(today)["open"]
    return CheckResult("requests.due", True, f"{undecided} undecided request(s), none past its due date "
                       f"on {today.isoformat()}")


def check_calls_outcome(config, opts: Options) -> CheckResult:
    """Every ended call says what became of consent; the calls a restart cut off are counted."""
    Call = ledger.Call
    ended = Call.ended_at.is_null(False)
    missing = Call.select().where(ended & Call.outcome.is_null()).count()
    restarted = Call.select().where(ended & (Call.outcome == consent.ERROR)
                                    & (Call.decided_by == consent.BY_RESTART)).count()
    cut = f"{restarted} ended by a restart of fs-consent (outcome error, not recorded)"
    if missing:
        return CheckResult("calls.outcome", False, f"{missing} ended call(s) without an outcome; {cut}")
    return CheckResult("calls.outcome", True, f"every ended call has an outcome; {cut}")


def check_audit_chain(config, opts: Options) -> CheckResult:
    from .audit import trusted_keys, verify_trail

    try:
        trusted = trusted_keys(Path(config.storage.keys_dir))
    except keyfiles.KeyFileError as exc:
        return CheckResult("audit.chain", False, f"cannot check checkpoint signatures: {exc}")
    result = verify_trail(trusted)
    return CheckResult("audit.chain", result.ok, result.summary())


CHECKS: list[tuple[str, Callable[[object, Options], CheckResult]]] = [
    ("retention.terms", check_retention_terms),
    ("retention.recordings", check_retention_recordings),
    ("retention.calls", check_retention_calls),
    ("recordings.encrypted", check_recordings_encrypted),
    ("recordings.deleted", check_recordings_deleted),
    ("spool.plaintext", check_spool_plaintext),
    ("keys.permissions", check_key_permissions),
    ("requests.due", check_requests_due),
    ("calls.outcome", check_calls_outcome),
    ("audit.chain", check_audit_chain),
]


def run_checks(config, opts: Options | None = None) -> Iterator[CheckResult]:
    """Every check, in order; one that cannot run is a FAIL naming why."""
    opts = opts or Options()
    if opts.now is None:
        opts.now = ledger.utcnow()
    for name, check in CHECKS:
        try:
            yield check(config, opts)
        except Exception as exc:  # a check that cannot run proves nothing: that is a failure
            yield CheckResult(name, False, f"could not run: {type(exc).__name__}: {exc}")
