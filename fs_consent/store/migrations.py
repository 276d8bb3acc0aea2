"""The ledger's schema version and the steps that upgrade an older database.

The version is the ``meta`` row ``schema_version``. ``connection.open_database`` calls
:func:`prepare`: an empty database gets every table of the current models at
``ledger.SCHEMA_VERSION``; an older one is upgraded step by step (:func:`migrate`); a
newer one is refused (:class:`SchemaTooNew`) and left untouched.

Each step runs in one transaction (DDL is transactional on SQLite and PostgreSQL)
together with the new version number and a ``ledger.migrate`` audit entry, so a step
either happened completely, recorded in the trail, or not at all. The transaction
takes the write lock first (SQLite ``BEGIN IMMEDIATE``, a PostgreSQL advisory lock)
and re-reads the version under it: when the server and a CLI command open an old
database at once, one upgrades and the other finds it done.

A step's DDL is frozen as of its version (its own table definitions here, never the
current models), so a later step can change those tables again. To change the schema:
raise ``SCHEMA_VERSION``, add the step to ``STEPS``, and keep a fixture of the previous
release's data dir (``tests/fixtures/README.md``); ``tests/store/test_migrations.py`` then holds
the upgraded database equal to a freshly created one.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from peewee import (
    AutoField,
    BlobField,
    CharField,
    Database,
    DateField,
    DateTimeField,
    ForeignKeyField,
    IntegerField,
    Model,
    PostgresqlDatabase,
    Proxy,
    SqliteDatabase,
    TextField,
)
from playhouse.migrate import SchemaMigrator
from playhouse.migrate import migrate as run_operations

from . import audit_actions, ledger

log = logging.getLogger(__name__)

VERSION_KEY = "schema_version"
_PG_LOCK = 0x66735F636F6E73  # pg_advisory_xact_lock key of schema changes ("fs_cons")


class SchemaError(RuntimeError):
    """The database's schema cannot be used or upgraded (a one-line message for the operator)."""


class SchemaTooNew(SchemaError):
    def __init__(self, found: int):
        self.found = found
        super().__init__(
            f"the ledger database has schema version {found}, newer than this fs-consent understands "
            f"(schema version {ledger.SCHEMA_VERSION}): upgrade fs-consent; the database was not changed")


class MigrationFailed(SchemaError):
    pass


def _real(db) -> Database:
    return db.obj if isinstance(db, Proxy) else db


def read_schema_version(db) -> int | None:
    """The database's schema version; None for an empty database (no ``meta`` table)."""
    db = _real(db)
    if ledger.Meta._meta.table_name not in db.get_tables():
        return None
    row = db.execute_sql(f"SELECT value FROM meta WHERE key = {db.param}", (VERSION_KEY,)).fetchone()
    if row is None:
        raise SchemaError("the ledger database has a meta table but no schema version: not an fs-consent ledger?")
    return int(row[0])


def _write_version(db: Database, version: int) -> None:
    if not db.execute_sql(f"UPDATE meta SET value = {db.param} WHERE key = {db.param}",
                          (str(version), VERSION_KEY)).rowcount:
        db.execute_sql(f"INSERT INTO meta (key, value) VALUES ({db.param}, {db.param})", (VERSION_KEY, str(version)))


@contextlib.contextmanager
def _schema_transaction(db: Database):
    """One transaction holding the schema-change lock from its first statement."""
    if isinstance(db, SqliteDatabase):
        with db.atomic("IMMEDIATE"):  # the write lock at BEGIN: the version read below cannot go stale
            yield
    else:
        with db.atomic():
            if isinstance(db, PostgresqlDatabase):
                db.execute_sql(f"SELECT pg_advisory_xact_lock({db.param})", (_PG_LOCK,))
            yield


# --- the steps ---------------------------------------------------------------------------


def _frozen_base(db: Database) -> type[Model]:
    class Base(Model):
        class Meta:
            database = db
            legacy_table_names = False

    return Base


