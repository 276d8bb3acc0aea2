"""The audit trail: tampering of every kind is found and the first bad entry named; the
export verifies with an independent checker that follows the README's rule; start-up,
keys init and the server's checkpoints append what they should; no personal data.

Real SQLite files, real keys; tampering is done with plain SQL, as an intruder would.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
from dataclasses import replace
from pathlib import Path

import gevent
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fs_consent.cli import main
from fs_consent.runtime.server import ConsentServer
from fs_consent.secure import keys
from fs_consent.store import audit, ledger
from fs_consent.store.connection import close_database, open_database, sqlite_url
from fs_consent.store.writer import LedgerWriter

from ..harness import Harness, make_config


def sql(query: str, *params):
    return ledger.database.execute_sql(query, params)


class Trail:
    """seq 1..12, checkpoint (covers 12, recorded as 13), 14..24, checkpoint (24; 25), 26..30."""

    def __init__(self, data: Path):
        self.data = data
        self.config = make_config(data)
        self.keys_dir = Path(self.config.storage.keys_dir)
        keys.init_keys(self.keys_dir)
        self.key = keys.load_signing_key(self.keys_dir)
        self.public = keys.signing_public_key(self.key)
        open_database(self.config.storage.database)
        for n in range(1, 31):
            if n in (13, 25):
                audit.write_checkpoint(self.key, "auditor")
            else:
                ledger.append_audit("server", "recording.seal", "recording", f"rec-{n}", n=n, note="café \"x\"\n")

    def verify(self, **kwargs) -> audit.Verification:
        return audit.verify_trail({self.public}, **kwargs)

    def row(self, seq: int) -> tuple:
        return sql("SELECT seq, at, actor, action, object_type, object_id, detail, prev_hash, hash "
                   "FROM audit_entry WHERE seq = ?", seq).fetchone()

    def cli(self, *args: str):
        return CliRunner().invoke(main, ["--data-dir", str(self.data), *args], catch_exceptions=False)


@pytest.fixture
def trail(tmp_path):
    t = Trail(tmp_path / "data")
    yield t
    close_database()


def test_an_untouched_trail_verifies(trail):
    result = trail.verify()
    assert result.ok, result.faults
    assert (result.entries, result.first_seq, result.last_seq) == (30, 1, 30)
    assert (result.checkpoints, result.last_checkpoint_seq) == (2, 24)
    out = trail.cli("audit", "verify")
    assert out.exit_code == 0 and out.output.startswith("OK: 30 entries"), out.output


@pytest.mark.parametrize("column, value", [
    ("detail", '{"n":7,"note":"nothing to see"}'), ("actor", "mallory"), ("action", "recording.export"),
    ("object_id", "rec-99"), ("at", "2026-01-01 00:00:00.000001"), ("prev_hash", "1" * 64),
])
def test_an_edited_field_is_named(trail, column, value):
    sql(f"UPDATE audit_entry SET {column} = ? WHERE seq = 7", value)
    result = trail.verify()
    assert not result.ok
    assert (result.first_bad.seq, result.first_bad.kind) == (7, "edited")
    out = trail.cli("audit", "verify")
    assert out.exit_code == 1
    assert "FAIL: first bad entry: seq 7: edited" in out.output


def test_an_edited_entry_with_a_recomputed_hash_is_named(trail):
    seq, at, actor, action, otype, oid, detail, prev, _ = trail.row(7)
    new = ledger.entry_digest(prev, audit.dt.datetime.fromisoformat(at), "mallory", action, otype, oid, detail)
    sql("UPDATE audit_entry SET actor = 'mallory', hash = ? WHERE seq = 7", new)
    result = trail.verify()
    assert (result.first_bad.seq, result.first_bad.kind) == (7, "broken-link")
    assert "entry 7 was rewritten" in result.first_bad.message


def test_a_deleted_entry_is_named(trail):
    sql("DELETE FROM audit_entry WHERE seq = 7")
    result = trail.verify()
    assert (result.first_bad.seq, result.first_bad.kind) == (7, "missing")
    out = trail.cli("audit", "verify")
    assert out.exit_code == 1 and "first bad entry: seq 7: missing: entry 7 is missing" in out.output


def test_two_swapped_entries_are_named(trail):
    a, b = trail.row(7), trail.row(8)
    cols = "at = ?, actor = ?, action = ?, object_type = ?, object_id = ?, detail = ?, prev_hash = ?, hash = ?"
    sql(f"UPDATE audit_entry SET {cols} WHERE seq = 7", *b[1:])
    sql(f"UPDATE audit_entry SET {cols} WHERE seq = 8", *a[1:])
    result = trail.verify()
    assert (result.first_bad.seq, result.first_bad.kind) == (7, "reordered")


def test_an_inserted_entry_is_named(trail):
    # make room at 7 (as an intruder would: renumber what follows), then a well-formed forgery
    sql("UPDATE audit_entry SET seq = seq + 1000 WHERE seq >= 7")
    sql("UPDATE audit_entry SET seq = seq - 999 WHERE seq >= 1000")
    prev = trail.row(6)[8]
    at = audit.dt.datetime(2026, 11, 1, 12, 0)
    detail = '{"reason":"forged"}'
    forged = ledger.entry_digest(prev, at, "server", "recording.delete", "recording", "rec-x", detail)
    sql("INSERT INTO audit_entry (seq, at, actor, action, object_type, object_id, detail, prev_hash, hash) "
        "VALUES (7, ?, 'server', 'recording.delete', 'recording', 'rec-x', ?, ?, ?)", str(at), detail, prev, forged)
    result = trail.verify()
    assert (result.first_bad.seq, result.first_bad.kind) == (7, "inserted"), result.faults
    assert trail.cli("audit", "verify").exit_code == 1


def test_a_cut_off_tail_is_named(trail):
    sql("DELETE FROM audit_entry WHERE seq >= 20")
    result = trail.verify()
    assert (result.first_bad.seq, result.first_bad.kind) == (20, "missing")
    assert "entries 20..24 are missing" in result.first_bad.message
    out = trail.cli("audit", "verify")
    assert out.exit_code == 1 and "first bad entry: seq 20" in out.output


def test_a_recomputed_chain_no_longer_reaches_the_signed_head(trail):
    sql("UPDATE audit_entry SET detail = '{\"n\":7}' WHERE seq = 7")
    prev = trail.row(6)[8]
    for seq in range(7, 31):
        row = trail.row(seq)
        new = ledger.entry_digest(prev, audit.dt.datetime.fromisoformat(row[1]), *row[2:7])
        sql("UPDATE audit_entry SET prev_hash = ?, hash = ? WHERE seq = ?", prev, new, seq)
        prev = new
    result = trail.verify()
    assert (result.first_bad.seq, result.first_bad.kind) == (12, "rewritten")
    assert "from entry 1 to 12 was rewritten" in result.first_bad.message


def test_a_forged_or_foreign_checkpoint_is_found(trail):
    sql("UPDATE audit_checkpoint SET head_hash = ? WHERE seq = 12", "2" * 64)
    assert (trail.verify().first_bad.seq, trail.verify().first_bad.kind) == (12, "checkpoint-forged")
    # a checkpoint an intruder signed with a key of their own
    other = Ed25519PrivateKey.generate()
    row = sql("SELECT hash FROM audit_entry WHERE seq = 12").fetchone()
    signed_at = "2026-11-01T00:00:00"
    sig = base64.b64encode(other.sign(audit.checkpoint_message(12, row[0], signed_at))).decode()
    sql("UPDATE audit_checkpoint SET head_hash = ?, signature = ?, public_key = ?, signed_at = ? WHERE seq = 12",
        row[0], sig, keys.signing_public_key(other), "2026-11-01 00:00:00")
    result = trail.verify()
    assert (result.first_bad.seq, result.first_bad.kind) == (12, "checkpoint-untrusted")
    # ... unless the auditor trusts that key too
    assert audit.verify_trail({trail.public, keys.signing_public_key(other)}).ok


def test_a_deleted_checkpoint_is_found(trail):
    sql("DELETE FROM audit_checkpoint WHERE seq = 24")
    result = trail.verify()
    assert (result.first_bad.seq, result.first_bad.kind) == (24, "checkpoint-deleted")


def test_a_tail_cut_after_the_last_checkpoint_needs_a_pin(trail):
    head = trail.row(30)[8]
    sql("DELETE FROM audit_entry WHERE seq >= 28")
    assert trail.verify().ok  # the documented limit: only the chain protects entries 26..30
    result = trail.verify(pins={30: head})
    assert (result.first_bad.seq, result.first_bad.kind) == (28, "missing")
    out = trail.cli("audit", "verify", "--pin", f"30:{head}")
    assert out.exit_code == 1 and "first bad entry: seq 28" in out.output


def test_verification_streams_in_batches(trail):
    assert trail.verify(batch=4).ok
    sql("DELETE FROM audit_entry WHERE seq = 9")  # across a batch boundary
    assert (trail.verify(batch=4).first_bad.seq, trail.verify(batch=8).first_bad.seq) == (9, 9)


def test_verify_without_a_key_to_trust_says_so(trail):
    os.chmod(trail.keys_dir / keys.SIGNING_KEY_FILE, 0o644)  # refused: unreadable as a key
    out = trail.cli("audit", "verify")
    assert out.exit_code == 1 and "pass --public-key" in out.output
    assert trail.cli("audit", "verify", "--public-key", trail.public).exit_code == 0


# --- the export, checked by an independent checker (README: "Verifying an export") ---------------


def independent_check(records: list[dict], public_key: str) -> tuple[int, int]:
    """The README's rule, re-implemented with hashlib and an Ed25519 verifier only."""
    header, rest = records[0], records[1:]
    prev = header["genesis_hash"] if header["from_genesis"] else header["first_prev_hash"]
    heads = {}
    for e in (r for r in rest if r["record"] == "entry"):
        canonical = json.dumps([e["at"], e["actor"], e["action"], e["object_type"], e["object_id"], e["detail"]],
                               separators=(",", ":"))
        assert e["prev_hash"] == prev and hashlib.sha256((prev + canonical).encode()).hexdigest() == e["hash"]
        prev = heads[int(e["seq"])] = e["hash"]
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key.removeprefix("ed25519:")))
    checkpoints = [r for r in rest if r["record"] == "checkpoint"]
    for c in checkpoints:
        assert c["public_key"] == public_key and heads[int(c["seq"])] == c["hash"]
        key.verify(base64.b64decode(c["signature"]),
                   f"fs-consent-audit-checkpoint/1\n{c['seq']}\n{c['hash']}\n{c['signed_at']}\n".encode())
    return len(heads), len(checkpoints)


