"""`fs-consent check`: every failure it reports, on real files, modes, databases and sockets.

The FreeSWITCH checks talk to a small TCP server on 127.0.0.1 that replays what a real
FreeSWITCH sent in the inbound captures (good and bad password), and asserts that what
the check sent is byte for byte what the capture's client sent.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from peewee import SqliteDatabase

from fs_consent.cli import main
from fs_consent.reports.check import FAIL, OK, WARN, filesystem_type, run_checks
from fs_consent.secure import keys
from fs_consent.store import ledger
from fs_consent.store.connection import close_database

from ..ledger_data import DataDir

IS_ROOT = os.geteuid() == 0
LINE = re.compile(r"^(ok|warn|fail) +(\S+) +(\S.*)$")


@pytest.fixture
def install(tmp_path):
    """A working installation: keys, ledger (current schema), store and spool."""
    data = DataDir(tmp_path / "data")
    close_database()
    return data


def checks(data: DataDir, config: Path | None = None) -> list:
    return list(run_checks(config, data.root, env={"HOME": str(data.root)}))


def by_status(results, status: str) -> list[tuple[str, str]]:
    return [(r.name, r.detail) for r in results if r.status == status]


def only_failure(results) -> tuple[str, str]:
    failures = by_status(results, FAIL)
    assert len(failures) == 1, failures
    return failures[0]


def run_cli(data: DataDir, *args: str, config: Path | None = None):
    options = ["--config", str(config)] if config else []
    return CliRunner().invoke(main, [*options, "--data-dir", str(data.root), "check", *args],
                              env={"HOME": str(data.root), "FS_CONSENT_CONFIG": None})


def write_config(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    os.chmod(path, mode)
    return path


def fs_type(path: Path) -> str:
    return subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True,
                          check=True).stdout.strip()


def set_schema_version(data: DataDir, value: str) -> None:
    db = SqliteDatabase(str(data.root / "ledger.db"))
    with db.bind_ctx([ledger.Meta]):
        ledger.Meta.update(value=value).where(ledger.Meta.key == "schema_version").execute()
    db.close()


def schema_version(data: DataDir) -> str:
    db = SqliteDatabase(str(data.root / "ledger.db"))
    with db.bind_ctx([ledger.Meta]):
        value = ledger.Meta.get(ledger.Meta.key == "schema_version").value
    db.close()
    return value


# --- the whole run ----------------------------------------------------------------------


def test_a_working_installation_passes_with_one_line_per_check(install):
    result = run_cli(install)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    names = [m.group(2) for m in parsed]
    assert names == ["config", "keys", "keys", "keys", "keys", "keys", "data-dir", "store", "spool", "spool",
                     "disk", "database", "node", "freeswitch"]
    assert "ok    keys       field.key 0600" in lines
    assert "fail" not in [m.group(1) for m in parsed]
    assert f"schema version {ledger.SCHEMA_VERSION}" in lines[names.index("database")]


def test_json_format_lists_the_same_checks(install):
    table = run_cli(install)
    result = run_cli(install, "--format", "json")
    assert result.exit_code == 0
    rows = json.loads(result.output)
    assert [(r["status"], r["check"]) for r in rows] == [
        tuple(LINE.match(line).group(1, 2)) for line in table.output.splitlines()]
    assert all(set(r) == {"status", "check", "detail"} for r in rows)


def test_a_failure_exits_1_in_both_formats(install):
    os.chmod(install.keys_dir / keys.FIELD_KEY_FILE, 0o644)
    table, as_json = run_cli(install), run_cli(install, "--format", "json")
    assert table.exit_code == 1 and as_json.exit_code == 1
    assert any(line.startswith("fail  keys") and "field.key" in line for line in table.output.splitlines())
    assert [r for r in json.loads(as_json.output) if r["status"] == "fail"][0]["check"] == "keys"


def test_a_fresh_data_dir_only_warns(tmp_path):
    """Nothing there yet: everything is created on the first start, nothing fails, nothing is created now."""
    root = tmp_path / "new"
    results = list(run_checks(None, root, env={"HOME": str(tmp_path)}))
    assert by_status(results, FAIL) == []
    assert {name for name, _ in by_status(results, WARN)} == {"keys", "data-dir", "store", "spool", "database"}
    assert not root.exists()


# --- configuration --------------------------------------------------------------------------


def test_an_invalid_config_is_one_fail_line_not_a_traceback(install, tmp_path):
    config = write_config(tmp_path, '[consent]\ntimeout = "99m"\n')
    result = run_cli(install, config=config)
    assert result.exit_code == 1
    assert result.output.splitlines() == [result.output.strip()]
    assert result.output.startswith("fail  config") and "consent.timeout" in result.output
    assert "Traceback" not in result.output


def test_a_config_holding_the_esl_password_must_not_be_world_readable(install, tmp_path):
    config = write_config(tmp_path, '[freeswitch]\npassword = "s3cret-pw"\n', mode=0o644)
    name, detail = only_failure(checks(install, config))
    assert name == "config" and "freeswitch.password" in detail and "chmod 640" in detail
    assert "s3cret-pw" not in detail
    os.chmod(config, 0o640)
    assert by_status(checks(install, config), FAIL) == []


def test_a_database_password_counts_as_a_secret_too(install, tmp_path):
    config = write_config(tmp_path, f'[storage]\ndatabase = "sqlite:///{install.root}/ledger.db"\n', mode=0o644)
    assert by_status(checks(install, config), FAIL) == []  # no password: 0644 is fine
    config = write_config(tmp_path, '[storage]\ndatabase = "postgresql://fs:pw-in-url@127.0.0.1:1/fs"\n',
                          mode=0o604)
    failures = dict(by_status(checks(install, config), FAIL))
    assert "storage.database" in failures["config"] and "pw-in-url" not in str(failures)


def test_a_world_writable_config_fails_even_without_a_secret(install, tmp_path):
    config = write_config(tmp_path, "[server]\nmax_calls = 10\n", mode=0o666)
    name, detail = only_failure(checks(install, config))
    assert name == "config" and "writable by everyone" in detail


# --- keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize("file, mode", [(keys.IDENTITY_FILE, 0o644), (keys.FIELD_KEY_FILE, 0o640),
                                        (keys.SIGNING_KEY_FILE, 0o604)])
def test_a_private_key_file_open_to_others_fails(install, file, mode):
    os.chmod(install.keys_dir / file, mode)
    name, detail = only_failure(checks(install))
    assert name == "keys" and file in detail and f"{mode:04o}" in detail and "chmod 600" in detail


@pytest.mark.skipif(not IS_ROOT, reason="chown to another user needs root")
def test_a_key_file_of_another_user_fails(install):
    os.chown(install.keys_dir / keys.FIELD_KEY_FILE, 4321, 4321)
    name, detail = only_failure(checks(install))
    assert name == "keys" and "owned by uid 4321" in detail


def test_a_recipients_file_others_can_write_fails(install):
    os.chmod(install.keys_dir / keys.RECIPIENTS_FILE, 0o666)
    name, detail = only_failure(checks(install))
    assert name == "keys" and "recipients.txt is writable by group/others" in detail


def test_a_recipients_file_listing_nobody_fails(install):
    (install.keys_dir / keys.IDENTITY_FILE).unlink()
    (install.keys_dir / keys.RECIPIENTS_FILE).write_text("# nobody yet\n")
    name, detail = only_failure(checks(install))
    assert name == "keys" and "lists no recipient" in detail and "nothing is recorded" in detail


@pytest.mark.parametrize("file, damage, message", [
    (keys.IDENTITY_FILE, "AGE-SECRET-KEY-1NOTAKEY\n", "not an age X25519 identity"),
    (keys.RECIPIENTS_FILE, "age1notakey\n", "line 1 is not an age X25519 recipient"),
    (keys.FIELD_KEY_FILE, "not base64!\n", "not valid base64"),
    (keys.SIGNING_KEY_FILE, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not a PEM Ed25519"),
])
def test_a_key_file_that_does_not_parse_fails(install, file, damage, message):
    path = install.keys_dir / file
    path.write_text(damage)
    failures = by_status(checks(install), FAIL)
    assert failures and all(name == "keys" for name, _ in failures)
    assert any(message in detail for _, detail in failures), failures


def test_a_missing_field_key_next_to_the_other_keys_fails(install):
    (install.keys_dir / keys.FIELD_KEY_FILE).unlink()
    name, detail = only_failure(checks(install))
    assert name == "keys" and "restore it from the backup" in detail


def test_a_keys_dir_open_to_others_fails(install):
    os.chmod(install.keys_dir, 0o755)
    name, detail = only_failure(checks(install))
    assert name == "keys" and "0755" in detail and "chmod 700" in detail


def test_a_write_only_server_is_fine(install):
    """The identity moved offline, the recipients still there: the recommended setup."""
    (install.keys_dir / keys.IDENTITY_FILE).unlink()
    results = checks(install)
    assert by_status(results, FAIL) == []
    assert any("write-only server" in detail for name, detail in by_status(results, OK) if name == "keys")
    assert run_cli(install).exit_code == 0


# --- directories ------------------------------------------------------------------------------


@pytest.mark.skipif(not IS_ROOT, reason="chown to another user needs root")
def test_a_data_dir_of_another_user_fails(install):
    os.chown(install.root, 4321, 4321)
    name, detail = only_failure(checks(install))
    assert name == "data-dir" and "owned by uid 4321" in detail


def test_a_data_dir_others_can_write_fails_one_they_can_list_warns(install):
    os.chmod(install.root, 0o777)
    name, detail = only_failure(checks(install))
    assert name == "data-dir" and "writable by group/others" in detail
    os.chmod(install.root, 0o755)
    results = checks(install)
    assert by_status(results, FAIL) == []
    assert ("data-dir", f"{install.root} can be listed by group/others (mode 0755); run: chmod 700 "
            f"{install.root}") in by_status(results, WARN)


def unwritable(path: Path):
    """Make ``path`` unwritable even for root (immutable); returns the undo."""
    if IS_ROOT:
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not available here")
        return lambda: subprocess.run(["chattr", "-i", str(path)], check=True)
    os.chmod(path, 0o500)
    return lambda: os.chmod(path, 0o700)


def test_a_store_that_cannot_be_written_fails(install):
    undo = unwritable(install.store)
    try:
        name, detail = only_failure(checks(install))
    finally:
        undo()
    assert name == "store" and "not writable" in detail


def test_a_store_that_is_a_file_fails(install):
    shutil.rmtree(install.store)
    install.store.write_text("")
    name, detail = only_failure(checks(install))
    assert name == "store" and "not a directory" in detail


def test_a_spool_others_can_enter_fails(install):
    os.chmod(install.spool, 0o705)
    name, detail = only_failure(checks(install))
    assert name == "spool" and "accessible by others" in detail


def test_a_spool_that_cannot_be_written_fails(install):
    undo = unwritable(install.spool)
    try:
        name, detail = only_failure(checks(install))
    finally:
        undo()
    assert name == "spool" and "not writable" in detail


def test_a_spool_on_disk_warns_one_on_tmpfs_is_ok(install, tmp_path):
    if fs_type(install.spool) == "tmpfs":
        pytest.skip("the test's tmp dir is a tmpfs")
    assert [detail for name, detail in by_status(checks(install), WARN) if name == "spool"] == [
        f"{install.spool} is on {filesystem_type(install.spool)}, not tmpfs: plaintext recordings reach "
        "the disk while their call lasts"]
    shm = Path("/dev/shm")
    if not shm.is_dir() or fs_type(shm) != "tmpfs":
        pytest.skip("no tmpfs at /dev/shm")
    spool = Path(os.path.realpath(shm)) / f"fs-consent-check-{os.getpid()}"
    spool.mkdir(mode=0o700)
    try:
        config = write_config(tmp_path, f'[storage]\nspool_dir = "{spool}"\n')
        results = checks(install, config)
    finally:
        spool.rmdir()
    assert ("spool", f"{spool} is on tmpfs: plaintext stays in RAM") in by_status(results, OK)


def test_too_little_free_space_warns(install, tmp_path):
    from fs_consent.core.config import load_config
    from fs_consent.reports.check import check_free_space

    config = load_config(data_dir=install.root, env={"HOME": str(tmp_path)})
    assert check_free_space(config).status == OK  # the test machine has room for a few recordings
    free = shutil.disk_usage(install.store).free
    low = check_free_space(config, {"store": free * 4, "spool": 1})
    assert low.status == WARN and low.detail.startswith("store has less than")


# --- the database -----------------------------------------------------------------------------


def test_a_database_from_a_newer_fs_consent_fails(install):
    set_schema_version(install, str(ledger.SCHEMA_VERSION + 1))
    name, detail = only_failure(checks(install))
    assert name == "database" and "newer" in detail and "upgrade fs-consent" in detail


def test_an_older_database_warns_and_is_not_migrated(install):
    set_schema_version(install, "1")
    results = checks(install)
    assert by_status(results, FAIL) == []
    assert any(name == "database" and "upgraded on the next start" in detail
               for name, detail in by_status(results, WARN))
    assert schema_version(install) == "1"  # check never migrates


def test_a_file_that_is_not_a_database_fails(install):
    for suffix in ("", "-wal", "-shm"):
        (install.root / f"ledger.db{suffix}").unlink(missing_ok=True)
    (install.root / "ledger.db").write_bytes(b"this is not SQLite\n" * 100)
    name, detail = only_failure(checks(install))
    assert name == "database" and "not a database" in detail


def test_a_database_without_a_schema_version_fails(install):
    db = SqliteDatabase(str(install.root / "ledger.db"))
    db.execute_sql("DELETE FROM meta")
    db.close()
    name, detail = only_failure(checks(install))
    assert name == "database" and "no schema version" in detail


def test_an_unreachable_database_server_fails(install, tmp_path):
    with socket.socket() as holder:  # a bound port that does not listen refuses connections
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        config = write_config(tmp_path, f'[storage]\ndatabase = "postgresql://fs:pw@127.0.0.1:{port}/fs"\n')
        name, detail = only_failure(checks(install, config))
    assert name == "database" and "cannot connect to postgresql://fs:***@127.0.0.1" in detail
    assert "pw@" not in detail


# --- FreeSWITCH's inbound event socket --------------------------------------------------------


def dialogue(captures_dir: Path, name: str) -> tuple[bytes, dict[bytes, bytes]]:
    """From a capture: FreeSWITCH's greeting, and what it sent after each client command."""
    greeting, replies, last = b"", {}, None
    for line in (captures_dir / f"{name}.wire.jsonl").read_text().splitlines():
        chunk = json.loads(line)
        data = base64.b64decode(chunk["b64"])
        if chunk["dir"] == "SEND":
            last = data
            replies[last] = b""
        elif last is None:
            greeting += data
        else:
            replies[last] += data
    return greeting, replies


