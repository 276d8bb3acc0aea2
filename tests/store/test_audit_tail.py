"""Tamper evidence to the end of the trail (issue 11): checkpoints are due at start, every
N entries or T, and at shutdown; `audit verify` fails a trail that stops short of a due
checkpoint; a witness kept outside the data dir catches a cut that took the checkpoints
with it.

Every fault is made for real: a real server (in this process, or `fs-consent serve` in its
own, SIGKILLed), a real SQLite ledger cut with plain SQL as an intruder would, the real
command line.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import signal
import sqlite3
from pathlib import Path

import gevent
import pytest
from click.testing import CliRunner

from fs_consent.cli import main
from fs_consent.core.config import ConfigError, load_config
from fs_consent.core.logs import StructuredFormatter
from fs_consent.emulator import CallerScript
from fs_consent.runtime.server import ConsentServer
from fs_consent.secure import keys
from fs_consent.store import audit, ledger
from fs_consent.store.connection import close_database, open_database, sqlite_url

from ..e2e.test_e2e_process import ServerProcess, free_port, wait_for
from ..harness import Harness, fs_consent, make_config


def write_config(path: Path, **audit_values) -> Path:
    lines = ["[audit]"] + [f"{k} = {json.dumps(v)}" for k, v in audit_values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def harness(data: Path, config_file: Path | None = None) -> Harness:
    """The in-process server of tests/harness.py, on SQLite, with our config file."""
    h = Harness(data)
    h.config = make_config(data, config_file)
    h.server = ConsentServer(h.config, announce=lambda _m: None)
    return h


def verify(data: Path, *args: str, config_file: Path | None = None):
    pre = ["--config", str(config_file)] if config_file else []
    return CliRunner().invoke(main, [*pre, "--data-dir", str(data), "audit", "verify", *args],
                              catch_exceptions=False)


def sql(db: Path, query: str, *params):
    """An intruder's plain SQL on the ledger file."""
    with sqlite3.connect(db) as conn:
        return conn.execute(query, params).fetchall()


def trail(db: Path) -> list[tuple]:
    return sql(db, "SELECT seq, action, detail FROM audit_entry ORDER BY seq")


def two_calls(h: Harness) -> None:
    h.call(digits=[None])
    h.call(digits=["1"])


@pytest.fixture(autouse=True)
def _closed():
    yield
    close_database()


# --- what is signed when -----------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_is_a_start_record_then_startup_periodic_and_shutdown_checkpoints(tmp_path):
    config = write_config(tmp_path / "c.toml", checkpoint_every_entries=2, checkpoint_every="1h")
    with harness(tmp_path / "data", config) as h:
        h.server.checkpointer.poll = 0.02
        two_calls(h)
        gevent.sleep(0.2)  # a periodic checkpoint for the calls' entries
    db = tmp_path / "data" / "ledger.db"
    rows = trail(db)
    assert rows[0][1] == "server.start" and json.loads(rows[0][2])["previous"] == "none"
    reasons = [json.loads(d)["reason"] for _, a, d in rows if a == "audit.checkpoint"]
    assert reasons[0] == "startup" and reasons[-1] == "shutdown" and "periodic" in reasons[1:-1]
    assert rows[-1][1] == "audit.checkpoint"  # the shutdown checkpoint's record ends the trail
    out = verify(tmp_path / "data")
    assert out.exit_code == 0, out.output
    assert "server: stopped cleanly at seq" in out.output and "server state: stopped" in out.output


def test_audit_config_keys_are_checked(tmp_path):
    config = load_config(write_config(tmp_path / "c.toml", checkpoint_every="30s", checkpoint_grace="0s",
                                      witness_file="w/heads.jsonl"), env={"HOME": str(tmp_path)})
    assert (config.audit.checkpoint_every, config.audit.checkpoint_grace) == (30.0, 0.0)
    assert config.audit.witness_file == tmp_path / "w" / "heads.jsonl"  # relative to the config file
    defaults = load_config(env={"HOME": str(tmp_path)}).audit
    assert (defaults.checkpoint_every_entries, defaults.checkpoint_every, defaults.witness_file) == (1000, 300.0, None)
    for key, value in [("checkpoint_every", "0s"), ("checkpoint_every_entries", 0), ("witness_file", 3)]:
        with pytest.raises(ConfigError, match=f"config key audit.{key}"):
            load_config(write_config(tmp_path / "bad.toml", **{key: value}), env={"HOME": str(tmp_path)})


