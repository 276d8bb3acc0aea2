"""CLI: the data subject commands (``subject find|erase|restrict|unrestrict|rectify|object|withdraw-objection``).

``register(main)`` adds the ``subject`` group, every command of it defined here (``export``,
the right of access, too). The commands take the shared ``Context`` through
``click.pass_obj``. The logic is in ``privacy/subjects.py``, ``privacy/objections.py`` and
``privacy/subject_export.py``; here the input is read, checked and the outcome printed. The
phone number given is never printed: output names calls and recordings by their ids.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..privacy.errors import SubjectError
from ..store import audit_actions
from .options import PHONE_HELP, legal_claim_option, phone_option, request_option, stdin_if_dash
from .output import render
from .types import format_option

pass_ctx = click.pass_obj

#: find, export and erase name either a caller (--phone) or an employee (--staff)
either_phone = click.option("--phone", "number", metavar="NUMBER", help=PHONE_HELP + " Or --staff.")
either_staff = click.option(
    "--staff", "staff_id", metavar="ID",
    help="Instead of --phone: a member of staff, as the ledger records who took a call (their extension, "
         "or the [recording] staff_variable value); '-' reads it from stdin. Found by its keyed hash.")


def _one_subject(number, staff_id, **not_for_staff) -> None:
    if (number is None) == (staff_id is None):
        raise click.UsageError("name the subject: --phone NUMBER (a caller) or --staff ID (a member of staff)")
    if staff_id is not None:
        given = [name for name, value in not_for_staff.items() if value]
        if given:
            raise click.UsageError(f"--{given[0].replace('_', '-')} is for a caller (--phone), not with --staff")


def _staff_hash(ctx, staff_id: str) -> str:
    from ..privacy import staff, subjects
    from ..secure import keys

    ctx.ledger()
    try:
        return staff.staff_hash(subjects.protector_for(Path(ctx.config().storage.keys_dir)), stdin_if_dash(staff_id))
    except (SubjectError, keys.KeyFileError) as exc:
        _fail(exc)


def register(main: click.Group) -> None:
    main.add_command(subject_group)


@click.group("subject")
def subject_group():
    """Data subject rights for one caller: find, erase, restrict, rectify, object; and for
    a member of staff (--staff ID): find, export, erase.

    The caller is named by their phone number, found through its keyed hash (never by
    decrypting the ledger); every written form of a number finds the same calls. Each
    action names a request of the register (fs-consent requests add), checks all its
    input before changing anything, and lands in the audit trail with the request's
    reference and pseudonymous ids only.
    """


def _fail(exc: Exception):
    raise click.ClickException(str(exc)) from None


def _caller_hash(ctx, number: str) -> str:
    from ..privacy import subjects
    from ..secure import keys

    ctx.ledger()
    try:
        return subjects.phone_hash(subjects.protector_for(Path(ctx.config().storage.keys_dir)),
                                   stdin_if_dash(number))
    except (SubjectError, keys.KeyFileError) as exc:
        _fail(exc)


def _request(ctx, ref: str, kind: str):
    from ..privacy.subject_requests import RequestError, require

    ctx.ledger()
    try:
        return require(ref, kind)
    except RequestError as exc:
        _fail(exc)


def _act(ctx, number: str, ref: str, kind: str, action):
    """Resolve the number and the request (of ``kind``), then ``action(caller_hash, request, actor=...)``.

    Returns (request, what the action returned); any refusal becomes one error line.
    """
    from ..store import ledger

    caller_hash = _caller_hash(ctx, number)
    request = _request(ctx, ref, kind)
    try:
        return request, action(caller_hash, request, actor=ledger.os_user())
    except SubjectError as exc:
        _fail(exc)


def _objection_line(caller_hash: str) -> str:
    from ..privacy.objections import active

    objection = active(caller_hash)
    if objection is None:
        return "objection: none (calls from this number are asked for consent)"
    return (f"objection: in force since {objection.placed_at.isoformat(timespec='seconds')}Z (request "
            f"{objection.request.ref}): calls from this number are not recorded")


# --- find -----------------------------------------------------------------------------


@subject_group.command("find", short_help="List the calls from a number, or taken by staff (no number shown).")
@either_phone
@either_staff
@click.option("--request", "ref", metavar="REF", help="The request this look-up is for (named in the audit trail).")
@format_option
@pass_ctx
def find(ctx, number, staff_id, ref, fmt):
    """List the calls from a number: one row per call with its outcome, recordings (id:state),
    active legal holds, active restriction (its request) and rectified details; then whether
    an objection is in force (on stderr for json and csv).

    With --staff instead: the calls a member of staff took, one row per call with its
    outcome, route, their part (the bridge seq(s), when they were bridged and unbridged)
    and its recordings; then their teams.

    Calls whose personal data was erased (by an erasure or by retention) are not found.
    The look-up is audited (with the request, if given; never the number or identifier).
    """
    from ..privacy import subjects
    from ..privacy.subject_requests import RequestError, get
    from ..store import ledger

    _one_subject(number, staff_id)
    if staff_id is not None:
        return _find_staff(ctx, _staff_hash(ctx, staff_id), ref, fmt)
    caller_hash = _caller_hash(ctx, number)
    try:
        request = get(ref) if ref else None
    except RequestError as exc:
        _fail(exc)
    calls = list(subjects.calls_of(caller_hash))
    rows = subjects.overview(calls)
    ledger.append_audit(ledger.os_user(), audit_actions.SUBJECT_FIND, "request" if request else "subject",
                        request.ref if request else "-", calls=len(calls))
    click.echo(render(rows, fmt))
    click.echo(_objection_line(caller_hash), err=fmt != "table")


def _find_staff(ctx, hashed: str, ref: str | None, fmt: str) -> None:
    from ..privacy import staff
    from ..privacy.subject_requests import RequestError, get
    from ..store import ledger

    try:
        request = get(ref) if ref else None
    except RequestError as exc:
        _fail(exc)
    calls = list(staff.calls_of(hashed))
    rows = staff.overview(hashed, calls)
    teams = [t.team for t in staff.teams_of(hashed)]
    ledger.append_audit(ledger.os_user(), audit_actions.SUBJECT_FIND, "request" if request else "subject",
                        request.ref if request else "-", subject="staff", calls=len(calls))
    click.echo(render(rows, fmt))
    click.echo(f"teams: {', '.join(teams) if teams else 'none'}", err=fmt != "table")


# --- erase ----------------------------------------------------------------------------


@subject_group.command("erase", short_help="Erase a number's (or an employee's) personal data (art. 17).")
@either_phone
@either_staff
@request_option
@click.option("--recordings-only", is_flag=True, help="Delete the recordings; keep the calls' personal fields.")
@click.option("--call", "call_uuid", metavar="UUID", help="Only this call (it must be from the number given).")
@pass_ctx
def erase(ctx, number, staff_id, ref, recordings_only, call_uuid):
    """Erase a number's data (art. 17; needs a request of kind erase).

    Deletes the recordings of the number's ended calls (every byte: store and spool) and,
    unless --recordings-only, erases the calls' personal fields (the number, sealed and
    hashed, and rectified details): afterwards the calls cannot be found from the number.
    What stays is anonymous (time, outcome, duration).

    A recording under legal hold is not deleted (the hold is named) and its call keeps
    its number; the rest is erased and the exit status is 1. Calls still in progress
    (or whose recording is still being sealed) are skipped and named: run it again
    once they have ended. An objection stays in force (withdraw-objection ends it).

    With --staff instead: erases a member of staff's identifier from every call they took
    (its hash and sealed value are replaced: the calls no longer say who took them) and
    their team memberships. The calls and their recordings stay: they are the callers'
    data, under the callers' consent and retention.
    """
    from ..privacy import objections, subjects
    from ..store import ledger

    _one_subject(number, staff_id, recordings_only=recordings_only, call=call_uuid)
    if staff_id is not None:
        from ..privacy import staff

        hashed = _staff_hash(ctx, staff_id)
        request = _request(ctx, ref, "erase")
        try:
            done = staff.erase(hashed, request, actor=ledger.os_user())
        except SubjectError as exc:
            _fail(exc)
        click.echo(f"request {done.request}: erased the staff identifier from {done.bridges} bridge(s) of "
                   f"{len(done.calls)} call(s)" + (f" ({', '.join(done.calls)})" if done.calls else "")
                   + f" and {len(done.teams)} team membership(s)" + (f" ({', '.join(done.teams)})" if done.teams else ""))
        return
    caller_hash = _caller_hash(ctx, number)
    request = _request(ctx, ref, "erase")
    storage = ctx.config().storage
    try:
        report = subjects.erase(caller_hash, request, actor=ledger.os_user(), spool_dir=Path(storage.spool_dir),
                                vault=ctx.vault(), call_uuid=call_uuid, recordings_only=recordings_only)
    except SubjectError as exc:
        _fail(exc)
    deleted = f" ({', '.join(report.deleted)})" if report.deleted else ""
    line = f"request {report.request}: deleted {len(report.deleted)} recordings{deleted}"
    if not recordings_only:
        erased = f" ({', '.join(report.erased)})" if report.erased else ""
        line += f"; erased the personal data of {len(report.erased)} calls{erased}"
    click.echo(line)
    for call_uuid in report.in_progress:
        click.echo(f"skipped call {call_uuid}: still in progress (or its recording is being sealed); "
                   "erase it once it has ended")
    for call_uuid in report.kept:
        click.echo(f"kept the number of call {call_uuid}: a recording of it is under legal hold")
    objection = objections.active(caller_hash)
    if objection is not None:
        click.echo(f"an objection stays in force for this number (request {objection.request.ref}): its calls are "
                   "not recorded, and the objection keeps the number's hash; fs-consent subject "
                   "withdraw-objection ends it")
    for refusal in subjects.refusals(report):
        click.echo(f"refused: {refusal}", err=True)
    if report.refused:
        sys.exit(1)


# --- restriction ----------------------------------------------------------------------


@subject_group.command("restrict", short_help="Restrict a number's calls: no playing, no export (art. 18).")
@phone_option
@request_option
@pass_ctx
def restrict(ctx, number, ref):
    """Restrict the processing of a number's calls (art. 18; request of kind restrict).

    Every call from the number that is not restricted yet gets a restriction: its
    recordings cannot be played or exported, except an export for a legal claim
    (--legal-claim REASON). Retention still applies: a restriction never makes data
    live longer. unrestrict lifts it.
    """
    from ..privacy import subjects

    request, placed = _act(ctx, number, ref, "restrict", subjects.restrict)
    click.echo(f"request {request.ref}: restricted {len(placed)} calls "
               f"({', '.join(r.call.uuid for r in placed)}); their recordings cannot be played or exported "
               "except for a legal claim; retention still applies")


@subject_group.command("unrestrict", short_help="Lift the restrictions on a number's calls.")
@phone_option
@request_option
@pass_ctx
def unrestrict(ctx, number, ref):
    """Lift the restrictions on a number's calls (request of kind restrict)."""
    from ..privacy import subjects

    request, uuids = _act(ctx, number, ref, "restrict", subjects.unrestrict)
    click.echo(f"request {request.ref}: lifted the restriction of {len(uuids)} calls ({', '.join(uuids)})")


