"""Reading an age file's header (age-encryption.org/v1) without the payload: its stanzas,
and whether one opens (X25519 unwrap and header MAC) with a given identity. ``compliance``
uses it to show every stored recording is sealed to a configured recipient."""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_AGE_MAGIC = b"age-encryption.org/v1\n"
_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


class AgeHeaderError(Exception):
    pass


def _b64(text: bytes) -> bytes:
    """age's base64: standard alphabet, no padding (canonical)."""
    try:
        return base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise AgeHeaderError("bad base64 in the header") from None


@dataclass(frozen=True)
class AgeHeader:
    stanzas: list  # (type, [args], body bytes)
    mac: bytes
    mac_input: bytes  # the header up to and including "---"
    payload_offset: int = 0  # where the payload (its nonce, then the STREAM chunks) starts


def read_age_header(path: Path, limit: int = 1 << 16) -> AgeHeader:
    """Parse the header of an age v1 file (reads only the header)."""
    with open(path, "rb") as f:
        return parse_age_header(f.read(limit))


def parse_age_header(data: bytes) -> AgeHeader:
    """Parse the header at the start of ``data`` (the file's first bytes; the payload may follow)."""
    if not data.startswith(_AGE_MAGIC):
        raise AgeHeaderError("not an age v1 file (no age-encryption.org/v1 header)")
    lines = data[len(_AGE_MAGIC):].split(b"\n")
    pos, stanzas, i = len(_AGE_MAGIC), [], 0
    while i < len(lines) - 1:  # the last piece has no newline: payload or a cut
        line = lines[i]
        if line.startswith(b"---"):
            if not line.startswith(b"--- "):
                raise AgeHeaderError("malformed header MAC line")
            return AgeHeader(stanzas, _b64(line[4:]), data[:pos + 3], pos + len(line) + 1)
        if not line.startswith(b"-> "):
            raise AgeHeaderError("malformed header line")
        args = line[3:].split(b" ")
        pos += len(line) + 1
        body = b""
        while True:
            i += 1
            if i >= len(lines) - 1:
                raise AgeHeaderError("header is cut off")
            chunk = lines[i]
            pos += len(chunk) + 1
            body += chunk
            if len(chunk) < 64:
                break
        stanzas.append((args[0].decode("ascii", "replace"), args[1:], _b64(body)))
        i += 1
    raise AgeHeaderError("no end of header (--- line) found")


def _bech32_decode(text: str, hrp: str) -> bytes:
    text = text.strip().lower()
    sep = text.rfind("1")
    if text[:sep] != hrp or sep < 1 or any(c not in _BECH32 for c in text[sep + 1:]):
        raise ValueError(f"not a bech32 {hrp} string")
    data = [_BECH32.index(c) for c in text[sep + 1:]]
    chk = 1
    for value in [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp] + data:
        top, chk = chk >> 25, ((chk & 0x1FFFFFF) << 5) ^ value
        for i, gen in enumerate((0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)):
            chk ^= gen if (top >> i) & 1 else 0
    if chk != 1:
        raise ValueError("bech32 checksum mismatch")
    acc, bits, out = 0, 0, bytearray()
    for value in data[:-6]:
        acc, bits = (acc << 5) | value, bits + 5
        if bits >= 8:
            bits -= 8
            out.append((acc >> bits) & 0xFF)
    return bytes(out)


class HeaderOpener:
    """Opens age headers with one X25519 identity: unwraps the file key, checks the MAC."""

    def __init__(self, identity_text: str):
        self._key = X25519PrivateKey.from_private_bytes(_bech32_decode(identity_text, "age-secret-key-"))
        self._public = self._key.public_key().public_bytes_raw()

    def file_key(self, header: AgeHeader) -> bytes:
        for kind, args, body in header.stanzas:
            if kind != "X25519" or len(args) != 1 or len(body) != 32:
                continue
            share = _b64(args[0])
            if len(share) != 32:
                continue
            shared = self._key.exchange(X25519PublicKey.from_public_bytes(share))
            wrap = HKDF(hashes.SHA256(), 32, share + self._public, b"age-encryption.org/v1/X25519").derive(shared)
            try:
                file_key = ChaCha20Poly1305(wrap).decrypt(b"\x00" * 12, body, None)
            except InvalidTag:
                continue  # another recipient's stanza
            mac_key = HKDF(hashes.SHA256(), 32, b"", b"header").derive(file_key)
            if not hmac.compare_digest(hmac.new(mac_key, header.mac_input, sha256).digest(), header.mac):
                raise AgeHeaderError("the header MAC does not match (the header was altered)")
            return file_key
        raise AgeHeaderError("no stanza opens with the identity (not sealed to this recipient)")