# --- (a) the server stopped: its last run must end with a shutdown checkpoint ------------------


@pytest.mark.slow
def test_a_clean_trail_verifies(tmp_path):
    witness = tmp_path / "witness" / "heads.jsonl"
    witness.parent.mkdir()
    config = write_config(tmp_path / "c.toml", witness_file=str(witness))
    with harness(tmp_path / "data", config) as h:
        two_calls(h)
        running = verify(tmp_path / "data", "--witness", str(witness))
    assert running.exit_code == 0, running.output
    assert "server: running since seq 1" in running.output and "server state: running" in running.output
    out = verify(tmp_path / "data", "--witness", str(witness))
    assert out.exit_code == 0, out.output
    assert "the whole trail is signed" in out.output and "server: stopped cleanly" in out.output
    assert "witness: 2 checkpoint heads up to seq" in out.output and "every one in the trail" in out.output
    heads = [json.loads(line) for line in witness.read_text().splitlines()]
    rows = sql(tmp_path / "data" / "ledger.db", "SELECT id, seq, head_hash, signature FROM audit_checkpoint ORDER BY id")
    assert [(w["checkpoint"], w["seq"], w["hash"], w["signature"]) for w in heads] == rows
    assert [w["reason"] for w in heads] == ["startup", "shutdown"]
    assert oct(witness.stat().st_mode & 0o777) == "0o640"


@pytest.mark.slow
@pytest.mark.parametrize("cut", ["the shutdown record", "two rows and the shutdown checkpoint"])
def test_a_tail_cut_after_a_clean_stop_fails(tmp_path, cut):
    """Before issue 11 both cuts verified (exit 0): nothing was due after the last checkpoint."""
    with harness(tmp_path / "data") as h:
        two_calls(h)
    db = tmp_path / "data" / "ledger.db"
    assert verify(tmp_path / "data").exit_code == 0
    (last,) = sql(db, "SELECT MAX(seq) FROM audit_entry")[0]
    if cut == "the shutdown record":
        sql(db, "DELETE FROM audit_entry WHERE seq = ?", last)
    else:
        sql(db, "DELETE FROM audit_entry WHERE seq >= ?", last - 1)
        sql(db, "DELETE FROM audit_checkpoint WHERE seq >= ?", last - 1)
    out = verify(tmp_path / "data")
    assert out.exit_code == 1, out.output
    assert "unclean-stop: the server is not running, but its run started at seq 1" in out.output
    assert "has no shutdown checkpoint" in out.output and "or the trail was cut" in out.output
    if cut == "the shutdown record":
        assert f"seq {last}: missing: entry {last}, the record of checkpoint" in out.output


def test_a_cut_right_after_the_last_checkpoint_is_found_without_a_server(tmp_path):
    """Any trail, even one no server wrote: a checkpoint and its record are written together."""
    data = tmp_path / "data"
    keys.init_keys(data / "keys")
    open_database(sqlite_url(data / "ledger.db"))
    for n in range(5):
        ledger.append_audit("tester", "recording.seal", "recording", f"rec-{n}")
    audit.write_checkpoint(keys.load_signing_key(data / "keys"), "tester")
    close_database()
    assert verify(data).exit_code == 0
    sql(data / "ledger.db", "DELETE FROM audit_entry WHERE seq = 6")
    out = verify(data)
    assert out.exit_code == 1 and "seq 6: missing: entry 6, the record of checkpoint #1 (seq 5)" in out.output


# --- (c) a cut back to an earlier clean stop, checkpoints included: the witness ---------------


