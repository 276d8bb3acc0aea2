"""Retention: the purge of expired recordings and call records (DESIGN.md §5).

Terms come from ``[retention]`` in the config: recordings 60 days, counted from when
the recording started; call records one year, counted from the end of the call. A
purge, as of a moment (now, or ``as_of``):

1. finishes what an interrupted purge left (``purge_pending``, see below);
2. deletes expired recordings that are not under legal hold, batch by batch. One short
   transaction marks a batch deleted (reason ``retention``) and lists it in
   ``purge_pending``; then the files go, outside any transaction (the ciphertext
   through ``Vault.delete`` and any plaintext left in the spool, one directory fsync per
   batch; a background thread does this while the purge goes on in the database); then
   a short transaction takes the batch off ``purge_pending``. Wherever a kill lands, the
   ledger is consistent (a recording is either untouched or deleted, and
   ``purge_pending`` names every deleted one whose files may remain) and the next run
   completes it. A hold placed concurrently is respected: the batch is chosen inside
   the marking transaction;
3. erases the personal fields of expired call records (``caller_hash`` and
   ``caller_sealed`` set to NULL, the ledger's "erased", the rectified details in
   ``call_detail`` deleted, and the staff identifier of each bridge in ``call_staff``
   replaced by ``CallStaff.ERASED_HASH``; ``personal_erased_at``/``personal_erased_reason`` =
   ``retention`` say so), in batches of one short transaction each, except calls with a
   recording under legal hold. What stays is anonymous; the README says exactly what;
4. erases the number's hash from objections withdrawn longer ago than the call-record
   term (the row stays, matching no number).

A restriction (art. 18, ``subjects.py``) does not stop the purge: restricted data may
only be stored, and never longer than its term.

Safe while the server runs: every write transaction is one bounded batch (tens of ms at
most), and after each the server gets at least as much time as the batch held the lock
(the WAL checkpoint, which does not block writers, then a pause if that was shorter), so
the server's writer, whose SQLite busy wait blocks its hub, never waits long. Two purges
never run at once: a lock file in the data dir on SQLite; on PostgreSQL, where the ledger
is shared by several nodes, a session advisory lock held for the whole run (the refusal
names the node and user of the run in progress). Memory is bounded by the batch size.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from peewee import PostgresqlDatabase, SqliteDatabase, Tuple, Value, fn

from ..core.durations import format_duration
from ..secure.files import fsync_dir
from ..store import audit_actions, ledger
from ..store.holds import held_calls, held_recordings
from ..store.ledger import Call, CallDetail, CallStaff, LegalHold, Objection, PurgePending, PurgeRun, Recording
from ..store.recordings import mark_deleted, remove_files

log = logging.getLogger(__name__)

# recording states that may still have bytes on disk: sealed (ciphertext), failed
# (plaintext awaiting recovery), recording (a crash nobody recovered from)
PURGEABLE_STATES = (ledger.SEALED, ledger.FAILED, ledger.RECORDING)
# the personal fields of a call record; erasing one sets it to NULL (and deletes its call_detail rows)
PERSONAL_CALL_FIELDS = (Call.caller_hash, Call.caller_sealed)
ERASED_BY_RETENTION = "retention"  # Call.personal_erased_reason
LOCK_FILE = "purge.lock"
PURGE_LOCK = 0x66735F7075726765  # pg_advisory_lock key of the purge, across every node ("fs_purge")
DEFAULT_BATCH = 2000
MAX_PAUSE_S = 0.05
PURGE_CACHE_KIB = 65536  # SQLite page cache of the purge's connection: index pages stay hot


class PurgeError(Exception):
    """The purge cannot run (another one is running, the lock cannot be taken)."""


@dataclass(frozen=True)
class Terms:
    recordings: dt.timedelta
    call_records: dt.timedelta

    @classmethod
    def from_config(cls, retention) -> Terms:
        return cls(dt.timedelta(seconds=retention.recordings), dt.timedelta(seconds=retention.call_records))

    def describe(self) -> str:
        return (f"recordings {format_duration(self.recordings.total_seconds())}, "
                f"call records {format_duration(self.call_records.total_seconds())}")


@dataclass
class PurgeReport:
    as_of: dt.datetime
    terms: Terms
    dry_run: bool = False
    run: int | None = None
    recordings_deleted: int = 0
    calls_erased: int = 0
    pending_completed: int = 0  # deletions an interrupted run had left unfinished
    recordings_held: int = 0  # expired but under legal hold: kept
    calls_held: int = 0
    objections_unlinked: int = 0  # withdrawn objections past the call-record term: hash erased
    interrupted_runs: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # files that could not be removed (retried next run)

    def summary(self) -> str:
        as_of = self.as_of.isoformat(timespec="seconds") + "Z"
        if self.dry_run:
            head = f"purge dry run as of {as_of} ({self.terms.describe()}): would delete"
        else:
            head = f"purge #{self.run} as of {as_of} ({self.terms.describe()}): deleted"
        parts = [f"{head} {self.recordings_deleted} recordings, "
                 f"{'would erase' if self.dry_run else 'erased'} {self.calls_erased} call records; "
                 f"kept under legal hold {self.recordings_held} recordings, {self.calls_held} call records"]
        if self.dry_run and self.pending_completed:
            parts.append(f"would complete {self.pending_completed} deletions an interrupted run left")
        elif self.pending_completed or self.interrupted_runs:
            runs = ", ".join(f"#{n}" for n in self.interrupted_runs) or "an earlier run"
            parts.append(f"completed {self.pending_completed} deletions left by interrupted {runs}")
        if self.errors:
            parts.append(f"{len(self.errors)} files could not be removed (retried next run)")
        return "; ".join(parts)


# --- what is expired ------------------------------------------------------------------


def recording_cutoff(as_of: dt.datetime, terms: Terms) -> dt.datetime:
    """A recording that started before this is past its term as of ``as_of`` (the purge deletes it)."""
    return as_of - terms.recordings


def recording_expires_at(started_at: dt.datetime, terms: Terms) -> dt.datetime:
    return started_at + terms.recordings


def recording_days_left(started_at: dt.datetime, as_of: dt.datetime, terms: Terms) -> int:
    """Whole days until the recording's term ends (0 on its last day; negative once past it)."""
    left = recording_expires_at(started_at, terms) - as_of
    return left.days


