#!/usr/bin/env python3
"""Benchmark: many concurrent emulated FreeSWITCH calls against `fs-consent serve`.

Prints, for fs-consent and for a bare greenswitch app doing the same call flow
without consent bookkeeping (the peer), measured in the same run:
calls/s, errors, handshake drops (calls the server let go before the prompt), peak
RSS of the server process (with its seal workers), p50/p99 from the caller's digit
or timeout to the record_session command arriving (decision: the emulator's read that
completed the command; "handled" gives the p99 up to when the emulator had handled what
came in front of it in that read, e.g. fs-consent's uuid_setvar commands, and got to it),
and from the connection to the prompt's command arriving (prompt start). For fs-consent also p50/p99 from a withdrawal
(control socket) to the plaintext gone, and the ledger lag: from the caller's
hang-up to the call's outcome and end being in the ledger (read by a poller).

The emulator's wire is unruly by default (events before replies, frames split,
races; ``--seed`` replays a run, ``--polite`` turns it off). ``--busy`` keeps one
core busy with another process; ``--lock-ledger S`` holds the ledger's write lock
from another process for S seconds in the middle of the run (prompt start is then
also given for the calls that arrived during the lock).

``--database postgresql://USER:PASS@127.0.0.1/postgres`` (or FS_CONSENT_BENCH_DATABASE, as
``tox -e bench`` passes it) adds a cluster run after the single-node SQLite one, in the same
run: ``--nodes`` (default 2) ``fs-consent serve`` processes sharing one PostgreSQL database
(created for the run on that server, dropped after) and one store and keys directory, each
with its own data dir and spool, the calls spread over them in turn; the same calls, rate
and talk, so with the defaults each node holds ~500 live calls. It also prints the peak
number of PostgreSQL connections to that database (pg_stat_activity, sampled every 0.1 s,
the poller's own excluded).

Everything talks to 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import gevent
import gevent.pool
import psutil

from fs_consent.emulator import CallerScript, FreeSwitchEmulator, WireChaos
from fs_consent.emulator.scenarios import percentile
from fs_consent.runtime.control import request

ROOT = Path(__file__).resolve().parents[2]

PEER_APP = textwrap.dedent('''
    """A bare greenswitch outbound app: the same call flow, no consent bookkeeping."""
    import sys, gevent
    from greenswitch.esl import OutboundESLServer

    SPOOL = sys.argv[2]

    class App:
        def __init__(self, session):
            self.session = session

        def run(self):
            s = self.session
            s.connect()
            s.myevents()
            s.linger()
            s.call_command("answer", block=True, response_timeout=30)
            done = s.call_command("play_and_get_digits",
                                  "1 1 1 5000 # silence_stream://250 silence_stream://250 digit \\\\d 5000",
                                  block=True, response_timeout=60)
            digit = done.headers.get("variable_digit")
            if digit != "1":
                s.call_command("record_session", f"{SPOOL}/{s.uuid}.wav")
            s.call_command("execute_extension", "menu XML default", block=True, response_timeout=120)

    server = OutboundESLServer(bind_address="127.0.0.1", bind_port=int(sys.argv[1]), application=App,
                               max_connections=5000)
    server.listen()
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process and its peak RSS (summed with its children: the seal workers)."""

    def __init__(self, argv: list[str], env: dict, ready_line: str | None, port: int):
        self.proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
        self.port = port
        if ready_line:
            said = collections.deque(maxlen=5)
            for line in self.proc.stderr:
                if ready_line in line:
                    break
                said.append(line)
            else:
                raise SystemExit(f"server did not start: {self.proc.wait()}: {''.join(said)}")
            # keep reading what it logs (as journald would): a full pipe would stop its event loop
            self.log_lines = collections.Counter()
            threading.Thread(target=self._drain, daemon=True).start()
        else:
            deadline = time.time() + 20
            while time.time() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
        self.peak_rss = 0
        self._sampler = gevent.spawn(self._sample)

    def _drain(self):
        for line in self.proc.stderr:
            self.log_lines[line.split(": ", 1)[0][-60:]] += 1

    def _sample(self):
        process = psutil.Process(self.proc.pid)
        while True:
            try:
                rss = process.memory_info().rss + sum(c.memory_info().rss for c in process.children(recursive=True))
            except psutil.Error:
                return
            self.peak_rss = max(self.peak_rss, rss)
            gevent.sleep(0.1)

    def stop(self):
        self._sampler.kill()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


