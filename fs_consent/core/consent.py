"""The consent rules of the privacy statement, as a pure state machine.

``ConsentCall.handle(event) -> [command, ...]``: no I/O, no clock, no randomness
(recording ids come in with the events that need them). The driver turns ESL
frames into these events and performs the commands; tests feed event sequences.
``TRANSITIONS`` (at the end) says which handler takes each (phase, event type);
``IGNORED`` lists the pairs that change nothing, each with its reason (logged at debug
level when one occurs); any other pair raises ``NotInTable``. ``fs_consent.core.rules.RULES``
maps each clause of the statement to the handler and the test that keep it.

The rules (../shared/seed, DESIGN.md §1):
* before the menu the caller hears the prompt and may press the refuse digit;
* opt-out mode: silence is consent; opt-in mode: only the grant digit is;
* another digit replays the prompt (``tries`` plays in all), then counts as silence;
* refusing never costs the call: every path continues into the menu;
* consent can be withdrawn during the call (caller keys, agent key, command):
  recording stops and every byte of it is deleted, and nothing restarts;
* a refusal withdraws consent for the same number's recent recorded calls (callback);
* a number that objects (art. 21, ``objections.py``) is refused before anything is played:
  nothing is recorded, and the caller either goes straight on to the menu or hears the
  prompt like any caller (``Policy.objection_prompt``); the answer changes nothing, except
  that the refuse digit still withdraws the earlier recordings (the callback rule);
* the agent may flag aggression: the flag is kept, and a recording sealed with consent
  is put under legal hold (the hold itself is ledger business: ``holds.py``); a sealed
  recording's deletion is therefore the ledger's to refuse (``DeleteRecording.sealed``);
* a caller on hold is not recorded: the recording is masked while the call is held;
* after a crash, a recording is sealed only with consent (``recovery_keeps``);
* fail open for the call, fail closed for the recording.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

log = logging.getLogger(__name__)

# --- outcomes -----------------------------------------------------------------

GRANTED = "granted"
REFUSED = "refused"
WITHDRAWN = "withdrawn"
ABANDONED = "abandoned"
ERROR = "error"  # fs-consent could not decide: the call went on unrecorded
OUTCOMES = (GRANTED, REFUSED, WITHDRAWN, ABANDONED, ERROR)

# how a decision or withdrawal came about
BY_KEY = "key"
BY_SILENCE = "silence"
BY_HANGUP = "hangup"
BY_CALLER_KEYS = "caller_keys"
BY_AGENT_KEY = "agent_key"
BY_COMMAND = "command"
BY_CALLBACK = "callback"
BY_FAILURE = "failure"
BY_OBJECTION = "objection"
BY_RESTART = "restart"  # the server stopped (crash) before the call ended: set by start-up recovery

# how the consent prompt ended when it collected no digit (``PromptAnswered.ended``)
PROMPT_TIMED_OUT = "timed-out"  # the whole prompt played, the timeout ran out, the caller still there
PROMPT_CALLER_GONE = "caller-gone"  # the completion says the channel is hanging up
PROMPT_INTERRUPTED = "interrupted"  # neither, or ended before the timeout could have run out
PROMPT_GRACE_TIMER = "prompt-grace"
# a prompt cut short without proof of a timeout: this long for the hang-up that follows it (on
# FreeSWITCH in the same tick, capture s13; the margin is for a loaded event loop on either side,
# which the 1,000-call test showed at 0.5 s); a caller still there then goes on into the menu
PROMPT_GRACE_S = 2.0

PROMPT_VARIABLE = "fs_consent_digit"
PROMPT_INVALID_FILE = "silence_stream://250"  # play_and_get_digits' invalid-input file (after a failed collection)
AGENT_MARKER_VARIABLE = "fs_consent_agent"
AGENT_MARKER_VALUE = "withdraw"
AGENT_FLAG_AGGRESSION = "aggression"  # the marker value of the agent's aggression key, and the flag's kind
DECISION_DEADLINE_TIMER = "decision-deadline"

# what an Execute is for (``Execute.purpose``): the driver routes completions and times the menu by it
ANSWER, BIND, PROMPT, MENU, RECORD = "answer", "bind", "prompt", "menu", "record"


@dataclass(frozen=True)
class Policy:
    """What the consent machine needs from the configuration."""

    mode: str = "opt-out"  # or "opt-in"
    refuse_digit: str = "1"
    grant_digit: str = "2"
    timeout_ms: int = 5000
    tries: int = 2
    prompt_file: str = "phrase:fs-consent-prompt"
    withdraw_sequence: str = "*1"
    agent_withdraw_key: str | None = "2"
    aggression_key: str | None = None  # the agent's key to flag aggression (bound when set)
    confirmation_file: str | None = None
    menu_app: str = "execute_extension"
    menu_arg: str = "menu XML default"
    stereo: bool = True
    bridge_only: bool = True
    mask_on_hold: bool = True
    callback_withdrawal: bool = True
    decision_deadline_s: float = 120.0
    objection_prompt: str = "skip"  # an objecting number: "skip" the prompt, or "play" it all the same

    @property
    def opt_in(self) -> bool:
        return self.mode == "opt-in"

    def prompt_args(self) -> str:
        """play_and_get_digits arguments, in the layout the captures prove works.

        Max tries is 1: FreeSWITCH would replay the prompt on silence too, and
        silence must decide at once; the machine replays on a wrong digit itself.
        """
        t = self.timeout_ms
        return f"1 1 1 {t} # {self.prompt_file} {PROMPT_INVALID_FILE} {PROMPT_VARIABLE} \\d {t}"


# --- events (in) --------------------------------------------------------------


@dataclass(frozen=True)
class CallStarted:
    """The handshake is done. ``can_record`` is False when the call may not be recorded at all
    (``recording_note``). ``objection``: the number objects (art. 21): refused, never recorded;
    None when the ledger could not say: not recorded, and on into the menu without a prompt."""

    can_record: bool = True
    objection: bool | None = False


@dataclass(frozen=True)
class AppCompleted:
    tag: str


@dataclass(frozen=True)
class PromptAnswered:
    """Completion of the consent prompt; ``digit`` is None when nothing was collected.

    Without a digit, ``ended`` says why: only ``PROMPT_TIMED_OUT`` is silence. A caller
    who hung up is ``PROMPT_CALLER_GONE`` even when the completion arrives before the
    hang-up event (they race on a real FreeSWITCH).
    """

    tag: str
    digit: str | None
    ended: str = PROMPT_TIMED_OUT


@dataclass(frozen=True)
class CallerDigit:
    digit: str


@dataclass(frozen=True)
class AgentWithdraw:
    pass


@dataclass(frozen=True)
class AgentFlag:
    """The agent flagged the call (aggression or intimidation): its recording is to be held."""

    kind: str = AGENT_FLAG_AGGRESSION


@dataclass(frozen=True)
class WithdrawRequested:
    by: str = BY_COMMAND


@dataclass(frozen=True)
class RecordStarted:
    recording_id: str


@dataclass(frozen=True)
class RecordStopped:
    recording_id: str
    discarded: bool = False


@dataclass(frozen=True)
class Held:
    pass


@dataclass(frozen=True)
class Unheld:
    pass


@dataclass(frozen=True)
class HungUp:
    cause: str = "NORMAL_CLEARING"


@dataclass(frozen=True)
class Disconnected:
    """The socket is going away (linger notice or closed): no more events will come."""


@dataclass(frozen=True)
class TimerFired:
    name: str


@dataclass(frozen=True)
class Failed:
    """Something in fs-consent failed for this call (a -ERR reply, an exception)."""

    reason: str


# --- commands (out) -----------------------------------------------------------


@dataclass(frozen=True)
class Execute:
    """sendmsg execute; the completion comes back as AppCompleted(tag), or PromptAnswered(tag)
    when ``purpose`` is ``PROMPT`` (the consent question, whose completion carries the answer)."""

    app: str
    arg: str | None
    tag: str
    purpose: str


@dataclass(frozen=True)
class SetVariable:
    name: str
    value: str


@dataclass(frozen=True)
class StartRecording:
    recording_id: str
    tag: str


@dataclass(frozen=True)
class StopRecording:
    recording_id: str


@dataclass(frozen=True)
class MaskRecording:
    recording_id: str
    masked: bool


@dataclass(frozen=True)
class DeleteRecording:
    """Delete every byte of the recording. ``sealed``: it went to the vault, so it may be under
    legal hold: the ledger deletes it, or refuses to and says why, in order after the seal."""

    recording_id: str
    reason: str
    sealed: bool = False


@dataclass(frozen=True)
class SealRecording:
    recording_id: str
    confirmed: bool = True  # False: closed without RECORD_STOP, FreeSWITCH may still be finishing the file


@dataclass(frozen=True)
class RecordingDiscarded:
    """FreeSWITCH wrote no audio (never bridged): there is no file to keep."""

    recording_id: str


@dataclass(frozen=True)
class PlayToCaller:
    file: str


@dataclass(frozen=True)
class Decide:
    outcome: str
    by: str

    @property
    def kind(self) -> str:
        """The ledger's name for it: a withdrawal (also one before consent was given) or a decision."""
        return "withdrawal" if self.outcome == WITHDRAWN else "decision"


