"""The police export: a signed manifest, verification that names the wrong file, age re-encryption."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess

import pytest

from fs_consent.privacy import police_export
from fs_consent.secure import keys
from fs_consent.store import holds, ledger
from fs_consent.store.connection import close_database

from ..ledger_data import DAY, DataDir, wav_bytes


@pytest.fixture
def data(tmp_path):
    d = DataDir(tmp_path / "data")
    yield d
    close_database()


@pytest.fixture
def held(data):
    call, rec = data.add_call(age=2 * DAY, number="+31 6 1234 5678")
    holds.add(rec.id, reason="aggression", case_ref="PV-2027-17", note=None, actor="officer")
    return call, rec


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def export(d: DataDir, rec_id: str, out, *extra: str):
    return d.cli("recordings", "export", rec_id, "--case", "PV-2027-17", "--out", str(out), *extra)


def verify(d: DataDir, directory, *extra: str):
    return d.cli("verify-export", str(directory), *extra)


def signing_key(d: DataDir) -> str:
    return keys.signing_public_key(keys.load_signing_key(d.keys_dir))


def test_an_export_verifies(data, held, tmp_path):
    call, rec = held
    out = tmp_path / "export"
    result = export(data, rec.id, out)
    assert result.exit_code == 0, result.output
    wav = f"PV-2027-17-{rec.id}.wav"
    assert sorted(p.name for p in out.iterdir()) == sorted([wav, "manifest.json", "manifest.json.sig"])
    assert mode(out) == 0o700 and all(mode(p) == 0o600 for p in out.iterdir())
    assert (out / wav).read_bytes() == wav_bytes(rec.id)  # the recording itself

    data_bytes = (out / "manifest.json").read_bytes()
    manifest = json.loads(data_bytes)
    assert data_bytes == police_export.canonical(manifest)  # canonical JSON, exactly
    assert manifest["case_ref"] == "PV-2027-17"
    assert manifest["recording"]["id"] == rec.id and manifest["recording"]["store_sha256"] == rec.sha256
    assert manifest["call"]["uuid"] == call.uuid and manifest["call"]["duration_seconds"] == 179.0
    assert manifest["call"]["started_at"] == call.started_at.isoformat(timespec="microseconds") + "Z"
    assert "caller_number" not in manifest["call"]  # numbers only when asked for
    assert b"5678" not in data_bytes
    assert manifest["files"] == [{"name": wav, "sha256": hashlib.sha256(wav_bytes(rec.id)).hexdigest(),
                                  "size": len(wav_bytes(rec.id)), "encryption": "none"}]
    assert manifest["exported_by"] == ledger.os_user() and manifest["exported_at"].endswith("Z")
    assert manifest["signer"] == {"algorithm": "ed25519", "public_key": signing_key(data)}
    assert [h["case_ref"] for h in manifest["legal_holds"]] == ["PV-2027-17"]
    signature = base64.b64decode((out / "manifest.json.sig").read_bytes())
    keys.load_signing_key(data.keys_dir).public_key().verify(signature, data_bytes)

    result = verify(data, out, "--public-key", signing_key(data))
    assert result.exit_code == 0, result.output
    assert "OK: export for case PV-2027-17 verified" in result.output and "(the pinned key)" in result.output
    result = verify(data, out)  # without a pinned key: verified, with a warning to pin it
    assert result.exit_code == 0 and "warning: verified against the key named in the manifest" in result.output

    (entry,) = [e for e in data.audit("recording.export")]
    detail = json.loads(entry.detail)
    assert entry.actor == ledger.os_user() and entry.object_id == rec.id
    assert detail["case_ref"] == "PV-2027-17"
    assert detail["manifest_sha256"] == hashlib.sha256(data_bytes).hexdigest()


def test_the_caller_number_only_when_asked_for(data, held, tmp_path):
    _, rec = held
    assert export(data, rec.id, tmp_path / "e", "--with-caller-number").exit_code == 0
    manifest = json.loads((tmp_path / "e" / "manifest.json").read_text())
    assert manifest["call"]["caller_number"] == "+31 6 1234 5678"


def flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("target, offset", [
    ("wav", 0), ("wav", 100), ("wav", -1),
    ("manifest.json", 0), ("manifest.json", 40), ("manifest.json", 300), ("manifest.json", -2),
    ("manifest.json.sig", 0), ("manifest.json.sig", 5), ("manifest.json.sig", 50), ("manifest.json.sig", -3),
])
def test_one_flipped_byte_fails_verification_naming_the_file(data, held, tmp_path, target, offset):
    _, rec = held
    out = tmp_path / "export"
    assert export(data, rec.id, out).exit_code == 0
    name = f"PV-2027-17-{rec.id}.wav" if target == "wav" else target
    flip(out / name, offset)
    for pinned in ([], ["--public-key", signing_key(data)]):
        result = verify(data, out, *pinned)
        assert result.exit_code == 1, result.output
        failed = [line for line in result.output.splitlines() if line.startswith("FAILED ")]
        assert failed and all(line.startswith(f"FAILED {name}: ") for line in failed), result.output


def test_a_manifest_rewritten_without_the_key_fails(data, held, tmp_path):
    """Consistent in itself (its checksum redone), but the signature gives it away."""
    _, rec = held
    out = tmp_path / "export"
    export(data, rec.id, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["call"]["duration_seconds"] = 12.0
    manifest["content_sha256"] = police_export.content_sha256(manifest)
    (out / "manifest.json").write_bytes(police_export.canonical(manifest))
    result = verify(data, out)
    assert result.exit_code == 1 and "FAILED manifest.json.sig: the signature does not verify" in result.output


def test_another_installations_key_is_refused_when_pinned(data, held, tmp_path):
    _, rec = held
    out = tmp_path / "export"
    export(data, rec.id, out)
    other = DataDir(tmp_path / "other")
    result = verify(other, out, "--public-key", signing_key(other))
    assert result.exit_code == 1 and "FAILED manifest.json: signed for key" in result.output
    assert "not the pinned key" in result.output


def test_a_missing_file_is_named(data, held, tmp_path):
    _, rec = held
    out = tmp_path / "export"
    export(data, rec.id, out)
    (out / f"PV-2027-17-{rec.id}.wav").unlink()
    result = verify(data, out)
    assert result.exit_code == 1 and f"FAILED PV-2027-17-{rec.id}.wav: missing" in result.output


def test_reencrypted_for_the_police_it_decrypts_with_age_and_their_identity(data, held, tmp_path):
    _, rec = held
    police_identity = tmp_path / "police.txt"
    subprocess.run(["age-keygen", "-o", str(police_identity)], check=True, capture_output=True)
    police_public = subprocess.run(["age-keygen", "-y", str(police_identity)], check=True, capture_output=True,
                                   text=True).stdout.strip()
    out = tmp_path / "export"
    result = export(data, rec.id, out, "--to-recipient", police_public)
    assert result.exit_code == 0, result.output
    name = f"PV-2027-17-{rec.id}.wav.age"
    assert sorted(p.name for p in out.iterdir()) == sorted([name, "manifest.json", "manifest.json.sig"])
    assert all(mode(p) == 0o600 for p in out.iterdir())
    plaintext = subprocess.run(["age", "-d", "-i", str(police_identity), str(out / name)], check=True,
                               capture_output=True).stdout
    assert plaintext == wav_bytes(rec.id)
    # the installation's own identity cannot open it: it is for the police only
    assert subprocess.run(["age", "-d", "-i", str(data.identity_file), str(out / name)],
                          capture_output=True).returncode != 0
    (entry,) = json.loads((out / "manifest.json").read_text())["files"]
    assert entry["encryption"] == "age" and entry["recipient"] == police_public
    assert entry["plaintext_sha256"] == hashlib.sha256(plaintext).hexdigest()
    assert verify(data, out, "--public-key", signing_key(data)).exit_code == 0


def test_the_plain_export_to_a_file_still_works(data, held, tmp_path):
    _, rec = held
    out = tmp_path / "plain.wav"
    result = data.cli("recordings", "export", rec.id, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == wav_bytes(rec.id) and mode(out) == 0o600


def test_a_recording_that_is_not_held_can_be_exported_with_a_warning(data, tmp_path):
    _, rec = data.add_call(age=2 * DAY)
    result = export(data, rec.id, tmp_path / "e")
    assert result.exit_code == 0 and "is not under legal hold" in result.output


def test_the_signing_public_key_is_printed_for_pinning(data):
    result = data.cli("keys", "signing-key")
    assert result.exit_code == 0 and result.output.strip() == signing_key(data)


# --- bad input: a clear error, nothing changed --------------------------------------------


def ledger_state():
    return ledger.AuditEntry.select().count(), ledger.LegalHold.select().count()


@pytest.mark.parametrize("case", [
    "unknown-id", "unknown-recording", "deleted", "case-path", "case-dot", "case-long", "not-empty", "out-is-file",
    "parent-is-file", "unwritable", "bad-recipient", "recipient-without-case", "tampered-store",
])
def test_bad_input_is_a_clear_error_and_changes_nothing(data, held, tmp_path, case):
    _, rec = held
    _, deleted = data.add_call(age=2 * DAY, recording=ledger.DELETED)
    out = tmp_path / "export"
    args = ["recordings", "export", rec.id, "--case", "PV-1", "--out", str(out)]
    expected = {
        "unknown-id": "no recording with id nope",
        "unknown-recording": "no recording with id 5c1b8c5e2a9f4d3b8e7f6a5b4c3d2e1f",
        "deleted": f"recording {deleted.id} was deleted on",
        "case-path": "case reference '../../etc' is not allowed",
        "case-dot": "case reference '.x' is not allowed",
        "case-long": "is not allowed",
        "not-empty": "exists and is not empty",
        "out-is-file": "exists and is not a directory",
        "parent-is-file": "cannot create",
        "unwritable": "cannot create",
        "bad-recipient": "--to-recipient is not an age X25519 public key",
        "recipient-without-case": "need --case",
        "tampered-store": "does not match the ledger",
    }[case]
    if case == "unknown-id":
        args[2] = "nope"
    elif case == "unknown-recording":
        args[2] = "5c1b8c5e2a9f4d3b8e7f6a5b4c3d2e1f"
    elif case == "deleted":
        args[2] = deleted.id
    elif case == "case-path":
        args[4] = "../../etc"
    elif case == "case-dot":
        args[4] = ".x"
    elif case == "case-long":
        args[4] = "x" * 65
    elif case == "not-empty":
        out.mkdir()
        (out / "notes.txt").write_text("the officer's notes")
    elif case == "out-is-file":
        out.write_text("a file")
    elif case == "parent-is-file":
        (tmp_path / "file").write_text("x")
        args[6] = str(tmp_path / "file" / "export")
    elif case == "unwritable":
        args[6] = "/proc/fs-consent-export"  # not writable, not even for root
    elif case == "bad-recipient":
        args += ["--to-recipient", "AGE-SECRET-KEY-1NOTAPUBLICKEY"]
    elif case == "recipient-without-case":
        args = ["recordings", "export", rec.id, "--out", str(out), "--to-recipient", "age1xyz"]
    elif case == "tampered-store":
        flip(data.vault.path_for(rec.id), 200)
    before_dir = sorted(p.name for p in tmp_path.iterdir())
    before_out = sorted(p.name for p in out.iterdir()) if out.is_dir() else None
    before = ledger_state()
    result = data.cli(*args)
    assert result.exit_code != 0
    assert expected in result.output, result.output
    assert "Traceback" not in result.output
    assert ledger_state() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == before_dir
    assert (sorted(p.name for p in out.iterdir()) if out.is_dir() else None) == before_out


def test_a_failure_half_way_leaves_nothing_behind(data, held, tmp_path, monkeypatch):
    _, rec = held
    out = tmp_path / "export"

    def no_space(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(police_export, "write_new", no_space)
    before = ledger_state()
    result = export(data, rec.id, out)
    assert result.exit_code != 0 and "No space left on device" in result.output
    assert not out.exists() and ledger_state() == before


def test_an_existing_empty_directory_is_used_and_made_private(data, held, tmp_path):
    _, rec = held
    out = tmp_path / "empty"
    out.mkdir(mode=0o755)
    os.chmod(out, 0o755)
    assert export(data, rec.id, out).exit_code == 0
    assert mode(out) == 0o700 and verify(data, out).exit_code == 0
