"""Reading any byte range of an age file's plaintext, chunk by chunk, in memory only.

age (age-encryption.org/v1) encrypts its payload with STREAM: a 16-byte nonce after the
header, a payload key ``HKDF-SHA256(file key, salt=nonce, info="payload")``, then chunks
of 64 KiB of plaintext, each sealed with ChaCha20-Poly1305 (+16 bytes of tag) under the
nonce ``counter (11 bytes, big-endian) || last (1 byte)``. So the plaintext's length
follows from the file's, and a range needs only the chunks it touches: the listening room
answers a browser's ``Range`` request by opening those chunks, never writing plaintext
anywhere. Every chunk is authenticated; the last one carries the "last" flag, so a file
cut at a chunk boundary fails where the cut is, never plays short without an error.

The file key comes from the header (``age_header.HeaderOpener``, which also checks the
header's MAC).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .age_header import AgeHeader, AgeHeaderError, HeaderOpener

CHUNK = 64 * 1024
TAG = 16
SEALED_CHUNK = CHUNK + TAG
NONCE = 16


class AgeStreamError(AgeHeaderError):
    """The payload cannot be read: cut short, altered, or not an age STREAM."""


def plaintext_size(payload_size: int) -> int:
    """The plaintext length of a payload of ``payload_size`` bytes (nonce excluded)."""
    full, rest = divmod(payload_size, SEALED_CHUNK)
    if rest == 0:
        if full == 0:
            raise AgeStreamError("the payload is empty (age always has at least one chunk)")
        return full * CHUNK
    if rest < TAG:
        raise AgeStreamError("the payload ends inside a chunk's tag (cut short)")
    return full * CHUNK + rest - TAG


class AgeReader:
    """The plaintext of one age file, opened from a file descriptor the caller owns.

    ``fd`` is read with ``os.pread`` only: several readers may share it, and a checked
    file (its sha256 compared with the ledger) stays the file served.
    """

    def __init__(self, fd: int, header: AgeHeader, opener: HeaderOpener):
        self._fd = fd
        file_key = opener.file_key(header)
        nonce = os.pread(fd, NONCE, header.payload_offset)
        if len(nonce) != NONCE:
            raise AgeStreamError("the file ends before the payload's nonce")
        key = HKDF(hashes.SHA256(), 32, nonce, b"payload").derive(file_key)
        self._aead = ChaCha20Poly1305(key)
        self._start = header.payload_offset + NONCE
        payload = os.fstat(fd).st_size - self._start
        self.size = plaintext_size(payload)
        self._chunks = -(-self.size // CHUNK) or 1

    def chunk(self, index: int) -> bytes:
        """The plaintext of chunk ``index`` (0-based), authenticated."""
        if not 0 <= index < self._chunks:
            raise IndexError(index)
        sealed = os.pread(self._fd, SEALED_CHUNK, self._start + index * SEALED_CHUNK)
        last = index == self._chunks - 1
        nonce = index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")
        try:
            plain = self._aead.decrypt(nonce, sealed, None)
        except InvalidTag:
            raise AgeStreamError(f"chunk {index} does not open (the file was altered or cut short)") from None
        if not last and len(plain) != CHUNK:
            raise AgeStreamError(f"chunk {index} is short")
        if last and not plain and index > 0:
            raise AgeStreamError("the last chunk is empty (not canonical age)")
        return plain

    def read_range(self, start: int, end: int) -> Iterator[bytes]:
        """The plaintext bytes ``start`` to ``end`` inclusive, as one piece per chunk touched."""
        if not 0 <= start <= end < self.size:
            raise ValueError(f"range {start}-{end} is outside 0-{self.size - 1}")
        first, last = start // CHUNK, end // CHUNK
        for index in range(first, last + 1):
            plain = self.chunk(index)
            base = index * CHUNK
            yield plain[max(start - base, 0): end - base + 1]
