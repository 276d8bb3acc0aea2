"""The police export: one recording and a signed manifest (chain of custody).

An export directory (created 0700; refused if it exists and is not empty) holds::

    <case>-<recording id>.wav       the decrypted recording (mode 0600), or
    <case>-<recording id>.wav.age   the recording re-encrypted to the police's age key:
                                    decrypted and re-encrypted in a pipe, never plaintext on disk
    manifest.json                   canonical JSON (sorted keys, no spaces, ASCII): the case,
                                    the call facts, every file's sha256, who exported it, when,
                                    and the signer's public key
    manifest.json.sig               base64 of the Ed25519 signature over the exact bytes of
                                    manifest.json, by the installation's signing key

No file is ever overwritten (O_EXCL) and every file is 0600. ``verify_export`` checks the
signature (against a pinned public key when one is given) and every file's hash, and
names the file that is wrong. The manifest also carries ``content_sha256``, the hash of
its own canonical form without that field: it cannot make a forgery pass (only the
signature does that), but it tells a damaged manifest from a damaged signature.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pyrage
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .. import __version__
from ..secure import keys
from ..secure.files import create_private, fsync_dir
from ..secure.protect import FieldError, FieldProtector
from ..secure.seal_worker import HashingWriter, discard
from ..secure.spool import is_recording_id
from ..secure.vault import VaultError
from ..store import audit_actions, holds, ledger
from ..store.ledger import CallFlag, Recording
from . import subjects
from .errors import RecordingRestricted

FORMAT = "fs-consent-export/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.sig"
_BUFFER = 1 << 20


class ExportError(Exception):
    """The export or its verification failed; the message says what (and which file)."""


def canonical(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def content_sha256(manifest: dict) -> str:
    return hashlib.sha256(canonical({k: v for k, v in manifest.items() if k != "content_sha256"})).hexdigest()


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="microseconds") + "Z"


def sha256_file(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb", buffering=_BUFFER) as f:
        while chunk := f.read(_BUFFER):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def parse_public_key(text: str) -> Ed25519PublicKey:
    """``ed25519:<base64 of 32 bytes>`` (as ``keys.signing_public_key`` prints it)."""
    prefix, _, b64 = text.strip().partition(":")
    try:
        if prefix != "ed25519":
            raise ValueError
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(b64, validate=True))
    except (ValueError, binascii.Error):
        raise ExportError(f"{text!r} is not an Ed25519 public key (expected ed25519:<base64>)") from None


def _public_text(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + base64.b64encode(raw).decode("ascii")


@dataclass
class ExportResult:
    out_dir: Path
    files: list[str]
    manifest_sha256: str
    signer: str
    held: bool


# --- export ---------------------------------------------------------------------------


def export(recording_id: str, *, case_ref: str, out_dir: Path, keys_dir: Path, vault, actor: str,
           identity_path: Path | None = None, recipient: str | None = None,
           include_number: bool = False, legal_claim: str | None = None) -> ExportResult:
    """Write the export package; everything is checked before the first byte is written.

    A recording of a restricted call (art. 18) is exported only with ``legal_claim``
    (the reason, audited): a police case is such a claim, but it must be a conscious choice.
    """
    try:
        holds.check_case_ref(case_ref)
    except holds.HoldError as exc:
        raise ExportError(str(exc)) from None
    police = parse_recipient(recipient) if recipient is not None else None
    rec = Recording.get_or_none(Recording.id == recording_id) if is_recording_id(recording_id) else None
    if rec is None:
        raise ExportError(f"no recording with id {recording_id}")
    if rec.state != ledger.SEALED:
        when = f" on {rec.deleted_at.isoformat(timespec='seconds')}Z" if rec.deleted_at else ""
        detail = f"was deleted{when} ({rec.state_reason})" if rec.state == ledger.DELETED else f"is {rec.state}"
        raise ExportError(f"recording {recording_id} {detail}: there is nothing to export")
    try:
        restriction = subjects.refuse_if_restricted(rec.call_id, legal_claim=legal_claim)
    except RecordingRestricted as exc:
        raise ExportError(str(exc)) from None
    store_file, store_sha, store_size = checked_store_file(vault, rec)
    try:
        signing_key = keys.load_signing_key(keys_dir)
        identity = keys.load_identity(keys_dir, identity_path)
        number = _caller_number(rec.call, keys_dir) if include_number else None
    except keys.KeyFileError as exc:
        raise ExportError(str(exc)) from None
    signer = keys.signing_public_key(signing_key)

    created_dir = prepare_dir(out_dir)
    written: list[Path] = []
    try:
        name = f"{case_ref}-{rec.id}.wav" + (".age" if police else "")
        target = out_dir / name
        if police is None:
            file_sha = vault.decrypt_to(rec.id, identity, target)
            written.append(target)
            entry = {"name": name, "sha256": file_sha, "size": target.stat().st_size, "encryption": "none"}
        else:
            plain_sha, plain_size = reencrypt(store_file, identity, police, target, written)
            file_sha, file_size = sha256_file(target)
            entry = {"name": name, "sha256": file_sha, "size": file_size, "encryption": "age",
                     "recipient": str(police), "plaintext_sha256": plain_sha, "plaintext_size": plain_size}
        manifest = _manifest(rec, case_ref, entry, store_sha, store_size, signer, actor,
                             number if include_number else _OMITTED)
        data = canonical(manifest)
        write_new(out_dir / MANIFEST, data, written)
        signature = base64.b64encode(signing_key.sign(data)) + b"\n"
        write_new(out_dir / SIGNATURE, signature, written)
        fsync_dir(out_dir)
    except BaseException as exc:
        discard_written(out_dir, written, created_dir)
        if isinstance(exc, (OSError, VaultError)):
            raise ExportError(f"export to {out_dir} failed: {getattr(exc, 'strerror', None) or exc}; "
                              "nothing was left behind") from None
        raise
    manifest_sha = hashlib.sha256(data).hexdigest()
    held = holds.is_held(rec.id)
    ledger.append_audit(actor, audit_actions.RECORDING_EXPORT, "recording", rec.id, kind="police", case_ref=case_ref,
                        manifest_sha256=manifest_sha, file_sha256=entry["sha256"],
                        encrypted_to=str(police) if police else None, caller_number=include_number,
                        out=str(out_dir.resolve()), legal_claim=legal_claim,
                        restriction=restriction.request.ref if restriction else None)
    return ExportResult(out_dir, [p.name for p in written], manifest_sha, signer, held)


def _caller_number(call, keys_dir: Path) -> str | None:
    if call.caller_sealed is None:
        return None  # anonymous caller, or erased after the call records' term

    try:
        return FieldProtector(keys.load_field_key(keys_dir)).open("phone", bytes(call.caller_sealed))
    except FieldError as exc:
        raise ExportError(f"the caller's number cannot be read: {exc}") from None


# --- the parts of an export directory (shared with subject_export) ----------------------


def parse_recipient(text: str):
    """An age X25519 recipient (``age1...``) to re-encrypt to; ExportError if it is not one."""
    try:
        return pyrage.x25519.Recipient.from_str(text.strip())
    except pyrage.RecipientError:
        raise ExportError("--to-recipient is not an age X25519 public key (expected age1...)") from None


def checked_store_file(vault, rec: Recording) -> tuple[Path, str, int]:
    """The recording's ``.age`` file, its sha256 and size; ExportError if it is unreadable or
    does not match the hash sealed into the ledger."""
    store_file = vault.path_for(rec.id)
    try:
        store_sha, store_size = sha256_file(store_file)
    except OSError as exc:
        raise ExportError(f"cannot read {store_file}: {exc.strerror}") from None
    if rec.sha256 and store_sha != rec.sha256:
        raise ExportError(f"{store_file} does not match the ledger (sha256 {store_sha}, sealed as {rec.sha256}): "
                          "it was altered or damaged; not opening it")
    return store_file, store_sha, store_size


def discard_written(out_dir: Path, written: list[Path], created_dir: bool) -> None:
    """Undo a failed export: remove the files it wrote, and the directory if it made it."""
    for path in written:
        discard(path)
    if created_dir:
        try:
            out_dir.rmdir()
        except OSError:
            pass


def prepare_dir(out_dir: Path) -> bool:
    """Create ``out_dir`` 0700 (True), or accept an empty directory (made 0700; False)."""
    try:
        out_dir.mkdir(mode=0o700)
    except FileExistsError:
        if not out_dir.is_dir():
            raise ExportError(f"{out_dir} exists and is not a directory") from None
        if any(out_dir.iterdir()):
            raise ExportError(f"{out_dir} exists and is not empty; an export never overwrites anything") from None
        try:
            os.chmod(out_dir, 0o700)
        except OSError as exc:
            raise ExportError(f"cannot use {out_dir}: {exc.strerror}") from None
        if not os.access(out_dir, os.W_OK | os.X_OK):
            raise ExportError(f"{out_dir} is not writable") from None
        return False
    except OSError as exc:
        raise ExportError(f"cannot create {out_dir}: {exc.strerror}") from None
    os.chmod(out_dir, 0o700)  # mkdir's mode is subject to the umask
    return True


def open_new(path: Path, written: list[Path]):
    fd = create_private(path)
    written.append(path)
    return open(fd, "wb", buffering=_BUFFER)


def write_new(path: Path, data: bytes, written: list[Path]) -> None:
    with open_new(path, written) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def reencrypt(store_file: Path, identity, recipient, target: Path, written: list[Path]) -> tuple[str, int]:
    """Decrypt into a pipe, encrypt from it: the plaintext only ever exists in memory."""
    read_fd, write_fd = os.pipe()
    state: dict = {}

    def produce() -> None:
        try:
            with open(store_file, "rb", buffering=_BUFFER) as src, open(write_fd, "wb", buffering=1 << 16) as pipe:
                writer = HashingWriter(pipe)
                pyrage.decrypt_io(src, writer, [identity])
                state["sha256"], state["size"] = writer.hash.hexdigest(), writer.size
        except BaseException as exc:  # reported below; closing the pipe ends the encryption
            state["error"] = exc

    producer = threading.Thread(target=produce, name="export-decrypt", daemon=True)
    producer.start()
    try:
        with open(read_fd, "rb", buffering=1 << 16) as pipe, open_new(target, written) as out:
            pyrage.encrypt_io(pipe, out, [recipient])
            out.flush()
            os.fsync(out.fileno())
    except pyrage.EncryptError as exc:
        raise ExportError(f"cannot re-encrypt the recording: {exc}") from None
    finally:
        producer.join()  # it ends once the pipe is closed, whatever happened
    error = state.get("error")
    if error is not None:
        if isinstance(error, (pyrage.DecryptError, OSError)):
            raise ExportError(f"cannot decrypt {store_file} with this identity, or it is damaged: {error}")
        raise error
    return state["sha256"], state["size"]


_OMITTED = object()


def _manifest(rec: Recording, case_ref: str, entry: dict, store_sha: str, store_size: int, signer: str,
              actor: str, number) -> dict:
    call = rec.call
    active = holds.holds_on([rec.id])
    flags = CallFlag.select().where(CallFlag.call == call.id).order_by(CallFlag.at)
    call_facts = {
        "uuid": call.uuid, "started_at": _iso(call.started_at), "answered_at": _iso(call.answered_at),
        "bridged_at": _iso(call.bridged_at), "ended_at": _iso(call.ended_at),
        "duration_seconds": call.duration_seconds, "wait_seconds": call.wait_seconds,
        "consent": {"mode": call.consent_mode, "outcome": call.outcome, "decided_by": call.decided_by,
                    "prompt_id": call.prompt_id, "prompt_version": call.prompt_version},
        "flags": [{"kind": f.kind, "at": _iso(f.at), "by": f.by} for f in flags],
    }
    if number is not _OMITTED:  # asked for; None: anonymous, or erased after the call records' term
        call_facts["caller_number"] = number
    manifest = {
        "format": FORMAT,
        "case_ref": case_ref,
        "recording": {"id": rec.id, "started_at": _iso(rec.started_at), "sealed_at": _iso(rec.sealed_at),
                      "store_sha256": store_sha, "store_size": store_size},
        "call": call_facts,
        "legal_holds": [{"hold": h.id, "reason": h.reason, "case_ref": h.case_ref, "placed_at": _iso(h.placed_at),
                         "placed_by": h.placed_by} for h in active],
        "files": [entry],
        "exported_by": actor,
        "exported_at": _iso(ledger.utcnow()),
        "exported_on_host": socket.gethostname(),
        "fs_consent_version": __version__,
        "signer": {"algorithm": "ed25519", "public_key": signer},
    }
    manifest["content_sha256"] = content_sha256(manifest)
    return manifest


# --- verification ---------------------------------------------------------------------


@dataclass
class Verification:
    problems: list[str] = field(default_factory=list)  # each starts with the file at fault
    warnings: list[str] = field(default_factory=list)
    case_ref: str | None = None
    signer: str | None = None
    pinned: bool = False
    files: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_export(directory: Path, public_key: str | None = None) -> Verification:
    """Check the signature and every file of an export; name each file that is wrong."""
    result = Verification()
    pinned = parse_public_key(public_key) if public_key else None
    manifest_path, sig_path = directory / MANIFEST, directory / SIGNATURE
    if not directory.is_dir():
        raise ExportError(f"{directory} is not a directory")
    try:
        data = manifest_path.read_bytes()
    except OSError as exc:
        result.problems.append(f"{MANIFEST}: cannot be read ({exc.strerror})")
        return result
    try:
        manifest = json.loads(data)
        if not isinstance(manifest, dict):
            raise ValueError
    except ValueError:
        result.problems.append(f"{MANIFEST}: damaged (not a JSON object)")
        return result
    if canonical(manifest) != data or manifest.get("content_sha256") != content_sha256(manifest):
        result.problems.append(f"{MANIFEST}: damaged or altered (its content does not match its checksum)")
        return result
    result.case_ref = manifest.get("case_ref")
    embedded = (manifest.get("signer") or {}).get("public_key")
    result.signer = embedded
    try:
        raw = sig_path.read_bytes()
        signature = base64.b64decode(raw[:-1] if raw.endswith(b"\n") else raw, validate=True)
        if len(signature) != 64:
            raise ValueError
    except OSError as exc:
        result.problems.append(f"{SIGNATURE}: cannot be read ({exc.strerror})")
        return result
    except (ValueError, binascii.Error):
        result.problems.append(f"{SIGNATURE}: damaged (not a base64 Ed25519 signature)")
        return result
    if pinned is not None:
        result.pinned = True
        if embedded != _public_text(pinned):
            result.problems.append(f"{MANIFEST}: signed for key {embedded}, not the pinned key {_public_text(pinned)}")
            return result
        key = pinned
    else:
        try:
            key = parse_public_key(embedded or "")
        except ExportError:
            result.problems.append(f"{MANIFEST}: names no valid signer public key")
            return result
        result.warnings.append(f"verified against the key named in the manifest ({embedded}); pass --public-key "
                               "with the installation's published key to pin it")
    try:
        key.verify(signature, data)
    except InvalidSignature:
        result.problems.append(f"{SIGNATURE}: the signature does not verify (manifest.json is intact, so the "
                               "signature is damaged, or the manifest was re-written without the signing key)")
        return result
    listed = set()
    for entry in manifest.get("files") or []:
        name = str(entry.get("name", ""))
        if not name or "/" in name or name in (".", "..") or name.startswith(".") or name in (MANIFEST, SIGNATURE):
            result.problems.append(f"{MANIFEST}: lists an unsafe file name {name!r}")
            continue
        listed.add(name)
        result.files.append(name)
        try:
            sha, size = sha256_file(directory / name)
        except FileNotFoundError:
            result.problems.append(f"{name}: missing")
            continue
        except OSError as exc:
            result.problems.append(f"{name}: cannot be read ({exc.strerror})")
            continue
        if sha != entry.get("sha256") or size != entry.get("size"):
            result.problems.append(f"{name}: damaged or altered (sha256 {sha}, the manifest says {entry.get('sha256')})")
    for extra in sorted(p.name for p in directory.iterdir()):
        if extra not in listed and extra not in (MANIFEST, SIGNATURE):
            result.warnings.append(f"{extra}: not part of the export (not in the manifest)")
    return result
