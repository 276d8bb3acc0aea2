"""The plaintext spool: permissions, path safety, crash recovery with a real vault."""

import logging
import os
import stat
import uuid

import pytest

from fs_consent.secure import keys, spool
from fs_consent.secure.spool import SpoolError, prepare_spool, recording_path, recover
from fs_consent.secure.vault import Vault, VaultError


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_prepare_spool_creates_it_private(tmp_path):
    path = tmp_path / "data" / "spool"
    prepare_spool(path)
    assert path.is_dir() and mode(path) == 0o700
    prepare_spool(path)  # idempotent


@pytest.mark.parametrize("ok_mode", [0o700, 0o770, 0o750])
def test_prepare_spool_accepts_a_dir_shared_with_a_group(tmp_path, ok_mode):
    path = tmp_path / "spool"
    path.mkdir()
    os.chmod(path, ok_mode)
    prepare_spool(path)
    assert mode(path) == ok_mode  # left as the admin set it


@pytest.mark.parametrize("bad_mode", [0o775, 0o777, 0o701, 0o1777])
def test_prepare_spool_refuses_world_access(tmp_path, bad_mode):
    path = tmp_path / "spool"
    path.mkdir()
    os.chmod(path, bad_mode)
    with pytest.raises(SpoolError) as err:
        prepare_spool(path)
    assert str(path) in str(err.value) and "accessible by others" in str(err.value)
    assert f"chmod o-rwx {path}" in str(err.value)


def test_prepare_spool_refuses_a_file(tmp_path):
    (tmp_path / "spool").write_text("")
    with pytest.raises(SpoolError, match="not a directory"):
        prepare_spool(tmp_path / "spool")


def test_recording_path_accepts_only_uuid4_hex(tmp_path):
    rid = uuid.uuid4().hex
    assert recording_path(tmp_path, rid) == tmp_path / f"{rid}.wav"
    for bad in ["../../etc/passwd", f"../{rid}", rid + "/x", rid.upper(), str(uuid.UUID(rid)),
                uuid.uuid1().hex, rid[:-1], rid + "0", "", "+31612345678"]:
        with pytest.raises(ValueError):
            recording_path(tmp_path, bad)


@pytest.fixture
def setup(tmp_path):
    keys_dir = tmp_path / "keys"
    keys.ensure_keys(keys_dir)
    spool_dir = tmp_path / "spool"
    prepare_spool(spool_dir)
    vault = Vault(tmp_path / "store", keys.load_recipients(keys_dir), workers=2)
    vault.start()
    yield spool_dir, vault, keys.load_identity(keys_dir)
    vault.stop()


def test_recover_seals_deletes_and_leaves_the_rest(setup, tmp_path, caplog):
    spool_dir, vault, identity = setup
    ids = {name: uuid.uuid4().hex for name in ("held1", "held2", "refused", "withdrawn", "unknown")}
    for name, rid in ids.items():
        recording_path(spool_dir, rid).write_bytes(name.encode() * 1000)
    others = ["+31612345678.wav", "notes.txt", f"{ids['held1']}.wav.part"]
    for name in others:
        (spool_dir / name).write_text("x")
    (spool_dir / "subdir").mkdir()
    link_id = uuid.uuid4().hex
    (spool_dir / f"{link_id}.wav").symlink_to(tmp_path / "elsewhere.wav")
    decisions = {ids["held1"]: "seal", ids["held2"]: "seal"}
    asked = []

    def decide(recording_id):
        asked.append(recording_id)
        return decisions.get(recording_id, "delete")

    with caplog.at_level(logging.DEBUG, logger="fs_consent.secure.spool"):
        report = recover(spool_dir, decide, vault.seal)

    assert sorted(report.sealed) == sorted([ids["held1"], ids["held2"]])
    assert sorted(report.deleted) == sorted([ids["refused"], ids["withdrawn"], ids["unknown"]])
    assert report.failed == {}
    assert sorted(report.unknown) == sorted(others + ["subdir", f"{link_id}.wav"])
    assert link_id not in asked
    assert sorted(p.name for p in spool_dir.iterdir()) == sorted(report.unknown)
    for name in ("held1", "held2"):
        out = tmp_path / f"{name}.wav"
        vault.decrypt_to(ids[name], identity, out)
        assert out.read_bytes() == name.encode() * 1000
    assert sorted(p.name for p in vault.store_dir.iterdir()) == sorted(
        [f"{ids['held1']}.age", f"{ids['held2']}.age"])
    assert "2 sealed, 3 deleted, 0 failed" in report.summary()
    assert "+31612345678" not in caplog.text and "notes" not in caplog.text


def test_recover_keeps_files_it_could_not_settle(setup, caplog):
    spool_dir, vault, _ = setup
    seal_fails, decide_fails, odd_answer = (uuid.uuid4().hex for _ in range(3))
    for rid in (seal_fails, decide_fails, odd_answer):
        recording_path(spool_dir, rid).write_bytes(b"audio")

    def decide(recording_id):
        if recording_id == decide_fails:
            raise RuntimeError("ledger unavailable")
        return "seal" if recording_id == seal_fails else "keep"

    def seal(path, recording_id):
        raise VaultError("store is full")

    report = recover(spool_dir, decide, seal)
    assert report.sealed == [] and report.deleted == []
    assert set(report.failed) == {seal_fails, decide_fails, odd_answer}
    assert "store is full" in report.failed[seal_fails]
    assert "ledger unavailable" in report.failed[decide_fails]
    for rid in (seal_fails, decide_fails, odd_answer):
        assert recording_path(spool_dir, rid).read_bytes() == b"audio"
    assert "store is full" not in caplog.text  # only the exception type is logged


def test_recover_empty_spool(tmp_path):
    prepare_spool(tmp_path / "spool")
    report = recover(tmp_path / "spool", lambda rid: "seal", lambda p, rid: None)
    assert (report.sealed, report.deleted, report.failed, report.unknown) == ([], [], {}, [])


def test_is_recording_id():
    assert spool.is_recording_id(uuid.uuid4().hex)
    assert not spool.is_recording_id(None)


def test_a_wav_is_closed_only_when_its_header_counts_the_whole_file(tmp_path):
    """What recovery asks before sealing: a recorder still writing has not fixed the header."""
    from fs_consent.emulator.wav import WavRecording
    from fs_consent.secure.spool import wav_closed

    path = tmp_path / "r.wav"
    recording = WavRecording(str(path), stereo=True, bridge_req=False, now=0.0)
    recording.update(0.5)  # audio written, the header still says 0 bytes
    assert path.stat().st_size > 44 and not wav_closed(path)
    recording.close(1.0)
    assert wav_closed(path)
    path.write_bytes(path.read_bytes()[:-2])  # cut short: the header counts more than is there
    assert not wav_closed(path)
    (tmp_path / "x.wav").write_bytes(b"RIFF....WAVE")
    assert not wav_closed(tmp_path / "x.wav") and not wav_closed(tmp_path / "missing.wav")
