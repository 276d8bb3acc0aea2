"""Schema migrations: a data dir of an earlier release upgrades on start, without losing a row.

The earlier releases' data dirs are kept in ``tests/fixtures/schema1`` and ``schema3`` (how
they were made: ``tests/fixtures/README.md``): each ledger as SQLite's own dump and the
test-only keys. Every test loads one into a fresh, real data dir and opens it with the
current code; most run on each of them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
from peewee import IntegrityError, PostgresqlDatabase, SqliteDatabase
from playhouse.db_url import connect as connect_url

from fs_consent.emulator import CallerScript, FreeSwitchEmulator
from fs_consent.runtime.server import ConsentServer
from fs_consent.store import audit, ledger, migrations
from fs_consent.store.connection import close_database, open_database, sqlite_url

from .. import harness as e2e
from ..fixtures.schema1 import models as v1
from ..fixtures.schema3 import models as v3

FIXTURES = Path(__file__).parent.parent / "fixtures"


@dataclass(frozen=True)
class Release:
    """A kept data dir of a release, and what the schema gained after it."""

    schema: int
    models: ModuleType  # its tables, frozen (to build it on PostgreSQL)
    new_tables: frozenset[str]
    new_columns: dict  # table -> the columns added after it, in order
    checkpoints: int  # signed checkpoints in its trail

    @property
    def path(self) -> Path:
        return FIXTURES / f"schema{self.schema}"

    @property
    def steps(self) -> list[int]:
        return list(range(self.schema + 1, ledger.SCHEMA_VERSION + 1))

    @property
    def upgrades(self) -> list[str]:
        return [f"ledger: upgraded the database schema from version {v - 1} to {v}" for v in self.steps]

    def __str__(self) -> str:
        return f"schema{self.schema}"


COLUMNS_SINCE_3 = {"call": ("node", "route"), "recording": ("node",), "purge_run": ("node",)}
SCHEMA_5_TABLES = frozenset({"call_staff", "staff_team", "listen_account", "listen_account_team", "listen_session"})
RELEASES = {
    1: Release(1, v1, frozenset({"subject_request", "restriction", "objection", "call_detail", "node"}) | SCHEMA_5_TABLES,
               {**COLUMNS_SINCE_3,
                "call": ("personal_erased_at", "personal_erased_reason", "instance", "node", "route")},
               3),
    3: Release(3, v3, frozenset({"node"}) | SCHEMA_5_TABLES, COLUMNS_SINCE_3, 3),
}
FIXTURE = RELEASES[1].path  # the tests about schema 1 itself


@pytest.fixture(autouse=True)
def closed_ledger():
    yield
    close_database()


# --- the fixture and what is in a database ---------------------------------------------------


def load_fixture(data_dir: Path, release: Release = RELEASES[1]) -> Path:
    """The release's data dir at ``data_dir``: its keys and its ledger (WAL, as the release left it)."""
    data_dir.mkdir(mode=0o700, parents=True)
    shutil.copytree(release.path / "keys", data_dir / "keys")
    os.chmod(data_dir / "keys", 0o700)
    for key_file in (data_dir / "keys").iterdir():
        os.chmod(key_file, 0o600)  # git keeps no modes; the release wrote them 0600
    path = data_dir / "ledger.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=wal")
    db.executescript((release.path / "ledger.sql").read_text())
    db.close()
    os.chmod(path, 0o600)
    return path


def dump(db: sqlite3.Connection) -> dict[str, tuple[list[str], list[tuple]]]:
    """Every table: its columns and its rows in rowid order."""
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    out = {}
    for table in tables:
        cursor = db.execute(f'SELECT * FROM "{table}" ORDER BY rowid')
        out[table] = ([c[0] for c in cursor.description], cursor.fetchall())
    return out


def fixture_tables(release: Release = RELEASES[1]) -> dict[str, tuple[list[str], list[tuple]]]:
    db = sqlite3.connect(":memory:")
    db.executescript((release.path / "ledger.sql").read_text())
    try:
        return dump(db)
    finally:
        db.close()


