"""CLI: the register of data subject requests (``requests add|list|show|extend|decide``).

``register(main)`` adds the ``requests`` group (``cli/__init__.py`` calls it). The commands take
the shared ``Context`` through ``click.pass_obj``, like every command module.
"""

from __future__ import annotations

import datetime as dt

import click

from ..privacy import subject_requests as sr
from ..store.ledger import os_user
from .output import render
from .types import DateParam, format_option

pass_ctx = click.pass_obj
DUE_RULE = ("A decision is due one calendar month after receipt (the same day of the next month, or its "
            "last day: 31 January -> 28/29 February); after an extension, three months after receipt.")


def register(main: click.Group) -> None:
    """Add the commands to the main group."""
    main.add_command(requests_group)


def _fail(exc: Exception):
    raise click.ClickException(str(exc)) from None


@click.group("requests", help=f"""The register of data subject requests (access, erasure, restriction,
rectification, objection) and their due dates.

Every `fs-consent subject ...` action names a request registered here. {DUE_RULE}
Register, extension and decision land in the audit trail (reference, kind and dates;
notes and reasons are kept with the request only).""")
def requests_group():
    pass


@requests_group.command("add", help=f"""Register a request, once the requester's identity was checked.

{DUE_RULE} DATE is ISO 8601 (YYYY-MM-DD), not in the future.""")
@click.option("--ref", required=True, metavar="REF",
              help="The request's reference (1-64 letters, digits, '.', '_', '-'; not starting with '.'), "
                   "e.g. the portal's case number. Never a name.")
@click.option("--kind", type=click.Choice(sr.KINDS), required=True,
              help="What the requester asks for (GDPR arts. 15, 17, 18, 16, 21).")
@click.option("--received", "received_on", type=DateParam(), required=True,
              help="The day the municipality received the request; the due date counts from it.")
@click.option("--identity-verified", is_flag=True,
              help="Confirm that you checked the requester's identity (DigiD in the portal, or in person). "
                   "Required: without it nothing is registered.")
@click.option("--note", metavar="TEXT", help="Free text kept with the request (not in the audit trail).")
@pass_ctx
def requests_add(ctx, ref, kind, received_on, identity_verified, note):

    if not identity_verified:
        raise click.ClickException(
            "the requester's identity must be checked before a request is registered (DigiD in the portal, or "
            "in person); once it is, repeat the command with --identity-verified. Nothing was registered.")
    ctx.ledger()
    today = dt.date.today()
    try:
        req = sr.add(ref, kind, received_on, actor=os_user(), note=note, today=today)
    except sr.RequestError as exc:
        _fail(exc)
    click.echo(f"registered request {req.ref} ({req.kind}), received {req.received_on.isoformat()}, "
               f"decision due {req.due_on.isoformat()}")
    if today > req.due_on:
        click.echo(f"warning: request {req.ref} is already past its due date: decide it (fs-consent requests "
                   f"decide {req.ref}) or record an extension (fs-consent requests extend {req.ref})", err=True)


@requests_group.command("list", help=f"""List the register, soonest due first.

status is open, overdue (undecided past its due date), granted or refused; days_left
counts to the due date (negative: days overdue). {DUE_RULE}""")
@click.option("--overdue", is_flag=True, help="Only undecided requests past their due date.")
@format_option
@pass_ctx
def requests_list(ctx, overdue, fmt):

    ctx.ledger()
    rows = sr.rows(overdue_only=overdue)
    if fmt == "table":  # keep it narrow: who checked the identity is for json/csv and show
        rows = [{k: v for k, v in row.items() if k != "identity_verified_by"} for row in rows]
    click.echo(render(rows, fmt))


@requests_group.command("show")
@click.argument("ref")
@format_option
@pass_ctx
def requests_show(ctx, ref, fmt):
    """One request: dates, status, note and reasons, and what was done under it."""

    ctx.ledger()
    try:
        row = sr.detail(ref)
    except sr.RequestError as exc:
        _fail(exc)
    click.echo(render([row], fmt, single=True))


@requests_group.command("extend", help="""Extend an undecided request's due date by two months
(to three calendar months after receipt), once.

The GDPR allows this for complex or numerous requests; the requester must be told,
with the reasons, within the first month.""")
@click.argument("ref")
@click.option("--reason", required=True, metavar="TEXT",
              help="Why more time is needed (kept with the request, not in the audit trail).")
@pass_ctx
def requests_extend(ctx, ref, reason):

    ctx.ledger()
    try:
        req = sr.extend(ref, reason, actor=os_user())
    except sr.RequestError as exc:
        _fail(exc)
    click.echo(f"extended request {req.ref} ({req.kind}): decision now due {req.due_on.isoformat()}")


@requests_group.command("decide", help=f"""Record the decision on a request, once.

A refused request allows no further action; under a granted one the `subject`
commands carry it out. A decision after the due date is recorded too, and marked
late in the audit trail. {DUE_RULE}""")
@click.argument("ref")
@click.option("--decision", type=click.Choice(sr.DECISIONS), required=True)
@click.option("--reason", required=True, metavar="TEXT",
              help="The grounds for the decision (kept with the request, not in the audit trail).")
@pass_ctx
def requests_decide(ctx, ref, decision, reason):

    ctx.ledger()
    today = dt.date.today()
    try:
        req = sr.decide(ref, decision, reason, actor=os_user(), today=today)
    except sr.RequestError as exc:
        _fail(exc)
    click.echo(f"request {req.ref} ({req.kind}) {req.decision}")
    if today > req.due_on:
        click.echo(f"warning: decided {(today - req.due_on).days} day(s) after the due date "
                   f"{req.due_on.isoformat()}", err=True)