def two_runs_then_cut(tmp_path) -> tuple[Path, Path, list[logging.LogRecord], int]:
    """Two clean runs, witnessed; then everything after the first run's shutdown is cut."""
    witness = tmp_path / "heads.jsonl"
    config = write_config(tmp_path / "c.toml", witness_file=str(witness))
    journal: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = journal.append
    logging.getLogger("fs_consent.store.audit").addHandler(handler)
    logging.getLogger("fs_consent.store.audit").setLevel(logging.INFO)
    try:
        with harness(tmp_path / "data", config) as h:
            two_calls(h)
        db = tmp_path / "data" / "ledger.db"
        (first_run_end,) = sql(db, "SELECT MAX(seq) FROM audit_entry")[0]
        with harness(tmp_path / "data", config) as h:
            two_calls(h)
    finally:
        logging.getLogger("fs_consent.store.audit").removeHandler(handler)
    assert verify(tmp_path / "data", "--witness", str(witness)).exit_code == 0
    sql(db, "DELETE FROM audit_entry WHERE seq > ?", first_run_end)
    sql(db, "DELETE FROM audit_checkpoint WHERE seq >= ?", first_run_end)
    return db, witness, journal, first_run_end


@pytest.mark.slow
def test_a_cut_back_to_an_earlier_clean_stop_is_caught_by_the_witness(tmp_path):
    db, witness, journal, end = two_runs_then_cut(tmp_path)
    plain = verify(tmp_path / "data")
    assert plain.exit_code == 0, plain.output  # the documented limit: it looks like the first run's clean stop
    assert f"server: stopped cleanly at seq {end}" in plain.output
    out = verify(tmp_path / "data", "--witness", str(witness))
    assert out.exit_code == 1, out.output
    assert f"seq {end + 1}: witness-missing: entries {end + 1}.." in out.output and "are missing" in out.output
    assert f"the trail ends at seq {end}, but the witness has 2 checkpoint(s) after it" in out.output
    assert "(shutdown, signed" in out.output and f"[{witness}:4]" in out.output
    # the journal lines say the same, in either log format, with or without journalctl's prefix
    for fmt in ("kv", "json"):
        lines = [StructuredFormatter(fmt, journald=False).format(r) for r in journal if "checkpoint" in r.getMessage()]
        assert len(lines) == 4 and all("personal" not in line for line in lines)
        extract = tmp_path / f"journal.{fmt}"
        extract.write_text("".join(f"Dec 01 10:00:00 pbx fs-consent[42]: {line}\nunrelated line\n" for line in lines))
        out = verify(tmp_path / "data", "--witness", str(extract))
        assert out.exit_code == 1 and "witness-missing" in out.output, out.output


@pytest.mark.slow
def test_a_recomputed_and_resigned_tail_is_caught_by_the_witness(tmp_path):
    """An intruder with the server's own signing key rewrites the second run and signs it
    again: the trail is consistent, only the witness still knows the real heads."""
    db, witness, _journal, end = two_runs_then_cut(tmp_path)
    open_database(sqlite_url(db))
    key = keys.load_signing_key(tmp_path / "data" / "keys")
    start = audit.record_server_start()
    ledger.append_audit("server", "consent.decision", "call", "forged", outcome="refused", by="key")
    audit.write_checkpoint(key, "server", "startup")
    audit.write_checkpoint(key, "server", "shutdown")
    close_database()
    assert verify(tmp_path / "data").exit_code == 0
    out = verify(tmp_path / "data", "--witness", str(witness))
    assert out.exit_code == 1, out.output
    assert f"seq {start.seq}: witness-rewritten: entry {start.seq} is not the one the witnessed checkpoint" \
        in out.output  # the real start record of the second run was signed by its startup checkpoint


@pytest.mark.slow
def test_a_manual_checkpoint_is_witnessed_and_signs_what_commands_added(tmp_path):
    witness = tmp_path / "heads.jsonl"
    config = write_config(tmp_path / "c.toml", witness_file=str(witness))
    with harness(tmp_path / "data", config) as h:
        two_calls(h)
    runner = CliRunner()
    base = ["--config", str(config), "--data-dir", str(tmp_path / "data")]
    assert runner.invoke(main, [*base, "report", "--format", "json"]).exit_code == 0  # audited: report.generate
    out = verify(tmp_path / "data", config_file=config)
    assert out.exit_code == 0 and "1 later entries, added by commands, are protected by the chain only" in out.output
    assert runner.invoke(main, [*base, "audit", "checkpoint"]).exit_code == 0
    assert json.loads(witness.read_text().splitlines()[-1])["reason"] == "manual"
    out = verify(tmp_path / "data", "--witness", str(witness), config_file=config)
    assert out.exit_code == 0 and "the whole trail is signed" in out.output and "server: stopped cleanly" in out.output


