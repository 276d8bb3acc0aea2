"""The subject request register: due dates as the GDPR counts them, the rules an action's
request must meet, and the `requests` commands with their audit entries and bad input."""

from __future__ import annotations

import calendar
import csv
import datetime as dt
import io
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fs_consent.privacy import subject_requests as requests
from fs_consent.privacy.subject_requests import RequestError
from fs_consent.store import ledger
from fs_consent.store.connection import close_database

from ..ledger_data import DataDir

DAY = dt.timedelta(days=1)
TODAY = dt.date(2027, 3, 10)
dates = st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(9000, 12, 31))


# --- due dates ------------------------------------------------------------------------------


def month_after(date: dt.date, months: int) -> tuple[int, int]:
    index = date.year * 12 + date.month - 1 + months
    return index // 12, index % 12 + 1


@pytest.mark.parametrize("months", [1, 3])
@given(received=dates)
def test_due_date_is_the_same_day_months_later_or_that_months_last_day(months, received):
    due = requests.due_date(received, months)
    assert (due.year, due.month) == month_after(received, months)
    last = calendar.monthrange(due.year, due.month)[1]
    if received.day <= last:
        assert due.day == received.day
    else:  # 31 January -> the last of February
        assert due.day == last
    assert due > received


@pytest.mark.parametrize("months", [1, 3])
@given(a=dates, b=dates)
def test_due_date_never_goes_back_when_the_request_came_later(months, a, b):
    early, late = sorted((a, b))
    assert requests.due_date(early, months) <= requests.due_date(late, months)


@given(received=dates)
def test_an_extension_counts_three_months_from_receipt_not_two_from_the_first_due_date(received):
    """Counting from the (clamped) first due date could lose days: 30 January -> 28 February -> 28 April."""
    first, extended = requests.due_date(received), requests.due_date(received, 3)
    assert first < requests.due_date(first, 2) <= extended


def test_due_date_examples():
    assert requests.due_date(dt.date(2027, 1, 31)) == dt.date(2027, 2, 28)
    assert requests.due_date(dt.date(2028, 1, 31)) == dt.date(2028, 2, 29)  # leap year
    assert requests.due_date(dt.date(2026, 12, 15)) == dt.date(2027, 1, 15)
    assert requests.due_date(dt.date(2026, 11, 30), 3) == dt.date(2027, 2, 28)
    assert requests.due_date(dt.date(2027, 3, 31)) == dt.date(2027, 4, 30)


# --- the register, in code -------------------------------------------------------------------


@pytest.fixture
def data(tmp_path):
    d = DataDir(tmp_path / "data")
    yield d
    close_database()


def state() -> tuple:
    """What a refused operation must leave exactly as it was."""
    return ([r.__data__ for r in ledger.SubjectRequest.select().order_by(ledger.SubjectRequest.id)],
            ledger.AuditEntry.select().count())


