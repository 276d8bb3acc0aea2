"""Sealing and opening recordings: real worker processes, real files, the real age CLI."""

import hashlib
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import gevent
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fs_consent.secure import keys
from fs_consent.secure.vault import DecryptError, Vault, VaultError, seal_file


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def new_id() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def keys_dir(tmp_path):
    path = tmp_path / "keys"
    keys.ensure_keys(path)
    return path


@pytest.fixture
def recipients(keys_dir):
    return keys.load_recipients(keys_dir)


@pytest.fixture
def identity(keys_dir):
    return keys.load_identity(keys_dir)


@pytest.fixture
def spool(tmp_path):
    path = tmp_path / "spool"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def vault(tmp_path, recipients):
    v = Vault(tmp_path / "store", recipients, workers=2)
    v.start()
    yield v
    v.stop()


def plaintext(spool: Path, size: int, data: bytes | None = None) -> tuple[Path, str, bytes]:
    """A fake recording in the spool: (path, recording id, content)."""
    recording_id = new_id()
    data = os.urandom(size) if data is None else data
    path = spool / f"{recording_id}.wav"
    path.write_bytes(data)
    return path, recording_id, data


def age_decrypt(keys_dir: Path, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["age", "-d", "-i", str(keys_dir / keys.IDENTITY_FILE), str(path)],
                          capture_output=True)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith((".tmp", ".part")))


# --- sealing ------------------------------------------------------------------------


