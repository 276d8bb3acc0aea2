"""Retention: the purge of recordings (60 days) and call records (one year), as of a chosen moment.

Real files, a real ledger; the clock is the purge's ``as_of``, never the system's.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from fs_consent.core.config import ConfigError, load_config
from fs_consent.privacy import retention
from fs_consent.privacy.retention import Purge, PurgeError, Terms, purge_lock
from fs_consent.store import holds, ledger
from fs_consent.store.connection import close_database

from ..freeswitch.test_freeswitch_kit import seconds, unit_settings
from ..ledger_data import AS_OF, DAY, DataDir

REPO = Path(__file__).resolve().parents[2]
TERMS = Terms(dt.timedelta(days=60), dt.timedelta(days=365))


@pytest.fixture
def data(tmp_path):
    d = DataDir(tmp_path / "data")
    yield d
    close_database()


def run_purge(d: DataDir, as_of=AS_OF, **options) -> retention.PurgeReport:
    options.setdefault("pause", False)
    job = Purge(vault=d.vault, spool_dir=d.spool, terms=TERMS, actor="tester", as_of=as_of, **options)
    with purge_lock(d.root):
        return job.run()


# --- recordings -------------------------------------------------------------------------


def test_a_recording_of_59_days_survives_and_one_of_61_days_is_gone(data):
    _, young = data.add_call(age=59 * DAY)
    _, old = data.add_call(age=61 * DAY)
    report = run_purge(data)
    assert report.recordings_deleted == 1
    assert data.store_files() == [f"{young.id}.age"]
    assert data.recording(young.id).state == ledger.SEALED
    gone = data.recording(old.id)
    assert (gone.state, gone.state_reason) == (ledger.DELETED, "retention") and gone.deleted_at is not None
    assert gone.sha256 == old.sha256  # what was deleted stays identifiable in the ledger


def test_the_term_counts_from_the_start_of_the_recording(data):
    # the recording starts 2m40s before the call ends
    _, over = data.add_call(age=60 * DAY - dt.timedelta(minutes=2, seconds=30))  # started 60 days + 10 s ago
    _, under = data.add_call(age=60 * DAY - dt.timedelta(minutes=2, seconds=50))  # started 60 days - 10 s ago
    run_purge(data)
    assert data.recording(over.id).state == ledger.DELETED
    assert data.recording(under.id).state == ledger.SEALED


def test_plaintext_left_in_the_spool_goes_too(data):
    _, failed = data.add_call(age=61 * DAY, recording=ledger.FAILED, spool_plaintext=True)
    _, sealed = data.add_call(age=61 * DAY, spool_plaintext=True)  # a crash between rename and unlink
    (data.store / f"{sealed.id}.age.tmp").write_bytes(b"partial")
    run_purge(data)
    assert data.spool_files() == [] and data.store_files() == []
    assert {data.recording(r.id).state for r in (failed, sealed)} == {ledger.DELETED}


def test_deleted_and_discarded_recordings_are_left_alone(data):
    _, withdrawn = data.add_call(age=90 * DAY, recording=ledger.DELETED)
    _, discarded = data.add_call(age=90 * DAY, recording=ledger.DISCARDED)
    report = run_purge(data)
    assert report.recordings_deleted == 0
    assert data.recording(withdrawn.id).state_reason == "withdrawn"
    assert data.recording(discarded.id).state == ledger.DISCARDED


def test_a_held_recording_survives_until_released_and_then_goes(data):
    call, rec = data.add_call(age=100 * DAY)
    (hold,) = holds.add(rec.id, reason="aggression", case_ref="PV-2027-001", note=None, actor="officer")
    report = run_purge(data)
    assert (report.recordings_deleted, report.recordings_held) == (0, 1)
    assert data.store_files() == [f"{rec.id}.age"]
    assert data.recording(rec.id).state == ledger.SEALED
    holds.release(str(hold.id), actor="officer")
    report = run_purge(data)
    assert report.recordings_deleted == 1 and data.store_files() == []
    assert data.recording(rec.id).state == ledger.DELETED


def test_a_hold_placed_while_the_purge_runs_wins(data, monkeypatch):
    """The batch is re-checked inside the transaction that marks it deleted."""
    recs = [data.add_call(age=70 * DAY)[1] for _ in range(3)]
    original = Purge._write
    placed = []

    def write(self, work):
        if not placed:  # between the purge's select and its marking transaction
            placed.extend(holds.add(recs[1].id, reason="other", case_ref="late", note=None, actor="officer"))
        return original(self, work)

    monkeypatch.setattr(Purge, "_write", write)
    report = run_purge(data)
    assert placed and report.recordings_deleted == 2
    assert data.store_files() == [f"{recs[1].id}.age"]


# --- call records -----------------------------------------------------------------------


def test_call_records_of_364_days_keep_the_number_and_of_366_days_lose_it(data):
    young, _ = data.add_call(age=364 * DAY, recording=None)
    old, _ = data.add_call(age=366 * DAY, recording=None)
    report = run_purge(data)
    assert report.calls_erased == 1
    kept = data.call(young.id)
    assert kept.caller_hash == young.caller_hash and bytes(kept.caller_sealed) == young.caller_sealed
    erased = data.call(old.id)
    assert erased.caller_hash is None and erased.caller_sealed is None
    # the anonymous rest stays for reporting, exactly as it was
    for name in ("uuid", "started_at", "answered_at", "bridged_at", "ended_at", "wait_seconds", "duration_seconds",
                 "outcome", "decided_by", "consent_mode", "language", "prompt_id", "prompt_version", "hangup_cause"):
        assert getattr(erased, name) == getattr(old, name), name


def add_staff(data: DataDir, call: ledger.Call, staff_id: str) -> ledger.CallStaff:
    return ledger.CallStaff.create(call=call, seq=1, staff_hash=data.protector.lookup_hash("staff", staff_id),
                                   staff_sealed=data.protector.seal("staff", staff_id), route="vergunningen",
                                   bridged_at=call.bridged_at, unbridged_at=call.ended_at)


def test_the_staff_on_a_call_record_past_its_term_are_erased_with_the_number(data):
    young, _ = data.add_call(age=364 * DAY, recording=None)
    old, _ = data.add_call(age=366 * DAY, recording=None)
    anonymous, _ = data.add_call(age=366 * DAY, recording=None, number=None)  # only the staff member is personal
    kept, erased, erased_alone = (add_staff(data, c, "1001") for c in (young, old, anonymous))
    report = run_purge(data)
    assert report.calls_erased == 2
    assert ledger.CallStaff.get_by_id(kept.id).staff_hash == kept.staff_hash
    for bridge in (erased, erased_alone):
        row = ledger.CallStaff.get_by_id(bridge.id)
        assert (row.staff_hash, bytes(row.staff_sealed)) == (ledger.CallStaff.ERASED_HASH, b"")
        assert (row.seq, row.route, row.bridged_at) == (1, "vergunningen", bridge.bridged_at)  # the rest stays
    assert data.call(anonymous.id).personal_erased_reason == retention.ERASED_BY_RETENTION
    assert run_purge(data).calls_erased == 0  # nothing personal is left to find


def test_an_objection_withdrawn_longer_ago_than_the_call_record_term_loses_its_number(data):
    from fs_consent.privacy import objections, subject_requests

    number_hash = data.protector.lookup_hash("phone", "+31612345678")
    other_hash = data.protector.lookup_hash("phone", "+31687654321")
    asked = subject_requests.add("O-1", "object", AS_OF.date() - dt.timedelta(days=400), actor="officer")
    old = objections.place(number_hash, asked, actor="officer")
    standing = objections.place(other_hash, asked, actor="officer")
    young = objections.place(data.protector.lookup_hash("phone", "+31611112222"), asked, actor="officer")
    ledger.Objection.update(withdrawn_at=AS_OF - 366 * DAY, withdrawn_by="officer").where(
        ledger.Objection.id == old.id).execute()
    ledger.Objection.update(withdrawn_at=AS_OF - 364 * DAY, withdrawn_by="officer").where(
        ledger.Objection.id == young.id).execute()
    report = run_purge(data)
    assert report.objections_unlinked == 1
    assert ledger.Objection.get_by_id(old.id).caller_hash == ledger.Objection.ERASED_HASH
    assert ledger.Objection.get_by_id(young.id).caller_hash == young.caller_hash
    assert objections.active(other_hash).id == standing.id  # a standing objection is never touched
    assert '"objections_unlinked":1' in data.audit("purge.finish")[-1].detail
    assert run_purge(data).objections_unlinked == 0


def test_the_call_of_a_held_recording_keeps_its_record_until_the_hold_is_released(data):
    call, rec = data.add_call(age=400 * DAY)
    holds.add(rec.id, reason="intimidation", case_ref="PV-1", note=None, actor="officer")
    report = run_purge(data)
    assert (report.calls_erased, report.calls_held) == (0, 1)
    assert data.call(call.id).caller_hash == call.caller_hash
    holds.release(rec.id, actor="officer")
    report = run_purge(data)
    assert (report.recordings_deleted, report.calls_erased) == (1, 1)
    assert data.call(call.id).caller_hash is None


def test_batches_walk_calls_that_ended_at_the_same_moment(data):
    """The keyset (ended_at, id) must neither skip nor repeat calls across batch edges."""
    same = [data.add_call(age=400 * DAY, recording=None)[0] for _ in range(7)]
    anonymous = data.add_call(age=400 * DAY, recording=None, number=None)[0]
    young = [data.add_call(age=10 * DAY, recording=None)[0] for _ in range(2)]
    report = run_purge(data, batch_size=3)
    assert report.calls_erased == 7
    assert all(data.call(c.id).caller_hash is None for c in same + [anonymous])
    assert all(data.call(c.id).caller_hash is not None for c in young)


# --- the run itself ---------------------------------------------------------------------


def test_dry_run_counts_and_changes_nothing(data):
    data.add_call(age=61 * DAY)
    data.add_call(age=366 * DAY, recording=None)
    before = (data.store_files(), len(data.audit()), ledger.PurgeRun.select().count())
    result = data.cli("purge", "--dry-run", "--as-of", AS_OF.isoformat())
    assert result.exit_code == 0, result.output
    assert "would delete 1 recordings, would erase 1 call records" in result.output
    assert (data.store_files(), len(data.audit()), ledger.PurgeRun.select().count()) == before


def test_the_purge_is_idempotent(data):
    for age in (10, 61, 61, 400):
        data.add_call(age=age * DAY)
    first = run_purge(data)
    assert (first.recordings_deleted, first.calls_erased) == (3, 1)
    state = snapshot(data)
    second = run_purge(data)
    assert (second.recordings_deleted, second.calls_erased, second.pending_completed) == (0, 0, 0)
    assert snapshot(data) == state


def test_every_run_is_in_the_ledger_with_who_and_when(data):
    data.add_call(age=61 * DAY)
    result = data.cli("purge", "--as-of", "2027-06-01T14:00:00+02:00")  # = AS_OF in UTC
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1  # not a terminal: no progress bar, one summary line
    assert lines[0].startswith("purge #1 as of 2027-06-01T12:00:00Z (recordings 60d, call records 1y): deleted 1 ")
    (run,) = ledger.PurgeRun.select()
    assert (run.status, run.recordings_deleted, run.calls_erased, run.as_of) == ("done", 1, 0, AS_OF)
    assert run.actor == ledger.os_user() and run.finished_at >= run.started_at
    start, finish = data.audit("purge.")
    assert (start.action, finish.action) == ("purge.start", "purge.finish")
    assert start.actor == finish.actor == ledger.os_user() and finish.object_id == "1"
    assert '"recordings_deleted":1' in finish.detail and "0612345678" not in finish.detail


def test_two_purges_never_run_at_once(data):
    with purge_lock(data.root):
        with pytest.raises(PurgeError, match="another purge is running"):
            with purge_lock(data.root):
                pass
        result = data.cli("purge")
        assert result.exit_code != 0 and "another purge is running" in result.output


def test_progress_reports_every_item(data):
    for age in (61, 62, 400, 500):
        data.add_call(age=age * DAY)
    seen = []
    job = Purge(vault=data.vault, spool_dir=data.spool, terms=TERMS, actor="t", as_of=AS_OF, batch_size=2,
                progress=seen.append, pause=False)
    total = job.total()
    with purge_lock(data.root):
        job.run()
    assert total == 4 + 2 and sum(seen) == total


# --- killed half-way --------------------------------------------------------------------


def snapshot(d: DataDir) -> dict:
    """Everything a purge decides, without its timestamps and its own bookkeeping."""
    return {
        "recordings": sorted((r.id, r.state, r.state_reason) for r in ledger.Recording.select()),
        "calls": sorted((c.uuid, c.caller_hash, bytes(c.caller_sealed) if c.caller_sealed else None)
                        for c in ledger.Call.select()),
        "holds": sorted((h.recording_id, h.released_at is None) for h in ledger.LegalHold.select()),
        "pending": ledger.PurgePending.select().count(),
        "store": d.store_files(),
        "spool": d.spool_files(),
    }


def history(d: DataDir) -> None:
    for age in (5, 30, 59, 61, 61, 62, 70, 80, 90, 200, 364, 366, 366, 400, 700):
        d.add_call(age=age * DAY, spool_plaintext=age == 62)
    for age in (100, 366):  # under hold: kept, and so are their calls' records
        _, rec = d.add_call(age=age * DAY)
        holds.add(rec.id, reason="aggression", case_ref=f"case-{age}", note=None, actor="officer")
    for age in (364, 365 + 30, 800):
        d.add_call(age=age * DAY, recording=None)


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs, an open transaction rolls back."""


