"""The fs-consent server: accepts FreeSWITCH's outbound connections, one CallSession each.

Start-up order matters: keys and spool are checked, the database is opened, the
seal workers start, plaintext left by a crash is sealed or deleted, and only then
does the listener accept calls. SIGTERM stops accepting, lets live calls end within
the drain period, stops what is still recording, and seals what must be sealed.

Callers never lose a call because of us: a call over the limit is handed back
(``connect`` then ``exit``), and the dialplan's fallback sends it on unrecorded.
A peer outside the allow-list is not FreeSWITCH and is simply closed.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import gevent
import gevent.event
import gevent.pool
from gevent.server import StreamServer

from .. import __version__
from ..core import consent
from ..privacy import objections
from ..privacy.withdrawal import any_recent_recorded_call, recent_recorded_calls, withdraw_ended_call
from ..secure import files, keys, spool
from ..secure.protect import FieldProtector
from ..secure.vault import Vault, VaultError, why
from ..store import audit, audit_actions, facts, holds, ledger, nodes, recordings
from ..store.connection import close_database, open_database
from ..store.ledger import Call, ConsentEvent, Recording
from ..store.writer import JOURNAL_FILE, LedgerUnavailable, LedgerWriter, replay_journal
from . import notify
from .control import ControlServer
from .driver import CallSession

log = logging.getLogger(__name__)

RESTART_HANGUP_CAUSE = "UNKNOWN_FS_CONSENT_RESTART"  # the call was open when fs-consent stopped
SEAL_RETRY_FIRST_S, SEAL_RETRY_MAX_S = 0.5, 30.0  # a store that cannot take a seal: backoff
CONTROL_LEDGER_WAIT_S = 1.0
SPOOL_QUIET_S = 10.0  # unwritten this long: FreeSWITCH has closed it (it writes a running call every 2-4 s)
SPOOL_SWEEP_S = 2.0
GIL_SWITCH_S = 0.001  # a control request answers by then, whatever the ledger is doing
OBJECTION_READ_TIMEOUT_S = 2.0  # no answer by then (a stuck database; a lock does not stop reads): not recorded


def policy_from_config(config) -> consent.Policy:
    c, r, m = config.consent, config.recording, config.menu
    confirmation = c.confirmation_prompts.get(c.language) if c.confirm_withdrawal else None
    return consent.Policy(
        mode=c.mode, refuse_digit=c.refuse_digit, grant_digit=c.grant_digit,
        timeout_ms=int(round(c.timeout * 1000)), tries=c.tries,
        prompt_file=c.prompts[c.language]["file"],
        withdraw_sequence=c.withdraw_sequence, agent_withdraw_key=c.agent_withdraw_key or None,
        aggression_key=c.aggression_key or None,
        confirmation_file=confirmation, menu_app=m.app, menu_arg=m.arg,
        stereo=r.stereo, bridge_only=r.bridge_only, mask_on_hold=r.mask_on_hold,
        callback_withdrawal=c.callback_window > 0, objection_prompt=c.objection_prompt,
    )


@dataclass
class ServerContext:
    """Everything a CallSession needs, built once at start-up (``driver.CallServices``)."""

    config: object
    announce: object = print  # first-start messages (generated keys), shown once
    registry: dict = field(default_factory=dict)  # live calls: instance -> CallSession
    seals: gevent.pool.Group = field(default_factory=gevent.pool.Group)

    def open(self) -> None:
        s = self.config.storage
        self.node: str = self.config.server.node  # on every call and recording this server writes
        Path(s.data_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        self.spool_dir: Path = Path(s.spool_dir)
        for message in keys.ensure_keys(Path(s.keys_dir)):
            self.announce(message)
        identity = Path(s.keys_dir) / keys.IDENTITY_FILE
        if identity.exists():
            files.check_private(identity, error=keys.KeyFileError)  # refuse to run next to a readable private key
        self.protector = FieldProtector(keys.load_field_key(Path(s.keys_dir)))
        recipients = keys.load_recipients(Path(s.keys_dir))
        self.vault_ready = bool(recipients)
        if not self.vault_ready:
            log.error("no valid age recipient in %s: calls go on, nothing is recorded",
                      Path(s.keys_dir) / keys.RECIPIENTS_FILE)
        spool.prepare_spool(self.spool_dir)
        open_database(s.database, announce=self.announce)
        self.vault = Vault(Path(s.store_dir), recipients, workers=s.seal_workers)
        self.vault.start()
        journal = Path(s.data_dir) / JOURNAL_FILE
        replayed, last_seq = replay_journal(journal, self.vault)  # facts a crash left unwritten
        self.writer = LedgerWriter(journal, self.vault, first_seq=last_seq + 1)
        self.writer.start()
        self.policy = policy_from_config(self.config)
        c = self.config.consent
        prompt = c.prompts[c.language]
        self.language, self.prompt_id, self.prompt_version = c.language, prompt["id"], prompt["version"]
        self.callback_window = dt.timedelta(seconds=c.callback_window)

    @property
    def handshake_timeout(self) -> float:
        return self.config.server.handshake_timeout

    now = staticmethod(ledger.utcnow)

    def objection(self, caller_hash: str) -> bool:
        """Whether the number objects: one indexed read in the writer's thread, bounded."""
        return self.writer.read(lambda: objections.objects(caller_hash), OBJECTION_READ_TIMEOUT_S)

    def close(self) -> None:
        self.seals.join(timeout=self.config.server.drain_seconds)
        self.writer.stop()
        self.vault.stop()
        close_database()

    # --- recordings ---------------------------------------------------------------

    def seal_later(self, recording_id: str, withdrawn: set, *, delay: float = 0.0) -> None:
        """Seal in the background; a withdrawal that raced the seal still wins."""
        self.seals.spawn(self._seal, recording_id, withdrawn, delay)

    def _seal(self, recording_id: str, withdrawn: set, delay: float = 0.0) -> None:
        """Seal; while the store cannot take it (full, read-only), retry with backoff, the
        plaintext waiting in the spool. A server stopped meanwhile leaves it to recovery."""
        gevent.sleep(delay)
        path = spool.recording_path(self.spool_dir, recording_id)
        for attempt in itertools.count():
            if recording_id in withdrawn:  # before it was sealed: the driver left its plaintext to this seal
                recordings.remove_files(recording_id, self.vault, self.spool_dir)
                return
            try:
                sealed = self.vault.seal(path, recording_id)
                break
            except VaultError as exc:
                if not path.exists():
                    log.error("recording %s not sealed: its plaintext is gone (%s)", recording_id, why(exc))
                    self.writer.record(facts.RecordingNotSealed(recording_id, ledger.DISCARDED, "no-file"))
                    return
                if attempt == 0:
                    log.error("recording %s not sealed: %s; retrying while its plaintext waits in the spool",
                              recording_id, why(exc))
                gevent.sleep(min(SEAL_RETRY_MAX_S, SEAL_RETRY_FIRST_S * 2 ** attempt))
        if attempt:
            log.warning("recording %s sealed after %d retries", recording_id, attempt)
        if recording_id in withdrawn:
            recordings.remove_files(recording_id, self.vault, None)
            return
        self.writer.record(facts.RecordingSealed(recording_id, sealed.size, sealed.sha256, ledger.utcnow()))

    def recover_spool(self) -> spool.RecoveryReport:
        """Settle what a crash left, by what the ledger and the store say happened.

        Plaintext in the spool is sealed when consent holds, deleted otherwise; a recording
        whose ciphertext is in the store and reads as a whole age file was sealed before
        the crash and is marked so (its plaintext, if still there, is deleted); a
        recording that has no ledger row at all is deleted, and the audit entry says why.

        A spool file FreeSWITCH has not closed (its WAV header does not count the whole file)
        and has written in the last ``SPOOL_QUIET_S`` is left alone: FreeSWITCH goes on
        recording a bridged call whose socket app died (capture s21) until the caller hangs
        up. :meth:`sweep_deferred` settles those once closed or quiet.
        """
        report = self._settle_spool(lambda write: write(), ready=self._settled)
        # recordings the crash left unsettled whose plaintext is gone (not merely still being written):
        # this node's own only (another node's are in its spool, maybe still being recorded)
        for rec in Recording.select().where((Recording.state == ledger.RECORDING) & self._own(Recording.node)):
            if rec.id in report.deferred or self._mark_sealed_if_stored(rec):
                continue
            if consent.recovery_keeps(rec.call.outcome, withdrawn=rec.call.withdrawn_at is not None):
                recordings.not_sealed(rec.id, ledger.FAILED, "lost-in-crash")
            else:
                recordings.record_deleted(rec.id, reason="recovery", outcome=rec.call.outcome)
        self._end_interrupted_calls()
        return report

    def sweep_deferred(self, deferred: list[str]) -> None:
        """Runs beside the calls: settle each deferred spool file once FreeSWITCH stopped writing it."""
        waiting = set(deferred)
        while waiting:
            gevent.sleep(SPOOL_SWEEP_S)
            report = self._settle_spool(lambda write: self.writer.call(write, timeout=None),
                                        ready=lambda path, waiting=waiting: path.name[:-4] in waiting
                                        and self._settled(path))
            waiting -= set(report.sealed) | set(report.deleted)
            waiting &= {path.name[:-4] for path in self.spool_dir.glob("*.wav")}
            if report.sealed or report.deleted:
                log.info("spool: settled %d recordings written after the crash: sealed=%d deleted=%d",
                         len(report.sealed) + len(report.deleted), len(report.sealed), len(report.deleted))

    @staticmethod
    def _settled(path: Path) -> bool:
        """Closed by FreeSWITCH (its header counts the whole file), or unwritten for a while."""
        if spool.wav_closed(path):
            return True
        try:
            return time.time() - path.stat().st_mtime >= SPOOL_QUIET_S
        except FileNotFoundError:
            return False

    def _settle_spool(self, db, *, ready) -> spool.RecoveryReport:
        """Seal or delete the spool's recordings that are ``ready``; ``db(write)`` runs a ledger
        write (directly at start-up, through the writer's thread beside live calls)."""
        now = ledger.utcnow()

        def decide(recording_id: str) -> str:
            def read() -> str:
                rec = Recording.get_or_none(Recording.id == recording_id)
                if rec is not None and self._mark_sealed_if_stored(rec):
                    return "delete"  # sealed before the crash: the plaintext is a leftover
                keep = (rec is not None and rec.state in (ledger.RECORDING, ledger.FAILED)
                        and consent.recovery_keeps(rec.call.outcome, withdrawn=rec.call.withdrawn_at is not None))
                return "seal" if keep else "delete"
            return db(read)

        def seal(path: Path, recording_id: str) -> None:
            sealed = self.vault.seal(path, recording_id)

            db(lambda: recordings.sealed(recording_id, size=sealed.size, sha256=sealed.sha256, recovered=True))

        def deleted(recording_id: str) -> None:
            rec = Recording.get_or_none(Recording.id == recording_id)
            if rec is None:
                ledger.append_audit("server", audit_actions.RECORDING_DELETE, "recording", recording_id,
                                    reason="recovery-no-ledger-row")
            elif rec.state != ledger.SEALED:
                recordings.record_deleted(recording_id, reason="recovery", at=now, outcome=rec.call.outcome)

        report = spool.recover(self.spool_dir, decide, seal, ready=ready)
        for recording_id in report.deleted:
            db(lambda recording_id=recording_id: deleted(recording_id))
        return report

    def _mark_sealed_if_stored(self, rec: Recording) -> bool:
        """The seal finished (fsync, rename) but its ledger write did not: say it is sealed."""
        if rec.state == ledger.SEALED:
            return True
        stored = self.vault.verified_ciphertext(rec.id)
        if stored is None:
            return False
        size, digest = stored
        return recordings.sealed(rec.id, size=size, sha256=digest, recovered=True)

    def _own(self, column):
        """This node's rows; rows without a node are an earlier release's (one node then): ours too."""
        return (column == self.node) | column.is_null()

    def _end_interrupted_calls(self) -> None:
        """Every call of this node the crash left open ends now; one still undecided ends ``error``
        by ``restart`` (it went on unrecorded: FreeSWITCH's fallback, or the caller hung up).
        Another node's open calls are its own business: they may be live."""
        now = ledger.utcnow()
        with ledger.database.atomic():
            for call in Call.select().where(Call.ended_at.is_null() & self._own(Call.node)):
                changes = {"ended_at": now, "hangup_cause": RESTART_HANGUP_CAUSE}
                if call.outcome is None:
                    changes.update(outcome=consent.ERROR, decided_by=consent.BY_RESTART, decided_at=now)
                    ConsentEvent.insert(call=call.id, at=now, kind="decision", outcome=consent.ERROR,
                                        by=consent.BY_RESTART).execute()
                    ledger.append_audit("server", audit_actions.CONSENT_DECISION, "call", call.uuid,
                                        outcome=consent.ERROR, by=consent.BY_RESTART)
                Call.update(**changes).where(Call.id == call.id).execute()

    # --- withdrawal ---------------------------------------------------------------

    def callback_withdrawal(self, caller_hash: str, refusing_call_uuid: str) -> None:
        """A refusal withdraws consent for the same number's recent recorded calls (a live
        call's machine withdraws only a consent that was given)."""
        for session in list(self.registry.values()):
            if session.facts.caller_hash == caller_hash and session.facts.uuid != refusing_call_uuid:
                session.withdraw(consent.BY_CALLBACK)

        live = {session.facts.uuid for session in self.registry.values()}

        def write():
            if not any_recent_recorded_call(caller_hash, self.callback_window, exclude_uuid=refusing_call_uuid):
                return  # the number has no recorded call in the window: nothing to withdraw or audit
            for call in recent_recorded_calls(caller_hash, self.callback_window, exclude_uuid=refusing_call_uuid):
                if call.uuid not in live:
                    withdraw_ended_call(call, by=consent.BY_CALLBACK, actor="server",
                                        spool_dir=self.spool_dir, vault=self.vault)
            # under legal hold: not erased; the privacy officer can see the caller asked
            for call in recent_recorded_calls(caller_hash, self.callback_window, exclude_uuid=refusing_call_uuid,
                                              held=True):
                ledger.append_audit("server", audit_actions.CONSENT_WITHDRAW_REFUSED, "call", call.uuid,
                                    by=consent.BY_CALLBACK, reason="legal-hold",
                                    holds=[h.id for h in holds.holds_on(r.id for r in call.recordings)])

        self.writer.submit(write)

    def handle_control(self, request: dict) -> dict:
        op = request.get("op")
        if op == "status":
            return {"ok": True, "live_calls": len(self.registry)}
        if op != "withdraw":
            return {"ok": False, "error": f"unknown operation {op!r}"}
        call_uuid = str(request.get("call_uuid", ""))
        actor = str(request.get("actor", "unknown"))
        sessions = [s for s in self.registry.values() if s.facts.uuid == call_uuid]
        if sessions:
            # the recording is gone once withdraw() returns; the ledger may be busy: the
            # facts are queued in order and land when it can take them
            outcomes = [session.withdraw(consent.BY_COMMAND) for session in sessions]
            self.writer.submit(lambda: ledger.append_audit(actor, audit_actions.CONSENT_WITHDRAW_REQUEST, "call",
                                                           call_uuid, live=True))
            written = self.writer.flush(timeout=CONTROL_LEDGER_WAIT_S)
            return {"ok": True, "live": True, "outcome": outcomes[-1], "ledger": "written" if written else "queued"}

        def write():
            call = Call.select().where(Call.uuid == call_uuid).order_by(Call.id.desc()).first()
            if call is None:
                return {"ok": False, "error": f"unknown call {call_uuid}"}
            try:
                deleted = withdraw_ended_call(call, by=consent.BY_COMMAND, actor=actor,
                                              spool_dir=self.spool_dir, vault=self.vault)
            except holds.RecordingHeld as exc:
                return {"ok": False, "error": str(exc)}
            return {"ok": True, "live": False, "outcome": consent.WITHDRAWN, "deleted": deleted}

        try:
            return self.writer.call(write, timeout=CONTROL_LEDGER_WAIT_S)
        except LedgerUnavailable:
            return {"ok": False, "error": f"the ledger did not answer within {CONTROL_LEDGER_WAIT_S:g} s "
                    "(locked or unavailable); the withdrawal is queued and will be done when it can"}


