"""One FreeSWITCH channel as its events show it: states, caller profile, variables.

The emulated channel is the B leg of a loopback call that runs
``socket <host>:<port> async full``, exactly like the captured calls, so its
headers (``Channel-Name: loopback/consent-b``, ``variable_loopback_leg: B``,
``variable_other_loopback_leg_uuid`` ...) match the captures.  Times are
microseconds since the epoch, as FreeSWITCH writes them.
"""

from __future__ import annotations

import dataclasses
import time
import uuid as uuidlib
from dataclasses import dataclass

_STATE_NUMBERS = {
    "CS_NEW": 0,
    "CS_INIT": 1,
    "CS_ROUTING": 2,
    "CS_EXECUTE": 4,
    "CS_HANGUP": 10,
    "CS_REPORTING": 11,
}

#: Q.850 codes of the hang-up causes the emulator produces or accepts.
Q850 = {
    "NORMAL_CLEARING": 16,
    "USER_BUSY": 17,
    "NO_ANSWER": 19,
    "CALL_REJECTED": 21,
    "NORMAL_UNSPECIFIED": 31,
    "NO_ROUTE_DESTINATION": 3,
    "ORIGINATOR_CANCEL": 487,
    "MANAGER_REQUEST": 503,
}


@dataclass
class Profile:
    """A caller profile (``Caller-*``, ``Channel-*`` or ``Other-Leg-*`` headers)."""

    direction: str
    caller_name: str
    caller_number: str
    callee_name: str
    callee_number: str
    destination: str
    unique_id: str
    source: str
    channel_name: str
    created_us: int
    index: int = 1
    transfer_source: str | None = None
    rdnis: str | None = None

    def field(self, name: str) -> str | None:
        """A profile field as ``getvar`` falls back to it (switch_caller_get_field_by_name)."""
        return {
            "dialplan": "xml",
            "caller_id_name": self.caller_name,
            "caller_id_number": self.caller_number,
            "orig_caller_id_name": self.caller_name,
            "orig_caller_id_number": self.caller_number,
            "callee_id_name": self.callee_name,
            "callee_id_number": self.callee_number,
            "ani": self.caller_number,
            "destination_number": self.destination,
            "uuid": self.unique_id,
            "source": self.source,
            "context": "default",
            "chan_name": self.channel_name,
            "rdnis": self.rdnis,
        }.get(name)

    def headers(self, prefix: str, times: "Channel") -> list[tuple[str, str]]:
        p = prefix
        out = [
            (f"{p}-Direction", self.direction),
            (f"{p}-Logical-Direction", self.direction),
            (f"{p}-Dialplan", "xml"),
            (f"{p}-Caller-ID-Name", self.caller_name),
            (f"{p}-Caller-ID-Number", self.caller_number),
            (f"{p}-Orig-Caller-ID-Name", self.caller_name),
            (f"{p}-Orig-Caller-ID-Number", self.caller_number),
            (f"{p}-Callee-ID-Name", self.callee_name),
            (f"{p}-Callee-ID-Number", self.callee_number),
            (f"{p}-ANI", self.caller_number),
            (f"{p}-Destination-Number", self.destination),
            (f"{p}-Unique-ID", self.unique_id),
            (f"{p}-Source", self.source),
        ]
        if self.transfer_source is not None:
            out.append((f"{p}-Transfer-Source", self.transfer_source))
        out.append((f"{p}-Context", "default"))
        if self.rdnis is not None:
            out.append((f"{p}-RDNIS", self.rdnis))
        out += [
            (f"{p}-Channel-Name", self.channel_name),
            (f"{p}-Profile-Index", str(self.index)),
            (f"{p}-Profile-Created-Time", str(self.created_us)),
            (f"{p}-Channel-Created-Time", str(times.created_us)),
            (f"{p}-Channel-Answered-Time", str(times.answered_us)),
            (f"{p}-Channel-Progress-Time", "0"),
            (f"{p}-Channel-Progress-Media-Time", "0"),
            (f"{p}-Channel-Hangup-Time", str(times.hangup_us)),
            (f"{p}-Channel-Transfer-Time", "0"),
            (f"{p}-Channel-Resurrect-Time", "0"),
            (f"{p}-Channel-Bridged-Time", str(times.bridged_us)),
            (f"{p}-Channel-Last-Hold", str(times.last_hold_us)),
            (f"{p}-Channel-Hold-Accum", str(times.hold_accum_us)),
            (f"{p}-Screen-Bit", "true"),
            (f"{p}-Privacy-Hide-Name", "false"),
            (f"{p}-Privacy-Hide-Number", "false"),
        ]
        return out


