"""What an emulated caller does, and what the emulator saw: the public data types."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CallerScript:
    """The caller, the menu and the agent of one emulated call.  Times in seconds.

    The app's own timers (play_and_get_digits timeouts, ``sleep``, ``linger N``)
    are scaled by the emulator's ``time_scale``; the times here are used as given.
    """

    caller_number: str = "0612345678"
    caller_name: str = "Test"
    #: How long every played file (playback, the play_and_get_digits prompt) lasts.
    prompt_seconds: float = 0.05
    #: Per play_and_get_digits run: the key pressed (a DTMF event just before the
    #: completion) or None (the run times out after the command's timeout).
    digits: list[str | None] = field(default_factory=lambda: [None])
    #: Seconds into a play_and_get_digits prompt at which its key (``digits``) is pressed:
    #: the prompt stops there, as FreeSWITCH's does (capture s1: the key 0.52 s into a
    #: 1.5 s prompt completes the app at once, playback_last_offset_pos 4160). None: the
    #: key comes just after the prompt has played to its end.
    digit_after: float | None = None
    #: The caller hangs up halfway through the first play_and_get_digits prompt (s8).
    hangup_in_prompt: bool = False
    #: The caller hangs up halfway through the first play_and_get_digits' wait for the digit,
    #: after the prompt (when no digit comes): s14, or s13 when the wire chaos says so.
    hangup_in_timeout: bool = False
    #: Seconds after the first play_and_get_digits ends: the caller hangs up (s15).
    hangup_after_digits: float | None = None
    #: After execute_extension starts: time in the menu before the agent answers.
    menu_seconds: float = 0.02
    #: The menu reaches an agent (CHANNEL_BRIDGE); otherwise it ends and the call hangs up.
    bridge: bool = True
    #: The menu transfers the call (``transfer staff XML default``) to a target that does
    #: not bridge: no CHANNEL_BRIDGE, and from then on the caller's keys (``caller_keys``,
    #: timed from the transfer, and ``record_keys``) queue on the channel without a DTMF
    #: event (DESIGN §7, s19) until the app plays something (a sendmsg then runs at once,
    #: beside the target's app, and reads them).  The caller hangs up after ``talk_seconds``.
    transfer_without_bridge: bool = False
    #: Bridged time (with each member of staff, ``staff``); then the agent hangs up.
    talk_seconds: float = 0.3
    #: Who takes the call, in order: the extension (or agent) each bridge reaches. One: one
    #: bridge. More: a transfer between them: CHANNEL_UNBRIDGE, then a CHANNEL_BRIDGE to the
    #: next, with that leg's ``Other-Leg-*`` headers. Empty: one bridge to the extension "agent".
    staff: list[str] = field(default_factory=list)
    #: The channel variable that names the member of staff on our channel at each bridge (as
    #: mod_callcenter's ``cc_agent``), set before the bridge; None: only the bridged leg says it.
    staff_variable: str | None = None
    #: The route (queue, department) the menu sets in ``route_variable`` before the first bridge.
    route: str | None = None
    route_variable: str = "fs_consent_route"
    #: (seconds after the bridge, digits): caller keys while bridged, one DTMF event per digit
    #: (after a ``transfer_without_bridge``: seconds after the transfer, and no events).
    caller_keys: list[tuple[float, str]] = field(default_factory=list)
    #: (seconds after the bridge, "*2"): the agent dials a meta sequence.
    agent_keys: list[tuple[float, str]] = field(default_factory=list)
    #: (start after the bridge, duration): CHANNEL_HOLD / CHANNEL_UNHOLD on our channel.
    hold: list[tuple[float, float]] = field(default_factory=list)
    #: Seconds after the bridge: the caller hangs up.
    caller_hangup_after: float | None = None
    #: (seconds after RECORD_START, digits): caller keys while a recording runs, bridged or not.
    record_keys: list[tuple[float, str]] = field(default_factory=list)
    #: Seconds after RECORD_START: the caller hangs up (s4/s5/s6).
    hangup_after_record: float | None = None
    #: DTMF-Source of caller keys: UNKNOWN for a keypress, APP for ``uuid_recv_dtmf``.
    dtmf_source: str = "UNKNOWN"
    #: DTMF-Source of play_and_get_digits keys; None means ``dtmf_source``.
    digit_source: str | None = None


@dataclass
class RecordingInfo:
    """One ``record_session`` file as the emulator wrote it."""

    path: str
    channels: int
    frames: int = 0
    sha256: str | None = None  # of the final file; None while open or when discarded
    discarded: bool = False
    masked_seconds: float = 0.0
    completion_cause: str | None = None  # Record-Completion-Cause of its RECORD_STOP


@dataclass
class CallResult:
    uuid: str
    #: The verb of every command the app sent, in order (``connect``, ``myevents``, ``sendmsg`` ...):
    #: how far the app got with the call (an app killed during the handshake stops at ``connect``).
    commands: list[str] = field(default_factory=list)
    executed: list[tuple[str, str | None]] = field(default_factory=list)
    api_commands: list[str] = field(default_factory=list)
    channel_vars: dict[str, str] = field(default_factory=dict)
    recordings: dict[str, RecordingInfo] = field(default_factory=dict)
    hangup_cause: str | None = None
    exited: bool = False
    errors: list[str] = field(default_factory=list)
    #: from the end of the consent prompt (the caller's digit or timeout) to the arrival of the
    #: record_session command: the read that completed it, not when the emulator got round to
    #: handling it (commands in front of it in the same read, and their replies, come first)
    decision_latency: float | None = None
    #: the same, up to when the emulator handled the command
    decision_handled_latency: float | None = None
    #: from the connection to the arrival of the consent prompt's command (None: it never came)
    prompt_latency: float | None = None
    #: wall clock (time.time()) of CHANNEL_HANGUP, for the ledger lag
    hung_up_at: float | None = None
    duration: float = 0.0
    #: The call's wire-disorder decisions (a ``CallChaos``; ``str()`` of it says what happened).
    chaos: object = None
    #: The menu transferred the call away from the park without a bridge...
    transferred: bool = False
    #: ...and these caller keys were queued on the channel, never reported as DTMF.
    queued_dtmf: str = ""