@dataclass(frozen=True)
class FlagCall:
    """Record the flag in the ledger; the recording, if one gets sealed, is held then."""

    kind: str
    by: str


@dataclass(frozen=True)
class WithdrawEarlierCalls:
    """Callback withdrawal: delete this number's recent recordings."""


@dataclass(frozen=True)
class StartTimer:
    name: str
    seconds: float


@dataclass(frozen=True)
class CancelTimer:
    name: str


@dataclass(frozen=True)
class Finish:
    outcome: str


# --- the machine --------------------------------------------------------------


class Phase(Enum):
    """Where the call is; each phase has its row of the transition table."""

    NEW = "new"
    ANSWERING = "answering"
    PROMPTING = "prompting"
    GRACE = "grace"  # the prompt ended early with no digit: a moment for the hang-up that usually follows
    LEAVING = "leaving"  # the prompt's completion said the caller is gone: the hang-up event is on its way
    IN_CALL = "in_call"  # sent on into the menu
    ENDED = "ended"  # hung up, the recording may still be closing
    DONE = "done"


class Rec(Enum):
    NONE = "none"
    STARTING = "starting"  # record_session sent, RECORD_START not seen yet
    ACTIVE = "active"
    SEALED = "sealed"  # sent to the vault: from now on it may be under legal hold
    DISCARDED = "discarded"  # FreeSWITCH wrote no audio
    DELETED = "deleted"