class ReplayingSwitch:
    """A one-connection TCP server on 127.0.0.1 that answers with captured bytes.

    ``greeting``: sent on connect (None: say nothing; b"": hang up at once). Each complete command from the
    client is looked up in ``replies``; after a reply holding FreeSWITCH's goodbye it
    closes, like FreeSWITCH. ``received`` is every byte the client sent.
    """

    def __init__(self, greeting: bytes | None, replies: dict[bytes, bytes] | None = None):
        self.greeting, self.replies = greeting, replies or {}
        self.received = b""
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            if not self.greeting:
                if self.greeting is None:
                    conn.recv(1)  # silent until the client gives up
                return
            conn.sendall(self.greeting)
            pending = b""
            while data := conn.recv(4096):
                self.received += data
                pending += data
                while b"\n\n" in pending:
                    command, pending = pending.split(b"\n\n", 1)
                    reply = self.replies.get(command + b"\n\n")
                    if reply is None:
                        return
                    conn.sendall(reply)
                    if b"Disconnected, goodbye." in reply:
                        return

    def close(self) -> None:
        self.listener.close()
        self.thread.join(timeout=10)


@pytest.fixture
def switch():
    servers = []

    def start(greeting, replies=None):
        servers.append(ReplayingSwitch(greeting, replies))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def esl_config(tmp_path: Path, port: int, password: str | None) -> Path:
    text = f'[freeswitch]\ninbound = "127.0.0.1:{port}"\n'
    if password is not None:
        text += f'password = "{password}"\n'
    return write_config(tmp_path, text, mode=0o640)


