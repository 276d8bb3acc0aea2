"""CLI: the listening room (``listen``: serve it; ``listen account ...``: its accounts)."""

from __future__ import annotations

import sys

import click

from .types import format_option

pass_ctx = click.pass_obj

ROLE_NAMES = {"coach": "coach", "privacy-officer": "privacy_officer"}


def register(main: click.Group) -> None:
    main.add_command(listen_group)


@click.group("listen", invoke_without_command=True)
@click.option("--address", metavar="HOST:PORT",
              help="Where the listening room answers (default [listen] address, 127.0.0.1:8480).")
@click.option("--log-level", type=click.Choice(("debug", "info", "warning", "error")), default=None,
              help="Overrides logging.level from the config (and the main --log-level).")
@click.pass_context
def listen_group(click_ctx, address, log_level):
    """Run the listening room: coaches and the privacy officer hear sealed recordings in the browser.

    A small web application on 127.0.0.1:8480 by default, meant to sit behind the reverse
    proxy that does TLS (config [listen]). It needs the age identity (keys/identity.txt)
    on this host; the recording servers need only the recipients. Every recording is
    decrypted on the fly into the response, never into a file, and every playback and
    every refusal is in the audit trail (`fs-consent audit export`). Coaches hear the
    recordings of the calls taken by staff of their teams; the privacy officer hears all.

    \b
    Accounts: fs-consent listen account add NAME --role coach --team TEAM
    SIGTERM or Ctrl-C stops it.
    """
    if click_ctx.invoked_subcommand is not None:
        return
    from ..core import logs
    from ..core.config import parse_address
    from ..secure.keys import KeyFileError

    ctx = click_ctx.obj
    config = ctx.config()
    logs.setup(log_level or ctx.log_level or config.logging.level, config.logging.format)
    where = config.listen.address
    if address:
        try:
            where = parse_address(address)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--address") from None
    ctx.ledger()
    from ..listen.serve import ListeningRoom

    try:
        room = ListeningRoom(config, where)
        room.start()
    except KeyFileError as exc:
        raise click.ClickException(f"the listening room needs the age identity on this host: {exc}") from None
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {where}: {exc.strerror or exc}") from None
    host, port = room.address
    logs.announce(f"listening room on http://{host}:{port}/")
    room.run_until_signalled()


@listen_group.group("account")
def account_group():
    """The listening room's accounts: coaches (their teams' recordings) and the privacy officer (all).

    Every change is in the audit trail. Passwords are stored as salted scrypt hashes.
    """


def _password(from_stdin: bool, no_password: bool) -> str | None:
    if no_password:
        return None
    if from_stdin:
        line = sys.stdin.readline()
        return line.rstrip("\r\n")
    return click.prompt("Password", hide_input=True, confirmation_prompt="Repeat the password", err=True)


def _password_options(func):
    func = click.option("--no-password", is_flag=True,
                        help="No password: signs in only through the reverse proxy's user header "
                             "([listen] user_header).")(func)
    func = click.option("--password-stdin", is_flag=True,
                        help="Read the password from the first line of stdin instead of prompting twice.")(func)
    return func


def _fail(exc: Exception):
    raise click.ClickException(str(exc)) from None


@account_group.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(tuple(ROLE_NAMES)), required=True,
              help="coach: hears the recordings of the staff in their teams; privacy-officer: hears every "
                   "recording that may be used, changes nothing.")
@click.option("--team", "teams", multiple=True, metavar="TEAM",
              help="A team whose recordings the coach hears (repeat for more; the teams of `fs-consent staff add`).")
@_password_options
@pass_ctx
def account_add(ctx, name, role, teams, password_stdin, no_password):
    """Add an account NAME (the sign-in name) with a password (prompted twice)."""
    from ..listen import accounts

    ledger = ctx.ledger()
    try:
        accounts.check_name(name)
        password = _password(password_stdin, no_password)
        if password is not None:
            accounts.check_password(password)
        accounts.add_account(name, ROLE_NAMES[role], teams=list(teams), password=password, actor=ledger.os_user())
    except accounts.AccountError as exc:
        _fail(exc)
    click.echo(f"added {role} {name}" + (f" (teams: {', '.join(sorted(set(teams)))})" if teams else ""))


@account_group.command("list")
@format_option
@pass_ctx
def account_list(ctx, fmt):
    """List the accounts, their roles and teams, and whether they are locked or disabled."""
    from ..listen import accounts
    from .output import render

    ledger = ctx.ledger()
    now = ledger.utcnow()
    rows = []
    for account in ledger.ListenAccount.select().order_by(ledger.ListenAccount.name):
        rows.append({
            "name": account.name, "role": account.role.replace("_", "-"),
            "teams": ", ".join(accounts.teams_of(account)) or None,
            "password": "yes" if account.password_hash else "no",
            "locked_until": account.locked_until if account.locked_until and account.locked_until > now else None,
            "disabled_at": account.disabled_at, "created_at": account.created_at, "created_by": account.created_by,
        })
    click.echo(render(rows, fmt))


@account_group.command("disable")
@click.argument("name")
@pass_ctx
def account_disable(ctx, name):
    """Disable an account: it can no longer sign in, and its sessions end now."""
    from ..listen import accounts

    ledger = ctx.ledger()
    try:
        accounts.disable_account(name, actor=ledger.os_user())
    except accounts.AccountError as exc:
        _fail(exc)
    click.echo(f"disabled {name}")


@account_group.command("reset-password")
@click.argument("name")
@_password_options
@pass_ctx
def account_reset_password(ctx, name, password_stdin, no_password):
    """Give an account a new password (prompted twice); unlocks it and ends its sessions."""
    from ..listen import accounts

    ledger = ctx.ledger()
    try:
        accounts.get_account(name)
        password = _password(password_stdin, no_password)
        accounts.reset_password(name, password, actor=ledger.os_user())
    except accounts.AccountError as exc:
        _fail(exc)
    click.echo(f"new password for {name}" if password is not None else f"{name} signs in through the proxy only")


@account_group.command("teams")
@click.argument("name")
@click.option("--add", "add", multiple=True, metavar="TEAM", help="Add a team (repeat for more).")
@click.option("--remove", "remove", multiple=True, metavar="TEAM", help="Remove a team (repeat for more).")
@pass_ctx
def account_teams(ctx, name, add, remove):
    """Show a coach's teams, or change them with --add / --remove."""
    from ..listen import accounts

    ledger = ctx.ledger()
    try:
        if add or remove:
            teams = accounts.change_teams(name, add=list(add), remove=list(remove), actor=ledger.os_user())
        else:
            teams = accounts.teams_of(accounts.get_account(name))
    except accounts.AccountError as exc:
        _fail(exc)
    click.echo(", ".join(teams) if teams else "(no teams)")
