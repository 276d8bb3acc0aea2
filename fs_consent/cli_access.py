"""CLI: the right of access (``subject export``) and listening to a recording (``recordings play``).

``register(main)`` adds ``export`` to the ``subject`` group (made by ``cli_subject.register``,
which runs first) and ``play`` to the ``recordings`` group. ``legal_claim_option`` is
shared with ``recordings export`` in ``cli.py``: a restricted call's recordings (art. 18)
are only ever opened with it. The logic of the export is in ``subject_export.py``.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import click

from . import audit_actions
from .cli_subject import phone_option, request_option, stdin_if_dash

pass_ctx = click.pass_obj

DEFAULT_PLAYERS = (["play", "-q", "-t", "wav", "-"], ["aplay", "-q"])  # sox, then alsa-utils
_CLAIM_MAX = 200


def _check_legal_claim(_ctx, _param, value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip()
    if not text:
        raise click.BadParameter("must say which legal claim this is for")
    if len(text) > _CLAIM_MAX or any(ord(ch) < 32 for ch in text):
        raise click.BadParameter(f"must be one line of at most {_CLAIM_MAX} characters")
    return text


legal_claim_option = click.option(
    "--legal-claim", metavar="REASON", callback=_check_legal_claim,
    help="Open a restricted call's recording (art. 18) anyway, for the establishment, exercise or defence "
         "of a legal claim; REASON names it (a case or file number: no personal data). Audited.")


def register(main: click.Group) -> None:
    main.commands["subject"].add_command(subject_export)
    main.commands["recordings"].add_command(recordings_play)


def _fail(exc: Exception):
    raise click.ClickException(str(exc)) from None


# --- subject export -------------------------------------------------------------------------


@click.command("export", short_help="Right of access (art. 15): export a number's calls and recordings.")
@phone_option
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
def subject_export(ctx, number, ref, out, to_recipient, identity, legal_claim, timezone):
    """Right of access (art. 15): everything held about a caller's calls, for the requester.

    Writes summary.html (one readable page, Dutch and English), calls.json (the same,
    machine-readable, with every file's sha256) and each stored recording as
    <recording id>.wav (0600), or <recording id>.wav.age with --to-recipient. A number
    without calls still gets a summary saying nothing is held. Recordings of a restricted
    call are left out (the summary says so) unless --legal-claim is given. Needs an
    access request in the register; audited under its reference, never with the number.
    """
    from . import subject_export as access
    from .ledger import os_user
    from .subjects import SubjectError

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

    from . import keys, ledger, subjects
    from .police_export import ExportError, checked_store_file

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
    except (subjects.SubjectError, ExportError, keys.KeyFileError) as exc:
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
