"""The emulated switch: places calls into an fs-consent server over outbound ESL."""

from __future__ import annotations

import itertools
import logging
import uuid as uuidlib
from pathlib import Path

import gevent
from gevent import socket

from .chaos import WireChaos
from .events import Core
from .script import CallerScript, CallResult
from .session import CallSession, Settings

log = logging.getLogger("fs_consent.emulator")


class FreeSwitchEmulator:
    """A FreeSWITCH 1.10 that dials ``host:port`` once per call, as ``socket <host>:<port> async full`` does.

    ``linger=False`` is fault injection: the switch behaves as if the app's
    ``linger`` had no effect (s6: goodbye right after CHANNEL_HANGUP).
    ``time_scale`` shrinks the app's own timers (play_and_get_digits timeouts,
    ``sleep``, ``linger N``); ``app_latency`` is the delay before each queued
    app starts (about 20 ms in FreeSWITCH's park loop); ``linger_timeout`` is
    how long a plain ``linger`` waits for ``exit`` before the switch gives up.
    Recordings may only be written inside ``spool_dir``.

    ``chaos`` is the wire's disorder (:class:`~.chaos.WireChaos`): by default it
    comes from the environment, which means on, with a random seed that is
    logged (``FS_CONSENT_EMULATOR_SEED`` fixes it, ``FS_CONSENT_EMULATOR_CHAOS=0``
    turns it off); ``False`` or ``WireChaos.off()`` is the polite emulator.
    Call *n* placed by this emulator draws from seed and *n* only.
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
        chaos: WireChaos | bool | None = None,
    ) -> None:
        if chaos is None or chaos is True:
            chaos = WireChaos.from_env()
        elif chaos is False:
            chaos = WireChaos.off()
        self.chaos: WireChaos = chaos
        if chaos.enabled:
            log.info("emulator %s (FS_CONSENT_EMULATOR_SEED=%s replays it)", chaos.describe(), chaos.seed)
        self.host = host
        self.port = port
        self._core = Core(core_uuid or str(uuidlib.uuid4()), time_scale)
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
        index = next(self._session_ids)
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # each write its own segment
        session = CallSession(
            sock,
            core=self._core,
            settings=self._settings,
            script=script,
            call_uuid=call_uuid,
            session_id=index,
            socket_target=f"{self.host}:{self.port} async full",
            wire=self.chaos.for_call(index),
        )
        timer = gevent.spawn_later(timeout, session.abort, f"call did not end within {timeout} s")
        try:
            return session.run()
        finally:
            timer.kill()
