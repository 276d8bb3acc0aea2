"""The fs-consent command line (click): one small command per task over a shared context."""

from __future__ import annotations

import errno
import logging
import sys
from pathlib import Path

import click

from .. import __version__
from ..core import logs
from ..emulator.scenarios import SCENARIO_NAMES
from ..privacy.errors import RecordingRestricted
from ..store import audit_actions
from .ledger import DEFAULT_LOCK_TIMEOUT, MAX_LOCK_TIMEOUT
from .options import legal_claim_option
from .output import render
from .playback import recordings_play
from .types import Duration, format_option


class Context:
    """Loads the configuration once, opens the ledger on demand (``cli/ledger.py``: never creates one)."""

    def __init__(self, config_path: Path | None, data_dir: Path | None, log_level: str | None = None,
                 lock_timeout: float = DEFAULT_LOCK_TIMEOUT):
        self.config_path, self.data_dir = config_path, data_dir
        self.log_level = log_level  # the main group's --log-level: logging set up for any command
        self.lock_timeout = lock_timeout  # seconds a command waits for another process's lock on the ledger
        self._config = None
        self._db_open = False

    def config(self, **overrides):
        from ..core.config import ConfigError, load_config

        if self._config is None or overrides:
            try:
                self._config = load_config(self.config_path, data_dir=self.data_dir, **overrides)
            except ConfigError as exc:
                raise click.ClickException(str(exc)) from None
            if self.log_level:  # now the configured format is known
                logs.setup(self.log_level, self._config.logging.format)
        return self._config

    def ledger(self, *, create: bool = False):
        """The ledger module, bound to the configured database: an existing ledger only (an
        older schema is upgraded, said on stderr), unless ``create`` (``keys init``)."""
        from ..store import ledger
        from .ledger import open_ledger

        if not self._db_open:
            open_ledger(self.config(), lock_timeout=self.lock_timeout, create=create,
                        announce=lambda m: click.echo(m, err=True))
            self._db_open = True
        return ledger

    def check_data_dir(self) -> None:
        """For the commands that create the data dir: one line if it is a file or unreadable."""
        from .ledger import check_data_dir

        check_data_dir(self.config())

    def vault(self):
        from ..secure import keys
        from ..secure.vault import Vault

        storage = self.config().storage
        return Vault(Path(storage.store_dir), keys.load_recipients(Path(storage.keys_dir)), workers=0)


pass_ctx = click.make_pass_decorator(Context)
log = logging.getLogger("fs_consent.cli")  # not __name__: it is __main__ under python -m


