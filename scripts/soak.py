#!/usr/bin/env python3
"""Soak: randomized mixed calls against a real `fs-consent serve`, with real faults on the way.

Runs N emulated FreeSWITCH calls (a seeded random mix of every caller scenario in
fs_consent/emulator/scenarios.py: refuse, silence, another digit, the grant key, withdrawal by the
caller's keys and by the agent's key, hold, hang-up in the prompt, the caller hanging up
while recorded; randomized key moments; talk times of 0.2-0.8 s, and 3-6 s for
--long-share of them, long enough for a call to outlive a kill and the restart after it,
as a real conversation does) arriving at a steady rate, against
`fs-consent serve` in its own process. Its data dir is a tmpfs this script mounts (root
needed), so it can be filled; the spool is on another file system, as in production.
During the run it injects, for real:

* --kills SIGKILLs of the server, spread over the run, each followed by a restart like
  systemd's (Restart=on-failure: a start that fails is retried after --restart-delay), at
  least 2 s after the server was last ready. None falls in the full-disk window or the 5 s
  after it: a fact that neither the journal nor the ledger can take waits in memory
  (ledger_writer.Journal), so a kill then loses it by design (those calls go unrecorded);
  a kill while the ledger is locked is in scope (start-up then waits for the ledger);
* a full data dir for --full-seconds (a filler file takes every free byte of the tmpfs,
  then is removed);
* a ledger lock for --lock-seconds (another process holds BEGIN EXCLUSIVE on ledger.db);
* a killed seal worker (SIGKILL of one of the server's `fs_consent.secure.seal_worker` children).

Then the server is stopped cleanly (SIGTERM) and started once more, so that start-up
recovery runs with nothing else going on; once the spool is empty (or --settle seconds
passed) it is stopped again and the data dir, the ledger and the store are checked
against what the emulator saw. Figures (the last seven lines):

calls offered
    calls fs-consent took: the emulator received a command after the handshake (connect,
    myevents, linger, event): the server had then journaled the call (CallOpened is
    written to ledger.journal before the first command of the call is sent). Not
    counted, and shown apart: calls "not offered" (the connection was refused or closed
    before `connect`: FreeSWITCH would have sent them to the dialplan's fallback,
    unrecorded) and calls "cut off in the handshake" (the server was killed between
    `connect` and its first command of the call; the fallback carries them as well).
    A handshake cut off while no kill was in progress is a fault (must be 0).
calls in the ledger
    distinct uuids of offered calls that have a row in `call`. Must equal calls offered.
outcomes missing
    rows in `call` (all of them) with outcome NULL or ended_at NULL. Must be 0.
recordings sealed
    rows in `recording` in state sealed.
recordings lost
    WAVs the emulator wrote with audio, of a call the ledger says is granted and not
    withdrawn, that are not kept: the recording row is not sealed (missing, failed,
    deleted), or it is sealed but store/<id>.age is missing or does not decrypt (with
    keys/identity.txt) to exactly the bytes the emulator wrote (sha256 of its final
    file; a file removed from the spool while FreeSWITCH was still writing it has none,
    so a seal of it cannot match). A recording whose grant had not landed in the ledger
    when the server died (the call then ends `error` by `restart`) and that recovery
    deleted is not lost: it was never known to have consent; it must have an audit
    entry (see "deleted unaudited"). Must be 0.
plaintext left
    files in the spool at the end. Must be 0.
misattributed recordings
    recording rows whose call uuid is not the uuid of the emulated call that wrote that
    WAV (the row's id is the WAV's file name), and sealed rows no emulated call wrote.
    Must be 0.

Lines before them (each marked when it must be 0): the seed, not offered, cut off in the
handshake, recordings kept without consent (a sealed row or a .age file of a call that
is not granted-and-not-withdrawn, or .age files without a sealed row), deleted unaudited
(a WAV with audio whose recording is gone but no `recording.delete` audit entry names
it), outcomes that disagree with what fs-consent told FreeSWITCH (the last `uuid_setvar
fs_consent` it sent, for calls no kill interrupted), ledger writes the server logged as lost,
and the fault log.

Exit status 1 when a figure that must be 0 is not, or when calls offered and calls in
the ledger differ; 2 when the soak itself could not run (not root, server would not
start).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import gevent
import gevent.event
import gevent.pool
import gevent.subprocess
import psutil
import pyrage
from gevent import socket

from fs_consent.emulator import CallerScript, CallResult, FreeSwitchEmulator
from fs_consent.emulator.scenarios import SCENARIO_NAMES, SCENARIOS

HANDSHAKE = {"connect", "myevents", "linger", "event"}
TIME_SCALE = 0.1  # the switch's own timers (the prompt's 5 s timeout) run 10x faster
FULL_MARGIN_S = 5.0  # no kill this long after the disk has room again (its backlog lands first)
MIN_UP_S = 2.0  # a kill comes at least this long after the server was last ready: calls are in flight


def now() -> float:
    return time.monotonic()


# --- the server process -----------------------------------------------------------------------


class Server:
    """`fs-consent serve` in its own process; readiness by sd_notify, like systemd's Type=notify."""

    def __init__(self, tmp: Path, config: Path, port: int, restart_delay: float, log):
        self.config, self.port, self.restart_delay, self.say = config, port, restart_delay, log
        self.log_path = tmp / "server.log"
        self.notify_path = tmp / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.proc: gevent.subprocess.Popen | None = None
        self.up = gevent.event.Event()
        self.up_since = 0.0
        self.down_periods: list[list[float]] = []  # [died, ready again]
        self.failed_starts = 0

    def _spawn(self) -> None:
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path)}
        env.pop("FS_CONSENT_DATA_DIR", None)
        with open(self.log_path, "ab") as log_file:
            self.proc = gevent.subprocess.Popen(
                [sys.executable, "-m", "fs_consent.cli", "--config", str(self.config), "serve",
                 "--listen", f"127.0.0.1:{self.port}"],
                env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def _wait_ready(self, timeout: float) -> bool:
        deadline = now() + timeout
        while now() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                self.notify.settimeout(0.2)
                message = self.notify.recv(4096).decode(errors="replace")
            except (TimeoutError, socket.timeout):
                continue
            if "READY=1" in message:
                return True
        return False

    def start(self, attempts: int = 30, timeout: float = 60.0) -> None:
        """Start; a start that fails is retried after the restart delay (Restart=on-failure)."""
        for _ in range(attempts):
            self._spawn()
            if self._wait_ready(timeout):
                self.up_since = now()
                self.up.set()
                if self.down_periods and len(self.down_periods[-1]) == 1:
                    self.down_periods[-1].append(now())
                return
            self.failed_starts += 1
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.say(f"server start failed (exit {self.proc.returncode}); retrying in {self.restart_delay:g} s")
            gevent.sleep(self.restart_delay)
        raise SystemExit(f"fs-consent serve would not start; see {self.log_path}")

    def kill(self) -> None:
        self.up.clear()
        self.down_periods.append([now()])
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 120.0) -> int:
        """SIGTERM: the drain, then a clean exit."""
        self.up.clear()
        self.down_periods.append([now()])
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except gevent.subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def seal_workers(self) -> list[psutil.Process]:
        try:
            children = psutil.Process(self.proc.pid).children()
        except psutil.Error:
            return []
        workers = []
        for child in children:
            try:
                if "fs_consent.secure.seal_worker" in " ".join(child.cmdline()):
                    workers.append(child)
            except psutil.Error:
                pass
        return workers


