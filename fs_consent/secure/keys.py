"""Key files: the age identity and recipients, and the personal-field key.

Layout of the keys directory (0700)::

    identity.txt    0600  age X25519 identity, same text format as ``age-keygen``
    recipients.txt  0644  age1... public keys, one a line; every recording is sealed to all
    field.key       0600  64 random bytes, base64: HMAC + AEAD keys for personal fields

The server needs only ``recipients.txt`` to record. ``identity.txt`` may be absent: a
write-only server keeps its identity offline, and nothing here generates one behind
its back (see :func:`init_keys`).
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyrage
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .files import check_private, create_private, fsync_dir

IDENTITY_FILE = "identity.txt"
RECIPIENTS_FILE = "recipients.txt"
FIELD_KEY_FILE = "field.key"
FIELD_KEY_BYTES = 64
SIGNING_KEY_FILE = "signing.key"  # Ed25519 (PKCS#8 PEM): signs export manifests and audit checkpoints

_RECIPIENTS_HEADER = (
    "# age recipients: every recording is encrypted to each key listed here, one a line.\n"
    "# Add an auditor's or an offline key with:  age-keygen -y their-identity.txt >> recipients.txt\n"
)


class KeyFileError(Exception):
    """A key file is missing, malformed or too open; the message names the file."""


@dataclass(frozen=True)
class KeysCreated:
    created: tuple[Path, ...]  # files written (with force: also the rewritten ones)
    public_key: str | None  # of the identity now in identity.txt; None on a write-only server
    replaced_identity: Path | None = None  # where a forced init moved the previous identity

    def describe(self) -> list[str]:
        """One line per file written, for the operator; [] when nothing was."""
        lines = []
        if self.replaced_identity:
            lines.append(
                f"kept the previous identity as {self.replaced_identity}: recordings sealed "
                "before now need it; move it offline"
            )
        for path in self.created:
            if path.name == IDENTITY_FILE:
                lines.append(
                    f"generated a new age identity at {path} (public key {self.public_key}); "
                    "back it up or move it offline: recordings cannot be decrypted without it"
                )
            elif path.name == RECIPIENTS_FILE:
                lines.append(f"wrote {path}; it lists the public key {self.public_key}")
            elif path.name == SIGNING_KEY_FILE:
                public = signing_public_key(load_signing_key(path.parent))
                lines.append(
                    f"generated the installation signing key at {path} (public key {public}); "
                    "give the public key to whoever must verify exports"
                )
            else:
                lines.append(
                    f"generated the personal-field key at {path}; back it up: protected "
                    "database fields cannot be read or looked up without it"
                )
        return lines


def load_recipients(keys_dir: Path) -> list[str]:
    """The validated recipients in ``recipients.txt``; [] if the file is missing or lists none.

    The file is public but must not be writable by group/others: whoever can add a line
    can read every later recording.
    """
    path = keys_dir / RECIPIENTS_FILE
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path} cannot be read: {exc}") from None
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise KeyFileError(
            f"{path} is writable by group/others (mode {mode:04o}); run: chmod 644 {path}"
        )
    if st.st_uid not in (os.geteuid(), 0):
        raise KeyFileError(f"{path} is owned by uid {st.st_uid}, neither this user nor root")
    recipients: list[str] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            pyrage.x25519.Recipient.from_str(line)
        except pyrage.RecipientError:
            # The line itself is not echoed: a pasted secret key must not end up in a log.
            raise KeyFileError(
                f"{path}: line {lineno} is not an age X25519 recipient (expected age1...)"
            ) from None
        if line not in recipients:
            recipients.append(line)
    return recipients


def load_identity(keys_dir: Path, path: Path | None = None) -> pyrage.x25519.Identity:
    """The identity in ``identity.txt`` (or ``path``), permission-checked.

    Accepts ``age-keygen`` output: comment lines and exactly one AGE-SECRET-KEY-1 line.
    """
    path = path if path is not None else keys_dir / IDENTITY_FILE
    if not path.exists():
        raise KeyFileError(
            f"no age identity at {path} (on a write-only server it is kept offline; "
            "pass its path)"
        )
    check_private(path, error=KeyFileError)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path} cannot be read: {exc}") from None
    keys = [
        (n, line.strip())
        for n, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if len(keys) != 1:
        raise KeyFileError(f"{path} must hold exactly one age identity, found {len(keys)}")
    lineno, key = keys[0]
    try:
        return pyrage.x25519.Identity.from_str(key)
    except pyrage.IdentityError:
        raise KeyFileError(
            f"{path}: line {lineno} is not an age X25519 identity (expected AGE-SECRET-KEY-1...)"
        ) from None


def load_field_key(keys_dir: Path) -> bytes:
    """The 64-byte personal-field key from ``field.key``, permission-checked."""
    path = keys_dir / FIELD_KEY_FILE
    check_private(path, error=KeyFileError)
    try:
        key = base64.b64decode(path.read_text(encoding="ascii").strip(), validate=True)
    except (OSError, UnicodeDecodeError, binascii.Error):
        raise KeyFileError(f"{path} is not valid base64") from None
    if len(key) != FIELD_KEY_BYTES:
        raise KeyFileError(f"{path} holds {len(key)} bytes; expected {FIELD_KEY_BYTES}")
    return key


def init_keys(keys_dir: Path, *, force: bool = False) -> KeysCreated:
    """Create the key files that are missing; never overwrite one unless ``force``.

    Without ``force``:

    * a new identity is generated only when there is neither ``identity.txt`` nor a
      ``recipients.txt`` that lists a recipient (a write-only server keeps its identity
      offline and must not grow a local one);
    * ``recipients.txt`` is written from the identity when it is missing;
    * a ``recipients.txt`` that exists but lists no recipient is an error when there is
      no identity either (fs-consent could not seal anything).

    ``force`` rotates the age identity: the previous ``identity.txt`` is not destroyed
    but renamed to ``identity.txt.replaced-<UTC time>`` (recordings sealed to it stay
    readable; move it offline), and in ``recipients.txt`` the previous public key is
    replaced by the new one (or, with no previous identity, the new one is added) while
    other recipients are kept. ``field.key`` is never
    replaced, even with ``force``: every protected database field depends on it.
    """
    _ensure_dir(keys_dir)
    identity_path = keys_dir / IDENTITY_FILE
    recipients_path = keys_dir / RECIPIENTS_FILE
    field_path = keys_dir / FIELD_KEY_FILE
    created: list[Path] = []
    replaced: Path | None = None

    old_identity = load_identity(keys_dir) if identity_path.exists() else None
    recipients = load_recipients(keys_dir)
    public_key = str(old_identity.to_public()) if old_identity else None

    if old_identity is None and not recipients and recipients_path.exists() and not force:
        raise KeyFileError(
            f"{recipients_path} lists no recipient and there is no identity; add an "
            "age1... line, or remove the file to generate a key pair"
        )
    if force or (old_identity is None and not recipients):
        identity = pyrage.x25519.Identity.generate()
        public_key = str(identity.to_public())
        if old_identity is not None:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            replaced = identity_path.with_name(f"{IDENTITY_FILE}.replaced-{stamp}")
            try:
                os.link(identity_path, replaced)
            except FileExistsError:
                raise KeyFileError(f"{replaced} already exists; try again in a second") from None
        _write_file(identity_path, _identity_text(identity), 0o600, replace=force)
        created.append(identity_path)
        if recipients_path.exists():
            old_public = str(old_identity.to_public()) if old_identity else None
            text = _swap_recipient(recipients_path.read_text(encoding="utf-8"), old_public, public_key)
            _write_file(recipients_path, text, 0o644, replace=True)
        else:
            _write_file(recipients_path, _RECIPIENTS_HEADER + f"{public_key}\n", 0o644)
        created.append(recipients_path)
    elif not recipients_path.exists():
        _write_file(recipients_path, _RECIPIENTS_HEADER + f"{public_key}\n", 0o644)
        created.append(recipients_path)

    if not field_path.exists():
        key = base64.b64encode(secrets.token_bytes(FIELD_KEY_BYTES)).decode("ascii")
        _write_file(field_path, key + "\n", 0o600)
        created.append(field_path)
    created += _ensure_signing_key(keys_dir)
    return KeysCreated(tuple(created), public_key, replaced)


def _ensure_signing_key(keys_dir: Path) -> list[Path]:
    path = keys_dir / SIGNING_KEY_FILE
    if path.exists():
        return []
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write_file(path, pem.decode("ascii"), 0o600)
    return [path]


def load_signing_key(keys_dir: Path) -> Ed25519PrivateKey:
    """The installation's Ed25519 key, permission-checked."""
    path = keys_dir / SIGNING_KEY_FILE
    check_private(path, error=KeyFileError)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError):
        raise KeyFileError(f"{path} is not a PEM Ed25519 private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 key")
    return key


