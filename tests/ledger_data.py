"""A real data dir (keys, ledger, store, spool) with calls and recordings of chosen ages.

For the retention, hold and export tests: real age files sealed to the installation's
key, a real SQLite ledger, real personal-field sealing; the clock is a parameter.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import uuid
from pathlib import Path

import pyrage
from click.testing import CliRunner

from fs_consent.cli import main
from fs_consent.core.config import load_config
from fs_consent.secure import keys
from fs_consent.secure.protect import FieldProtector
from fs_consent.secure.vault import Vault
from fs_consent.store import ledger
from fs_consent.store.connection import close_database, open_database

AS_OF = dt.datetime(2027, 6, 1, 12, 0, 0)
DAY = dt.timedelta(days=1)


def wav_bytes(seed: str, size: int = 4000) -> bytes:
    """A small, valid-looking WAV: a RIFF header and deterministic 'audio'."""
    body = hashlib.sha256(seed.encode()).digest() * (size // 32)
    header = b"RIFF" + (36 + len(body)).to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little")
    header += bytes.fromhex("01000200401f0000007d000004001000") + b"data" + len(body).to_bytes(4, "little")
    return header + body


class DataDir:
    """The installation: ``config``, ``vault``, ``protector``; ``add_call`` makes history."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.config = load_config(data_dir=root, env={"HOME": str(root)})
        s = self.config.storage
        self.keys_dir, self.store, self.spool = Path(s.keys_dir), Path(s.store_dir), Path(s.spool_dir)
        keys.init_keys(self.keys_dir)
        self.spool.mkdir(mode=0o700, exist_ok=True)
        self.recipients = keys.load_recipients(self.keys_dir)
        self.protector = FieldProtector(keys.load_field_key(self.keys_dir))
        self.open()

    def open(self) -> None:
        close_database()
        open_database(self.config.storage.database)
        self.vault = Vault(self.store, self.recipients, workers=0)

    @property
    def identity_file(self) -> Path:
        return self.keys_dir / keys.IDENTITY_FILE

    def add_call(self, *, age: dt.timedelta, as_of: dt.datetime = AS_OF, number: str | None = "0612345678",
                 recording: str | None = ledger.SEALED, outcome: str = "granted", spool_plaintext: bool = False):
        """A call that ended ``age`` before ``as_of`` (lasting 3 minutes), and its recording.

        Returns (call, recording or None). A sealed recording has a real age file.
        """
        ended = as_of - age
        started = ended - dt.timedelta(minutes=3)
        call = ledger.Call.create(
            uuid=str(uuid.uuid4()), started_at=started, answered_at=started + dt.timedelta(seconds=1),
            bridged_at=started + dt.timedelta(seconds=20), ended_at=ended, wait_seconds=19.0,
            duration_seconds=179.0, outcome=outcome, decided_by="silence", decided_at=started,
            consent_mode="opt-out", language="nl", prompt_id="consent-nl", prompt_version="2026-11-01",
            caller_hash=self.protector.lookup_hash("phone", number) if number else None,
            caller_sealed=self.protector.seal("phone", number) if number else None,
            hangup_cause="NORMAL_CLEARING")
        if recording is None:
            return call, None
        rid = uuid.uuid4().hex
        rec_started = started + dt.timedelta(seconds=20)
        rec = ledger.Recording.create(id=rid, call=call, state=recording, started_at=rec_started,
                                      sealed_at=ended if recording == ledger.SEALED else None,
                                      deleted_at=ended if recording == ledger.DELETED else None,
                                      state_reason="withdrawn" if recording == ledger.DELETED else None)
        if recording == ledger.SEALED:
            data = pyrage.encrypt(wav_bytes(rid), [pyrage.x25519.Recipient.from_str(r) for r in self.recipients])
            path = self.vault.path_for(rid)
            path.write_bytes(data)
            os.chmod(path, 0o600)
            rec.size, rec.sha256 = len(data), hashlib.sha256(data).hexdigest()
            rec.save()
        if spool_plaintext:
            (self.spool / f"{rid}.wav").write_bytes(wav_bytes(rid))
        return call, rec

    def copy_to(self, root: Path) -> DataDir:
        """The same installation, byte for byte, somewhere else (the ledger closed meanwhile)."""
        close_database()
        shutil.copytree(self.root, root)
        self.open()
        other = DataDir.__new__(DataDir)
        other.root = root
        other.config = load_config(data_dir=root, env={"HOME": str(root)})
        s = other.config.storage
        other.keys_dir, other.store, other.spool = Path(s.keys_dir), Path(s.store_dir), Path(s.spool_dir)
        other.recipients, other.protector = self.recipients, self.protector
        return other

    def cli(self, *args: str, input: str | None = None):
        """Run ``fs-consent --data-dir ROOT ARGS`` in-process; the ledger is reopened afterwards."""
        close_database()
        result = CliRunner().invoke(main, ["--data-dir", str(self.root), *args], input=input,
                                    catch_exceptions=False)
        close_database()
        self.open()
        return result

    # --- what is there --------------------------------------------------------------

    def store_files(self) -> list[str]:
        return sorted(p.name for p in self.store.iterdir())

    def spool_files(self) -> list[str]:
        return sorted(p.name for p in self.spool.iterdir())

    def recording(self, rid: str) -> ledger.Recording:
        return ledger.Recording.get_by_id(rid)

    def call(self, call_id: int) -> ledger.Call:
        return ledger.Call.get_by_id(call_id)

    def audit(self, prefix: str = "") -> list[ledger.AuditEntry]:
        return [e for e in ledger.AuditEntry.select().order_by(ledger.AuditEntry.seq) if e.action.startswith(prefix)]
