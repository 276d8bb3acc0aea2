"""Signed-in browsers: a random token in the cookie, its SHA-256 in ``listen_session``.

The cookie (``COOKIE``) is ``HttpOnly; SameSite=Strict; Path=/``, and ``Secure`` when the
request came over TLS (directly, or through a trusted proxy saying
``X-Forwarded-Proto: https``). It is set only by a sign-in: a browser that never signed
in gets none. The session row holds the CSRF token every POST must carry, ends at
``expires_at`` (the configured lifetime after the sign-in) or after ``idle_timeout``
without a request, and is deleted at sign-out, when the account is disabled or its
password reset. A leaked ledger gives no usable cookie (only hashes are kept).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from ..store import ledger
from ..store.ledger import ListenAccount, ListenSession

COOKIE = "fsl_session"
SIGNIN_COOKIE = "fsl_signin"  # the sign-in form's CSRF token (double submit), before any session
TOUCH_EVERY = dt.timedelta(seconds=30)  # last_seen is written at most this often per session


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


@dataclass(frozen=True)
class Session:
    token_hash: str
    account: ListenAccount
    csrf_token: str

    @property
    def name(self) -> str:
        return self.account.name

    @property
    def role(self) -> str:
        return self.account.role

    def csrf_ok(self, submitted: str | None) -> bool:
        return bool(submitted) and hmac.compare_digest(submitted.encode(), self.csrf_token.encode())


def start(account: ListenAccount, *, lifetime: float, now: dt.datetime | None = None) -> tuple[str, Session]:
    """A new session (a fresh token on every sign-in: no fixation); returns the cookie's token."""
    now = now or ledger.utcnow()
    ListenSession.delete().where(ListenSession.expires_at < now).execute()  # the ended ones, now and then
    token = secrets.token_urlsafe(32)
    row = ListenSession.create(token_hash=token_hash(token), account=account.name, csrf_token=secrets.token_urlsafe(32),
                               created_at=now, last_seen=now, expires_at=now + dt.timedelta(seconds=lifetime))
    return token, Session(row.token_hash, account, row.csrf_token)


def find(token: str | None, *, idle_timeout: float, now: dt.datetime | None = None) -> Session | None:
    """The live session of a cookie's token, or None (unknown, expired, idle too long, account disabled)."""
    if not token or len(token) > 128:
        return None
    now = now or ledger.utcnow()
    digest = token_hash(token)
    row = (ListenSession.select(ListenSession, ListenAccount).join(ListenAccount)
           .where(ListenSession.token_hash == digest).first())
    if row is None:
        return None
    if (row.expires_at <= now or row.last_seen <= now - dt.timedelta(seconds=idle_timeout)
            or row.account.disabled_at is not None):
        ListenSession.delete().where(ListenSession.token_hash == digest).execute()
        return None
    if now - row.last_seen >= TOUCH_EVERY:
        ListenSession.update(last_seen=now).where(ListenSession.token_hash == digest).execute()
    return Session(digest, row.account, row.csrf_token)


def end(session: Session) -> None:
    ListenSession.delete().where(ListenSession.token_hash == session.token_hash).execute()