# --- rectification --------------------------------------------------------------------


@subject_group.command("rectify", short_help="Correct a call's name, address or subject (art. 16).")
@click.option("--call", "call_uuid", metavar="UUID", required=True, help="The call to correct.")
@click.option("--field", "field_name", type=click.Choice(["name", "address", "subject"]), required=True,
              help="The detail to set.")
@click.option("--value", metavar="TEXT", required=True,
              help="The correct value; '-' reads it from stdin, which keeps it out of shell history and ps.")
@request_option
@pass_ctx
def rectify(ctx, call_uuid, field_name, value, ref):
    """Correct a call's name, address or subject (art. 16; request of kind rectify).

    The value is stored sealed (AES-GCM), replacing an earlier one; the audit trail
    records the field, never the value. A call whose personal data was erased cannot
    be rectified.
    """
    from ..privacy import subjects
    from ..secure import keys
    from ..store import ledger

    request = _request(ctx, ref, "rectify")
    try:
        protector = subjects.protector_for(Path(ctx.config().storage.keys_dir))
        subjects.rectify(call_uuid, field_name, stdin_if_dash(value), request, actor=ledger.os_user(),
                         protector=protector)
    except (SubjectError, keys.KeyFileError) as exc:
        _fail(exc)
    click.echo(f"request {request.ref}: rectified the {field_name} of call {call_uuid}")