def freeswitch_line(results) -> tuple[str, str]:
    [line] = [(r.status, r.detail) for r in results if r.name == "freeswitch"]
    return line


def test_the_event_socket_accepting_the_password_is_ok(install, tmp_path, switch, captures_dir):
    greeting, replies = dialogue(captures_dir, "inbound_commands")
    server = switch(greeting, replies)
    config = esl_config(tmp_path, server.port, "ClueCon")
    result = run_cli(install, config=config)
    assert result.exit_code == 0, result.output
    assert f"ok    freeswitch the inbound event socket at 127.0.0.1:{server.port} accepted the password" in (
        result.output.splitlines())
    server.thread.join(timeout=10)
    tx = (captures_dir / "inbound_commands.tx.bin").read_bytes()
    assert server.received == tx[:len(b"auth ClueCon\n\n")] + tx[-len(b"exit\n\n"):]  # the capture's bytes


def test_a_rejected_password_fails(install, tmp_path, switch, captures_dir):
    server = switch(*dialogue(captures_dir, "inbound_badauth"))
    config = esl_config(tmp_path, server.port, "WrongPassword")
    status, detail = freeswitch_line(checks(install, config))
    assert status == FAIL and "rejected the password" in detail and "-ERR invalid" in detail
    assert "WrongPassword" not in detail
    server.thread.join(timeout=10)
    assert server.received == (captures_dir / "inbound_badauth.tx.bin").read_bytes()


