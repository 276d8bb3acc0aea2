"""The server's ledger writes and call-path reads, off the gevent hub, and the journal
that makes a call's consent facts survive the process being killed.

SQLite's busy wait and a slow disk block the thread that calls them. Here that is a
native thread of its own (``gevent.threadpool``), which owns its connection; the hub,
which plays every caller's prompt, only waits cooperatively for the result.

Writes run in order, in short batched transactions. A batch the database cannot take
(locked, full, unreachable: peewee's ``OperationalError`` and ``InterfaceError``) is
retried, whole and in order, with backoff until it lands; nothing is dropped (on
PostgreSQL the thread's connection is handed back to its pool first, which discards it if
the error broke it, e.g. a terminated backend: the retry runs on a fresh one). While
that lasts, or while the queue is longer than its bound, :attr:`LedgerWriter.healthy`
is False and the server records no new call (fail closed for the recording, open for
the call). A write that fails by itself (a bug, a constraint) is retried alone once,
then logged as lost with the error: never silently.

Consent facts (``facts.Fact``) are also appended to a journal file in the data dir the
moment they are submitted, before the driver acts on them (a plain ``write``: it
survives the process being killed; ``fsync`` follows in the database thread before the
batch holding them commits). The ledger's ``meta`` row ``journal_applied_seq`` says how
far the journal is in the ledger, in the same transaction; at start-up
:func:`replay_journal` writes whatever a crash left between the two.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable

import gevent
import gevent.event
import gevent.queue
from gevent.threadpool import ThreadPool
from peewee import InterfaceError, OperationalError

from ..secure.files import PRIVATE_MODE, check_private
from . import ledger
from .connection import close_database, pooled, reset_connection
from .facts import Fact, from_json

log = logging.getLogger(__name__)

UNAVAILABLE = (OperationalError, InterfaceError)
BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
STALL_S = 1.0  # a batch in the database thread longer than this: the ledger counts as unavailable


class LedgerUnavailable(Exception):
    """A call-path read did not answer within its bound (the ledger is locked or down)."""


JOURNAL_FILE = "ledger.journal"
APPLIED_KEY = "journal_applied_seq"  # the meta row: the last journal seq that is in the ledger
JOURNAL_RESET_BYTES = 1 << 20  # emptied once everything in it has landed and it grew past this


class Journal:
    """Append-only lines ``<seq> <fact json>``, 0600; see the module docstring.

    A fact the disk refused (full) waits in memory and is written, in order, before the
    next fact once the disk takes writes again, unless the ledger has it by then
    (:meth:`landed`): so from that moment on a kill loses none of them. Only what the
    ledger and the disk both refused meanwhile is in memory alone.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_MODE)
        try:
            check_private(path, fd=self._fd)
        except PermissionError:
            os.close(self._fd)
            raise
        self.failing: OSError | None = None
        self._unwritten: list[tuple[int, Fact]] = []  # refused by the disk, not yet in the ledger
        # where a line the disk refused is cut back to; only this object writes the file (no
        # fstat per line: appends run on the event loop)
        self._size = os.fstat(self._fd).st_size

    def append(self, seq: int, fact: Fact) -> bool:
        """Write the line (after any the disk refused before); False, and nothing half-written
        left behind, when the disk refuses."""
        self._unwritten.append((seq, fact))
        if len(self._unwritten) == 1:
            lines = f"{seq} {fact.to_json()}\n".encode()
        else:
            lines = b"".join(f"{s} {f.to_json()}\n".encode() for s, f in self._unwritten)
        size = self._size
        try:
            if os.write(self._fd, lines) != len(lines):
                raise OSError(28, "short write")
        except OSError as exc:
            try:
                os.ftruncate(self._fd, size)
            except OSError:
                pass
            if self.failing is None:
                log.error("ledger journal %s cannot be written (%s): consent facts wait in memory; new calls go "
                          "on unrecorded", self.path, exc.strerror or exc)
            self.failing = exc
            return False
        if self.failing is not None:
            log.warning("ledger journal %s can be written again (%d facts that waited in memory are in it now)",
                        self.path, len(self._unwritten) - 1)
            self.failing = None
        self._size = size + len(lines)
        self._unwritten.clear()
        return True

    def retry(self) -> bool:
        """After the disk refused a line: try again now (what waits, or a 4 KiB allocation
        probe when the ledger already has it all); True once the journal can be written."""
        if self.failing is None:
            return True
        if self._unwritten:
            fact = self._unwritten.pop()
            return self.append(*fact)
        size = os.fstat(self._fd).st_size
        try:
            os.posix_fallocate(self._fd, size, 4096)
        except OSError as exc:
            self.failing = exc
            return False
        finally:
            os.ftruncate(self._fd, size)
        log.warning("ledger journal %s can be written again", self.path)
        self.failing = None
        return True

    def landed(self, seq: int) -> None:
        """Every fact up to ``seq`` is in the ledger: none of them needs writing any more."""
        if self._unwritten:
            self._unwritten = [(s, f) for s, f in self._unwritten if s > seq]

    def sync(self) -> None:
        os.fsync(self._fd)

    def size(self) -> int:
        return self._size

    def reset(self) -> None:
        os.ftruncate(self._fd, 0)
        self._size = 0
        self._unwritten.clear()

    def close(self) -> None:
        os.close(self._fd)

    @staticmethod
    def read(path: Path) -> list[tuple[int, Fact]]:
        if not path.exists():
            return []
        entries = []
        for number, line in enumerate(path.read_bytes().decode("utf-8", "replace").splitlines(), start=1):
            seq, _, text = line.partition(" ")
            try:
                entries.append((int(seq), from_json(text)))
            except (ValueError, KeyError, TypeError):
                log.error("ledger journal %s line %d is damaged and skipped", path, number)
        return entries


