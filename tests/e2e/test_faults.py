"""A sysadmin's bad day, produced for real: a full file system (a small tmpfs), a ledger
locked by another process, a SIGKILL, the same channel uuid twice, a full store.

What must hold through each: no consent fact is dropped or attached to the wrong call,
no plaintext is left behind, and every caller still reaches the menu.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import gevent
import gevent.pool
import pytest

from fs_consent.emulator import CallerScript
from fs_consent.runtime.server import ConsentServer
from fs_consent.store import ledger
from fs_consent.store.facts import RecordingStarted
from fs_consent.store.writer import JOURNAL_FILE, Journal

from ..harness import Harness, age_decrypt, fs_consent, sha256
from .test_e2e_process import DATA, ServerProcess, free_port, wait_for


@pytest.fixture
def small_fs(tmp_path):
    """Mount a tmpfs of the given size (needs root, as CI has); unmounted afterwards."""
    mounted = []

    def mount(name: str, size: str) -> Path:
        path = tmp_path / name
        path.mkdir(mode=0o700)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): run as root")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(directory: Path) -> Path:
    """Write until the file system says ENOSPC; the filler file is returned for freeing."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 16, 1 << 12, 1 << 9):
            try:
                while True:
                    f.write(b"\xa5" * size)
            except OSError:
                pass
    return filler


def harness(data_dir: Path, **storage) -> Harness:
    h = Harness(data_dir)
    h.config = replace(h.config, storage=replace(h.config.storage, **storage))
    h.server = ConsentServer(h.config, announce=lambda _m: None)
    return h


def place(h: Harness, scripts: list[CallerScript], uuids: list[str] | None = None) -> list:
    pool = gevent.pool.Pool(len(scripts))
    uuids = uuids or [str(uuid.uuid4()) for _ in scripts]
    jobs = [pool.spawn(h.emulator.place_call, script, uuid=u, timeout=60) for script, u in zip(scripts, uuids)]
    pool.join()
    return [job.get() for job in jobs]


def settle(h: Harness, timeout: float = 60) -> None:
    with gevent.Timeout(timeout, AssertionError("the server did not settle")):
        while h.server.ctx.registry:
            gevent.sleep(0.02)
        h.server.ctx.seals.join()
        while not h.server.ctx.writer.flush(timeout=5):
            pass


def assert_every_call_accounted_for(h: Harness, results: list) -> None:
    """Each emulated call has its own row with an outcome; each recording is on the call that
    made it and, if sealed, decrypts to exactly what FreeSWITCH wrote for that call."""
    for result in results:
        assert result.errors == [], result.errors
        rows = list(ledger.Call.select().where(ledger.Call.uuid == result.uuid))
        assert len(rows) == 1, result.uuid
        assert rows[0].outcome is not None and rows[0].ended_at is not None, rows[0].__data__
        made_here = {Path(path).stem: info for path, info in result.recordings.items()}
        for rec in rows[0].recordings:
            assert rec.id in made_here, "a recording is filed under a call that did not make it"
            if rec.state == ledger.SEALED:
                plain = age_decrypt(h.identity, h.store / f"{rec.id}.age")
                assert sha256(plain) == made_here[rec.id].sha256
    owners = {Path(p).stem: r.uuid for r in results for p in r.recordings}
    for rec in ledger.Recording.select():
        assert rec.call.uuid == owners[rec.id]
    assert h.server.ctx.writer.lost == 0


def silence(**kw) -> CallerScript:
    return CallerScript(**{"digits": [None], "talk_seconds": 0.3, **kw})


# --- a full data dir (finding 1) ------------------------------------------------------------