# --- objection ------------------------------------------------------------------------


@subject_group.command("object", short_help="Stop recording a number's calls (art. 21).")
@phone_option
@request_option
@pass_ctx
def object_(ctx, number, ref):
    """Record an objection (art. 21; request of kind object): from now on, calls from the
    number are not recorded. Earlier recordings stay until erased or their term ends."""
    from ..privacy import objections

    request, objection = _act(ctx, number, ref, "object", objections.place)
    click.echo(f"request {request.ref}: objection #{objection.id} placed; calls from this number are not "
               "recorded from now on")


@subject_group.command("withdraw-objection", short_help="End a number's objection: ask for consent again.")
@phone_option
@request_option
@pass_ctx
def withdraw_objection(ctx, number, ref):
    """End the objection in force for a number (request of kind object): its calls are
    asked for consent again."""
    from ..privacy import objections

    request, objection = _act(ctx, number, ref, "object", objections.withdraw)
    click.echo(f"request {request.ref}: objection #{objection.id} withdrawn; calls from this number are asked "
               "for consent again")


# --- subject export -------------------------------------------------------------------------


@subject_group.command("export", short_help="Right of access (art. 15): export a number's calls and recordings.")
@either_phone
@either_staff
@request_option
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="The export directory: created 0700; an existing one must be empty. Never overwritten.")
@click.option("--to-recipient", metavar="AGE_PUBLIC_KEY",
              help="Re-encrypt the recordings to the requester's age key (age1...): no plaintext on disk.")