def _to_2(db: Database) -> None:
    """Schema 2, data subject rights: the request register, restrictions, objections, rectified
    call details, and when and why a call's personal fields were erased."""
    migrator = SchemaMigrator.from_database(db)
    run_operations(
        migrator.add_column("call", "personal_erased_at", DateTimeField(null=True)),
        migrator.add_column("call", "personal_erased_reason", CharField(null=True)),
    )
    Base = _frozen_base(db)

    class Call(Base):  # referenced only
        pass

    class AuditCheckpoint(Base):  # schema 1 created it on the first checkpoint only
        id = AutoField()
        seq = IntegerField(index=True)
        head_hash = CharField()
        signed_at = DateTimeField()
        public_key = CharField()
        signature = CharField()

    class SubjectRequest(Base):
        ref = CharField(unique=True)
        kind = CharField()
        received_on = DateField()
        due_on = DateField(index=True)
        identity_verified_by = CharField()
        registered_at = DateTimeField()
        note = TextField(null=True)
        extended_at = DateTimeField(null=True)
        extension_reason = TextField(null=True)
        decision = CharField(null=True, index=True)
        decision_reason = TextField(null=True)
        decided_at = DateTimeField(null=True)
        decided_by = CharField(null=True)

    class Restriction(Base):
        call = ForeignKeyField(Call, backref="+", on_delete="CASCADE")
        request = ForeignKeyField(SubjectRequest, backref="+")
        placed_at = DateTimeField()
        placed_by = CharField()
        lifted_at = DateTimeField(null=True, index=True)
        lifted_by = CharField(null=True)
        lift_request = ForeignKeyField(SubjectRequest, null=True, backref="+")

    class Objection(Base):
        caller_hash = CharField(index=True)
        request = ForeignKeyField(SubjectRequest, backref="+")
        placed_at = DateTimeField()
        placed_by = CharField()
        withdrawn_at = DateTimeField(null=True)
        withdrawn_by = CharField(null=True)
        withdraw_request = ForeignKeyField(SubjectRequest, null=True, backref="+")

    class CallDetail(Base):
        call = ForeignKeyField(Call, backref="+", on_delete="CASCADE")
        field = CharField()
        value_sealed = BlobField()
        updated_at = DateTimeField()
        updated_by = CharField()
        request = ForeignKeyField(SubjectRequest, backref="+")

        class Meta:
            indexes = ((("call", "field"), True),)

    db.create_tables([AuditCheckpoint], safe=True)
    db.create_tables([SubjectRequest, Restriction, Objection, CallDetail], safe=False)


def _to_3(db: Database) -> None:
    """Schema 3, faults: a call's row is found by its connection's ``instance`` (unique), and
    a channel uuid may come twice (the same channel sent back into the socket)."""
    migrator = SchemaMigrator.from_database(db)
    run_operations(
        migrator.drop_index("call", "call_uuid"),
        migrator.add_index("call", ("uuid",), False),
        migrator.add_column("call", "instance", CharField(null=True, max_length=32)),
        migrator.add_index("call", ("instance",), True),
    )


def _to_4(db: Database) -> None:
    """Schema 4, more than one node on one ledger: each call, recording and purge run names the
    node (``[server] node``) it belongs to (NULL for the rows of earlier releases), and every
    node keeps a row with its last sign of life and its signing key."""
    migrator = SchemaMigrator.from_database(db)
    run_operations(
        migrator.add_column("call", "node", CharField(null=True, max_length=64)),
        # (not add_index: peewee's column factory has an attribute of its own called "node")
        migrator.sql('CREATE INDEX "call_node" ON "call" ("node")'),
        migrator.add_column("recording", "node", CharField(null=True, max_length=64)),
        migrator.add_column("purge_run", "node", CharField(null=True, max_length=64)),
    )

    class Node(_frozen_base(db)):
        name = CharField(primary_key=True, max_length=64)
        version = CharField()
        started_at = DateTimeField()
        last_seen = DateTimeField()
        signing_key = CharField(null=True)
        stopped_at = DateTimeField(null=True)

    db.create_tables([Node], safe=False)


