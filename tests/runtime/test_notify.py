"""The sd_notify client, against a real unix datagram socket standing in for systemd."""

from __future__ import annotations

import os
import secrets
import socket

import pytest

from fs_consent.runtime import notify


@pytest.fixture
def systemd(tmp_path):
    """A bound datagram socket and the environment that points at it (a path socket)."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2)
        yield sock, {"NOTIFY_SOCKET": str(path)}


def received(sock) -> list[str]:
    return sock.recv(4096).decode("utf-8").split("\n")


def test_ready_sends_ready_and_status(systemd):
    sock, env = systemd
    assert notify.ready("listening on 127.0.0.1:8040", env=env) is True
    assert received(sock) == ["READY=1", "STATUS=listening on 127.0.0.1:8040"]


def test_ready_without_status_sends_only_ready(systemd):
    sock, env = systemd
    assert notify.ready(env=env)
    assert received(sock) == ["READY=1"]


def test_stopping_watchdog_status_and_extend_timeout(systemd):
    sock, env = systemd
    assert notify.stopping("draining 3 calls", env=env)
    assert received(sock) == ["STOPPING=1", "STATUS=draining 3 calls"]
    assert notify.watchdog(env=env)
    assert received(sock) == ["WATCHDOG=1"]
    assert notify.status("2 live calls", env=env)
    assert received(sock) == ["STATUS=2 live calls"]
    assert notify.extend_timeout(90, env=env)
    assert received(sock) == ["EXTEND_TIMEOUT_USEC=90000000"]


def test_a_status_text_cannot_inject_another_assignment(systemd):
    sock, env = systemd
    assert notify.status("fine\nREADY=1", env=env)
    assert received(sock) == ["STATUS=fine READY=1"]


def test_abstract_namespace_socket():
    name = f"fs-consent-test-{secrets.token_hex(8)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert notify.ready("up", env={"NOTIFY_SOCKET": "@" + name})
        assert received(sock) == ["READY=1", "STATUS=up"]


def test_reads_the_process_environment_by_default(systemd, monkeypatch):
    sock, env = systemd
    monkeypatch.setenv("NOTIFY_SOCKET", env["NOTIFY_SOCKET"])
    assert notify.watchdog()
    assert received(sock) == ["WATCHDOG=1"]


@pytest.mark.parametrize("env", [{}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "vsock:2:1234"}])
def test_everything_is_a_no_op_without_a_usable_socket(env):
    assert notify.ready("up", env=env) is False
    assert notify.stopping(env=env) is False
    assert notify.watchdog(env=env) is False
    assert notify.status("x", env=env) is False
    assert notify.extend_timeout(5, env=env) is False


def test_no_op_when_the_process_has_no_notify_socket(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.ready() is False


def test_a_vanished_socket_is_reported_not_raised(tmp_path, caplog):
    env = {"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}
    assert notify.ready("up", env=env) is False
    assert "could not notify systemd (READY, STATUS)" in caplog.text


def test_watchdog_interval_is_half_of_watchdog_usec():
    assert notify.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert notify.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0


@pytest.mark.parametrize("env", [
    {},
    {"WATCHDOG_USEC": ""},
    {"WATCHDOG_USEC": "0"},
    {"WATCHDOG_USEC": "soon"},
    {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"},  # inherited from another process
    {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"},
])
def test_watchdog_interval_is_none_when_not_ours(env):
    if env.get("WATCHDOG_PID") == "1" and os.getpid() == 1:
        pytest.skip("running as PID 1")
    assert notify.watchdog_interval(env) is None


def test_watchdog_interval_reads_the_process_environment(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert notify.watchdog_interval() == 1.0
