"""A FreeSWITCH emulator that calls into fs-consent exactly as FreeSWITCH 1.10 does.

It speaks outbound ESL over real TCP (gevent), byte for byte as in the captures
under ``freeswitch/captures``, runs scripted callers, menus and agents, and
writes real WAV recordings.  Used by end-to-end tests, ``fs-consent simulate``
and the benchmarks.
"""

from .script import CallerScript, CallResult, RecordingInfo
from .switch import FreeSwitchEmulator

__all__ = ["CallerScript", "CallResult", "FreeSwitchEmulator", "RecordingInfo"]