NOTES = ("without Event-UUID",)  # the emulator's remarks on greenswitch's wire layout, not failures


@dataclass
class Run:
    """What one server did with the offered calls."""

    name: str
    wall: float = 0.0
    peak_live: int = 0
    errors: list = field(default_factory=list)
    drops: int = 0  # handshake drops: the call never reached the prompt
    decisions: list = field(default_factory=list)
    decisions_handled: list = field(default_factory=list)  # up to when the emulator handled the command
    prompt_starts: list = field(default_factory=list)
    prompt_starts_locked: list = field(default_factory=list)  # calls that arrived while the ledger was locked
    withdrawals: list = field(default_factory=list)
    ledger_lag: list = field(default_factory=list)
    missing_in_ledger: int = 0
    peak_rss: int = 0
    leftovers: int = 0
    hung_up: dict = field(default_factory=dict)  # uuid -> wall clock of the caller's hang-up
    db_connections: int | None = None  # peak PostgreSQL connections to the ledger's database


@dataclass
class Target:
    """One server the calls go to: its port, spool and control socket."""

    port: int
    spool: Path
    control_socket: Path | None


class LedgerPoller:
    """Reads the server's SQLite ledger (read-only) every ``period`` s: when each call's
    outcome and end first appear. Runs its reads in a native thread, not on this hub."""

    ERRORS: tuple = (sqlite3.Error,)

    def __init__(self, db: Path, period: float = 0.1):
        self.db, self.period, self.seen = db, period, {}
        self._pool = gevent.get_hub().threadpool
        self._greenlet = gevent.spawn(self._run)

    def _read(self) -> list[str]:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=0.5)
        try:
            return [row[0] for row in conn.execute(
                "SELECT uuid FROM call WHERE outcome IS NOT NULL AND ended_at IS NOT NULL")]
        finally:
            conn.close()

    def _run(self) -> None:
        while True:
            try:
                uuids = self._pool.apply(self._read)
            except self.ERRORS:
                uuids = []
            now = time.time()
            for u in uuids:
                self.seen.setdefault(u, now)
            gevent.sleep(self.period)

    def stop(self, settle: float = 10.0, expected: set | None = None) -> None:
        deadline = time.time() + settle
        while expected and not expected <= set(self.seen) and time.time() < deadline:
            gevent.sleep(self.period)
        self._greenlet.kill()


class PostgresPoller(LedgerPoller):
    """The same on a PostgreSQL ledger, and the peak count of connections to its database."""

    def __init__(self, url: str, period: float = 0.1):
        import psycopg

        self.ERRORS = (psycopg.Error,)
        self.url, self.peak_connections = url, 0
        self._conn = psycopg.connect(url, autocommit=True)
        super().__init__(Path("-"), period)

    def _read(self) -> list[str]:
        (count,) = self._conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                      "AND pid <> pg_backend_pid()").fetchone()
        self.peak_connections = max(self.peak_connections, count)
        return [row[0] for row in self._conn.execute(
            "SELECT uuid FROM call WHERE outcome IS NOT NULL AND ended_at IS NOT NULL")]

    def stop(self, settle: float = 10.0, expected: set | None = None) -> None:
        super().stop(settle, expected)
        self._conn.close()


class LedgerLock:
    """Another process holding the ledger's write lock (BEGIN EXCLUSIVE) for ``seconds``."""

    CODE = ("import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30);"
            "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(float(sys.argv[2]));"
            "c.execute('COMMIT')")

    def __init__(self, db: Path, seconds: float):
        self.proc = subprocess.Popen([sys.executable, "-c", self.CODE, str(db), str(seconds)],
                                     stdout=subprocess.PIPE, text=True)
        self.proc.stdout.readline()
        self.since, self.until = time.time(), time.time() + seconds