def _expired_recordings(as_of: dt.datetime, terms: Terms):
    return Recording.select(Recording.id).where(
        Recording.state.in_(PURGEABLE_STATES) & (Recording.started_at < recording_cutoff(as_of, terms)))


def has_personal_fields():
    # EXISTS, not IN: call_staff is as large as call, and the (call, seq) index answers it per row
    staff = fn.EXISTS(CallStaff.select(Value(1)).where(
        (CallStaff.call == Call.id) & (CallStaff.staff_hash != CallStaff.ERASED_HASH)))
    condition = Call.id.in_(CallDetail.select(CallDetail.call)) | staff
    for column in PERSONAL_CALL_FIELDS:
        condition = condition | column.is_null(False)
    return condition


def _call_expired(as_of: dt.datetime, terms: Terms):
    return (Call.ended_at < as_of - terms.call_records) & has_personal_fields()


def held_counts(as_of: dt.datetime, terms: Terms) -> tuple[int, int]:
    """Expired recordings and call records kept because of a legal hold (from the few holds)."""
    active = LegalHold.released_at.is_null()
    recordings = (LegalHold.select(fn.COUNT(LegalHold.recording.distinct())).join(Recording)
                  .where(active & Recording.state.in_(PURGEABLE_STATES)
                         & (Recording.started_at < as_of - terms.recordings)).scalar())
    calls = (LegalHold.select(fn.COUNT(LegalHold.call.distinct())).join(Call, on=(LegalHold.call == Call.id))
             .where(active & _call_expired(as_of, terms)).scalar())
    return recordings or 0, calls or 0