def applied_seq() -> int:
    row = ledger.Meta.get_or_none(ledger.Meta.key == APPLIED_KEY)
    return int(row.value) if row else 0


def _set_applied_seq(seq: int) -> None:
    if not ledger.sql("UPDATE meta SET value = ? WHERE key = ?", (str(seq), APPLIED_KEY)).rowcount:
        ledger.Meta.insert(key=APPLIED_KEY, value=str(seq)).execute()


def replay_journal(path: Path, vault) -> tuple[int, int]:
    """At start-up, before anything else writes: land what a crash left in the journal.

    A fact the ledger cannot take now (locked by another process, full, unreachable) is
    retried with backoff until it lands, as the writer does, and start-up waits for it: the
    journal is emptied only once every fact in it is in the ledger (or failed by itself, and
    was logged). Skipping it would empty the journal over a consent fact and every later
    fact of its call. A start that waits longer than systemd allows is restarted and finds
    the journal as it was.

    Returns (facts written, the highest seq seen), and empties the journal.
    """
    entries = Journal.read(path)
    done = applied_seq()
    pending = [(seq, fact) for seq, fact in entries if seq > done]
    top = max([done] + [seq for seq, _ in entries])
    for seq, fact in pending:
        _replay_one(seq, fact, vault)
    if pending:
        log.warning("ledger journal: %d consent facts a crash left unwritten are now in the ledger", len(pending))
    if path.exists():
        os.truncate(path, 0)
    return len(pending), top


def _replay_one(seq: int, fact: Fact, vault) -> None:
    attempt = 0
    while True:
        try:
            with ledger.database.atomic():
                fact.apply(vault)
                _set_applied_seq(seq)
        except UNAVAILABLE as exc:
            if attempt == 0:
                log.error("ledger journal: the ledger cannot take fact %d (%s) now (%s: %s); start-up waits "
                          "and retries until it can", seq, fact.kind, type(exc).__name__, _first_line(exc))
            gevent.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
            attempt += 1
            continue
        except Exception as exc:  # noqa: BLE001 - said, and the rest still lands
            log.error("ledger journal: fact %d (%s) could not be written: %s: %s", seq, fact.kind,
                      type(exc).__name__, _first_line(exc))
            return
        if attempt:
            log.warning("ledger journal: fact %d landed after %d retries", seq, attempt)
        return


