"""Running the listening room: the Flask app on gevent's WSGI server, until SIGTERM or SIGINT.

gevent's own request log is off (it writes the request line, query string and all); the
app logs each request by its route's pattern (``app.py``). The server's error lines are
cut to their first clause for the same reason: a malformed request line is never echoed.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import gevent
import gevent.event
from gevent.pywsgi import WSGIServer

from ..core.logs import fields
from ..privacy.retention import Terms
from ..privacy.subjects import protector_for
from ..secure import keys
from ..secure.age_header import HeaderOpener
from .app import Room, create_app

log = logging.getLogger("fs_consent.listen")


_KNOWN = ("Invalid HTTP method", "Invalid HTTP version", "Expected GET method", "Invalid headers",
          "Request line is too long", "Connection reset", "Broken pipe", "Timeout")


class _ErrorLog:
    """gevent's error log, as one structured line without the request's text."""

    def write(self, text: str) -> None:
        text = str(text)
        if text.strip():
            known = [kind for kind in _KNOWN if kind.lower() in text.lower()]
            log.warning("http server", extra=fields(problem=known[0] if known else "malformed request or I/O error"))

    def flush(self) -> None:
        pass


def make_room(config) -> Room:
    """The room of ``config``: needs the age identity (keys/identity.txt) and the field key on this host."""
    keys_dir = Path(config.storage.keys_dir)
    identity = keys.load_identity(keys_dir)
    return Room(listen=config.listen, terms=Terms.from_config(config.retention),
                store_dir=Path(config.storage.store_dir), opener=HeaderOpener(str(identity)),
                protector=protector_for(keys_dir))


class ListeningRoom:
    def __init__(self, config, address=None):
        self.room = make_room(config)
        self.app = create_app(self.room)
        listen = address or config.listen.address
        self.server = WSGIServer((listen.host, listen.port), self.app, log=None, error_log=_ErrorLog())

    def start(self) -> None:
        self.server.start()

    @property
    def address(self) -> tuple[str, int]:
        return self.server.address[:2]

    def stop(self, timeout: float = 5.0) -> None:
        self.server.stop(timeout=timeout)

    def run_until_signalled(self) -> None:
        done = gevent.event.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(sig, done.set)
        done.wait()
        log.info("listening room stopping")
        self.stop()
