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
from ..secure.vault import Vault, VaultError, probe_writable, why
from ..store import audit, audit_actions, facts, holds, ledger, nodes, recordings
from ..store.connection import close_database, open_database, pooled, shutdown_database
from ..store.ledger import Call, ConsentEvent, Recording
from ..store.writer import JOURNAL_FILE, LedgerUnavailable, LedgerWriter, replay_journal
from . import cluster, notify
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
STORE_PROBE_S = 2.0  # how often the store is probed for writing (and how soon a store that came back is used)
STORE_PROBE_TIMEOUT_S = 5.0  # a probe not done by then (a hung NFS mount): the store counts as unwritable
RECOVERY_ASK_S = 1.5  # at start-up, how long other nodes have to say which open calls they hold live
CALLBACK_FOLLOW_UP_S = 2.0  # a callback refusal re-reads calls that were live elsewhere this often...
CALLBACK_FOLLOW_UP_MAX_S = 4 * 3600.0  # ...until they end, for at most this long


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
    bus: cluster.ClusterBus | None = None  # other nodes on the same PostgreSQL ledger (None: SQLite, one node)
    store_problem: str | None = None  # why the store cannot take a recording now (None: it can)
    background: gevent.pool.Group = field(default_factory=gevent.pool.Group)  # the store probe, follow-ups

    def open(self) -> None:
        s = self.config.storage
        self.node: str = self.config.server.node  # on every call and recording this server writes
        self.staff_variable: str = self.config.recording.staff_variable  # who took the call (driver.staff_of)
        self.route_variable: str = self.config.recording.route_variable
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
        open_database(s.database, announce=self.announce, pool_size=s.pool_size)
        self.vault = Vault(Path(s.store_dir), recipients, workers=s.seal_workers)
        self.vault.start()
        self._probe_store()  # before the first call: a store that cannot be written records nothing
        journal = Path(s.data_dir) / JOURNAL_FILE
        replayed, last_seq = replay_journal(journal, self.vault)  # facts a crash left unwritten
        # reader threads: on PostgreSQL pool_size - 1, each read waiting on the network; SQLite answers the
        # call path's reads in microseconds, so one thread, which contends least with the hub for the GIL
        readers = s.pool_size - 1 if pooled() else 1
        self.writer = LedgerWriter(journal, self.vault, first_seq=last_seq + 1, readers=readers)
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
        self.background.kill()
        self.seals.join(timeout=self.config.server.drain_seconds)
        self.writer.stop()
        self.vault.stop()
        shutdown_database()

    # --- the store ----------------------------------------------------------------

    def watch_store(self) -> None:
        """Probe the store now and then beside the calls (``store_problem``)."""
        def watch():
            while True:
                gevent.sleep(STORE_PROBE_S)
                self._probe_store()
        self.background.spawn(watch)

    def _probe_store(self) -> None:
        """Write, fsync and remove a small file in the store, in a native thread (a shared mount
        can hang): a node that cannot write there records nothing new until it can again."""
        store = Path(self.config.storage.store_dir)
        try:
            failed = gevent.get_hub().threadpool.spawn(probe_writable, store).get(timeout=STORE_PROBE_TIMEOUT_S)
        except gevent.Timeout:
            failed = f"no answer within {STORE_PROBE_TIMEOUT_S:g} s"
        except Exception as exc:  # noqa: BLE001 - whatever stops the probe stops new recordings
            failed = exc
        self.store_failed(failed if isinstance(failed, str) else why(failed) if failed is not None else None)

    def store_failed(self, problem: str | None) -> None:
        """Say (once per change) whether new calls may be recorded, and why not."""
        before, self.store_problem = self.store_problem, problem
        store = self.config.storage.store_dir
        if problem and problem != before:
            log.error("store %s cannot be written (%s): new calls go on unrecorded until it can", store, problem)
        elif before and not problem:
            log.warning("store %s can be written again: new calls are recorded", store)

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
                    if why(exc).endswith(" on store"):  # no new recording until the probe finds room again
                        self.store_failed(why(exc))
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
        # a call live on another node is left to it, even one named as ours (two nodes given one
        # name, or a row from before nodes had names): the other nodes are asked
        elsewhere = self._held_elsewhere()
        # recordings the crash left unsettled whose plaintext is gone (not merely still being written):
        # this node's own only (another node's are in its spool, maybe still being recorded)
        for rec in Recording.select().where((Recording.state == ledger.RECORDING) & self._own(Recording.node)):
            if rec.id in report.deferred or rec.call.instance in elsewhere or self._mark_sealed_if_stored(rec):
                continue
            if consent.recovery_keeps(rec.call.outcome, withdrawn=rec.call.withdrawn_at is not None):
                recordings.not_sealed(rec.id, ledger.FAILED, "lost-in-crash")
            else:
                recordings.record_deleted(rec.id, reason="recovery", outcome=rec.call.outcome)
        self._end_interrupted_calls(skip=elsewhere)
        return report

    def _held_elsewhere(self) -> set[str]:
        """The open calls another node holds live (their instances), asked over the bus: a
        shared ledger's open calls are not all this node's, and recovery must leave those
        alone. Nothing to ask with SQLite (one node) or when no call is open."""
        url = self.config.storage.database
        if cluster.conninfo(url) is None or not Call.select().where(Call.ended_at.is_null()).exists():
            return set()
        try:
            answers = gevent.get_hub().threadpool.spawn(cluster.gather, url, {"op": "holding"},
                                                        window=RECOVERY_ASK_S).get()
        except cluster.BusError as exc:
            log.error("recovery: could not ask the other nodes which calls they hold (%s): "
                      "every open call is taken for one this node's crash left", exc)
            return set()
        held = {str(i) for answer in answers for i in answer.get("instances", [])}
        if held:
            log.info("recovery: %d open calls are live on %d other nodes and left to them", len(held),
                     len({(a.get("node"), a.get("pid")) for a in answers}))
        return held

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

    def _end_interrupted_calls(self, skip: set[str] = frozenset()) -> None:
        """Every call of this node the crash left open ends now (but those live on another
        node, ``skip``); one still undecided ends ``error`` by ``restart`` (it went on
        unrecorded: FreeSWITCH's fallback, or the caller hung up). Another node's open calls
        are its own business: they may be live."""
        now = ledger.utcnow()
        with ledger.database.atomic():
            for call in Call.select().where(Call.ended_at.is_null() & self._own(Call.node)):
                if call.instance in skip:
                    continue
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
        """A refusal withdraws consent for the same number's recent recorded calls, wherever
        they were made (a live call's machine withdraws only a consent that was given).

        Live calls here are withdrawn by their drivers; live calls on other nodes by theirs,
        told over the bus; ended calls here, in the ledger. A call that has not ended and is
        not live here is live on another node (or its node is down): it is left to that node,
        and read again until it ends, so that a node that missed the broadcast, or a call that
        ended as it came, is withdrawn all the same once its row says it ended.
        """
        self.withdraw_live_from(caller_hash, refusing_call_uuid)
        if self.bus is not None:
            self.bus.publish({"op": "callback", "caller_hash": caller_hash, "exclude_uuid": refusing_call_uuid})

        live = {session.facts.uuid for session in self.registry.values()}

        def write() -> list[int]:
            elsewhere: list[int] = []
            if not any_recent_recorded_call(caller_hash, self.callback_window, exclude_uuid=refusing_call_uuid):
                return elsewhere  # the number has no recorded call in the window: nothing to withdraw or audit
            for call in recent_recorded_calls(caller_hash, self.callback_window, exclude_uuid=refusing_call_uuid):
                if call.uuid in live:
                    continue
                if call.ended_at is None:  # live on another node: withdrawn there
                    elsewhere.append(call.id)
                    continue
                withdraw_ended_call(call, by=consent.BY_CALLBACK, actor="server",
                                    spool_dir=self.spool_dir, vault=self.vault)
            # under legal hold: not erased; the privacy officer can see the caller asked
            for call in recent_recorded_calls(caller_hash, self.callback_window, exclude_uuid=refusing_call_uuid,
                                              held=True):
                ledger.append_audit("server", audit_actions.CONSENT_WITHDRAW_REFUSED, "call", call.uuid,
                                    by=consent.BY_CALLBACK, reason="legal-hold",
                                    holds=[h.id for h in holds.holds_on(r.id for r in call.recordings)])
            return elsewhere

        def ended_calls() -> None:  # queued now, after the refusing call's facts; the answer awaited beside
            elsewhere = self.writer.call(write, timeout=None)
            if elsewhere:
                self._follow_up_callback(elsewhere)

        self.background.spawn(ended_calls)

    def withdraw_live_from(self, caller_hash: str, refusing_call_uuid: str) -> int:
        """Withdraw this node's live calls from the number, but the refusing one; how many."""
        sessions = [s for s in list(self.registry.values())
                    if s.facts.caller_hash == caller_hash and s.facts.uuid != refusing_call_uuid]
        for session in sessions:
            session.withdraw(consent.BY_CALLBACK)
        return len(sessions)

    def _follow_up_callback(self, call_ids: list[int]) -> None:
        """Calls a callback refusal found live on another node: once each has ended, withdraw
        it as an ended call if it still holds a recording with consent (nothing left to do if
        its node withdrew it live: it is then ``withdrawn``)."""
        waiting, deadline = set(call_ids), time.monotonic() + CALLBACK_FOLLOW_UP_MAX_S

        def settle():
            for call in Call.select().where(Call.id.in_(list(waiting)) & Call.ended_at.is_null(False)):
                waiting.discard(call.id)
                if call.outcome != consent.GRANTED:
                    continue  # withdrawn live by its node, or never recorded with consent
                try:
                    withdraw_ended_call(call, by=consent.BY_CALLBACK, actor="server",
                                        spool_dir=self.spool_dir, vault=self.vault)
                except holds.RecordingHeld:  # held since: kept; the caller's request is in the trail
                    ledger.append_audit("server", audit_actions.CONSENT_WITHDRAW_REFUSED, "call", call.uuid,
                                        by=consent.BY_CALLBACK, reason="legal-hold",
                                        holds=[h.id for h in holds.holds_on(r.id for r in call.recordings)])

        while waiting and time.monotonic() < deadline:
            gevent.sleep(CALLBACK_FOLLOW_UP_S)
            try:
                self.writer.call(settle, timeout=None)
            except Exception as exc:  # noqa: BLE001 - the ledger refused this round: read again next time
                log.warning("callback withdrawal: re-reading calls open elsewhere failed (%s)", type(exc).__name__)
        if waiting:
            log.error("callback withdrawal: %d calls still open on another node after %g h; not withdrawn",
                      len(waiting), CALLBACK_FOLLOW_UP_MAX_S / 3600)

    def handle_cluster(self, message: dict) -> None:
        """A message from another node or a command (``cluster.py``), on the hub."""
        op = message.get("op")
        if op == "callback":
            self.withdraw_live_from(str(message.get("caller_hash", "")), str(message.get("exclude_uuid", "")))
        elif op == "withdraw":
            call_uuid = str(message.get("call_uuid", ""))
            if any(s.facts.uuid == call_uuid for s in self.registry.values()):
                self.bus.reply(message, self._withdraw_live(call_uuid, str(message.get("actor", "unknown"))))
        elif op == "holding":
            instances = list(self.registry)
            for start in range(0, len(instances), cluster.INSTANCES_PER_REPLY):
                self.bus.reply(message, {"instances": instances[start:start + cluster.INSTANCES_PER_REPLY]})

    def _withdraw_live(self, call_uuid: str, actor: str) -> dict:
        """Withdraw this node's live sessions of the call: the recording is gone once this
        returns; the ledger may be busy: the facts are queued in order and land when it can."""
        sessions = [s for s in self.registry.values() if s.facts.uuid == call_uuid]
        outcomes = [session.withdraw(consent.BY_COMMAND) for session in sessions]
        node = {"node": self.node} if self.bus is not None else {}
        self.writer.submit(lambda: ledger.append_audit(actor, audit_actions.CONSENT_WITHDRAW_REQUEST, "call",
                                                       call_uuid, live=True, **node))
        written = self.writer.flush(timeout=CONTROL_LEDGER_WAIT_S)
        return {"ok": True, "live": True, "outcome": outcomes[-1], "ledger": "written" if written else "queued"}

    def handle_control(self, request: dict) -> dict:
        op = request.get("op")
        if op == "status":
            return {"ok": True, "live_calls": len(self.registry)}
        if op != "withdraw":
            return {"ok": False, "error": f"unknown operation {op!r}"}
        call_uuid = str(request.get("call_uuid", ""))
        actor = str(request.get("actor", "unknown"))
        if any(s.facts.uuid == call_uuid for s in self.registry.values()):
            return self._withdraw_live(call_uuid, actor)

        def write():
            call = Call.select().where(Call.uuid == call_uuid).order_by(Call.id.desc()).first()
            if call is None:
                return {"ok": False, "error": f"unknown call {call_uuid}"}
            if call.ended_at is None and self.bus is not None:  # live on another node: the bus reaches it
                return {"ok": False, "error": f"call {call_uuid} is not live on this node ({self.node}); "
                        "fs-consent withdraw asks every node"}
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
        run_started = nodes.register(self.ctx.node, version=__version__, signing_key=audit.signing_key_of(self.config))
        report = self.ctx.recover_spool()
        if report.sealed or report.deleted or report.deferred:
            log.info("spool recovery: sealed=%d deleted=%d still being written=%d", len(report.sealed),
                     len(report.deleted), len(report.deferred))
        # Start-up's reads and writes ran here on the hub: no call is served yet, and recovery must be
        # done before one is. From now on the hub never touches the database (on PostgreSQL a query
        # here would stall every caller's prompt for as long as it waits): its connection goes back
        # to the pool, and the writer's and readers' threads do all the ledger's work.
        close_database()
        self.control = ControlServer(Path(self.config.storage.data_dir) / "control.sock", self.ctx.handle_control)
        self.control.start()
        if cluster.conninfo(self.config.storage.database) is not None:  # other nodes may share this ledger
            self.ctx.bus = cluster.ClusterBus(self.config.storage.database, self.ctx.node, self.ctx.handle_cluster)
            self.ctx.bus.start()
        self.ctx.watch_store()
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
        self.heartbeat = nodes.Heartbeat(self.ctx.writer, self.ctx.node, run_started).start()

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
        if self.ctx.bus is not None:
            self.ctx.bus.stop()
        if self.checkpointer is not None:  # a last checkpoint: the whole trail is signed at shutdown
            self.ctx.seals.join(timeout=self.config.server.drain_seconds)  # (seals append entries too)
            self.checkpointer.stop()
        if self.heartbeat is not None:
            self.heartbeat.stop()
        self.ctx.close()
