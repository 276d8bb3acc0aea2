"""The wire disorder a real FreeSWITCH shows, seeded: one object takes every decision.

A polite emulator writes one frame per ``send``, every reply before any event
that comes after the command, and a prompt's completion after the hang-up that
cut it short.  A real FreeSWITCH 1.10.12 does not promise that (DESIGN.md §3 and
§7; captures s2, s10, s11, s13, handshake_race.txt, pagd_hangup_race.txt):

* **events before replies**: the socket app parks the channel while the
  listener answers the handshake; once ``myevents`` is on, CHANNEL_PARK goes
  out between replies (mod_event_socket writes queued events whenever it has
  no partial command buffered).  Seen in 15 of 1200 calls: 13 right after
  ``+OK will linger``, in the same TCP read (s11, s2, gs-outbound-2), 2 right
  after ``+OK Events Enabled``, before ``+OK will linger`` (s10);
* **frames split at any byte or run together**: mod_event_socket writes an
  event's header and its body in two ``send`` calls, and TCP cuts and joins
  segments as it likes;
* **the prompt's completion before CHANNEL_HANGUP**: a caller who hangs up
  while play_and_get_digits waits for the digit can make the prompt complete
  first, exactly like a timeout (``Answer-State: answered``, no
  ``Hangup-Cause``, ``variable_read_result: failure``), then the socket app
  returns (CHANNEL_UNPARK, its own completion) and only then CHANNEL_HANGUP
  (s13; 5 of 114 such hang-ups, mod_loopback unlinks B before hanging it up).

One behaviour is kept for stress tests only and is off unless forced:
**CHANNEL_EXECUTE before its sendmsg's +OK**.  FreeSWITCH 1.10.12 never did it
(0 of 6000 sendmsg in handshake_race.txt): the listener writes the ``+OK``
right after parsing the command, before it looks at its event queue again.

The odds here are higher than FreeSWITCH's own, so that every test run meets
each disorder often; the rates FreeSWITCH showed are in the field comments.

:class:`WireChaos` holds the probabilities and the seed; :meth:`WireChaos.for_call`
gives each call a :class:`CallChaos` whose random streams derive from the seed
and the call's index only, one stream per behaviour, so a run is reproduced by
its seed and one behaviour's draws never shift another's.  Tests force a
behaviour with :meth:`WireChaos.only` (``WireChaos.only(park=1.0)``) and turn it
all off with :meth:`WireChaos.off`.

The environment decides for code that does not choose: ``FS_CONSENT_EMULATOR_CHAOS=0``
(or ``off``) makes the emulator polite, ``FS_CONSENT_EMULATOR_CHAOS=park,split``
keeps only those behaviours (names in :data:`BEHAVIOURS`), and
``FS_CONSENT_EMULATOR_SEED=N`` fixes the seed (otherwise a random one, which the
emulator logs).
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

import gevent

ENV_CHAOS = "FS_CONSENT_EMULATOR_CHAOS"
ENV_SEED = "FS_CONSENT_EMULATOR_SEED"

#: Apps that return at once: their CHANNEL_EXECUTE_COMPLETE can beat the +OK too.
INSTANT_APPS = frozenset(
    "answer set export bind_meta_app record_session stop_record_session "
    "record_session_mask record_session_unmask".split()
)


#: Behaviour names for FS_CONSENT_EMULATOR_CHAOS=name,name and the fields they switch on.
BEHAVIOURS = {
    "park": ("park",),
    "execute": ("execute_before_reply",),  # not FreeSWITCH: off by default, 0.2 when named
    "split": ("split",),
    "coalesce": ("coalesce",),
    "hangup": ("completion_before_hangup",),
}


def random_seed() -> int:
    return random.SystemRandom().randrange(1_000_000)


@dataclass(frozen=True)
class WireChaos:
    """How unruly the wire is.  Every probability is per occasion, 0.0 to 1.0."""

    seed: int = 0
    #: CHANNEL_PARK reaches the socket after ``myevents`` (FreeSWITCH: 15 of 1200 calls;
    #: otherwise it fired before the subscription)...
    park: float = 0.3
    #: ...and goes out right after this many further replies (inclusive range, uniform): 0 is
    #: straight after the myevents reply (s10), 1 after the next one, in its write (s11).
    park_replies: tuple[int, int] = (0, 1)
    #: NOT FreeSWITCH (0 of 6000): a sendmsg execute that starts at once has its CHANNEL_EXECUTE
    #: written before its +OK...
    execute_before_reply: float = 0.0
    #: ...and, for an app in INSTANT_APPS, its CHANNEL_EXECUTE_COMPLETE as well.
    complete_before_reply: float = 0.5
    #: A write goes out in 2..max_pieces pieces cut at random bytes, with a yield between them.
    split: float = 0.2
    max_pieces: int = 4
    #: Longest pause between pieces (seconds); half the pauses are a bare ``gevent.sleep(0)``.
    max_pause: float = 0.001
    #: A frame waits up to ``hold_seconds`` so that the frames after it go out in the same write.
    coalesce: float = 0.15
    hold_seconds: float = 0.002
    #: The caller hangs up while play_and_get_digits waits for the digit: the prompt completes
    #: as if timed out, the socket app returns, then CHANNEL_HANGUP (FreeSWITCH: 5 of 114).
    completion_before_hangup: float = 0.3

    _PROBABILITIES = (
        "park", "execute_before_reply", "complete_before_reply", "split", "coalesce",
        "completion_before_hangup",
    )

    @classmethod
    def off(cls) -> "WireChaos":
        """The polite emulator: replies first, one frame per write, the captured orders only."""
        return cls(**{name: 0.0 for name in cls._PROBABILITIES})

    @classmethod
    def only(cls, seed: int = 0, **chosen) -> "WireChaos":
        """Every behaviour off except those given, e.g. ``WireChaos.only(park=1.0, park_replies=(1, 1))``."""
        return dataclasses.replace(cls.off(), seed=seed, **chosen)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "WireChaos":
        """``FS_CONSENT_EMULATOR_CHAOS``: unset, 1 or on: every behaviour; 0, off, false, no
        or polite: none; a comma list of BEHAVIOURS names (``park,split``): only those, at
        their default odds (to find which disorder a failing test trips on).  Seeded by
        ``FS_CONSENT_EMULATOR_SEED``, or at random."""
        env = os.environ if env is None else env
        value = env.get(ENV_CHAOS, "").strip().lower()
        if value in ("0", "off", "false", "no", "polite"):
            return cls.off()
        seed_text = env.get(ENV_SEED, "").strip()
        seed = int(seed_text) if seed_text else random_seed()
        if value in ("", "1", "on", "true", "yes", "all"):
            return cls(seed=seed)
        chosen = [name.strip() for name in value.split(",") if name.strip()]
        unknown = sorted(set(chosen) - set(BEHAVIOURS))
        if unknown:
            raise ValueError(f"{ENV_CHAOS}: unknown behaviour {', '.join(unknown)} "
                             f"(known: {', '.join(BEHAVIOURS)})")
        fields = {field: getattr(cls(), field) or 0.2 for name in chosen for field in BEHAVIOURS[name]}
        return cls.only(seed=seed, complete_before_reply=cls().complete_before_reply, **fields)

    @property
    def enabled(self) -> bool:
        return any(getattr(self, name) > 0 for name in self._PROBABILITIES if name != "complete_before_reply")

    def describe(self) -> str:
        if not self.enabled:
            return "wire chaos off"
        on = [name for name, fields in BEHAVIOURS.items() if any(getattr(self, f) > 0 for f in fields)]
        default = [name for name, fields in BEHAVIOURS.items()
                   if any(getattr(WireChaos(), f) > 0 for f in fields)]
        if on != default:  # say which are on
            return f"wire chaos seed {self.seed} ({', '.join(on)})"
        return f"wire chaos seed {self.seed}"

    def for_call(self, index: int) -> "CallChaos":
        return CallChaos(self, index)


@dataclass
class CallChaos:
    """The decisions for one call (its ``index`` is the emulator's call counter, from 1).

    ``notes`` says what was decided, in order, for the CallResult and for a
    failing test's message; ``splits`` and ``coalesced`` count the writes cut
    and the writes that carried more than one frame.
    """

    config: WireChaos
    index: int
    notes: list[str] = field(default_factory=list)
    splits: int = 0
    coalesced: int = 0

    def __post_init__(self) -> None:
        self._streams: dict[str, random.Random] = {}

    def _rng(self, behaviour: str) -> random.Random:
        rng = self._streams.get(behaviour)
        if rng is None:  # str seeds hash the same in every process (unlike hash())
            rng = self._streams[behaviour] = random.Random(f"{self.config.seed}/{self.index}/{behaviour}")
        return rng

    def _happens(self, behaviour: str, probability: float) -> bool:
        if probability <= 0:
            return False
        return probability >= 1 or self._rng(behaviour).random() < probability

    def __str__(self) -> str:
        if not self.config.enabled:
            return "wire chaos off"
        extra = "; ".join(self.notes)
        return (f"wire chaos seed {self.config.seed} call {self.index}: {extra or 'no reordering'}; "
                f"{self.splits} split writes, {self.coalesced} coalesced writes")

    # ------------------------------------------------------------------ decisions

    def park_after(self) -> int | None:
        """After the myevents reply: how many more replies go out before CHANNEL_PARK, or None (no PARK)."""
        if not self._happens("park", self.config.park):
            return None
        low, high = self.config.park_replies
        after = self._rng("park").randint(low, high)
        self.notes.append(f"CHANNEL_PARK after {after} more replies")
        return after

    def execute_first(self, app: str) -> str | None:
        """A sendmsg execute about to run at once: None (+OK first), 'execute' or 'complete'
        (that event is written before the +OK)."""
        if not self._happens("execute", self.config.execute_before_reply):
            return None
        upto = "execute"
        if app in INSTANT_APPS and self._happens("complete", self.config.complete_before_reply):
            upto = "complete"
        events = "CHANNEL_EXECUTE" if upto == "execute" else "CHANNEL_EXECUTE and its COMPLETE"
        self.notes.append(f"{app}: {events} before +OK")
        return upto

    def completion_first(self, app: str) -> bool:
        """The caller hangs up while ``app`` waits for a digit: it completes (as if timed
        out) before the channel hangs up."""
        if not self._happens("hangup", self.config.completion_before_hangup):
            return False
        self.notes.append(f"{app} completion before CHANNEL_HANGUP")
        return True

    def hold_back(self) -> bool:
        """Keep this frame back a moment so the next ones share its write."""
        return self._happens("coalesce", self.config.coalesce)

    def pieces(self, data: bytes) -> list[bytes]:
        """``data`` as it goes out: whole, or cut at random bytes."""
        if len(data) < 2 or not self._happens("split", self.config.split):
            return [data]
        rng = self._rng("split")
        count = min(len(data), rng.randint(2, max(2, self.config.max_pieces)))
        cuts = sorted(rng.sample(range(1, len(data)), count - 1))
        self.splits += 1
        return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]

    def pause(self) -> None:
        """Between two pieces of a write: let the reader run (a TCP segment boundary)."""
        rng = self._rng("pause")
        gevent.sleep(0 if rng.random() < 0.5 else rng.uniform(0, self.config.max_pause))
