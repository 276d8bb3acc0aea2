"""CLI: ``fs-consent check``, the installation's readiness (``check.py`` has the checks).

``register(main)`` adds the command to the main group; it takes the shared
``Context`` through ``click.pass_obj``, like the other command modules.
"""

from __future__ import annotations

import sys

import click

from .output import render

pass_ctx = click.pass_obj


def register(main: click.Group) -> None:
    """Add the commands to the main group."""
    main.add_command(check)


@click.command()
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="table: one line per check (status, check, detail); json: a list of objects.")
@pass_ctx
def check(ctx, fmt):
    """Check that fs-consent can start and do its job; change nothing.

    One line per check: the configuration (and, when it holds a password, that others
    cannot read it), the key files and their modes, the data dir, store and spool (and
    whether the spool is on a tmpfs), free space, the database's schema version and,
    when [freeswitch] inbound is set, that FreeSWITCH's inbound event socket accepts
    the password. A check is ok, warn (works, but have a look) or fail. Exits 1 when a
    check fails, 0 otherwise: run it after installing or upgrading, and from monitoring.
    """
    from ..reports.check import FAIL, run_checks

    results = []
    for result in run_checks(ctx.config_path, ctx.data_dir):
        results.append(result)
        if fmt == "table":  # as each check finishes: the event socket may take a while
            click.echo(f"{result.status:<5} {result.name:<10} {result.detail}")
    if fmt == "json":
        click.echo(render([r.row() for r in results], "json"))
    if any(r.status == FAIL for r in results):
        sys.exit(1)
