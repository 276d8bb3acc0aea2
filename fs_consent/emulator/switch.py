"""The emulated switch: places calls into an fs-consent server over outbound ESL."""

from __future__ import annotations

import itertools
import uuid as uuidlib
from pathlib import Path

import gevent
from gevent import socket

from .events import Core
from .script import CallerScript, CallResult
from .session import CallSession, Settings


class FreeSwitchEmulator:
    """A FreeSWITCH 1.10 that dials ``host:port`` once per call, as ``socket <host>:<port> async full`` does.

    ``linger=False`` is fault injection: the switch behaves as if the app's
    ``linger`` had no effect (s6: goodbye right after CHANNEL_HANGUP).
    ``time_scale`` shrinks the app's own timers (play_and_get_digits timeouts,
    ``sleep``, ``linger N``); ``app_latency`` is the delay before each queued
    app starts (about 20 ms in FreeSWITCH's park loop); ``linger_timeout`` is
    how long a plain ``linger`` waits for ``exit`` before the switch gives up.
    Recordings may only be written inside ``spool_dir``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        spool_dir: str | Path,
        linger: bool = True,
        core_uuid: str | None = None,
        time_scale: float = 1.0,
        app_latency: float = 0.02,
        linger_timeout: float = 5.0,
    ) -> None:
        self.host = host
        self.port = port
        self._core = Core(core_uuid or str(uuidlib.uuid4()))
        self._settings = Settings(
            spool_dir=Path(spool_dir),
            linger=linger,
            time_scale=time_scale,
            app_latency=app_latency,
            linger_timeout=linger_timeout,
        )
        self._session_ids = itertools.count(1)

    def place_call(
        self, script: CallerScript, *, uuid: str | None = None, timeout: float = 30.0
    ) -> CallResult:
        """Run one call to its end (blocks this greenlet; run many in parallel greenlets).

        A call that has not ended after ``timeout`` seconds is cut off and the
        result says so in ``errors``.
        """
        call_uuid = uuid or str(uuidlib.uuid4())
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        sock.settimeout(None)
        session = CallSession(
            sock,
            core=self._core,
            settings=self._settings,
            script=script,
            call_uuid=call_uuid,
            session_id=next(self._session_ids),
            socket_target=f"{self.host}:{self.port} async full",
        )
        timer = gevent.spawn_later(timeout, session.abort, f"call did not end within {timeout} s")
        try:
            return session.run()
        finally:
            timer.kill()
