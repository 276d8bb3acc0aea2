#!/usr/bin/env python3
"""Benchmark: the retention purge at two sizes (default 100,000 and 1,000,000 call records,
with a tenth as many recordings).

For each size: a fresh data dir whose ledger holds N expired call records (caller fields
set) and N/10 expired sealed recordings, each with a small fake ciphertext in the store,
inserted in bulk; then ``fs-consent purge`` in a child process, as the systemd timer runs
it. Prints the child's wall time and peak RSS (from wait4), checks that everything expired
is gone, and the growth factor from the small size to the large one.

Target on the reference machine: the large size in under 60 s and under 200 MB, growth no
worse than linear (time and RSS ratio <= the size ratio).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fs_consent.store.connection import close_database, open_database, sqlite_url  # noqa: E402

FAKE_CIPHERTEXT = b"age-encryption.org/v1\n" + b"\x00" * 106  # 128 bytes: the purge never reads it


def populate(data_dir: Path, calls: int, recordings: int) -> float:
    """Bulk-insert the synthetic history; returns the seconds it took."""
    started = time.perf_counter()
    store = data_dir / "store"
    store.mkdir(mode=0o700, parents=True)
    (data_dir / "spool").mkdir(mode=0o700)
    db_path = data_dir / "ledger.db"
    open_database(sqlite_url(db_path))  # the real schema
    close_database()
    ended = dt.datetime(2020, 1, 1)
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA journal_mode=wal")
    db.execute("PRAGMA synchronous=off")
    with db:
        db.executemany(
            "INSERT INTO call (uuid, started_at, ended_at, duration_seconds, outcome, consent_mode, language,"
            " prompt_id, prompt_version, caller_hash, caller_sealed) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            ((str(uuid.UUID(int=i)), str(ended + dt.timedelta(seconds=i)), str(ended + dt.timedelta(seconds=i + 60)),
              60.0, "granted", "opt-out", "nl", "consent-nl", "2026-11-01", os.urandom(32).hex(), os.urandom(40))
             for i in range(calls)))
    with db:
        ids = [uuid.UUID(int=(1 << 100) + i, version=4).hex for i in range(recordings)]
        step = max(1, calls // max(1, recordings))
        db.executemany(
            "INSERT INTO recording (id, call_id, state, started_at, sealed_at, size, sha256)"
            " VALUES (?,?,?,?,?,?,?)",
            ((rid, 1 + i * step, "sealed", str(ended), str(ended), len(FAKE_CIPHERTEXT), "0" * 64)
             for i, rid in enumerate(ids)))
    db.close()
    for rid in ids:
        fd = os.open(store / f"{rid}.age", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, FAKE_CIPHERTEXT)
        os.close(fd)
    os.sync()  # as in production: the recordings are on disk, not just in the page cache
    return time.perf_counter() - started


def run_purge(data_dir: Path, batch_size: int) -> tuple[float, int, str]:
    """The purge in a child process: (wall seconds, peak RSS bytes, its summary line)."""
    env = dict(os.environ, FS_CONSENT_DATA_DIR=str(data_dir), HOME=str(data_dir))
    env.pop("FS_CONSENT_CONFIG", None)
    (data_dir / "keys").mkdir(mode=0o700)  # the purge needs no key; an empty keys dir is enough
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "fs_consent.cli", "purge", "--batch-size", str(batch_size)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, rusage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"purge failed ({proc.returncode}): {err.decode()}")
    return wall, rusage.ru_maxrss * 1024, out.decode().strip()


def check(data_dir: Path, calls: int, recordings: int) -> None:
    db = sqlite3.connect(data_dir / "ledger.db")
    left = db.execute("SELECT COUNT(*) FROM recording WHERE state != 'deleted'").fetchone()[0]
    named = db.execute("SELECT COUNT(*) FROM call WHERE caller_hash IS NOT NULL OR caller_sealed IS NOT NULL"
                       ).fetchone()[0]
    pending = db.execute("SELECT COUNT(*) FROM purge_pending").fetchone()[0]
    db.close()
    files = sum(1 for _ in os.scandir(data_dir / "store"))
    if (left, named, pending, files) != (0, 0, 0, 0):
        raise SystemExit(f"purge incomplete: {left} recordings, {named} named calls, {pending} pending, {files} files")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000],
                        help="call-record counts (recordings: a tenth of each)")
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--keep", action="store_true", help="keep the data dirs (printed)")
    args = parser.parse_args()
    rows = []
    for calls in args.sizes:
        recordings = calls // 10
        data_dir = Path(tempfile.mkdtemp(prefix=f"bench-purge-{calls}-"))
        try:
            setup = populate(data_dir, calls, recordings)
            wall, rss, summary = run_purge(data_dir, args.batch_size)
            check(data_dir, calls, recordings)
            rows.append((calls, recordings, wall, rss))
            print(f"{calls:>9,} call records + {recordings:>7,} recordings: purge {wall:6.1f} s, "
                  f"peak RSS {rss / 2**20:5.1f} MB  (setup {setup:.1f} s)")
            print(f"          {summary}")
        finally:
            if args.keep:
                print(f"          data dir kept: {data_dir}")
            else:
                shutil.rmtree(data_dir, ignore_errors=True)
    if len(rows) >= 2:
        (small, small_recs, t_small, m_small), (large, large_recs, t_large, m_large) = rows[0], rows[-1]
        per_small, per_large = t_small / (small + small_recs) * 1e6, t_large / (large + large_recs) * 1e6
        print(f"growth x{large / small:g} in size: time x{t_large / t_small:.1f} "
              f"({per_small:.0f} -> {per_large:.0f} us per item), peak RSS x{m_large / m_small:.2f}")
        print(f"target, large size: time < 60 s: {'yes' if t_large < 60 else 'NO'}; "
              f"peak RSS < 200 MB: {'yes' if m_large < 200 * 2**20 else 'NO'}; "
              f"time growth <= size growth: {'yes' if t_large / t_small <= large / small else 'NO'}")

if __name__ == "__main__":
    main()