class NotInTable(LookupError):
    """An event the transition table does not know in this phase: a programming error."""


@dataclass
class ConsentCall:
    """One call's consent state; ``recording_id`` (a fresh uuid4 hex) comes from the driver.

    One variable per fact: where the call is (``phase``), the recording (``rec``), the
    decision (``outcome`` and ``decided_by``), whether the call may be recorded at all
    (``can_record``), whether the caller is on hold, the prompt plays, the caller's
    recent digits and the agent's flags. What follows from these is a property.
    """

    policy: Policy
    recording_id: str
    phase: Phase = Phase.NEW
    rec: Rec = Rec.NONE
    outcome: str | None = None
    decided_by: str | None = None
    can_record: bool = True
    on_hold: bool = False
    plays: int = 0
    digits: str = ""
    flags: set[str] = field(default_factory=set)
    _answer_tag: str | None = None
    _prompt_tag: str | None = None  # only the latest prompt's completion counts
    _seq: int = 0

    # public ----------------------------------------------------------------

    @property
    def consent_holds(self) -> bool:
        return self.outcome == GRANTED

    @property
    def objection(self) -> bool:
        """The number objects (art. 21): refused before a word was played, whatever follows."""
        return self.decided_by == BY_OBJECTION

    @property
    def hung_up(self) -> bool:
        return self.phase in (Phase.ENDED, Phase.DONE)

    @property
    def in_menu(self) -> bool:
        return self.phase is Phase.IN_CALL

    @property
    def recording_open(self) -> bool:
        """FreeSWITCH may be writing the file (started, or asked to start)."""
        return self.rec in (Rec.STARTING, Rec.ACTIVE)

    def handle(self, event) -> list:
        """One event in, the commands it calls for out: the transition table decides."""
        key = (self.phase, type(event))
        handler = TRANSITIONS.get(key)
        if handler is None:
            if key not in IGNORED:
                raise NotInTable(f"{type(event).__name__} in phase {self.phase.name} is not in the transition table")
            return self._ignore(event, IGNORED[key])
        return handler(self, event) + self._maybe_finish()

    # helpers ---------------------------------------------------------------

    def _ignore(self, event, why: str) -> list:
        log.debug("consent: %s ignored in phase %s: %s", type(event).__name__, self.phase.name, why)
        return []

    def _execute(self, app: str, arg: str | None, purpose: str) -> Execute:
        self._seq += 1
        return Execute(app, arg, f"{purpose}-{self._seq}", purpose)

    def _prompt(self) -> list:
        self.phase = Phase.PROMPTING
        self.plays += 1
        command = self._execute("play_and_get_digits", self.policy.prompt_args(), PROMPT)
        self._prompt_tag = command.tag
        return [command]

    def _decide(self, outcome: str, by: str) -> list:
        """The one path by which a decision (or a withdrawal) is taken and announced."""
        self.outcome, self.decided_by = outcome, by
        out = [Decide(outcome, by)]
        if self.phase not in (Phase.LEAVING, Phase.ENDED, Phase.DONE):  # the channel is still there
            out.append(SetVariable("fs_consent", outcome))
        return out

    def _continue(self) -> list:
        """Send the caller on into the menu (exactly once, unless they are gone); the deadline
        that would otherwise do it is cancelled."""
        if self.phase in (Phase.IN_CALL, Phase.ENDED, Phase.DONE):
            return []
        self.phase = Phase.IN_CALL
        return [CancelTimer(DECISION_DEADLINE_TIMER),
                self._execute(self.policy.menu_app, self.policy.menu_arg, MENU)]

    def _grant(self, by: str) -> list:
        out = self._decide(GRANTED, by)
        if self.can_record:
            p = self.policy
            self._seq += 1
            out += [
                SetVariable("RECORD_STEREO", "true" if p.stereo else "false"),
                SetVariable("RECORD_BRIDGE_REQ", "true" if p.bridge_only else "false"),
                StartRecording(self.recording_id, f"{RECORD}-{self._seq}"),
            ]
            self.rec = Rec.STARTING
        return out + self._continue()

    def _refuse(self, by: str) -> list:
        out = self._decide(REFUSED, by)
        if self.policy.callback_withdrawal and by == BY_KEY:
            out.append(WithdrawEarlierCalls())
        return out + self._continue()

    def _abandon(self) -> list:
        """The caller is gone before deciding: abandoned, nothing recorded."""
        return self._decide(ABANDONED, BY_HANGUP) if self.outcome is None else []

    def _erase_recording(self, reason: str) -> list:
        """Stop and delete whatever was recorded; safe to call in any recording state.

        A sealed recording may be under legal hold by now (the agent's aggression flag holds
        it as it is sealed; the privacy officer may hold it): its deletion says so, and the
        ledger, which holds the holds, refuses it in order after the seal.
        """
        if self.recording_open:
            out = [StopRecording(self.recording_id), DeleteRecording(self.recording_id, reason)]
        elif self.rec is Rec.SEALED:
            out = [DeleteRecording(self.recording_id, reason, sealed=True)]
        else:
            return []
        self.rec = Rec.DELETED
        return out

    def _withdraw(self, ev, by: str) -> list:
        """Consent withdrawn (or refused before it was given): recording stopped and deleted,
        nothing restarts, the call goes on."""
        if self.outcome not in (None, GRANTED):
            return self._ignore(ev, f"nothing to withdraw: the call is {self.outcome}")
        out = self._erase_recording("withdrawn") + self._decide(WITHDRAWN, by)
        if self.policy.confirmation_file and self.phase is Phase.IN_CALL:
            out.append(PlayToCaller(self.policy.confirmation_file))
        return out + self._continue()

    def _recording_closed(self, ev, discarded: bool, confirmed: bool = True) -> list:
        if self.rec is Rec.DELETED:
            return [DeleteRecording(self.recording_id, "withdrawn")]  # a late write: delete again
        if not self.recording_open:
            return self._ignore(ev, f"the recording is {self.rec.value}")
        if discarded:
            self.rec = Rec.DISCARDED
            return [RecordingDiscarded(self.recording_id)]
        if self.consent_holds:
            self.rec = Rec.SEALED
            return [SealRecording(self.recording_id, confirmed)]
        self.rec = Rec.DELETED
        return [DeleteRecording(self.recording_id, "no-consent")]

    def _mask(self) -> list:
        """No caller on hold is recorded (the Dutch regulator): masked while held, whichever
        came first, the hold or the recording's start."""
        if self.rec is Rec.ACTIVE and self.policy.mask_on_hold:
            return [MaskRecording(self.recording_id, self.on_hold)]
        return []

    def _maybe_finish(self) -> list:
        if self.phase is not Phase.ENDED or self.recording_open:
            return []  # FreeSWITCH closes the file first, then RECORD_STOP / Disconnected arrives
        self.phase = Phase.DONE
        return [CancelTimer(DECISION_DEADLINE_TIMER), Finish(self.outcome or ABANDONED)]

    def _replays(self, digit: str | None) -> bool:
        """A digit that means nothing replays the prompt while tries are left."""
        p = self.policy
        meaningful = digit == p.refuse_digit or (p.opt_in and digit == p.grant_digit)
        return digit is not None and not meaningful and self.plays < p.tries

    # event handlers: the values of TRANSITIONS ------------------------------

    def _start(self, ev: CallStarted) -> list:
        self.can_record = ev.can_record and ev.objection is False
        self.phase = Phase.ANSWERING
        out = [StartTimer(DECISION_DEADLINE_TIMER, self.policy.decision_deadline_s)]
        answer = self._execute("answer", None, ANSWER)
        self._answer_tag = answer.tag
        if ev.objection is None:
            # the ledger could not say whether the number objects: fail closed for the recording,
            # open for the call (straight on into the menu, no prompt)
            return out + [answer] + self._decide(ERROR, BY_FAILURE) + self._continue()
        if ev.objection:
            # decided before a word is played; the deadline timer stays, so a caller whose
            # answer or prompt never completes is still sent on into the menu
            out += self._decide(REFUSED, BY_OBJECTION)
        return out + [answer]

    def _answered(self, ev: AppCompleted) -> list:
        if ev.tag != self._answer_tag:
            return self._ignore(ev, "not the answer's completion")
        out = []
        for key, marker in ((self.policy.agent_withdraw_key, AGENT_MARKER_VALUE),
                            (self.policy.aggression_key, AGENT_FLAG_AGGRESSION)):
            if key:
                out.append(self._execute("bind_meta_app", f"{key} b a set::{AGENT_MARKER_VARIABLE}={marker}", BIND))
        if self.objection and self.policy.objection_prompt == "skip":
            return out + self._continue()
        return out + self._prompt()

    def _answer(self, ev: PromptAnswered) -> list:
        if ev.tag != self._prompt_tag:
            return self._ignore(ev, "the completion of a prompt played before the latest")
        p, digit = self.policy, ev.digit
        if digit is None and ev.ended == PROMPT_CALLER_GONE:
            self.phase = Phase.LEAVING  # the hang-up event follows (or the socket closes)
            return self._abandon()
        if digit is None and ev.ended == PROMPT_INTERRUPTED:
            # not silence; a hang-up usually follows in the same instant (capture s13): give it
            # a moment to say so, then fail closed for the recording and open for the call
            self.phase = Phase.GRACE
            return [StartTimer(PROMPT_GRACE_TIMER, PROMPT_GRACE_S)]
        if self._replays(digit):
            return self._prompt()
        if self.objection:
            # the refusal by objection stands whatever the answer; but the refuse digit is the
            # statement's "call again and press 1": it still withdraws the earlier recordings
            callback = digit == p.refuse_digit and p.callback_withdrawal
            return ([WithdrawEarlierCalls()] if callback else []) + self._continue()
        if digit == p.refuse_digit:
            return self._refuse(BY_KEY)
        if p.opt_in and digit == p.grant_digit:
            return self._grant(BY_KEY)
        # silence, or wrong digits until the tries ran out
        return self._refuse(BY_SILENCE) if p.opt_in else self._grant(BY_SILENCE)

    def _caller_digit(self, ev: CallerDigit) -> list:
        seq = self.policy.withdraw_sequence
        self.digits = (self.digits + ev.digit)[-len(seq):]
        if self.digits == seq:
            self.digits = ""
            return self._withdraw(ev, BY_CALLER_KEYS)
        return []

    def _agent_withdraw(self, ev: AgentWithdraw) -> list:
        return self._withdraw(ev, BY_AGENT_KEY)

    def _withdraw_requested(self, ev: WithdrawRequested) -> list:
        if ev.by == BY_CALLBACK and not self.consent_holds:
            return self._ignore(ev, "a callback withdraws only a consent that was given")
        return self._withdraw(ev, ev.by)

    def _flag(self, ev: AgentFlag) -> list:
        """Recorded whatever the consent state: a refused or withdrawn call has no recording
        to hold, but the flag stays in the ledger. It changes nothing about consent: a
        withdrawal still deletes (the hold is placed only on what gets sealed)."""
        if ev.kind in self.flags:
            return self._ignore(ev, "flagged already")
        self.flags.add(ev.kind)
        return [FlagCall(ev.kind, BY_AGENT_KEY)]

    def _record_started(self, ev: RecordStarted) -> list:
        if ev.recording_id != self.recording_id:
            return self._ignore(ev, "another recording's")
        if self.rec is Rec.STARTING:
            self.rec = Rec.ACTIVE
            return self._mask() if self.on_hold else []
        if self.rec is Rec.DELETED:
            # the start raced a withdrawal: stop it and delete again
            return [StopRecording(self.recording_id), DeleteRecording(self.recording_id, "withdrawn")]
        return self._ignore(ev, f"the recording is {self.rec.value}")

    def _record_stopped(self, ev: RecordStopped) -> list:
        if ev.recording_id != self.recording_id:
            return self._ignore(ev, "another recording's")
        return self._recording_closed(ev, ev.discarded)

    def _held(self, ev: Held) -> list:
        self.on_hold = True
        return self._mask()

    def _unheld(self, ev: Unheld) -> list:
        self.on_hold = False
        return self._mask()

    def _hung_up(self, ev: HungUp) -> list:
        self.phase = Phase.ENDED
        return self._abandon()

    def _disconnected(self, ev: Disconnected) -> list:
        out = self._hung_up(HungUp("DISCONNECTED")) if self.phase is not Phase.ENDED else []
        if self.recording_open:
            # no RECORD_STOP will come (no linger, or the socket broke): FreeSWITCH closes
            # the file as the channel goes, which may be just after the socket closed
            out += self._recording_closed(ev, discarded=False, confirmed=False)
        return out

    def _timer(self, ev: TimerFired) -> list:
        if ev.name == PROMPT_GRACE_TIMER:
            if self.phase is Phase.GRACE:
                return self._fail(Failed("prompt-interrupted"))
            return self._ignore(ev, "the prompt cut short was followed by its hang-up or a decision")
        if ev.name != DECISION_DEADLINE_TIMER:
            raise NotInTable(f"no timer {ev.name!r}")
        if self.outcome is None:
            return self._decide(ERROR, BY_FAILURE) + self._continue()
        # decided but never sent on (an objection whose answer or prompt never completed, a
        # completion that said the caller was gone with no hang-up after it): fail open
        return self._continue()

    def _fail(self, ev: Failed) -> list:
        """Fail closed for the recording, open for the call."""
        out = self._erase_recording("error")
        if self.outcome is None or (self.outcome == GRANTED and out):
            out += self._decide(ERROR, BY_FAILURE)
        return out + self._continue()


