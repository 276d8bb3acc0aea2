"""A minimal sd_notify client: tell systemd that the server is ready, alive, stopping.

The protocol (sd_notify(3)) is one datagram of newline-separated ``NAME=value`` lines
sent to the AF_UNIX socket named by ``$NOTIFY_SOCKET``; a name starting with ``@`` is
in the abstract namespace. Without ``$NOTIFY_SOCKET`` (not started by systemd, or a
unit that is not ``Type=notify``) every function here does nothing and returns False,
so callers need no checks of their own.

How the server uses it (``scripts/fs-consent.service`` is ``Type=notify`` with
``WatchdogSec=30s`` and ``NotifyAccess=main``)::

    server.start()                  # spool recovery done, listener bound
    notify.ready("listening on 127.0.0.1:8040")
    interval = notify.watchdog_interval()
    if interval:                    # a greenlet: a hub blocked for WatchdogSec is restarted
        gevent.spawn(feed_watchdog, interval)
    ...
    notify.stopping("draining 3 calls")

Errors never reach the caller: a failed send is logged and reported as False (the
server must not stop because systemd could not be told something).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

__all__ = [
    "extend_timeout",
    "notify",
    "ready",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
]

log = logging.getLogger(__name__)

ENV_SOCKET = "NOTIFY_SOCKET"
ENV_WATCHDOG_USEC = "WATCHDOG_USEC"
ENV_WATCHDOG_PID = "WATCHDOG_PID"


def _address(env: Mapping[str, str]) -> str | None:
    """The socket address to send to, or None when there is none we can use."""
    name = env.get(ENV_SOCKET, "")
    if name.startswith("@"):
        return "\0" + name[1:]  # abstract namespace
    if name.startswith("/"):
        return name
    if name:  # e.g. vsock:CID:PORT (systemd in a VM): not needed on a FreeSWITCH host
        log.debug("%s=%r is not a unix socket path; not notifying", ENV_SOCKET, name)
    return None


def _one_line(text: str) -> str:
    # a newline would start a new assignment: a status text must not inject one
    return " ".join(str(text).splitlines()).strip()


def notify(*assignments: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``NAME=value`` assignments in one datagram; True when it was sent."""
    address = _address(os.environ if env is None else env)
    if address is None or not assignments:
        return False
    payload = "\n".join(assignments).encode("utf-8")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(payload, address)
    except OSError as exc:
        log.warning("could not notify systemd (%s): %s", ", ".join(a.split("=", 1)[0] for a in assignments),
                    exc.strerror or exc)
        return False
    return True


def ready(status_text: str | None = None, *, env: Mapping[str, str] | None = None) -> bool:
    """Start-up is complete (spool recovered, listener bound): ``READY=1``."""
    lines = ["READY=1"]
    if status_text:
        lines.append(f"STATUS={_one_line(status_text)}")
    return notify(*lines, env=env)


def stopping(status_text: str | None = None, *, env: Mapping[str, str] | None = None) -> bool:
    """Shutdown has begun (the drain): ``STOPPING=1``."""
    lines = ["STOPPING=1"]
    if status_text:
        lines.append(f"STATUS={_one_line(status_text)}")
    return notify(*lines, env=env)


def status(text: str, *, env: Mapping[str, str] | None = None) -> bool:
    """A one-line status for ``systemctl status`` (never put personal data in it)."""
    return notify(f"STATUS={_one_line(text)}", env=env)


def watchdog(*, env: Mapping[str, str] | None = None) -> bool:
    """Still alive: ``WATCHDOG=1``. Send it every :func:`watchdog_interval` seconds."""
    return notify("WATCHDOG=1", env=env)


def extend_timeout(seconds: float, *, env: Mapping[str, str] | None = None) -> bool:
    """Ask for ``seconds`` more before the start (or stop) timeout fires: ``EXTEND_TIMEOUT_USEC``.

    For a long spool recovery at start-up, or a long seal at shutdown; send it again
    before the extension runs out.
    """
    return notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}", env=env)


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between :func:`watchdog` calls: half of ``$WATCHDOG_USEC``; None when unset.

    None too when ``$WATCHDOG_PID`` names another process (the variable was inherited).
    """
    env = os.environ if env is None else env
    pid = env.get(ENV_WATCHDOG_PID, "")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(env.get(ENV_WATCHDOG_USEC, ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000
