"""The consent rules of the privacy statement, as a pure state machine.

``ConsentCall.handle(event) -> [command, ...]``: no I/O, no clock, no randomness
(recording ids come in with the events that need them). The driver turns ESL
frames into these events and performs the commands; tests feed event sequences.

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
  is put under legal hold (the hold itself is ledger business: ``holds.py``);
* fail open for the call, fail closed for the recording.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

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
PROMPT_GRACE_S = 0.5  # a prompt cut short: this long for the hang-up that usually follows at once

PROMPT_VARIABLE = "fs_consent_digit"
PROMPT_INVALID_FILE = "silence_stream://250"  # play_and_get_digits' invalid-input file (after a failed collection)
AGENT_MARKER_VARIABLE = "fs_consent_agent"
AGENT_MARKER_VALUE = "withdraw"
AGENT_FLAG_AGGRESSION = "aggression"  # the marker value of the agent's aggression key, and the flag's kind
DECISION_DEADLINE_TIMER = "decision-deadline"


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
    """The handshake is done. ``can_record`` is False when there is no valid recipient."""

    can_record: bool = True
    objection: bool = False  # the number objects to recording (art. 21): refused, never recorded


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
    when ``prompt`` (the consent question, whose completion carries the caller's answer)."""

    app: str
    arg: str | None
    tag: str
    prompt: bool = False


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
    recording_id: str
    reason: str


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
    NEW = "new"
    ANSWERING = "answering"
    PROMPTING = "prompting"
    IN_CALL = "in_call"  # decided, call continues in the menu
    ENDED = "ended"  # hung up, recording may still be closing
    DONE = "done"


class Rec(Enum):
    NONE = "none"
    STARTING = "starting"  # record_session sent, RECORD_START not seen yet
    ACTIVE = "active"
    CLOSED = "closed"  # sealed or discarded
    DELETED = "deleted"


