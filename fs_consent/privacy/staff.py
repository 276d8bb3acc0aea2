"""Staff on the call: teams, and the data subject rights of an employee.

Who took each call is in ``call_staff`` (one row per bridge, written by the server) as a
keyed hash of kind ``staff`` (look-up) and a sealed value (reading), like the caller's
number. A member of staff is named here by their identifier as FreeSWITCH gives it (the
extension, ``1001``, or the ``[recording] staff_variable``'s value, ``agent-jan@default``),
found through its hash, never by opening every sealed value. The identifier is never
printed unless asked for (``staff list --show-ids``, audited), logged or audited.

* Teams (``staff_team``): ``add``, ``remove``, ``teams``, ``members``. A member of staff
  may be in several teams; the report counts a call for every team of the staff who took it.
* Subject rights for an employee: ``calls_of`` / ``overview`` (find), ``collect`` (export:
  the calls' metadata and the team memberships; the recordings are listed by id, never
  exported to the employee: they hold the callers' voices and numbers, which are not the
  employee's data), ``erase`` (the staff fields of every bridge replaced by ``ERASED_HASH``
  and an empty seal; the team memberships deleted).
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

from peewee import IntegrityError

from ..secure.files import fsync_dir
from ..secure.protect import FieldError, FieldProtector
from ..store import audit_actions, ledger
from ..store.ledger import Call, CallStaff, Recording, StaffTeam, SubjectRequest
from .errors import SubjectError
from .police_export import ExportError, discard_written, prepare_dir, write_new

KIND = "staff"  # the protect.py kind of a staff identifier
ERASED_HASH = CallStaff.ERASED_HASH
ERASED_SEAL = CallStaff.ERASED_SEAL
MAX_ID = 256


def staff_hash(protector: FieldProtector, staff_id: str) -> str:
    """The look-up hash of a staff identifier; SubjectError (without the identifier) if unusable."""
    text = (staff_id or "").strip()
    if not text:
        raise SubjectError("the staff identifier given is empty")
    if len(text) > MAX_ID or not text.isprintable():
        raise SubjectError(f"the staff identifier given is not usable (at most {MAX_ID} printable characters)")
    try:
        return protector.lookup_hash(KIND, text)
    except ValueError:
        raise SubjectError("the staff identifier given is empty") from None


def check_team(team: str) -> str:
    if not isinstance(team, str) or not StaffTeam.NAME.fullmatch(team):
        raise SubjectError(f"team {team!r}: expected {StaffTeam.NAME_RULE}")
    return team


def opened(protector: FieldProtector, sealed) -> str | None:
    """The identifier in a seal; None once erased. SubjectError if it cannot be read."""
    if sealed is None or bytes(sealed) == ERASED_SEAL:
        return None
    try:
        return protector.open(KIND, bytes(sealed))
    except FieldError as exc:
        raise SubjectError(f"a staff identifier cannot be read: {exc}") from None


def short(hash_value: str) -> str:
    """How a member of staff is shown without their identifier: the hash's first 12 hex digits."""
    return hash_value if hash_value == ERASED_HASH else hash_value[:12]


# --- teams ------------------------------------------------------------------------------


def add(protector: FieldProtector, staff_id: str, team: str, *, actor: str) -> StaffTeam:
    """Put a member of staff in a team; SubjectError if they are in it already."""
    check_team(team)
    hashed = staff_hash(protector, staff_id)
    with ledger.database.atomic():
        if StaffTeam.select().where((StaffTeam.staff_hash == hashed) & (StaffTeam.team == team)).exists():
            raise SubjectError(f"that member of staff is in team {team} already")
        try:
            row = StaffTeam.create(staff_hash=hashed, staff_sealed=protector.seal(KIND, staff_id.strip()),
                                   team=team, added_at=ledger.utcnow(), added_by=actor)
        except IntegrityError:  # added by another command at the same moment
            raise SubjectError(f"that member of staff is in team {team} already") from None
        ledger.append_audit(actor, audit_actions.STAFF_ADD, "team", team, staff=short(hashed))
    return row


def remove(protector: FieldProtector, staff_id: str, team: str, *, actor: str) -> None:
    check_team(team)
    hashed = staff_hash(protector, staff_id)
    with ledger.database.atomic():
        if not StaffTeam.delete().where((StaffTeam.staff_hash == hashed) & (StaffTeam.team == team)).execute():
            raise SubjectError(f"that member of staff is not in team {team}")
        ledger.append_audit(actor, audit_actions.STAFF_REMOVE, "team", team, staff=short(hashed))