class LockHolder:
    """Another process holding the ledger's write lock (BEGIN EXCLUSIVE) until released."""

    CODE = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60);"
            "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.read(); c.execute('COMMIT')")

    def __init__(self, db: Path):
        self.proc = gevent.subprocess.Popen([sys.executable, "-c", self.CODE, str(db)], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline() != "locked\n":
            raise SystemExit("could not lock the ledger")

    def release(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def fill(directory: Path) -> Path:
    """Write until the file system says ENOSPC; the filler is returned, to be removed."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 20, 1 << 16, 1 << 12, 1 << 9):
            block = b"\xa5" * size
            try:
                while True:
                    f.write(block)
            except OSError:
                pass
    return filler


# --- the calls ------------------------------------------------------------------------------


@dataclass
class Planned:
    index: int
    scenario: str
    uuid: str
    script: CallerScript


@dataclass
class Placed:
    planned: Planned
    started: float
    ended: float = 0.0
    result: CallResult | None = None
    error: str | None = None  # the connection failed

    @property
    def offered(self) -> bool:
        return self.result is not None and any(c not in HANDSHAKE for c in self.result.commands)

    @property
    def cut_in_handshake(self) -> bool:
        return self.result is not None and "connect" in self.result.commands and not self.offered


def plan_calls(rng: random.Random, calls: int, long_share: float) -> list[Planned]:
    plans = []
    for i in range(calls):
        name = rng.choice(SCENARIO_NAMES)
        behaviour = dict(SCENARIOS[name][0])
        # most talk briefly; one in ten talks long enough to outlive a kill and the restart
        # after it (FreeSWITCH goes on recording a bridged call whose app died)
        talk = round(rng.uniform(3.0, 6.0) if rng.random() < long_share else rng.uniform(0.2, 0.8), 3)
        if "caller_keys" in behaviour or "agent_keys" in behaviour:
            key = "caller_keys" if "caller_keys" in behaviour else "agent_keys"
            behaviour[key] = [(round(rng.uniform(0.05, talk * 0.8), 3), behaviour[key][0][1])]
        if "hold" in behaviour:
            start = rng.uniform(0.02, talk * 0.5)
            behaviour["hold"] = [(round(start, 3), round(rng.uniform(0.05, talk * 0.4), 3))]
        if "caller_hangup_after" in behaviour:
            behaviour["caller_hangup_after"] = round(rng.uniform(0.05, talk * 0.9), 3)
        number = f"06{30000000 + i:08d}"  # one number per call: no callback withdrawals between them
        plans.append(Planned(i, name, str(uuidlib.UUID(int=rng.getrandbits(128), version=4)),
                             CallerScript(caller_number=number, talk_seconds=talk, **behaviour)))
    return plans


def drive(emulator: FreeSwitchEmulator, plans: list[Planned], rate: float) -> list[Placed]:
    placed: list[Placed] = []

    def one(plan: Planned) -> None:
        record = Placed(plan, now())
        placed.append(record)
        try:
            record.result = emulator.place_call(plan.script, uuid=plan.uuid, timeout=120)
        except OSError as exc:  # refused: FreeSWITCH's `socket` fails and the fallback runs
            record.error = type(exc).__name__
        record.ended = now()

    group = gevent.pool.Group()
    started = now()
    for i, plan in enumerate(plans):
        gevent.sleep(max(0.0, started + i / rate - now()))
        group.spawn(one, plan)
    group.join()
    return placed


# --- the faults -----------------------------------------------------------------------------


def kill_times(rng: random.Random, kills: int, span: float, avoid: tuple[float, float]) -> list[float]:
    """``kills`` moments spread evenly (with jitter) over [5%, 95%] of ``span``, outside ``avoid``."""
    lo, hi = 0.05 * span, 0.95 * span
    pieces = [(a, b) for a, b in ((lo, min(hi, avoid[0])), (max(lo, avoid[1]), hi)) if b > a]
    total = sum(b - a for a, b in pieces)
    if kills <= 0 or total <= 0:
        return []
    step = total / kills
    times = []
    for k in range(kills):
        offset = min(total - 1e-3, max(0.0, (k + 0.5) * step + rng.uniform(-0.3, 0.3) * step))
        for a, b in pieces:
            if offset < b - a:
                times.append(a + offset)
                break
            offset -= b - a
    return sorted(times)


@dataclass
class Faults:
    server: Server
    data: Path
    start: float
    log: list = field(default_factory=list)

    def note(self, text: str) -> None:
        self.log.append((now() - self.start, text))

    def at(self, t: float) -> None:
        gevent.sleep(max(0.0, self.start + t - now()))

    def kills(self, times: list[float]) -> None:
        for n, t in enumerate(times, start=1):
            self.at(t)
            self.server.up.wait()
            gevent.sleep(max(0.0, self.server.up_since + MIN_UP_S - now()))
            self.server.kill()
            self.note(f"SIGKILL {n} of the server")
            gevent.sleep(self.server.restart_delay)
            self.server.start()
            self.note(f"server up again after kill {n}")

    def full_disk(self, t: float, seconds: float) -> None:
        self.at(t)
        filler = fill(self.data)
        self.note(f"data dir full ({filler.stat().st_size >> 20} MB filler)")
        gevent.sleep(seconds)
        filler.unlink()
        self.note("data dir has room again")

    def lock(self, t: float, seconds: float) -> None:
        self.at(t)
        holder = LockHolder(self.data / "ledger.db")
        self.note("ledger locked (BEGIN EXCLUSIVE in another process)")
        gevent.sleep(seconds)
        holder.release()
        self.note("ledger lock released")

    def seal_worker(self, t: float) -> None:
        self.at(t)
        while True:
            self.server.up.wait()
            workers = self.server.seal_workers()
            if workers:
                break
            gevent.sleep(0.1)
        victim = workers[0]
        victim.send_signal(signal.SIGKILL)
        self.note(f"SIGKILL of seal worker pid {victim.pid}")


# --- the checks -----------------------------------------------------------------------------


@dataclass
class Figures:
    offered: int = 0
    in_ledger: int = 0
    outcomes_missing: int = 0
    sealed: int = 0
    lost: int = 0
    plaintext_left: int = 0
    misattributed: int = 0
    notes: list = field(default_factory=list)  # (text, value, must_be_zero)
    lost_detail: Counter = field(default_factory=Counter)

    def failed(self) -> bool:
        must = [self.outcomes_missing, self.lost, self.plaintext_left, self.misattributed]
        must += [value for _text, value, zero in self.notes if zero]
        return any(must) or self.offered != self.in_ledger


def told_freeswitch(result: CallResult) -> str | None:
    """The last value of ``fs_consent`` fs-consent set on the channel (``uuid_setvar``): what it
    told FreeSWITCH, even when the channel had hung up before the command arrived."""
    said = None
    for command in result.api_commands:
        parts = command.split()
        if parts[:1] == ["uuid_setvar"] and len(parts) >= 4 and parts[2] == "fs_consent":
            said = parts[3]
    return said


def overlaps_down(placed: Placed, down: list[list[float]]) -> bool:
    for period in down:
        died, back = period[0], period[1] if len(period) > 1 else float("inf")
        if placed.started <= back and died <= placed.ended:
            return True
    return False


def check(placed: list[Placed], data: Path, spool: Path, down: list[list[float]], server_log: Path) -> Figures:
    fig = Figures()
    db = sqlite3.connect(f"file:{data / 'ledger.db'}?mode=ro", uri=True)
    calls = db.execute("SELECT uuid, outcome, ended_at, withdrawn_at FROM call").fetchall()
    rows_by_uuid = Counter(u for u, *_ in calls)
    call_of = {u: (outcome, ended, withdrawn) for u, outcome, ended, withdrawn in calls}
    recordings = {rid: (state, reason, call_uuid, outcome, withdrawn) for rid, state, reason, call_uuid, outcome,
                  withdrawn in db.execute("SELECT r.id, r.state, r.state_reason, c.uuid, c.outcome, c.withdrawn_at "
                                          "FROM recording r JOIN call c ON c.id = r.call_id")}
    audited = {rid for (rid,) in db.execute("SELECT object_id FROM audit_entry WHERE action = 'recording.delete'")}
    db.close()
    identity = [pyrage.x25519.Identity.from_str(line.strip())
                for line in (data / "keys" / "identity.txt").read_text().splitlines()
                if line.startswith("AGE-SECRET-KEY-")]
    store = data / "store"

    offered = [p for p in placed if p.offered]
    fig.offered = len(offered)
    fig.in_ledger = sum(1 for p in offered if p.planned.uuid in call_of)
    fig.outcomes_missing = sum(1 for outcome, ended, _w in call_of.values() if outcome is None or ended is None)
    fig.sealed = sum(1 for r in recordings.values() if r[0] == "sealed")
    fig.plaintext_left = sum(1 for _ in spool.iterdir())

    def consented(outcome, withdrawn) -> bool:
        return outcome == "granted" and withdrawn is None

    writer_of: dict[str, str] = {}
    kept_without_consent = unaudited = 0
    for p in placed:
        if p.result is None:
            continue
        killed = " (a kill interrupted the call)" if overlaps_down(p, down) else ""
        for path, info in p.result.recordings.items():
            rid = Path(path).stem
            writer_of[rid] = p.planned.uuid
            row = recordings.get(rid)
            if row is not None and row[2] != p.planned.uuid:
                fig.misattributed += 1
            ledger_call = call_of.get(p.planned.uuid)
            granted = ledger_call is not None and consented(ledger_call[0], ledger_call[2])
            if info.discarded:  # FreeSWITCH wrote no audio: nothing to keep
                continue
            kept = row is not None and row[0] == "sealed"
            if not kept and not (spool / f"{rid}.wav").exists() and rid not in audited:
                unaudited += 1
            if not granted:
                continue
            if not kept:
                fig.lost += 1
                fig.lost_detail["not sealed: " + (f"{row[0]} ({row[1]})" if row else "no recording row") + killed] += 1
                continue
            sealed = store / f"{rid}.age"
            try:
                plain = pyrage.decrypt(sealed.read_bytes(), identity)
            except (OSError, pyrage.DecryptError) as exc:
                fig.lost += 1
                fig.lost_detail[f"sealed, ciphertext {type(exc).__name__}{killed}"] += 1
                continue
            if info.sha256 is None:
                fig.lost += 1
                fig.lost_detail["sealed, but the spool file was removed while FreeSWITCH still wrote it" + killed] += 1
            elif hashlib.sha256(plain).hexdigest() != info.sha256:
                fig.lost += 1
                fig.lost_detail["sealed, but not the WAV FreeSWITCH wrote" + killed] += 1
    for rid, (state, _reason, _call, outcome, withdrawn) in recordings.items():
        if state == "sealed" and rid not in writer_of:
            fig.misattributed += 1
        if state == "sealed" and not consented(outcome, withdrawn):
            kept_without_consent += 1
    for entry in store.iterdir():
        rid = entry.name.removesuffix(".age")
        if recordings.get(rid, ("",))[0] != "sealed":
            kept_without_consent += 1

    not_offered = sum(1 for p in placed if p.result is None or not p.result.commands)
    cut = [p for p in placed if p.cut_in_handshake]
    cut_unexplained = sum(1 for p in cut if not overlaps_down(p, down))
    told = disagree = 0
    for p in offered:
        said = told_freeswitch(p.result)
        ledger_call = call_of.get(p.planned.uuid)
        if said is None or ledger_call is None or overlaps_down(p, down):
            continue
        told += 1
        disagree += ledger_call[0] != said
    duplicates = sum(n - 1 for u, n in rows_by_uuid.items() if n > 1)
    log_text = server_log.read_text(errors="replace") if server_log.exists() else ""
    lost_writes = log_text.count("ledger write lost") + log_text.count("could not be written")
    fig.notes += [
        ("not offered (refused or closed before connect: the dialplan's fallback)", not_offered, False),
        ("cut off in the handshake by a kill (fallback, not offered)", len(cut) - cut_unexplained, False),
        ("handshakes cut off with no kill in progress", cut_unexplained, True),
        ("duplicate call rows", duplicates, True),
        ("recordings kept without consent (sealed row or .age of a call not granted, or .age without a sealed row)",
         kept_without_consent, True),
        ("recordings gone without a recording.delete audit entry", unaudited, True),
        (f"ledger outcomes that disagree with fs_consent told to FreeSWITCH (of {told} calls no kill touched)",
         disagree, True),
        ("ledger writes the server logged as lost or not replayed", lost_writes, True),
    ]
    return fig


# --- main -----------------------------------------------------------------------------------


def mount_tmpfs(path: Path, size_mb: int) -> None:
    path.mkdir(mode=0o700)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"cannot mount a tmpfs for the data dir ({done.stderr.strip()}): run as root")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settle(spool: Path, timeout: float) -> bool:
    deadline = now() + timeout
    while now() < deadline:
        if not any(spool.iterdir()):
            return True
        gevent.sleep(0.2)
    return False


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000, help="emulated calls (default 2000)")
    parser.add_argument("--rate", type=float, default=25.0, help="calls arriving per second (default 25)")
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs of the server, each then restarted "
                        "(default 10)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random mix and fault moments "
                        "(default: a random one, printed)")
    parser.add_argument("--full-seconds", type=float, default=30.0, help="how long the data dir is full (30; 0: never)")
    parser.add_argument("--lock-seconds", type=float, default=15.0, help="how long the ledger is locked (15; 0: never)")
    parser.add_argument("--restart-delay", type=float, default=0.5,
                        help="seconds between a server's death and its restart (systemd's RestartSec; 0.5)")
    parser.add_argument("--long-share", type=float, default=0.1, help="share of the calls that talk 3-6 s "
                        "instead of 0.2-0.8 s, long enough to outlive a kill and the restart after it (0.1)")
    parser.add_argument("--tmpfs-mb", type=int, default=64, help="size of the data dir's tmpfs (64)")
    parser.add_argument("--settle", type=float, default=60.0, help="seconds to wait for the spool to empty "
                        "after the final restart (60)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (printed)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    rng = random.Random(seed)
    print(f"seed: {seed}", flush=True)
    if os.geteuid() != 0:
        print("the soak mounts a tmpfs for the data dir: run it as root", file=sys.stderr)
        return 2
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    tmp = Path(tempfile.mkdtemp(prefix="fs-consent-soak-"))
    data, spool = tmp / "data", tmp / "spool"
    mount_tmpfs(data, args.tmpfs_mb)
    try:
        spool.mkdir(mode=0o700)
        config = tmp / "config.toml"
        config.write_text(f'[server]\nmax_calls = 5000\ndrain_seconds = "10s"\n'
                          f'[storage]\ndata_dir = "{data}"\nspool_dir = "{spool}"\n'
                          f'[logging]\nlevel = "warning"\n')
        return run(args, rng, tmp, data, spool, config)
    finally:
        subprocess.run(["umount", "-l", str(data)], capture_output=True)
        if args.keep:
            print(f"kept: {tmp} (the data dir was a tmpfs and is gone)")
        else:
            subprocess.run(["rm", "-rf", str(tmp)], capture_output=True)


def run(args, rng: random.Random, tmp: Path, data: Path, spool: Path, config: Path) -> int:
    def say(text: str) -> None:
        print(f"[{now() - t0:6.1f} s] {text}", file=sys.stderr, flush=True)

    t0 = now()
    server = Server(tmp, config, free_port(), args.restart_delay, say)
    server.start()
    plans = plan_calls(rng, args.calls, args.long_share)
    span = args.calls / args.rate
    full_at = 0.15 * span
    lock_at = max(0.7 * span, full_at + args.full_seconds + FULL_MARGIN_S)
    worker_at = (full_at + args.full_seconds + lock_at) / 2
    avoid = (full_at - 1.0, full_at + args.full_seconds + FULL_MARGIN_S) if args.full_seconds > 0 else (0.0, 0.0)
    kills = kill_times(rng, args.kills, span, avoid)
    say(f"{args.calls} calls at {args.rate:g}/s (~{span:.0f} s); data dir full at {full_at:.0f} s for "
        f"{args.full_seconds:g} s, ledger locked at {lock_at:.0f} s for {args.lock_seconds:g} s, a seal worker "
        f"killed at {worker_at:.0f} s, server killed at {', '.join(f'{t:.0f}' for t in kills)} s")

    faults = Faults(server, data, now())
    jobs = [gevent.spawn(faults.kills, kills), gevent.spawn(faults.seal_worker, worker_at)]
    if args.full_seconds > 0:
        jobs.append(gevent.spawn(faults.full_disk, full_at, args.full_seconds))
    if args.lock_seconds > 0:
        jobs.append(gevent.spawn(faults.lock, lock_at, args.lock_seconds))
    emulator = FreeSwitchEmulator("127.0.0.1", server.port, spool_dir=spool, time_scale=TIME_SCALE,
                                  linger_timeout=10)
    placed = drive(emulator, plans, args.rate)
    say(f"all {len(placed)} calls ended; waiting for the faults to end")
    gevent.joinall(jobs, raise_error=True)

    rc = server.stop()
    faults.note(f"clean stop (exit {rc})")
    server.start()
    faults.note("final start: recovery ran")
    settled = settle(spool, args.settle)
    rc2 = server.stop()
    faults.note(f"{'settled' if settled else 'did not settle'}; stopped (exit {rc2})")

    fig = check(placed, data, spool, server.down_periods, server.log_path)
    errors = Counter(e for p in placed if p.result for e in p.result.errors)
    scenarios = Counter(p.planned.scenario for p in placed)
    print(f"scenarios: {', '.join(f'{k}={v}' for k, v in sorted(scenarios.items()))}")
    for at, text in faults.log:
        print(f"fault {at:6.1f} s: {text}")
    print(f"server starts that failed (retried): {server.failed_starts}")
    print(f"clean stops: exit {rc}, exit {rc2}")
    for text, count in errors.most_common(6):
        print(f"emulator remark ({count} calls): {text}")
    for text, count in sorted(fig.lost_detail.items()):
        print(f"lost: {count} {text}")
    for text, value, zero in fig.notes:
        print(f"{text}: {value}{' (must be 0)' if zero else ''}")
    print(f"wall time: {now() - t0:.0f} s")
    print(f"calls offered: {fig.offered}")
    print(f"calls in the ledger: {fig.in_ledger}")
    print(f"outcomes missing: {fig.outcomes_missing}")
    print(f"recordings sealed: {fig.sealed}")
    print(f"recordings lost: {fig.lost}")
    print(f"plaintext left: {fig.plaintext_left}")
    print(f"misattributed recordings: {fig.misattributed}")
    if rc != 0 or rc2 != 0:
        return 1
    return 1 if fig.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
