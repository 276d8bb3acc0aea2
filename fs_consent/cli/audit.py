"""Commands for auditors and the privacy officer: ``audit verify|export|checkpoint``,
``report`` and ``compliance``.

``register(main)`` adds them to the main click group. Like every command module they take
the shared ``Context`` through ``click.pass_obj``: it is made by the main group in
``cli/__init__.py``, which imports the command modules (never the other way round).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

from ..secure.files import create_private
from ..store import audit, audit_actions
from .types import DateTimeParam, Duration

TIME = DateTimeParam()
since_option = click.option("--since", type=TIME, help="From this time (UTC unless it carries an offset).")
until_option = click.option("--until", type=TIME, help="Up to (not including) this time.")


@contextlib.contextmanager
def progress(total, label: str):
    """A progress bar on stderr when it is a terminal; yields an ``update(n)`` or None.
    ``total`` is a function (counting costs a query, done only for a terminal)."""
    if not sys.stderr.isatty():
        yield None
        return
    with click.progressbar(length=max(total(), 1), label=label, file=sys.stderr) as bar:
        yield bar.update


def _open_out(out: Path | None, newline: str | None = None):
    """``--out FILE`` (created 0600, never overwritten) or stdout."""
    if out is None:
        return contextlib.nullcontext(sys.stdout)
    try:
        fd = create_private(out)
    except FileExistsError:
        raise click.ClickException(f"{out} exists; refusing to overwrite") from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {out}: {exc.strerror}") from None
    return open(fd, "w", encoding="utf-8", newline=newline, buffering=1 << 20)


def _installation_key(keys_dir: Path) -> str | None:
    from ..secure import keys

    try:
        return keys.signing_public_key(keys.load_signing_key(keys_dir))
    except keys.KeyFileError:
        return None


# --- audit ----------------------------------------------------------------------------


@click.group("audit")
def audit_group():
    """The tamper-evident audit trail: verify it, export it, checkpoint it."""


def _server_state(data_dir: Path) -> tuple[str, str]:
    """Whether a server runs on this data dir: ``running``, ``stopped`` or ``unknown``, and why.

    Something listens on the control socket: running. No socket file, or nothing listens on
    it (left by a crash): stopped. Anything else (permission denied): unknown.
    """
    import socket

    path = data_dir / "control.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(3)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        return "stopped", f"nothing listens on {path}"
    except OSError as exc:
        return "unknown", f"cannot tell from {path}: {exc.strerror or exc}"
    finally:
        sock.close()
    return "running", f"the server listens on {path}"


def _other_nodes(this_node: str) -> tuple[dict, dict]:
    """What the ledger's node table says of the other nodes (running by their heartbeat, stopped
    by a clean stop, else unknown), and the node of each signing key."""
    from ..store import nodes

    states = {}
    for node in nodes.all_nodes():
        if node.name != this_node:
            states[node.name] = {"running": "running", "stopped": "stopped"}.get(nodes.state(node), "unknown")
    return states, nodes.names_by_key()


@audit_group.command("verify")
@click.option("--public-key", "public_keys", multiple=True, metavar="ed25519:BASE64",
              help="Trust checkpoints signed by this key too (repeatable). Trusted anyway: this node's "
                   "signing key, when this user can read keys/signing.key, and [audit] trusted_keys "
                   "(the other nodes' keys).")
@click.option("--pin", "pins", multiple=True, metavar="SEQ:HASH",
              help="A head kept outside the system (an earlier export, the log): entry SEQ must have HASH.")
@click.option("--witness", "witnesses", multiple=True, type=click.Path(path_type=Path, dir_okay=False),
              metavar="FILE",
              help="Checkpoint heads kept outside the database (repeatable): the [audit] witness_file, or the "
                   "server's journal lines (journalctl -u fs-consent | grep fs-consent-audit-witness). Every "
                   "witnessed checkpoint must be in the trail with the same hash.")
@click.option("--server-state", type=click.Choice(("auto", "running", "stopped")), default="auto",
              show_default=True,
              help="Whether the server is running. auto: asks the data dir's control socket (a server on "
                   "another host, with a PostgreSQL ledger, is not seen: say running).")
@click.pass_obj
def audit_verify(ctx, public_keys, pins, witnesses, server_state):
    """Check the whole trail: the hash chain from genesis, every checkpoint's signature,
    that each checkpointed head is still in the chain at its seq, and that the trail does
    not stop short of a due checkpoint.

    The server signs a checkpoint at every start, every [audit] checkpoint_every_entries
    entries or checkpoint_every, and at every clean shutdown. So: with the server stopped,
    its last run must end with a shutdown checkpoint (else it crashed, or the trail was
    cut); while it runs, a due checkpoint may be at most checkpoint_grace late; a start
    after a crash must record the unclean stop (it passes, with a note). A cut back to an
    earlier clean shutdown, checkpoints included, shows only against --witness or --pin.

    Names the first bad entry (edited, deleted, inserted, reordered, cut off) and exits 1
    on any fault. Reads in batches: memory stays flat.
    """
    from ..secure import keys

    ctx.ledger()
    config = ctx.config()
    keys_dir = Path(config.storage.keys_dir)
    try:
        trusted = audit.trusted_keys(keys_dir, tuple(public_keys) + config.audit.trusted_keys)
    except keys.KeyFileError as exc:
        raise click.ClickException(f"no key to check checkpoint signatures with ({exc}); pass --public-key") from None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--public-key") from None
    pinned = {}
    for pin in pins:
        seq, _, head = pin.partition(":")
        if not seq.isdigit() or len(head) != 64:
            raise click.BadParameter(f"expected SEQ:HASH (64 hex digits), got {pin!r}", param_hint="--pin")
        pinned[int(seq)] = head.lower()
    heads = []
    for path in witnesses:
        try:
            with open(path, encoding="utf-8", errors="replace") as stream:
                heads += list(audit.read_witness(stream, str(path)))
        except OSError as exc:
            raise click.BadParameter(f"cannot read {path}: {exc.strerror or exc}", param_hint="--witness") from None
        except audit.WitnessError as exc:
            raise click.BadParameter(str(exc), param_hint="--witness") from None
    state, why = (server_state, "as told") if server_state != "auto" else _server_state(Path(config.storage.data_dir))
    node_states, key_names = _other_nodes(config.server.node)
    with progress(audit.count_entries, "verifying the audit trail") as update:
        result = audit.verify_trail(trusted, pins=pinned, progress=update, policy=audit.DuePolicy.from_config(config),
                                    server_state=state, witness=heads if witnesses else None,
                                    node_states=node_states, key_names=key_names)
    click.echo(f"{'OK' if result.ok else 'FAIL'}: {result.summary()}")
    if not result.ok:
        for fault in sorted(result.faults, key=lambda f: f.seq):
            click.echo(f"  {fault}")
        if result.more_faults:
            click.echo(f"  ... and {result.more_faults} more")
    for line in result.details():
        click.echo(f"  {line}")
    click.echo(f"  server state: {state} ({why})")
    if not result.ok:
        sys.exit(1)


@audit_group.command("export")
@since_option
@until_option
@click.option("--format", "fmt", type=click.Choice(audit.EXPORT_FORMATS), default="jsonl", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="Write to this file (created 0600); default stdout.")
@click.pass_obj
def audit_export(ctx, since, until, fmt, out):
    """Export the trail with its chain data and checkpoints, for verification outside
    fs-consent (README: "Audit trail" has the format and the rule). Streams; audited."""
    ledger = ctx.ledger()
    rng = audit.export_range(since, until)
    actor = ledger.os_user()
    header = audit.export_header(rng, since, until, actor, _installation_key(Path(ctx.config().storage.keys_dir)))
    with _open_out(out, newline="" if fmt == "csv" else None) as stream:
        ledger.append_audit(actor, audit_actions.AUDIT_EXPORT, "audit", f"{rng.first}..{rng.last}", format=fmt,
                            first_seq=rng.first, last_seq=rng.last, entries=rng.count,
                            since=header["since"], until=header["until"],
                            out=str(out.resolve()) if out else "stdout")
        with progress(lambda: rng.count, "exporting the audit trail") as update:
            records = audit.write_export(stream, fmt, rng, header, progress=update)
        stream.flush()
    if out is not None:
        click.echo(f"wrote {records} records ({rng.count} entries, seq {rng.first}..{rng.last}) to {out}", err=True)


@audit_group.command("checkpoint")
@click.pass_obj
def audit_checkpoint(ctx):
    """Sign the current head of the trail now (a "manual" checkpoint; the server signs one at
    start, when one is due and at shutdown). Witnessed like the server's ([audit] witness_file)."""
    from ..secure import keys

    ledger = ctx.ledger()
    try:
        key = keys.load_signing_key(Path(ctx.config().storage.keys_dir))
    except keys.KeyFileError as exc:
        raise click.ClickException(str(exc)) from None
    checkpoint = audit.write_checkpoint(key, ledger.os_user(), "manual", ctx.config().server.node)
    if checkpoint is None:
        click.echo("the audit trail is empty: nothing to checkpoint")
        return
    if not audit.publish_checkpoint(checkpoint, ctx.config().audit.witness_file):
        click.echo(f"warning: the witness file {ctx.config().audit.witness_file} was not written", err=True)
    click.echo(f"checkpoint #{checkpoint.id}: entry {checkpoint.seq} has hash {checkpoint.head_hash}; "
               f"signed by {checkpoint.public_key}")