def somaxconn() -> int | None:
    """The kernel's cap on a listen backlog (Linux), or None where it cannot be read."""
    try:
        return int(Path("/proc/sys/net/core/somaxconn").read_text())
    except (OSError, ValueError):
        return None


def parse_listen(listen) -> tuple[str, int]:
    if isinstance(listen, tuple):
        return listen
    host, _, port = str(listen).rpartition(":")
    return host.strip("[]"), int(port)


class ConsentServer:
    """The listener, the control socket and the drain on shutdown."""

    def __init__(self, config, *, announce=print):
        self.config = config
        self.ctx = ServerContext(config, announce=announce)
        self._networks = list(config.server.allowed_peers)
        self._stopped = gevent.event.Event()
        self.listener: StreamServer | None = None
        self.control: ControlServer | None = None
        self.checkpointer = None  # audit.Checkpointer: signs the audit trail's head now and then
        self.heartbeat = None  # nodes.Heartbeat: this node's sign of life in the ledger
        self._sweeper = None  # settles spool files a crash left still being written

    @property
    def address(self) -> tuple[str, int]:
        return self.listener.address[:2]

    def start(self) -> None:
        # the database thread holds the GIL while peewee builds its queries: hand it back to the
        # event loop (every caller's prompt) after 1 ms instead of Python's default 5 ms
        sys.setswitchinterval(GIL_SWITCH_S)
        self.ctx.open()
        audit.record_startup(self.config)  # server.start, then configuration and key changes since the last start
        nodes.register(self.ctx.node, version=__version__, signing_key=audit.signing_key_of(self.config))
        report = self.ctx.recover_spool()
        if report.sealed or report.deleted or report.deferred:
            log.info("spool recovery: sealed=%d deleted=%d still being written=%d", len(report.sealed),
                     len(report.deleted), len(report.deferred))
        self.control = ControlServer(Path(self.config.storage.data_dir) / "control.sock", self.ctx.handle_control)
        self.control.start()
        backlog = self.config.server.backlog  # a burst of calls waits in the kernel, never dropped unseen
        if backlog > (cap := somaxconn() or backlog):
            log.warning("server.backlog %d is capped by the kernel to %d (sysctl net.core.somaxconn)", backlog, cap)
        self.listener = StreamServer(parse_listen(self.config.server.listen), self._handle, backlog=backlog,
                                     spawn=gevent.pool.Pool(self.config.server.max_calls + 64))
        self.listener.start()  # binding errors surface here as OSError, not sys.exit
        if report.deferred:
            self._sweeper = gevent.spawn(self.ctx.sweep_deferred, report.deferred)
        self.checkpointer = audit.Checkpointer.from_config(self.ctx.writer, self.config)
        self.checkpointer.start()  # a startup checkpoint signs the start record and what recovery wrote
        self.heartbeat = nodes.Heartbeat(self.ctx.writer, self.ctx.node).start()

    def _allowed(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 on a dual-stack listener
        return any(address in network or (mapped is not None and mapped in network) for network in self._networks)

    def _handle(self, sock, address) -> None:
        if not self._allowed(address[0]):
            log.warning("refused a connection from a peer outside server.allowed_peers")
            sock.close()
            return
        session = CallSession(sock, self.ctx)
        if len(self.ctx.registry) >= self.config.server.max_calls:
            log.error("at max_calls (%d): call handed back to the dialplan unrecorded", self.config.server.max_calls)
            session.hand_back()
            return
        session.run()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT begin the drain; install before telling anyone we are up."""
        gevent.signal_handler(signal.SIGTERM, self._stopped.set)
        gevent.signal_handler(signal.SIGINT, self._stopped.set)

    def run_until_signalled(self) -> None:
        """After start(): tell systemd we are ready, serve until a signal, then drain and stop."""
        host, port = self.address
        notify.ready(f"listening on {host}:{port}")
        interval = notify.watchdog_interval()
        watchdog = gevent.spawn(self._feed_watchdog, interval) if interval else None
        self._stopped.wait()
        notify.stopping(f"draining {len(self.ctx.registry)} live calls")
        if watchdog is not None:
            watchdog.kill()
        self.stop()

    @staticmethod
    def _feed_watchdog(interval: float) -> None:
        """Runs on the hub: a hub stalled for WatchdogSec gets the service restarted."""
        while True:
            notify.watchdog()
            gevent.sleep(interval)

    def request_stop(self) -> None:
        self._stopped.set()

    def stop(self) -> None:
        """Stop accepting; let calls end within the drain period; settle the rest."""
        if self.listener is not None:
            self.listener.close()
        deadline = gevent.Timeout(self.config.server.drain_seconds)
        deadline.start()
        try:
            while self.ctx.registry:
                gevent.sleep(0.05)
        except gevent.Timeout:
            log.warning("drain period over with %d live calls: stopping their recordings", len(self.ctx.registry))
            for session in list(self.ctx.registry.values()):
                session.shutdown()
        finally:
            deadline.close()
        if self._sweeper is not None:
            self._sweeper.kill()  # what it had not settled, the next start's recovery does
        if self.listener is not None:
            self.listener.stop(timeout=1)
        if self.control is not None:
            self.control.stop()
        if self.checkpointer is not None:  # a last checkpoint: the whole trail is signed at shutdown
            self.ctx.seals.join(timeout=self.config.server.drain_seconds)  # (seals append entries too)
            self.checkpointer.stop()
        if self.heartbeat is not None:
            self.heartbeat.stop()
        self.ctx.close()
