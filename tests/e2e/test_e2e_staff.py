"""Staff on the call end to end (issue 14, acceptance 3): calls through the emulator (real TCP,
the running server, a real database: SQLite, or PostgreSQL with FS_CONSENT_TEST_DATABASE) taken
by one member of staff and by two (a transfer), then the command line in another process:
the ledger's rows, calls show, recordings list --staff, the report per team and per route,
subject find|export|erase --staff, and bad input."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from fs_consent.store import audit_actions, ledger
from fs_consent.store.ledger import Call, CallStaff, StaffTeam

from ..harness import Harness, fs_consent

pytestmark = pytest.mark.slow


def register(h: Harness, ref: str, kind: str) -> None:
    received = (dt.date.today() - dt.timedelta(days=1)).isoformat()
    done = fs_consent(h, "requests", "add", "--ref", ref, "--kind", kind, "--received", received,
                      "--identity-verified")
    assert done.returncode == 0, done.stderr


def ok(h: Harness, *args: str) -> str:
    done = fs_consent(h, *args)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def rows_of(h: Harness, call_uuid: str) -> list[tuple]:
    protector = h.server.ctx.protector
    call = h.call_row(call_uuid)
    return [(r.seq, protector.open("staff", bytes(r.staff_sealed)), r.route, r.bridged_at, r.unbridged_at)
            for r in CallStaff.select().where(CallStaff.call == call.id).order_by(CallStaff.seq)]


def test_one_and_two_members_of_staff_in_the_ledger_and_the_commands(tmp_path):
    with Harness(tmp_path / "data") as h:
        one = h.call(staff=["1001"], route="vergunningen", talk_seconds=0.2)
        two = h.call(staff=["1001", "1002"], route="burgerzaken", talk_seconds=0.2)  # 1001 transfers to 1002
        nobody = h.call(bridge=False)  # the menu ends: nobody took it

        # the ledger: a row per bridge, the identifier sealed (and found by its hash), the route
        (seq, who, route, bridged, unbridged), = rows_of(h, one.uuid)
        assert (seq, who, route) == (1, "1001", "vergunningen")
        assert bridged <= unbridged
        first, second = rows_of(h, two.uuid)
        assert [r[:3] for r in (first, second)] == [(1, "1001", "burgerzaken"), (2, "1002", "burgerzaken")]
        assert first[3] <= first[4] <= second[3] <= second[4]  # 1001's part ends before 1002's begins
        assert second[4] <= h.call_row(two.uuid).ended_at
        assert rows_of(h, nobody.uuid) == []
        assert [h.call_row(c.uuid).route for c in (one, two, nobody)] == ["vergunningen", "burgerzaken", None]
        hashes = {r.staff_hash for r in CallStaff.select()}
        assert hashes == {h.server.ctx.protector.lookup_hash("staff", s) for s in ("1001", "1002")}
        assert all(b"1001" not in bytes(r.staff_sealed) for r in CallStaff.select())
        for c in (one, two):
            assert h.call_row(c.uuid).outcome == "granted"
            assert [r.state for r in h.recordings_of(c.uuid)] == ["sealed"]

        # calls show: the staff in bridge order, opened with the field key, and the route
        shown = json.loads(ok(h, "calls", "show", two.uuid, "--format", "json"))
        assert shown["route"] == "burgerzaken"
        parts = shown["staff"].split("; ")
        assert [p.split()[:3] for p in parts] == [["1", "1001", "(burgerzaken)"], ["2", "1002", "(burgerzaken)"]]

        # teams
        assert "added staff" in ok(h, "staff", "add", "--team", "vergunningen", "--staff", "1001")
        ok(h, "staff", "add", "--team", "burgerzaken", "--staff", "1002")
        done = fs_consent(h, "staff", "add", "--team", "vergunningen", "--staff", "1001")
        assert done.returncode == 1 and "in team vergunningen already" in done.stderr
        teams = json.loads(ok(h, "staff", "list", "--format", "json"))
        assert teams == [{"team": "burgerzaken", "members": 1}, {"team": "vergunningen", "members": 1}]
        members = json.loads(ok(h, "staff", "list", "--team", "burgerzaken", "--format", "json"))
        assert [m["staff"] for m in members] == [h.server.ctx.protector.lookup_hash("staff", "1002")[:12]]
        assert "staff_id" not in members[0]
        members = json.loads(ok(h, "staff", "list", "--team", "burgerzaken", "--show-ids", "--format", "json"))
        assert members[0]["staff_id"] == "1002"

        # recordings list --staff: the recordings of the calls they took
        def recordings(staff_id):
            return sorted(r["call_uuid"] for r in json.loads(ok(h, "recordings", "list", "--staff", staff_id,
                                                                "--format", "json")))
        assert recordings("1001") == sorted([one.uuid, two.uuid])
        assert recordings("1002") == [two.uuid]
        assert recordings("9999") == []

        # the report per team and per route
        report = json.loads(ok(h, "report", "--format", "json"))
        teams = {t["team"]: t for t in report["teams"]}
        assert {name: t["calls"] for name, t in teams.items()} == {"vergunningen": 2, "burgerzaken": 1}
        assert teams["burgerzaken"]["consent_rate"] == 1.0 and teams["burgerzaken"]["duration_mean"] > 0
        assert teams["vergunningen"]["wait_mean"] is not None
        routes = {r["route"]: r["calls"] for r in report["routes"]}
        assert routes == {"vergunningen": 1, "burgerzaken": 1, "(no route)": 1}
        table = ok(h, "report")
        assert "per team:" in table and "per route:" in table and "vergunningen" in table
        assert 'id="teams"' in ok(h, "report", "--format", "html")

        # subject find --staff
        found = json.loads(ok(h, "subject", "find", "--staff", "1001", "--format", "json"))
        assert [(r["uuid"], r["seq"]) for r in found] == [(one.uuid, "1"), (two.uuid, "1")]
        found = json.loads(ok(h, "subject", "find", "--staff", "1002", "--format", "json"))
        assert [(r["uuid"], r["seq"], r["route"]) for r in found] == [(two.uuid, "2", "burgerzaken")]
        assert ok(h, "subject", "find", "--staff", "nobody-here") == "(none)\nteams: none\n"

        # subject export --staff: metadata and recording ids, no audio
        register(h, "STAFF-ACCESS-1", "access")
        out = tmp_path / "export-1002"
        said = ok(h, "subject", "export", "--staff", "1002", "--request", "STAFF-ACCESS-1", "--out", str(out))
        assert "1 call(s)" in said and "not exported" in said
        assert sorted(p.name for p in out.iterdir()) == ["staff.json", "summary.html"]
        doc = json.loads((out / "staff.json").read_text())
        assert [t["team"] for t in doc["teams"]] == ["burgerzaken"]
        assert [(c["uuid"], [b["seq"] for b in c["bridges"]]) for c in doc["calls"]] == [(two.uuid, [2])]
        assert [r["id"] for r in doc["calls"][0]["recordings"]] == [r.id for r in h.recordings_of(two.uuid)]
        assert "0612345678" not in (out / "staff.json").read_text()  # the caller's number is not theirs

        # subject erase --staff: the identifier goes from every bridge and team; calls and recordings stay
        register(h, "STAFF-ERASE-1", "erase")
        said = ok(h, "subject", "erase", "--staff", "1001", "--request", "STAFF-ERASE-1")
        assert "2 bridge(s) of 2 call(s)" in said and "1 team membership(s) (vergunningen)" in said
        assert json.loads(ok(h, "subject", "find", "--staff", "1001", "--format", "json")) == []
        assert [r[0] for r in CallStaff.select(CallStaff.seq).where(CallStaff.staff_hash == "erased").tuples()] \
            == [1, 1]
        assert not StaffTeam.select().where(StaffTeam.team == "vergunningen").exists()
        assert "(erased)" in json.loads(ok(h, "calls", "show", one.uuid, "--format", "json"))["staff"]
        assert [r.state for r in h.recordings_of(one.uuid)] == ["sealed"]
        assert Call.select().count() == 3
        again = fs_consent(h, "subject", "erase", "--staff", "1001", "--request", "STAFF-ERASE-1")
        assert again.returncode == 1 and "nothing held" in again.stderr

        # every decision, export and erasure is in the trail, never with an identifier
        entries = list(ledger.AuditEntry.select().order_by(ledger.AuditEntry.seq))
        actions = [e.action for e in entries]
        for action in (audit_actions.STAFF_ADD, audit_actions.STAFF_SHOW_IDS, audit_actions.SUBJECT_FIND,
                       audit_actions.SUBJECT_EXPORT, audit_actions.SUBJECT_ERASE):
            assert action in actions, action
        for entry in entries:  # as a value ("1001"), not inside a uuid or hash that happens to hold the digits
            assert '"1001"' not in entry.detail and '"1002"' not in entry.detail, entry.detail
            assert entry.object_id not in ("1001", "1002")


def test_the_staff_variable_names_them_and_a_bridge_without_one_records_nothing(tmp_path):
    with Harness(tmp_path / "data", recording={"staff_variable": "cc_agent", "route_variable": "cc_queue"}) as h:
        named = h.call(staff=["agent-jan@default", "Agent-Piet@default"], staff_variable="cc_agent",
                       route="vergunningen@default", route_variable="cc_queue")
        unnamed = h.call(staff=["1001"])  # the menu sets no cc_agent: the extension is not taken instead
        assert [r[:3] for r in rows_of(h, named.uuid)] == [
            (1, "agent-jan@default", "vergunningen@default"), (2, "Agent-Piet@default", "vergunningen@default")]
        assert rows_of(h, unnamed.uuid) == []
        call = h.call_row(unnamed.uuid)
        assert (call.outcome, call.route) == ("granted", None)  # the call went on as any other
        assert [r.state for r in h.recordings_of(unnamed.uuid)] == ["sealed"]
        # an identifier is found in any case and spacing (protect.normalise: NFKC, case-folded)
        found = json.loads(ok(h, "subject", "find", "--staff", "AGENT-PIET@default", "--format", "json"))
        assert [(r["uuid"], r["seq"]) for r in found] == [(named.uuid, "2")]


BAD_INPUT = [
    (["subject", "find"], 2, "--phone NUMBER (a caller) or --staff ID"),
    (["subject", "find", "--phone", "0612345678", "--staff", "1001"], 2, "--phone NUMBER (a caller) or --staff ID"),
    (["subject", "erase", "--staff", "1001", "--request", "X", "--recordings-only"], 2,
     "--recordings-only is for a caller"),
    (["subject", "export", "--staff", "1001", "--request", "X", "--out", "o", "--to-recipient", "age1x"], 2,
     "--to-recipient is for a caller"),
    (["subject", "find", "--staff", "  "], 1, "the staff identifier given is empty"),
    (["staff", "add", "--team", "bad team ", "--staff", "1001"], 1, "team 'bad team ': expected"),
    (["staff", "remove", "--team", "t", "--staff", "1001"], 1, "not in team t"),
    (["staff", "list", "--show-ids"], 2, "--show-ids needs --team"),
    (["staff", "list", "--team", "empty"], 1, "team empty has no members"),
    (["recordings", "list", "--staff", ""], 1, "the staff identifier given is empty"),
    (["subject", "erase", "--staff", "1001", "--request", "NOPE"], 1, "NOPE"),
]


def test_bad_input_is_one_clear_line_and_changes_nothing(tmp_path):
    with Harness(tmp_path / "data") as h:
        h.call(staff=["1001"])
        before = (CallStaff.select().count(), StaffTeam.select().count())
        for args, status, message in BAD_INPUT:
            done = fs_consent(h, *args)
            assert done.returncode == status, (args, done.stdout, done.stderr)
            assert message in done.stderr, (args, done.stderr)
            assert "Traceback" not in done.stderr
        assert (CallStaff.select().count(), StaffTeam.select().count()) == before