class CliGroup(click.Group):
    """The main group: whatever a command did not handle becomes one line, never a traceback.

    A database error about the ledger file (locked, damaged) says so (``cli/ledger.py`` ``explain``);
    anything else names only the exception's type, since its message may hold a personal
    value (a number being looked up); ``--log-level debug`` logs the traceback.
    """

    def invoke(self, click_ctx):
        try:
            return super().invoke(click_ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            if isinstance(exc, OSError) and exc.errno == errno.EPIPE:
                raise  # click's main() handles a closed pipe (`fs-consent calls list | head`)
            raise _one_line(click_ctx.obj, exc) from None


def _one_line(ctx, exc: Exception) -> click.ClickException:
    from .ledger import explain

    config = getattr(ctx, "_config", None)
    message = explain(exc, config, ctx.lock_timeout) if config is not None else None
    log.debug("the command failed: %s", type(exc).__name__, exc_info=exc)
    if message is None:
        reason = f" ({exc.strerror})" if isinstance(exc, OSError) and exc.strerror else ""
        message = f"unexpected {type(exc).__name__}{reason}; run with --log-level debug for details"
    return click.ClickException(message)


def _lock_timeout(_click_ctx, _param, value):
    if value > MAX_LOCK_TIMEOUT:
        raise click.BadParameter(f"at most {MAX_LOCK_TIMEOUT:g} s (1h), got {value:g} s")
    return value


@click.group(cls=CliGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(path_type=Path), envvar="FS_CONSENT_CONFIG",
              help="TOML config file (env FS_CONSENT_CONFIG). Without one, embedded defaults apply.")
@click.option("--data-dir", type=click.Path(path_type=Path, readable=False), envvar="FS_CONSENT_DATA_DIR",
              help="Data directory: database, keys, store, spool (env FS_CONSENT_DATA_DIR). Only serve "
                   "and keys init create it; the other commands refuse one without a ledger.")
@click.option("--log-level", type=click.Choice(logs.LEVELS), default=None,
              help="Log from this level up, one structured line per record on stderr (any command).")
@click.option("--lock-timeout", type=Duration(), default="10s", show_default=True, envvar="FS_CONSENT_LOCK_TIMEOUT",
              callback=_lock_timeout, metavar="DURATION",
              help="How long a command waits while another process holds the SQLite ledger's write lock, "
                   "then gives up (env FS_CONSENT_LOCK_TIMEOUT; e.g. 500ms, 30s; at most 1h).")
@click.version_option(__version__, prog_name="fs-consent")
@click.pass_context
def main(click_ctx, config_path, data_dir, log_level, lock_timeout):
    """fs-consent: ask every caller for recording consent, record only with it,
    delete on withdrawal, encrypt every recording at rest.

    Start with `fs-consent serve`, then `fs-consent simulate` to see calls go through.

    \b
    Exit status: 0 done; 1 failed (one line on stderr says why: also a ledger
    that is damaged or locked by another process, a failed check); 2 a usage
    error, or no ledger where --data-dir (or storage.database) says, or a data
    dir that is not a directory. Nothing is created then.
    """
    click_ctx.obj = Context(config_path, data_dir, log_level, lock_timeout)
    if log_level:
        logs.setup(log_level)  # the config's logging.format applies once it is loaded


# --- serve --------------------------------------------------------------------


@main.command()
@click.option("--listen", metavar="HOST:PORT", help="Address FreeSWITCH connects to (default 127.0.0.1:8040).")
@click.option("--log-level", type=click.Choice(logs.LEVELS), default=None,
              help="Overrides logging.level from the config (and the main --log-level).")
@pass_ctx
def serve(ctx: Context, listen, log_level):
    """Run the ESL server that FreeSWITCH's `socket` application connects to.

    With no config it runs on embedded defaults: SQLite and keys in the data dir,
    keys generated on first start. SIGTERM drains live calls, then stops.
    """
    from ..runtime.server import ConsentServer

    config = ctx.config(**({"listen": listen} if listen else {}))
    ctx.check_data_dir()
    logs.setup(log_level or ctx.log_level or config.logging.level, config.logging.format)
    server = ConsentServer(config, announce=logs.announce)
    try:
        server.start()
    except OSError as exc:
        raise click.ClickException(f"cannot start: {exc.strerror or exc}") from None
    except Exception as exc:  # keys, permissions, database: one clear line
        raise click.ClickException(str(exc)) from None
    server.install_signal_handlers()
    host, port = server.address
    logs.announce(f"fs-consent listening on {host}:{port}", data_dir=str(config.storage.data_dir))
    server.run_until_signalled()


# --- calls and recordings -----------------------------------------------------


def call_row(call) -> dict:
    recording = call.recordings.order_by(call.recordings.model.started_at.desc()).first()
    return {
        "uuid": call.uuid, "node": call.node, "outcome": call.outcome, "decided_by": call.decided_by,
        "withdrawn_by": call.withdrawn_by, "recording_id": recording.id if recording else None,
        "recording_state": recording.state if recording else None,
        "started_at": call.started_at, "ended_at": call.ended_at,
        "duration_seconds": call.duration_seconds, "wait_seconds": call.wait_seconds,
        "consent_mode": call.consent_mode, "language": call.language, "prompt_id": call.prompt_id,
        "prompt_version": call.prompt_version, "hangup_cause": call.hangup_cause,
        "recording_note": call.recording_note, "route": call.route,
    }


def recording_row(rec, vault) -> dict:
    from ..store.ledger import SEALED

    return {
        "id": rec.id, "call_uuid": rec.call.uuid, "node": rec.node, "state": rec.state, "state_reason": rec.state_reason,
        "path": str(vault.path_for(rec.id)) if rec.state == SEALED else None,
        "size": rec.size, "sha256": rec.sha256, "started_at": rec.started_at,
        "sealed_at": rec.sealed_at, "deleted_at": rec.deleted_at,
    }


@main.group("calls")
def calls_group():
    """The call ledger: one row per call with its consent outcome."""


@calls_group.command("list")
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
@click.option("--outcome", type=click.Choice(["granted", "refused", "withdrawn", "abandoned", "error"]))
@click.option("--node", metavar="NAME", help="Only the calls this node took ([server] node).")
@format_option
@pass_ctx
def calls_list(ctx: Context, limit, outcome, node, fmt):
    """List the most recent calls, with the node that took each (no phone numbers are shown)."""
    ledger = ctx.ledger()
    query = ledger.Call.select().order_by(ledger.Call.started_at.desc()).limit(limit)
    if outcome:
        query = query.where(ledger.Call.outcome == outcome)
    if node:
        query = query.where(ledger.Call.node == node)
    click.echo(render([call_row(c) for c in query], fmt))


@calls_group.command("show")
@click.argument("call_uuid")
@format_option
@pass_ctx
def calls_show(ctx: Context, call_uuid, fmt):
    """Show one call: consent history, agent flags, legal holds, restriction, rectified
    fields (names only), whether its personal fields were erased, its route and the staff who
    took it (one entry per bridge, in order: seq, their identifier, the route then, when
    bridged and unbridged; the identifier is opened with the field key). Never the number."""
    from ..privacy import subjects
    from ..store import holds

    ledger = ctx.ledger()
    call = ledger.Call.get_or_none(ledger.Call.uuid == call_uuid)
    if call is None:
        raise click.ClickException(f"no call with uuid {call_uuid}")

    def when(at):
        return f"{at.isoformat(timespec='seconds')}Z"

    row = call_row(call)
    row["history"] = "; ".join(f"{when(e.at)} {e.kind} {e.outcome} by {e.by}"
                                for e in call.consent_events.order_by(ledger.ConsentEvent.at))
    row["flags"] = "; ".join(f"{when(f.at)} {f.kind} by {f.by}" for f in call.flags.order_by(ledger.CallFlag.at))
    row["holds"] = "; ".join(holds.describe(h) for h in holds.active_holds().where(ledger.LegalHold.call == call.id))
    restriction = subjects.active_restriction(call.id)
    row["restricted"] = f"since {when(restriction.placed_at)} (request {restriction.request.ref})" if restriction else ""
    row["details"] = ",".join(sorted(d.field for d in call.details))
    row["personal_erased"] = (f"{when(call.personal_erased_at)} ({call.personal_erased_reason})"
                              if call.personal_erased_at else "")
    row["staff"] = "; ".join(_staff_lines(ctx, call))
    click.echo(render([row], fmt, single=True))


def _staff_lines(ctx: Context, call) -> list[str]:
    """``1 1001 (vergunningen) 09:00:05Z..09:03:10Z``: a bridge each; ``(erased)`` once the
    employee's data was erased, the pseudonym when the field key cannot be read."""
    from ..privacy import staff
    from ..privacy.subjects import protector_for
    from ..secure import keys

    rows = list(call.staff.order_by(call.staff.model.seq))
    if not rows:
        return []
    try:
        protector = protector_for(Path(ctx.config().storage.keys_dir))
    except keys.KeyFileError:
        protector = None
    lines = []
    for row in rows:
        if row.staff_hash == staff.ERASED_HASH:
            who = "(erased)"
        elif protector is None:
            who = f"staff {staff.short(row.staff_hash)} (no field key)"
        else:
            try:
                who = staff.opened(protector, row.staff_sealed) or "(erased)"
            except Exception:  # noqa: BLE001 - one unreadable seal does not hide the call
                who = f"staff {staff.short(row.staff_hash)} (unreadable)"
        until = f"{row.unbridged_at.isoformat(timespec='seconds')}Z" if row.unbridged_at else "..."
        route = f" ({row.route})" if row.route else ""
        lines.append(f"{row.seq} {who}{route} {row.bridged_at.isoformat(timespec='seconds')}Z..{until}")
    return lines


@main.group("recordings")
def recordings_group():
    """Encrypted recordings: list, show, export, play (decrypt, audited)."""


recordings_group.add_command(recordings_play)


@recordings_group.command("list")
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
@click.option("--state", type=click.Choice(["recording", "sealed", "deleted", "discarded", "failed"]))
@click.option("--staff", "staff_id", metavar="ID",
              help="Only the recordings of calls this member of staff took (their extension or "
                   "[recording] staff_variable value; '-' reads it from stdin). Found by its keyed hash.")
@format_option
@pass_ctx
def recordings_list(ctx: Context, limit, state, staff_id, fmt):
    """List recordings, newest first."""
    ledger = ctx.ledger()
    query = ledger.Recording.select().order_by(ledger.Recording.started_at.desc()).limit(limit)
    if state:
        query = query.where(ledger.Recording.state == state)
    if staff_id is not None:
        from ..privacy import staff, subjects
        from ..privacy.errors import SubjectError
        from ..secure import keys
        from .options import stdin_if_dash

        try:
            hashed = staff.staff_hash(subjects.protector_for(Path(ctx.config().storage.keys_dir)),
                                      stdin_if_dash(staff_id))
        except (SubjectError, keys.KeyFileError) as exc:  # one line, never the identifier
            raise click.ClickException(str(exc)) from None
        query = query.where(ledger.Recording.call.in_(
            ledger.CallStaff.select(ledger.CallStaff.call).where(ledger.CallStaff.staff_hash == hashed)))
    vault = ctx.vault()
    click.echo(render([recording_row(r, vault) for r in query], fmt))


def get_recording(ledger, recording_id):
    rec = ledger.Recording.get_or_none(ledger.Recording.id == recording_id)
    if rec is None:
        raise click.ClickException(f"no recording with id {recording_id}")
    return rec


@recordings_group.command("show")
@click.argument("recording_id")
@format_option
@pass_ctx
def recordings_show(ctx: Context, recording_id, fmt):
    """Show one recording."""
    ledger = ctx.ledger()
    click.echo(render([recording_row(get_recording(ledger, recording_id), ctx.vault())], fmt, single=True))


@recordings_group.command("export")
@click.argument("recording_id")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Where to write the decrypted WAV (must not exist); with --case, the export directory.")
@click.option("--identity", type=click.Path(path_type=Path, exists=True),
              help="age identity file (default: keys/identity.txt in the data dir).")
@click.option("--case", "case_ref", metavar="REF",
              help="Police export for this case: a directory with the recording and a signed manifest.")
@click.option("--to-recipient", metavar="AGE_PUBLIC_KEY",
              help="With --case: re-encrypt the recording to the police's age key (never plaintext on disk).")
@click.option("--with-caller-number", is_flag=True, help="With --case: put the caller's number in the manifest.")
@legal_claim_option
@pass_ctx
def recordings_export(ctx: Context, recording_id, out, identity, case_ref, to_recipient, with_caller_number,
                      legal_claim):
    """Decrypt a sealed recording to a WAV file (mode 0600). The export is audited.

    With --case, write a police export instead (see `fs-consent verify-export`). A
    recording of a restricted call (art. 18) is refused unless --legal-claim is given;
    its REASON is recorded in the audit trail.
    """
    from ..privacy import subjects
    from ..secure import keys
    from ..secure.vault import VaultError

    if case_ref is not None or to_recipient is not None or with_caller_number:
        from .retention import police_export

        return police_export(ctx, recording_id, out, identity, case_ref, to_recipient, with_caller_number,
                             legal_claim)
    ledger = ctx.ledger()
    rec = get_recording(ledger, recording_id)
    if rec.state != ledger.SEALED:
        raise click.ClickException(f"recording {recording_id} is {rec.state}, not sealed: nothing to export")
    try:
        restriction = subjects.refuse_if_restricted(rec.call_id, legal_claim=legal_claim)
    except RecordingRestricted as exc:
        raise click.ClickException(str(exc)) from None
    if out.exists():
        raise click.ClickException(f"{out} exists; refusing to overwrite")
    try:
        key = keys.load_identity(Path(ctx.config().storage.keys_dir), identity)
        digest = ctx.vault().decrypt_to(recording_id, key, out)
    except (keys.KeyFileError, VaultError) as exc:
        raise click.ClickException(str(exc)) from None
    ledger.append_audit(ledger.os_user(), audit_actions.RECORDING_EXPORT, "recording", recording_id, sha256=digest,
                        out=str(out.resolve()), legal_claim=legal_claim,
                        restriction=restriction.request.ref if restriction else None)
    click.echo(f"wrote {out} (sha256 {digest})")


# --- withdraw -------------------------------------------------------------------


WITHDRAW_CLAIM_S = 5.0  # how long `withdraw` waits for a node to claim a live call on a PostgreSQL ledger


@main.command()
@click.argument("call_uuid")
@pass_ctx
def withdraw(ctx: Context, call_uuid):
    """Withdraw consent for a call: stop and delete its recording, live or ended.

    Reaches the running server through its control socket (acts within a second on
    a live call); with no server running it deletes an ended call's recording itself.
    With a PostgreSQL ledger (several nodes) it asks every node: the one holding the
    call live withdraws it and says so; an ended call is withdrawn here.
    """
    from ..runtime.control import ControlError, request
    from ..store.holds import RecordingHeld
    from ..store.ledger import os_user

    config = ctx.config()
    socket_path = Path(config.storage.data_dir) / "control.sock"
    try:
        if _cluster_ledger(config):
            reply = withdraw_in_cluster(ctx, call_uuid)
        else:
            try:
                reply = request(socket_path, {"op": "withdraw", "call_uuid": call_uuid, "actor": os_user()})
            except ControlError as exc:
                if "not running" not in str(exc):
                    raise click.ClickException(str(exc)) from None
                reply = withdraw_offline(ctx, call_uuid)
    except RecordingHeld as exc:  # (a running server's refusal comes back through the socket)
        raise click.ClickException(str(exc)) from None
    if not reply.get("ok"):
        raise click.ClickException(reply.get("error", "withdrawal failed"))
    where = "live call" if reply.get("live") else "ended call"
    deleted = reply.get("deleted")
    suffix = f"; deleted recordings: {', '.join(deleted) or 'none'}" if deleted is not None else ""
    if reply.get("node"):
        suffix += f"; by node {reply['node']} (pid {reply.get('pid')})"
    if reply.get("ledger") == "queued":
        suffix += "; the ledger is busy: the withdrawal is written to it as soon as it can take it"
    click.echo(f"withdrawn: {where} {call_uuid}{suffix}")


def _cluster_ledger(config) -> bool:
    from ..runtime.cluster import conninfo

    return conninfo(config.storage.database) is not None


def withdraw_in_cluster(ctx: Context, call_uuid: str) -> dict:
    """A PostgreSQL ledger: a call whose row has not ended is live on some node; ask them all
    (``runtime/cluster.py``). No node claiming it: its node is down (its recovery ends the
    call); nothing is changed. An ended call is withdrawn here, its file in the shared store."""
    from ..runtime import cluster
    from ..store.ledger import os_user

    ledger = ctx.ledger()

    def open_rows() -> int:
        return ledger.Call.select().where((ledger.Call.uuid == call_uuid) & ledger.Call.ended_at.is_null()).count()

    if open_rows():
        try:
            reply = cluster.ask(ctx.config().storage.database,
                                {"op": "withdraw", "call_uuid": call_uuid, "actor": os_user()},
                                timeout=WITHDRAW_CLAIM_S)
        except cluster.BusError as exc:
            raise click.ClickException(f"{exc}; nothing was changed") from None
        if reply is not None:
            return reply
        if open_rows():  # (a call that ended while we asked is withdrawn below, as an ended call)
            raise click.ClickException(
                f"call {call_uuid} has not ended, but no node holds it live (none answered within "
                f"{WITHDRAW_CLAIM_S:g} s): its node is down or cut off from the ledger, and its recovery will "
                "end the call when it starts again. Nothing was changed; run this again then.")
    return withdraw_offline(ctx, call_uuid)


def withdraw_offline(ctx: Context, call_uuid: str) -> dict:
    from ..core import consent
    from ..privacy.withdrawal import withdraw_ended_call

    ledger = ctx.ledger()
    call = ledger.Call.get_or_none(ledger.Call.uuid == call_uuid)
    if call is None:
        return {"ok": False, "error": f"unknown call {call_uuid}"}
    with ledger.database.atomic():
        deleted = withdraw_ended_call(call, by=consent.BY_COMMAND, actor=ledger.os_user(),
                                      spool_dir=Path(ctx.config().storage.spool_dir), vault=ctx.vault())
    return {"ok": True, "live": False, "deleted": deleted}


# --- simulate -------------------------------------------------------------------


@main.command()
@click.option("--calls", "n_calls", type=click.IntRange(1), default=20, show_default=True)
@click.option("--concurrency", type=click.IntRange(1), default=5, show_default=True)
@click.option("--scenario", type=click.Choice(["mix", *SCENARIO_NAMES]),
              default="mix", show_default=True, help="What the emulated callers do.")
@click.option("--server", "server_addr", metavar="HOST:PORT", help="The running server (default: the config's listen).")
@click.option("--time-scale", type=click.FloatRange(0.01), default=1.0, show_default=True,
              help="Multiply every caller delay (talk time, key presses) by this.")
@click.option("--seed", type=click.IntRange(0), default=None,
              help="Seed of the emulator's wire disorder (default: random, printed; "
                   "the same seed replays the same decisions).")
@click.option("--polite", is_flag=True,
              help="No wire disorder: one frame per write, the usual orders.")
@format_option
@pass_ctx
def simulate(ctx: Context, n_calls, concurrency, scenario, server_addr, time_scale, seed, polite, fmt):
    """Drive a running server with emulated FreeSWITCH calls and summarise what happened.

    The emulated FreeSWITCH is as unruly on the wire as a real one: CHANNEL_PARK
    between handshake replies, frames cut anywhere or run together, a caller's
    hang-up that completes the prompt like a timeout before CHANNEL_HANGUP.  Its
    decisions come from --seed (printed when random); --polite turns it off.
    FS_CONSENT_EMULATOR_SEED / FS_CONSENT_EMULATOR_CHAOS=0 do the same when no option is given.
    """
    from ..emulator import WireChaos
    from ..emulator.scenarios import run_simulation
    from ..runtime.server import parse_listen

    if polite and seed is not None:
        raise click.UsageError("--seed and --polite exclude each other")
    chaos = WireChaos.off() if polite else WireChaos(seed=seed) if seed is not None else WireChaos.from_env()
    if chaos.enabled:
        click.echo(f"emulator {chaos.describe()} (--seed {chaos.seed} replays it, --polite turns it off)",
                   err=True)
    config = ctx.config()
    host, port = parse_listen(server_addr or config.server.listen)
    summary = run_simulation(host, port, spool_dir=Path(config.storage.spool_dir), calls=n_calls,
                             concurrency=concurrency, scenario=scenario, time_scale=time_scale,
                             opt_in=config.consent.mode == "opt-in", chaos=chaos)
    click.echo(render(summary.rows(), fmt))
    click.echo(summary.footer(), err=fmt != "table")
    for error in summary.errors[:20]:
        click.echo(f"error: {error}", err=True)
    if summary.errors or sum(summary.mismatches.values()):
        sys.exit(1)


@main.command("config")
@pass_ctx
def config_show(ctx: Context):
    """Show the effective configuration (defaults, file, environment)."""
    for key, value in ctx.config().describe():
        click.echo(f"{key} = {value}")


def accept_data_options_everywhere(group: click.Group) -> None:
    """Let every command take --config/--data-dir after its name too (`fs-consent serve --config F`)."""

    def remember(attr):
        def callback(click_ctx, _param, value):
            if value is not None:
                setattr(click_ctx.find_object(Context), attr, value)

        return callback

    for command in group.commands.values():
        if isinstance(command, click.Group):
            accept_data_options_everywhere(command)
            continue
        command.params += [
            click.Option(["--config", "config_path"], type=click.Path(path_type=Path), expose_value=False,
                         callback=remember("config_path"), help="TOML config file (as before the command)."),
            click.Option(["--data-dir"], type=click.Path(path_type=Path, readable=False), expose_value=False,
                         callback=remember("data_dir"), help="Data directory (as before the command)."),
        ]


from .audit import register as register_audit  # noqa: E402 - audit, report, compliance
from .keys import register as register_keys  # noqa: E402 - keys init, keys signing-key
from .listen import register as register_listen  # noqa: E402 - the listening room and its accounts
from .ops import register as register_ops  # noqa: E402 - check
from .requests import register as register_requests  # noqa: E402 - the subject request register
from .retention import register as register_retention  # noqa: E402 - retention, hold, police export
from .staff import register as register_staff  # noqa: E402 - staff add/remove/list
from .subject import register as register_subject  # noqa: E402 - subject find/erase/restrict/...

register_retention(main)
register_audit(main)
register_ops(main)
register_requests(main)
register_subject(main)
register_staff(main)
register_keys(main)
register_listen(main)
accept_data_options_everywhere(main)
