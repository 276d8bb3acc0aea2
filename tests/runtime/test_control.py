import json
import logging
import os
import socket as stdsocket
import stat
import tempfile
from pathlib import Path

import gevent
import gevent.os
import pytest
from gevent import socket

from fs_consent.runtime.control import MAX_LINE, ControlError, ControlServer, peer_allowed, request


@pytest.fixture
def private_dir():
    """A 0700 directory with a short path (unix socket paths are limited to 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="fsc-") as name:
        os.chmod(name, 0o700)
        yield Path(name)


@pytest.fixture
def sock_path(private_dir):
    return private_dir / "control.sock"


@pytest.fixture
def serve(sock_path):
    servers = []

    def start(handler=lambda req: {"ok": True, "echo": req}, **kwargs):
        server = ControlServer(sock_path, handler, **kwargs)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def raw_connect(path):
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(2)
    conn.connect(str(path))
    return conn


def test_round_trip(serve, sock_path):
    serve()
    assert request(sock_path, {"cmd": "withdraw", "call": "abc"}) == {
        "ok": True,
        "echo": {"cmd": "withdraw", "call": "abc"},
    }


def test_several_requests_on_one_connection(serve, sock_path):
    serve()
    conn = raw_connect(sock_path)
    reader = conn.makefile("rb")
    for n in range(3):
        conn.sendall(json.dumps({"n": n}).encode() + b"\n")
        assert json.loads(reader.readline()) == {"ok": True, "echo": {"n": n}}
    conn.close()


def test_socket_file_is_private_and_removed_on_stop(serve, sock_path):
    server = serve()
    assert stat.S_ISSOCK(os.stat(sock_path).st_mode)
    assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
    server.stop()
    assert not sock_path.exists()
    server.stop()  # idempotent


def test_stale_socket_from_a_crashed_server_is_replaced(serve, sock_path):
    crashed = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    crashed.bind(str(sock_path))
    crashed.close()  # the file stays, nobody listens
    serve()
    assert request(sock_path, {"x": 1})["ok"] is True


def test_second_server_is_refused_and_the_first_keeps_serving(serve, sock_path):
    serve()
    second = ControlServer(sock_path, lambda req: {"ok": True})
    with pytest.raises(ControlError, match="another fs-consent server is running"):
        second.start()
    assert request(sock_path, {"still": "here"})["echo"] == {"still": "here"}


def test_a_stopped_server_does_not_remove_its_successors_socket(sock_path):
    first = ControlServer(sock_path, lambda req: {"ok": True, "who": 1})
    first.start()
    os.unlink(sock_path)  # e.g. removed by hand while running
    second = ControlServer(sock_path, lambda req: {"ok": True, "who": 2})
    second.start()
    first.stop()
    assert request(sock_path, {})["who"] == 2
    second.stop()


def test_refuses_to_replace_something_that_is_not_a_socket(sock_path):
    sock_path.write_text("precious")
    with pytest.raises(ControlError, match="exists and is not a socket"):
        ControlServer(sock_path, lambda req: {}).start()
    assert sock_path.read_text() == "precious"


def test_directory_must_be_private(private_dir):
    os.chmod(private_dir, 0o755)
    with pytest.raises(ControlError, match=r"must be private \(mode 0700\); it is 0755"):
        ControlServer(private_dir / "control.sock", lambda req: {}).start()
    with pytest.raises(ControlError, match="does not exist"):
        ControlServer(private_dir / "missing" / "control.sock", lambda req: {}).start()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the directory away")
def test_directory_must_belong_to_the_server_user(private_dir):
    os.chown(private_dir, 65534, 65534)
    with pytest.raises(ControlError, match=r"must belong to the server's user \(uid 0\)"):
        ControlServer(private_dir / "control.sock", lambda req: {}).start()


def test_path_too_long_is_a_clear_error(private_dir):
    long_path = private_dir / ("x" * 120)
    with pytest.raises(ControlError, match="too long for a unix socket"):
        ControlServer(long_path, lambda req: {}).start()
    with pytest.raises(ControlError, match="too long for a unix socket"):
        request(long_path, {})


def test_oversized_line_is_rejected_without_killing_the_server(serve, sock_path):
    serve()
    conn = raw_connect(sock_path)
    try:
        conn.sendall(b"x" * (MAX_LINE + 10))
    except OSError:
        pass  # the server may already have closed its end
    answer = json.loads(conn.makefile("rb").readline())
    assert answer == {"ok": False, "error": f"request too long (limit {MAX_LINE} bytes)"}
    conn.close()
    assert request(sock_path, {"after": True})["ok"] is True


def test_client_refuses_to_send_an_oversized_request(serve, sock_path):
    serve()
    with pytest.raises(ControlError, match="request too long"):
        request(sock_path, {"blob": "x" * MAX_LINE})


@pytest.mark.parametrize(
    "line, error",
    [(b"not json\n", "bad request: not JSON"), (b"[1, 2]\n", "bad request: expected a JSON object"),
     (b"\xff\xfe\n", "bad request: not JSON")],
)
def test_malformed_requests_get_an_error_answer(serve, sock_path, line, error):
    serve()
    conn = raw_connect(sock_path)
    conn.sendall(line)
    assert json.loads(conn.makefile("rb").readline()) == {"ok": False, "error": error}
    conn.close()


def test_handler_failure_is_an_internal_error_logged_without_the_request(serve, sock_path, caplog):
    def handler(req):
        raise KeyError(req["call"] + " of +31612345678")

    serve(handler)
    with caplog.at_level(logging.ERROR, logger="fs_consent.runtime.control"):
        assert request(sock_path, {"call": "uuid-1234"}) == {"ok": False, "error": "internal error"}
    assert "KeyError" in caplog.text
    assert "uuid-1234" not in caplog.text and "612345678" not in caplog.text
    assert request(sock_path, {"call": "x"})["error"] == "internal error"  # still serving


def test_handler_must_return_a_json_object(serve, sock_path):
    serve(lambda req: ["not", "a", "dict"])
    assert request(sock_path, {}) == {"ok": False, "error": "internal error"}


def test_idle_connection_is_closed(serve, sock_path):
    serve(timeout=0.2)
    conn = raw_connect(sock_path)
    assert conn.recv(1) == b""  # closed by the server after the idle timeout
    conn.close()


def test_client_error_when_no_server(private_dir, sock_path):
    with pytest.raises(ControlError, match=r"not running \(no control socket at .*control\.sock\)"):
        request(sock_path, {})
    stale = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    stale.bind(str(sock_path))
    stale.close()
    with pytest.raises(ControlError, match="not running"):
        request(sock_path, {})


def test_client_times_out(serve, sock_path):
    serve(lambda req: gevent.sleep(0.5) or {"ok": True})
    with pytest.raises(ControlError, match=r"did not answer within 0\.2s"):
        request(sock_path, {}, timeout=0.2)


def test_client_rejects_a_malformed_answer(sock_path):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    listener.listen(1)

    def answer(reply):
        conn, _ = listener.accept()
        conn.makefile("rb").readline()
        conn.sendall(reply)
        conn.close()

    try:
        for reply, message in [(b"[]\n", "malformed answer"), (b'{"ok"', "without a complete answer")]:
            greenlet = gevent.spawn(answer, reply)
            with pytest.raises(ControlError, match=message):
                request(sock_path, {})
            greenlet.join()
    finally:
        listener.close()


@pytest.mark.parametrize(
    "peer_uid, server_uid, allowed",
    [(1000, 1000, True), (0, 1000, True), (0, 0, True), (1001, 1000, False), (1000, 0, False)],
)
def test_peer_decision(peer_uid, server_uid, allowed):
    assert peer_allowed(peer_uid, server_uid) is allowed


def connect_as(uid, path):
    """Connect from a forked child running as ``uid``; return the answer line it got."""
    read_end, write_end = os.pipe()
    # forked under gevent's child watcher: once any test has started the server (its seal
    # workers are gevent subprocesses), gevent's SIGCHLD handler reaps every child
    pid = gevent.os.fork_and_watch()
    if pid == 0:  # the child: plain blocking sockets, no gevent, always _exit
        status = 1
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            conn = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
            conn.settimeout(5)
            conn.connect(str(path))
            conn.sendall(b'{"cmd": "withdraw"}\n')
            os.write(write_end, conn.makefile("rb").readline())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    _pid, status = gevent.os.waitpid(pid, 0)  # cooperative: the hub (and so the server) keeps running
    answer = os.read(read_end, 4096)
    os.close(read_end)
    assert os.waitstatus_to_exitcode(status) == 0
    return answer


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another uid")
def test_other_uid_is_refused_by_peer_credentials(serve, private_dir, sock_path):
    calls = []
    serve(lambda req: calls.append(req) or {"ok": True})
    # loosen the file modes after start() so that only the SO_PEERCRED check stands in the way
    os.chmod(private_dir, 0o711)
    os.chmod(sock_path, 0o666)
    assert json.loads(connect_as(65534, sock_path)) == {"ok": False, "error": "permission denied"}
    assert calls == []
