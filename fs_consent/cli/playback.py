"""CLI: listening to a recording (``recordings play``), decrypted into a player's stdin, never
into a file. The ``recordings`` group (``cli/__init__.py``) adds it."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import click

from ..privacy.errors import SubjectError
from ..store import audit_actions
from .options import legal_claim_option

pass_ctx = click.pass_obj

DEFAULT_PLAYERS = (["play", "-q", "-t", "wav", "-"], ["aplay", "-q"])  # sox, then alsa-utils

def _fail(exc: Exception):
    raise click.ClickException(str(exc)) from None


# --- recordings play ------------------------------------------------------------------------


def _player_argv(player: str | None) -> list[str]:
    if player is None:
        for argv in DEFAULT_PLAYERS:
            if shutil.which(argv[0]):
                return list(argv)
        raise click.ClickException("no player found: install sox (play) or alsa-utils (aplay), or pass --player")
    try:
        argv = shlex.split(player)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--player") from None
    if not argv:
        raise click.BadParameter("is empty", param_hint="--player")
    if shutil.which(argv[0]) is None:
        raise click.BadParameter(f"{argv[0]} is not an executable program", param_hint="--player")
    return argv


@click.command("play")
@click.argument("recording_id")
@click.option("--player", metavar="COMMAND",
              help="Command that plays a WAV from its stdin (split like a shell line). "
                   "Default: sox's `play -q -t wav -`, else `aplay -q`.")
@click.option("--identity", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="age identity file (default: keys/identity.txt in the data dir).")
@legal_claim_option
@pass_ctx
def recordings_play(ctx, recording_id, player, identity, legal_claim):
    """Listen to a sealed recording. Audited.

    The recording is decrypted in memory straight into the player's stdin: the plaintext
    never touches the disk. A recording of a restricted call (art. 18) is refused unless
    --legal-claim is given.
    """
    import subprocess

    import pyrage

    from ..privacy import subjects
    from ..privacy.police_export import ExportError, checked_store_file
    from ..secure import keys
    from ..store import ledger

    argv = _player_argv(player)
    ctx.ledger()
    rec = ledger.Recording.get_or_none(ledger.Recording.id == recording_id)
    if rec is None:
        raise click.ClickException(f"no recording with id {recording_id}")
    if rec.state != ledger.SEALED:
        why = f" ({rec.state_reason})" if rec.state_reason else ""
        raise click.ClickException(f"recording {recording_id} is {rec.state}{why}, not sealed: there is nothing "
                                   "to play")
    try:
        restriction = subjects.refuse_if_restricted(rec.call_id, legal_claim=legal_claim)
        store_file = checked_store_file(ctx.vault(), rec)[0]
        identity_key = keys.load_identity(Path(ctx.config().storage.keys_dir), identity)
    except (SubjectError, ExportError, keys.KeyFileError) as exc:
        _fail(exc)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE)
    except OSError as exc:
        raise click.ClickException(f"cannot start the player {argv[0]}: {exc.strerror or exc}") from None
    ledger.append_audit(ledger.os_user(), audit_actions.RECORDING_PLAY, "recording", rec.id, player=Path(argv[0]).name,
                        legal_claim=legal_claim,
                        restriction=restriction.request.ref if restriction else None)
    problem = None
    try:
        with open(store_file, "rb") as src:
            pyrage.decrypt_io(src, proc.stdin, [identity_key])
    except BrokenPipeError:
        pass  # the player stopped reading (closed, or quit by the listener): its exit status says which
    except (pyrage.DecryptError, OSError) as exc:
        problem = f"recording {rec.id} could not be decrypted to the end (damaged?): {exc}; playback stopped"
    except BaseException:  # Ctrl-C: stop the player too
        proc.kill()
        raise
    finally:
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
        status = proc.wait()
    if problem:
        raise click.ClickException(problem)
    if status != 0:
        raise click.ClickException(f"the player {argv[0]} exited with status {status}")
    click.echo(f"played recording {rec.id}", err=True)