def signing_public_key(key: Ed25519PrivateKey) -> str:
    """The public half as ``ed25519:<base64>``, for the police and auditors to pin."""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + base64.b64encode(raw).decode("ascii")


def ensure_keys(keys_dir: Path) -> list[str]:
    """First start: create whatever is missing; return the messages to announce once.

    Unlike ``keys init``, a recipients file that lists nobody is not fatal here: the
    server must still answer calls (and records nothing), so only the field key is made.
    """
    recipients_path = keys_dir / RECIPIENTS_FILE
    if (recipients_path.exists() and not (keys_dir / IDENTITY_FILE).exists()
            and not load_recipients(keys_dir)):
        _ensure_dir(keys_dir)
        field_path = keys_dir / FIELD_KEY_FILE
        created = []
        if not field_path.exists():
            key = base64.b64encode(secrets.token_bytes(FIELD_KEY_BYTES)).decode("ascii")
            _write_file(field_path, key + "\n", 0o600)
            created.append(field_path)
        return KeysCreated(tuple(created + _ensure_signing_key(keys_dir)), None, None).describe()
    return init_keys(keys_dir).describe()


def _identity_text(identity: pyrage.x25519.Identity) -> str:
    created = datetime.now().astimezone().isoformat(timespec="seconds")
    return f"# created: {created}\n# public key: {identity.to_public()}\n{identity}\n"


def _swap_recipient(text: str, old: str | None, new: str) -> str:
    """Replace the line holding ``old`` by ``new`` (or append ``new``), keeping the rest."""
    lines = text.splitlines()
    if old is not None and old in (line.strip() for line in lines):
        lines = [new if line.strip() == old else line for line in lines]
    else:
        lines.append(new)
    return "\n".join(lines) + "\n"


def _ensure_dir(keys_dir: Path) -> None:
    if not keys_dir.exists():
        keys_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # the data dir, if keys come first
        keys_dir.mkdir(mode=0o700)
        os.chmod(keys_dir, 0o700)  # mkdir's mode is subject to the umask
    elif not keys_dir.is_dir():
        raise KeyFileError(f"{keys_dir} is not a directory")


def _write_file(path: Path, text: str, mode: int, *, replace: bool = False) -> None:
    """Write durably via a temp file; without ``replace``, fail if ``path`` exists."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = create_private(tmp)
    try:
        with open(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), mode)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise KeyFileError(f"{path} already exists; not overwriting it") from None
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