class LedgerWriter:
    """Serialises the server's writes into one database thread; see the module docstring."""

    def __init__(self, journal: Path | None = None, vault=None, *, max_batch: int = 50,
                 high_water: int = 20000, first_seq: int = 1, readers: int = 1) -> None:
        self._journal = Journal(journal) if journal is not None else None
        self._vault = vault
        self._seq = first_seq - 1
        self._applied = first_seq - 1
        self._queue: gevent.queue.Queue = gevent.queue.Queue()
        self._max_batch = max_batch
        self._high_water = high_water  # queued writes past which new calls are not recorded
        self._pool: ThreadPool | None = None
        self._reader: ThreadPool | None = None
        self._readers = readers  # threads for the call path's reads (storage.pool_size - 1)
        self._greenlet = None
        self._failing_since: float | None = None
        self._batch_since: float | None = None  # when the batch now in the database thread started
        self._last_error = ""
        self.lost = 0  # writes that failed alone after a retry (each logged)

    # --- life cycle ---------------------------------------------------------------

    def start(self) -> None:
        self._pool = ThreadPool(1)
        self._reader = ThreadPool(self._readers)
        self._greenlet = gevent.spawn(self._run)

    def stop(self, timeout: float | None = 30.0) -> None:
        if self._greenlet is None:
            return
        self.flush(timeout)
        self._greenlet.kill()
        self._greenlet = None
        self._pool.apply(close_database)  # the writer thread's own connection
        # pooled readers gave theirs back after each read; SQLite's readers keep one each, closed
        # as their thread ends (peewee's per-thread state goes with it)
        for pool in (self._pool, self._reader):
            pool.kill()
        if self._journal is not None:
            if self._applied == self._seq:
                self._journal.reset()  # everything landed: a clean stop leaves nothing to replay
            self._journal.close()

    # --- the call path ------------------------------------------------------------

    def submit(self, write: Callable[[], object]) -> None:
        """Queue a write; it runs soon, in order, in a transaction with its neighbours.

        It runs in the database thread: it may touch the database and files, never a
        gevent object (use :meth:`call` to hand a result back to a greenlet).
        """
        self._queue.put(write)

    def record(self, fact: Fact) -> None:
        """Submit a consent fact: journaled now (it survives a kill), written in order."""
        self._seq += 1
        if self._journal is not None:
            self._journal.append(self._seq, fact)
        self._queue.put(_FactWrite(self._seq, fact, self._vault))

    def call(self, write: Callable[[], object], timeout: float | None = 10.0):
        """Queue a write in order with the others and wait for what it returns (or raises)."""
        pending = _Pending(write)
        self._queue.put(pending)
        try:
            return pending.result.get(timeout=timeout)
        except gevent.Timeout:
            raise LedgerUnavailable(f"the ledger did not answer within {timeout:g} s") from None

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until everything submitted so far is written; False if that took longer."""
        try:
            self.call(_nothing, timeout)
            return True
        except LedgerUnavailable:
            return False

    @property
    def healthy(self) -> bool:
        """Whether a new call's consent facts can be expected to be kept and to land soon."""
        journal_ok = self._journal is None or self._journal.retry()
        stalled = self._batch_since is not None and time.monotonic() - self._batch_since > STALL_S
        return journal_ok and not stalled and self._failing_since is None and self._queue.qsize() < self._high_water

    @property
    def unhealthy_reason(self) -> str:
        if self._journal is not None and self._journal.failing is not None:
            return f"journal cannot be written ({self._journal.failing.strerror or self._journal.failing})"
        if self._failing_since is not None:
            return f"ledger cannot take writes ({self._last_error})"
        if self._batch_since is not None and time.monotonic() - self._batch_since > STALL_S:
            return f"a ledger write has waited over {STALL_S:g} s (locked or slow)"
        return f"ledger backlog over {self._high_water} writes"

    def read(self, query: Callable[[], object], timeout: float):
        """Run a read the call path needs now, off the hub; LedgerUnavailable past ``timeout``."""
        try:
            value, error = self._reader.spawn(_read, query).get(timeout=timeout)
        except gevent.Timeout:
            raise LedgerUnavailable(f"no answer within {timeout:g} s") from None
        _raise(error)
        return value

    # --- the database thread --------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._land(batch)

    def _land(self, batch: list) -> None:
        self._batch_since = time.monotonic()
        try:
            self._land_batch(batch)
        finally:
            self._batch_since = None

    def _land_batch(self, batch: list) -> None:
        attempt = 0
        while True:
            try:
                _raise(self._pool.apply(_write_batch, (batch, self._journal)))
            except UNAVAILABLE as exc:
                self._failing(exc)
                gevent.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
                attempt += 1
                continue
            except Exception:  # noqa: BLE001 - one write is at fault: find it, land the rest
                for write in batch:
                    self._land_alone(write)
            self._recovered(len(batch))
            for item in batch:
                if isinstance(item, _Pending):
                    item.deliver()
                elif isinstance(item, _FactWrite):
                    self._applied = max(self._applied, item.seq)
            if self._journal is not None:
                self._journal.landed(self._applied)
            self._maybe_reset_journal()
            return

    def _maybe_reset_journal(self) -> None:
        """Runs on the hub, where every append happens: nothing can slip in between."""
        if (self._journal is not None and self._applied == self._seq and self._queue.empty()
                and self._journal.size() > JOURNAL_RESET_BYTES):
            self._journal.reset()

    def _land_alone(self, write: Callable[[], object]) -> None:
        attempt = 0
        while True:
            try:
                _raise(self._pool.apply(_write_batch, ([write], self._journal)))
                return
            except UNAVAILABLE as exc:
                self._failing(exc)
                gevent.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
                attempt += 1
            except Exception as exc:  # noqa: BLE001 - it failed with its neighbours and alone: report it
                self.lost += 1
                log.error("ledger write lost: %s failed: %s: %s", _name(write), type(exc).__name__,
                          _first_line(exc))
                return

    def _failing(self, exc: Exception) -> None:
        self._last_error = f"{type(exc).__name__}: {_first_line(exc)}"
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.error("ledger cannot take writes (%s): they wait and are retried; new calls go on "
                      "unrecorded until it can", self._last_error)

    def _recovered(self, written: int) -> None:
        if self._failing_since is not None:
            waited = time.monotonic() - self._failing_since
            self._failing_since = None
            log.warning("ledger takes writes again after %.1f s; %d queued writes landed first", waited, written)