def busy_core() -> subprocess.Popen:
    """Another process keeping one core busy, as on a shared machine."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def drive(targets: list[Target], run: Run, *, calls: int, rate: float, talk: float, withdraw_every: int,
          chaos, ledger_db: Path | None = None, lock_seconds: float = 0.0, ledger_url: str | None = None):
    """Calls arrive at ``rate`` per second (evenly spaced, like a steady queue), each talks ``talk`` s;
    call i goes to ``targets[i % len(targets)]``."""
    emulators = [FreeSwitchEmulator("127.0.0.1", t.port, spool_dir=t.spool, time_scale=0.1, linger_timeout=10,
                                    chaos=chaos) for t in targets]
    live = [0]
    lock: list[LedgerLock] = []

    def one(i: int):
        target, emulator = targets[i % len(targets)], emulators[i % len(targets)]
        digit = "1" if i % 5 == 0 else None  # one caller in five refuses
        call_uuid = str(uuid.uuid4())
        script = CallerScript(caller_number=f"06{20000000 + i:08d}", digits=[digit], talk_seconds=talk)
        watcher = None
        if target.control_socket is not None and digit is None and i % withdraw_every == 1:
            watcher = gevent.spawn(withdraw_when_recording, call_uuid, target.spool, target.control_socket)
        arrived = time.time()
        live[0] += 1
        run.peak_live = max(run.peak_live, live[0])
        try:
            result = emulator.place_call(script, uuid=call_uuid, timeout=talk + 60)
        except Exception as exc:  # noqa: BLE001
            run.errors.append(type(exc).__name__)
            return
        finally:
            live[0] -= 1
        run.errors.extend(e for e in result.errors if not any(note in e for note in NOTES))
        if result.prompt_latency is None:
            run.drops += 1
        else:
            run.prompt_starts.append(result.prompt_latency)
            if lock and lock[0].since <= arrived <= lock[0].until:
                run.prompt_starts_locked.append(result.prompt_latency)
        if result.decision_latency is not None:
            run.decisions.append(result.decision_latency)
            run.decisions_handled.append(result.decision_handled_latency)
        if result.hung_up_at is not None:
            run.hung_up[call_uuid] = result.hung_up_at
        if watcher is not None:
            watcher.join(timeout=5)

    def withdraw_when_recording(call_uuid: str, spool: Path, control_socket: Path):
        started = time.time()
        while time.time() - started < talk + 30:
            if list(spool.glob("*.wav")):
                break
            gevent.sleep(0.05)
        gevent.sleep(talk / 3)
        t0 = time.perf_counter()
        # the control socket client is blocking: run it in a thread so this hub keeps serving calls
        reply = gevent.get_hub().threadpool.apply(request, (control_socket, {"op": "withdraw", "call_uuid": call_uuid,
                                                                              "actor": "bench"}))
        if reply.get("ok") and reply.get("live"):
            run.withdrawals.append(time.perf_counter() - t0)

    poller = (PostgresPoller(ledger_url) if ledger_url is not None
              else LedgerPoller(ledger_db) if ledger_db is not None else None)
    group = gevent.pool.Group()
    started = time.perf_counter()
    for i in range(calls):
        gevent.sleep(max(0.0, started + i / rate - time.perf_counter()))
        if lock_seconds and ledger_db is not None and not lock and i >= calls // 3:
            lock.append(LedgerLock(ledger_db, lock_seconds))
        group.spawn(one, i)
    group.join()
    run.wall = time.perf_counter() - started
    if poller is not None:
        poller.stop(expected=set(run.hung_up))
        for call_uuid, hung_up in run.hung_up.items():
            if call_uuid in poller.seen:
                run.ledger_lag.append(max(0.0, poller.seen[call_uuid] - hung_up))
            else:
                run.missing_in_ledger += 1
        if isinstance(poller, PostgresPoller):
            run.db_connections = poller.peak_connections
    if lock:
        lock[0].proc.wait(timeout=lock_seconds + 30)


def cluster_run(root: Path, args, chaos) -> Run:
    """``args.nodes`` servers on one PostgreSQL database, one store and keys dir; see the docstring."""
    import psycopg

    name = f"fsc_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(args.database, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = args.database.rsplit("/", 1)[0] + "/" + name
    run = Run(f"{args.nodes} nodes PostgreSQL")
    servers: list[Server] = []
    try:
        targets = []
        for n in range(1, args.nodes + 1):  # one after the other: the first creates the schema and the keys
            data = root / f"node{n}"
            data.mkdir(mode=0o700, parents=True)
            config = data / "config.toml"
            pool = f"pool_size = {args.pool_size}\n" if args.pool_size else ""
            config.write_text(f'[server]\nmax_calls = 5000\n[storage]\ndatabase = "{url}"\n'
                              f'store_dir = "{root / "store"}"\nkeys_dir = "{root / "keys"}"\n{pool}')
            port = free_port()
            env = {**os.environ, "FS_CONSENT_DATA_DIR": str(data)}
            servers.append(Server([sys.executable, "-m", "fs_consent.cli", "--config", str(config), "serve",
                                   "--listen", f"127.0.0.1:{port}", "--log-level", "warning"], env,
                                  "fs-consent listening on", port))
            targets.append(Target(port, data / "spool", data / "control.sock"))
        drive(targets, run, calls=args.calls, rate=args.rate, talk=args.talk, withdraw_every=args.withdraw_every,
              chaos=chaos, ledger_url=url)
    finally:
        for server in servers:
            server.stop()
        with psycopg.connect(args.database, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    run.peak_rss = max(server.peak_rss for server in servers)  # per node
    run.leftovers = sum(len(list(t.spool.iterdir())) for t in targets)
    return run


def fmt_ms(values: list[float], p: float) -> str:
    v = percentile(values, p)
    return "-" if v is None else f"{v * 1000:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=50.0, help="calls arriving per second")
    parser.add_argument("--talk", type=float, default=19.0, help="seconds each caller talks to staff "
                        "(rate x call length = concurrent calls: 50/s x ~20 s = ~1,000)")
    parser.add_argument("--withdraw-every", type=int, default=20, help="every Nth call is withdrawn mid-call")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--polite", action="store_true", help="the emulator's wire in order (no interleaving)")
    parser.add_argument("--seed", type=int, default=None, help="the emulator's wire disorder (default: random)")
    parser.add_argument("--busy", action="store_true", help="keep one core busy with another process")
    parser.add_argument("--lock-ledger", type=float, default=0.0, metavar="S",
                        help="hold the ledger's write lock from another process for S seconds, a third into the run")
    parser.add_argument("--database", default=os.environ.get("FS_CONSENT_BENCH_DATABASE") or None, metavar="URL",
                        help="a PostgreSQL server (postgresql://user:pass@127.0.0.1:5432/postgres; default "
                             "$FS_CONSENT_BENCH_DATABASE): add a run of --nodes servers sharing a ledger database "
                             "created there for the run")
    parser.add_argument("--nodes", type=int, default=2, help="servers in the PostgreSQL run (default 2)")
    parser.add_argument("--pool-size", type=int, default=None, help="storage.pool_size of each node (default: its "
                        "default)")
    args = parser.parse_args()

    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    chaos = WireChaos.off() if args.polite else WireChaos(seed)
    burner = busy_core() if args.busy else None
    runs = []
    try:
        with tempfile.TemporaryDirectory(prefix="fs-consent-bench-") as tmp:
            tmp = Path(tmp)
            data = tmp / "data"
            port = free_port()
            config = tmp / "config.toml"
            config.write_text("[server]\nmax_calls = 5000\n")
            env = {**os.environ, "FS_CONSENT_DATA_DIR": str(data)}
            server = Server([sys.executable, "-m", "fs_consent.cli", "--config", str(config), "serve", "--listen",
                             f"127.0.0.1:{port}", "--log-level", "warning"], env, "fs-consent listening on", port)
            ours = Run("fs-consent")
            try:
                drive([Target(port, data / "spool", data / "control.sock")], ours, calls=args.calls, rate=args.rate,
                      talk=args.talk, withdraw_every=args.withdraw_every, chaos=chaos,
                      ledger_db=data / "ledger.db", lock_seconds=args.lock_ledger)
            finally:
                server.stop()
            ours.peak_rss, ours.leftovers = server.peak_rss, len(list((data / "spool").iterdir()))
            runs.append(ours)

            if not args.skip_peer:
                peer_spool = tmp / "peer-spool"
                peer_spool.mkdir()
                peer_script = tmp / "peer.py"
                peer_script.write_text(PEER_APP)
                port = free_port()
                peer = Server([sys.executable, str(peer_script), str(port), str(peer_spool)], dict(os.environ), None,
                              port)
                theirs = Run("bare greenswitch")
                try:
                    drive([Target(port, peer_spool, None)], theirs, calls=args.calls, rate=args.rate, talk=args.talk,
                          withdraw_every=args.withdraw_every, chaos=chaos)
                finally:
                    peer.stop()
                theirs.peak_rss = peer.peak_rss
                runs.append(theirs)

            if args.database:
                runs.append(cluster_run(tmp / "cluster", args, chaos))
    finally:
        if burner is not None:
            burner.kill()

    print(f"{args.calls} calls arriving at {args.rate:g}/s, {args.talk:.1f} s talk each, {os.cpu_count()} CPUs"
          f"{', one kept busy by another process' if args.busy else ''}; one caller in five refuses; every "
          f"{args.withdraw_every}th is withdrawn mid-call; wire {chaos.describe()}"
          f"{f'; ledger locked {args.lock_ledger:g} s a third into the run' if args.lock_ledger else ''}")
    print(f"{'server':22} {'calls/s':>7} {'live':>5} {'err':>4} {'drops':>5} {'RSS MB':>7} {'dec p50':>7} "
          f"{'dec p99':>7} {'handled':>7} {'prompt p50':>10} {'prompt p99':>10} {'wd p50':>6} {'wd p99':>6} {'lag p50':>7} "
          f"{'lag p99':>7} {'unledgered':>10} {'spool':>5} {'pg conns':>8}")
    for r in runs:
        print(f"{r.name:22} {args.calls / r.wall:7.1f} {r.peak_live:5d} {len(r.errors):4d} {r.drops:5d} "
              f"{r.peak_rss / 2**20:7.1f} {fmt_ms(r.decisions, 50):>7} {fmt_ms(r.decisions, 99):>7} "
              f"{fmt_ms(r.decisions_handled, 99):>7} "
              f"{fmt_ms(r.prompt_starts, 50):>10} {fmt_ms(r.prompt_starts, 99):>10} {fmt_ms(r.withdrawals, 50):>6} "
              f"{fmt_ms(r.withdrawals, 99):>6} {fmt_ms(r.ledger_lag, 50):>7} {fmt_ms(r.ledger_lag, 99):>7} "
              f"{r.missing_in_ledger if r.name != 'bare greenswitch' else '-':>10} {r.leftovers:5d} "
              f"{'-' if r.db_connections is None else r.db_connections:>8}")
        for error in sorted(set(r.errors))[:5]:
            print(f"  error: {error}")
    if args.lock_ledger:
        locked = runs[0].prompt_starts_locked
        print(f"prompt start of the {len(locked)} calls that arrived while the ledger was locked: "
              f"p50 {fmt_ms(locked, 50)} ms, p99 {fmt_ms(locked, 99)} ms")
    peers = [r for r in runs if r.name == "bare greenswitch"]
    if peers and runs[0].decisions and peers[0].decisions:
        ours, peer = runs[0], peers[0]
        print(f"ratio fs-consent / greenswitch: calls/s {peer.wall / ours.wall:.2f}, decision p99 "
              f"{percentile(ours.decisions, 99) / percentile(peer.decisions, 99):.2f}, prompt start p99 "
              f"{percentile(ours.prompt_starts, 99) / percentile(peer.prompt_starts, 99):.2f}")
    print("ms throughout. dec = caller's digit or timeout -> record_session command arriving (the emulator's read "
          "that completed it); handled = dec p99 up to when the emulator handled it (after what came in front of "
          "it in that read); prompt = connection -> the prompt's command arriving; wd = withdrawal request -> plaintext gone (the control socket answers after the "
          "unlink); lag = caller's hang-up -> outcome and end in the ledger (polled every 0.1 s); drops = calls "
          "let go before the prompt; unledgered = hung-up calls whose outcome never reached the ledger; pg conns = "
          "peak PostgreSQL connections to the ledger's database, all nodes")


if __name__ == "__main__":
    main()