# --- the transition table -----------------------------------------------------
#
# Every (phase, event type) pair is either handled (TRANSITIONS) or deliberately ignored
# (IGNORED, with the reason, logged when it happens); ConsentCall.handle raises NotInTable
# for anything else. tests/core/test_consent.py checks the two cover every pair exactly once.

EVENTS = (CallStarted, AppCompleted, PromptAnswered, CallerDigit, AgentWithdraw, AgentFlag, WithdrawRequested,
          RecordStarted, RecordStopped, Held, Unheld, HungUp, Disconnected, TimerFired, Failed)
COMMANDS = (Execute, SetVariable, StartRecording, StopRecording, MaskRecording, DeleteRecording, SealRecording,
            RecordingDiscarded, PlayToCaller, Decide, FlagCall, WithdrawEarlierCalls, StartTimer, CancelTimer, Finish)

_P = Phase
ALIVE = (_P.ANSWERING, _P.PROMPTING, _P.GRACE, _P.LEAVING, _P.IN_CALL)  # the channel is there
STARTED = (*ALIVE, _P.ENDED)  # the call started and has not finished
WAITING = (_P.ANSWERING, _P.PROMPTING, _P.GRACE, _P.LEAVING)  # not yet in the menu

_HANDLED = (
    # event            in phases             handler
    (CallStarted,      (_P.NEW,),            ConsentCall._start),
    (AppCompleted,     (_P.ANSWERING,),      ConsentCall._answered),
    (PromptAnswered,   (_P.PROMPTING,),      ConsentCall._answer),
    (CallerDigit,      (_P.IN_CALL,),        ConsentCall._caller_digit),
    (AgentWithdraw,    STARTED,              ConsentCall._agent_withdraw),
    (WithdrawRequested, STARTED,             ConsentCall._withdraw_requested),
    (AgentFlag,        STARTED,              ConsentCall._flag),
    (RecordStarted,    (_P.IN_CALL, _P.ENDED), ConsentCall._record_started),
    (RecordStopped,    (_P.IN_CALL, _P.ENDED), ConsentCall._record_stopped),
    (Held,             ALIVE,                ConsentCall._held),
    (Unheld,           ALIVE,                ConsentCall._unheld),
    (HungUp,           ALIVE,                ConsentCall._hung_up),
    (Disconnected,     STARTED,              ConsentCall._disconnected),
    (TimerFired,       WAITING,              ConsentCall._timer),
    (Failed,           STARTED,              ConsentCall._fail),
)

