"""CLI: the encryption and signing keys (``keys init``, ``keys signing-key``)."""

from __future__ import annotations

from pathlib import Path

import click

from ..store import audit

pass_ctx = click.pass_obj


def register(main: click.Group) -> None:
    main.add_command(keys_group)


# --- keys init ---------------------------------------------------------------------


@click.group("keys")
def keys_group():
    """Encryption keys: the age identity/recipients and the field-protection key."""


@keys_group.command("init")
@click.option("--force", is_flag=True, help="Replace existing key files (old recordings then need the old identity).")
@pass_ctx
def keys_init(ctx, force):
    """Create keys/identity.txt (0600), keys/recipients.txt and keys/field.key in the data dir."""
    from ..secure import keys

    keys_dir = Path(ctx.config().storage.keys_dir)
    ctx.check_data_dir()
    try:
        created = keys.init_keys(keys_dir, force=force)
    except keys.KeyFileError as exc:
        raise click.ClickException(str(exc)) from None
    lines = created.describe()
    for line in lines:
        click.echo(line)
    if not lines:
        click.echo(f"all key files are already present in {keys_dir}; nothing was changed")
    try:  # every key change lands in the audit trail
        ledger = ctx.ledger(create=True)  # keys init may make the ledger (serve would)
        audit.record_keys(keys_dir, actor=ledger.os_user(), via="keys init", node=ctx.config().server.node)
    except Exception as exc:  # the keys are written; say why the trail does not show it yet
        click.echo(f"warning: the key change is not in the audit trail yet ({exc}); the server records "
                   "it when it next starts", err=True)


@keys_group.command("signing-key")
@pass_ctx
def keys_signing_key(ctx):
    """Print this node's signing public key (ed25519:...): for the police to pin, and for the
    other nodes' [audit] trusted_keys (each node signs its checkpoints with its own key)."""
    from ..secure import keys

    keys_dir = Path(ctx.config().storage.keys_dir)
    try:
        click.echo(keys.signing_public_key(keys.load_signing_key(keys_dir)))
    except keys.KeyFileError as exc:
        raise click.ClickException(f"{exc} (create it with: fs-consent keys init)") from None
