"""The recordings repository: deleting a recording (files, state, audit entry) and its state transitions;
and that no other module writes a recording's state."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from fs_consent.store import audit_actions, holds, ledger, recordings
from fs_consent.store.connection import close_database

from ..ledger_data import DAY, DataDir

PACKAGE = Path(recordings.__file__).parent


@pytest.fixture
def data(tmp_path):
    d = DataDir(tmp_path / "data")
    yield d
    close_database()


def deletes(data: DataDir) -> list[tuple[str, str, dict]]:
    return [(e.action, e.object_id, json.loads(e.detail)) for e in data.audit("recording.delete")]


# --- delete_recording -----------------------------------------------------------------------


def test_delete_recording_removes_both_files_then_marks_and_audits(data):
    _call, rec = data.add_call(age=DAY, spool_plaintext=True)
    assert data.store_files() == [f"{rec.id}.age"] and data.spool_files() == [f"{rec.id}.wav"]
    at = ledger.utcnow()
    assert recordings.delete_recording(rec.id, reason="withdrawn", actor="alice", vault=data.vault,
                                       spool_dir=data.spool, at=at, by="command")
    assert data.store_files() == [] and data.spool_files() == []
    row = data.recording(rec.id)
    assert (row.state, row.state_reason, row.deleted_at) == (ledger.DELETED, "withdrawn", at)
    assert deletes(data) == [("recording.delete", rec.id, {"reason": "withdrawn", "by": "command"})]
    assert data.audit()[-1].actor == "alice"


def test_delete_recording_twice_deletes_and_audits_once(data):
    _call, rec = data.add_call(age=DAY)
    assert recordings.delete_recording(rec.id, reason="withdrawn", actor="server", vault=data.vault,
                                       spool_dir=data.spool)
    entries = ledger.AuditEntry.select().count()
    assert not recordings.delete_recording(rec.id, reason="erasure", actor="server", vault=data.vault,
                                           spool_dir=data.spool)
    assert ledger.AuditEntry.select().count() == entries
    assert data.recording(rec.id).state_reason == "withdrawn"  # the first deletion's reason stays


def test_a_held_recording_is_kept_and_the_refusal_audited(data):
    _call, rec = data.add_call(age=DAY)
    (hold,) = holds.add(rec.id, reason="aggression", case_ref="PV-1", note=None, actor="officer")
    assert not recordings.delete_recording(rec.id, reason="withdrawn", actor="server", vault=data.vault,
                                           spool_dir=data.spool)
    assert data.store_files() == [f"{rec.id}.age"]
    assert data.recording(rec.id).state == ledger.SEALED
    assert deletes(data) == [("recording.delete.refused", rec.id, {"reason": "withdrawn", "holds": [hold.id]})]


def test_files_that_cannot_be_removed_leave_the_ledger_untouched(data):
    """Files first: a failure (or a kill) before the ledger write never says "deleted" over bytes on disk."""
    _call, rec = data.add_call(age=DAY)

    class StuckVault:
        def delete(self, recording_id, **_kw):
            raise PermissionError(13, "Permission denied")

    entries = ledger.AuditEntry.select().count()
    with pytest.raises(PermissionError):
        recordings.delete_recording(rec.id, reason="withdrawn", actor="server", vault=StuckVault(),
                                    spool_dir=data.spool)
    assert data.recording(rec.id).state == ledger.SEALED
    assert ledger.AuditEntry.select().count() == entries


def test_record_deleted_is_the_ledger_part_alone(data):
    _call, rec = data.add_call(age=DAY)
    assert recordings.record_deleted(rec.id, reason="withdrawn")
    assert not recordings.record_deleted(rec.id, reason="withdrawn")
    assert data.store_files() == [f"{rec.id}.age"]  # its files are the caller's part
    assert deletes(data) == [("recording.delete", rec.id, {"reason": "withdrawn"})]


def test_mark_deleted_counts_only_what_it_changed(data):
    recs = [data.add_call(age=DAY)[1] for _ in range(3)]
    _call, gone = data.add_call(age=DAY, recording=ledger.DELETED)
    at = ledger.utcnow()
    assert recordings.mark_deleted([r.id for r in recs[:2]] + [gone.id], reason="erasure", at=at) == 2
    assert [data.recording(r.id).state for r in recs] == [ledger.DELETED, ledger.DELETED, ledger.SEALED]
    assert data.recording(gone.id).state_reason == "withdrawn"
    assert data.audit("recording.") == []  # set-based: the caller audits


# --- the other transitions --------------------------------------------------------------------


def test_sealed_only_from_recording_and_in_recovery_from_failed(data):
    _call, live = data.add_call(age=DAY, recording=ledger.RECORDING)
    _call, failed = data.add_call(age=DAY, recording=ledger.FAILED)
    _call, deleted = data.add_call(age=DAY, recording=ledger.DELETED)
    assert recordings.sealed(live.id, size=10, sha256="a" * 64)
    assert not recordings.sealed(live.id, size=10, sha256="a" * 64)  # sealed already: audited once
    assert not recordings.sealed(failed.id, size=10, sha256="b" * 64)
    assert recordings.sealed(failed.id, size=10, sha256="b" * 64, recovered=True)
    assert not recordings.sealed(deleted.id, size=10, sha256="c" * 64, recovered=True)  # never brought back
    assert [data.recording(r.id).state for r in (live, failed, deleted)] == [ledger.SEALED, ledger.SEALED,
                                                                            ledger.DELETED]
    assert [(e.object_id, json.loads(e.detail).get("recovered")) for e in data.audit("recording.seal")] == [
        (live.id, None), (failed.id, True)]


def test_not_sealed_only_while_recording(data):
    _call, live = data.add_call(age=DAY, recording=ledger.RECORDING)
    _call, sealed = data.add_call(age=DAY)
    recordings.not_sealed(live.id, ledger.FAILED, "store-full")
    recordings.not_sealed(sealed.id, ledger.DISCARDED, "no-audio")
    assert (data.recording(live.id).state, data.recording(live.id).state_reason) == (ledger.FAILED, "store-full")
    assert data.recording(sealed.id).state == ledger.SEALED


# --- one writer ---------------------------------------------------------------------------------

STATE_COLUMNS = {"state", "state_reason", "deleted_at", "sealed_at"}


def _state_writes(tree: ast.AST) -> list[int]:
    """Lines that write a recording's state: ``x.state = ...`` (but ``self.state``, a protocol
    object's own), ``Recording.update/insert/create/insert_many(state=...)``, ``Recording(state=...)``,
    ``{Recording.state: ...}`` and SQL that updates the table."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            flat = [t for target in targets for t in (target.elts if isinstance(target, ast.Tuple) else [target])]
            if any(isinstance(t, ast.Attribute) and t.attr in STATE_COLUMNS
                   and not (isinstance(t.value, ast.Name) and t.value.id == "self") for t in flat):
                lines.append(node.lineno)
        elif isinstance(node, ast.Call):
            func = node.func
            on_recording = (isinstance(func, ast.Name) and func.id == "Recording") or (
                isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "Recording")
            if on_recording and any(k.arg in STATE_COLUMNS for k in node.keywords):
                lines.append(node.lineno)
        elif isinstance(node, ast.Dict):
            if any(isinstance(k, ast.Attribute) and k.attr in STATE_COLUMNS and isinstance(k.value, ast.Name)
                   and k.value.id == "Recording" for k in node.keys):
                lines.append(node.lineno)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if "update recording" in " ".join(node.value.lower().split()):
                lines.append(node.lineno)
    return lines


