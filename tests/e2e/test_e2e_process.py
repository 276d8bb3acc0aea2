"""The installed command as a sysadmin runs it: `fs-consent serve` in its own process.

Embedded defaults, the CLI against a live server, SIGTERM drain, and a crash
(SIGKILL) mid-call followed by a restart that seals or deletes what the crash left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
import wave
from pathlib import Path

import gevent
import gevent.subprocess
import pytest
from gevent import socket

from fs_consent.emulator import CallerScript, FreeSwitchEmulator

from ..harness import age_decrypt, sha256

DATA = Path(".local/share/fs-consent")  # under $HOME: the embedded default


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, home: Path, port: int):
        self.home, self.port = home, port
        self.env = {**os.environ, "HOME": str(home), "XDG_DATA_HOME": ""}
        self.env.pop("FS_CONSENT_DATA_DIR", None)
        self.env.pop("FS_CONSENT_CONFIG", None)
        self.proc = None

    @property
    def data(self) -> Path:
        return self.home / DATA

    def start(self) -> str:
        """Start `fs-consent serve`; return what it said before it listened."""
        self.proc = gevent.subprocess.Popen(
            [sys.executable, "-m", "fs_consent.cli", "serve", "--listen", f"127.0.0.1:{self.port}"],
            env=self.env, stderr=subprocess.PIPE, text=True)
        said = []
        with gevent.Timeout(30, AssertionError(f"server did not start: {said}")):
            for line in self.proc.stderr:
                said.append(line)
                if "fs-consent listening on" in line:
                    return "".join(said)
        raise AssertionError(f"server exited: {''.join(said)}")

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = gevent.subprocess.run([sys.executable, "-m", "fs_consent.cli", *args], env=self.env,
                                     capture_output=True, text=True, timeout=120)
        if check:
            assert proc.returncode == 0, proc.stderr
        return proc

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def emulator(self) -> FreeSwitchEmulator:
        return FreeSwitchEmulator("127.0.0.1", self.port, spool_dir=self.data / "spool", time_scale=0.05)


@pytest.fixture
def server(tmp_path):
    srv = ServerProcess(tmp_path, free_port())
    yield srv
    if srv.proc is not None and srv.proc.poll() is None:
        srv.proc.kill()
        srv.proc.wait()


def wait_for(predicate, timeout: float = 10):
    with gevent.Timeout(timeout, AssertionError("condition not met in time")):
        while not predicate():
            gevent.sleep(0.02)


def test_embedded_defaults_then_simulate_list_export(server, tmp_path):
    said = server.start()
    assert "identity" in said  # generated keys are announced once
    assert oct(server.data.stat().st_mode & 0o777) == "0o700"
    assert oct((server.data / "keys" / "identity.txt").stat().st_mode & 0o777) == "0o600"
    sim = server.cli("simulate", "--calls", "18", "--concurrency", "9", "--time-scale", "0.3",
                     "--server", f"127.0.0.1:{server.port}")
    assert "18 calls" in sim.stderr + sim.stdout and "errors: 0" in sim.stderr + sim.stdout

    calls = json.loads(server.cli("calls", "list", "--format", "json").stdout)
    assert len(calls) == 18
    assert {c["outcome"] for c in calls} >= {"granted", "refused", "withdrawn", "abandoned"}
    listing = json.dumps(calls)
    numbers = [f"06{10000000 + i:08d}" for i in range(18)]  # what simulate's callers dial from
    assert not any(n in listing or "+31" + n[1:] in listing for n in numbers)
    wait_for(lambda: not any((server.data / "spool").iterdir()))
    recordings = json.loads(server.cli("recordings", "list", "--format", "json", "--state", "sealed").stdout)
    assert recordings and all(Path(r["path"]).exists() for r in recordings)

    out = tmp_path / "export.wav"
    server.cli("recordings", "export", recordings[0]["id"], "--out", str(out))
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    with wave.open(str(out)) as wav:
        assert (wav.getnchannels(), wav.getframerate()) == (2, 8000)
    again = server.cli("recordings", "export", recordings[0]["id"], "--out", str(out), check=False)
    assert again.returncode != 0 and "refusing to overwrite" in again.stderr

    csv_out = server.cli("calls", "list", "--format", "csv").stdout.splitlines()
    assert csv_out[0].startswith("uuid,node,outcome") and len(csv_out) == 19
    assert server.stop() == 0


def test_sigterm_drains_live_calls_then_exits(server):
    server.start()
    emulator = server.emulator()
    call = gevent.spawn(emulator.place_call, CallerScript(digits=[None], talk_seconds=1.5), timeout=30)
    wait_for(lambda: any((server.data / "spool").iterdir()))
    server.proc.send_signal(signal.SIGTERM)
    gevent.sleep(0.3)
    with pytest.raises(OSError):  # no new calls while draining
        socket.create_connection(("127.0.0.1", server.port), timeout=2).recv(1)
    result = call.get(timeout=30)
    assert result.errors == [] and result.channel_vars["fs_consent"] == "granted"
    assert server.proc.wait(timeout=30) == 0
    (info,) = result.recordings.values()
    (sealed,) = (server.data / "store").iterdir()
    assert sha256(age_decrypt(server.data / "keys" / "identity.txt", sealed)) == info.sha256
    assert not any((server.data / "spool").iterdir())


def test_crash_mid_call_then_restart_seals_or_deletes_the_leftovers(server):
    server.start()
    emulator = server.emulator()
    call = gevent.spawn(emulator.place_call, CallerScript(digits=[None], talk_seconds=1.0), timeout=30)
    wait_for(lambda: any((server.data / "spool").iterdir()))
    server.stop(signal.SIGKILL)
    result = call.get(timeout=30)  # FreeSWITCH carries on: the call and its recording end normally
    (info,) = result.recordings.values()
    spool = server.data / "spool"
    stray = spool / f"{uuid.uuid4().hex}.wav"  # plaintext the ledger knows nothing of
    stray.write_bytes(b"RIFF....WAVE")
    assert len(list(spool.iterdir())) == 2

    server.start()
    assert sorted(spool.iterdir()) == []  # recovered before the listener accepted calls
    calls = json.loads(server.cli("calls", "list", "--format", "json").stdout)
    (row,) = calls
    assert row["outcome"] == "granted" and row["recording_state"] == "sealed"
    (sealed,) = (server.data / "store").iterdir()
    assert sha256(age_decrypt(server.data / "keys" / "identity.txt", sealed)) == info.sha256
    assert server.stop() == 0


def test_a_call_cut_off_in_the_prompt_by_a_crash_ends_error_by_restart(server):
    """SIGKILL while the caller hears the prompt: after the restart the call has an outcome,
    and the report and the compliance check count it."""
    server.start()
    emulator = server.emulator()
    call = gevent.spawn(emulator.place_call, CallerScript(digits=[None], prompt_seconds=30.0), timeout=30)
    wait_for(lambda: server.cli("calls", "list", "--format", "json").stdout.strip() not in ("", "[]"))
    server.stop(signal.SIGKILL)
    call.get(timeout=30)
    server.start()
    (row,) = json.loads(server.cli("calls", "list", "--format", "json").stdout)
    assert row["outcome"] == "error" and row["ended_at"]
    report = json.loads(server.cli("report", "--format", "json").stdout)
    counted = {o["outcome"]: o["calls"] for o in report["consent"]}
    assert counted["error_by_restart"] == 1 and counted["undecided"] == 0
    compliance = server.cli("compliance", check=False)
    assert "OK calls.outcome: every ended call has an outcome; 1 ended by a restart" in compliance.stdout
    assert server.stop() == 0


def test_loose_identity_file_is_refused(server):
    server.start()
    assert server.stop() == 0
    identity = server.data / "keys" / "identity.txt"
    identity.chmod(0o644)
    proc = gevent.subprocess.run([sys.executable, "-m", "fs_consent.cli", "serve", "--listen",
                                  f"127.0.0.1:{server.port}"], env=server.env, capture_output=True,
                                 text=True, timeout=30)
    assert proc.returncode != 0
    assert "identity.txt" in proc.stderr and "0644" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("where", ["before", "after"])
def test_bad_config_value_names_the_key(server, tmp_path, where):
    config = tmp_path / "bad.toml"
    config.write_text('[consent]\ntimeout = "soon"\n')
    args = ["--config", str(config), "serve"] if where == "before" else ["serve", "--config", str(config)]
    proc = server.cli(*args, check=False)
    assert proc.returncode != 0 and "consent.timeout" in proc.stderr and "Traceback" not in proc.stderr


def test_serve_tells_systemd_it_is_ready_only_once_listening(server, tmp_path):
    """Type=notify: READY=1 arrives on $NOTIFY_SOCKET after the bind, STOPPING=1 on SIGTERM."""
    notify_socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_socket.bind(str(tmp_path / "notify"))
    server.env["NOTIFY_SOCKET"] = str(tmp_path / "notify")
    server.start()
    with gevent.Timeout(10):
        ready = notify_socket.recv(4096).decode()
    assert "READY=1" in ready and f"127.0.0.1:{server.port}" in ready
    socket.create_connection(("127.0.0.1", server.port), timeout=2).close()  # it is listening
    server.proc.send_signal(signal.SIGTERM)
    with gevent.Timeout(10):
        assert "STOPPING=1" in notify_socket.recv(4096).decode()
    assert server.proc.wait(timeout=30) == 0