def expired_counts(as_of: dt.datetime, terms: Terms) -> dict[str, int]:
    """What a purge as of ``as_of`` would do (counts only; nothing is changed)."""
    held_recs, held = held_counts(as_of, terms)
    return {
        "recordings": _expired_recordings(as_of, terms).count() - held_recs, "recordings_held": held_recs,
        "calls": Call.select().where(_call_expired(as_of, terms)).count() - held, "calls_held": held,
        "pending": PurgePending.select().count(),
    }


# --- the purge ------------------------------------------------------------------------


def _running_elsewhere() -> str:
    """Who holds the purge lock, as far as the ledger says (the run it has started)."""
    run = PurgeRun.select().where(PurgeRun.status == "running").order_by(PurgeRun.seq.desc()).first()
    if run is None:
        return "it holds the purge lock of the shared ledger"
    where = f" on node {run.node}" if run.node else ""
    return f"purge #{run.seq}, started {run.started_at.isoformat(timespec='seconds')}Z by {run.actor}{where}"


@contextlib.contextmanager
def _cluster_lock(db: PostgresqlDatabase):
    """A session advisory lock on a connection of its own, held until the block ends (or the
    process dies: PostgreSQL drops it with the connection). Its own connection, so the
    purge's work may reconnect or use a pool without ever losing or leaking the lock."""
    holder = PostgresqlDatabase(db.database, **db.connect_params)
    try:
        holder.connect()
    except Exception as exc:  # noqa: BLE001 - the driver's own; one line for the operator
        raise PurgeError(f"cannot take the purge lock: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}"
                         ) from None
    try:
        if not holder.execute_sql("SELECT pg_try_advisory_lock(%s)", (PURGE_LOCK,)).fetchone()[0]:
            raise PurgeError(f"another purge is running ({_running_elsewhere()})")
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # a lost connection has dropped it already
                holder.execute_sql("SELECT pg_advisory_unlock(%s)", (PURGE_LOCK,))
    finally:
        holder.close()