def test_a_refused_connection_fails(install, tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        config = esl_config(tmp_path, holder.getsockname()[1], "ClueCon")
        status, detail = freeswitch_line(checks(install, config))
    assert status == FAIL and "cannot connect" in detail and "refused" in detail.lower()


def test_a_silent_server_fails_on_the_timeout(install, switch):
    from fs_consent.core.config import load_config
    from fs_consent.reports.check import check_freeswitch

    server = switch(None)
    config = load_config(esl_config(install.root, server.port, "ClueCon"), env={"HOME": str(install.root)})
    result = check_freeswitch(config, timeout=0.3)
    assert result.status == FAIL and "sent no auth/request within 0.3s" in result.detail


def test_a_server_that_hangs_up_at_once_fails(install, tmp_path, switch):
    server = switch(b"")
    status, detail = freeswitch_line(checks(install, esl_config(tmp_path, server.port, "ClueCon")))
    assert status == FAIL and "closed the connection before its auth/request" in detail


def test_a_server_that_is_not_asking_for_auth_fails(install, tmp_path, switch, captures_dir):
    """FreeSWITCH's goodbye (captured) instead of auth/request: e.g. it is shutting down."""
    _, replies = dialogue(captures_dir, "inbound_badauth")
    goodbye = replies[b"auth WrongPassword\n\n"].split(b"\n\n", 1)[1]
    server = switch(goodbye)
    status, detail = freeswitch_line(checks(install, esl_config(tmp_path, server.port, "ClueCon")))
    assert status == FAIL and "'text/disconnect-notice', not auth/request" in detail


def test_an_inbound_address_without_a_password_fails(install, tmp_path):
    status, detail = freeswitch_line(checks(install, esl_config(tmp_path, 8021, None)))
    assert status == FAIL and "password is not set" in detail


@pytest.mark.parametrize("text, message", [
    ('inbound = "localhost"', "freeswitch.inbound: expected HOST:PORT"),
    ('inbound = "127.0.0.1:0"', "freeswitch.inbound: port must be 1 to 65535"),
    ('password = "two\\nlines"', "freeswitch.password: must be one line"),
    ("password = 1234", "freeswitch.password: expected a password in quotes"),
])
def test_bad_freeswitch_settings_name_the_key(install, tmp_path, text, message):
    name, detail = only_failure(checks(install, write_config(tmp_path, f"[freeswitch]\n{text}\n")))
    assert name == "config" and message in detail and "two" not in detail.split(":", 1)[1]


def test_the_password_is_never_shown(install, tmp_path):
    config = write_config(tmp_path, '[freeswitch]\ninbound = "127.0.0.1:8021"\npassword = "Clue-Con-42"\n')
    result = CliRunner().invoke(main, ["--config", str(config), "--data-dir", str(install.root), "config"])
    assert "freeswitch.password = ***" in result.output.splitlines()
    assert "freeswitch.inbound = 127.0.0.1:8021" in result.output.splitlines()
    assert "Clue-Con-42" not in result.output