def count_writes(d: DataDir) -> int:
    probe = d.copy_to(d.root.parent / "probe")
    calls = []
    original = Purge._write
    Purge._write = lambda self, work: (calls.append(1), original(self, work))[1]
    try:
        close_database()
        probe.open()
        run_purge(probe, batch_size=3)
    finally:
        Purge._write = original
        close_database()
        d.open()
    return len(calls)


@pytest.fixture
def twins(data, tmp_path):
    history(data)
    return data, data.copy_to(tmp_path / "twin")


def finish_like_uninterrupted(reference: DataDir, victim: DataDir) -> None:
    close_database()
    reference.open()
    run_purge(reference, batch_size=3)
    expected = snapshot(reference)
    close_database()
    victim.open()
    report = run_purge(victim, batch_size=3)  # the next run completes it
    assert snapshot(victim) == expected
    assert expected["pending"] == 0 and len(expected["store"]) == 3 + 2  # 5..59 days, and the two held
    assert report.interrupted_runs == [1]
    assert ledger.PurgeRun.get_by_id(1).status == "interrupted"


@pytest.mark.slow
def test_killed_inside_any_transaction_the_next_run_ends_as_an_uninterrupted_one(twins):
    reference, victim = twins
    writes = count_writes(victim)
    assert writes >= 8
    for kill_at in range(1, writes + 1):
        close_database()
        victim_copy = victim.copy_to(victim.root.parent / f"victim-{kill_at}")
        close_database()
        victim_copy.open()
        done = []
        original = Purge._write

        def write(self, work, kill_at=kill_at, done=done, original=original):
            done.append(1)
            if len(done) == kill_at:
                with ledger.database.atomic():
                    work()
                    raise Killed()  # mid-transaction: rolled back
            return original(self, work)

        Purge._write = write
        try:
            with pytest.raises(Killed):
                run_purge(victim_copy, batch_size=3)
        finally:
            Purge._write = original
        ref_copy = reference.copy_to(reference.root.parent / f"reference-{kill_at}")
        finish_like_uninterrupted(ref_copy, victim_copy)