def test_a_full_data_dir_loses_no_call_and_attributes_every_recording(tmp_path, small_fs):
    data = small_fs("data", "4m")
    h = harness(data, spool_dir=tmp_path / "spool")
    with h:
        results = place(h, [silence(caller_number=f"061000000{n}") for n in range(2)])
        settle(h)
        filler = fill(data)
        during = place(h, [silence(caller_number=f"062000000{n}") if n % 3 else
                           CallerScript(digits=["1"], caller_number=f"062000000{n}") for n in range(8)])
        assert all(r.channel_vars.get("fs_consent") for r in during)  # every caller reached the menu
        filler.unlink()
        settle(h)  # what waited lands; the ledger is trusted again once it has
        assert h.server.ctx.writer.healthy
        after = place(h, [silence(caller_number=f"063000000{n}") for n in range(3)])
        settle(h)
        results += during + after
        assert_every_call_accounted_for(h, results)
        assert h.spool_files() == []  # no plaintext left: sealed or deleted
        notes = {c.recording_note for c in ledger.Call.select().where(ledger.Call.uuid << [r.uuid for r in during])}
        assert notes <= {None, "ledger-unavailable"}
        for r in after:  # space is back: recorded again
            assert h.recordings_of(r.uuid)[0].state == ledger.SEALED


# --- a locked ledger (finding 2) ---------------------------------------------------------------


class LockHolder:
    """Another process holding the ledger's write lock until released."""

    def __init__(self, db: Path):
        code = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None);"
                "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.read(); c.execute('COMMIT')")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(db)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline() == "locked\n"

    def release(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)


def test_a_locked_ledger_delays_no_prompt_and_loses_no_fact(tmp_path):
    h = Harness(tmp_path / "data")
    with h:
        settle(h)
        lock = LockHolder(Path(h.config.storage.data_dir) / "ledger.db")
        try:
            live = gevent.spawn(h.emulator.place_call, silence(talk_seconds=3.0), timeout=60)
            wait_for(lambda: any(s.machine and s.machine.rec.value == "active"
                                 for s in h.server.ctx.registry.values()))
            (live_uuid,) = [s.facts.uuid for s in h.server.ctx.registry.values()]
            withdrawn = fs_consent(h, "withdraw", live_uuid)
            assert withdrawn.returncode == 0, withdrawn.stderr  # within the control socket's 2 s
            # calls come and go while the lock is held: none waits for it
            with gevent.Timeout(8, AssertionError("calls waited for the locked ledger")):
                during = place(h, [silence(caller_number=f"064000000{n}") for n in range(6)])
            assert lock.proc.poll() is None  # still locked: every one of them was served meanwhile
            assert all(r.channel_vars.get("fs_consent") for r in during)
        finally:
            lock.release()
        results = during + [live.get(timeout=30)]
        settle(h)
        assert_every_call_accounted_for(h, results)
        assert h.call_row(live_uuid).outcome == "withdrawn" and h.recordings_of(live_uuid)[0].state == "deleted"
        assert h.spool_files() == []


# --- killed between the seal and its ledger write (finding 3) ------------------------------------


def test_a_recording_sealed_just_before_a_kill_stays_sealed(tmp_path):
    server = ServerProcess(tmp_path, free_port())
    server.start()
    db = server.data / "ledger.db"
    emulator = server.emulator()
    call = gevent.spawn(emulator.place_call, CallerScript(digits=[None], talk_seconds=0.5), timeout=60)
    wait_for(lambda: any((server.data / "spool").glob("*.wav")))
    lock = LockHolder(db)  # the seal's own ledger write cannot land now
    try:
        wait_for(lambda: any((server.data / "store").glob("*.age")), timeout=30)
        server.stop(signal.SIGKILL)
    finally:
        lock.release()
    result = call.get(timeout=30)
    server.start()
    try:
        (rec_path, info), = result.recordings.items()
        conn = sqlite3.connect(db)
        state, reason = conn.execute("SELECT state, state_reason FROM recording WHERE id = ?",
                                     (Path(rec_path).stem,)).fetchone()
        conn.close()
        assert (state, reason) == ("sealed", None)
        sealed = server.data / "store" / f"{Path(rec_path).stem}.age"
        assert sha256(age_decrypt(server.data / "keys" / "identity.txt", sealed)) == info.sha256
        assert list((server.data / "spool").iterdir()) == []
    finally:
        assert server.stop() == 0


