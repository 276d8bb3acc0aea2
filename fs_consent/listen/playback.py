"""A recording's audio for the browser: decrypted on the fly into the response, audited.

The ``.age`` file is opened once per request; its sha256 is checked against the ledger
through that same descriptor (a file swapped for another recording sealed to the same
key is refused), then ``secure/age_stream.AgeReader`` opens only the 64 KiB chunks the
asked-for byte range touches. Nothing is decrypted to a file, nothing is cached: the
plaintext exists only in the chunk being sent.

Each response is audited twice: ``listen.play`` before its first byte (who, which
recording, the range asked for: a crash mid-stream still leaves the trace) and
``listen.play.end`` when it closes (bytes served, their seconds of audio, whether the
range was sent whole or the browser stopped reading). A browser's audio element makes
one or more range requests per playback (and one per seek); together they say how
much was heard.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import gevent

from ..secure.age_header import AgeHeaderError, HeaderOpener, parse_age_header
from ..secure.age_stream import AgeReader
from ..store import audit_actions, ledger

RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class Unplayable(Exception):
    """The file is missing, damaged or does not match the ledger; the message names the recording only."""


class BadRange(Exception):
    """416: the range cannot be satisfied (``size``: the plaintext's, for Content-Range)."""

    size = 0


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` inclusive for one ``bytes=`` range; None for the whole (no or several ranges)."""
    if not header:
        return None
    match = RANGE.fullmatch(header.strip())
    if match is None:
        return None  # several ranges or another unit: send it whole (RFC 9110 allows ignoring Range)
    first, last = match.groups()
    if first == "" and last == "":
        raise BadRange(header)
    if first == "":  # the last N bytes
        length = int(last)
        if length == 0:
            raise BadRange(header)
        return max(size - length, 0), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        raise BadRange(header)
    return start, end


def _sha256_fd(fd: int) -> str:
    digest, offset = hashlib.sha256(), 0
    while chunk := os.pread(fd, 1 << 20, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def byte_rate(first_chunk: bytes) -> int | None:
    """The WAV's bytes per second (its fmt chunk), for the seconds an audit entry names."""
    if first_chunk[:4] != b"RIFF" or first_chunk[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(first_chunk):
        kind, size = first_chunk[pos:pos + 4], struct.unpack_from("<I", first_chunk, pos + 4)[0]
        if kind == b"fmt " and pos + 20 <= len(first_chunk):
            rate = struct.unpack_from("<I", first_chunk, pos + 16)[0]
            return rate or None
        pos += 8 + size + (size & 1)
    return None


@dataclass
class Playback:
    """One response's worth of audio: the range, the body, and its audit when it closes."""

    account: str
    recording_id: str
    reader: AgeReader
    fd: int
    start: int
    end: int
    partial: bool
    rate: int | None
    address: str | None
    id: str = field(default_factory=lambda: secrets.token_hex(8))
    sent: int = 0
    _closed: bool = False

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def seconds(self, count: int) -> float | None:
        return round(count / self.rate, 3) if self.rate else None

    def audit_start(self) -> None:
        ledger.append_audit(self.account, audit_actions.LISTEN_PLAY, "recording", self.recording_id,
                            playback=self.id, range=f"{self.start}-{self.end}", size=self.reader.size,
                            seconds_from=self.seconds(self.start), address=self.address)

    def body(self) -> Iterator[bytes]:
        try:
            for piece in self.reader.read_range(self.start, self.end):
                yield piece
                self.sent += len(piece)  # resumed: the server wrote the piece
        except AgeHeaderError:
            self.close(error="the recording could not be decrypted to the end (damaged?)")
            raise

    def close(self, error: str | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            os.close(self.fd)
        except OSError:
            pass
        detail = dict(playback=self.id, range=f"{self.start}-{self.end}", bytes=self.sent,
                      seconds=self.seconds(self.sent), complete=self.sent == self.length)
        if error:
            detail["error"] = error
        ledger.append_audit(self.account, audit_actions.LISTEN_PLAY_END, "recording", self.recording_id, **detail)


def open_playback(account: str, recording_id: str, expected_sha256: str | None, path: Path, opener: HeaderOpener,
                  range_header: str | None, *, address: str | None) -> Playback:
    """Open, check and position one response; raises Unplayable or BadRange (the fd closed then)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        raise Unplayable(f"recording {recording_id}: the sealed file cannot be read") from None
    try:
        # the file's hash off the event loop (hashlib lets go of the GIL): other listeners go on
        digest = gevent.get_hub().threadpool.apply(_sha256_fd, (fd,))
        if expected_sha256 and digest != expected_sha256:
            raise Unplayable(f"recording {recording_id}: the sealed file does not match the ledger")
        try:
            reader = AgeReader(fd, parse_age_header(os.pread(fd, 1 << 16, 0)), opener)
            first = reader.chunk(0)
        except AgeHeaderError:
            raise Unplayable(f"recording {recording_id}: the sealed file does not open with this identity") from None
        if reader.size == 0:
            raise Unplayable(f"recording {recording_id}: the recording is empty")
        try:
            wanted = parse_range(range_header, reader.size)
        except BadRange as exc:
            exc.size = reader.size
            raise
        start, end = wanted if wanted else (0, reader.size - 1)
        return Playback(account, recording_id, reader, fd, start, end, wanted is not None, byte_rate(first),
                        address)
    except BaseException:
        os.close(fd)
        raise
