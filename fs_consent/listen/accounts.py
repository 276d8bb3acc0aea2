"""Listening room accounts: salted scrypt hashes, the lock-out, the per-address sign-in limit.

A password is stored as ``scrypt$N$r$p$<salt b64>$<hash b64>`` (``hashlib.scrypt``, 16-byte
random salt, 32-byte hash; N = 2^15, r = 8, p = 1: about 32 MiB and a few tens of ms per
check). Checking compares in constant time; an unknown or disabled account is checked
against a dummy hash, so the answer takes as long either way. ``lockout_after`` bad
passwords in a row lock the account for ``lockout_for``; while locked, no password is
even tried. Every account change and every sign-in, good or refused, is audited (the
account's name is the actor or the object; the trail keeps names, log lines never do).
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

import gevent

from ..store import audit_actions, ledger
from ..store.ledger import ListenAccount, ListenAccountTeam, StaffTeam

COACH = "coach"
PRIVACY_OFFICER = "privacy_officer"
ROLES = (COACH, PRIVACY_OFFICER)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
MIN_PASSWORD = 12
MAX_PASSWORD = 1024
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 15, 8, 1
_MAXMEM = 64 * 1024 * 1024


class AccountError(Exception):
    """An account operation cannot be done; the message says why (never the password)."""


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise AccountError("an account name is 1 to 64 letters, digits and . _ @ -, starting with a letter or digit")
    return name


def check_team(team: str) -> str:
    if not isinstance(team, str) or not StaffTeam.NAME.fullmatch(team):
        raise AccountError(f"team {team!r}: expected {StaffTeam.NAME_RULE}")
    return team


def check_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise AccountError(f"a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password


# --- hashing ----------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(secret: bytes, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    """hashlib.scrypt in gevent's thread pool: it releases the GIL, so its ~80 ms of work does not
    stall the room's other requests (an audio stream, another sign-in) on the event loop."""
    return gevent.get_hub().threadpool.apply(
        hashlib.scrypt, (secret,), dict(salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=dklen))


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(password.encode("utf-8"), salt, n, r, p, 32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str | None) -> bool:
    """Whether ``password`` matches ``stored`` (constant-time compare); False for no hash."""
    try:
        scheme, n, r, p, salt, digest = (stored or _DUMMY).split("$")
        n, r, p = int(n), int(r), int(p)
        salt, digest = base64.b64decode(salt), base64.b64decode(digest)
    except ValueError:
        return False
    if scheme != "scrypt" or n > (1 << 20) or r > 32 or p > 16:
        return False
    candidate = _scrypt(password.encode("utf-8", "surrogatepass"), salt, n, r, p, len(digest))
    return hmac.compare_digest(candidate, digest) and stored is not None


_DUMMY = hash_password(secrets.token_urlsafe(16))  # checked for unknown accounts: the same time either way


# --- accounts ---------------------------------------------------------------------------


def teams_of(account: ListenAccount | str) -> list[str]:
    name = account.name if isinstance(account, ListenAccount) else account
    return [row.team for row in ListenAccountTeam.select(ListenAccountTeam.team)
            .where(ListenAccountTeam.account == name).order_by(ListenAccountTeam.team)]


def add_account(name: str, role: str, *, teams: list[str], password: str | None, actor: str) -> ListenAccount:
    check_name(name)
    if role not in ROLES:
        raise AccountError(f"the role is one of {', '.join(ROLES)}")
    teams = sorted({check_team(t) for t in teams})
    if role == COACH and not teams:
        raise AccountError("a coach needs at least one team (--team): a coach hears the recordings of their teams")
    if role == PRIVACY_OFFICER and teams:
        raise AccountError("the privacy officer sees every recording: give no --team")
    hashed = hash_password(check_password(password)) if password is not None else None
    with ledger.database.atomic():
        if ListenAccount.get_or_none(ListenAccount.name == name) is not None:
            raise AccountError(f"account {name} exists (reset-password, teams or disable change it)")
        account = ListenAccount.create(name=name, role=role, password_hash=hashed, created_at=ledger.utcnow(),
                                       created_by=actor)
        for team in teams:
            ListenAccountTeam.create(account=name, team=team)
        ledger.append_audit(actor, audit_actions.LISTEN_ACCOUNT_ADD, "listen_account", name, role=role, teams=teams,
                            password=hashed is not None)
    return account


def get_account(name: str) -> ListenAccount:
    account = ListenAccount.get_or_none(ListenAccount.name == name)
    if account is None:
        raise AccountError(f"no account {name}")
    return account


def disable_account(name: str, *, actor: str) -> ListenAccount:
    with ledger.database.atomic():
        account = get_account(name)
        if account.disabled_at is None:
            account.disabled_at = ledger.utcnow()
            account.save()
            ledger.ListenSession.delete().where(ledger.ListenSession.account == name).execute()
            ledger.append_audit(actor, audit_actions.LISTEN_ACCOUNT_DISABLE, "listen_account", name)
    return account


