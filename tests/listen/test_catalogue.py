"""Who hears what, over real calls (the harness: real sealed recordings, SQLite or PostgreSQL),
the CLI's account commands, and the reverse proxy's user header."""

from __future__ import annotations

import datetime as dt
import ipaddress

import pytest

from fs_consent.listen import accounts, catalogue
from fs_consent.privacy.retention import Terms
from fs_consent.store import ledger

from ..harness import Harness, fs_consent
from .room import PASSWORD, Client, in_team, make_account, plays, recorded_call, start_room

pytestmark = pytest.mark.slow


@pytest.fixture
def harness(tmp_path):
    with Harness(tmp_path / "data") as h:
        yield h


def terms(h) -> Terms:
    return Terms.from_config(h.config.retention)


def test_coaches_see_their_teams_and_the_privacy_officer_everything_that_may_be_used(harness):
    h = harness
    staff = {"north": ["3001"], "south": ["3002"], "both": ["3001", "3002"],  # both: a transfer, both teams hear it
             "nobody": ["3003"], "restricted": ["3001"], "old": ["3001"]}  # 3003 is in no team
    calls = {name: recorded_call(h, *ids) for name, ids in staff.items()}
    in_team(h, "3001", "North")
    in_team(h, "3002", "South")
    request = ledger.SubjectRequest.create(ref="AVG-1", kind="restrict", received_on=dt.date.today(),
                                           due_on=dt.date.today(), registered_at=ledger.utcnow(),
                                           identity_verified_by="test")
    ledger.Restriction.create(call=h.call_row(calls["restricted"][0]), request=request, placed_at=ledger.utcnow(),
                              placed_by="test")
    ledger.Recording.update(started_at=ledger.utcnow() - dt.timedelta(days=61)).where(
        ledger.Recording.id == calls["old"][1].id).execute()
    north = make_account("coach.north", teams=["North"])
    south = make_account("coach.south", teams=["South"])
    officer = make_account("privacy", accounts.PRIVACY_OFFICER)

    protector = h.server.ctx.protector

    def ids(account):
        return {e.id for e in catalogue.listing(account, terms(h), protector)}

    rid = {name: rec.id for name, (_, rec) in calls.items()}
    assert ids(north) == {rid["north"], rid["both"]}
    assert ids(south) == {rid["south"], rid["both"]}
    assert ids(officer) == {rid["north"], rid["south"], rid["both"], rid["nobody"]}
    assert catalogue.lookup(south, rid["north"], terms(h), protector) == (None, catalogue.NOT_YOURS)
    for name in ("restricted", "old"):
        assert catalogue.lookup(officer, rid[name], terms(h), protector) == (None, catalogue.NOT_PLAYABLE)
    entry, refused = catalogue.lookup(north, rid["both"], terms(h), protector)
    assert refused is None and entry.teams == ("North",) and entry.days_left == 59
    assert entry.staff == ("3001",)  # the coach of North is shown North's member, not South's colleague
    both = catalogue.lookup(officer, rid["both"], terms(h), protector)[0]
    assert (both.teams, both.staff) == (("North", "South"), ("3001", "3002"))  # in the order they took it
    assert catalogue.lookup(officer, rid["nobody"], terms(h), protector)[0].staff == ()  # 3003 is in no team


def test_account_commands_are_audited_and_refuse_bad_input(harness):
    h = harness
    done = fs_consent(h, "listen", "account", "add", "coach.a", "--role", "coach", "--team", "A",
                      "--password-stdin", input=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    short = fs_consent(h, "listen", "account", "add", "coach.b", "--role", "coach", "--team", "A",
                       "--password-stdin", input="short\n")
    assert short.returncode == 1 and "12 to 1024 characters" in short.stderr
    no_team = fs_consent(h, "listen", "account", "add", "coach.c", "--role", "coach", "--no-password")
    assert no_team.returncode == 1 and "at least one team" in no_team.stderr
    done = fs_consent(h, "listen", "account", "add", "avg", "--role", "privacy-officer", "--no-password")
    assert done.returncode == 0, done.stderr
    assert fs_consent(h, "listen", "account", "teams", "coach.a", "--add", "B").stdout.strip() == "A, B"
    assert fs_consent(h, "listen", "account", "reset-password", "coach.a", "--password-stdin",
                      input="another long password\n").returncode == 0
    assert fs_consent(h, "listen", "account", "disable", "coach.a").returncode == 0
    listing = fs_consent(h, "listen", "account", "list", "--format", "json")
    rows = {row["name"]: row for row in __import__("json").loads(listing.stdout)}
    assert rows["coach.a"]["disabled_at"] and rows["coach.a"]["teams"] == "A, B"
    assert rows["avg"]["role"] == "privacy-officer" and rows["avg"]["password"] == "no"
    stored = ledger.ListenAccount.get_by_id("coach.a").password_hash
    assert stored.startswith("scrypt$") and "another" not in stored
    actions = [e.action for e in ledger.AuditEntry.select().where(ledger.AuditEntry.action.startswith("listen."))
               .order_by(ledger.AuditEntry.seq)]
    assert actions == ["listen.account.add", "listen.account.add", "listen.account.teams",
                       "listen.account.password", "listen.account.disable"]


def test_the_proxy_user_header_is_believed_only_from_a_trusted_proxy_and_for_an_enabled_account(harness):
    h = harness
    _uuid, rec = recorded_call(h, "3001")
    in_team(h, "3001", "North")
    make_account("coach.north", teams=["North"], password=None)
    make_account("coach.gone", teams=["North"], password=None)
    accounts.disable_account("coach.gone", actor="test")
    room = start_room(h.config, trusted_proxies=(ipaddress.ip_network("127.0.0.2/32"),), user_header="X-Remote-User")
    try:
        direct = Client(room.address)
        assert direct.get("/", headers={"X-Remote-User": "coach.north"}).status == 303  # not from a proxy
        proxy = Client(room.address, peer="127.0.0.2")
        page = proxy.get("/", headers={"X-Remote-User": "coach.north", "X-Forwarded-For": "198.51.100.4"})
        assert page.status == 200 and rec.id in page.text
        assert proxy.get(f"/recordings/{rec.id}/audio", headers={"X-Remote-User": "coach.north",
                                                                  "Range": "bytes=0-99"}).status == 206
        # another user behind the same browser: the session follows the header
        other = proxy.get("/", headers={"X-Remote-User": "coach.gone"})
        assert other.status == 303
        assert proxy.get("/", headers={"X-Remote-User": "nobody"}).status == 303
        # no password: the form does not open it either
        assert Client(room.address).sign_in("coach.north", "").status in (400, 401)
    finally:
        room.stop()
    signins = plays("listen.signin")
    assert [(s["actor"], s["method"], s["address"]) for s in signins] == [("coach.north", "proxy", "198.51.100.4")]
    refused = plays("listen.signin.refused")
    assert [r["reason"] for r in refused if r.get("method") == "proxy"] == ["disabled", "unknown"]
