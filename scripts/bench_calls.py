#!/usr/bin/env python3
"""Benchmark: many concurrent emulated FreeSWITCH calls against `fs-consent serve`.

Prints, for fs-consent and for a bare greenswitch app doing the same call flow
without consent bookkeeping (the peer), measured in the same run:
calls/s, errors, peak RSS of the server process (with its seal workers), and
p50/p99 from the caller's digit or timeout to the record_session command. For
fs-consent also p50/p99 from a withdrawal (control socket) to the plaintext gone.

Everything talks to 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import gevent
import gevent.pool
import psutil

from fs_consent.control import request
from fs_consent.emulator import CallerScript, FreeSwitchEmulator
from fs_consent.scenarios import percentile

ROOT = Path(__file__).resolve().parent.parent

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
            for line in self.proc.stderr:
                if ready_line in line:
                    break
            else:
                raise SystemExit(f"server did not start: {self.proc.wait()}")
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


def drive(port: int, spool: Path, calls: int, rate: float, talk: float, withdraw_every: int,
          control_socket: Path | None):
    """Calls arrive at ``rate`` per second (evenly spaced, like a steady queue), each talks ``talk`` s."""
    emulator = FreeSwitchEmulator("127.0.0.1", port, spool_dir=spool, time_scale=0.1, linger_timeout=10)
    latencies, withdrawals, errors = [], [], []
    live = [0, 0]  # now, peak

    def one(i: int):
        digit = "1" if i % 5 == 0 else None  # one caller in five refuses
        call_uuid = str(uuid.uuid4())
        script = CallerScript(caller_number=f"06{20000000 + i:08d}", digits=[digit], talk_seconds=talk)
        watcher = None
        if control_socket is not None and digit is None and i % withdraw_every == 1:
            watcher = gevent.spawn(withdraw_when_recording, call_uuid)
        live[0] += 1
        live[1] = max(live)
        try:
            result = emulator.place_call(script, uuid=call_uuid, timeout=talk + 60)
        except Exception as exc:  # noqa: BLE001
            errors.append(type(exc).__name__)
            return
        finally:
            live[0] -= 1
        errors.extend(e for e in result.errors if not any(note in e for note in NOTES))
        if result.decision_latency is not None:
            latencies.append(result.decision_latency)
        if watcher is not None:
            watcher.join(timeout=5)

    def withdraw_when_recording(call_uuid: str):
        started = time.time()
        while time.time() - started < talk + 30:
            files = list(spool.glob("*.wav"))
            if files:
                break
            gevent.sleep(0.05)
        gevent.sleep(talk / 3)
        t0 = time.perf_counter()
        # the control socket client is blocking: run it in a thread so this hub keeps serving calls
        reply = gevent.get_hub().threadpool.apply(request, (control_socket, {"op": "withdraw", "call_uuid": call_uuid,
                                                                              "actor": "bench"}))
        if reply.get("ok") and reply.get("live"):
            withdrawals.append(time.perf_counter() - t0)

    group = gevent.pool.Group()
    started = time.perf_counter()
    for i in range(calls):
        gevent.sleep(max(0.0, started + i / rate - time.perf_counter()))
        group.spawn(one, i)
    group.join()
    wall = time.perf_counter() - started
    return wall, latencies, withdrawals, errors, live[1]


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
    args = parser.parse_args()

    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rows = []
    with tempfile.TemporaryDirectory(prefix="fs-consent-bench-") as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        port = free_port()
        config = tmp / "config.toml"
        config.write_text("[server]\nmax_calls = 5000\n")
        env = {**os.environ, "FS_CONSENT_DATA_DIR": str(data)}
        server = Server([sys.executable, "-m", "fs_consent.cli", "--config", str(config), "serve", "--listen",
                         f"127.0.0.1:{port}", "--log-level", "warning"], env, "fs-consent listening on", port)
        try:
            wall, lat, wd, errors, peak = drive(port, data / "spool", args.calls, args.rate, args.talk,
                                                args.withdraw_every, data / "control.sock")
        finally:
            server.stop()
        leftovers = list((data / "spool").iterdir())
        rows.append(("fs-consent", wall, lat, wd, errors, server.peak_rss, leftovers, peak))

        if not args.skip_peer:
            peer_spool = tmp / "peer-spool"
            peer_spool.mkdir()
            peer_script = tmp / "peer.py"
            peer_script.write_text(PEER_APP)
            port = free_port()
            peer = Server([sys.executable, str(peer_script), str(port), str(peer_spool)], dict(os.environ), None, port)
            try:
                wall, lat, wd, errors, peak = drive(port, peer_spool, args.calls, args.rate, args.talk,
                                                    args.withdraw_every, None)
            finally:
                peer.stop()
            rows.append(("bare greenswitch", wall, lat, wd, errors, peer.peak_rss, [], peak))

    print(f"{args.calls} calls arriving at {args.rate:g}/s, {args.talk:.1f} s talk each, {os.cpu_count()} CPUs; "
          f"one caller in five refuses; every {args.withdraw_every}th is withdrawn mid-call")
    print(f"{'server':18} {'calls/s':>8} {'peak live':>9} {'errors':>6} {'peak RSS MB':>11} {'dec p50 ms':>10} "
          f"{'dec p99 ms':>10} {'wd p50 ms':>9} {'wd p99 ms':>9} {'spool left':>10}")
    for name, wall, lat, wd, errors, rss, leftovers, peak in rows:
        print(f"{name:18} {args.calls / wall:8.1f} {peak:9d} {len(errors):6d} {rss / 2**20:11.1f} "
              f"{fmt_ms(lat, 50):>10} {fmt_ms(lat, 99):>10} {fmt_ms(wd, 50):>9} {fmt_ms(wd, 99):>9} "
              f"{len(leftovers):10d}")
        for error in sorted(set(errors))[:5]:
            print(f"  error: {error}")
    if len(rows) == 2:
        ours, peer = rows
        print(f"ratio fs-consent / greenswitch: calls/s {(args.calls / ours[1]) / (args.calls / peer[1]):.2f}, "
              f"decision p99 {percentile(ours[2], 99) / percentile(peer[2], 99):.2f}" if ours[2] and peer[2] else "")
    print("dec = caller's digit or timeout -> record_session command; wd = withdrawal request -> plaintext gone "
          "(the control socket answers after the unlink)")


if __name__ == "__main__":
    main()
