#!/usr/bin/env python3
"""Benchmark: ``fs-consent subject find`` on a ledger of 1,000,000 calls.

A fresh data dir (real keys, the real schema) gets N calls in bulk: numbers are synthetic
Dutch mobile and geographic numbers, hashed with the installation's field key as the
server hashes them (half the calls from numbers that call once, half from regulars who
call about ten times), about one call in five has a recording, and a few are held or
restricted. Then:

* the look-up as ``subject find`` does it (hash of a written form of the number,
  ``subjects.calls_of``, recordings, holds, restrictions and details of the calls found,
  the objection check) for a few hundred random numbers, some never seen: median and p90;
* the whole ``fs-consent subject find`` command in a child process (Python start-up and
  imports included), a few runs, median; and ``fs-consent --version`` for the start-up alone.

Target: the look-up's median under 100 ms at 1,000,000 calls (an indexed hash look-up
stays flat whatever the size).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fs_consent.privacy import objections, subjects  # noqa: E402
from fs_consent.secure import keys  # noqa: E402
from fs_consent.secure.protect import FieldProtector  # noqa: E402
from fs_consent.store import ledger  # noqa: E402
from fs_consent.store.connection import close_database, open_database, sqlite_url  # noqa: E402

SEALED_PHONE_SIZE = 1 + 12 + 12 + 16  # protect.seal of "+31612345678": version, nonce, text, tag
AREA_CODES = ["10", "20", "30", "40", "50", "70", "71", "73", "76", "79", "592", "318", "495"]


def synthetic_number(rng: random.Random) -> str:
    """A national number as written locally: 06-12345678 or 040-1234567 (9 digits after the 0)."""
    if rng.random() < 0.6:
        return "06-" + "".join(rng.choices("0123456789", k=8))
    area = rng.choice(AREA_CODES)
    return f"0{area}-" + "".join(rng.choices("0123456789", k=9 - len(area)))


def written_form(number: str, rng: random.Random) -> str:
    """The same number as a requester might write it."""
    digits = number.replace("-", "")[1:]
    return rng.choice([number, "+31" + digits, "0031 " + digits, "+31 (0)" + digits, "0" + digits])


def populate(data_dir: Path, calls: int, rng: random.Random) -> tuple[float, list[str]]:
    """Bulk-insert the history; returns (seconds, the distinct numbers)."""
    started = time.perf_counter()
    keys.init_keys(data_dir / "keys")
    protector = FieldProtector(keys.load_field_key(data_dir / "keys"))
    db_path = data_dir / "ledger.db"
    open_database(sqlite_url(db_path))  # the real schema and indexes
    close_database()
    singles = [synthetic_number(rng) for _ in range(calls // 2)]
    regulars = [synthetic_number(rng) for _ in range(max(1, calls // 20))]
    numbers = singles + rng.choices(regulars, k=calls - len(singles))
    rng.shuffle(numbers)
    hashes = {n: protector.lookup_hash("phone", n) for n in set(numbers)}
    first = dt.datetime(2026, 1, 1)
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA journal_mode=off")  # a bulk load into a fresh file; WAL again at the end
    db.execute("PRAGMA synchronous=off")
    db.execute("PRAGMA cache_size=-262144")
    # the indexes are built after the load (sorted, far faster than random inserts), as they were
    indexes = db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
                         " AND tbl_name IN ('call', 'recording')").fetchall()
    for name, _sql in indexes:
        db.execute(f'DROP INDEX "{name}"')
    with db:
        db.executemany(
            "INSERT INTO call (id, uuid, started_at, ended_at, duration_seconds, outcome, decided_by, consent_mode,"
            " language, prompt_id, prompt_version, caller_hash, caller_sealed) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            ((i + 1, str(uuid.UUID(int=rng.getrandbits(128), version=4)), str(first + dt.timedelta(seconds=30 * i)),
              str(first + dt.timedelta(seconds=30 * i + 180)), 180.0, "granted" if i % 5 == 0 else "refused",
              "silence", "opt-out", "nl", "consent-nl", "2026-11-01", hashes[n], os.urandom(SEALED_PHONE_SIZE))
             for i, n in enumerate(numbers)))
        recorded = range(1, calls + 1, 5)
        db.executemany(
            "INSERT INTO recording (id, call_id, state, started_at, sealed_at, size, sha256) VALUES (?,?,?,?,?,?,?)",
            ((uuid.UUID(int=rng.getrandbits(128), version=4).hex, call_id, "sealed", str(first), str(first), 4096,
              "0" * 64) for call_id in recorded))
        now = str(dt.datetime(2026, 6, 1))
        db.execute("INSERT INTO subject_request (ref, kind, received_on, due_on, identity_verified_by, registered_at)"
                   " VALUES ('BENCH-1', 'restrict', '2026-05-01', '2026-06-01', 'bench', ?)", (now,))
        some = rng.sample(list(recorded), min(200, len(recorded)))
        db.executemany("INSERT INTO restriction (call_id, request_id, placed_at, placed_by) VALUES (?, 1, ?, 'b')",
                       ((call_id, now) for call_id in some[:100]))
        db.executemany(
            "INSERT INTO legal_hold (recording_id, call_id, reason, case_ref, placed_at, placed_by)"
            " SELECT id, call_id, 'aggression', 'PV-1', ?, 'b' FROM recording WHERE call_id = ?",
            ((now, call_id) for call_id in some[100:]))
    for _name, sql in indexes:
        db.execute(sql)
    db.execute("ANALYZE")
    db.execute("PRAGMA journal_mode=wal")
    db.close()
    return time.perf_counter() - started, sorted(hashes)


def look_ups(data_dir: Path, numbers: list[str], queries: int, rng: random.Random) -> tuple[list[float], int]:
    """Seconds per look-up (the find path, in process) and the calls found in all."""
    open_database(sqlite_url(data_dir / "ledger.db"))
    protector = subjects.protector_for(data_dir / "keys")
    asked = [written_form(rng.choice(numbers), rng) for _ in range(queries - queries // 10)]
    asked += [written_form(synthetic_number(rng), rng) for _ in range(queries // 10)]  # mostly never called
    rng.shuffle(asked)
    times, total = [], 0
    for number in asked:
        started = time.perf_counter()
        caller_hash = subjects.phone_hash(protector, number)
        calls = list(subjects.calls_of(caller_hash))
        rows = subjects.overview(calls)
        objections.active(caller_hash)
        times.append(time.perf_counter() - started)
        total += len(rows)
    plan = ledger.database.execute_sql("EXPLAIN QUERY PLAN SELECT id FROM call WHERE caller_hash = ?",
                                       ("x",)).fetchall()
    close_database()
    print(f"query plan: {' / '.join(row[-1] for row in plan)}")
    return times, total


def cli_runs(data_dir: Path, number: str, runs: int) -> tuple[float, float]:
    """Median wall seconds of ``subject find`` and of ``--version`` (start-up alone)."""
    env = dict(os.environ, HOME=str(data_dir))
    env.pop("FS_CONSENT_CONFIG", None)

    def median(*args: str) -> float:
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "fs_consent.cli", *args], env=env, cwd=ROOT,
                                  capture_output=True, text=True)
            times.append(time.perf_counter() - started)
            if done.returncode != 0:
                raise SystemExit(f"fs-consent {args[0]} failed: {done.stderr}")
        return statistics.median(times)

    return median("--data-dir", str(data_dir), "subject", "find", "--phone", number), median("--version")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--cli-runs", type=int, default=7)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    data_dir = Path(tempfile.mkdtemp(prefix="bench-subject-"))
    try:
        setup, numbers = populate(data_dir, args.calls, rng)
        print(f"ledger: {args.calls:,} calls from {len(numbers):,} numbers, {(args.calls + 4) // 5:,} recordings "
              f"(setup {setup:.1f} s, {(data_dir / 'ledger.db').stat().st_size / 2**20:.0f} MB)")
        times, found = look_ups(data_dir, numbers, args.queries, rng)
        regular = next(n for n in numbers if n.startswith("06"))
        cli, startup = cli_runs(data_dir, written_form(regular, rng), args.cli_runs)
    finally:
        close_database()
        shutil.rmtree(data_dir, ignore_errors=True)
    median, p90 = statistics.median(times) * 1e3, percentile(times, 0.9) * 1e3
    print(f"{'measure':<48} {'median':>10} {'p90':>10}")
    print(f"{'find look-up, in process (' + str(len(times)) + ' numbers)':<48} {median:>8.2f}ms {p90:>8.2f}ms")
    print(f"{'fs-consent subject find, whole process':<48} {cli * 1e3:>8.0f}ms {'':>10}")
    print(f"{'  start-up alone (fs-consent --version)':<48} {startup * 1e3:>8.0f}ms {'':>10}")
    print(f"calls found: {found:,} ({found / len(times):.1f} per number asked)")
    print(f"target: look-up median < 100 ms at {args.calls:,} calls: {'yes' if median < 100 else 'NO'}")


if __name__ == "__main__":
    main()