def _scan(find) -> dict[str, list[int]]:
    """``{module: lines}`` of what ``find(tree)`` reports in each module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = find(ast.parse(path.read_text(encoding="utf-8")))
        if lines:
            found[path.relative_to(PACKAGE).as_posix()] = lines
    return found


def test_only_the_repository_writes_a_recordings_state():
    writers = _scan(_state_writes)
    assert set(writers) == {"recordings.py"}, writers


def test_the_scan_sees_every_form_of_write():
    forms = [
        "rec.state = 'deleted'", "rec.state, rec.deleted_at = a, b", "Recording.update(state=x).execute()",
        "Recording.insert(id=i, state=x)", "Recording.create(state=x)", "Recording(state=x)",
        "Recording.update({Recording.state: x})", "db.execute_sql('UPDATE recording SET state = ?')",
    ]
    assert [bool(_state_writes(ast.parse(form))) for form in forms] == [True] * len(forms)
    assert not _state_writes(ast.parse("self.state = State.OPEN\nRecording.select().where(Recording.state == x)"))


# --- audit action names -------------------------------------------------------------------------


def _bad_actions(tree: ast.AST) -> list[int]:
    """Lines of ``append_audit`` calls whose action is not an ``audit_actions`` constant."""

    def named(node: ast.AST) -> bool:
        if isinstance(node, ast.IfExp):
            return named(node.body) and named(node.orelse)
        return (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "audit_actions"
                and getattr(audit_actions, node.attr, None) in audit_actions.ACTIONS)

    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "append_audit":
            action = node.args[1] if len(node.args) > 1 else next(
                (k.value for k in node.keywords if k.arg == "action"), None)
            if action is None or not named(action):
                bad.append(node.lineno)
    return bad


def test_every_audit_action_written_is_a_named_one():
    assert _scan(_bad_actions) == {}
    assert _bad_actions(ast.parse("ledger.append_audit('x', 'recording.delete', 'recording', i)"))
    assert _bad_actions(ast.parse("append_audit('x', f'consent.{what}', 'call', i)"))
    assert _bad_actions(ast.parse("append_audit('x', audit_actions.NO_SUCH_ACTION, 'call', i)"))


# --- the seal that a withdrawal overtook -----------------------------------------------------------


def test_a_withdrawal_before_the_delayed_seal_removes_the_plaintext(data):
    """The driver leaves a recording it asked to seal to the seal (it may be held once sealed); a
    withdrawal that comes first must still take the plaintext with it, not leave it for a restart."""
    from fs_consent.runtime.server import ServerContext

    _call, rec = data.add_call(age=DAY, recording=ledger.RECORDING, spool_plaintext=True)
    ctx = ServerContext(config=None)
    ctx.spool_dir, ctx.vault = data.spool, data.vault
    ctx._seal(rec.id, {rec.id})
    assert data.spool_files() == [] and data.store_files() == []