@contextlib.contextmanager
def purge_lock(data_dir: Path):
    """Exclusive while one purge runs (systemd timer and a manual run must not overlap; nor,
    on a shared PostgreSQL ledger, two nodes' purges). Call with the ledger open."""
    if isinstance(ledger.database.obj, PostgresqlDatabase):
        with _cluster_lock(ledger.database.obj):
            yield
        return
    path = Path(data_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise PurgeError(f"cannot open the purge lock {path}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PurgeError(f"another purge is running (it holds {path})") from None
        yield
    finally:
        os.close(fd)


class Purge:
    """One purge run. ``progress(n)`` is called as items (recordings, call records) are done.

    Every batch is set-based SQL (no id lists shipped back and forth): the database does
    the work, Python only removes files.
    """

    def __init__(self, *, vault, spool_dir: Path, terms: Terms, actor: str, as_of: dt.datetime | None = None,
                 batch_size: int = DEFAULT_BATCH, progress: Callable[[int], None] | None = None,
                 pause: bool = True, node: str | None = None):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.vault, self.spool_dir, self.terms, self.actor = vault, Path(spool_dir), terms, actor
        self.as_of = as_of or ledger.utcnow()
        self.batch_size = batch_size
        self.progress = progress or (lambda _n: None)
        self.pause = pause
        self.node = node  # [server] node of the machine it runs on: kept with the run

    def dry_run(self) -> PurgeReport:
        counts = expired_counts(self.as_of, self.terms)
        return PurgeReport(self.as_of, self.terms, dry_run=True, recordings_deleted=counts["recordings"],
                           calls_erased=counts["calls"], recordings_held=counts["recordings_held"],
                           calls_held=counts["calls_held"], pending_completed=counts["pending"])

    def total(self) -> int:
        """Items the run will go through, for a progress bar."""
        counts = expired_counts(self.as_of, self.terms)
        return counts["recordings"] + counts["calls"] + counts["pending"]

    def run(self) -> PurgeReport:
        """Call inside :func:`purge_lock`."""
        report = PurgeReport(self.as_of, self.terms)
        with ledger.database.atomic():
            stale = [r.seq for r in PurgeRun.select(PurgeRun.seq).where(PurgeRun.status == "running")]
            if stale:  # we hold the lock: those runs are dead
                PurgeRun.update(status="interrupted").where(PurgeRun.seq.in_(stale)).execute()
            run = PurgeRun.create(started_at=ledger.utcnow(), actor=self.actor, as_of=self.as_of, status="running",
                                  node=self.node)
            ledger.append_audit(self.actor, audit_actions.PURGE_START, "purge", str(run.seq), as_of=self.as_of,
                                recordings_term_s=self.terms.recordings.total_seconds(),
                                call_records_term_s=self.terms.call_records.total_seconds(),
                                interrupted_runs=stale)
        report.run, report.interrupted_runs = run.seq, stale
        with self._tuned(), _Remover(self, report) as remover:
            self._remover = remover
            self._finish_pending(report)
            self._purge_recordings(run.seq, report)
            self._erase_calls(report)
            report.objections_unlinked = self._write(self._unlink_objections)
            remover.close()
            self._settle_files()
        report.recordings_held, report.calls_held = held_counts(self.as_of, self.terms)
        with ledger.database.atomic():
            PurgeRun.update(finished_at=ledger.utcnow(), status="done", recordings_deleted=report.recordings_deleted,
                            calls_erased=report.calls_erased, pending_completed=report.pending_completed,
                            ).where(PurgeRun.seq == run.seq).execute()
            ledger.append_audit(self.actor, audit_actions.PURGE_FINISH, "purge", str(run.seq), as_of=self.as_of,
                                recordings_deleted=report.recordings_deleted, calls_erased=report.calls_erased,
                                pending_completed=report.pending_completed, recordings_held=report.recordings_held,
                                calls_held=report.calls_held, file_errors=len(report.errors),
                                objections_unlinked=report.objections_unlinked)
        return report

    @contextlib.contextmanager
    def _tuned(self):
        """SQLite: a bigger page cache, and the purge checkpoints the WAL itself after each
        batch (outside the lock, see ``_write``); both back to the defaults afterwards."""
        sqlite = isinstance(ledger.database.obj, SqliteDatabase)
        if sqlite:
            cache = ledger.database.execute_sql("PRAGMA cache_size").fetchone()[0]
            autocheckpoint = ledger.database.execute_sql("PRAGMA wal_autocheckpoint").fetchone()[0]
            ledger.database.execute_sql(f"PRAGMA cache_size=-{PURGE_CACHE_KIB}")
            ledger.database.execute_sql("PRAGMA wal_autocheckpoint=0")
        self._checkpoint = sqlite
        try:
            yield
        finally:
            self._checkpoint = False
            if sqlite:
                ledger.database.execute_sql(f"PRAGMA cache_size={int(cache)}")
                ledger.database.execute_sql(f"PRAGMA wal_autocheckpoint={int(autocheckpoint)}")

    _checkpoint = False

    def _write(self, work: Callable[[], object]):
        """One short write transaction; then the WAL checkpoint and a pause, while the server
        can write: together at least as long as the transaction held the lock (so a writer
        waiting in SQLite's busy handler, which blocks the server's hub, soon gets its turn)."""
        started = time.monotonic()
        with ledger.database.atomic():
            result = work()
        locked = time.monotonic() - started
        if self._checkpoint:
            # PASSIVE: never waits for readers or writers; the server may write meanwhile
            ledger.database.execute_sql("PRAGMA wal_checkpoint(PASSIVE)")
        if self.pause:
            free = time.monotonic() - started - locked
            time.sleep(max(0.0, min(MAX_PAUSE_S, locked - free)))
        return result

    # --- recordings -----------------------------------------------------------------

    def _finish_pending(self, report: PurgeReport) -> None:
        """Remove the files of recordings an interrupted run marked deleted."""
        last = ""
        while True:
            ids = [rid for (rid,) in PurgePending.select(PurgePending.recording).where(PurgePending.recording > last)
                   .order_by(PurgePending.recording).limit(self.batch_size).tuples()]
            if not ids:
                return
            last = ids[-1]
            self._remover.submit(None, ids)
            report.pending_completed += len(ids)
            self.progress(len(ids))
            self._settle_files()

    def _purge_recordings(self, run: int, report: PurgeReport) -> None:
        now = ledger.utcnow()
        batch = 0
        while True:
            batch += 1
            this = (PurgePending.run == run) & (PurgePending.batch == batch)

            def claim(batch=batch, this=this):
                # select and mark in one transaction: a hold placed meanwhile is respected
                chosen = (_expired_recordings(self.as_of, self.terms)
                          .select(Recording.id, Value(run), Value(batch))
                          .where(Recording.id.not_in(held_recordings())).limit(self.batch_size))
                PurgePending.insert_from(chosen, [PurgePending.recording, PurgePending.run,
                                                  PurgePending.batch]).execute()
                mark_deleted(PurgePending.select(PurgePending.recording).where(this), reason="retention", at=now)

            self._write(claim)
            ids = [rid for (rid,) in PurgePending.select(PurgePending.recording).where(this).tuples()]
            if not ids:
                return
            self._remover.submit(this, ids)  # the files go in the background, see _Remover
            report.recordings_deleted += len(ids)
            self.progress(len(ids))
            self._settle_files()

    def _settle_files(self) -> None:
        """Take the batches whose files are gone off purge_pending (failures stay listed)."""
        for key, ids, failed in self._remover.finished():
            rows = PurgePending.recording.in_(ids) if key is None else key
            self._write(lambda rows=rows, failed=failed: PurgePending.delete().where(
                rows & PurgePending.recording.not_in(failed)).execute())

    def remove_files(self, ids: list[str], report: PurgeReport, pool: ThreadPoolExecutor | None = None) -> list[str]:
        """Ciphertext (and stray .tmp) and spool plaintext; returns the ids that failed.

        Unlinking a file that is on disk costs a few hundred microseconds of file-system
        work, and a few of them in parallel go faster; the directories are fsync'd once.
        """
        spool, strays = self._spool_names, self._stray_tmp

        def remove(rid: str) -> OSError | None:
            try:
                remove_files(rid, self.vault, self.spool_dir if f"{rid}.wav" in spool else None, sync=False,
                             tmp=rid in strays)
            except OSError as exc:
                return exc
            return None

        failed = []
        for rid, exc in zip(ids, pool.map(remove, ids) if pool else map(remove, ids)):
            if exc is not None:
                failed.append(rid)
                report.errors.append(f"recording {rid}: {exc.strerror or exc}")
                log.error("purge: cannot remove the files of recording %s (%s); retried next run",
                          rid, exc.strerror or type(exc).__name__)
        self.vault.sync()
        if spool:
            fsync_dir(self.spool_dir)
        return failed

    # --- call records ---------------------------------------------------------------

    def _unlink_objections(self) -> int:
        """Withdrawn objections are history: after the call-record term their hash goes too."""
        cutoff = self.as_of - self.terms.call_records
        return Objection.update(caller_hash=Objection.ERASED_HASH).where(
            (Objection.withdrawn_at < cutoff) & (Objection.caller_hash != Objection.ERASED_HASH)).execute()

    def _erase_calls(self, report: PurgeReport) -> None:
        """Walk the expired calls in (ended_at, id) order, one key range per batch.

        Each batch's range is bounded on both sides by plain ``ended_at`` comparisons (the
        row values make it exact), so SQLite walks just that slice of the ``ended_at``
        index; bounded only by the cutoff, every batch would rescan the rest.
        """
        erase = {column.name: None for column in PERSONAL_CALL_FIELDS}
        cutoff = self.as_of - self.terms.call_records
        not_held = Call.id.not_in(held_calls())
        candidate = has_personal_fields() & not_held

        def erase_batch(where, in_range):
            erased = Call.update(**erase, personal_erased_at=ledger.utcnow(),
                                 personal_erased_reason=ERASED_BY_RETENTION).where(where).execute()
            # the range's details and staff: after the UPDATE, which finds calls by them too
            in_batch = Call.select(Call.id).where(in_range)
            CallDetail.delete().where(CallDetail.call.in_(in_batch)).execute()
            CallStaff.update(staff_hash=CallStaff.ERASED_HASH, staff_sealed=CallStaff.ERASED_SEAL).where(
                CallStaff.call.in_(in_batch) & (CallStaff.staff_hash != CallStaff.ERASED_HASH)).execute()
            return erased

        low = None  # (ended_at, id) of the last call of the previous batch
        while True:
            lower = Value(True) if low is None else (
                (Call.ended_at >= low[0]) & (Tuple(Call.ended_at, Call.id) > Tuple(*low)))
            high = (Call.select(Call.ended_at, Call.id).where(lower & (Call.ended_at < cutoff) & candidate)
                    .order_by(Call.ended_at, Call.id).offset(self.batch_size - 1).limit(1).tuples().first())
            upper = (Call.ended_at < cutoff) if high is None else (
                (Call.ended_at <= high[0]) & (Tuple(Call.ended_at, Call.id) <= Tuple(*high)))
            erased = self._write(lambda r=lower & upper: erase_batch(r & candidate, r & not_held))
            report.calls_erased += erased
            self.progress(erased)
            self._settle_files()
            if high is None:
                return
            low = high


class _Remover:
    """Removes recordings' files in a background thread (with a few helpers) while the
    purge goes on in the database: file-system work and SQLite work overlap.

    The main thread keeps every database write; it learns which batches are done from
    :meth:`finished` and only then takes them off ``purge_pending``. At most ``backlog``
    batches wait, so memory stays bounded. An exception in the background (or in the
    main thread) stops both; what was not done stays in ``purge_pending``.
    """

    THREADS = 8

    def __init__(self, purge: Purge, report: PurgeReport, backlog: int = 2):
        self._purge, self._report = purge, report
        self._todo: queue.Queue = queue.Queue(maxsize=backlog)
        self._done: queue.Queue = queue.Queue()
        self._failure: BaseException | None = None
        self._pool = ThreadPoolExecutor(self.THREADS, thread_name_prefix="purge-unlink")
        self._thread = threading.Thread(target=self._run, name="purge-files", daemon=True)

    def __enter__(self) -> _Remover:
        # what is there besides the ciphertext, looked at once: plaintext in the spool and
        # stray .age.tmp in the store (a crash mid-seal); an expired recording gets no new ones
        spool = self._purge.spool_dir
        self._purge._spool_names = set(os.listdir(spool)) if spool.is_dir() else set()
        self._purge._stray_tmp = {entry.name[:-len(".age.tmp")] for entry in os.scandir(self._purge.vault.store_dir)
                                  if entry.name.endswith(".age.tmp")}
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        with contextlib.suppress(BaseException):  # the exception in flight is the one to report
            self.close()

    def submit(self, key, ids: list[str]) -> None:
        while True:
            self._check()
            try:
                self._todo.put((key, ids), timeout=0.1)
                return
            except queue.Full:
                continue

    def finished(self) -> list[tuple[object, list[str], list[str]]]:
        self._check()
        items = []
        while True:
            try:
                items.append(self._done.get_nowait())
            except queue.Empty:
                return items

    def close(self) -> None:
        """Let the queued batches finish, then stop (idempotent)."""
        if self._thread.is_alive():
            while self._thread.is_alive():
                try:
                    self._todo.put(None, timeout=0.1)
                    break
                except queue.Full:
                    continue
            self._thread.join()
        self._pool.shutdown()
        self._check()

    def _check(self) -> None:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    def _run(self) -> None:
        try:
            while (item := self._todo.get()) is not None:
                key, ids = item
                failed = self._purge.remove_files(ids, self._report, self._pool)
                self._done.put((key, ids, failed))
        except BaseException as exc:  # reported to the main thread by _check
            self._failure = exc