@pytest.mark.slow
def test_a_forged_or_unreadable_witness_is_named(tmp_path):
    witness = tmp_path / "heads.jsonl"
    with harness(tmp_path / "data", write_config(tmp_path / "c.toml", witness_file=str(witness))) as h:
        two_calls(h)
    lines = witness.read_text().splitlines()
    forged = json.loads(lines[0])
    forged["signature"] = base64.b64encode(b"\0" * 64).decode()
    (tmp_path / "forged.jsonl").write_text(json.dumps(forged) + "\n" + lines[1] + "\n")
    out = verify(tmp_path / "data", "--witness", str(tmp_path / "forged.jsonl"))
    assert out.exit_code == 1 and "witness-forged" in out.output and "forged.jsonl:1" in out.output
    (tmp_path / "bad.jsonl").write_text(lines[0] + "\n" + '{"format":"fs-consent-audit-witness/1","seq":"x"}\n')
    out = verify(tmp_path / "data", "--witness", str(tmp_path / "bad.jsonl"))
    assert out.exit_code == 2 and "bad.jsonl:2" in out.output


# --- (b) a running server: a due checkpoint may be late by the grace, no more -----------------


@pytest.mark.slow
def test_a_running_server_that_stops_signing_is_overdue(tmp_path):
    """Its signing key became unusable (loose permissions): it runs, calls go on, nothing is signed."""
    config = write_config(tmp_path / "c.toml", checkpoint_every_entries=3, checkpoint_grace="0s")
    data = tmp_path / "data"
    keys.init_keys(data / "keys")
    public = keys.signing_public_key(keys.load_signing_key(data / "keys"))
    os.chmod(data / "keys" / keys.SIGNING_KEY_FILE, 0o640)
    with harness(data, config) as h:
        two_calls(h)
        out = fs_consent(h, "--config", str(config), "audit", "verify", "--public-key", public)
        assert out.returncode == 1, out.stdout + out.stderr
        assert "overdue: " in out.stdout and "a checkpoint was due by" in out.stdout
        assert "the server is not signing" in out.stdout and "server state: running" in out.stdout


@pytest.mark.slow
def test_due_rules_by_the_clock(tmp_path):
    """A running server's trail, checked as of later: past T (plus grace) with entries after the
    last checkpoint, or N entries after it, is overdue; an idle trail never is."""
    config = write_config(tmp_path / "c.toml", checkpoint_every="10m", checkpoint_every_entries=1000)
    with harness(tmp_path / "data", config) as h:
        trusted = audit.trusted_keys(Path(h.config.storage.keys_dir))
        now = ledger.utcnow()
        policy = audit.DuePolicy(every_entries=1000, every_seconds=600, grace=60)
        assert audit.verify_trail(trusted, policy=policy, server_state="running",
                                  now=now + dt.timedelta(hours=5)).ok  # idle: only the startup checkpoint's record
        two_calls(h)
        now = ledger.utcnow()
        ok = audit.verify_trail(trusted, policy=policy, server_state="running", now=now)
        assert ok.ok and "the next is due by" in ok.server
        late = audit.verify_trail(trusted, policy=policy, server_state="running", now=now + dt.timedelta(minutes=12))
        assert [f.kind for f in late.faults] == ["overdue"] and "every 10m while anything is new" in str(late.faults[0])
        within_grace = now + dt.timedelta(minutes=10, seconds=30)
        assert audit.verify_trail(trusted, policy=policy, server_state="running", now=within_grace).ok
        many = audit.verify_trail(trusted, policy=audit.DuePolicy(every_entries=3, every_seconds=600, grace=0),
                                  server_state="running", now=ledger.utcnow())
        assert [f.kind for f in many.faults] == ["overdue"] and "every 3 entries" in str(many.faults[0])
        unknown = audit.verify_trail(trusted, policy=policy, now=now + dt.timedelta(minutes=12))
        assert [f.kind for f in unknown.faults] == ["overdue"]  # the server's state unknown: the clock still counts