def teams() -> list[dict]:
    """Every team with its number of members, by name."""
    from peewee import fn

    query = (StaffTeam.select(StaffTeam.team, fn.COUNT(StaffTeam.id).alias("n"))
             .group_by(StaffTeam.team).order_by(StaffTeam.team).tuples())
    return [{"team": team, "members": n} for team, n in query]


def members(team: str, *, protector: FieldProtector | None = None) -> list[dict]:
    """The members of a team: their hash prefix and, with ``protector``, their identifier."""
    check_team(team)
    rows = []
    for member in StaffTeam.select().where(StaffTeam.team == team).order_by(StaffTeam.added_at, StaffTeam.id):
        row = {"team": team, "staff": short(member.staff_hash)}
        if protector is not None:
            row["staff_id"] = opened(protector, member.staff_sealed)
        row.update(added_at=member.added_at, added_by=member.added_by)
        rows.append(row)
    return rows


# --- find ---------------------------------------------------------------------------------


def calls_of(hashed: str):
    """The calls a member of staff took (any bridge), oldest first; on ``call_staff.staff_hash``'s index."""
    return (Call.select().where(Call.id.in_(CallStaff.select(CallStaff.call).where(CallStaff.staff_hash == hashed)))
            .order_by(Call.started_at, Call.id))


def _no_calls() -> SubjectError:
    return SubjectError("no calls taken by the member of staff given (none, or their data was erased)")


def overview(hashed: str, calls: list[Call]) -> list[dict]:
    """One row per call for ``subject find --staff``: when, outcome, route, their part (seq and
    times of their bridges), the recordings (id:state). Never an identifier."""
    ids = [call.id for call in calls]
    bridges: dict[int, list[CallStaff]] = {}
    recordings: dict[int, list[str]] = {}
    if ids:
        for row in (CallStaff.select().where(CallStaff.call.in_(ids) & (CallStaff.staff_hash == hashed))
                    .order_by(CallStaff.seq)):
            bridges.setdefault(row.call_id, []).append(row)
        for rec in Recording.select().where(Recording.call.in_(ids)).order_by(Recording.started_at):
            recordings.setdefault(rec.call_id, []).append(f"{rec.id}:{rec.state}")
    return [{
        "uuid": call.uuid, "started_at": call.started_at, "ended_at": call.ended_at, "outcome": call.outcome,
        "route": call.route, "seq": ",".join(str(b.seq) for b in bridges.get(call.id, [])),
        "bridged_at": bridges[call.id][0].bridged_at if bridges.get(call.id) else None,
        "unbridged_at": bridges[call.id][-1].unbridged_at if bridges.get(call.id) else None,
        "recordings": " ".join(recordings.get(call.id, [])) or None,
    } for call in calls]


def teams_of(hashed: str) -> list[StaffTeam]:
    return list(StaffTeam.select().where(StaffTeam.staff_hash == hashed).order_by(StaffTeam.team))


# --- export (art. 15) ----------------------------------------------------------------------


def _iso(value):
    return None if value is None else value.isoformat(timespec="seconds") + "Z"


def collect(hashed: str, request: SubjectRequest) -> dict:
    """What is held about a member of staff, as data: their bridges (call, seq, route, times),
    the calls' metadata, their teams, and the ids of the calls' recordings (not the audio)."""
    calls = list(calls_of(hashed))
    bridges = {}
    for row in CallStaff.select().where(CallStaff.staff_hash == hashed).order_by(CallStaff.call, CallStaff.seq):
        bridges.setdefault(row.call_id, []).append({
            "seq": row.seq, "route": row.route, "bridged_at": _iso(row.bridged_at),
            "unbridged_at": _iso(row.unbridged_at)})
    recordings: dict[int, list[dict]] = {}
    if calls:
        for rec in Recording.select().where(Recording.call.in_([c.id for c in calls])).order_by(Recording.started_at):
            recordings.setdefault(rec.call_id, []).append({"id": rec.id, "state": rec.state,
                                                           "started_at": _iso(rec.started_at)})
    return {
        "format": "fs-consent-staff-access/1",
        "request": request.ref,
        "note": ("The calls this member of staff took and what was recorded about their part in them. "
                 "Recordings are listed, not included: they hold the callers' voices and numbers. "
                 "Ask the privacy officer to hear one."),
        "teams": [{"team": t.team, "added_at": _iso(t.added_at), "added_by": t.added_by} for t in teams_of(hashed)],
        "calls": [{
            "uuid": call.uuid, "started_at": _iso(call.started_at), "answered_at": _iso(call.answered_at),
            "ended_at": _iso(call.ended_at), "outcome": call.outcome, "route": call.route,
            "duration_seconds": call.duration_seconds, "wait_seconds": call.wait_seconds,
            "bridges": bridges.get(call.id, []), "recordings": recordings.get(call.id, []),
        } for call in calls],
    }


