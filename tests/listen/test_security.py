"""The listening room's defences, over a real socket (acceptance 2 of issue 14).

A real data dir (keys, SQLite ledger, real age files sealed to its key: tests/ledger_data.py),
the room on 127.0.0.1 in this process, an HTTP client in a native thread.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import re

import pytest

from fs_consent.core import logs
from fs_consent.listen import accounts, sessions
from fs_consent.store import ledger

from ..ledger_data import DataDir, wav_bytes
from .room import PASSWORD, Client, ended_plays, make_account, plays, start_room

NUMBER = "0612345678"
STAFF = "agent-4711"


@pytest.fixture
def data(tmp_path):
    return DataDir(tmp_path / "data")


@pytest.fixture
def recording(data):
    """A sealed recording of a call taken by STAFF of team A (started an hour ago)."""
    from pathlib import Path

    from fs_consent.privacy.subjects import protector_for

    call, rec = data.add_call(age=dt.timedelta(hours=1), as_of=ledger.utcnow(), number=NUMBER)
    protector = protector_for(Path(data.keys_dir))
    now = ledger.utcnow()
    ledger.CallStaff.create(call=call, seq=1, staff_hash=protector.lookup_hash("staff", STAFF),
                            staff_sealed=protector.seal("staff", STAFF), route="burgerzaken", bridged_at=now)
    ledger.StaffTeam.create(staff_hash=protector.lookup_hash("staff", STAFF), staff_sealed=protector.seal("staff", STAFF),
                            team="A", added_at=now, added_by="test")
    return rec


@pytest.fixture
def room(data):
    room = start_room(data.config, signin_per_minute=1000)
    yield room
    room.stop()


@pytest.fixture
def client(room):
    return Client(room.address)


def test_no_session_cookie_without_signing_in(client):
    for path in ("/", "/signin", "/style.css", "/recordings/" + "0" * 32, "/nothing-here"):
        reply = client.get(path)
        assert not any(c.startswith(sessions.COOKIE + "=") for c in reply.set_cookies()), (path, reply.set_cookies())
    assert client.get("/").status == 303
    assert ledger.ListenSession.select().count() == 0


def test_the_session_cookie_is_httponly_samesite_strict_and_secure_only_behind_tls(data, room, client):
    make_account("coach-a", teams=["A"])
    reply = client.sign_in("coach-a")
    assert reply.status == 303
    (cookie,) = [c for c in reply.set_cookies() if c.startswith(sessions.COOKIE + "=")]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "path", "samesite"} <= attributes and "secure" not in attributes
    assert "SameSite=Strict" in cookie
    token = cookie.split(";")[0].split("=", 1)[1]
    # the ledger keeps the token's hash only
    assert ledger.ListenSession.get().token_hash == sessions.token_hash(token) != token
    room.stop()
    # behind a trusted proxy that terminated TLS, the cookie is Secure; from anyone else the header is ignored
    proxied = start_room(data.config, trusted_proxies=(__import__("ipaddress").ip_network("127.0.0.2/32"),))
    try:
        direct = Client(proxied.address)
        token = direct.csrf("/signin")
        reply = direct.post("/signin", {"csrf_token": token, "name": "coach-a", "password": PASSWORD},
                            headers={"X-Forwarded-Proto": "https"})
        assert "Secure" not in [c for c in reply.set_cookies() if c.startswith(sessions.COOKIE)][0]
        via_proxy = Client(proxied.address, peer="127.0.0.2")
        token = via_proxy.csrf("/signin")
        reply = via_proxy.post("/signin", {"csrf_token": token, "name": "coach-a", "password": PASSWORD},
                               headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "192.0.2.7"})
        (cookie,) = [c for c in reply.set_cookies() if c.startswith(sessions.COOKIE + "=")]
        assert "; Secure" in cookie
    finally:
        proxied.stop()


def test_a_post_without_its_csrf_token_is_refused(client):
    make_account("coach-a", teams=["A"])
    client.csrf("/signin")  # the sign-in form's cookie is there, but the form's token is not sent
    reply = client.post("/signin", {"name": "coach-a", "password": PASSWORD})
    assert reply.status == 400
    assert sessions.COOKIE not in client.cookies
    reply = client.post("/signin", {"csrf_token": "forged", "name": "coach-a", "password": PASSWORD})
    assert reply.status == 400
    # signed in, the sign-out form needs the session's token
    assert client.sign_in("coach-a").status == 303
    assert client.post("/signout", {}).status == 400
    assert client.post("/signout", {"csrf_token": "x" * 43}).status == 400
    assert client.get("/").status == 200  # still signed in
    assert client.post("/signout", {"csrf_token": client.csrf("/")}).status == 303
    assert client.get("/").status == 303
    refused = plays("listen.refused")
    assert [r["reason"] for r in refused] == ["csrf"] * 4


def test_ten_bad_passwords_lock_the_account_for_a_while(client):
    make_account("coach-a", teams=["A"])
    for _ in range(9):
        assert client.sign_in("coach-a", "wrong password!").status == 401
    assert ledger.ListenAccount.get_by_id("coach-a").locked_until is None
    assert client.sign_in("coach-a", "wrong password!").status == 401
    locked = ledger.ListenAccount.get_by_id("coach-a").locked_until
    assert locked is not None and locked > ledger.utcnow() + dt.timedelta(minutes=14)
    # the right password does not open a locked account, and says no more than a wrong one
    reply = client.sign_in("coach-a")
    assert reply.status == 401 and sessions.COOKIE not in client.cookies
    refused = plays("listen.signin.refused")
    assert [r["reason"] for r in refused] == ["bad-password"] * 10 + ["locked"]
    assert "locked_until" in refused[9]
    # once the lock has passed, the right password works again
    ledger.ListenAccount.update(locked_until=ledger.utcnow() - dt.timedelta(seconds=1)).execute()
    assert client.sign_in("coach-a").status == 303


def test_sign_in_is_rate_limited_per_address(data):
    room = start_room(data.config, signin_per_minute=3)
    try:
        client = Client(room.address)
        make_account("coach-a", teams=["A"])
        statuses = [client.sign_in("nobody", "whatever at all").status for _ in range(4)]
        assert statuses == [401, 401, 401, 429]
        assert client.sign_in("coach-a").status == 429  # the limit holds for the right password too
        assert Client(room.address, peer="127.0.0.3").sign_in("coach-a").status == 303  # another address
    finally:
        room.stop()


def test_the_audio_is_no_store_inline_and_ranges_work(client, recording):
    make_account("coach-a", teams=["A"])
    client.sign_in("coach-a")
    page = client.get(f"/recordings/{recording.id}")
    assert page.status == 200
    assert " download" not in page.text and "/audio\"" not in page.text.replace(f'src="/recordings/{recording.id}/audio"', "")
    assert re.search(r'<audio[^>]+controlslist="nodownload', page.text)
    whole = client.get(f"/recordings/{recording.id}/audio")
    assert whole.status == 200
    assert whole.body == wav_bytes(recording.id)
    for reply in (page, whole):
        assert reply.header("Cache-Control") == "no-store"
        assert reply.header("X-Content-Type-Options") == "nosniff"
        assert "script-src" not in reply.header("Content-Security-Policy")
        assert "default-src 'none'" in reply.header("Content-Security-Policy")
    assert "attachment" not in (whole.header("Content-Disposition") or "")
    assert whole.header("Content-Type") == "audio/wav" and whole.header("Accept-Ranges") == "bytes"
    part = client.get(f"/recordings/{recording.id}/audio", headers={"Range": "bytes=100-199"})
    assert part.status == 206 and part.body == wav_bytes(recording.id)[100:200]
    assert part.header("Content-Range") == f"bytes 100-199/{len(whole.body)}"
    assert part.header("Cache-Control") == "no-store"
    assert client.get(f"/recordings/{recording.id}/audio", headers={"Range": "bytes=99999999-"}).status == 416
    started, ended = plays("listen.play"), ended_plays(2)
    assert [(p["actor"], p["id"], p["range"]) for p in started] == [
        ("coach-a", recording.id, f"0-{len(whole.body) - 1}"), ("coach-a", recording.id, "100-199")]
    assert [(p["bytes"], p["complete"]) for p in ended] == [(len(whole.body), True), (100, True)]
    assert ended[0]["seconds"] == round(len(whole.body) / 32000, 3)


def test_the_audio_needs_a_session(client, recording):
    assert client.get(f"/recordings/{recording.id}/audio").status == 401
    assert plays("listen.refused")[-1]["reason"] == "not-signed-in"


def test_no_phone_number_or_staff_identifier_in_any_log_line(client, recording):
    make_account("coach-a", teams=["A"])
    stream = io.StringIO()
    root, ours = logging.getLogger(), logging.getLogger("fs_consent")
    saved = (list(root.handlers), root.level, ours.level)
    logs.setup("debug", stream=stream)
    try:
        client.get(f"/?number={NUMBER}&staff={STAFF}")
        client.sign_in("coach-a", "wrong " + NUMBER)
        client.sign_in(NUMBER, STAFF + " password")
        client.sign_in("coach-a")
        client.get(f"/recordings/{recording.id}?n={NUMBER}")
        client.get(f"/recordings/{recording.id}/audio", headers={"Range": "bytes=0-99"})
        client.get(f"/recordings/{NUMBER}/audio?staff={STAFF}")
        client.get(f"/{NUMBER}", headers={"X-Remote-User": STAFF})
        client.raw(f"GET /x?{NUMBER} {STAFF} HTTP/1.1\r\n\r\n".encode())
        client.raw(f"BREW /{NUMBER}?{STAFF}\r\n\r\n".encode())
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        ours.setLevel(saved[2])
    lines = stream.getvalue().splitlines()
    assert any("route=/recordings/<recording_id>/audio" in line for line in lines), lines
    digits = NUMBER.lstrip("0")
    for line in lines:
        assert digits not in line and STAFF not in line and "coach-a" not in line, line


def test_password_hashes_are_salted_scrypt():
    first, second = accounts.hash_password(PASSWORD), accounts.hash_password(PASSWORD)
    assert first.startswith("scrypt$32768$8$1$") and first != second
    assert accounts.verify_password(PASSWORD, first) and not accounts.verify_password(PASSWORD + "!", first)
    assert not accounts.verify_password(PASSWORD, None) and not accounts.verify_password(PASSWORD, "md5$x")


def test_checking_a_password_leaves_the_event_loop_to_the_other_requests():
    import gevent

    ticks = []

    def other_request():  # an audio stream, say: it must go on while somebody signs in
        while True:
            ticks.append(1)
            gevent.sleep(0.001)

    other = gevent.spawn(other_request)
    gevent.sleep(0)
    ticks.clear()
    try:
        assert accounts.verify_password(PASSWORD, accounts.hash_password(PASSWORD))
    finally:
        other.kill()
    assert ticks  # the hashing ran in a thread; on the hub it would have let nothing run
