"""Helpers for the listening room's tests: real calls (the harness), staff in teams, accounts,
the room on a real socket, and an HTTP client that keeps cookies.

The client runs each request in a native thread (gevent's thread pool), so the room, on the
test's own event loop, serves it meanwhile: a real TCP connection both ways.
"""

from __future__ import annotations

import http.client
import http.cookies
import re
import urllib.parse
from dataclasses import dataclass, field

import gevent

from fs_consent.core.config import ListenAddress
from fs_consent.listen import accounts
from fs_consent.listen.serve import ListeningRoom
from fs_consent.store import ledger

from ..harness import fs_consent

PASSWORD = "correct horse battery staple"


def in_team(h, staff_id: str, team: str) -> None:
    """``fs-consent staff add``, as the sysadmin runs it."""
    done = fs_consent(h, "staff", "add", "--team", team, "--staff", staff_id)
    assert done.returncode == 0, done.stderr


def recorded_call(h, *staff: str, route: str = "burgerzaken", **script) -> tuple[str, ledger.Recording]:
    """A call with consent taken by ``staff`` in turn (a transfer for two), and its sealed recording."""
    result = h.call(digits=[None], staff=list(staff), route=route, **script)
    (rec,) = h.recordings_of(result.uuid)
    assert rec.state == ledger.SEALED
    return result.uuid, rec


def make_account(name: str, role: str = accounts.COACH, teams=(), password: str | None = PASSWORD):
    return accounts.add_account(name, role, teams=list(teams), password=password, actor="test")


def start_room(config, **listen_changes) -> ListeningRoom:
    from dataclasses import replace

    config = replace(config, listen=replace(config.listen, **listen_changes))
    room = ListeningRoom(config, ListenAddress("127.0.0.1", 0))
    room.start()
    return room


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def set_cookies(self) -> list[str]:
        return self.headers.get_all("Set-Cookie") or []


@dataclass
class Client:
    """A browser without a browser: keeps cookies, reads CSRF tokens from forms."""

    address: tuple[str, int]
    cookies: dict[str, str] = field(default_factory=dict)
    peer: str = "127.0.0.1"  # the source address the requests come from

    def request(self, method: str, path: str, *, form: dict | None = None, headers: dict | None = None,
                read: int | None = None) -> Reply:
        def run():
            conn = http.client.HTTPConnection(*self.address, timeout=20, source_address=(self.peer, 0))
            try:
                sent = dict(headers or {})
                if self.cookies:
                    sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
                body = None
                if form is not None:
                    body = urllib.parse.urlencode(form)
                    sent["Content-Type"] = "application/x-www-form-urlencoded"
                    sent.setdefault("Origin", f"http://{self.address[0]}:{self.address[1]}")
                conn.request(method, path, body=body, headers=sent)
                response = conn.getresponse()
                data = response.read(read) if read is not None else response.read()
                return Reply(response.status, response.headers, data)
            finally:
                conn.close()

        reply = gevent.get_hub().threadpool.apply(run)
        for line in reply.set_cookies():
            cookie = http.cookies.SimpleCookie()
            cookie.load(line)
            for name, morsel in cookie.items():
                if morsel["max-age"] == "0" or morsel.value == "":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return reply

    def raw(self, data: bytes) -> bytes:
        """Send bytes as they are (a malformed request), return what came back."""
        import socket

        def run():
            with socket.create_connection(self.address, timeout=20) as sock:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
                return b"".join(chunks)

        return gevent.get_hub().threadpool.apply(run)

    def get(self, path: str, **kw) -> Reply:
        return self.request("GET", path, **kw)

    def post(self, path: str, form: dict, **kw) -> Reply:
        return self.request("POST", path, form=form, **kw)

    def csrf(self, path: str = "/") -> str:
        page = self.get(path)
        match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert match, page.text
        return match.group(1)

    def sign_in(self, name: str, password: str = PASSWORD) -> Reply:
        token = self.csrf("/signin")
        return self.post("/signin", {"csrf_token": token, "name": name, "password": password})


def plays(action: str = "listen.play") -> list[dict]:
    import json

    return [json.loads(e.detail) | {"id": e.object_id, "actor": e.actor}
            for e in ledger.AuditEntry.select().where(ledger.AuditEntry.action == action)
            .order_by(ledger.AuditEntry.seq)]


def ended_plays(count: int, timeout: float = 5.0) -> list[dict]:
    """The ``listen.play.end`` entries once there are ``count``: the room writes each just after the
    response's last byte, which the client may have read a moment before."""
    with gevent.Timeout(timeout, AssertionError(f"not {count} listen.play.end entries")):
        while len(found := plays("listen.play.end")) < count:
            gevent.sleep(0.02)
    return found