def add(ref, kind="erase", received=TODAY - 5 * DAY, **kwargs):
    return requests.add(ref, kind, received, actor="officer", today=TODAY, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("ref", ["", ".hidden", "../etc", "a/b", "Piet Jansen", "x" * 65, "R\n1"])
def test_a_reference_that_is_not_allowed_is_not_repeated(data, ref):
    with pytest.raises(RequestError, match="the request reference is not allowed") as err:
        add(ref)
    if ref:
        assert ref not in str(err.value)
    assert state() == ([], 0)


@pytest.mark.parametrize("call, message", [
    (lambda: add("R-2", kind="forget"), "kind 'forget' is not one of access, erase, restrict, rectify, object"),
    (lambda: add("R-2", received=TODAY + DAY), "the received date 2027-03-11 is in the future (today is 2027-03-10)"),
    (lambda: add("R-1"), "request R-1 is already in the register"),
    (lambda: requests.extend("R-9", "why", actor="officer", today=TODAY), "no request R-9 in the register"),
    (lambda: requests.extend("R-1", "  ", actor="officer", today=TODAY), "a reason for the extension is required"),
    (lambda: requests.decide("R-1", "maybe", "why", actor="officer"), "decision 'maybe' is not one of granted, refused"),
    (lambda: requests.decide("R-1", "granted", "", actor="officer"), "a reason for the decision is required"),
    (lambda: requests.decide("R-9", "granted", "why", actor="officer"), "no request R-9 in the register"),
    (lambda: requests.require("R-9", "erase", today=TODAY), "no request R-9 in the register"),
    (lambda: requests.require("R-1", "access", today=TODAY),
     "request R-1 is of kind erase; this action needs a request of kind access"),
])
@pytest.mark.slow
def test_bad_input_is_refused_and_changes_nothing(data, call, message):
    add("R-1", note="Mr. Jansen called twice")
    before = state()
    with pytest.raises(RequestError) as err:
        call()
    assert message in str(err.value)
    assert "Jansen" not in str(err.value)
    assert state() == before


def test_add_registers_the_request_with_its_due_date_and_audits_it(data):
    req = add("R-1", received=dt.date(2027, 1, 31), note="called about the recording of 30 January")
    assert (req.ref, req.kind, req.received_on, req.due_on) == ("R-1", "erase", dt.date(2027, 1, 31),
                                                                 dt.date(2027, 2, 28))
    assert req.identity_verified_by == "officer" and req.decision is None and req.extended_at is None
    (entry,) = data.audit("request.")
    assert (entry.actor, entry.action, entry.object_type, entry.object_id) == ("officer", "request.add", "request",
                                                                             "R-1")
    assert json.loads(entry.detail) == {"kind": "erase", "received_on": "2027-01-31", "due_on": "2027-02-28",
                                        "identity_verified": True}
    assert add("R-2", received=TODAY).due_on == dt.date(2027, 4, 10)  # received today is fine


def test_require_allows_an_undecided_request_up_to_and_on_its_due_date(data):
    req = add("R-1", received=dt.date(2027, 2, 10))
    assert req.due_on == TODAY
    assert requests.require("R-1", "erase", today=TODAY).ref == "R-1"
    with pytest.raises(RequestError) as err:
        requests.require("R-1", "erase", today=TODAY + DAY)
    message = str(err.value)
    assert "request R-1 was due on 2027-03-10 and is undecided" in message
    assert "fs-consent requests extend R-1" in message and "fs-consent requests decide R-1" in message
    # three months after receipt even an extension has run out: only a decision is left
    with pytest.raises(RequestError) as err:
        requests.require("R-1", "erase", today=dt.date(2027, 5, 11))
    assert "an extension would have ended too: decide it" in str(err.value)
    assert "requests extend" not in str(err.value)


def test_an_extension_moves_the_due_date_to_three_months_after_receipt_once(data):
    add("R-1", received=dt.date(2026, 11, 30))
    before = state()
    req = requests.extend("R-1", "hundreds of calls to review for Mr. Jansen", actor="officer",
                          today=dt.date(2026, 12, 20))
    assert req.due_on == dt.date(2027, 2, 28) and req.extended_at is not None
    assert req.extension_reason == "hundreds of calls to review for Mr. Jansen"
    entry = data.audit("request.extend")[0]
    assert entry.object_id == "R-1"
    assert json.loads(entry.detail) == {"kind": "erase", "received_on": "2026-11-30",
                                        "previous_due_on": "2026-12-30", "due_on": "2027-02-28"}
    assert len(data.audit()) == before[1] + 1
    # still late on TODAY (2027-03-10): there is no second extension, only a decision
    with pytest.raises(RequestError, match="it was extended once already: decide it"):
        requests.require("R-1", "erase", today=TODAY)
    before = state()
    with pytest.raises(RequestError, match=r"request R-1 was already extended \(on .*, due 2027-02-28\)"):
        requests.extend("R-1", "more", actor="officer", today=TODAY)
    assert state() == before


def test_an_extension_that_would_end_in_the_past_is_refused(data):
    add("R-1", received=dt.date(2026, 11, 30))
    before = state()
    with pytest.raises(RequestError, match="an extension would end on 2027-02-28, which has passed too"):
        requests.extend("R-1", "why", actor="officer", today=dt.date(2027, 3, 1))
    assert state() == before


def test_a_decision_is_recorded_once_and_decides_what_may_be_done(data):
    add("R-ok", received=dt.date(2027, 1, 1))
    add("R-no", kind="access", received=dt.date(2027, 1, 1))
    granted = requests.decide("R-ok", "granted", "identity and calls match", actor="officer", today=TODAY)
    assert (granted.decision, granted.decided_by, granted.decision_reason) == ("granted", "officer",
                                                                               "identity and calls match")
    refused = requests.decide("R-no", "refused", "manifestly unfounded", actor="officer",
                              today=dt.date(2027, 1, 20))
    entries = data.audit("request.decide")
    assert [e.object_id for e in entries] == ["R-ok", "R-no"]
    assert json.loads(entries[0].detail) == {"kind": "erase", "decision": "granted", "received_on": "2027-01-01",
                                             "due_on": "2027-02-01", "decided_on": "2027-03-10", "late": True}
    assert json.loads(entries[1].detail)["late"] is False
    assert "match" not in entries[0].detail and "unfounded" not in entries[1].detail
    # a granted request may be acted on, even past its due date
    assert requests.require("R-ok", "erase", today=TODAY).ref == "R-ok"
    with pytest.raises(RequestError) as err:
        requests.require("R-no", "access", today=dt.date(2027, 1, 21))
    local_day = refused.decided_at.replace(tzinfo=dt.timezone.utc).astimezone().date()  # decided_at is UTC
    assert str(err.value) == f"request R-no was refused on {local_day.isoformat()}: nothing may be done under it"
    before = state()
    with pytest.raises(RequestError, match="request R-ok was already decided: granted on .* by officer"):
        requests.decide("R-ok", "refused", "changed my mind", actor="officer", today=TODAY)
    with pytest.raises(RequestError, match="request R-no was already decided .*nothing to extend"):
        requests.extend("R-no", "why", actor="officer", today=dt.date(2027, 1, 21))
    assert state() == before


def test_rows_and_counts(data):
    add("R-open", received=TODAY - 3 * DAY)
    add("R-late", kind="access", received=TODAY - 40 * DAY)
    add("R-ext", kind="rectify", received=TODAY - 50 * DAY)
    requests.extend("R-ext", "why", actor="officer", today=TODAY)
    add("R-done", kind="object", received=TODAY - 60 * DAY)
    requests.decide("R-done", "granted", "why", actor="officer", today=TODAY)
    rows = requests.rows(today=TODAY)
    assert [r["ref"] for r in rows] == ["R-done", "R-late", "R-open", "R-ext"]  # soonest due first
    late = next(r for r in rows if r["ref"] == "R-late")
    due = requests.due_date(TODAY - 40 * DAY)
    assert late == {"ref": "R-late", "kind": "access", "received": (TODAY - 40 * DAY).isoformat(),
                    "due": due.isoformat(), "status": "overdue", "days_left": (due - TODAY).days,
                    "extended": False, "decision": None, "decided": None, "identity_verified_by": "officer"}
    assert late["days_left"] < 0
    assert {r["ref"]: r["status"] for r in rows} == {"R-done": "granted", "R-late": "overdue", "R-open": "open",
                                                    "R-ext": "open"}
    assert [r["ref"] for r in requests.rows(overdue_only=True, today=TODAY)] == ["R-late"]
    assert requests.counts(TODAY) == {"open": 3, "overdue": 1, "granted": 1, "refused": 0, "extended": 1}


# --- the commands ------------------------------------------------------------------------------


def test_the_commands_register_extend_decide_and_show(data):
    today = dt.date.today()
    received = today - 45 * DAY
    due = requests.due_date(received)
    result = data.cli("requests", "add", "--kind", "erase", "--received", received.isoformat(),
                      "--identity-verified", "--ref", "2027-PV-0042", "--note", "Mr. Jansen, calls from his mobile")
    assert result.exit_code == 0, result.output
    assert (f"registered request 2027-PV-0042 (erase), received {received.isoformat()}, decision due "
            f"{due.isoformat()}") in result.output
    assert "warning: request 2027-PV-0042 is already past its due date" in result.output  # registered late
    req = ledger.SubjectRequest.get(ledger.SubjectRequest.ref == "2027-PV-0042")
    assert req.identity_verified_by == ledger.os_user() and req.note == "Mr. Jansen, calls from his mobile"

    listed = json.loads(data.cli("requests", "list", "--overdue", "--format", "json").output)
    assert [(r["ref"], r["status"], r["days_left"]) for r in listed] == [
        ("2027-PV-0042", "overdue", (due - today).days)]

    result = data.cli("requests", "extend", "2027-PV-0042", "--reason", "calls over two years to review")
    assert result.exit_code == 0, result.output
    extended = requests.due_date(received, 3)
    assert f"extended request 2027-PV-0042 (erase): decision now due {extended.isoformat()}" in result.output
    assert json.loads(data.cli("requests", "list", "--overdue", "--format", "json").output) == []

    result = data.cli("requests", "decide", "2027-PV-0042", "--decision", "granted", "--reason", "no legal claim")
    assert result.exit_code == 0 and "request 2027-PV-0042 (erase) granted" in result.output

    shown = json.loads(data.cli("requests", "show", "2027-PV-0042", "--format", "json").output)
    assert {k: shown[k] for k in ("ref", "kind", "received", "due", "status", "extended", "decision",
                                  "extension_reason", "decision_reason", "note", "decided_by")} == {
        "ref": "2027-PV-0042", "kind": "erase", "received": received.isoformat(), "due": extended.isoformat(),
        "status": "granted", "extended": True, "decision": "granted",
        "extension_reason": "calls over two years to review", "decision_reason": "no legal claim",
        "note": "Mr. Jansen, calls from his mobile", "decided_by": ledger.os_user()}
    assert shown["calls_erased"] == 0 and shown["restrictions"] == 0

    entries = data.audit("request.")
    assert [(e.action, e.object_type, e.object_id, e.actor) for e in entries] == [
        (action, "request", "2027-PV-0042", ledger.os_user())
        for action in ("request.add", "request.extend", "request.decide")]
    for entry in entries:  # free text stays with the request, out of the audit trail
        for text in ("Jansen", "mobile", "review", "legal claim"):
            assert text not in entry.detail


def test_list_in_every_format(data):
    today = dt.date.today()
    requests.add("R-late", "access", today - 40 * DAY, actor="officer", today=today)
    requests.add("R-open", "object", today - 2 * DAY, actor="officer", today=today)
    table = data.cli("requests", "list").output.splitlines()
    assert table[0].split() == ["ref", "kind", "received", "due", "status", "days_left", "extended", "decision",
                                "decided"]
    assert [line.split()[:5] for line in table[1:]] == [
        ["R-late", "access", (today - 40 * DAY).isoformat(), requests.due_date(today - 40 * DAY).isoformat(),
         "overdue"],
        ["R-open", "object", (today - 2 * DAY).isoformat(), requests.due_date(today - 2 * DAY).isoformat(), "open"]]
    overdue = list(csv.DictReader(io.StringIO(data.cli("requests", "list", "--overdue", "--format", "csv").output)))
    assert [(r["ref"], r["status"]) for r in overdue] == [("R-late", "overdue")]
    assert data.cli("requests", "list", "--overdue").output.count("R-") == 1


def test_without_identity_verification_nothing_is_registered(data):
    result = data.cli("requests", "add", "--kind", "access", "--received", dt.date.today().isoformat(),
                      "--ref", "R-1")
    assert result.exit_code == 1
    assert "the requester's identity must be checked before a request is registered" in result.output
    assert "--identity-verified" in result.output
    assert state() == ([], 0)


@pytest.mark.parametrize("args, message", [
    (["add", "--kind", "erase", "--received", "{tomorrow}", "--identity-verified", "--ref", "R-2"],
     "is in the future"),
    (["add", "--kind", "erase", "--received", "31-01-2027", "--identity-verified", "--ref", "R-2"],
     "'31-01-2027' is not a date like 2027-01-31 (YYYY-MM-DD)"),
    (["add", "--kind", "erase", "--received", "2027-02-30", "--identity-verified", "--ref", "R-2"],
     "is not a date like"),
    (["add", "--kind", "forget", "--received", "{today}", "--identity-verified", "--ref", "R-2"], "'forget'"),
    (["add", "--kind", "erase", "--received", "{today}", "--identity-verified", "--ref", "R-1"],
     "request R-1 is already in the register"),
    (["add", "--kind", "erase", "--received", "{today}", "--identity-verified", "--ref", "J. Jansen"],
     "the request reference is not allowed"),
    (["extend", "R-9", "--reason", "why"], "no request R-9 in the register"),
    (["extend", "R-1", "--reason", " "], "a reason for the extension is required"),
    (["decide", "R-9", "--decision", "granted", "--reason", "why"], "no request R-9 in the register"),
    (["decide", "R-1", "--decision", "granted", "--reason", ""], "a reason for the decision is required"),
    (["decide", "R-1", "--decision", "maybe", "--reason", "why"], "'maybe'"),
    (["show", "R-9"], "no request R-9 in the register"),
])
@pytest.mark.slow
def test_bad_input_on_the_command_line_is_one_clear_error(data, args, message):
    today = dt.date.today()
    requests.add("R-1", "erase", today, actor="officer", today=today)
    before = state()
    result = data.cli("requests", *[a.format(today=today.isoformat(), tomorrow=(today + DAY).isoformat())
                                    for a in args])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output and "J. Jansen" not in result.output
    assert state() == before


def test_deciding_or_extending_twice_on_the_command_line_is_refused(data):
    today = dt.date.today()
    requests.add("R-1", "erase", today, actor="officer", today=today)
    assert data.cli("requests", "extend", "R-1", "--reason", "complex").exit_code == 0
    assert data.cli("requests", "decide", "R-1", "--decision", "refused", "--reason", "claim").exit_code == 0
    before = state()
    again = data.cli("requests", "decide", "R-1", "--decision", "granted", "--reason", "appeal")
    assert again.exit_code == 1 and "request R-1 was already decided: refused on" in again.output
    extend = data.cli("requests", "extend", "R-1", "--reason", "more")
    assert extend.exit_code == 1 and "was already decided" in extend.output
    assert state() == before


def test_help_explains_the_due_rule(data):
    for command in ([], ["add"], ["list"], ["decide"]):
        out = data.cli("requests", *command, "--help").output
        assert "one calendar month after receipt" in " ".join(out.split()), command
    assert "two months" in " ".join(data.cli("requests", "extend", "--help").output.split())