class _Pending:
    """A queued write whose outcome a greenlet waits for (set on the hub, never in the thread)."""

    def __init__(self, write: Callable[[], object]) -> None:
        self.write = write
        self.value = None
        self.error: BaseException | None = None
        self.result = gevent.event.AsyncResult()

    def __call__(self) -> None:
        try:
            self.value, self.error = self.write(), None
        except UNAVAILABLE:
            raise  # the batch is retried
        except Exception as exc:  # noqa: BLE001 - the waiting greenlet gets it
            self.error = exc

    def deliver(self) -> None:
        if self.error is not None:
            self.result.set_exception(self.error)
        else:
            self.result.set(self.value)


def _nothing() -> None:
    return None


def _read(query: Callable[[], object]) -> tuple[object, Exception | None]:
    """Runs in a reader thread; returns (value, error), as ``_write_batch`` does.

    On PostgreSQL the thread takes a pooled connection for the read and gives it back (so
    ``pool_size - 1`` readers share what the writer leaves); a connection found broken (a
    backend terminated while it sat in the pool) is dropped and the read tried once more on
    a fresh one."""
    try:
        if not pooled():
            return query(), None
        try:
            try:
                return query(), None
            except UNAVAILABLE:
                reset_connection()
                return query(), None
        finally:
            close_database()
    except Exception as exc:  # noqa: BLE001 - raised again on the hub, by read()
        return None, exc


class _FactWrite:
    def __init__(self, seq: int, fact: Fact, vault) -> None:
        self.seq, self.fact, self.vault = seq, fact, vault

    def __call__(self) -> None:
        self.fact.apply(self.vault)

    def describe(self) -> str:
        return f"fact {self.seq} ({self.fact.kind})"


def _raise(error: Exception | None) -> None:
    if error is not None:
        raise error


def _write_batch(batch: list, journal: Journal | None) -> Exception | None:
    """Runs in the database thread; returns its error (an exception raised in a gevent
    pool thread would also be printed to stderr as if it were unexpected)."""
    try:
        _write_all(batch, journal)
    except UNAVAILABLE as exc:
        reset_connection()  # a broken connection would fail every retry: the next one connects afresh
        return exc
    except Exception as exc:  # noqa: BLE001 - handed to the writer greenlet
        return exc
    return None


def _write_all(batch: list, journal: Journal | None) -> None:
    facts = [item.seq for item in batch if isinstance(item, _FactWrite)]
    if facts and journal is not None:
        try:
            journal.sync()  # against power loss; a killed process keeps what was written anyway
        except OSError:
            pass  # the facts are in memory and about to be in the ledger
    with ledger.database.atomic():
        for write in batch:
            write()
        if facts:
            _set_applied_seq(max(facts))


def _name(write) -> str:
    if isinstance(write, _FactWrite):
        return write.describe()
    write = getattr(write, "write", write)
    return getattr(write, "__qualname__", type(write).__name__)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:120] if text else ""