def parse_export(text: str, fmt: str) -> list[dict]:
    if fmt == "jsonl":
        return [json.loads(line) for line in text.splitlines()]
    if fmt == "json":
        doc = json.loads(text)
        return [doc["header"], *doc["entries"], *doc["checkpoints"]]
    rows = list(csv.DictReader(io.StringIO(text)))
    header = json.loads(rows[0]["detail"])
    return [header, *rows[1:]]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv"])
def test_an_exported_trail_verifies_independently(trail, tmp_path, fmt):
    out = tmp_path / f"trail.{fmt}"
    result = trail.cli("audit", "export", "--format", fmt, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    records = parse_export(out.read_text(encoding="utf-8"), fmt)
    assert records[0]["format"] == "fs-consent-audit/1" and records[0]["from_genesis"] is True
    assert independent_check(records, trail.public) == (30, 2)
    # the export itself is audited, after the range it exported
    last = ledger.AuditEntry.select().order_by(ledger.AuditEntry.seq.desc()).get()
    assert (last.seq, last.action, last.object_id) == (31, "audit.export", "1..30")
    assert json.loads(last.detail)["format"] == fmt


def test_a_tampered_export_fails_the_independent_checker(trail):
    text = trail.cli("audit", "export").output
    records = parse_export(text, "jsonl")
    records[7]["actor"] = "mallory"
    with pytest.raises(AssertionError):
        independent_check(records, trail.public)
    records = parse_export(text, "jsonl")
    del records[5]
    with pytest.raises(AssertionError):
        independent_check(records, trail.public)


def test_a_partial_export_by_time(trail):
    at = {seq: trail.row(seq)[1] for seq in (10, 20)}
    since, until = at[10].replace(" ", "T"), at[20].replace(" ", "T")
    result = trail.cli("audit", "export", "--since", since, "--until", until)
    records = parse_export(result.output, "jsonl")
    header = records[0]
    assert (header["first_seq"], header["last_seq"], header["from_genesis"]) == (10, 19, False)
    assert independent_check(records, trail.public) == (10, 1)  # the checkpoint at 12


def test_export_of_an_empty_trail(tmp_path):
    data = tmp_path / "data"
    keys.init_keys(data / "keys")
    open_database(sqlite_url(data / "ledger.db"))
    try:
        out = CliRunner().invoke(main, ["--data-dir", str(data), "audit", "export", "--format", "json"])
        doc = json.loads(out.output)
        assert doc["entries"] == [] and doc["checkpoints"] == [] and doc["header"]["entries"] == 0
    finally:
        close_database()


# --- what appends entries ------------------------------------------------------------------------------


def actions() -> list[tuple[str, str]]:
    return [(e.actor, e.action) for e in ledger.AuditEntry.select().order_by(ledger.AuditEntry.seq)]


def test_keys_init_is_audited(tmp_path):
    data = tmp_path / "data"
    runner = CliRunner()
    assert runner.invoke(main, ["--data-dir", str(data), "keys", "init"]).exit_code == 0
    assert runner.invoke(main, ["--data-dir", str(data), "keys", "init"]).exit_code == 0  # nothing changed
    assert runner.invoke(main, ["--data-dir", str(data), "keys", "init", "--force"]).exit_code == 0
    try:
        entries = list(ledger.AuditEntry.select().order_by(ledger.AuditEntry.seq))
        assert [(e.actor, e.action) for e in entries] == [(ledger.os_user(), "keys.change")] * 2
        first, rotated = (json.loads(e.detail) for e in entries)
        assert first["first"] and first["via"] == "keys init"
        assert set(rotated["changed"]) == {"identity", "recipients"}  # field and signing keys stay
        assert rotated["changed"]["identity"]["to"].startswith("age1")
        assert "AGE-SECRET-KEY" not in "".join(e.detail for e in entries)
    finally:
        close_database()


@pytest.mark.slow
def test_start_up_records_configuration_and_key_changes(tmp_path):
    data = tmp_path / "data"
    config = make_config(data)
    for cfg in (config, config, replace(config, consent=replace(config.consent, mode="opt-in"))):
        server = ConsentServer(cfg, announce=lambda _m: None)
        server.start()
        server.stop()
    open_database(config.storage.database)
    try:
        entries = [e for e in ledger.AuditEntry.select().order_by(ledger.AuditEntry.seq)
                   if e.action != "audit.checkpoint"]
        assert [(e.actor, e.action) for e in entries] == [
            ("server", "server.start"), ("server", "config.initial"), ("server", "keys.change"),
            ("server", "server.start"), ("server", "server.start"), ("server", "config.change")]
        changed = json.loads(entries[5].detail)["changed"]
        assert changed == {"consent.mode": {"from": "opt-out", "to": "opt-in"}}
        starts = [json.loads(e.detail) for e in entries if e.action == "server.start"]
        assert [s["previous"] for s in starts] == ["none", "clean", "clean"]
    finally:
        close_database()


@pytest.mark.slow
def test_the_server_checkpoints_and_a_stopped_server_leaves_the_trail_signed(tmp_path):
    with Harness(tmp_path / "data") as h:
        h.call(digits=[None])
        h.call(digits=["1"])
    open_database(h.config.storage.database)
    try:
        head = ledger.AuditEntry.select().order_by(ledger.AuditEntry.seq.desc()).get()
        assert head.action == "audit.checkpoint"
        last = audit.AuditCheckpoint.select().order_by(audit.AuditCheckpoint.seq.desc()).get()
        assert last.seq == head.seq - 1
        result = audit.verify_trail(audit.trusted_keys(Path(h.config.storage.keys_dir)))
        assert result.ok and result.last_checkpoint_seq == last.seq
    finally:
        close_database()


def test_periodic_checkpoints_go_through_the_writer(trail):
    writer = LedgerWriter()
    writer.start()
    checkpointer = audit.Checkpointer(writer, trail.keys_dir, every_entries=3, every_seconds=3600, poll=0.02)
    checkpointer.start()
    try:
        before = audit.AuditCheckpoint.select().count()
        for n in range(3):
            writer.submit(lambda n=n: ledger.append_audit("server", "test", "call", f"c{n}"))
        with gevent.Timeout(5):
            while audit.AuditCheckpoint.select().count() == before:
                gevent.sleep(0.02)
        gevent.sleep(0.1)  # an idle trail (only the checkpoint's own entry since) is not signed again
        assert audit.AuditCheckpoint.select().count() == before + 1
    finally:
        checkpointer.stop()
        writer.stop()
    assert trail.verify().ok


@pytest.mark.slow
def test_audit_entries_hold_no_personal_data(tmp_path):
    numbers = ["0612345678", "0687654321"]
    with Harness(tmp_path / "data") as h:
        h.call(digits=[None], caller_number=numbers[0], caller_name="Jan Jansen")
        h.call(digits=[None], caller_number=numbers[1], caller_keys=[(0.05, "*1")], talk_seconds=0.3)
        h.call(digits=["1"], caller_number="+31612345678", caller_name="Jan Jansen")  # callback withdrawal
        h.call(hangup_in_prompt=True, caller_number=numbers[1])
        runner = CliRunner()
        base = ["--data-dir", str(h.config.storage.data_dir)]
        exported = runner.invoke(main, [*base, "audit", "export", "--format", "jsonl"]).output
        reports = [runner.invoke(main, [*base, "report", "--format", f]).output for f in ("json", "html", "csv")]
        hashes = [c.caller_hash for c in ledger.Call.select()]
        assert {e.action for e in ledger.AuditEntry.select()} >= {
            "consent.decision", "consent.withdrawal", "recording.seal", "recording.delete", "consent.withdraw"}
    text = exported + "".join(reports)
    for secret in [*numbers, "612345678", "687654321", "Jan", "Jansen", *filter(None, hashes)]:
        assert secret not in text, secret


def test_progress_is_shown_on_a_terminal_only(monkeypatch, capsys):
    from fs_consent.cli import audit as cli_audit

    with cli_audit.progress(lambda: 10, "x") as update:
        assert update is None
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    with cli_audit.progress(lambda: 10, "working") as update:
        update(10)


@pytest.mark.parametrize("at", [audit.dt.datetime(2026, 11, 1, 8, 0), audit.dt.datetime(2026, 11, 1, 8, 0, 0, 1)])
def test_the_verifiers_digest_is_the_ledgers(at):
    fields = ("ürsula \u2603 \U0001f600", "act\n\"ion\"\\", "call", "c-1", '{"note":"caf\\u00e9","x":"\\n"}')
    expected = ledger.entry_digest("ab" * 32, at, *fields)
    assert audit.digest_of("ab" * 32, at.isoformat(), *fields) == expected
    assert audit.Entry(1, at.isoformat(), *fields, "ab" * 32, expected).digest() == expected
