#!/usr/bin/env python
"""Benchmark ``fs-consent audit verify`` and ``audit export`` on a large trail.

Builds a SQLite ledger with N synthetic entries (a correct hash chain, bulk-inserted,
with a signed checkpoint and its ``audit.checkpoint`` entry every 1000 entries, as the
server writes them), then runs each command in its own process, as an operator would,
and reports wall time and the peak RSS of that process (``wait4``). Runs at two sizes
by default, so flat memory shows as the same RSS at 100,000 and 1,000,000 entries.

    .venv/bin/python scripts/bench_audit.py [--entries 100000,1000000] [--dir /tmp]

Target (issue 4): under 30 s with flat memory at 1,000,000 entries.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from fs_consent.secure import keys
from fs_consent.store import audit, ledger
from fs_consent.store.connection import close_database, open_database, sqlite_url  # noqa: E402

CHECKPOINT_EVERY = 1000
ACTIONS = [("consent.decision", "call"), ("recording.seal", "recording"), ("consent.decision", "call"),
           ("recording.delete", "recording"), ("consent.withdrawal", "call")]


def build(data: Path, n: int) -> float:
    """Write n entries (and their checkpoints) into a fresh ledger; returns seconds taken."""
    started = time.perf_counter()
    keys_dir = data / "keys"
    keys.init_keys(keys_dir)
    signer = keys.load_signing_key(keys_dir)
    public = keys.signing_public_key(signer)
    open_database(sqlite_url(data / "ledger.db"))  # creates every table
    close_database()
    db = sqlite3.connect(data / "ledger.db")
    db.execute("PRAGMA journal_mode=wal")
    db.execute("PRAGMA synchronous=normal")
    t0 = dt.datetime(2026, 1, 1)
    step = dt.timedelta(seconds=365 * 86400 / n)
    prev = ledger.GENESIS_HASH
    entries, checkpoints = [], []
    cp_id = 0
    for seq in range(1, n + 1):
        at = t0 + step * seq
        if seq % CHECKPOINT_EVERY == 0:  # sign the previous entry, record the checkpoint
            cp_id += 1
            signed_at = at.isoformat()
            sig = base64.b64encode(signer.sign(audit.checkpoint_message(seq - 1, prev, signed_at))).decode()
            checkpoints.append((cp_id, seq - 1, prev, str(at), public, sig))
            actor, action, otype, oid = "server", "audit.checkpoint", "audit", str(seq - 1)
            detail = json.dumps({"checkpoint": cp_id, "head_hash": prev, "public_key": public, "seq": seq - 1},
                                sort_keys=True, separators=(",", ":"))
        else:
            action, otype = ACTIONS[seq % len(ACTIONS)]
            actor, oid = "server", uuid.uuid4().hex if otype == "recording" else str(uuid.uuid4())
            detail = json.dumps({"by": "silence", "outcome": "granted"} if otype == "call"
                                else {"reason": "withdrawn"}, sort_keys=True, separators=(",", ":"))
        digest = ledger.entry_digest(prev, at, actor, action, otype, oid, detail)
        entries.append((seq, str(at), actor, action, otype, oid, detail, prev, digest))
        prev = digest
        if len(entries) == 50_000 or seq == n:
            with db:
                db.executemany("INSERT INTO audit_entry (seq, at, actor, action, object_type, object_id, detail, "
                               "prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", entries)
                db.executemany("INSERT INTO audit_checkpoint (id, seq, head_hash, signed_at, public_key, signature) "
                               "VALUES (?, ?, ?, ?, ?, ?)", checkpoints)
            entries, checkpoints = [], []
    db.close()
    return time.perf_counter() - started


def run(args: list[str], data: Path) -> tuple[float, float, int, str]:
    """Run the CLI in its own process: (seconds, peak RSS MiB, exit status, last output line)."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "fs_consent.cli", "--data-dir", str(data), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    last = out.strip().splitlines()[-1] if out.strip() else ""
    return seconds, usage.ru_maxrss / 1024, proc.returncode, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", default="100000,1000000", help="comma-separated trail sizes")
    parser.add_argument("--dir", default=None, help="where to build the ledgers (default: a temp dir)")
    opts = parser.parse_args()
    sizes = [int(x) for x in opts.entries.split(",")]
    print(f"# audit trail benchmark: Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
          f"{os.cpu_count()} CPUs, {platform.machine()}")
    print(f"{'entries':>10} {'command':<28} {'seconds':>8} {'peak RSS MiB':>13}  result")
    for n in sizes:
        root = Path(tempfile.mkdtemp(prefix="bench-audit-", dir=opts.dir))
        data = root / "data"
        try:
            built = build(data, n)
            db_mb = (data / "ledger.db").stat().st_size / 2**20
            print(f"{n:>10} {'(build: bulk insert)':<28} {built:>8.1f} {'':>13}  ledger.db {db_mb:.0f} MiB")
            for name, args in [("audit verify", ["audit", "verify"])] + [
                    (f"audit export --format {fmt}", ["audit", "export", "--format", fmt, "--out",
                                                      str(root / f"trail.{fmt}")]) for fmt in ("jsonl", "csv", "json")]:
                seconds, rss, status, last = run(args, data)
                if name.startswith("audit export"):
                    out = root / f"trail.{args[3]}"
                    last = f"{out.stat().st_size / 2**20:.0f} MiB written" if status == 0 else last
                    out.unlink(missing_ok=True)
                print(f"{n:>10} {name:<28} {seconds:>8.1f} {rss:>13.0f}  "
                      f"{'ok' if status == 0 else f'EXIT {status}'}: {last[:90]}")
                if status != 0:
                    sys.exit(1)
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
