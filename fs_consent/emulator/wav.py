"""Real WAV files for ``record_session``: 8 kHz 16-bit PCM, mono or stereo.

Audio is synthetic: the caller is a 400 Hz tone, the agent an 800 Hz tone
(both divide 8000, so a one-second buffer repeats seamlessly).  Stereo puts
the caller left and the agent right, as ``RECORD_STEREO=true`` does; mono
mixes them.  Frames are computed from elapsed time and appended in coarse
chunks whenever the recorded situation changes, so an open recording costs
no timer, only its file descriptor.  Like FreeSWITCH, the file stays open
while recording: a file deleted meanwhile stays deleted.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from array import array

RATE = 8000


def _tone(freq: int, *, amplitude: int) -> array:
    return array("h", (int(amplitude * math.sin(2 * math.pi * freq * i / RATE)) for i in range(RATE)))


_CALLER = _tone(400, amplitude=8000)
_AGENT = _tone(800, amplitude=8000)


def _second(caller: bool, agent: bool, channels: int) -> bytes:
    """One second of audio for the given talkers (shared by all recordings)."""
    left = _CALLER if caller else array("h", bytes(2 * RATE))
    right = _AGENT if agent else array("h", bytes(2 * RATE))
    if channels == 1:
        samples = array("h", ((a + b) // 2 for a, b in zip(left, right)))
    else:
        samples = array("h", (s for pair in zip(left, right) for s in pair))
    return samples.tobytes()


_SECONDS = {
    (caller, agent, channels): _second(caller, agent, channels)
    for caller in (False, True)
    for agent in (False, True)
    for channels in (1, 2)
}


def _header(channels: int, data_bytes: int) -> bytes:
    block = 2 * channels
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", 36 + data_bytes, b"WAVE", b"fmt ", 16, 1, channels,
        RATE, RATE * block, block, 16, b"data", data_bytes,
    )


class WavRecording:
    """One open ``record_session`` file.

    ``bridge_req`` (``RECORD_BRIDGE_REQ=true``): frames only while bridged.
    While masked, frames are written as silence.
    """

    def __init__(self, path: str, *, stereo: bool, bridge_req: bool, now: float) -> None:
        self.path = path
        self.channels = 2 if stereo else 1
        self.bridge_req = bridge_req
        self.frames = 0
        self.masked_seconds = 0.0
        self.size = 0
        self._bridged = False
        self._masked = False
        self._since = now
        self._file = open(path, "wb", buffering=0)  # noqa: SIM115 - open until close()
        self._file.write(_header(self.channels, 0))

    def update(self, now: float, *, bridged: bool | None = None, masked: bool | None = None) -> None:
        """Write the audio since the last update, then take the new situation."""
        self._write_until(now)
        if bridged is not None:
            self._bridged = bridged
        if masked is not None:
            self._masked = masked

    def close(self, now: float) -> None:
        """Write the rest and fix the header; the file is complete on return.

        No fsync, as FreeSWITCH's own close does none: what is written is in the page cache,
        which every process reads. (An fsync here ran on the emulator's event loop, so every
        call the emulator carried waited for the disk, and for the app's own fsyncs.)"""
        self._write_until(now)
        self._file.seek(0)
        self._file.write(_header(self.channels, self.frames * 2 * self.channels))
        self.size = os.fstat(self._file.fileno()).st_size
        self._file.close()

    def _write_until(self, now: float) -> None:
        start, self._since = self._since, now
        if self.bridge_req and not self._bridged:
            return
        count = round(now * RATE) - round(start * RATE)
        if count <= 0:
            return
        if self._masked:
            self.masked_seconds += count / RATE
        second = _SECONDS[(not self._masked, self._bridged and not self._masked, self.channels)]
        block = 2 * self.channels
        offset = self.frames % RATE
        remaining = count
        while remaining:
            take = min(remaining, RATE - offset)
            self._file.write(second[offset * block : (offset + take) * block])
            remaining -= take
            offset = 0
        self.frames += count


def sha256_of(path: str) -> str | None:
    """The file's SHA-256, or None when it no longer exists."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 16), b""):
                digest.update(chunk)
    except FileNotFoundError:
        return None
    return digest.hexdigest()
