"""A FreeSWITCH emulator that calls into fs-consent exactly as FreeSWITCH 1.10 does.

It speaks outbound ESL over real TCP (gevent), byte for byte as in the captures
under ``freeswitch/captures``, runs scripted callers, menus and agents, and
writes real WAV recordings.  Used by end-to-end tests, ``fs-consent simulate``
and the benchmarks.  Unless told to be polite it is as unruly on the wire as a
real FreeSWITCH, reproducibly (see :mod:`.chaos`).
"""

from .chaos import CallChaos, WireChaos
from .script import CallerScript, CallResult, RecordingInfo
from .switch import FreeSwitchEmulator

__all__ = ["CallChaos", "CallResult", "CallerScript", "FreeSwitchEmulator", "RecordingInfo", "WireChaos"]
