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

import datetime as dt
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from peewee import fn

from ..core import consent
from ..core.durations import format_duration
from ..privacy import subject_requests
from ..secure import keys as keyfiles
from ..secure.age_header import AgeHeaderError, HeaderOpener, read_age_header
from ..secure.files import NotPrivate, check_private, check_private_dir
from ..secure.spool import is_recording_id
from ..store import ledger
from ..store.audit import trusted_keys, verify_trail
from ..store.ledger import SEALED, Call, PurgePending, Recording
from .overdue import STATEMENT_TERMS, legal_holds, overdue_calls, overdue_recordings, retention_terms

SHOW = 5  # problems named per check line; the rest are counted


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