# --- the same channel uuid twice (finding 4) -------------------------------------------------------


def test_the_same_channel_uuid_twice_gets_two_rows_and_keeps_both_recordings(tmp_path):
    h = Harness(tmp_path / "data")
    with h:
        twice = str(uuid.uuid4())
        first = h.emulator.place_call(silence(), uuid=twice, timeout=30)
        second = h.emulator.place_call(silence(), uuid=twice, timeout=30)
        settle(h)
        rows = list(ledger.Call.select().where(ledger.Call.uuid == twice).order_by(ledger.Call.id))
        assert [r.outcome for r in rows] == ["granted", "granted"]
        for row, result in zip(rows, (first, second)):
            (rec,) = row.recordings
            assert rec.state == ledger.SEALED
            (info,) = result.recordings.values()
            assert sha256(age_decrypt(h.identity, h.store / f"{rec.id}.age")) == info.sha256
        assert ledger.AuditEntry.select().where(ledger.AuditEntry.action == "recording.delete").count() == 0


def test_the_same_uuid_live_twice_at_once_keeps_both_calls_apart(tmp_path):
    h = Harness(tmp_path / "data")
    with h:
        twice = str(uuid.uuid4())
        results = place(h, [silence(talk_seconds=0.6), CallerScript(digits=["1"])], [twice, twice])
        settle(h)
        outcomes = sorted(r.outcome for r in ledger.Call.select().where(ledger.Call.uuid == twice))
        assert outcomes == ["granted", "refused"]
        granted = ledger.Call.get((ledger.Call.uuid == twice) & (ledger.Call.outcome == "granted"))
        (rec,) = granted.recordings
        assert rec.state == ledger.SEALED
        assert sha256(age_decrypt(h.identity, h.store / f"{rec.id}.age")) in {
            info.sha256 for r in results for info in r.recordings.values()}


# --- a full store (finding 5) --------------------------------------------------------------------


def test_a_full_store_keeps_the_plaintext_waiting_then_seals_it_when_space_returns(tmp_path, small_fs, caplog):
    store = small_fs("store", "1m")
    h = harness(tmp_path / "data", store_dir=store)
    with h:
        with caplog.at_level(logging.ERROR, logger="fs_consent"):
            call = gevent.spawn(h.emulator.place_call, silence(talk_seconds=1.0), timeout=30)
            wait_for(lambda: h.spool_files(), timeout=20)  # recording: the store fills up under it
            filler = fill(store)
            result = call.get(timeout=30)
            wait_for(lambda: "ENOSPC on store" in caplog.text, timeout=20)
        (path, info), = result.recordings.items()
        rid = Path(path).stem
        assert h.spool_files() == [f"{rid}.wav"]  # waiting, not lost
        config = tmp_path / "store.toml"  # the CLI finds the same store through the config
        database = f'database = "{h.database.url}"\n' if h.database.url else ""
        config.write_text(f'[storage]\nstore_dir = "{store}"\n{database}')
        check = fs_consent(h, "check", env={**os.environ, "FS_CONSENT_CONFIG": str(config)})
        assert check.returncode == 1
        assert any(line.startswith("fail  store") and "ENOSPC" in line
                   for line in check.stdout.splitlines()), check.stdout
        filler.unlink()
        wait_for(lambda: h.spool_files() == [], timeout=40)  # sealed by the retry, no restart
        settle(h)
        assert h.recordings_of(result.uuid)[0].state == ledger.SEALED
        assert sha256(age_decrypt(h.identity, store / f"{rid}.age")) == info.sha256
        assert os.listdir(store) == [f"{rid}.age"]


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_store_that_cannot_be_written_records_nothing_new_says_why_and_records_again_once_it_can(
        tmp_path, small_fs, caplog, fault):
    """A node whose store (a shared mount) cannot take a file records no new call: each
    goes on into the menu unrecorded, the ledger says why, the log names the cause; once
    the store can be written again, the next call is recorded."""
    store = small_fs("store", "1m")
    h = harness(tmp_path / "data", store_dir=store)
    with h:
        if fault == "full":
            filler = fill(store)
        else:
            remount = subprocess.run(["mount", "-o", "remount,ro", str(store)], capture_output=True, text=True)
            assert remount.returncode == 0, remount.stderr
        cause = "ENOSPC on store" if fault == "full" else "EROFS on store"
        with caplog.at_level(logging.ERROR, logger="fs_consent"):
            wait_for(lambda: f"cannot be written ({cause})" in caplog.text, timeout=10)  # the probe found it
            unrecorded = h.call(digits=[None])
        assert "record_session" not in [app for app, _ in unrecorded.executed] and unrecorded.recordings == {}
        assert [app for app, _ in unrecorded.executed][-1] == "execute_extension"
        assert h.call_row(unrecorded.uuid).recording_note == "store-unwritable"
        assert h.recordings_of(unrecorded.uuid) == [] and h.spool_files() == []
        assert f"call {unrecorded.uuid}: the store cannot be written ({cause})" in caplog.text

        if fault == "full":
            filler.unlink()
        else:
            subprocess.run(["mount", "-o", "remount,rw", str(store)], check=True, capture_output=True)
        with caplog.at_level(logging.WARNING, logger="fs_consent"):
            wait_for(lambda: "can be written again" in caplog.text, timeout=10)
        recorded = h.call(digits=[None])
        (rec,) = h.recordings_of(recorded.uuid)
        assert rec.state == ledger.SEALED and h.store_files() == [f"{rec.id}.age"]
        assert h.call_row(recorded.uuid).recording_note is None