# --- report ------------------------------------------------------------------------------


@click.command("report")
@since_option
@until_option
@click.option("--format", "fmt", type=click.Choice(("table", "json", "csv", "html")), default="table",
              show_default=True, help="html: one self-contained file with charts, for a browser.")
@click.option("--out", type=click.Path(path_type=Path), help="Write to this file (created 0600); default stdout.")
@click.option("--timezone", default="local", show_default=True,
              help="Zone for days and hours: local (the system's), UTC or a name like Europe/Amsterdam.")
@click.pass_obj
def report_command(ctx, since, until, fmt, out, timezone):
    """Calls per day and hour, duration and wait time, consent outcomes, recordings,
    retention compliance (and subject requests once they exist). Audited."""
    from ..reports import report

    try:
        report._zone(timezone)
    except Exception:
        raise click.BadParameter(f"unknown time zone {timezone!r}", param_hint="--timezone") from None
    ledger = ctx.ledger()
    config = ctx.config()
    with progress(lambda: report.count_calls(since, until), "reading calls") as update:
        data = report.build_report(config, since=since, until=until, timezone=timezone, progress=update)
    text = report.render(data, fmt)
    ledger.append_audit(ledger.os_user(), audit_actions.REPORT_GENERATE, "report", fmt, format=fmt,
                        since=data["period"]["since"], until=data["period"]["until"], calls=data["calls"]["total"])
    with _open_out(out) as stream:
        stream.write(text if text.endswith("\n") else text + "\n")
    if out is not None:
        click.echo(f"wrote the {fmt} report to {out}", err=True)


