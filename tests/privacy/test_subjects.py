"""Data subject rights on a real ledger and real files: find, erase, restrict, rectify, object.

The number is found through its keyed hash in every written form; every action names a
request of the register; bad input changes nothing (rows, files, audit trail).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fs_consent.privacy import objections, retention, subject_requests, subjects
from fs_consent.privacy.errors import RecordingRestricted, SubjectError
from fs_consent.privacy.retention import Purge, Terms, purge_lock
from fs_consent.secure.protect import FieldProtector
from fs_consent.store import holds, ledger
from fs_consent.store.connection import close_database

from ..ledger_data import AS_OF, DAY, DataDir

A = "0612345678"  # the subject
B = "0687654321"  # someone else
A_FORMS = ["0612345678", "06-12345678", "06 1234 5678", "+31612345678", "+31 6 1234 5678", "0031612345678",
           "0031 6 12345678", "+31 (0)6 12 34 56 78", "06.12.34.56.78", "612345678"]


@pytest.fixture
def data(tmp_path):
    d = DataDir(tmp_path / "data")
    yield d
    close_database()


def request(ref: str, kind: str, *, days_ago: int = 1) -> ledger.SubjectRequest:
    return subject_requests.add(ref, kind, dt.date.today() - dt.timedelta(days=days_ago), actor="officer")


def hash_of(d: DataDir, number: str) -> str:
    return subjects.phone_hash(d.protector, number)


def state(d: DataDir) -> dict:
    """Everything a subject command could change."""
    return {
        "calls": sorted((c.uuid, c.caller_hash, bytes(c.caller_sealed) if c.caller_sealed else None,
                         c.personal_erased_at, c.personal_erased_reason, c.ended_at) for c in ledger.Call.select()),
        "recordings": sorted((r.id, r.state, r.state_reason, r.deleted_at) for r in ledger.Recording.select()),
        "details": sorted((x.call_id, x.field, bytes(x.value_sealed), x.request_id) for x in ledger.CallDetail.select()),
        "restrictions": sorted((r.call_id, r.request_id, r.lifted_at) for r in ledger.Restriction.select()),
        "objections": sorted((o.id, o.withdrawn_at) for o in ledger.Objection.select()),
        "holds": sorted((h.id, h.released_at) for h in ledger.LegalHold.select()),
        "store": d.store_files(), "spool": d.spool_files(), "audit": len(d.audit()),
    }


def find(d: DataDir, number: str, *extra: str) -> list[dict]:
    result = d.cli("subject", "find", "--phone", number, "--format", "json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.output[:result.output.rindex("]") + 1])


def detail(entry: ledger.AuditEntry) -> dict:
    return json.loads(entry.detail)


# --- the normaliser: every written form finds the same calls ---------------------------------


def _grouped(digits: str, sizes: list[int], sep: str) -> str:
    parts, rest = [], digits
    for size in sizes:
        if not rest:
            break
        parts.append(rest[:size])
        rest = rest[size:]
    if rest:
        parts.append(rest)
    return sep.join(parts)


@st.composite
def dutch_number(draw) -> str:
    """The national significant number: 9 digits, 6... for a mobile, an area code 1-5 or 7 otherwise."""
    first = draw(st.sampled_from("1234567"))
    return first + draw(st.text("0123456789", min_size=8, max_size=8))


@st.composite
def written(draw, nsn: str) -> str:
    """One way of writing the number, as people and trunks do."""
    prefix = draw(st.sampled_from(["0", "+31", "0031", "+31 (0)", "+31(0)", "+31 ", "0031 ", "00 31 "]))
    sep = draw(st.sampled_from(["", " ", "-", ".", " - "]))
    sizes = draw(st.lists(st.integers(1, 4), min_size=1, max_size=5))
    body = _grouped(nsn, sizes, sep)
    if prefix == "0" and draw(st.booleans()):  # (040) 123 45 67
        area = 1 if nsn[0] == "6" else draw(st.integers(1, 3))
        return f"(0{nsn[:area]}) {_grouped(nsn[area:], sizes, sep)}"
    return prefix + body


@pytest.fixture(scope="module")
def ledger_for_forms(tmp_path_factory):
    d = DataDir(tmp_path_factory.mktemp("forms") / "data")
    yield d
    close_database()


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), nsn=dutch_number())
def test_every_written_form_of_a_number_finds_the_same_calls(ledger_for_forms, data, nsn):
    d = ledger_for_forms
    protector = d.protector
    delivered = data.draw(written(nsn), label="as the trunk delivered it")
    caller_hash = hash_of(d, delivered)
    mine = {c.uuid for c in subjects.calls_of(caller_hash)}
    for _ in range(data.draw(st.integers(1, 2), label="calls")):
        call = ledger.Call.create(uuid=str(uuid.uuid4()), started_at=AS_OF, consent_mode="opt-out", language="nl",
                                  prompt_id="p", prompt_version="1", caller_hash=caller_hash,
                                  caller_sealed=protector.seal("phone", delivered))
        mine.add(call.uuid)
    asked = data.draw(written(nsn), label="as the requester wrote it")
    found = list(subjects.calls_of(hash_of(d, asked)))
    assert {c.uuid for c in found} == mine
    other = nsn[:-1] + str((int(nsn[-1]) + 1) % 10)  # one digit off: another caller
    assert hash_of(d, "0" + other) != hash_of(d, asked)


@settings(max_examples=200, deadline=None)
@given(text=st.one_of(
    st.from_regex(r"[A-Za-z]{3,12}[ .-]?[0-9]{1,6}", fullmatch=True),  # a name, a street and number
    st.from_regex(r"0[1-9][0-9]{1,4}", fullmatch=True),  # too short for a national number
    st.from_regex(r"\+31[1-9][0-9]{13,15}", fullmatch=True),  # too long
    st.from_regex(r"[0-9]{2,4}[A-Za-z]{2,3}", fullmatch=True),  # a postcode
))
@pytest.mark.slow
def test_a_non_number_is_refused_without_repeating_it(text):
    protector = FieldProtector(b"k" * 64)
    with pytest.raises(SubjectError) as caught:
        subjects.phone_hash(protector, text)
    message = str(caught.value)
    assert text not in message and text.strip() not in message
    assert "not usable" in message or "anonymous" in message


@pytest.mark.parametrize("text", ["", "   ", "anonymous", "0000000000", "Private"])
def test_no_number_is_refused(text):
    with pytest.raises(SubjectError, match="empty or anonymous"):
        subjects.phone_hash(FieldProtector(b"k" * 64), text)


# --- find ---------------------------------------------------------------------------------


def history(d: DataDir):
    """Two calls from A (one with plaintext left in the spool), one refused call from A, one from B."""
    a1, r1 = d.add_call(age=3 * DAY, number=A)
    a2, r2 = d.add_call(age=2 * DAY, number="+31 6 1234 5678", spool_plaintext=True)
    a3, _ = d.add_call(age=1 * DAY, number="06-12345678", recording=None, outcome="refused")
    b1, rb = d.add_call(age=1 * DAY, number=B)
    return (a1, r1), (a2, r2), a3, (b1, rb)


@pytest.mark.slow
@pytest.mark.parametrize("form", A_FORMS)
def test_find_lists_the_calls_of_the_number_in_any_form_and_never_shows_it(data, form):
    (a1, r1), (a2, r2), a3, _ = history(data)
    request("REQ-1", "access")
    result = data.cli("subject", "find", "--phone", form, "--request", "REQ-1", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output[:result.output.rindex("]") + 1])
    assert [r["uuid"] for r in rows] == [a1.uuid, a2.uuid, a3.uuid]  # oldest first, not B's
    assert rows[0]["recordings"] == f"{r1.id}:sealed" and rows[2]["recordings"] is None
    assert (rows[2]["outcome"], rows[0]["held"], rows[0]["restricted"]) == ("refused", None, None)
    assert "objection: none" in result.output
    for secret in ("612345678", "12345678", a1.caller_hash):
        assert secret not in result.output
    (entry,) = data.audit("subject.find")
    assert (entry.object_type, entry.object_id, detail(entry)) == ("request", "REQ-1", {"calls": 3})
    assert entry.actor == ledger.os_user()


def test_find_without_a_request_is_audited_as_a_look_up(data):
    history(data)
    result = data.cli("subject", "find", "--phone", B)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["uuid", "started_at", "ended_at", "outcome", "decided_by", "recordings", "held",
                                "restricted", "details"]
    assert len(lines) == 3 and lines[-1].startswith("objection: none")
    (entry,) = data.audit("subject.find")
    assert (entry.object_type, entry.object_id, detail(entry)) == ("subject", "-", {"calls": 1})


def test_find_shows_holds_restrictions_details_and_the_objection(data):
    (a1, r1), (a2, _), _, _ = history(data)
    (hold,) = holds.add(r1.id, reason="aggression", case_ref="PV-7", note=None, actor="officer")
    subjects.restrict(hash_of(data, A), request("R-1", "restrict"), actor="officer")
    subjects.rectify(a2.uuid, "name", "J. Jansen", request("RE-1", "rectify"), actor="officer",
                     protector=data.protector)
    objections.place(hash_of(data, A), request("O-1", "object"), actor="officer")
    result = data.cli("subject", "find", "--phone", A, "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = {r["uuid"]: r for r in find(data, A)}
    assert rows[a1.uuid]["held"] == f"#{hold.id}" and rows[a2.uuid]["held"] is None
    assert {r["restricted"] for r in rows.values()} == {"R-1"}
    assert rows[a2.uuid]["details"] == "name" and "Jansen" not in result.output
    assert "objection: in force since" in result.output and "(request O-1)" in result.output


def test_calls_show_tells_holds_flags_restriction_details_and_erasure_but_no_personal_value(data):
    (a1, r1), (a2, _), _, _ = history(data)
    holds.flag_call(a1.id, a1.uuid, "aggression", by="agent-key", at=a1.ended_at)
    (hold,) = holds.add(r1.id, reason="aggression", case_ref="PV-8", note=None, actor="officer")
    subjects.restrict(hash_of(data, A), request("R-2", "restrict"), actor="officer")
    subjects.rectify(a1.uuid, "address", "Stationsplein 1", request("RE-2", "rectify"), actor="officer",
                     protector=data.protector)
    shown = data.cli("calls", "show", a1.uuid, "--format", "json")
    assert shown.exit_code == 0, shown.output
    row = json.loads(shown.output)
    assert "aggression by agent-key" in row["flags"] and f"hold #{hold.id} (case PV-8" in row["holds"]
    assert "(request R-2)" in row["restricted"] and row["details"] == "address"
    assert row["personal_erased"] == ""
    assert "Stationsplein" not in shown.output and "612345678" not in shown.output

    request("ER-10", "erase")
    assert data.cli("subject", "erase", "--phone", A, "--request", "ER-10").exit_code == 1  # a1 is held
    row = json.loads(data.cli("calls", "show", a2.uuid, "--format", "json").output)
    assert row["personal_erased"].endswith("(erasure:ER-10)") and row["holds"] == ""


def test_find_of_an_unusable_number_or_unknown_request_changes_nothing(data):
    history(data)
    before = state(data)
    for args in (["--phone", "Jansen 12"], ["--phone", "06-123"], ["--phone", A, "--request", "NOPE"]):
        result = data.cli("subject", "find", *args)
        assert result.exit_code == 1 and result.output.startswith("Error: ")
        assert "Jansen" not in result.output and "06-123" not in result.output
    assert state(data) == before


def test_the_number_can_be_read_from_stdin(data):
    (a1, _), _, _, _ = history(data)
    result = data.cli("subject", "find", "--phone", "-", "--format", "json", input="+31 6 12345678\n")
    assert result.exit_code == 0, result.output
    assert a1.uuid in result.output


# --- erase --------------------------------------------------------------------------------


def test_erase_leaves_no_file_no_personal_field_and_no_way_to_find_the_number(data):
    (a1, r1), (a2, r2), a3, (b1, rb) = history(data)
    request("ER-1", "erase")
    subjects.rectify(a1.uuid, "address", "Stationsplein 1", request("RE-1", "rectify"), actor="o",
                     protector=data.protector)
    result = data.cli("subject", "erase", "--phone", "+31 (0)6 1234 5678", "--request", "ER-1")
    assert result.exit_code == 0, result.output
    assert f"deleted 2 recordings ({r1.id}, {r2.id}); erased the personal data of 3 calls" in result.output
    assert data.store_files() == [f"{rb.id}.age"] and data.spool_files() == []
    for call in (a1, a2, a3):
        row = data.call(call.id)
        assert (row.caller_hash, row.caller_sealed, row.personal_erased_reason) == (None, None, "erasure:ER-1")
        assert row.personal_erased_at is not None and row.outcome == call.outcome  # the anonymous rest stays
    assert ledger.CallDetail.select().count() == 0
    for rec in (r1, r2):
        assert (data.recording(rec.id).state, data.recording(rec.id).state_reason) == ("deleted", "erasure")
    assert data.call(b1.id).caller_hash == b1.caller_hash and data.recording(rb.id).state == "sealed"
    assert find(data, A) == [] and [r["uuid"] for r in find(data, B)] == [b1.uuid]
    (entry,) = data.audit("subject.erase")
    assert (entry.object_type, entry.object_id, entry.actor) == ("request", "ER-1", ledger.os_user())
    assert detail(entry) == {"calls": [a1.uuid, a2.uuid, a3.uuid], "recordings_deleted": [r1.id, r2.id],
                             "personal_erased": [a1.uuid, a2.uuid, a3.uuid], "refused": {}, "kept": [],
                             "in_progress": [], "recordings_only": False, "objections_unlinked": 0}
    assert a1.caller_hash not in entry.detail
    # erased: the number is gone, a second erasure finds nothing
    again = data.cli("subject", "erase", "--phone", A, "--request", "ER-1")
    assert again.exit_code == 1 and "no calls from the number given" in again.output


def test_erase_recordings_only_keeps_the_calls(data):
    (a1, r1), (a2, r2), a3, (_, rb) = history(data)
    request("ER-2", "erase")
    result = data.cli("subject", "erase", "--phone", A, "--request", "ER-2", "--recordings-only")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("request ER-2: deleted 2 recordings") and "personal data" not in result.output
    assert data.store_files() == [f"{rb.id}.age"] and data.spool_files() == []
    assert all(data.call(c.id).caller_hash == a1.caller_hash for c in (a1, a2, a3))
    rows = find(data, A)
    assert [r["recordings"] for r in rows] == [f"{r1.id}:deleted", f"{r2.id}:deleted", None]
    assert detail(data.audit("subject.erase")[0])["recordings_only"] is True
    again = data.cli("subject", "erase", "--phone", A, "--request", "ER-2", "--recordings-only")
    assert again.exit_code == 1 and "nothing left to erase" in again.output


def test_erase_of_one_call(data):
    (a1, r1), (a2, r2), a3, _ = history(data)
    request("ER-3", "erase")
    result = data.cli("subject", "erase", "--phone", A, "--request", "ER-3", "--call", a2.uuid)
    assert result.exit_code == 0, result.output
    assert data.recording(r2.id).state == "deleted" and data.recording(r1.id).state == "sealed"
    assert data.call(a2.id).caller_hash is None and data.call(a1.id).caller_hash is not None
    assert [r["uuid"] for r in find(data, A)] == [a1.uuid, a3.uuid]


def test_a_held_recording_is_refused_with_its_hold_named_and_the_rest_goes(data):
    (a1, r1), (a2, r2), a3, (_, rb) = history(data)
    (hold,) = holds.add(r1.id, reason="intimidation", case_ref="PV-2027-3", note=None, actor="officer")
    request("ER-4", "erase")
    result = data.cli("subject", "erase", "--phone", A, "--request", "ER-4")
    assert result.exit_code == 1
    assert f"refused: recording {r1.id} is under legal hold: hold #{hold.id} (case PV-2027-3" in result.output
    assert f"kept the number of call {a1.uuid}" in result.output
    assert data.store_files() == sorted([f"{r1.id}.age", f"{rb.id}.age"]) and data.spool_files() == []
    assert data.call(a1.id).caller_hash == a1.caller_hash  # the hold keeps the call record
    assert data.call(a2.id).caller_hash is None and data.call(a3.id).caller_hash is None
    entry = detail(data.audit("subject.erase")[0])
    assert (entry["refused"], entry["kept"], entry["recordings_deleted"]) == ({r1.id: hold.id}, [a1.uuid], [r2.id])
    assert [r["uuid"] for r in find(data, A)] == [a1.uuid]


def test_erasing_only_a_held_recording_is_an_error_and_changes_nothing(data):
    (a1, r1), _, _, _ = history(data)
    (hold,) = holds.add(r1.id, reason="aggression", case_ref="PV-1", note=None, actor="officer")
    request("ER-5", "erase")
    before = state(data)
    for extra in (["--call", a1.uuid], ["--call", a1.uuid, "--recordings-only"]):
        result = data.cli("subject", "erase", "--phone", A, "--request", "ER-5", *extra)
        assert result.exit_code == 1
        assert f"nothing was erased: recording {r1.id} is under legal hold: hold #{hold.id}" in result.output
    assert state(data) == before


def test_a_call_in_progress_is_skipped_and_said(data):
    (a1, r1), _, _, _ = history(data)
    live, live_rec = data.add_call(age=DAY, number=A, recording=ledger.RECORDING)
    ledger.Call.update(ended_at=None).where(ledger.Call.id == live.id).execute()
    request("ER-6", "erase")
    result = data.cli("subject", "erase", "--phone", A, "--request", "ER-6")
    assert result.exit_code == 0, result.output
    assert f"skipped call {live.uuid}: still in progress" in result.output
    assert data.call(live.id).caller_hash == live.caller_hash and data.recording(live_rec.id).state == "recording"
    only_live = data.cli("subject", "erase", "--phone", A, "--request", "ER-6")
    assert only_live.exit_code == 1 and f"call {live.uuid} is still in progress" in only_live.output


def test_a_call_whose_recording_is_being_sealed_waits(data):
    """The server may still write its ciphertext, or hold it for the agent's aggression flag."""
    (a1, r1), _, _, _ = history(data)
    sealing, rec = data.add_call(age=DAY // 4, number=A, recording=ledger.RECORDING, spool_plaintext=True)
    request("ER-12", "erase")
    result = data.cli("subject", "erase", "--phone", A, "--request", "ER-12")
    assert result.exit_code == 0, result.output
    assert f"skipped call {sealing.uuid}: still in progress (or its recording is being sealed)" in result.output
    assert data.spool_files() == [f"{rec.id}.wav"] and data.recording(rec.id).state == ledger.RECORDING
    assert data.call(sealing.id).caller_hash is not None and data.call(a1.id).caller_hash is None
    assert detail(data.audit("subject.erase")[0])["in_progress"] == [sealing.uuid]


def test_an_erasure_killed_after_the_files_is_completed_by_a_rerun(data, monkeypatch):
    (a1, r1), (a2, r2), _, _ = history(data)
    req = request("ER-7", "erase")

    def killed(*_a, **_k):
        raise KeyboardInterrupt  # after the files, inside the transaction: it rolls back

    monkeypatch.setattr(ledger, "append_audit", killed)
    with pytest.raises(KeyboardInterrupt):
        subjects.erase(hash_of(data, A), req, actor="o", spool_dir=data.spool, vault=data.vault)
    monkeypatch.undo()
    assert f"{r1.id}.age" not in data.store_files() and data.spool_files() == []
    assert data.recording(r1.id).state == "sealed" and data.call(a1.id).caller_hash is not None
    report = subjects.erase(hash_of(data, A), req, actor="o", spool_dir=data.spool, vault=data.vault)
    assert report.deleted == [r1.id, r2.id] and len(report.erased) == 3
    assert data.recording(r1.id).state == "deleted" and data.call(a1.id).caller_hash is None


def test_an_objection_stays_in_force_after_an_erasure_and_says_so(data):
    history(data)
    objections.place(hash_of(data, A), request("O-2", "object"), actor="officer")
    request("ER-8", "erase")
    result = data.cli("subject", "erase", "--phone", A, "--request", "ER-8")
    assert result.exit_code == 0, result.output
    assert "an objection stays in force for this number (request O-2)" in result.output
    assert objections.active(hash_of(data, A)) is not None


def test_an_erasure_leaves_no_withdrawn_objection_that_finds_the_number(data):
    history(data)
    number_hash = hash_of(data, A)
    objections.place(number_hash, request("O-3", "object"), actor="officer")
    objections.withdraw(number_hash, request("O-4", "object"), actor="officer")
    request("ER-9", "erase")
    result = data.cli("subject", "erase", "--phone", A, "--request", "ER-9")
    assert result.exit_code == 0, result.output
    assert ledger.Objection.select().where(ledger.Objection.caller_hash == number_hash).count() == 0
    assert ledger.Objection.select().count() == 1  # the history stays, without the number
    assert detail(data.audit("subject.erase")[-1])["objections_unlinked"] == 1


def _bad_erasures(data):
    (a1, _), _, _, (b1, _) = history(data)
    request("ER-OK", "erase")
    request("RS-1", "restrict")
    request("ER-LATE", "erase", days_ago=40)
    request("ER-NO", "erase")
    subject_requests.decide("ER-NO", "refused", "not the requester's number", actor="officer")
    return [
        (["--phone", "Jansen 12", "--request", "ER-OK"], "phone number given is not usable"),
        (["--phone", "", "--request", "ER-OK"], "empty or anonymous"),
        (["--phone", A, "--request", "NOPE"], "no request NOPE in the register"),
        (["--phone", A, "--request", "RS-1"], "of kind restrict; this action needs a request of kind erase"),
        (["--phone", A, "--request", "ER-LATE"], "is undecided"),
        (["--phone", A, "--request", "ER-NO"], "was refused"),
        (["--phone", A, "--request", "ER-OK", "--call", str(uuid.uuid4())], "no call with uuid"),
        (["--phone", A, "--request", "ER-OK", "--call", b1.uuid], f"call {b1.uuid} is not from the number given"),
        (["--phone", "0201234567", "--request", "ER-OK"], "no calls from the number given"),
    ]


def test_bad_erasure_input_is_one_clear_error_and_changes_nothing(data):
    cases = _bad_erasures(data)
    before = state(data)
    for args, message in cases:
        result = data.cli("subject", "erase", *args)
        assert result.exit_code == 1, args
        assert result.output.startswith("Error: ") and message in result.output, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1
        assert "Jansen" not in result.output
    assert state(data) == before


def test_an_erased_call_cannot_be_erased_or_rectified_again(data):
    (a1, _), _, _, _ = history(data)
    request("ER-9", "erase")
    request("RE-9", "rectify")
    assert data.cli("subject", "erase", "--phone", A, "--request", "ER-9", "--call", a1.uuid).exit_code == 0
    before = state(data)
    again = data.cli("subject", "erase", "--phone", A, "--request", "ER-9", "--call", a1.uuid)
    assert again.exit_code == 1 and f"the personal data of call {a1.uuid} was already erased (erasure:ER-9" \
        in again.output
    rectify = data.cli("subject", "rectify", "--call", a1.uuid, "--field", "name", "--value", "X", "--request", "RE-9")
    assert rectify.exit_code == 1 and "there is nothing to rectify" in rectify.output
    assert state(data) == before


# --- restriction ----------------------------------------------------------------------------


def test_restrict_blocks_playing_and_export_until_lifted(data):
    (a1, r1), (a2, _), a3, (b1, _) = history(data)
    request("RS-2", "restrict")
    result = data.cli("subject", "restrict", "--phone", "+31612345678", "--request", "RS-2")
    assert result.exit_code == 0, result.output
    assert "restricted 3 calls" in result.output and a1.uuid in result.output
    for call in (a1, a2, a3):
        with pytest.raises(RecordingRestricted, match="request RS-2"):
            subjects.refuse_if_restricted(call.id, legal_claim=None)
        assert subjects.refuse_if_restricted(call.id, legal_claim="court case 12").request.ref == "RS-2"
    assert subjects.refuse_if_restricted(b1.id, legal_claim=None) is None
    (entry,) = data.audit("subject.restrict")
    assert (entry.object_id, detail(entry)) == ("RS-2", {"calls": [a1.uuid, a2.uuid, a3.uuid]})

    before = state(data)
    again = data.cli("subject", "restrict", "--phone", A, "--request", "RS-2")
    assert again.exit_code == 1 and "are all restricted already" in again.output
    assert state(data) == before
    # a later call of the number is restricted by a second run, the others keep theirs
    a4, _ = data.add_call(age=DAY // 2, number=A)
    assert data.cli("subject", "restrict", "--phone", A, "--request", "RS-2").exit_code == 0
    assert detail(data.audit("subject.restrict")[1]) == {"calls": [a4.uuid]}

    request("RS-3", "restrict")
    lifted = data.cli("subject", "unrestrict", "--phone", A, "--request", "RS-3")
    assert lifted.exit_code == 0 and "lifted the restriction of 4 calls" in lifted.output
    assert all(subjects.refuse_if_restricted(c.id, legal_claim=None) is None for c in (a1, a2, a3, a4))
    assert {(r.lift_request.ref, r.lifted_by) for r in ledger.Restriction.select()} == {("RS-3", ledger.os_user())}
    assert detail(data.audit("subject.unrestrict")[0]) == {"calls": [a1.uuid, a2.uuid, a3.uuid, a4.uuid]}
    before = state(data)
    again = data.cli("subject", "unrestrict", "--phone", A, "--request", "RS-3")
    assert again.exit_code == 1 and "none of the 4 calls from the number given is restricted" in again.output
    assert state(data) == before


def test_restrict_needs_calls_and_a_restrict_request(data):
    history(data)
    request("RS-4", "restrict")
    request("ER-10", "erase")
    before = state(data)
    for command, args, message in (
        ("restrict", ["--phone", "0201234567", "--request", "RS-4"], "no calls from the number given"),
        ("restrict", ["--phone", A, "--request", "ER-10"], "needs a request of kind restrict"),
        ("unrestrict", ["--phone", A, "--request", "ER-10"], "needs a request of kind restrict"),
        ("restrict", ["--phone", "not a number", "--request", "RS-4"], "not usable"),
    ):
        result = data.cli("subject", command, *args)
        assert result.exit_code == 1 and message in result.output, result.output
    assert state(data) == before


def test_retention_ignores_a_restriction(data):
    call, rec = data.add_call(age=400 * DAY, number=A)
    subjects.rectify(call.uuid, "subject", "parking permit", request("RE-2", "rectify"), actor="o",
                     protector=data.protector)
    subjects.restrict(hash_of(data, A), request("RS-5", "restrict"), actor="officer")
    with purge_lock(data.root):
        report = Purge(vault=data.vault, spool_dir=data.spool, actor="t", as_of=AS_OF, pause=False,
                       terms=Terms(dt.timedelta(days=60), dt.timedelta(days=365))).run()
    assert (report.recordings_deleted, report.calls_erased) == (1, 1)
    assert data.store_files() == [] and ledger.CallDetail.select().count() == 0
    row = data.call(call.id)
    assert (row.caller_hash, row.personal_erased_reason) == (None, "retention") and row.personal_erased_at


def test_retention_erases_the_details_of_an_anonymous_call_and_spares_the_young_and_held(data):
    anonymous, _ = data.add_call(age=400 * DAY, number=None, recording=None)
    young, _ = data.add_call(age=10 * DAY, number=A, recording=None)
    held, rec = data.add_call(age=400 * DAY, number=B)
    holds.add(rec.id, reason="other", case_ref="PV-9", note=None, actor="officer")
    req = request("RE-3", "rectify")
    for call in (anonymous, young, held):
        subjects.rectify(call.uuid, "name", "N", req, actor="o", protector=data.protector)
    counts = retention.expired_counts(AS_OF, Terms(dt.timedelta(days=60), dt.timedelta(days=365)))
    assert (counts["calls"], counts["calls_held"]) == (1, 1)
    with purge_lock(data.root):
        Purge(vault=data.vault, spool_dir=data.spool, actor="t", as_of=AS_OF, pause=False, batch_size=1,
              terms=Terms(dt.timedelta(days=60), dt.timedelta(days=365))).run()
    assert sorted(x.call_id for x in ledger.CallDetail.select()) == sorted([young.id, held.id])
    assert data.call(anonymous.id).personal_erased_reason == "retention"
    assert data.call(young.id).personal_erased_at is None and data.call(held.id).personal_erased_at is None


# --- rectification ------------------------------------------------------------------------


def test_rectify_seals_the_value_replaces_it_and_never_audits_it(data):
    (a1, _), _, _, _ = history(data)
    request("RE-4", "rectify")
    result = data.cli("subject", "rectify", "--call", a1.uuid, "--field", "name", "--value", "Jan Jansen",
                      "--request", "RE-4")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"request RE-4: rectified the name of call {a1.uuid}"
    (row,) = ledger.CallDetail.select()
    assert b"Jansen" not in bytes(row.value_sealed)
    assert data.protector.open("name", bytes(row.value_sealed)) == "Jan Jansen"
    # from stdin (out of shell history and ps), replacing the earlier value
    result = data.cli("subject", "rectify", "--call", a1.uuid, "--field", "name", "--value", "-",
                      "--request", "RE-4", input="Johanna Jansen-de Vries\n")
    assert result.exit_code == 0, result.output
    (row,) = ledger.CallDetail.select()
    assert data.protector.open("name", bytes(row.value_sealed)) == "Johanna Jansen-de Vries"
    assert (row.request.ref, row.updated_by) == ("RE-4", ledger.os_user())
    entries = data.audit("subject.rectify")
    assert [detail(e) for e in entries] == [{"calls": [a1.uuid], "field": "name"}] * 2
    assert all("Jansen" not in e.detail for e in data.audit())


def test_bad_rectification_changes_nothing(data):
    (a1, _), _, _, _ = history(data)
    request("RE-5", "rectify")
    request("ER-11", "erase")
    before = state(data)
    for args, message in (
        (["--call", str(uuid.uuid4()), "--field", "name", "--value", "X", "--request", "RE-5"], "no call with uuid"),
        (["--call", a1.uuid, "--field", "name", "--value", "  ", "--request", "RE-5"], "the new value is empty"),
        (["--call", a1.uuid, "--field", "name", "--value", "X", "--request", "ER-11"], "kind rectify"),
        (["--call", a1.uuid, "--field", "bsn", "--value", "X", "--request", "RE-5"], "Invalid value for '--field'"),
    ):
        result = data.cli("subject", "rectify", *args)
        assert result.exit_code != 0 and message in result.output, result.output
    assert state(data) == before


# --- objection ------------------------------------------------------------------------------


def test_object_and_withdraw_the_objection(data):
    history(data)
    request("O-3", "object")
    result = data.cli("subject", "object", "--phone", "0031 6 12 34 56 78", "--request", "O-3")
    assert result.exit_code == 0, result.output
    assert "calls from this number are not recorded from now on" in result.output
    assert objections.active(hash_of(data, A)).request.ref == "O-3"
    before = state(data)
    again = data.cli("subject", "object", "--phone", A, "--request", "O-3")
    assert again.exit_code == 1 and "already objects" in again.output
    wrong = data.cli("subject", "withdraw-objection", "--phone", A, "--request", "RS-9")
    assert wrong.exit_code == 1 and "no request RS-9" in wrong.output
    assert state(data) == before
    request("O-4", "object")
    done = data.cli("subject", "withdraw-objection", "--phone", "+31612345678", "--request", "O-4")
    assert done.exit_code == 0 and "asked for consent again" in done.output
    assert objections.active(hash_of(data, A)) is None
    none = data.cli("subject", "withdraw-objection", "--phone", A, "--request", "O-4")
    assert none.exit_code == 1 and "nothing to withdraw" in none.output


def test_no_subject_command_writes_the_number_anywhere(data):
    (a1, _), _, _, _ = history(data)
    for ref, kind in (("X-1", "access"), ("X-2", "restrict"), ("X-3", "object"), ("X-4", "erase")):
        request(ref, kind)
    outputs = [data.cli("subject", "find", "--phone", A, "--request", "X-1").output,
               data.cli("subject", "restrict", "--phone", A, "--request", "X-2").output,
               data.cli("subject", "object", "--phone", A, "--request", "X-3").output,
               data.cli("subject", "erase", "--phone", A, "--request", "X-4").output]
    trail = " ".join(e.detail + e.object_id for e in data.audit())
    for secret in ("0612345678", "612345678", "+31612345678", a1.caller_hash):
        assert all(secret not in out for out in outputs) and secret not in trail