# --- killed while the ledger is locked, restarted before it is free (found by scripts/soak.py) ------


def test_a_restart_while_the_ledger_is_locked_waits_for_it_and_replays_every_fact(tmp_path):
    """The journal holds the facts the lock kept out of the ledger; the server is killed and
    started again while the lock is still held. Start-up must wait for the ledger, not skip
    a fact that found it locked (SQLite's 5 s busy wait) and then empty the journal over it."""
    server = ServerProcess(tmp_path, free_port())
    server.start()
    db = server.data / "ledger.db"
    emulator = server.emulator()
    lock = LockHolder(db)
    try:
        refused = emulator.place_call(CallerScript(digits=["1"]), timeout=30)  # served while locked
        assert refused.channel_vars.get("fs_consent") == "refused"
        server.stop(signal.SIGKILL)
        assert "call.opened" in (server.data / "ledger.journal").read_text()  # only the journal has it
        starting = gevent.spawn(server.start)
        gevent.sleep(7)  # past SQLite's busy timeout: a fact given up on would be gone by now
        assert not starting.ready()  # start-up waits for the ledger; FreeSWITCH's fallback meanwhile
    finally:
        lock.release()
    starting.get(timeout=60)
    try:
        conn = sqlite3.connect(db)
        rows = conn.execute("SELECT outcome, decided_by, ended_at, hangup_cause FROM call WHERE uuid = ?",
                            (refused.uuid,)).fetchall()
        events = conn.execute("SELECT kind, consent_event.outcome FROM consent_event JOIN call ON call.id = consent_event.call_id"
                              " WHERE call.uuid = ?", (refused.uuid,)).fetchall()
        conn.close()
        assert len(rows) == 1, rows
        outcome, by, ended_at, cause = rows[0]
        assert (outcome, by, cause) == ("refused", "key", "NORMAL_CLEARING") and ended_at
        assert events == [("decision", "refused")]
    finally:
        assert server.stop() == 0


# --- what a full disk kept out of the journal, once it has room (found by scripts/soak.py) -----------