@click.option("--identity", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="age identity file to open the recordings (default: keys/identity.txt in the data dir).")
@legal_claim_option
@click.option("--timezone", default="Europe/Amsterdam", show_default=True,
              help="Zone of the times in summary.html: UTC or a name like Europe/Amsterdam (calls.json is UTC).")
@pass_ctx
def subject_export(ctx, number, staff_id, ref, out, to_recipient, identity, legal_claim, timezone):
    """Right of access (art. 15): everything held about a caller's calls, for the requester.

    Writes summary.html (one readable page, Dutch and English), calls.json (the same,
    machine-readable, with every file's sha256) and each stored recording as
    <recording id>.wav (0600), or <recording id>.wav.age with --to-recipient. A number
    without calls still gets a summary saying nothing is held. Recordings of a restricted
    call are left out (the summary says so) unless --legal-claim is given. Needs an
    access request in the register; audited under its reference, never with the number.

    With --staff instead (an employee's access request): staff.json and summary.html with
    the calls they took (times, route, outcome, their bridges), their teams, and the ids
    of those calls' recordings. The recordings themselves are not exported: they hold the
    callers' voices and numbers, which are not the employee's to receive; the privacy
    officer can play a recording with them where that is justified.
    """
    from ..privacy import subject_export as access
    from ..store.ledger import os_user

    _one_subject(number, staff_id, to_recipient=to_recipient, identity=identity, legal_claim=legal_claim)
    if staff_id is not None:
        from ..privacy import staff

        hashed = _staff_hash(ctx, staff_id)
        request = _request(ctx, ref, "access")
        try:
            doc = staff.export(hashed, request, out, actor=os_user())
        except SubjectError as exc:
            _fail(exc)
        listed = sum(len(c["recordings"]) for c in doc["calls"])
        click.echo(f"wrote the staff access export for request {ref} to {out}: {len(doc['calls'])} call(s), "
                   f"{len(doc['teams'])} team(s), {listed} recording id(s) listed (not exported); "
                   f"{staff.STAFF_SUMMARY}, {staff.STAFF_JSON}")
        return

    config = ctx.config()
    ctx.ledger()
    try:
        result = access.export(stdin_if_dash(number), request_ref=ref, out_dir=out, config=config,
                               vault=ctx.vault(), actor=os_user(), recipient=to_recipient,
                               identity_path=identity, legal_claim=legal_claim, timezone=timezone)
    except SubjectError as exc:
        _fail(exc)
    recordings = [name for name in result.files if name not in (access.CALLS, access.SUMMARY)]
    click.echo(f"wrote the access export for request {ref} to {result.out_dir}: {result.calls} call(s), "
               f"{len(recordings)} recording(s); {access.SUMMARY}, {access.CALLS}"
               + "".join(f", {name}" for name in recordings))
    if result.left_out:
        ids = ", ".join(x["recording_id"] for x in result.left_out)
        click.echo(f"left out (the call is restricted): {ids}; with --legal-claim REASON they are included",
                   err=True)