STAFF_JSON = "staff.json"
STAFF_SUMMARY = "summary.html"


def export(hashed: str, request: SubjectRequest, out_dir: Path, *, actor: str) -> dict:
    """Write ``staff.json`` and ``summary.html`` (0600, never overwritten) into ``out_dir`` (created
    0700, or empty); audited as ``subject.export`` under the request. Returns the document."""
    doc = collect(hashed, request)
    doc["generated_at"] = _iso(ledger.utcnow())
    try:
        created = prepare_dir(out_dir)
    except ExportError as exc:
        raise SubjectError(str(exc)) from None
    written: list[Path] = []
    try:
        write_new(out_dir / STAFF_JSON, (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode(), written)
        write_new(out_dir / STAFF_SUMMARY, _summary_html(doc).encode(), written)
        fsync_dir(out_dir)
        ledger.append_audit(actor, audit_actions.SUBJECT_EXPORT, "request", request.ref, subject="staff",
                            calls=[c["uuid"] for c in doc["calls"]], teams=[t["team"] for t in doc["teams"]],
                            recordings_listed=sum(len(c["recordings"]) for c in doc["calls"]),
                            out=str(out_dir.resolve()))
    except BaseException as exc:
        discard_written(out_dir, written, created)
        if isinstance(exc, OSError):
            raise SubjectError(f"export to {out_dir} failed: {exc.strerror or exc}; nothing was left behind") from None
        raise
    return doc


def _summary_html(doc: dict) -> str:
    e = lambda v: html.escape("" if v is None else str(v), quote=True)  # noqa: E731
    rows = "".join(
        f"<tr><td>{e(c['uuid'])}</td><td>{e(c['started_at'])}</td><td>{e(c['route'])}</td><td>{e(c['outcome'])}</td>"
        f"<td>{e(', '.join(str(b['seq']) + ': ' + (b['bridged_at'] or '') + ' - ' + (b['unbridged_at'] or '') for b in c['bridges']))}</td>"
        f"<td>{e(' '.join(r['id'] for r in c['recordings']))}</td></tr>" for c in doc["calls"])
    teams = ", ".join(t["team"] for t in doc["teams"]) or "none / geen"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>fs-consent: staff access "
            f"{e(doc['request'])}</title></head><body><h1>What is held about you as a member of staff</h1>"
            f"<p>Request {e(doc['request'])}, generated {e(doc['generated_at'])} (UTC).</p><p>{e(doc['note'])}</p>"
            "<p lang=\"nl\">De gesprekken die u aannam en wat over uw deel daarin is vastgelegd. Opnamen worden "
            "genoemd, niet meegeleverd: ze bevatten de stem en het nummer van de beller.</p>"
            f"<h2>Teams</h2><p>{e(teams)}</p><h2>Calls / gesprekken ({len(doc['calls'])})</h2>"
            "<table><tr><th>call</th><th>started (UTC)</th><th>route</th><th>consent</th><th>your part</th>"
            f"<th>recordings</th></tr>{rows}</table></body></html>\n")


# --- erasure (art. 17) ---------------------------------------------------------------------


@dataclass
class StaffErasure:
    request: str
    calls: list[str] = field(default_factory=list)  # calls whose staff fields were erased
    bridges: int = 0
    teams: list[str] = field(default_factory=list)  # memberships deleted


def erase(hashed: str, request: SubjectRequest, *, actor: str) -> StaffErasure:
    """Erase a member of staff from the ledger: their identifier on every bridge (hash replaced by
    ``ERASED_HASH``, seal emptied) and their team memberships. The calls and recordings stay (they
    are the callers'); only their part in them becomes anonymous. SubjectError if nothing is held."""
    calls = list(calls_of(hashed))
    memberships = teams_of(hashed)
    if not calls and not memberships:
        raise SubjectError("nothing held about the member of staff given (no calls, no teams; or erased already)")
    report = StaffErasure(request.ref, calls=[c.uuid for c in calls], teams=[t.team for t in memberships])
    with ledger.database.atomic():
        report.bridges = CallStaff.update(staff_hash=ERASED_HASH, staff_sealed=ERASED_SEAL).where(
            CallStaff.staff_hash == hashed).execute()
        StaffTeam.delete().where(StaffTeam.staff_hash == hashed).execute()
        ledger.append_audit(actor, audit_actions.SUBJECT_ERASE, "request", request.ref, subject="staff",
                            calls=report.calls, bridges=report.bridges, teams=report.teams)
    return report
