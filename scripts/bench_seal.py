#!/usr/bin/env python
"""Benchmark sealing a recording: Vault.seal (worker process), seal_file in-process, the age CLI.

Paired runs on the same synthetic WAV; each run times every method once, in rotating
order, on a fresh copy of the file (copying is not timed). A 10 ms gevent ticker runs
throughout; its largest gap while a seal is in progress is the hub stall that seal caused.

Note the work differs: Vault.seal and seal_file also hash the ciphertext, fsync it and its
directory, and unlink the plaintext; ``age CLI + fsync`` adds the fsync to the CLI run.

    .venv/bin/python scripts/bench_seal.py [--size-mb 100] [--runs 7] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import wave
from pathlib import Path

import gevent
import pyrage

from fs_consent.secure.vault import Vault, seal_file


def write_wav(path: Path, size: int) -> None:
    """16-bit mono 8 kHz WAV of noise (incompressible, like any payload age sees)."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        block = os.urandom(1 << 20)
        for _ in range(size >> 20):
            w.writeframesraw(block)


class Ticker:
    """A greenlet that wakes every 10 ms and remembers when."""

    def __init__(self) -> None:
        self.ticks: list[float] = []
        self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while True:
            self.ticks.append(time.monotonic())
            gevent.sleep(0.01)

    def max_gap(self, start: float, end: float) -> float:
        """Largest interval between ticks (or the window's edges) within [start, end]."""
        points = [start] + [t for t in self.ticks if start < t < end] + [end]
        # the first tick after the window shows how long the hub stayed blocked at its end
        after = [t for t in self.ticks if t >= end]
        if after:
            points.append(after[0])
        return max(b - a for a, b in zip(points, points[1:]))

    def stop(self) -> None:
        self._greenlet.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=None, help="where to put the files")
    args = parser.parse_args()
    if shutil.which("age") is None:
        sys.exit("the age CLI is not installed (Debian package 'age')")

    work = Path(tempfile.mkdtemp(prefix="bench-seal-", dir=args.dir))
    source, spool, store, cli_out = work / "source.wav", work / "spool", work / "store", work / "cli"
    for d in (spool, cli_out):
        d.mkdir(mode=0o700)
    recipient = str(pyrage.x25519.Identity.generate().to_public())
    write_wav(source, args.size_mb << 20)
    size_mb = source.stat().st_size / (1 << 20)

    vault = Vault(store, [recipient], workers=2)
    vault.start()
    ticker = Ticker()
    gevent.sleep(0.1)

    def fresh_copy() -> tuple[Path, str]:
        recording_id = uuid.uuid4().hex
        path = spool / f"{recording_id}.wav"
        shutil.copyfile(source, path)
        return path, recording_id

    def run_vault() -> float:
        path, recording_id = fresh_copy()
        start = time.monotonic()
        vault.seal(path, recording_id)
        end = time.monotonic()
        stalls["Vault.seal"].append(ticker.max_gap(start, end))
        return end - start

    def run_in_process() -> float:
        path, recording_id = fresh_copy()
        gevent.sleep(0.02)
        start = time.monotonic()
        seal_file(path, store / f"{recording_id}.age", [recipient])
        end = time.monotonic()
        gevent.sleep(0.02)
        stalls["seal_file"].append(ticker.max_gap(start, end))
        return end - start

    def run_cli(fsync: bool) -> float:
        out = cli_out / f"{uuid.uuid4().hex}.age"
        start = time.monotonic()
        subprocess.run(["age", "-r", recipient, "-o", str(out), str(source)], check=True)
        if fsync:
            fd = os.open(out, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        end = time.monotonic()
        out.unlink()
        return end - start

    methods = {
        "Vault.seal (worker)": run_vault,
        "seal_file in-process": run_in_process,
        "age CLI": lambda: run_cli(False),
        "age CLI + fsync": lambda: run_cli(True),
    }
    times: dict[str, list[float]] = {name: [] for name in methods}
    stalls: dict[str, list[float]] = {"Vault.seal": [], "seal_file": []}
    names = list(methods)
    try:
        for run in range(args.runs):
            order = names[run % len(names):] + names[: run % len(names)]
            for name in order:
                times[name].append(methods[name]())
                for leftover in store.iterdir():
                    leftover.unlink()
    finally:
        ticker.stop()
        vault.stop()
        shutil.rmtree(work)

    cli = times["age CLI"]
    print(f"sealing a {size_mb:.1f} MiB WAV, {args.runs} paired runs, {os.cpu_count()} CPUs, "
          f"pyrage {importlib.metadata.version('pyrage')}, "
          f"{subprocess.run(['age', '--version'], capture_output=True, text=True).stdout.strip()} (age CLI)")
    print(f"{'method':<22} {'median s':>9} {'min s':>7} {'max s':>7} {'MiB/s':>7} {'x age CLI':>10}")
    for name, values in times.items():
        ratio = statistics.median(v / c for v, c in zip(values, cli))
        median = statistics.median(values)
        print(f"{name:<22} {median:>9.3f} {min(values):>7.3f} {max(values):>7.3f} "
              f"{size_mb / median:>7.0f} {ratio:>10.2f}")
    print("(x age CLI = median of the per-run ratios)")
    for name, values in stalls.items():
        print(f"max hub stall during {name}: median {statistics.median(values) * 1000:.0f} ms, "
              f"worst {max(values) * 1000:.0f} ms (10 ms ticker)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