def _to_5(db: Database) -> None:
    """Schema 5, recordings that serve their purpose: who took each call (one row per bridge)
    and the route it took, staff in teams, and the listening room's accounts and sessions."""
    migrator = SchemaMigrator.from_database(db)
    run_operations(
        migrator.add_column("call", "route", CharField(null=True, max_length=128)),
        migrator.sql('CREATE INDEX "call_route" ON "call" ("route")'),
    )
    Base = _frozen_base(db)

    class Call(Base):  # referenced only
        pass

    class CallStaff(Base):
        call = ForeignKeyField(Call, backref="+", on_delete="CASCADE")
        seq = IntegerField()
        staff_hash = CharField(index=True)
        staff_sealed = BlobField()
        route = CharField(null=True, index=True, max_length=128)
        bridged_at = DateTimeField()
        unbridged_at = DateTimeField(null=True)

        class Meta:
            indexes = ((("call", "seq"), True),)

    class StaffTeam(Base):
        staff_hash = CharField(index=True)
        staff_sealed = BlobField()
        team = CharField(index=True, max_length=64)
        added_at = DateTimeField()
        added_by = CharField()

        class Meta:
            indexes = ((("staff_hash", "team"), True),)

    class ListenAccount(Base):
        name = CharField(primary_key=True, max_length=64)
        role = CharField()
        password_hash = CharField(null=True)
        failed_signins = IntegerField(default=0)
        locked_until = DateTimeField(null=True)
        created_at = DateTimeField()
        created_by = CharField()
        disabled_at = DateTimeField(null=True)

    class ListenAccountTeam(Base):
        account = ForeignKeyField(ListenAccount, backref="+", on_delete="CASCADE")
        team = CharField(max_length=64)

        class Meta:
            indexes = ((("account", "team"), True),)

    class ListenSession(Base):
        token_hash = CharField(primary_key=True, max_length=64)
        account = ForeignKeyField(ListenAccount, backref="+", on_delete="CASCADE")
        csrf_token = CharField()
        created_at = DateTimeField()
        last_seen = DateTimeField()
        expires_at = DateTimeField(index=True)

    db.create_tables([CallStaff, StaffTeam, ListenAccount, ListenAccountTeam, ListenSession], safe=False)


#: version -> the step that upgrades a database from version - 1 to it
STEPS: dict[int, Callable[[Database], None]] = {2: _to_2, 3: _to_3, 4: _to_4, 5: _to_5}


# --- running them ----------------------------------------------------------------------


def _create_current(db: Database) -> None:
    db.create_tables(ledger.MODELS, safe=False)
    _write_version(db, ledger.SCHEMA_VERSION)


def migrate(db, *, announce: Callable[[str], None] | None = None) -> list[int]:
    """Upgrade ``db`` to ``ledger.SCHEMA_VERSION``; returns the versions stepped to (none: already there).

    Raises :class:`SchemaTooNew` (nothing changed), or :class:`MigrationFailed` naming the
    step that failed (the database stays at the version before it). ``ledger.database``
    must be bound to ``db`` (the audit entries are written through it).
    """
    db = _real(db)
    done: list[int] = []
    found = read_schema_version(db)
    if found is None:
        raise SchemaError("the ledger database is empty: nothing to migrate")
    if found > ledger.SCHEMA_VERSION:
        raise SchemaTooNew(found)
    for version in range(found + 1, ledger.SCHEMA_VERSION + 1):
        try:
            with _schema_transaction(db):
                current = read_schema_version(db)  # another process may have done it meanwhile
                if current >= version:
                    continue
                STEPS[version](db)
                _write_version(db, version)
                ledger.append_audit(ledger.os_user(), audit_actions.LEDGER_MIGRATE, "schema", str(version),
                                    **{"from": version - 1, "to": version})
        except SchemaError:
            raise
        except Exception as exc:
            raise MigrationFailed(
                f"upgrading the ledger schema from version {version - 1} to {version} failed "
                f"({type(exc).__name__}: {exc}); the database is still at version {version - 1}") from exc
        done.append(version)
        message = f"ledger: upgraded the database schema from version {version - 1} to {version}"
        log.info(message)
        if announce is not None:
            announce(message)
    return done


def prepare(db, *, announce: Callable[[str], None] | None = None) -> list[int]:
    """Create the schema of an empty database, or upgrade an older one (see :func:`migrate`)."""
    db = _real(db)
    found = read_schema_version(db)
    if found is None:
        with _schema_transaction(db):
            if read_schema_version(db) is None:  # nobody created it meanwhile
                _create_current(db)
                return []
    return migrate(db, announce=announce)