def file_tables(path: Path) -> dict[str, tuple[list[str], list[tuple]]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dump(db)
    finally:
        db.close()


def sqlite_schema(path: Path) -> dict[str, dict]:
    """Columns, indexes and foreign keys of every table, as SQLite reports them."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        schema = {}
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
            indexes = {}
            for _seq, name, unique, _origin, _partial in db.execute(f'PRAGMA index_list("{table}")'):
                indexes[name] = (unique, [r[2] for r in db.execute(f'PRAGMA index_info("{name}")')])
            schema[table] = {
                "columns": db.execute(f'PRAGMA table_info("{table}")').fetchall(),
                "indexes": indexes,
                "foreign_keys": sorted(r[2:] for r in db.execute(f'PRAGMA foreign_key_list("{table}")')),
            }
        return schema
    finally:
        db.close()


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fs_consent(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "FS_CONSENT_CONFIG"}
    return subprocess.run([sys.executable, "-m", "fs_consent.cli", "--data-dir", str(data_dir), *args],
                          capture_output=True, text=True, timeout=60, env=env)


@pytest.fixture(params=sorted(RELEASES), ids=lambda schema: f"schema{schema}")
def release(request) -> Release:
    return RELEASES[request.param]


@pytest.fixture
def data_dir(tmp_path, release) -> Path:
    load_fixture(tmp_path / "data", release)
    return tmp_path / "data"


@pytest.fixture
def schema1_dir(tmp_path) -> Path:
    load_fixture(tmp_path / "data", RELEASES[1])
    return tmp_path / "data"


# --- the fixture itself -------------------------------------------------------------------------


def test_the_fixture_is_a_schema_1_ledger_with_rows_in_every_table():
    tables = fixture_tables()
    assert set(tables) == {m._meta.table_name for m in v1.MODELS}
    assert all(rows for _columns, rows in tables.values()), [t for t, (_c, rows) in tables.items() if not rows]
    assert dict(tables["meta"][1])["schema_version"] == "1"
    columns, calls = tables["call"]
    assert {c[columns.index("outcome")] for c in calls} == {"granted", "refused", "withdrawn", "abandoned", "error"}
    columns, recordings = tables["recording"]
    assert {r[columns.index("state")] for r in recordings} == {"recording", "sealed", "deleted", "discarded", "failed"}


def test_the_schema_3_fixture_has_rows_in_every_table_with_the_subject_rights_and_instances():
    tables = fixture_tables(RELEASES[3])
    assert set(tables) == {m._meta.table_name for m in v3.MODELS}
    assert all(rows for _columns, rows in tables.values()), [t for t, (_c, rows) in tables.items() if not rows]
    assert dict(tables["meta"][1])["schema_version"] == "3"
    columns, requests = tables["subject_request"]
    assert {r[columns.index("kind")] for r in requests} == {"access", "erase", "restrict", "rectify", "object"}
    columns, calls = tables["call"]
    assert any(c[columns.index("instance")] for c in calls)


def test_the_frozen_models_make_the_fixtures_schema(tmp_path, data_dir, release):
    """The PostgreSQL test builds the release from ``fixtures/schemaN/models.py``: it must be that schema."""
    db = SqliteDatabase(str(tmp_path / "frozen.db"))
    with db.bind_ctx(release.models.MODELS):
        db.create_tables(release.models.MODELS)
    db.close()
    assert sqlite_schema(tmp_path / "frozen.db") == sqlite_schema(data_dir / "ledger.db")


# --- upgrading ----------------------------------------------------------------------------------


def open_ledger(data_dir: Path, **kwargs) -> None:
    open_database(sqlite_url(data_dir / "ledger.db"), **kwargs)


def test_an_old_data_dir_upgrades_without_losing_a_row(data_dir, release):
    announced = []
    open_ledger(data_dir, announce=announced.append)
    assert migrations.read_schema_version(ledger.database) == ledger.SCHEMA_VERSION == 5
    assert announced == release.upgrades
    close_database()

    before, after = fixture_tables(release), file_tables(data_dir / "ledger.db")
    for table, (columns, rows) in before.items():
        now_columns, now_rows = after[table]
        assert now_columns[:len(columns)] == columns, table
        kept = [row[:len(columns)] for row in now_rows]
        if table == "meta":
            assert dict(kept) == {**dict(rows), "schema_version": "5"}
        elif table == "audit_entry":
            assert kept[:len(rows)] == rows  # the trail goes on after the release's last entry
            assert [r[columns.index("action")] for r in kept[len(rows):]] == ["ledger.migrate"] * len(release.steps)
        else:
            assert kept == rows, table
        added = now_columns[len(columns):]
        assert tuple(added) == release.new_columns.get(table, ()), table
        assert all(row[len(columns):] == (None,) * len(added) for row in now_rows), table  # NULL: not known
    assert set(after) - set(before) == release.new_tables
    assert all(after[t][1] == [] for t in release.new_tables)


@pytest.mark.slow
def test_the_upgrade_is_in_the_audit_trail_and_the_trail_still_verifies(data_dir, release):
    open_ledger(data_dir)
    steps = list(ledger.AuditEntry.select().where(ledger.AuditEntry.action == "ledger.migrate")
                 .order_by(ledger.AuditEntry.seq))
    assert [(e.object_type, e.object_id, json.loads(e.detail)) for e in steps] == [
        ("schema", str(v), {"from": v - 1, "to": v}) for v in release.steps]
    assert steps[0].prev_hash == fixture_tables(release)["audit_entry"][1][-1][-1]  # chained to its last entry
    close_database()

    verified = fs_consent(data_dir, "audit", "verify")
    assert verified.returncode == 0, verified.stderr
    assert f"chain from genesis; {release.checkpoints} signed checkpoints valid" in verified.stdout
    listed = fs_consent(data_dir, "calls", "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    assert {c["node"] for c in json.loads(listed.stdout)} == {None}  # taken before nodes had names
    columns, calls = fixture_tables(release)["call"]
    assert sorted(c["uuid"] for c in json.loads(listed.stdout)) == sorted(c[columns.index("uuid")] for c in calls)


@pytest.mark.slow
def test_the_cli_upgrades_an_old_data_dir_and_says_so(data_dir, release):
    listed = fs_consent(data_dir, "calls", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stderr.strip().splitlines() == release.upgrades
    again = fs_consent(data_dir, "calls", "list")
    assert again.returncode == 0 and again.stderr == ""


def test_the_upgraded_schema_is_the_schema_a_new_installation_gets(tmp_path, data_dir):
    open_ledger(data_dir)
    close_database()
    open_database(sqlite_url(tmp_path / "new" / "ledger.db"))
    close_database()
    assert sqlite_schema(data_dir / "ledger.db") == sqlite_schema(tmp_path / "new" / "ledger.db")


def test_the_new_tables_and_columns_work_on_an_upgraded_ledger(schema1_dir):
    import datetime as dt

    data_dir = schema1_dir
    open_ledger(data_dir)
    call = ledger.Call.select().where(ledger.Call.caller_hash.is_null(False)).order_by(ledger.Call.id).first()
    request = ledger.SubjectRequest.create(
        ref="AVG-2026-001", kind="restrict", received_on=dt.date(2026, 11, 1), due_on=dt.date(2026, 12, 1),
        identity_verified_by="privacy", registered_at=ledger.utcnow())
    ledger.Restriction.create(call=call, request=request, placed_at=ledger.utcnow(), placed_by="privacy")
    ledger.Objection.create(caller_hash=call.caller_hash, request=request, placed_at=ledger.utcnow(),
                            placed_by="privacy")
    ledger.CallDetail.create(call=call, field="name", value_sealed=b"sealed", updated_at=ledger.utcnow(),
                             updated_by="privacy", request=request)
    with pytest.raises(IntegrityError):  # the unique (call, field) index came along
        ledger.CallDetail.create(call=call, field="name", value_sealed=b"again", updated_at=ledger.utcnow(),
                                 updated_by="privacy", request=request)
    with pytest.raises(IntegrityError):  # and the foreign keys
        ledger.Restriction.create(call=10**6, request=request, placed_at=ledger.utcnow(), placed_by="privacy")
    ledger.Call.update(personal_erased_at=ledger.utcnow(), personal_erased_reason="erasure:AVG-2026-001").where(
        ledger.Call.id == call.id).execute()
    again = ledger.Call.get_by_id(call.id)
    assert again.personal_erased_reason == "erasure:AVG-2026-001"
    assert [r.request.ref for r in again.restrictions] == ["AVG-2026-001"]
    assert [d.field for d in again.details] == ["name"]


def test_opening_an_upgraded_ledger_again_changes_nothing(data_dir):
    open_ledger(data_dir)
    close_database()
    digest = sha256_file(data_dir / "ledger.db")
    open_ledger(data_dir)
    assert migrations.migrate(ledger.database) == []
    close_database()
    assert sha256_file(data_dir / "ledger.db") == digest


def test_the_node_table_and_columns_work_on_an_upgraded_ledger(data_dir):
    from fs_consent.store import nodes

    open_ledger(data_dir)
    nodes.register("fs2", version="9.9", signing_key=None)
    nodes.register("fs2", version="10.0", signing_key="ed25519:x")  # a restart renews the row
    assert [(n.name, n.version, n.signing_key) for n in nodes.all_nodes()] == [("fs2", "10.0", "ed25519:x")]
    with pytest.raises(IntegrityError):  # the node's name is the key
        ledger.Node.insert(name="fs2", version="1", started_at=ledger.utcnow(), last_seen=ledger.utcnow()).execute()
    assert ledger.Call.select().where(ledger.Call.node == "fs2").count() == 0


@pytest.mark.slow
def test_the_server_starts_on_an_upgraded_data_dir_and_takes_calls(data_dir):
    server = ConsentServer(e2e.make_config(data_dir), announce=lambda _m: None)
    server.start()
    try:
        emulator = FreeSwitchEmulator(*server.address, spool_dir=server.config.storage.spool_dir,
                                      time_scale=e2e.TIME_SCALE)
        result = emulator.place_call(CallerScript(digits=[None], caller_number="0612349999"), timeout=20)
        assert result.errors == []
        server.ctx.seals.join(timeout=20)
        server.ctx.writer.flush()
        assert migrations.read_schema_version(ledger.database) == ledger.SCHEMA_VERSION
        call = ledger.Call.get(ledger.Call.uuid == result.uuid)
        assert call.outcome == "granted" and call.personal_erased_at is None
        assert call.node == server.config.server.node
        assert [(r.state, r.node) for r in call.recordings] == [(ledger.SEALED, call.node)]
    finally:
        server.stop()
    assert fs_consent(data_dir, "audit", "verify").returncode == 0


# --- refusing ----------------------------------------------------------------------------------


def test_a_ledger_newer_than_the_code_is_refused_and_left_byte_identical(data_dir):
    path = data_dir / "ledger.db"
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(ledger.SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    digest, files = sha256_file(path), sorted(p.name for p in data_dir.iterdir())

    with pytest.raises(migrations.SchemaTooNew) as refused:
        open_ledger(data_dir)
    assert str(refused.value) == (f"the ledger database has schema version {ledger.SCHEMA_VERSION + 1}, newer "
                                  f"than this fs-consent understands (schema version {ledger.SCHEMA_VERSION}): upgrade fs-consent; the database was not changed")
    listed = fs_consent(data_dir, "calls", "list")
    assert listed.returncode == 1
    assert listed.stderr == f"Error: {refused.value}\n"  # one line, no traceback
    assert sha256_file(path) == digest and sorted(p.name for p in data_dir.iterdir()) == files


def test_a_failing_step_leaves_schema_1_with_nothing_half_done(schema1_dir, monkeypatch):
    data_dir = schema1_dir
    real_step = migrations.STEPS[2]

    def fails_at_the_end(db):
        real_step(db)  # every change made, then the failure
        raise OSError("disk full (injected)")

    monkeypatch.setitem(migrations.STEPS, 2, fails_at_the_end)
    with pytest.raises(migrations.MigrationFailed) as failed:
        open_ledger(data_dir)
    assert str(failed.value) == ("upgrading the ledger schema from version 1 to 2 failed (OSError: disk full "
                                 "(injected)); the database is still at version 1")
    assert file_tables(data_dir / "ledger.db") == fixture_tables()  # no column, table, row or version changed

    monkeypatch.setitem(migrations.STEPS, 2, real_step)
    open_ledger(data_dir)  # the next start does it
    assert migrations.read_schema_version(ledger.database) == ledger.SCHEMA_VERSION


def test_without_migrate_an_old_ledger_is_only_read(data_dir, release):
    digest = sha256_file(data_dir / "ledger.db")
    open_ledger(data_dir, migrate=False)
    assert migrations.read_schema_version(ledger.database) == release.schema
    close_database()
    assert sha256_file(data_dir / "ledger.db") == digest
    with pytest.raises(migrations.SchemaError, match="no ledger database at"):
        open_database(sqlite_url(data_dir / "missing.db"), migrate=False)
    assert not (data_dir / "missing.db").exists()


def test_every_schema_version_after_the_first_has_a_step():
    assert sorted(migrations.STEPS) == list(range(2, ledger.SCHEMA_VERSION + 1))


# --- concurrency ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_processes_opening_an_old_ledger_at_once_upgrade_it_once(data_dir, release):
    """They all read the old version, then queue for the write lock (held here meanwhile): the first
    one upgrades, the others find it done under the lock."""
    url = sqlite_url(data_dir / "ledger.db")
    code = ("import sys; from fs_consent.store import ledger, migrations; from fs_consent.store.connection import open_database; print('ready', flush=True);"
            "open_database(sys.argv[1]); print(migrations.read_schema_version(ledger.database))")
    holder = sqlite3.connect(data_dir / "ledger.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    procs = [subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    assert [p.stdout.readline() for p in procs] == ["ready\n"] * 4
    time.sleep(0.5)  # each has read the old version and waits at BEGIN IMMEDIATE (busy_timeout 5 s)
    holder.execute("COMMIT")
    holder.close()
    outcomes = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err for _out, err in outcomes]
    assert [out.strip() for out, _err in outcomes] == [str(ledger.SCHEMA_VERSION)] * 4
    open_ledger(data_dir)  # each step once
    assert ledger.AuditEntry.select().where(ledger.AuditEntry.action == "ledger.migrate").count() == len(release.steps)


# --- PostgreSQL ---------------------------------------------------------------------------------


def pg_schema(db: PostgresqlDatabase) -> dict:
    rows = db.execute_sql(
        "SELECT table_name, column_name, data_type, character_maximum_length, is_nullable, column_default "
        "FROM information_schema.columns WHERE table_schema = 'public' ORDER BY table_name, column_name").fetchall()
    indexes = db.execute_sql("SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
                             "ORDER BY indexname").fetchall()
    constraints = db.execute_sql(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE connamespace = 'public'::regnamespace ORDER BY conname").fetchall()
    return {"columns": rows, "indexes": indexes, "constraints": constraints}


def release_on_postgresql(url: str, release: Release) -> dict:
    """The release's schema as it made it on PostgreSQL, holding the fixture's rows; returns those rows."""
    models = release.models.MODELS
    reference = SqliteDatabase(":memory:")
    reference.connection().executescript((release.path / "ledger.sql").read_text())
    with reference.bind_ctx(models):
        rows = {m: list(m.select().order_by(*m._meta.get_primary_keys()).tuples()) for m in models}
    pg = connect_url(url)
    with pg.bind_ctx(models):
        pg.create_tables(models)
        for model in models:
            model.insert_many(rows[model], fields=list(model._meta.sorted_fields)).execute()
            if model._meta.auto_increment:  # as if the rows had been inserted one by one
                table, pk = model._meta.table_name, model._meta.primary_key.column_name
                pg.execute_sql(f"SELECT setval(pg_get_serial_sequence('{table}', '{pk}'), (SELECT MAX({pk}) FROM {table}))")
    pg.close()
    return rows


postgresql = pytest.mark.skipif(not e2e.SERVER_URL, reason="FS_CONSENT_TEST_DATABASE not set")


@postgresql
def test_an_old_ledger_on_postgresql_upgrades_without_losing_a_row(tmp_path, release):
    old, new = e2e.TestDatabase(), e2e.TestDatabase()
    steps = len(release.steps)
    try:
        rows = release_on_postgresql(old.url, release)
        open_database(old.url)
        assert migrations.read_schema_version(ledger.database) == ledger.SCHEMA_VERSION
        v = release.models
        with ledger.database.obj.bind_ctx(v.MODELS):
            for model in v.MODELS:
                now = list(model.select().order_by(*model._meta.get_primary_keys()).tuples())
                if model is v.Meta:
                    assert dict(now) == {**dict(rows[model]), "schema_version": str(ledger.SCHEMA_VERSION)}
                elif model is v.AuditEntry:
                    assert now[:-steps] == rows[model]
                    assert [e[3] for e in now[-steps:]] == ["ledger.migrate"] * steps
                else:
                    assert now == rows[model], model
        assert ledger.Call.select().where(ledger.Call.node.is_null(False)).count() == 0
        assert ledger.Node.select().count() == 0
        keys_dir = load_fixture(tmp_path / "data", release).parent / "keys"  # the keys, with their modes
        verification = audit.verify_trail(audit.trusted_keys(keys_dir))
        assert verification.ok and verification.checkpoints == release.checkpoints, verification.summary()
        migrated = pg_schema(ledger.database.obj)
        close_database()

        open_database(new.url)
        fresh = pg_schema(ledger.database.obj)
        close_database()
        assert migrated == fresh
    finally:
        close_database()
        old.drop()
        new.drop()


@postgresql
def test_processes_opening_an_old_ledger_on_postgresql_at_once_upgrade_it_once(release):
    import psycopg

    target = e2e.TestDatabase()
    try:
        release_on_postgresql(target.url, release)
        code = ("import sys; from fs_consent.store import ledger, migrations; from fs_consent.store.connection import open_database; print('ready', flush=True);"
                "open_database(sys.argv[1]); print(migrations.read_schema_version(ledger.database))")
        with psycopg.connect(target.url, autocommit=True) as holder:
            holder.execute("SELECT pg_advisory_lock(%s)", (migrations._PG_LOCK,))
            procs = [subprocess.Popen([sys.executable, "-c", code, target.url], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for _ in range(4)]
            assert [p.stdout.readline() for p in procs] == ["ready\n"] * 4
            time.sleep(0.5)  # each has read the old version and waits for the lock
            holder.execute("SELECT pg_advisory_unlock(%s)", (migrations._PG_LOCK,))
            outcomes = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0] * 4, [err for _out, err in outcomes]
        assert [out.strip() for out, _err in outcomes] == [str(ledger.SCHEMA_VERSION)] * 4
        open_database(target.url)
        assert ledger.AuditEntry.select().where(ledger.AuditEntry.action == "ledger.migrate").count() == len(
            release.steps)
    finally:
        close_database()
        target.drop()
