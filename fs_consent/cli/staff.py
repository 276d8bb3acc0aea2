"""CLI: ``staff add|remove|list``: the teams of the staff who take the calls.

A member of staff is named by the identifier the ledger records for them (``[recording]
staff_variable``, by default the extension the bridge dialed); it is stored as a keyed hash and
a sealed value, like a caller's number, and shown only as its hash's first digits unless
``staff list --show-ids`` is given (audited). The logic is in ``privacy/staff.py``.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..privacy.errors import SubjectError
from .options import stdin_if_dash
from .output import render
from .types import format_option

pass_ctx = click.pass_obj

STAFF_HELP = ("The member of staff as the ledger records them: their extension (1001) or the value of "
              "[recording] staff_variable (e.g. an agent name); '-' reads it from stdin.")
staff_option = click.option("--staff", "staff_id", metavar="ID", required=True, help=STAFF_HELP)
team_option = click.option("--team", metavar="TEAM", required=True,
                           help="The team: up to 64 letters, digits and . _ - (e.g. vergunningen).")


def register(main: click.Group) -> None:
    main.add_command(staff_group)


@click.group("staff")
def staff_group():
    """Teams of the staff who take the calls, for the report per team and the listening room.

    Who took each call is in the ledger already (a row per bridge: see calls show); a
    team groups those members of staff. Adding and removing are audited, with the
    member shown as a pseudonym (their hash's first digits), never their identifier.
    """


def _protector(ctx):
    from ..privacy import subjects
    from ..secure import keys

    ctx.ledger()
    try:
        return subjects.protector_for(Path(ctx.config().storage.keys_dir))
    except keys.KeyFileError as exc:
        raise click.ClickException(str(exc)) from None


@staff_group.command("add", short_help="Put a member of staff in a team.")
@team_option
@staff_option
@pass_ctx
def staff_add(ctx, team, staff_id):
    """Put a member of staff in a team (they may be in several). The report counts a call for
    every team of the staff who took it."""
    from ..privacy import staff
    from ..store import ledger

    protector = _protector(ctx)
    try:
        row = staff.add(protector, stdin_if_dash(staff_id), team, actor=ledger.os_user())
    except SubjectError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"added staff {staff.short(row.staff_hash)} to team {team}")


@staff_group.command("remove", short_help="Take a member of staff out of a team.")
@team_option
@staff_option
@pass_ctx
def staff_remove(ctx, team, staff_id):
    """Take a member of staff out of a team. The calls they took keep them (a row per bridge):
    only the team membership goes."""
    from ..privacy import staff
    from ..store import ledger

    protector = _protector(ctx)
    try:
        staff.remove(protector, stdin_if_dash(staff_id), team, actor=ledger.os_user())
    except SubjectError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"removed that member of staff from team {team}")


@staff_group.command("list", short_help="List the teams, or a team's members.")
@click.option("--team", metavar="TEAM", help="List this team's members (default: every team and its size).")
@click.option("--show-ids", is_flag=True,
              help="With --team: show each member's identifier (opened with the field key; audited).")
@format_option
@pass_ctx
def staff_list(ctx, team, show_ids, fmt):
    """List the teams and their number of members; with --team, its members as pseudonyms (the
    first 12 hex digits of their keyed hash), when and by whom they were added. --show-ids opens
    their identifiers too, and leaves an audit entry saying who saw which team."""
    from ..privacy import staff
    from ..store import audit_actions, ledger

    if show_ids and not team:
        raise click.UsageError("--show-ids needs --team")
    protector = _protector(ctx) if show_ids else None
    ctx.ledger()
    try:
        rows = staff.members(team, protector=protector) if team else staff.teams()
    except SubjectError as exc:
        raise click.ClickException(str(exc)) from None
    if show_ids:
        ledger.append_audit(ledger.os_user(), audit_actions.STAFF_SHOW_IDS, "team", team, members=len(rows))
    if team and not rows:
        raise click.ClickException(f"team {team} has no members (fs-consent staff add --team {team} --staff ID)")
    click.echo(render(rows, fmt))