@dataclass
class ConsentCall:
    """One call's consent state; ``recording_id`` (a fresh uuid4 hex) comes from the driver."""

    policy: Policy
    recording_id: str
    phase: Phase = Phase.NEW
    rec: Rec = Rec.NONE
    outcome: str | None = None
    decided_by: str | None = None
    withdrawn: bool = False
    can_record: bool = True
    objection: bool = False
    plays: int = 0
    digits: str = ""
    menu_started: bool = False
    hung_up: bool = False
    flags: set[str] = field(default_factory=set)
    _tags: dict[str, str] = field(default_factory=dict)
    _prompt_tag: str | None = None  # only the latest prompt's completion counts
    _prompt_cut_short: bool = False  # the prompt ended early with no digit: waiting for a hang-up
    _seq: int = 0

    # public ----------------------------------------------------------------

    @property
    def consent_holds(self) -> bool:
        return self.outcome == GRANTED and not self.withdrawn

    def handle(self, event) -> list:
        if self.phase is Phase.DONE:
            return []
        handler = getattr(self, "_on_" + type(event).__name__, None)
        if handler is None:
            raise TypeError(f"not a consent event: {type(event).__name__}")
        out = handler(event)
        return out + self._maybe_finish()

    # helpers ---------------------------------------------------------------

    def _tag(self, purpose: str) -> str:
        self._seq += 1
        tag = f"{purpose}-{self._seq}"
        self._tags[tag] = purpose
        return tag

    def _is(self, tag: str, purpose: str) -> bool:
        return self._tags.get(tag) == purpose

    def _prompt(self) -> list:
        self.plays += 1
        self._prompt_tag = self._tag("prompt")
        return [Execute("play_and_get_digits", self.policy.prompt_args(), self._prompt_tag, prompt=True)]

    def _decide(self, outcome: str, by: str) -> list:
        self.outcome, self.decided_by = outcome, by
        return [Decide(outcome, by), CancelTimer(DECISION_DEADLINE_TIMER), SetVariable("fs_consent", outcome)]

    def _continue(self) -> list:
        """Send the caller on into the menu (exactly once, whatever happened)."""
        if self.menu_started or self.hung_up:
            return []
        self.menu_started = True
        self.phase = Phase.IN_CALL
        return [Execute(self.policy.menu_app, self.policy.menu_arg, self._tag("menu"))]

    def _grant(self, by: str) -> list:
        out = self._decide(GRANTED, by)
        if self.can_record:
            p = self.policy
            out += [
                SetVariable("RECORD_STEREO", "true" if p.stereo else "false"),
                SetVariable("RECORD_BRIDGE_REQ", "true" if p.bridge_only else "false"),
                StartRecording(self.recording_id, self._tag("record")),
            ]
            self.rec = Rec.STARTING
        return out + self._continue()

    def _refuse(self, by: str) -> list:
        out = self._decide(REFUSED, by)
        if self.policy.callback_withdrawal and by == BY_KEY:
            out.append(WithdrawEarlierCalls())
        return out + self._continue()

    def _erase_recording(self, reason: str) -> list:
        """Stop and delete whatever was recorded; safe to call in any recording state."""
        if self.rec in (Rec.STARTING, Rec.ACTIVE):
            out = [StopRecording(self.recording_id), DeleteRecording(self.recording_id, reason)]
        elif self.rec is Rec.CLOSED:
            out = [DeleteRecording(self.recording_id, reason)]
        else:
            return []
        self.rec = Rec.DELETED
        return out

    def _withdraw(self, by: str) -> list:
        if self.withdrawn or self.outcome in (REFUSED, ABANDONED, ERROR):
            return []
        self.withdrawn = True
        out = self._erase_recording("withdrawn")
        out += [Decide(WITHDRAWN, by), CancelTimer(DECISION_DEADLINE_TIMER)]
        self.outcome, self.decided_by = WITHDRAWN, by
        if not self.hung_up:
            out.append(SetVariable("fs_consent", WITHDRAWN))
            if self.policy.confirmation_file and self.menu_started:
                out.append(PlayToCaller(self.policy.confirmation_file))
            out += self._continue()
        return out

    def _maybe_finish(self) -> list:
        if self.phase is not Phase.ENDED:
            return []
        if self.rec in (Rec.STARTING, Rec.ACTIVE):
            return []  # FreeSWITCH closes the file first, then RECORD_STOP / Disconnected arrives
        self.phase = Phase.DONE
        return [CancelTimer(DECISION_DEADLINE_TIMER), Finish(self.outcome or ABANDONED)]

    # event handlers --------------------------------------------------------

    def _on_CallStarted(self, ev: CallStarted) -> list:
        if self.phase is not Phase.NEW:
            return []
        self.can_record = ev.can_record and not ev.objection
        self.phase = Phase.ANSWERING
        out = [StartTimer(DECISION_DEADLINE_TIMER, self.policy.decision_deadline_s)]
        if ev.objection:
            # decided before a word is played; the deadline timer stays, so a caller whose
            # answer or prompt never completes is still sent on into the menu
            self.objection = True
            self.outcome, self.decided_by = REFUSED, BY_OBJECTION
            out += [Decide(REFUSED, BY_OBJECTION), SetVariable("fs_consent", REFUSED)]
        return out + [Execute("answer", None, self._tag("answer"))]

    def _on_AppCompleted(self, ev: AppCompleted) -> list:
        if self._is(ev.tag, "answer") and self.phase is Phase.ANSWERING:
            self.phase = Phase.PROMPTING
            out = []
            if self.policy.agent_withdraw_key:
                arg = f"{self.policy.agent_withdraw_key} b a set::{AGENT_MARKER_VARIABLE}={AGENT_MARKER_VALUE}"
                out.append(Execute("bind_meta_app", arg, self._tag("bind")))
            if self.policy.aggression_key:
                arg = f"{self.policy.aggression_key} b a set::{AGENT_MARKER_VARIABLE}={AGENT_FLAG_AGGRESSION}"
                out.append(Execute("bind_meta_app", arg, self._tag("bind")))
            if self.objection and self.policy.objection_prompt == "skip":
                return out + self._continue_objecting()
            return out + self._prompt()
        return []

    def _continue_objecting(self) -> list:
        return [CancelTimer(DECISION_DEADLINE_TIMER)] + self._continue()

    def _replays(self, digit: str | None) -> bool:
        """A digit that means nothing replays the prompt while tries are left."""
        p = self.policy
        meaningful = digit == p.refuse_digit or (p.opt_in and digit == p.grant_digit)
        return digit is not None and not meaningful and self.plays < p.tries

    def _on_PromptAnswered(self, ev: PromptAnswered) -> list:
        if ev.tag != self._prompt_tag or self.phase is not Phase.PROMPTING or self.hung_up:
            return []
        p, digit = self.policy, ev.digit
        if digit is None and ev.ended == PROMPT_CALLER_GONE:
            return self._abandon()  # the hang-up event follows (or the socket closes)
        if digit is None and ev.ended == PROMPT_INTERRUPTED:
            # not silence; a hang-up usually follows in the same instant (capture s13): give it
            # a moment to say so, then fail closed for the recording and open for the call
            self._prompt_cut_short = True
            return [StartTimer(PROMPT_GRACE_TIMER, PROMPT_GRACE_S)]
        if self._replays(digit):
            return self._prompt()
        if self.objection:
            # the refusal by objection stands whatever the answer; but the refuse digit is the
            # statement's "call again and press 1": it still withdraws the earlier recordings
            callback = digit == p.refuse_digit and p.callback_withdrawal
            return ([WithdrawEarlierCalls()] if callback else []) + self._continue_objecting()
        if digit == p.refuse_digit:
            return self._refuse(BY_KEY)
        if p.opt_in and digit == p.grant_digit:
            return self._grant(BY_KEY)
        # silence, or wrong digits until the tries ran out
        return self._refuse(BY_SILENCE) if p.opt_in else self._grant(BY_SILENCE)

    def _on_CallerDigit(self, ev: CallerDigit) -> list:
        if self.phase is not Phase.IN_CALL:
            return []  # digits during the prompt belong to play_and_get_digits
        seq = self.policy.withdraw_sequence
        self.digits = (self.digits + ev.digit)[-len(seq):]
        if self.digits == seq:
            self.digits = ""
            return self._withdraw(BY_CALLER_KEYS)
        return []

    def _on_AgentWithdraw(self, ev: AgentWithdraw) -> list:
        return self._withdraw(BY_AGENT_KEY)

    def _on_AgentFlag(self, ev: AgentFlag) -> list:
        """Recorded whatever the consent state: a refused or withdrawn call has no recording
        to hold, but the flag stays in the ledger. It changes nothing about consent: a
        withdrawal still deletes (the hold is placed only on what gets sealed)."""
        if ev.kind in self.flags:
            return []
        self.flags.add(ev.kind)
        return [FlagCall(ev.kind, BY_AGENT_KEY)]

    def _on_WithdrawRequested(self, ev: WithdrawRequested) -> list:
        if self.outcome is None:
            # withdrawn before it was given: no recording, the call goes on
            out = self._decide(WITHDRAWN, ev.by)
            self.withdrawn = True
            return out + self._continue()
        return self._withdraw(ev.by)

    def _on_RecordStarted(self, ev: RecordStarted) -> list:
        if ev.recording_id != self.recording_id:
            return []
        if self.rec is Rec.STARTING:
            self.rec = Rec.ACTIVE
            return []
        if self.rec is Rec.DELETED:
            # the start raced a withdrawal: stop it and delete again
            return [StopRecording(self.recording_id), DeleteRecording(self.recording_id, "withdrawn")]
        return []

    def _on_RecordStopped(self, ev: RecordStopped) -> list:
        if ev.recording_id != self.recording_id:
            return []
        return self._recording_closed(ev.discarded)

    def _recording_closed(self, discarded: bool, confirmed: bool = True) -> list:
        if self.rec not in (Rec.STARTING, Rec.ACTIVE):
            if self.rec is Rec.DELETED:
                return [DeleteRecording(self.recording_id, "withdrawn")]  # a late write: delete again
            return []
        self.rec = Rec.CLOSED
        if discarded:
            return [RecordingDiscarded(self.recording_id)]
        if self.consent_holds:
            return [SealRecording(self.recording_id, confirmed)]
        self.rec = Rec.DELETED
        return [DeleteRecording(self.recording_id, "no-consent")]

    def _on_Held(self, ev: Held) -> list:
        if self.rec is Rec.ACTIVE and self.policy.mask_on_hold:
            return [MaskRecording(self.recording_id, True)]
        return []

    def _on_Unheld(self, ev: Unheld) -> list:
        if self.rec is Rec.ACTIVE and self.policy.mask_on_hold:
            return [MaskRecording(self.recording_id, False)]
        return []

    def _abandon(self) -> list:
        """The caller hung up before deciding: abandoned, nothing recorded, no menu."""
        if self.outcome is not None:
            return []
        self.outcome, self.decided_by = ABANDONED, BY_HANGUP
        return [Decide(ABANDONED, BY_HANGUP)]

    def _on_HungUp(self, ev: HungUp) -> list:
        if self.hung_up:
            return []
        self.hung_up = True
        out = self._abandon()
        self.phase = Phase.ENDED
        return out

    def _on_Disconnected(self, ev: Disconnected) -> list:
        out = self._on_HungUp(HungUp("DISCONNECTED")) if not self.hung_up else []
        if self.rec in (Rec.STARTING, Rec.ACTIVE):
            # no RECORD_STOP will come (no linger, or the socket broke): FreeSWITCH closes
            # the file as the channel goes, which may be just after the socket closed
            out += self._recording_closed(discarded=False, confirmed=False)
        return out

    def _on_TimerFired(self, ev: TimerFired) -> list:
        if ev.name == PROMPT_GRACE_TIMER and self._prompt_cut_short and not self.hung_up:
            self._prompt_cut_short = False
            return self._on_Failed(Failed("prompt-interrupted"))
        if ev.name != DECISION_DEADLINE_TIMER or self.hung_up:
            return []
        if self.outcome is None:
            return self._decide(ERROR, BY_FAILURE) + self._continue()
        # decided but never sent on (an objection whose answer or prompt never completed, a
        # completion that said the caller was gone with no hang-up after it): fail open
        return self._continue()

    def _on_Failed(self, ev: Failed) -> list:
        """Fail closed for the recording, open for the call."""
        out = self._erase_recording("error")
        if self.outcome is None:
            out += self._decide(ERROR, BY_FAILURE)
        elif self.outcome == GRANTED and out:
            out += [Decide(ERROR, BY_FAILURE)]
            self.outcome, self.decided_by = ERROR, BY_FAILURE
        return out + self._continue()
