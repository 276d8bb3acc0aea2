"""CLI: retention purge, legal hold, police export and its verification.

``register(main)`` adds the commands to the main group (``cli/__init__.py`` calls it). The
commands take the shared ``cli.Context`` through ``click.pass_obj``, so this module
does not import ``cli`` (which also runs as ``python -m fs_consent.cli``).
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import click

from .output import render
from .types import DateTimeParam, format_option

pass_ctx = click.pass_obj


def register(main: click.Group) -> None:
    main.add_command(purge)
    main.add_command(hold_group)
    main.add_command(verify_export)


# --- purge ----------------------------------------------------------------------------


@click.command()
@click.option("--dry-run", is_flag=True, help="Count what would be purged; change nothing.")
@click.option("--as-of", type=DateTimeParam(), help="Purge as if it were this moment (ISO 8601; UTC unless "
              "an offset is given). Default: now.")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=2000, show_default=True,
              help="Items per transaction (memory and lock time are bounded by it).")
@pass_ctx
def purge(ctx, dry_run, as_of, batch_size):
    """Delete expired recordings and erase expired call records' personal fields.

    Terms come from [retention] in the config (recordings 60d, call records 365d).
    Recordings under legal hold are kept, and so are their calls' records. Safe while
    the server runs; a purge that was killed is completed by the next one.
    """
    from ..privacy.retention import Purge, PurgeError, Terms, purge_lock
    from ..store.ledger import os_user

    config = ctx.config()
    ctx.ledger()
    job = Purge(vault=ctx.vault(), spool_dir=Path(config.storage.spool_dir), terms=Terms.from_config(config.retention),
                actor=os_user(), as_of=as_of, batch_size=batch_size, node=config.server.node)
    if dry_run:
        click.echo(job.dry_run().summary())
        return
    data_dir = Path(config.storage.data_dir)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        with purge_lock(data_dir):
            if sys.stdout.isatty():
                with click.progressbar(length=job.total(), label="purging") as bar:
                    job.progress = bar.update
                    report = job.run()
            else:
                report = job.run()
    except PurgeError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(report.summary())
    for error in report.errors[:20]:
        click.echo(f"error: {error}", err=True)
    if report.errors:
        sys.exit(1)


# --- hold -----------------------------------------------------------------------------


@click.group("hold")
def hold_group():
    """Legal hold: keep a recording past its term and against erasure (police cases)."""


@hold_group.command("add")
@click.argument("target", metavar="RECORDING_ID|CALL_UUID")
@click.option("--reason", type=click.Choice(["aggression", "intimidation", "other"]), required=True)
@click.option("--case", "case_ref", metavar="REF", required=True,
              help="Case reference: 1-64 letters, digits, '.', '_', '-'; not starting with '.'.")
@click.option("--note", metavar="TEXT", help="Free text kept with the hold (not in the audit trail).")
@pass_ctx
def hold_add(ctx, target, reason, case_ref, note):
    """Hold a sealed recording (or every sealed recording of a call)."""
    from ..store import holds
    from ..store.ledger import os_user

    ctx.ledger()
    try:
        placed = holds.add(target, reason=reason, case_ref=case_ref, note=note, actor=os_user())
    except holds.HoldError as exc:
        raise click.ClickException(str(exc)) from None
    for hold in placed:
        click.echo(f"placed {holds.describe(hold)} on recording {hold.recording_id} (call {hold.call.uuid})")


@hold_group.command("release")
@click.argument("target", metavar="HOLD|RECORDING_ID|CALL_UUID")
@click.option("--case", "case_ref", metavar="REF", help="Release only the holds for this case.")
@click.option("--note", metavar="TEXT", help="Why it is released (kept with the hold).")
@pass_ctx
def hold_release(ctx, target, case_ref, note):
    """Release a hold (by its number), or the active holds on a recording or call.

    A released recording past its retention term is deleted by the next purge.
    """
    from ..store import holds
    from ..store.ledger import Recording, os_user

    config = ctx.config()
    ctx.ledger()
    try:
        released = holds.release(target, actor=os_user(), case_ref=case_ref, note=note)
    except holds.HoldError as exc:
        raise click.ClickException(str(exc)) from None
    term = dt.timedelta(seconds=config.retention.recordings)
    for hold in released:
        click.echo(f"released {holds.describe(hold)} on recording {hold.recording_id}")
    for rid in sorted({h.recording_id for h in released}):
        rec = Recording.get_by_id(rid)
        if holds.is_held(rid):
            click.echo(f"recording {rid} is still under another hold")
        elif rec.state == "sealed" and rec.started_at + term < dt.datetime.now(dt.timezone.utc).replace(tzinfo=None):
            click.echo(f"recording {rid} is past its retention term: the next purge deletes it")


@hold_group.command("list")
@click.option("--all", "include_released", is_flag=True, help="Include released holds.")
@click.option("--case", "case_ref", metavar="REF", help="Only this case's holds.")
@format_option
@pass_ctx
def hold_list(ctx, include_released, case_ref, fmt):
    """List holds (active ones unless --all), newest first."""
    from ..store import holds

    ctx.ledger()
    rows = holds.rows(include_released=include_released, case_ref=case_ref)
    if fmt == "table":  # keep the table narrow: notes are for json/csv
        rows = [{k: v for k, v in row.items() if k != "note"} for row in rows]
    click.echo(render(rows, fmt))


# --- police export --------------------------------------------------------------------


def police_export(ctx, recording_id, out, identity, case_ref, to_recipient, with_caller_number,
                  legal_claim=None) -> None:
    """``recordings export ID --case REF --out DIR``: called by that command in ``cli/__init__.py``.

    A restricted call's recording needs ``--legal-claim`` here too: a police case is a
    legal claim, but overriding a restriction must be a conscious, audited choice.
    """
    from ..privacy.police_export import ExportError, export
    from ..store.ledger import os_user

    if case_ref is None:
        raise click.UsageError("--to-recipient and --with-caller-number need --case (a police export)")
    config = ctx.config()
    ctx.ledger()
    try:
        result = export(recording_id, case_ref=case_ref, out_dir=out, keys_dir=Path(config.storage.keys_dir),
                        vault=ctx.vault(), actor=os_user(), identity_path=identity, recipient=to_recipient,
                        include_number=with_caller_number, legal_claim=legal_claim)
    except ExportError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote the export for case {case_ref} to {result.out_dir}: {', '.join(result.files)}")
    click.echo(f"manifest sha256 {result.manifest_sha256}, signed by {result.signer}")
    click.echo(f"check it with: fs-consent verify-export {result.out_dir} --public-key {result.signer}")
    if not result.held:
        click.echo(f"note: recording {recording_id} is not under legal hold; the purge deletes it after its "
                   f"term (fs-consent hold add {recording_id} --case {case_ref} --reason ...)", err=True)


@click.command("verify-export")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--public-key", metavar="ed25519:...", help="The installation's signing key to verify against "
              "(printed by `fs-consent keys signing-key`). Without it, the key in the manifest is used.")
def verify_export(directory, public_key):
    """Check an export: the manifest's signature and every file's sha256.

    Exit status 0 when everything verifies; otherwise each file at fault is named.
    """
    from ..privacy.police_export import ExportError
    from ..privacy.police_export import verify_export as verify

    try:
        result = verify(directory, public_key)
    except ExportError as exc:
        raise click.ClickException(str(exc)) from None
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if not result.ok:
        for problem in result.problems:
            click.echo(f"FAILED {problem}", err=True)
        sys.exit(1)
    how = "the pinned key" if result.pinned else "the key in the manifest"
    click.echo(f"OK: export for case {result.case_ref} verified: signature by {result.signer} ({how}); "
               f"{len(result.files)} file(s) match: {', '.join(result.files)}")


# --- keys -----------------------------------------------------------------------------
