"""The local control socket: JSON lines over a unix socket in the data dir.

``fs-consent withdraw CALL_UUID`` and friends reach the running server here. Each
request is one JSON object on one line; each answer is one JSON object on one line.
Only the server's own user and root are served: the socket file is 0600 in a 0700
directory, and the peer's uid (SO_PEERCRED) is checked as well.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import struct
import traceback
from collections.abc import Callable
from pathlib import Path

import gevent
from gevent import socket
from gevent.pool import Pool
from gevent.server import StreamServer

__all__ = ["MAX_LINE", "ControlError", "ControlServer", "peer_allowed", "request"]

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024  # bytes per request or answer line, newline included
_MAX_PATH = 107  # sun_path is 108 bytes with the terminating NUL

Handler = Callable[[dict], dict]


class ControlError(Exception):
    """The control socket cannot be served or reached; the message says why."""


def peer_allowed(peer_uid: int, server_uid: int) -> bool:
    """Serve a client only if it runs as the server's user or as root."""
    return peer_uid == server_uid or peer_uid == 0


def _peer_uid(conn: socket.socket) -> int:
    pid_uid_gid = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", pid_uid_gid)[1]


def _encode(message: dict) -> bytes:
    return json.dumps(message).encode("ascii") + b"\n"


def _check_length(path: Path) -> None:
    if len(os.fsencode(path)) > _MAX_PATH:
        raise ControlError(
            f"control socket path {path} is too long for a unix socket "
            f"(limit {_MAX_PATH} bytes); use a shorter data directory"
        )


class ControlServer:
    """Serves ``handler(request) -> response`` on a unix socket, one greenlet per connection.

    A connection may carry several requests. A line over :data:`MAX_LINE`, or a client
    idle for ``timeout`` seconds, ends that connection only.
    """

    def __init__(
        self,
        path: Path,
        handler: Handler,
        *,
        timeout: float = 10.0,
        max_connections: int = 32,
    ):
        self.path = Path(path)
        self._handler = handler
        self._timeout = timeout
        self._max_connections = max_connections
        self._uid = os.geteuid()
        self._server: StreamServer | None = None
        self._inode: int | None = None

    def start(self) -> None:
        """Listen; ControlError if the directory is not private or another server is live."""
        _check_length(self.path)
        self._check_directory()
        self._remove_stale_socket()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.path))
            os.chmod(self.path, 0o600)
            listener.listen(64)
        except OSError as exc:
            listener.close()
            raise ControlError(
                f"cannot listen on control socket {self.path}: {exc.strerror}"
            ) from None
        self._inode = os.stat(self.path).st_ino
        self._server = StreamServer(listener, self._serve, spawn=Pool(self._max_connections))
        self._server.start()

    def stop(self) -> None:
        """Stop serving and remove the socket file (unless another server has replaced it)."""
        if self._server is None:
            return
        self._server.stop(timeout=1)
        self._server = None
        try:
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _check_directory(self) -> None:
        directory = self.path.parent
        try:
            st = os.stat(directory)
        except FileNotFoundError:
            raise ControlError(f"control socket directory {directory} does not exist") from None
        if not stat.S_ISDIR(st.st_mode):
            raise ControlError(f"control socket directory {directory} is not a directory")
        if st.st_mode & 0o077:
            raise ControlError(
                f"control socket directory {directory} must be private (mode 0700); "
                f"it is {stat.S_IMODE(st.st_mode):04o}"
            )
        if st.st_uid != self._uid:
            raise ControlError(
                f"control socket directory {directory} must belong to the server's user "
                f"(uid {self._uid}); it belongs to uid {st.st_uid}"
            )

    def _remove_stale_socket(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError(f"{self.path} exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(self.path))
        except ConnectionRefusedError:  # nobody listens: left behind by a crashed server
            log.info("replacing stale control socket %s", self.path)
            os.unlink(self.path)
            return
        except OSError:  # a busy live server (timeout) or something else we must not replace
            pass
        finally:
            probe.close()
        raise ControlError(
            f"another fs-consent server is running (control socket at {self.path} is live)"
        )

    def _serve(self, conn: socket.socket, _address: object) -> None:
        try:
            peer_uid = _peer_uid(conn)
            allowed = peer_allowed(peer_uid, self._uid)
            if not allowed:
                log.warning("control socket: refused a client running as uid %d", peer_uid)
            conn.settimeout(self._timeout)
            reader = conn.makefile("rb")
            while True:
                line = reader.readline(MAX_LINE + 1)
                if not line:
                    return
                if not allowed:  # answered after reading, so the client is ready for it
                    conn.sendall(_encode({"ok": False, "error": "permission denied"}))
                    return
                if len(line) > MAX_LINE:
                    too_long = f"request too long (limit {MAX_LINE} bytes)"
                    conn.sendall(_encode({"ok": False, "error": too_long}))
                    return
                conn.sendall(self._answer(line))
        except (TimeoutError, ConnectionError):
            pass  # an idle or vanished client: just close
        finally:
            conn.close()

    def _answer(self, line: bytes) -> bytes:
        try:
            request = json.loads(line)
        except ValueError:
            return _encode({"ok": False, "error": "bad request: not JSON"})
        if not isinstance(request, dict):
            return _encode({"ok": False, "error": "bad request: expected a JSON object"})
        try:
            response = self._handler(request)
            if not isinstance(response, dict):
                raise TypeError(f"handler returned {type(response).__name__}, not dict")
            return _encode(response)
        except Exception as exc:  # the request may hold personal data: log only where it failed
            where = " <- ".join(
                f"{frame.filename}:{frame.lineno} in {frame.name}"
                for frame in reversed(traceback.extract_tb(exc.__traceback__))
            )
            log.error("control request handler failed with %s at %s", type(exc).__name__, where)
            return _encode({"ok": False, "error": "internal error"})


def request(path: Path, message: dict, *, timeout: float = 2.0) -> dict:
    """Send one request to the running server and return its answer.

    Raises ControlError when no server listens, on timeout, or on a malformed answer.
    """
    path = Path(path)
    _check_length(path)
    line = _encode(message)
    if len(line) > MAX_LINE:
        raise ControlError(f"request too long (limit {MAX_LINE} bytes)")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    late = ControlError(
        f"the fs-consent server did not answer within {timeout:g}s (control socket at {path})"
    )
    try:
        with gevent.Timeout(timeout, late):
            try:
                sock.connect(str(path))
            except (FileNotFoundError, ConnectionRefusedError):
                raise ControlError(
                    f"the fs-consent server is not running (no control socket at {path})"
                ) from None
            except PermissionError:
                raise ControlError(
                    f"permission denied on the control socket at {path} "
                    "(run as the server's user or root)"
                ) from None
            sock.sendall(line)
            reply = sock.makefile("rb").readline(MAX_LINE + 1)
    except OSError as exc:
        raise ControlError(
            f"cannot talk to the fs-consent server at {path}: {exc.strerror or exc}"
        ) from None
    finally:
        sock.close()
    if not reply.endswith(b"\n"):
        raise ControlError("the fs-consent server closed the connection without a complete answer")
    try:
        response = json.loads(reply)
    except ValueError:
        response = None
    if not isinstance(response, dict):
        raise ControlError("the fs-consent server sent a malformed answer")
    return response