def test_sealed_recording_opens_with_the_age_cli(vault, spool, keys_dir):
    path, rid, data = plaintext(spool, 300_000)
    sealed = vault.seal(path, rid)
    assert sealed.path == vault.path_for(rid) == vault.store_dir / f"{rid}.age"
    assert not path.exists() and list(spool.iterdir()) == []
    ciphertext = sealed.path.read_bytes()
    assert sealed.size == len(ciphertext) and sealed.sha256 == sha256(ciphertext)
    assert ciphertext.startswith(b"age-encryption.org/v1\n")
    assert stat.S_IMODE(sealed.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(vault.store_dir.stat().st_mode) == 0o700
    result = age_decrypt(keys_dir, sealed.path)
    assert result.returncode == 0, result.stderr
    assert sha256(result.stdout) == sha256(data)
    assert leftovers(vault.store_dir) == []


def test_age_cli_file_opens_with_decrypt_to(vault, tmp_path, recipients, identity):
    data = os.urandom(200_000)
    (tmp_path / "in.wav").write_bytes(data)
    encrypted = tmp_path / "by-cli.age"
    subprocess.run(["age", "-r", recipients[0], "-o", str(encrypted), str(tmp_path / "in.wav")],
                   check=True)
    out = tmp_path / "export" / "out.wav"
    out.parent.mkdir()
    assert vault.decrypt_to(encrypted, identity, out) == sha256(data)
    assert out.read_bytes() == data
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert leftovers(out.parent) == []


def test_decrypt_to_by_recording_id_refuses_to_overwrite(vault, spool, tmp_path, identity):
    path, rid, data = plaintext(spool, 1000)
    vault.seal(path, rid)
    out = tmp_path / "out.wav"
    assert vault.decrypt_to(rid, identity, out) == sha256(data)
    out.write_bytes(b"keep me")
    with pytest.raises(VaultError, match="already exists; not overwriting"):
        vault.decrypt_to(rid, identity, out)
    assert out.read_bytes() == b"keep me"


def test_same_plaintext_twice_gives_different_ciphertexts(vault, spool):
    data = os.urandom(100_000)
    path1, rid1, _ = plaintext(spool, 0, data)
    path2, rid2, _ = plaintext(spool, 0, data)
    s1, s2 = vault.seal(path1, rid1), vault.seal(path2, rid2)
    assert s1.sha256 != s2.sha256
    body1, body2 = s1.path.read_bytes(), s2.path.read_bytes()
    # fresh file key and nonce: the payloads have nothing in common
    assert body1[header_length(body1):][:4096] != body2[header_length(body2):][:4096]


def test_seal_file_in_process(tmp_path, spool, recipients, identity, vault):
    path, rid, data = plaintext(spool, 70_000)
    sealed = seal_file(path, tmp_path / "x.age", recipients)
    assert not path.exists()
    assert sealed.sha256 == sha256((tmp_path / "x.age").read_bytes())
    assert vault.decrypt_to(tmp_path / "x.age", identity, tmp_path / "x.wav") == sha256(data)


# --- failures keep the plaintext and leave no .tmp ------------------------------------


def test_missing_plaintext(vault, spool):
    with pytest.raises(VaultError, match="missing"):
        vault.seal(spool / f"{new_id()}.wav", new_id())
    with pytest.raises(VaultError, match="missing"):
        seal_file(spool / "gone.wav", vault.store_dir / "gone.age", vault._recipients)


def test_recording_id_must_be_uuid4_hex(vault, spool):
    path, _, _ = plaintext(spool, 10)
    for bad in ["../../etc/passwd", "x", new_id().upper(), uuid.uuid1().hex, str(uuid.uuid4())]:
        with pytest.raises(ValueError, match="not a recording id"):
            vault.seal(path, bad)
    assert path.exists()


def test_unwritable_store_keeps_plaintext(vault, spool):
    path, rid, data = plaintext(spool, 100_000)
    shutil.rmtree(vault.store_dir)
    vault.store_dir.write_text("")  # the store is now a file: nothing can be written in it
    with pytest.raises(VaultError, match="cannot seal .*: Not a directory"):
        vault.seal(path, rid)
    assert path.read_bytes() == data


def test_no_recipients_keeps_plaintext(tmp_path, spool):
    vault = Vault(tmp_path / "store", [], workers=1)
    vault.start()
    try:
        path, rid, _ = plaintext(spool, 1000)
        with pytest.raises(VaultError, match="no age recipients"):
            vault.seal(path, rid)
        with pytest.raises(VaultError, match="no age recipients"):
            seal_file(path, tmp_path / "store" / f"{rid}.age", [])
        assert path.exists() and list((tmp_path / "store").iterdir()) == []
    finally:
        vault.stop()


def test_invalid_recipient_refused_at_construction(tmp_path):
    with pytest.raises(VaultError, match="recipient is invalid"):
        Vault(tmp_path / "store", ["age1notakey"])


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # then write() fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


def test_failure_mid_write_keeps_plaintext_and_no_tmp(tmp_path, spool, recipients):
    path, rid, data = plaintext(spool, 4 << 20)
    store = tmp_path / "store"
    store.mkdir()
    code = ("import sys; from pathlib import Path; from fs_consent.secure.vault import seal_file, VaultError\n"
            "try: seal_file(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])\n"
            "except VaultError as e: print(e); sys.exit(3)\n")
    result = subprocess.run([sys.executable, "-c", code, str(path), str(store / f"{rid}.age"),
                             *recipients], preexec_fn=_limit_file_size, capture_output=True, text=True)
    assert result.returncode == 3, result.stderr
    assert "File too large" in result.stdout
    assert path.read_bytes() == data
    assert list(store.iterdir()) == []


def test_write_failure_in_the_worker_keeps_plaintext_and_no_tmp(tmp_path, recipients, spool):
    vault = Vault(tmp_path / "store", recipients, workers=1)
    vault.start()
    try:
        (worker,) = vault._workers
        # the worker's writes fail (EFBIG) once its output passes 1 MiB
        resource.prlimit(worker.proc.pid, resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        path, rid, data = plaintext(spool, 4 << 20)
        with pytest.raises(VaultError, match="cannot seal .*: File too large"):
            vault.seal(path, rid)
        assert path.read_bytes() == data
        assert list(vault.store_dir.iterdir()) == []
    finally:
        vault.stop()


@pytest.mark.slow
def test_worker_dying_mid_seal_is_replaced_and_the_seal_retried(tmp_path, recipients, spool, identity):
    vault = Vault(tmp_path / "store", recipients, workers=1)
    vault.start()
    try:
        (worker,) = vault._workers
        path, rid, data = plaintext(spool, 50 << 20)
        gevent.spawn_later(0.03, worker.proc.kill)
        vault.seal(path, rid)
        assert worker.proc.returncode == -signal.SIGKILL
        assert len(vault._workers) == 1 and worker not in vault._workers
        assert not path.exists() and leftovers(vault.store_dir) == []
        assert vault.decrypt_to(rid, identity, tmp_path / "out.wav") == sha256(data)
    finally:
        vault.stop()


@pytest.mark.slow
def test_worker_killed_while_idle_is_replaced(vault, spool):
    for worker in list(vault._workers):
        worker.proc.kill()
        worker.proc.wait()
    path, rid, _ = plaintext(spool, 10_000)
    assert vault.seal(path, rid).size > 10_000
    assert all(w.proc.returncode is None for w in vault._workers)


@pytest.mark.slow
def test_cancelled_seal_keeps_plaintext_and_no_tmp(vault, spool):
    path, rid, data = plaintext(spool, 50 << 20)
    with pytest.raises(gevent.Timeout):
        with gevent.Timeout(0.02):
            vault.seal(path, rid)
    assert path.read_bytes() == data
    assert leftovers(vault.store_dir) == []
    assert vault.seal(path, rid).path.exists()  # the replaced worker seals it
    assert not path.exists()


def test_stale_tmp_removed_at_start_and_delete(tmp_path, recipients, spool):
    store = tmp_path / "store"
    store.mkdir()
    stray = store / f"{new_id()}.age.tmp"
    stray.write_bytes(b"half")
    vault = Vault(store, recipients, workers=1)
    vault.start()
    try:
        assert not stray.exists()
        path, rid, _ = plaintext(spool, 1000)
        vault.seal(path, rid)
        assert vault.delete(rid) is True
        assert not vault.path_for(rid).exists()
        assert vault.delete(rid) is False
        (store / f"{rid}.age.tmp").write_bytes(b"x")
        assert vault.delete(rid) is True and list(store.iterdir()) == []
    finally:
        vault.stop()


def test_stop_lets_a_seal_in_progress_finish(tmp_path, recipients, spool):
    vault = Vault(tmp_path / "store", recipients, workers=1)
    vault.start()
    path, rid, _ = plaintext(spool, 20 << 20)
    job = gevent.spawn(vault.seal, path, rid)
    gevent.sleep(0.02)
    workers = list(vault._workers)
    vault.stop()
    assert job.get().path.exists() and not path.exists()
    assert all(w.proc.returncode == 0 for w in workers)
    path2, rid2, _ = plaintext(spool, 10)
    with pytest.raises(VaultError, match="not running"):
        vault.seal(path2, rid2)


def test_vault_without_workers_opens_but_does_not_seal(tmp_path, recipients, identity, spool):
    sealer = Vault(tmp_path / "store", recipients, workers=1)
    sealer.start()
    path, rid, data = plaintext(spool, 1000)
    sealer.seal(path, rid)
    sealer.stop()
    cli_vault = Vault(tmp_path / "store", [], workers=0)
    assert cli_vault.decrypt_to(rid, identity, tmp_path / "out.wav") == sha256(data)
    path2, rid2, _ = plaintext(spool, 10)
    with pytest.raises(VaultError):
        cli_vault.seal(path2, rid2)


# --- cooperative and concurrent -----------------------------------------------------


@pytest.mark.slow
def test_seal_keeps_the_hub_responsive(vault, spool, keys_dir):
    path, rid, data = plaintext(spool, 50 << 20)
    ticks = []

    def ticker():
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0.01)

    t = gevent.spawn(ticker)
    gevent.sleep(0.05)
    started = time.monotonic()
    vault.seal(path, rid)
    elapsed = time.monotonic() - started
    gevent.sleep(0.02)
    t.kill()
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert elapsed > 0.05  # the seal took a while ...
    assert max(gaps) < 0.2, f"hub stalled {max(gaps):.3f}s"  # ... and the ticker kept ticking


def test_many_greenlets_seal_at_once(vault, spool, identity, tmp_path):
    recordings = [plaintext(spool, 256_000 + i) for i in range(24)]
    jobs = [gevent.spawn(vault.seal, path, rid) for path, rid, _ in recordings]
    gevent.joinall(jobs, raise_error=True)
    assert list(spool.iterdir()) == []
    assert len({j.value.sha256 for j in jobs}) == 24
    for _, rid, data in recordings:
        assert vault.decrypt_to(rid, identity, tmp_path / f"{rid}.wav") == sha256(data)


# --- damage ---------------------------------------------------------------------------


@pytest.fixture
def sealed_file(vault, spool):
    path, rid, data = plaintext(spool, 3 * 65536 + 1234)
    sealed = vault.seal(path, rid)
    return sealed.path, data


def header_length(ciphertext: bytes) -> int:
    return ciphertext.index(b"\n---") + ciphertext[ciphertext.index(b"\n---") + 1:].index(b"\n") + 2


def positions(ciphertext: bytes) -> dict[str, int]:
    h = header_length(ciphertext)
    return {"magic": 3, "stanza": 40, "mac": h - 5, "nonce": h + 3, "first chunk": h + 16 + 10,
            "chunk tag": h + 16 + 65536 + 3, "last chunk": len(ciphertext) - 40,
            "last byte": len(ciphertext) - 1}


@pytest.mark.parametrize("where", ["magic", "stanza", "mac", "nonce", "first chunk", "chunk tag",
                                   "last chunk", "last byte"])
@pytest.mark.slow
def test_flipped_byte_is_refused(vault, sealed_file, identity, keys_dir, tmp_path, where):
    path, _ = sealed_file
    damaged = bytearray(path.read_bytes())
    damaged[positions(bytes(damaged))[where]] ^= 0x01
    path.write_bytes(damaged)
    out = tmp_path / "out.wav"
    with pytest.raises(DecryptError) as err:
        vault.decrypt_to(path, identity, out)
    assert str(path) in str(err.value)
    assert "damaged" in str(err.value)
    assert not out.exists() and leftovers(tmp_path) == []
    assert age_decrypt(keys_dir, path).returncode != 0


@pytest.mark.slow
@pytest.mark.parametrize("keep", ["nothing", "half header", "header", "one chunk", "all but 1"])
def test_truncated_file_is_refused(vault, sealed_file, identity, keys_dir, tmp_path, keep):
    path, _ = sealed_file
    ciphertext = path.read_bytes()
    h = header_length(ciphertext)
    length = {"nothing": 0, "half header": h // 2, "header": h + 16,
              "one chunk": h + 16 + 65536 + 16, "all but 1": len(ciphertext) - 1}[keep]
    path.write_bytes(ciphertext[:length])
    out = tmp_path / "out.wav"
    with pytest.raises(DecryptError, match="damaged or truncated"):
        vault.decrypt_to(path, identity, out)
    assert not out.exists() and leftovers(tmp_path) == []
    assert age_decrypt(keys_dir, path).returncode != 0


def test_wrong_identity_is_refused(vault, sealed_file, tmp_path):
    path, _ = sealed_file
    other = keys.pyrage.x25519.Identity.generate()
    with pytest.raises(DecryptError, match="cannot be opened with this identity"):
        vault.decrypt_to(path, other, tmp_path / "out.wav")
    assert not (tmp_path / "out.wav").exists()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_flipped_bit_is_refused(vault, sealed_file, identity, tmp_path, data):
    path, _ = sealed_file
    original = path.read_bytes()
    damaged = bytearray(original)
    pos = data.draw(st.integers(0, len(damaged) - 1))
    damaged[pos] ^= 1 << data.draw(st.integers(0, 7))
    path.write_bytes(damaged)
    try:
        with pytest.raises(DecryptError):
            vault.decrypt_to(path, identity, tmp_path / "out.wav")
        assert not (tmp_path / "out.wav").exists() and leftovers(tmp_path) == []
    finally:
        path.write_bytes(original)
