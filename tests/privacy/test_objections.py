"""Objection (art. 21) in the ledger: placing, withdrawing, what is in force, and the audit trail."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from fs_consent.privacy import objections, subject_requests
from fs_consent.privacy.subjects import SubjectError, phone_hash
from fs_consent.store import ledger
from fs_consent.store.connection import close_database

from ..ledger_data import DataDir

NUMBER = "0612345678"


@pytest.fixture
def data(tmp_path):
    d = DataDir(tmp_path / "data")
    yield d
    close_database()


def request(ref: str) -> ledger.SubjectRequest:
    return subject_requests.add(ref, "object", dt.date.today(), actor="privacy-officer")


def state() -> tuple:
    """What a refused call must leave exactly as it was."""
    rows = ledger.Objection.select().order_by(ledger.Objection.id)
    return [(o.id, o.withdrawn_at, o.withdraw_request_id) for o in rows], ledger.AuditEntry.select().count()


def test_an_objection_is_in_force_for_every_written_form_until_withdrawn(data):
    hashed = phone_hash(data.protector, "06-12 34 56 78")
    assert objections.active(hashed) is None
    placed = objections.place(hashed, request("OBJ-1"), actor="alice")
    assert (placed.placed_by, placed.request.ref, placed.withdrawn_at) == ("alice", "OBJ-1", None)
    for written in ("+31 6 12345678", "0031612345678", NUMBER):
        assert objections.active(phone_hash(data.protector, written)).id == placed.id
        assert objections.objects(phone_hash(data.protector, written))  # the driver's question
    assert objections.active(phone_hash(data.protector, "0687654321")) is None  # another number
    assert not objections.objects(phone_hash(data.protector, "0687654321"))

    ended = objections.withdraw(phone_hash(data.protector, "+31612345678"), request("OBJ-2"), actor="bob")
    assert ended.id == placed.id
    row = ledger.Objection.get_by_id(placed.id)
    assert row.withdrawn_at is not None and row.withdrawn_by == "bob" and row.withdraw_request.ref == "OBJ-2"
    assert objections.active(hashed) is None and not objections.objects(hashed)

    # objecting again later is a new objection; the history stays
    again = objections.place(hashed, request("OBJ-3"), actor="alice")
    assert again.id != placed.id and objections.active(hashed).id == again.id
    assert ledger.Objection.select().count() == 2


def test_place_and_withdraw_are_audited_with_the_request_and_never_the_number(data):
    hashed = phone_hash(data.protector, NUMBER)
    placed = objections.place(hashed, request("OBJ-1"), actor="alice")
    objections.withdraw(hashed, request("OBJ-2"), actor="bob")
    entries = [e for e in ledger.AuditEntry.select().order_by(ledger.AuditEntry.seq) if e.action.startswith("subject.")]
    assert [(e.actor, e.action, e.object_type, e.object_id, json.loads(e.detail)) for e in entries] == [
        ("alice", "subject.object", "request", "OBJ-1", {"objection": placed.id}),
        ("bob", "subject.withdraw_objection", "request", "OBJ-2", {"objection": placed.id}),
    ]
    for entry in ledger.AuditEntry.select():
        assert hashed not in entry.detail and "612345678" not in entry.detail


def test_a_second_objection_is_refused_saying_since_when_and_changes_nothing(data):
    hashed = phone_hash(data.protector, NUMBER)
    placed = objections.place(hashed, request("OBJ-1"), actor="alice")
    second = request("OBJ-2")
    before = state()
    with pytest.raises(SubjectError) as refused:
        objections.place(phone_hash(data.protector, "+31612345678"), second, actor="alice")
    message = str(refused.value)
    assert f"since {placed.placed_at.isoformat(timespec='seconds')}Z" in message and "request OBJ-1" in message
    assert "612345678" not in message and hashed not in message
    assert state() == before


def test_withdrawing_without_an_objection_in_force_is_refused_and_changes_nothing(data):
    hashed = phone_hash(data.protector, NUMBER)
    withdrawal = request("OBJ-9")
    before = state()
    with pytest.raises(SubjectError, match="no objection in force"):
        objections.withdraw(hashed, withdrawal, actor="bob")
    assert state() == before

    objections.place(hashed, request("OBJ-1"), actor="alice")
    objections.withdraw(hashed, withdrawal, actor="bob")
    late = request("OBJ-10")
    before = state()
    with pytest.raises(SubjectError, match="no objection in force"):  # withdrawn already
        objections.withdraw(hashed, late, actor="bob")
    assert state() == before
