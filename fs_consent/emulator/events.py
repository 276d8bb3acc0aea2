"""FreeSWITCH events as the captures show them: core headers, then channel data.

Each event is a list of ``(name, value)`` in wire order, ready for
:func:`fs_consent.esl.encode_event`.
"""

from __future__ import annotations

import itertools
import time
from email.utils import formatdate

from .channel import Channel, now_us

#: Event-Calling-File/Function/Line-Number per event, from FreeSWITCH 1.10.12 captures.
#: Events the captures do not contain carry the source function with line 0.
_CALLING = {
    "CHANNEL_DATA": ("mod_event_socket.c", "parse_command", "2021"),
    "CHANNEL_EXECUTE": ("switch_core_session.c", "switch_core_session_exec", "2944"),
    "CHANNEL_EXECUTE_COMPLETE": ("switch_core_session.c", "switch_core_session_exec", "2967"),
    "CHANNEL_ANSWER": ("switch_channel.c", "switch_channel_perform_mark_answered", "3846"),
    "CHANNEL_HANGUP": ("switch_channel.c", "switch_channel_perform_hangup", "3445"),
    "CHANNEL_HANGUP_COMPLETE": (
        "switch_core_state_machine.c",
        "switch_core_session_reporting_state",
        "943",
    ),
    "CHANNEL_PARK": ("switch_ivr.c", "switch_ivr_park", "1002"),
    "CHANNEL_UNPARK": ("switch_ivr.c", "switch_ivr_park", "1213"),
    "CHANNEL_STATE": ("switch_channel.c", "switch_channel_perform_set_running_state", "2408"),
    "DTMF": ("switch_channel.c", "switch_channel_dequeue_dtmf", "677"),
    "RECORD_START": ("switch_ivr_async.c", "record_callback", "1481"),
    "RECORD_STOP": ("switch_ivr_async.c", "send_record_stop_event", "1240"),
    "CHANNEL_BRIDGE": ("switch_ivr_bridge.c", "switch_ivr_multi_threaded_bridge", "0"),
    "CHANNEL_UNBRIDGE": ("switch_ivr_bridge.c", "switch_ivr_multi_threaded_bridge", "0"),
    "CHANNEL_HOLD": ("switch_channel.c", "switch_channel_perform_mark_hold", "0"),
    "CHANNEL_UNHOLD": ("switch_channel.c", "switch_channel_perform_mark_hold", "0"),
    "PLAYBACK_STOP": ("switch_ivr_play_say.c", "switch_ivr_play_file", "2020"),
}

#: Events whose channel data carries no variables (as captured).
_NO_VARIABLES = {"DTMF", "CHANNEL_STATE"}


class Core:
    """The switch itself: identity headers, the global event sequence, and its clock.

    The clock runs ``1 / time_scale`` times faster than the wall clock, as the app's
    timers do (``time_scale``): durations between events' ``Event-Date-Timestamp`` are
    what a real FreeSWITCH would show for the same timers.
    """

    def __init__(self, core_uuid: str, time_scale: float = 1.0) -> None:
        self.core_uuid = core_uuid
        self._sequence = itertools.count(1)
        self._scale = time_scale
        self._epoch_us, self._mono = now_us(), time.monotonic()

    def now_us(self) -> int:
        return self._epoch_us + round((time.monotonic() - self._mono) / self._scale * 1_000_000)

    def headers(self, name: str) -> list[tuple[str, str]]:
        stamp = self.now_us()
        seconds = stamp / 1_000_000
        calling_file, function, line = _CALLING[name]
        return [
            ("Event-Name", name),
            ("Core-UUID", self.core_uuid),
            ("FreeSWITCH-Hostname", "fs-consent-emulator"),
            ("FreeSWITCH-Switchname", "fs-consent-emulator"),
            ("FreeSWITCH-IPv4", "127.0.0.1"),
            ("FreeSWITCH-IPv6", "::1"),
            ("Event-Date-Local", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))),
            ("Event-Date-GMT", formatdate(seconds, usegmt=True)),
            ("Event-Date-Timestamp", str(stamp)),
            ("Event-Calling-File", calling_file),
            ("Event-Calling-Function", function),
            ("Event-Calling-Line-Number", line),
            ("Event-Sequence", str(next(self._sequence))),
        ]

    def channel_event(
        self,
        name: str,
        channel: Channel,
        *,
        before: list[tuple[str, str]] = (),
        after: list[tuple[str, str]] = (),
    ) -> list[tuple[str, str]]:
        """An event about ``channel``: ``before`` goes ahead of the channel data."""
        data = channel.data_headers(with_vars=name not in _NO_VARIABLES)
        return self.headers(name) + list(before) + data + list(after)

    def connect_data(self, channel: Channel) -> list[tuple[str, str]]:
        return self.headers("CHANNEL_DATA") + channel.connect_headers()


def application_headers(
    app: str, data: str | None, app_uuid: str, response: str | None = None, *, complete: bool
) -> list[tuple[str, str]]:
    """The trailing ``Application*`` headers of CHANNEL_EXECUTE[_COMPLETE]."""
    out = [("Application", app)]
    if data is not None:
        out.append(("Application-Data", data))
    if complete:
        out.append(("Application-Response", response or "_none_"))
    out.append(("Application-UUID", app_uuid))
    return out