@pytest.mark.slow
def test_a_running_server_whose_trail_was_cut_back_to_a_clean_stop(tmp_path):
    with harness(tmp_path / "data") as h:
        two_calls(h)
    db = tmp_path / "data" / "ledger.db"
    (end,) = sql(db, "SELECT MAX(seq) FROM audit_entry")[0]
    with harness(tmp_path / "data") as h:
        two_calls(h)
        sql(db, "DELETE FROM audit_entry WHERE seq > ?", end)  # while it runs: its start record goes too
        sql(db, "DELETE FROM audit_checkpoint WHERE seq >= ?", end)
        out = fs_consent(h, "audit", "verify")
        assert out.returncode == 1, out.stdout
        assert "cut: the server is running, but there is no start record after its last shutdown checkpoint" \
               in out.stdout


def test_a_start_that_hides_an_unclean_stop_is_a_fault(tmp_path):
    data = tmp_path / "data"
    keys.init_keys(data / "keys")
    open_database(sqlite_url(data / "ledger.db"))
    key = keys.load_signing_key(data / "keys")
    audit.record_server_start()
    audit.write_checkpoint(key, "server", "startup")
    ledger.append_audit("server", "consent.decision", "call", "c-1", outcome="granted", by="silence")
    # no shutdown checkpoint: the run crashed; the next start record lies about it
    ledger.append_audit("server", "server.start", "server", "1", previous="clean")
    audit.write_checkpoint(key, "server", "startup")
    audit.write_checkpoint(key, "server", "shutdown")
    result = audit.verify_trail({keys.signing_public_key(key)}, server_state="stopped")
    assert [(f.seq, f.kind) for f in result.faults] == [(4, "unclean-stop")]
    assert "says the stop before it was 'clean'" in result.faults[0].message


# --- a crash: SIGKILL of `fs-consent serve`, then a restart ------------------------------------


@pytest.fixture
def server(tmp_path):
    srv = ServerProcess(tmp_path, free_port())
    srv.witness = tmp_path / "heads.jsonl"
    srv.env["FS_CONSENT_CONFIG"] = str(write_config(tmp_path / "c.toml", witness_file=str(srv.witness)))
    yield srv
    if srv.proc is not None and srv.proc.poll() is None:
        srv.proc.kill()
        srv.proc.wait()


@pytest.mark.slow
def test_a_crash_fails_until_the_restart_records_it(server, tmp_path):
    journal = server.start()
    result = server.emulator().place_call(CallerScript(digits=[None], talk_seconds=0.3), timeout=30)
    assert result.errors == []
    wait_for(lambda: not any((server.data / "spool").iterdir()))
    db = server.data / "ledger.db"
    wait_for(lambda: any(a == "recording.seal" for _, a, _d in trail(db)))
    server.stop(signal.SIGKILL)
    journal += server.proc.stderr.read()

    crashed = server.cli("audit", "verify", "--witness", str(server.witness), check=False)
    assert crashed.returncode == 1, crashed.stdout
    assert "unclean-stop: the server is not running, but its run started at seq 1" in crashed.stdout
    assert "are not signed: the server crashed or was killed" in crashed.stdout
    assert "witness-" not in crashed.stdout  # the witness agrees: no signed head is missing
    (unsigned_end,) = sql(db, "SELECT MAX(seq) FROM audit_entry")[0]

    journal += server.start()
    assert "ended without a shutdown checkpoint" in journal
    restarted = server.cli("audit", "verify", "--witness", str(server.witness))
    assert "OK: " in restarted.stdout and "server: running since seq" in restarted.stdout
    assert "note: the run started at seq 1" in restarted.stdout and "recorded the unclean stop" in restarted.stdout
    ((start,),) = sql(db, "SELECT detail FROM audit_entry WHERE seq = ?", unsigned_end + 1)
    start = json.loads(start)
    assert (start["previous"], start["previous_start"], start["head_seq"]) == ("unclean", 1, unsigned_end)
    assert start["unsigned"] >= 2 and start["last_checkpoint"]["reason"] == "startup"

    assert server.stop() == 0
    journal += server.proc.stderr.read()
    stopped = server.cli("audit", "verify", "--witness", str(server.witness))
    assert "server: stopped cleanly" in stopped.stdout and "note: the run started at seq 1" in stopped.stdout
    extract = tmp_path / "journal.txt"  # what a sysadmin greps from the journal
    extract.write_text("".join(line + "\n" for line in journal.splitlines() if audit.WITNESS_FORMAT in line))
    assert len(extract.read_text().splitlines()) == 3  # startup, startup, shutdown
    assert server.cli("audit", "verify", "--witness", str(extract)).returncode == 0