def test_facts_a_full_disk_kept_in_memory_reach_the_journal_once_it_has_room(tmp_path, small_fs):
    """While the data dir is full, neither the journal nor the ledger takes a call's facts;
    once the disk has room they must be in the journal before the next fact, so a kill
    before the ledger took them (here: it is locked) loses nothing."""
    server = ServerProcess(tmp_path / "home", free_port())
    (server.home / DATA).parent.mkdir(parents=True)
    small_fs(f"home/{DATA}", "4m")
    server.start()
    db = server.data / "ledger.db"
    emulator = server.emulator()
    filler = fill(server.data)
    during = emulator.place_call(CallerScript(digits=["1"]), timeout=30)  # in memory only: nowhere to write
    lock = LockHolder(db)  # the ledger will not take them either once there is room
    try:
        filler.unlink()
        after = emulator.place_call(CallerScript(digits=["1"]), timeout=30)
        server.stop(signal.SIGKILL)
    finally:
        lock.release()
    server.start()
    try:
        conn = sqlite3.connect(db)
        for result in (during, after):
            assert result.channel_vars.get("fs_consent") == "refused"
            rows = conn.execute("SELECT outcome, decided_by, hangup_cause FROM call WHERE uuid = ?",
                                (result.uuid,)).fetchall()
            assert rows == [("refused", "key", "NORMAL_CLEARING")], result.uuid
        conn.close()
    finally:
        assert server.stop() == 0


def test_the_journal_is_trusted_again_once_the_disk_has_room_without_waiting_for_a_new_fact(tmp_path, small_fs):
    """The disk refused the journal's last line and the ledger has since taken it: with no new
    fact to try, the writer must still see that the disk takes writes again (found by CI: the
    server stayed closed to recording after space returned until the next call's fact)."""
    data = small_fs("data", "1m")
    journal = Journal(data / JOURNAL_FILE)
    filler = fill(data)
    assert not journal.append(1, RecordingStarted(instance="a" * 32, recording_id="r1", at=dt.datetime.now(dt.timezone.utc)))
    journal.landed(1)  # the ledger took it meanwhile: nothing waits in memory
    assert not journal.retry()  # the disk is still full
    filler.unlink()
    assert journal.retry()
    assert journal.failing is None and journal.size() == 0  # the probe left nothing behind
    journal.close()


# --- a restart while FreeSWITCH still records a call the kill interrupted (found by scripts/soak.py) --


def test_a_recording_still_written_when_the_server_restarts_is_sealed_whole(tmp_path):
    """FreeSWITCH goes on recording a bridged call whose socket app died, until the bridge
    ends (freeswitch/dialplan/fs-consent.xml). A restart meanwhile (systemd: 2 s) runs
    ServerContext.recover_spool, which seals that file at once: the ciphertext holds what
    was in it then (with the emulator, the 44-byte header alone), the plaintext is unlinked,
    and the rest of the conversation goes into a file nobody can open, while the ledger says
    sealed (audit: recovered). Recovery now leaves a file alone while its WAV header does
    not count it whole and it is still being written, and settles it once closed."""
    server = ServerProcess(tmp_path, free_port())
    server.start()
    call = gevent.spawn(server.emulator().place_call, CallerScript(digits=[None], talk_seconds=4.0), timeout=60)
    wait_for(lambda: any((server.data / "spool").glob("*.wav")))
    gevent.sleep(0.5)
    server.stop(signal.SIGKILL)
    server.start()  # the call is still bridged and recording
    try:
        result = call.get(timeout=60)
        (rec_path, info), = result.recordings.items()
        sealed = server.data / "store" / f"{Path(rec_path).stem}.age"
        assert info.sha256 is not None, "the spool file was removed while FreeSWITCH was writing it"
        wait_for(lambda: sealed.exists() and not any((server.data / "spool").iterdir()), timeout=30)
        assert sha256(age_decrypt(server.data / "keys" / "identity.txt", sealed)) == info.sha256
    finally:
        assert server.stop() == 0