_IGNORED = (
    # events                 in phases              why
    (tuple(e for e in EVENTS if e is not CallStarted), (_P.NEW,),             "the call has not started"),
    (EVENTS,                 (_P.DONE,),            "the call is over"),
    ((CallStarted,),         STARTED,               "the call started already"),
    ((AppCompleted,),        (*ALIVE[1:], _P.ENDED),
     "a completion that decides nothing (bind_meta_app, record_session, the menu, a late answer)"),
    ((PromptAnswered,),      (_P.ANSWERING, _P.GRACE, _P.LEAVING, _P.IN_CALL, _P.ENDED),
     "no prompt is waiting for its answer (it was answered, replaced, or the caller is gone)"),
    ((CallerDigit,),         (*WAITING, _P.ENDED),
     "digits before the menu belong to play_and_get_digits; none count after the hang-up"),
    ((RecordStarted, RecordStopped), WAITING,       "nothing is recorded before the caller is sent on"),
    ((Held, Unheld),         (_P.ENDED,),           "the channel is gone"),
    ((HungUp,),              (_P.ENDED,),           "hung up already"),
    ((TimerFired,),          (_P.IN_CALL, _P.ENDED),
     "in the menu or hung up: the deadline's work is done and no prompt is waiting"),
)


def _table(rows) -> dict:
    table = {}
    for events, phases, value in rows:
        for event in events if isinstance(events, tuple) else (events,):
            for phase in phases:
                if (phase, event) in table:
                    raise NotInTable(f"{event.__name__} in {phase.name} is in the table twice")
                table[(phase, event)] = value
    return table


TRANSITIONS: dict[tuple[Phase, type], Callable[[ConsentCall, object], list]] = _table(_HANDLED)
IGNORED: dict[tuple[Phase, type], str] = _table(_IGNORED)


# --- rules the server applies outside a call ------------------------------------


def recording_note(*, objection: bool | None, can_seal: bool, ledger_healthy: bool,
                   store_writable: bool = True) -> str | None:
    """Why a call may not be recorded whatever the caller says (None: it may be).

    Fail closed for the recording: unknown whether the number objects, no recipient to
    seal to, a store that cannot be written (full, read-only, unreachable), or a ledger
    that cannot take the consent facts now.
    """
    if objection is None:
        return "objection-unknown"
    if not can_seal:
        return "no-recipient"
    if not store_writable:
        return "store-unwritable"
    if not ledger_healthy:
        return "ledger-unavailable"
    return None


def recovery_keeps(outcome: str | None, withdrawn: bool) -> bool:
    """Start-up recovery: a recording a crash left unsettled is sealed only when its call's
    consent was granted and never withdrawn; anything else is deleted.

    A pure function rather than a transition: it runs over the ledger's rows after the
    machine that recorded them is gone, so there are no events to feed it.
    """
    return outcome == GRANTED and not withdrawn
