"""``fs-consent compliance``: each check, and a test per check that breaks exactly that
promise and sees it reported (and only it). Real keys, real age files, real SQLite.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pyrage
import pytest
from click.testing import CliRunner

from fs_consent.cli import main
from fs_consent.reports.compliance import CHECKS, Options, run_checks
from fs_consent.secure import keys, spool
from fs_consent.secure.age_header import HeaderOpener, read_age_header
from fs_consent.secure.seal_worker import seal_file
from fs_consent.store import audit, ledger
from fs_consent.store.connection import close_database, open_database

from ..harness import Harness, make_config

DAY = dt.timedelta(days=1)


class WithRetention:
    """The configuration with a ``[retention]`` section of our choosing."""

    def __init__(self, config, **terms):
        self._config = config
        self.retention = SimpleNamespace(**terms)

    def __getattr__(self, name):
        return getattr(self._config, name)


class Site:
    """An installation with one recent call whose recording is sealed, and a signed trail."""

    def __init__(self, data: Path):
        self.data = data
        self.config = make_config(data)
        s = self.config.storage
        self.keys_dir, self.store, self.spool = Path(s.keys_dir), Path(s.store_dir), Path(s.spool_dir)
        keys.init_keys(self.keys_dir)
        open_database(s.database)
        spool.prepare_spool(self.spool)
        self.store.mkdir(mode=0o700)
        self.now = ledger.utcnow()
        self.call = self.add_call(self.now - dt.timedelta(minutes=10))
        self.rec_id = self.add_recording(self.call)
        audit.write_checkpoint(keys.load_signing_key(self.keys_dir), "tester")

    def add_call(self, started: dt.datetime, *, ended: bool = True, caller: bool = True) -> ledger.Call:
        call = ledger.Call.create(
            uuid=str(uuid.uuid4()), started_at=started, ended_at=started + dt.timedelta(minutes=4) if ended else None,
            consent_mode="opt-out", language="nl", prompt_id="consent-nl", prompt_version="1",
            outcome="granted", decided_by="silence", caller_hash="ab" * 16 if caller else None)
        ledger.append_audit("server", "consent.decision", "call", call.uuid, outcome="granted")
        return call

    def add_recording(self, call, recipients: list[str] | None = None) -> str:
        rec_id = uuid.uuid4().hex
        wav = spool.recording_path(self.spool, rec_id)
        wav.write_bytes(b"RIFF" + os.urandom(5000))
        sealed = seal_file(wav, self.store / f"{rec_id}.age", recipients or keys.load_recipients(self.keys_dir))
        ledger.Recording.create(id=rec_id, call=call, state=ledger.SEALED, started_at=call.started_at,
                                sealed_at=call.ended_at, size=sealed.size, sha256=sealed.sha256)
        ledger.append_audit("server", "recording.seal", "recording", rec_id, size=sealed.size)
        return rec_id

    def check(self, config=None, **options) -> dict:
        return {r.name: r for r in run_checks(config or self.config, Options(**options))}

    def cli(self, *args: str):
        return CliRunner().invoke(main, ["--data-dir", str(self.data), "compliance", *args])


def failing(results: dict) -> set[str]:
    return {name for name, r in results.items() if not r.ok}


@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path / "data")
    yield s
    close_database()


def test_a_compliant_installation_passes_every_check(site):
    results = site.check()
    assert list(results) == [name for name, _check in CHECKS]
    assert failing(results) == set(), [r.line() for r in results.values()]
    assert "headers open for a configured recipient" in results["recordings.encrypted"].detail
    out = site.cli()
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert len(lines) == len(CHECKS) and all(re.fullmatch(r"OK [a-z.]+: .+", line) for line in lines)


def test_retention_terms_longer_than_the_statement(site):
    longer = WithRetention(site.config, recordings=90 * 86400.0, call_records=365 * 86400.0)
    results = site.check(longer)
    assert failing(results) == {"retention.terms"}
    assert "recordings 90d exceeds the statement's 60d" in results["retention.terms"].detail
    shorter = WithRetention(site.config, recordings="30d", calls="180d")
    assert failing(site.check(shorter)) == set()


def test_a_recording_kept_past_its_term(site):
    started = site.now - 61 * DAY
    ledger.Recording.update(started_at=started).where(ledger.Recording.id == site.rec_id).execute()
    results = site.check()
    assert failing(results) == {"retention.recordings"}
    assert f"recording {site.rec_id} (61.0 days old)" in results["retention.recordings"].detail
    # a shorter configured term makes a younger recording late too
    ledger.Recording.update(started_at=site.now - 40 * DAY).where(ledger.Recording.id == site.rec_id).execute()
    assert failing(site.check()) == set()
    assert failing(site.check(WithRetention(site.config, recordings="30d"))) == {"retention.recordings"}
    # the purge timer's period may be allowed for
    assert failing(site.check(WithRetention(site.config, recordings="30d"), retention_grace=11 * 86400.0)) == set()


@pytest.mark.skipif(not hasattr(ledger, "LegalHold"), reason="legal holds (issue 3) are not in the ledger yet")
def test_a_recording_under_legal_hold_is_not_late(site):
    ledger.Recording.update(started_at=site.now - 61 * DAY).where(ledger.Recording.id == site.rec_id).execute()
    hold = ledger.LegalHold.create(recording=site.rec_id, call=site.call, reason="aggression", case_ref="PV-1",
                                   placed_at=site.now, placed_by="officer")
    results = site.check()
    assert failing(results) == set() and "1 held recording(s) exempt" in results["retention.recordings"].detail
    hold.released_at = site.now
    hold.save()
    assert failing(site.check()) == {"retention.recordings"}


def test_call_data_kept_past_its_term(site):
    old = site.add_call(site.now - 400 * DAY)
    results = site.check()
    assert failing(results) == {"retention.calls"}
    assert f"call {old.uuid}" in results["retention.calls"].detail
    # erasing its personal fields is what the term requires; the anonymous rest may stay
    ledger.Call.update(caller_hash=None, caller_sealed=None).where(ledger.Call.id == old.id).execute()
    assert failing(site.check()) == set()


def test_a_recording_not_sealed_to_a_configured_recipient(site):
    stranger = pyrage.x25519.Identity.generate()
    path = site.store / f"{site.rec_id}.age"
    path.unlink()
    plain = site.spool / "x.wav"
    plain.write_bytes(b"RIFF" + os.urandom(5000))
    sealed = seal_file(plain, path, [str(stranger.to_public())])
    ledger.Recording.update(size=sealed.size).where(ledger.Recording.id == site.rec_id).execute()
    results = site.check()
    assert failing(results) == {"recordings.encrypted"}
    assert "not sealed to this recipient" in results["recordings.encrypted"].detail


def test_a_stored_recording_that_is_plaintext(site):
    path = site.store / f"{site.rec_id}.age"
    size = path.stat().st_size
    path.write_bytes(b"RIFF" + os.urandom(size - 4))  # same size as the ledger says
    results = site.check()
    assert failing(results) == {"recordings.encrypted"}
    assert "not an age v1 file" in results["recordings.encrypted"].detail


def test_a_stored_recording_whose_file_is_gone(site):
    (site.store / f"{site.rec_id}.age").unlink()
    results = site.check()
    assert failing(results) == {"recordings.encrypted"}
    assert "missing from the store" in results["recordings.encrypted"].detail


def test_an_altered_header_fails_its_mac(site):
    path = site.store / f"{site.rec_id}.age"
    data = path.read_bytes()
    header = read_age_header(path)
    assert HeaderOpener(str(keys.load_identity(site.keys_dir))).file_key(header)
    extra = b"-> extra-stanza\n\n"  # a stanza slipped in: the file key still unwraps, the MAC fails
    end = data.index(b"\n---") + 1
    path.write_bytes(data[:end] + extra + data[end:])
    ledger.Recording.update(size=len(data) + len(extra)).where(ledger.Recording.id == site.rec_id).execute()
    results = site.check()
    assert failing(results) == {"recordings.encrypted"}
    assert "header MAC does not match" in results["recordings.encrypted"].detail


def test_write_only_server_checks_structure_or_takes_an_identity(site, tmp_path):
    offline = tmp_path / "offline-identity.txt"
    os.rename(site.keys_dir / keys.IDENTITY_FILE, offline)
    results = site.check()
    assert failing(results) == set() and "header structure checked only" in results["recordings.encrypted"].detail
    results = site.check(identity=offline)
    assert failing(results) == set() and "headers open" in results["recordings.encrypted"].detail


def test_ciphertext_of_a_deleted_recording_remains(site):
    ledger.Recording.update(state=ledger.DELETED, state_reason="withdrawn").where(
        ledger.Recording.id == site.rec_id).execute()
    results = site.check()
    assert failing(results) == {"recordings.deleted"}
    assert f"recording {site.rec_id} is deleted but its ciphertext remains" in results["recordings.deleted"].detail


def test_ciphertext_an_interrupted_purge_left_names_the_purge_that_finishes_it(site):
    run = ledger.PurgeRun.create(started_at=site.now, actor="root", as_of=site.now, status="interrupted")
    ledger.Recording.update(state=ledger.DELETED, state_reason="retention").where(
        ledger.Recording.id == site.rec_id).execute()
    ledger.PurgePending.create(recording=site.rec_id, run=run, batch=1)
    results = site.check()
    assert failing(results) == {"recordings.deleted"}
    assert (f"recording {site.rec_id} was purged but an interrupted purge left its ciphertext: "
            "`fs-consent purge` removes it") in results["recordings.deleted"].detail
    done = CliRunner().invoke(main, ["--data-dir", str(site.data), "purge"])
    assert done.exit_code == 0, done.output
    assert failing(site.check()) == set()


def test_plaintext_left_in_the_spool(site):
    stale = spool.recording_path(site.spool, uuid.uuid4().hex)
    stale.write_bytes(b"RIFF")
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    results = site.check()
    assert failing(results) == {"spool.plaintext"}
    assert stale.name[:-4] in results["spool.plaintext"].detail
    # while a call has lasted longer than that, the file may be its recording
    site.add_call(site.now - dt.timedelta(hours=2), ended=False)
    assert failing(site.check()) == set()


def test_a_key_file_open_to_others(site):
    os.chmod(site.keys_dir / keys.FIELD_KEY_FILE, 0o640)
    results = site.check()
    assert failing(results) == {"keys.permissions"}
    assert "field.key is accessible by group/others" in results["keys.permissions"].detail
    out = site.cli()
    assert out.exit_code == 1 and "FAIL keys.permissions: " in out.output
    assert all(re.fullmatch(r"(OK|FAIL) [a-z.]+: .+", line) for line in out.output.splitlines())


def test_an_ended_call_without_an_outcome_fails_and_restarts_are_counted(site):
    call = site.add_call(dt.datetime(2026, 11, 3, 9, 0))
    results = site.check()
    assert results["calls.outcome"].ok
    assert results["calls.outcome"].detail == ("every ended call has an outcome; "
                                               "0 ended by a restart of fs-consent (outcome error, not recorded)")
    ledger.Call.update(outcome="error", decided_by="restart").where(ledger.Call.id == call.id).execute()
    assert site.check()["calls.outcome"].detail.endswith("; 1 ended by a restart of fs-consent "
                                                          "(outcome error, not recorded)")
    ledger.Call.update(outcome=None).where(ledger.Call.id == call.id).execute()
    results = site.check()
    assert failing(results) == {"calls.outcome"}
    assert results["calls.outcome"].detail.startswith("1 ended call(s) without an outcome")
    assert site.cli().exit_code == 1


def test_a_tampered_audit_trail(site):
    ledger.database.execute_sql("DELETE FROM audit_entry WHERE seq = 2")
    results = site.check()
    assert failing(results) == {"audit.chain"}
    assert "first bad entry: seq 2: missing" in results["audit.chain"].detail
    assert site.cli().exit_code == 1


def test_a_subject_request_undecided_past_its_due_date(site):
    from fs_consent.privacy import subject_requests as requests

    today = site.now.replace(tzinfo=dt.timezone.utc).astimezone().date()  # due dates are local days
    requests.add("R-recent", "access", today - 20 * DAY, actor="officer", today=today)
    assert failing(site.check()) == set()
    received = today - 70 * DAY
    due = requests.due_date(received)
    requests.add("R-late", "erase", received, actor="officer", today=today)
    results = site.check()
    assert failing(results) == {"requests.due"}
    assert results["requests.due"].detail == (f"1 undecided past the due date: request R-late (erase, due "
                                              f"{due.isoformat()}, {(today - due).days} day(s) overdue)")
    out = site.cli()
    assert out.exit_code == 1 and "FAIL requests.due: " in out.output
    requests.extend("R-late", "many recordings to review", actor="officer", today=today)  # two more months
    results = site.check()
    assert failing(results) == set()
    assert results["requests.due"].detail == f"2 undecided request(s), none past its due date on {today}"
    requests.add("R-decided", "erase", today - 100 * DAY, actor="officer", today=today)
    assert failing(site.check()) == {"requests.due"}
    requests.decide("R-decided", "refused", "kept for a legal claim", actor="officer", today=today)  # late
    assert failing(site.check()) == set()


@pytest.mark.slow
def test_after_real_calls_everything_complies(tmp_path):
    with Harness(tmp_path / "data") as h:
        h.call(digits=[None])
        h.call(digits=["1"], caller_number="0622223333")  # another number: no callback withdrawal
        h.call(digits=[None], caller_keys=[(0.05, "*1")], talk_seconds=0.3)
        results = {r.name: r for r in run_checks(h.config)}
    assert failing(results) == set(), [r.line() for r in results.values()]
    assert results["recordings.encrypted"].detail.startswith("1 stored recordings are age files")
