"""Which recordings an account may hear.

Playable: sealed, of a call whose consent was granted and never withdrawn, not under an
active restriction (art. 18, ``privacy/subjects.py``), and not past its term
(``privacy/retention.py``: the purge would delete it; a legal hold keeps the file, not
the right to listen). A coach hears the playable recordings of the calls taken by staff
of one of the coach's teams (``call_staff`` -> ``staff_team``, by the staff's keyed hash);
the privacy officer hears every playable recording. Each entry names the staff who took the
call (the coach's teams' only), so the coach knows whose conversation it is.

``lookup`` says which of these a refusal is: ``NOT_PLAYABLE`` (404: withdrawn, deleted,
restricted, past its term, or unknown) before ``NOT_YOURS`` (403: playable, but not the
coach's), so a withdrawn recording is gone for everybody.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from peewee import JOIN, fn

from ..core import consent
from ..privacy.retention import Terms, recording_cutoff, recording_days_left
from ..privacy.staff import opened
from ..secure.protect import FieldProtector
from ..secure.spool import is_recording_id
from ..store import ledger
from ..store.ledger import Call, CallStaff, ListenAccount, Recording, Restriction, StaffTeam
from .accounts import PRIVACY_OFFICER, teams_of

NOT_PLAYABLE = "not-playable"
NOT_YOURS = "not-yours"
LIST_LIMIT = 500


@dataclass(frozen=True)
class Entry:
    id: str
    started_at: dt.datetime
    duration_seconds: float | None
    route: str | None
    days_left: int
    teams: tuple[str, ...]
    staff: tuple[str, ...]  # who took it, in bridge order (opened with the field key: shown, never logged)


def _playable(as_of: dt.datetime, terms: Terms):
    restricted = Restriction.select(Restriction.call).where(Restriction.lifted_at.is_null())
    return ((Recording.state == ledger.SEALED) & (Call.outcome == consent.GRANTED) & Call.withdrawn_at.is_null()
            & (Recording.started_at >= recording_cutoff(as_of, terms)) & Call.id.not_in(restricted))


def _team_calls(teams: list[str]):
    return (CallStaff.select(CallStaff.call)
            .join(StaffTeam, on=(StaffTeam.staff_hash == CallStaff.staff_hash))
            .where(StaffTeam.team.in_(teams)))


def _people_by_call(call_ids: list[int], only: list[str] | None,
                    protector: FieldProtector) -> dict[int, tuple[tuple[str, ...], tuple[str, ...]]]:
    """call id -> (its teams, its staff in bridge order), limited to the teams ``only`` (a coach's:
    a colleague of another team who took part of the call is not shown to this coach)."""
    if not call_ids:
        return {}
    query = (CallStaff.select(CallStaff.call, CallStaff.seq, CallStaff.staff_sealed, StaffTeam.team)
             .join(StaffTeam, on=(StaffTeam.staff_hash == CallStaff.staff_hash))
             .where(CallStaff.call.in_(call_ids)).order_by(CallStaff.call, CallStaff.seq).tuples())
    if only is not None:
        query = query.where(StaffTeam.team.in_(only))
    teams: dict[int, set[str]] = {}
    staff: dict[int, dict[int, str]] = {}
    for call_id, seq, sealed, team in query:
        teams.setdefault(call_id, set()).add(team)
        if seq not in staff.setdefault(call_id, {}):
            staff[call_id][seq] = opened(protector, sealed) or "–"
    return {call_id: (tuple(sorted(found)), tuple(staff[call_id][seq] for seq in sorted(staff[call_id])))
            for call_id, found in teams.items()}


def _entry(rec: Recording, as_of: dt.datetime, terms: Terms, people: dict) -> Entry:
    teams, staff = people.get(rec.call.id, ((), ()))
    return Entry(rec.id, rec.started_at, rec.call.duration_seconds, rec.call.route,
                 recording_days_left(rec.started_at, as_of, terms), teams, staff)


def listing(account: ListenAccount, terms: Terms, protector: FieldProtector, *, as_of: dt.datetime | None = None,
            limit: int = LIST_LIMIT) -> list[Entry]:
    """The recordings ``account`` may hear, newest first."""
    as_of = as_of or ledger.utcnow()
    condition = _playable(as_of, terms)
    teams = None
    if account.role != PRIVACY_OFFICER:
        teams = teams_of(account)
        if not teams:
            return []
        condition &= Call.id.in_(_team_calls(teams))
    rows = list(Recording.select(Recording.id, Recording.started_at, Call.id, Call.duration_seconds, Call.route)
                .join(Call).where(condition).order_by(Recording.started_at.desc(), Recording.id).limit(limit))
    people = _people_by_call([rec.call.id for rec in rows], teams, protector)
    return [_entry(rec, as_of, terms, people) for rec in rows]


def lookup(account: ListenAccount, recording_id: str, terms: Terms, protector: FieldProtector, *,
           as_of: dt.datetime | None = None) -> tuple[Entry | None, str | None]:
    """(the entry, None) if ``account`` may hear the recording, else (None, NOT_PLAYABLE | NOT_YOURS)."""
    as_of = as_of or ledger.utcnow()
    if not isinstance(recording_id, str) or not is_recording_id(recording_id):
        return None, NOT_PLAYABLE
    rec = (Recording.select(Recording.id, Recording.started_at, Call.id, Call.duration_seconds, Call.route)
           .join(Call).where(_playable(as_of, terms) & (Recording.id == recording_id)).first())
    if rec is None:
        return None, NOT_PLAYABLE
    teams = None
    if account.role != PRIVACY_OFFICER:
        teams = teams_of(account)
        mine = teams and (CallStaff.select(fn.COUNT(CallStaff.id)).join(
            StaffTeam, JOIN.INNER, on=(StaffTeam.staff_hash == CallStaff.staff_hash))
            .where((CallStaff.call == rec.call.id) & StaffTeam.team.in_(teams)).scalar())
        if not mine:
            return None, NOT_YOURS
    return _entry(rec, as_of, terms, _people_by_call([rec.call.id], teams, protector)), None
