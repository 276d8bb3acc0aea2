"""Shared helpers for the end-to-end tests: a real server, the emulator, real files."""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import replace
from pathlib import Path

from fs_consent import ledger
from fs_consent.config import load_config
from fs_consent.emulator import CallerScript, FreeSwitchEmulator
from fs_consent.server import ConsentServer

TIME_SCALE = 0.05  # the emulator runs FreeSWITCH's own timers 20x faster: a 5 s prompt timeout takes 0.25 s


def make_config(data_dir: Path, config_file: Path | None = None, **consent_changes):
    config = load_config(config_file, data_dir=data_dir, listen="127.0.0.1:0", env={"HOME": str(data_dir)})
    return replace(config, consent=replace(config.consent, **consent_changes),
                   server=replace(config.server, drain_seconds=3.0))


class Harness:
    """An in-process server on an ephemeral port, and an emulator pointed at it."""

    def __init__(self, data_dir: Path, **consent_changes):
        self.config = make_config(data_dir, **consent_changes)
        self.server = ConsentServer(self.config, announce=lambda _m: None)

    def __enter__(self):
        self.server.start()
        host, port = self.server.address
        self.emulator = FreeSwitchEmulator(host, port, spool_dir=self.config.storage.spool_dir,
                                           time_scale=TIME_SCALE)
        return self

    def __exit__(self, *exc):
        self.server.stop()

    def call(self, **script):
        result = self.emulator.place_call(CallerScript(**script), timeout=20)
        assert result.errors == [], result.errors
        self.settle()
        return result

    def settle(self) -> None:
        """Wait for background seals and queued ledger writes."""
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


def age_decrypt(identity: Path, ciphertext: Path) -> bytes:
    """Decrypt with the real `age` CLI, as an auditor or the police would."""
    return subprocess.run(["age", "-d", "-i", str(identity), str(ciphertext)], check=True,
                          capture_output=True).stdout


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