# --- compliance ------------------------------------------------------------------------------


@click.command("compliance")
@click.option("--identity", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="age identity to open recording headers with (default: keys/identity.txt if present).")
@click.option("--retention-grace", type=Duration(), default="0s", show_default=True,
              help="Allowance past a retention term (e.g. the purge timer's period).")
@click.option("--spool-grace", type=Duration(), default="2m", show_default=True,
              help="Allowance for sealing after a call ends.")
@click.pass_obj
def compliance_command(ctx, identity, retention_grace, spool_grace):
    """Check the configuration and the data against the privacy statement.

    One line per check, `OK|FAIL name: detail`; exits 1 if any check fails, so it can
    run from a timer or a monitoring system.
    """
    from ..reports.compliance import Options, run_checks
    from .ledger import LedgerMissing

    config = ctx.config()
    try:
        ctx.ledger()
    except LedgerMissing:
        raise  # a wrong --data-dir is not a compliance result: exit 2, as for every command
    except Exception as exc:
        message = exc.format_message() if isinstance(exc, click.ClickException) else exc
        click.echo(f"FAIL database: cannot open the ledger: {message}")
        sys.exit(1)
    failed = False
    for result in run_checks(config, Options(identity=identity, retention_grace=retention_grace,
                                             spool_grace=spool_grace)):
        click.echo(result.line())
        failed |= not result.ok
    sys.exit(1 if failed else 0)


def register(main: click.Group) -> None:
    """Add the auditor commands to ``main``."""
    main.add_command(audit_group)
    main.add_command(report_command)
    main.add_command(compliance_command)
