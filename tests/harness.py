"""Shared helpers for the end-to-end tests: a real server, the emulator, real files."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
import uuid
from dataclasses import replace
from pathlib import Path

import gevent

from fs_consent.core.config import load_config
from fs_consent.emulator import CallerScript, FreeSwitchEmulator, WireChaos
from fs_consent.runtime.server import ConsentServer
from fs_consent.store import ledger

TIME_SCALE = 0.05  # the emulator runs FreeSWITCH's own timers 20x faster: a 5 s prompt timeout takes 0.25 s


def emulator_chaos() -> WireChaos:
    """The emulated FreeSWITCH's wire disorder in every end-to-end test: on, as unruly as a real one.

    FS_CONSENT_EMULATOR_CHAOS=0 turns it off (the polite emulator: to tell a driver
    bug from a disorder bug); FS_CONSENT_EMULATOR_SEED=N replays a run (conftest.py
    fixes one seed per pytest run and prints it in the header).  Emulators the
    tests build themselves read the same variables.
    """
    return WireChaos.from_env()


#: e.g. postgresql://user:pass@127.0.0.1:5432/postgres: run the ledger on that server instead of SQLite
#: (each harness gets a database of its own), as peewee's own suite does per backend
SERVER_URL = os.environ.get("FS_CONSENT_TEST_DATABASE")


class TestDatabase:
    """A fresh database on the test server, or None for the embedded SQLite default."""

    def __init__(self):
        self.url = None
        if SERVER_URL:
            import psycopg

            self.name = f"fsc_test_{uuid.uuid4().hex[:12]}"
            with psycopg.connect(SERVER_URL, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{self.name}"')
            self.url = SERVER_URL.rsplit("/", 1)[0] + "/" + self.name

    def drop(self) -> None:
        if self.url:
            import psycopg

            # FORCE ends the sessions still on it; an autovacuum worker started by the test's writes is
            # one only a member of pg_signal_backend may end (.ci/run grants it), and it soon goes by itself
            deadline = time.monotonic() + 30
            with psycopg.connect(SERVER_URL, autocommit=True) as conn:
                while True:
                    try:
                        conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
                        return
                    except psycopg.errors.InsufficientPrivilege:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.2)


def make_config(data_dir: Path, config_file: Path | None = None, database: str | None = None,
                recording: dict | None = None, **consent_changes):
    config = load_config(config_file, data_dir=data_dir, listen="127.0.0.1:0", env={"HOME": str(data_dir)})
    storage = replace(config.storage, database=database) if database else config.storage
    return replace(config, consent=replace(config.consent, **consent_changes), storage=storage,
                   server=replace(config.server, drain_seconds=3.0),
                   recording=replace(config.recording, **(recording or {})))


class Harness:
    """An in-process server on an ephemeral port, and an emulator pointed at it."""

    def __init__(self, data_dir: Path, recording: dict | None = None, **consent_changes):
        self.database = TestDatabase()
        self.config = make_config(data_dir, database=self.database.url, recording=recording, **consent_changes)
        self.server = ConsentServer(self.config, announce=lambda _m: None)

    def __enter__(self):
        if self.database.url:  # CLI subprocesses find the same database through this file
            path = Path(self.config.storage.data_dir) / "config.toml"
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.write_text(f'[storage]\ndatabase = "{self.database.url}"\n')
            os.environ["FS_CONSENT_CONFIG"] = str(path)
        self.server.start()
        host, port = self.server.address
        self.emulator = FreeSwitchEmulator(host, port, spool_dir=self.config.storage.spool_dir,
                                           time_scale=TIME_SCALE, chaos=emulator_chaos())
        return self

    def __exit__(self, *exc):
        self.server.stop()
        os.environ.pop("FS_CONSENT_CONFIG", None)
        self.database.drop()

    def call(self, **script):
        result = self.emulator.place_call(CallerScript(**script), timeout=20)
        assert result.errors == [], (result.errors, str(result.chaos))
        self.settle()
        return result

    def settle(self) -> None:
        """Wait for the server to finish its calls, then for background seals and queued ledger writes.

        The switch's side of a call can end a moment before the server has read its last frames.
        """
        with gevent.Timeout(20, AssertionError("the server did not finish its calls")):
            while self.server.ctx.registry:
                gevent.sleep(0.01)
        self.server.ctx.seals.join(timeout=20)
        self.server.ctx.writer.flush()

    # --- what is on disk and in the ledger ---------------------------------------------

    @property
    def spool(self) -> Path:
        return Path(self.config.storage.spool_dir)

    @property
    def store(self) -> Path:
        return Path(self.config.storage.store_dir)

    @property
    def identity(self) -> Path:
        return Path(self.config.storage.keys_dir) / "identity.txt"

    def spool_files(self) -> list[str]:
        return sorted(p.name for p in self.spool.iterdir())

    def store_files(self) -> list[str]:
        return sorted(p.name for p in self.store.iterdir())

    def call_row(self, call_uuid: str) -> ledger.Call:
        return ledger.Call.get(ledger.Call.uuid == call_uuid)

    def recordings_of(self, call_uuid: str) -> list[ledger.Recording]:
        return list(ledger.Recording.select().join(ledger.Call).where(ledger.Call.uuid == call_uuid))


def fs_consent(h: Harness, *args: str, input: str | None = None, env: dict | None = None):
    """The real command line, in another process, beside the running server (gevent-friendly)."""
    import sys

    import gevent.subprocess

    return gevent.subprocess.run(
        [sys.executable, "-m", "fs_consent.cli", "--data-dir", str(h.config.storage.data_dir), *args],
        capture_output=True, text=True, timeout=60, input=input, env=env)


def age_decrypt(identity: Path, ciphertext: Path) -> bytes:
    """Decrypt with the real `age` CLI, as an auditor or the police would."""
    return subprocess.run(["age", "-d", "-i", str(identity), str(ciphertext)], check=True,
                          capture_output=True).stdout


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