@pytest.mark.slow
@pytest.mark.parametrize("files_removed", [0, 1, 2, 4, 7])
def test_killed_between_files_the_next_run_ends_as_an_uninterrupted_one(twins, files_removed):
    reference, victim = twins
    close_database()
    victim.open()
    removed = []
    original = victim.vault.delete

    def delete(recording_id, **kw):
        if len(removed) == files_removed:
            raise Killed()
        removed.append(recording_id)
        return original(recording_id, **kw)

    victim.vault.delete = delete
    with pytest.raises(Killed):
        run_purge(victim, batch_size=3)
    assert ledger.PurgePending.select().count() > 0  # what still has files is written down
    victim.open()  # a fresh process: the real Vault.delete again
    finish_like_uninterrupted(reference, victim)


# --- configuration and the timer --------------------------------------------------------


@pytest.mark.parametrize("text, days", [("60d", 60), ("12w", 84), ("1y", 365), ("36h", 1.5), ("1d", 1)])
def test_terms_are_written_like_60d_12w_1y(tmp_path, text, days):
    path = tmp_path / "c.toml"
    path.write_text(f'[retention]\nrecordings = "{text}"\ncall_records = "{text}"\n')
    config = load_config(path, env={"HOME": str(tmp_path)})
    assert config.retention.recordings == config.retention.call_records == days * 86400


