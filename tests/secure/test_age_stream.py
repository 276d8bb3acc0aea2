"""Any byte range of an age file's plaintext, chunk by chunk (what the listening room serves)."""

from __future__ import annotations

import os

import pyrage
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fs_consent.secure.age_header import HeaderOpener, parse_age_header
from fs_consent.secure.age_stream import CHUNK, AgeReader, AgeStreamError

IDENTITY = pyrage.x25519.Identity.generate()


def reader_for(tmp_path, ciphertext: bytes, identity=IDENTITY) -> AgeReader:
    path = tmp_path / "r.age"
    path.write_bytes(ciphertext)
    fd = os.open(path, os.O_RDONLY)
    return AgeReader(fd, parse_age_header(os.pread(fd, 1 << 16, 0)), HeaderOpener(str(identity)))


@pytest.mark.parametrize("size", [1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 77])
def test_every_range_matches_the_plaintext(tmp_path, size):
    data = os.urandom(size)
    reader = reader_for(tmp_path, pyrage.encrypt(data, [IDENTITY.to_public()]))
    assert reader.size == size
    assert b"".join(reader.read_range(0, size - 1)) == data
    for start, end in [(0, 0), (size // 3, size - 1), (size - 1, size - 1),
                       (max(0, CHUNK - 2), min(size - 1, CHUNK + 2))]:
        if start > end:
            continue
        assert b"".join(reader.read_range(start, end)) == data[start:end + 1]


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2 * CHUNK + 10), st.integers(0, 2 * CHUNK + 10))
def test_random_ranges(tmp_path_factory, a, b):
    data = bytes(range(256)) * ((2 * CHUNK + 11) // 256 + 1)
    data = data[:2 * CHUNK + 11]
    reader = reader_for(tmp_path_factory.mktemp("r"), _CIPHERTEXT.setdefault("c", pyrage.encrypt(
        data, [IDENTITY.to_public()])))
    start, end = min(a, b), max(a, b)
    assert b"".join(reader.read_range(start, end)) == data[start:end + 1]


_CIPHERTEXT: dict[str, bytes] = {}


def test_an_altered_chunk_or_a_cut_file_fails_where_it_is(tmp_path):
    data = os.urandom(3 * CHUNK)
    ciphertext = bytearray(pyrage.encrypt(data, [IDENTITY.to_public()]))
    ciphertext[-100] ^= 1
    reader = reader_for(tmp_path, bytes(ciphertext))
    assert b"".join(reader.read_range(0, CHUNK - 1)) == data[:CHUNK]
    with pytest.raises(AgeStreamError, match="chunk 2"):
        b"".join(reader.read_range(0, 3 * CHUNK - 1))
    with pytest.raises(ValueError):
        list(reader.read_range(0, 3 * CHUNK))
    whole = pyrage.encrypt(data, [IDENTITY.to_public()])
    cut = reader_for(tmp_path, whole[:-(CHUNK + 16)])  # the last chunk gone: chunk 1 is not "last"
    with pytest.raises(AgeStreamError, match="chunk 1"):
        cut.chunk(1)


def test_another_identity_does_not_open_it(tmp_path):
    ciphertext = pyrage.encrypt(b"x" * 100, [IDENTITY.to_public()])
    with pytest.raises(Exception, match="no stanza opens"):
        reader_for(tmp_path, ciphertext, pyrage.x25519.Identity.generate())