def reset_password(name: str, password: str | None, *, actor: str) -> ListenAccount:
    """A new password (None: reverse-proxy sign-in only); unlocks the account, ends its sessions."""
    hashed = hash_password(check_password(password)) if password is not None else None
    with ledger.database.atomic():
        account = get_account(name)
        account.password_hash, account.failed_signins, account.locked_until = hashed, 0, None
        account.save()
        ledger.ListenSession.delete().where(ledger.ListenSession.account == name).execute()
        ledger.append_audit(actor, audit_actions.LISTEN_ACCOUNT_PASSWORD, "listen_account", name,
                            password=hashed is not None)
    return account


def change_teams(name: str, *, add: list[str], remove: list[str], actor: str) -> list[str]:
    add = sorted({check_team(t) for t in add})
    remove = sorted(set(remove))
    with ledger.database.atomic():
        account = get_account(name)
        if account.role != COACH:
            raise AccountError("only a coach has teams (the privacy officer sees every recording)")
        for team in add:
            ListenAccountTeam.insert(account=name, team=team).on_conflict_ignore().execute()
        if remove:
            ListenAccountTeam.delete().where((ListenAccountTeam.account == name)
                                             & ListenAccountTeam.team.in_(remove)).execute()
        now = teams_of(name)
        if not now:
            raise AccountError("a coach keeps at least one team (disable the account instead)")
        ledger.append_audit(actor, audit_actions.LISTEN_ACCOUNT_TEAMS, "listen_account", name, added=add,
                            removed=remove, teams=now)
    return now


# --- signing in -------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    lockout_after: int = 10
    lockout_for: float = 900.0

    @classmethod
    def from_config(cls, listen) -> Policy:
        return cls(listen.lockout_after, listen.lockout_for)


@dataclass(frozen=True)
class SignIn:
    account: ListenAccount | None  # set when signed in
    refused: str | None = None  # unknown | disabled | no-password | locked | bad-password


def authenticate(name: str, password: str, policy: Policy, *, address: str | None,
                 now: dt.datetime | None = None) -> SignIn:
    """Check a password; count a bad one, lock the account after ``policy.lockout_after``. Audited."""
    now = now or ledger.utcnow()
    account = ListenAccount.get_or_none(ListenAccount.name == name) if NAME.fullmatch(name or "") else None
    refused = None
    if account is None:
        verify_password(password, None)
        refused = "unknown"
    elif account.disabled_at is not None:
        verify_password(password, None)
        refused = "disabled"
    elif account.locked_until is not None and account.locked_until > now:
        refused = "locked"
    elif account.password_hash is None:
        verify_password(password, None)
        refused = "no-password"
    elif not verify_password(password, account.password_hash):
        refused = "bad-password"
    if refused is None:
        ListenAccount.update(failed_signins=0, locked_until=None).where(ListenAccount.name == name).execute()
        ledger.append_audit(name, audit_actions.LISTEN_SIGNIN, "listen_account", name, method="password",
                            address=address)
        return SignIn(get_account(name))
    detail: dict = {"reason": refused, "address": address}
    if refused == "bad-password":
        with ledger.database.atomic():
            ListenAccount.update(failed_signins=ListenAccount.failed_signins + 1).where(
                ListenAccount.name == name).execute()
            failed = get_account(name).failed_signins
            detail["failed_signins"] = failed
            if failed >= policy.lockout_after:
                until = now + dt.timedelta(seconds=policy.lockout_for)
                ListenAccount.update(failed_signins=0, locked_until=until).where(ListenAccount.name == name).execute()
                detail["locked_until"] = until
    elif refused == "locked":
        detail["locked_until"] = account.locked_until
    # an unknown name is not written down: it may be a password typed into the wrong field
    object_id = name if account is not None else "(unknown)"
    ledger.append_audit(object_id if account is not None else "listen", audit_actions.LISTEN_SIGNIN_REFUSED,
                        "listen_account", object_id, **detail)
    return SignIn(None, refused)


class RateLimit:
    """At most ``per_minute`` attempts per address in any 60 s (in memory, per process)."""

    def __init__(self, per_minute: int, *, clock=time.monotonic, max_addresses: int = 10000):
        self.per_minute, self._clock, self._max = per_minute, clock, max_addresses
        self._seen: dict[str, collections.deque] = {}

    def allow(self, address: str) -> bool:
        now = self._clock()
        if len(self._seen) > self._max:  # forget the quiet ones first
            for key in [k for k, q in self._seen.items() if not q or q[-1] < now - 60]:
                del self._seen[key]
        times = self._seen.setdefault(address, collections.deque())
        while times and times[0] <= now - 60:
            times.popleft()
        if len(times) >= self.per_minute:
            return False
        times.append(now)
        return True