def test_default_terms_are_the_statements():
    config = load_config(env={"HOME": "/nonexistent"})
    assert (config.retention.recordings, config.retention.call_records) == (60 * 86400, 365 * 86400)


@pytest.mark.parametrize("key, value, message", [
    ("recordings", '"12h"', "config key retention.recordings: a retention term must be at least 1d, got '12h'"),
    ("call_records", '"1 year"', "config key retention.call_records: expected a retention term like 60d, 12w or 1y"),
    ("recordings", "3600", "config key retention.recordings: a retention term must be at least 1d"),
    ("recordings", '"-5d"', "config key retention.recordings: expected a retention term like 60d"),
])
def test_a_term_under_a_day_or_unreadable_is_a_config_error(tmp_path, key, value, message):
    path = tmp_path / "c.toml"
    path.write_text(f"[retention]\n{key} = {value}\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, env={"HOME": str(tmp_path)})
    assert str(error.value).startswith(message)


def test_the_purge_timer_runs_daily_persistently_with_a_random_delay():
    timer = unit_settings(REPO / "scripts" / "fs-consent-purge.timer")
    assert timer["Timer"]["OnCalendar"] == ["daily"]
    assert timer["Timer"]["Persistent"] == ["true"]
    assert seconds(timer["Timer"]["RandomizedDelaySec"][-1]) >= 600
    assert timer["Timer"]["Unit"] == ["fs-consent-purge.service"]
    assert timer["Install"]["WantedBy"] == ["timers.target"]


# what only the server needs (it listens, notifies, is restarted, drains calls)
SERVER_ONLY = {"Type", "NotifyAccess", "WatchdogSec", "TimeoutStartSec", "TimeoutStopSec", "ExecStart", "Restart",
               "RestartSec", "KillSignal", "LimitNOFILE", "RuntimeDirectory", "RuntimeDirectoryMode",
               "RuntimeDirectoryPreserve", "RemoveIPC"}


def test_the_purge_service_runs_the_purge_as_the_server_runs_the_server():
    service = unit_settings(REPO / "scripts" / "fs-consent-purge.service")["Service"]
    server = unit_settings(REPO / "scripts" / "fs-consent.service")["Service"]
    assert service["Type"] == ["oneshot"]
    assert service["ExecStart"] == ["/opt/fs-consent/bin/fs-consent --config /etc/fs-consent/config.toml purge"]
    # same user, data dir and sandbox: whatever the server's unit says, the purge's says too
    for key, values in server.items():
        if key not in SERVER_ONLY:
            assert service.get(key) == values, key


@pytest.mark.slow
def test_a_terminal_gets_a_progress_bar_and_the_summary(data):
    import os
    import pty
    import subprocess
    import sys

    data.add_call(age=61 * DAY)
    master, slave = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "fs_consent.cli", "--data-dir", str(data.root), "purge",
                               "--as-of", AS_OF.isoformat()], stdout=slave, stderr=slave, timeout=60)
    finally:
        os.close(slave)
    output = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the other side is closed and drained
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    text = output.decode()
    assert proc.returncode == 0, text
    assert "purging" in text and "100%" in text
    assert "purge #1 as of 2027-06-01T12:00:00Z" in text and "deleted 1 recordings" in text