class Variables:
    """Channel variables in FreeSWITCH's order: setting one moves it to the end."""

    def __init__(self) -> None:
        self._items: dict[str, str] = {}

    def set(self, name: str, value: str | None) -> None:
        self._items.pop(name, None)
        if value is not None:
            self._items[name] = value

    def get(self, name: str) -> str | None:
        return self._items.get(name)

    def headers(self) -> list[tuple[str, str]]:
        return [(f"variable_{name}", value) for name, value in self._items.items()]


def now_us() -> int:
    return time.time_ns() // 1000


class Channel:
    """State, profile and variables of the emulated socket leg."""

    name = "loopback/consent-b"

    def __init__(
        self,
        *,
        uuid: str,
        caller_number: str,
        caller_name: str,
        session_id: int,
        socket_target: str,
    ) -> None:
        self.uuid = uuid
        self.other_loopback_uuid = str(uuidlib.uuid4())
        self.created_us = now_us()
        self.running_state = "CS_EXECUTE"
        self.state = "CS_EXECUTE"
        self.call_state = "RINGING"
        self.answer_state = "ringing"
        self.hangup_cause: str | None = None
        self.answered_us = 0
        self.hangup_us = 0
        self.bridged_us = 0
        self.last_hold_us = 0
        self.hold_accum_us = 0
        self.held_since_us = 0
        self.profile = Profile(
            direction="inbound",
            caller_name=caller_name,
            caller_number=caller_number,
            callee_name="Outbound Call",
            callee_number="default",
            destination="consent",
            unique_id=uuid,
            source="mod_loopback",
            channel_name=self.name,
            created_us=self.created_us,
        )
        self.other_leg: Profile | None = None
        self.digits_dialed = ""
        self.vars = Variables()
        for name, value in [
            ("direction", "inbound"),
            ("uuid", uuid),
            ("session_id", str(session_id)),
            ("channel_name", self.name),
            ("read_codec", "L16"),
            ("read_rate", "8000"),
            ("write_codec", "L16"),
            ("write_rate", "8000"),
            ("origination_uuid", self.other_loopback_uuid),
            ("origination_caller_id_number", caller_number),
            ("origination_caller_id_name", caller_name),
            ("other_loopback_leg_uuid", self.other_loopback_uuid),
            ("loopback_leg", "B"),
            ("call_uuid", uuid),
            ("current_application_data", socket_target),
            ("current_application", "socket"),
            ("socket_host", "127.0.0.1"),
        ]:
            self.vars.set(name, value)

    def lookup(self, name: str) -> str | None:
        """``getvar``: a channel variable, else a caller-profile field."""
        value = self.vars.get(name)
        return value if value is not None else self.profile.field(name)

    # ------------------------------------------------------------------ state changes

    def set_state(self, state: str) -> None:
        """A state the channel is asked to enter (``Channel-State-Number``)."""
        self.state = state

    def enter_state(self, state: str) -> None:
        """The state the channel runs in (``Channel-State``), as CHANNEL_STATE reports."""
        self.state = self.running_state = state
        if state == "CS_ROUTING":  # routing again after a transfer (as captured)
            self.call_state = "RINGING"
        elif state == "CS_REPORTING":
            self.call_state = "HANGUP"

    def transfer(self, extension: str) -> None:
        """A blind transfer: a new caller profile routed to ``extension``."""
        at = now_us()
        source = f"{at // 1_000_000}:{uuidlib.uuid4()}:bl_xfer:{extension}/default/xml"
        old = self.profile
        self.profile = dataclasses.replace(
            old, destination=extension, index=old.index + 1, created_us=at,
            transfer_source=source, rdnis=old.destination,
        )
        self.set_state("CS_ROUTING")
        self.vars.set("max_forwards", "70")
        self.vars.set("transfer_history", source)
        self.vars.set("transfer_source", source)

    def bridge_to(self, agent_uuid: str, extension: str = "agent") -> None:
        """Bridged to the phone of ``extension`` (``bridge user/<extension>``): the other leg's
        destination is the extension dialed (capture s18: ``Other-Leg-Destination-Number``)."""
        at = now_us()
        if not self.bridged_us:
            self.bridged_us = at  # the first bridge (bridge_stamp, waitsec)
        self.other_leg = Profile(
            direction="outbound",
            caller_name=self.profile.caller_name,
            caller_number=self.profile.caller_number,
            callee_name="Outbound Call",
            callee_number=extension,
            destination=extension,
            unique_id=agent_uuid,
            source="mod_sofia",
            channel_name=f"sofia/internal/{extension}@127.0.0.1",
            created_us=at,
        )
        for name, value in [
            ("bridge_channel", self.other_leg.channel_name),
            ("bridge_uuid", agent_uuid),
            ("signal_bond", agent_uuid),
            ("last_bridge_to", agent_uuid),
        ]:
            self.vars.set(name, value)

    def hold(self) -> None:
        self.call_state = "HELD"
        self.held_since_us = self.last_hold_us = now_us()

    def unhold(self) -> None:
        self.call_state = "ACTIVE"
        self.hold_accum_us += now_us() - self.held_since_us

    # ------------------------------------------------------------------ headers

    def _basic(self) -> list[tuple[str, str]]:
        out = [
            ("Channel-State", self.running_state),
            ("Channel-Call-State", self.call_state),
            ("Channel-State-Number", str(_STATE_NUMBERS[self.state])),
            ("Channel-Name", self.name),
            ("Unique-ID", self.uuid),
            ("Call-Direction", "inbound"),
            ("Presence-Call-Direction", "inbound"),
            ("Channel-HIT-Dialplan", "true"),
            ("Channel-Call-UUID", self.uuid),
            ("Answer-State", self.answer_state),
        ]
        if self.hangup_cause is not None:
            out.append(("Hangup-Cause", self.hangup_cause))
        out += [
            ("Channel-Read-Codec-Name", "L16"),
            ("Channel-Read-Codec-Rate", "8000"),
            ("Channel-Read-Codec-Bit-Rate", "128000"),
            ("Channel-Write-Codec-Name", "L16"),
            ("Channel-Write-Codec-Rate", "8000"),
            ("Channel-Write-Codec-Bit-Rate", "128000"),
        ]
        return out

    def data_headers(self, *, with_vars: bool = True) -> list[tuple[str, str]]:
        """``switch_channel_event_set_data``: basic data, profiles, variables."""
        out = self._basic() + self.profile.headers("Caller", self)
        if self.other_leg is not None:
            out.append(("Other-Type", "originatee"))
            out += self.other_leg.headers("Other-Leg", self)
        if with_vars:
            out += self.vars.headers()
        return out

    def connect_headers(self) -> list[tuple[str, str]]:
        """The channel data in the reply to ``connect``."""
        return self.profile.headers("Channel", self) + self.data_headers()

    def hangup_stats(self) -> None:
        """The CDR variables FreeSWITCH sets before CHANNEL_HANGUP_COMPLETE."""
        created, answered, bridged, ended = (
            self.created_us,
            self.answered_us,
            self.bridged_us,
            self.hangup_us,
        )

        def stamp(us: int) -> str:
            return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(us / 1_000_000))

        def epochs(name: str, us: int) -> list[tuple[str, str]]:
            return [(f"{name}_epoch", str(us // 1_000_000)), (f"{name}_uepoch", str(us))]

        stamps = [
            ("start_stamp", created),
            ("profile_start_stamp", self.profile.created_us),
            ("answer_stamp", answered),
            ("bridge_stamp", bridged),
            ("hold_stamp", self.last_hold_us),
            ("end_stamp", ended),
        ]
        stamps = [(name, us) for name, us in stamps if us]  # only the moments that happened
        cause = self.hangup_cause or "NORMAL_CLEARING"
        values = [
            ("hangup_cause", cause),
            ("hangup_cause_q850", str(Q850.get(cause, 16))),
            ("digits_dialed", self.digits_dialed or "none"),
            *[(name, stamp(us)) for name, us in stamps],
            *epochs("start", created),
            *epochs("profile_start", self.profile.created_us),
            *epochs("answer", answered),
            *epochs("bridge", bridged),
            *epochs("last_hold", self.last_hold_us),
            ("hold_accum_seconds", str(self.hold_accum_us // 1_000_000)),
            ("hold_accum_usec", str(self.hold_accum_us)),
            ("hold_accum_ms", str(self.hold_accum_us // 1000)),
            *epochs("resurrect", 0),
            *epochs("progress", 0),
            *epochs("progress_media", 0),
            *epochs("end", ended),
            ("last_app", self.vars.get("current_application") or ""),
            ("last_arg", self.vars.get("current_application_data") or ""),
            ("caller_id", f'"{self.profile.caller_name}" <{self.profile.caller_number}>'),
        ]
        spans = {
            "duration": (created, ended),
            "billsec": (answered, ended) if answered else (0, 0),
            "progresssec": (0, 0),
            "answersec": (created, answered) if answered else (0, 0),
            "waitsec": (created, bridged) if bridged else (0, 0),
            "progress_mediasec": (0, 0),
            "flow_billsec": (created, ended),
        }
        values += [(n, str(b // 1_000_000 - a // 1_000_000)) for n, (a, b) in spans.items()]
        for unit, div in (("msec", 1000), ("usec", 1)):
            for n, (a, b) in spans.items():
                base = "mduration" if unit == "msec" else "uduration"
                name = base if n == "duration" else n[:-3] + unit
                values.append((name, str((b - a) // div)))
        values.append(("is_loopback", "1"))
        for name, value in values:
            self.vars.set(name, value)
