"""The CLI never creates a ledger by accident and never shows a traceback (issue 11, finding 6).

Real data dirs and real damage: a mistyped ``--data-dir``, a file named as the data dir,
a truncated, emptied, overwritten or page-damaged ``ledger.db``, a write lock held by
another process (or another connection) for longer than ``--lock-timeout``, a ledger
whose content makes a command fail in a way nobody foresaw, and on PostgreSQL a
database without the schema. Each is one line on stderr, through click's CliRunner and
through ``python -m fs_consent.cli`` in its own process.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from fs_consent.cli import CliGroup, main
from fs_consent.store.connection import close_database, open_database

from ..ledger_data import DAY, DataDir

CLEAN_ENV = {"FS_CONSENT_CONFIG": None, "FS_CONSENT_DATA_DIR": None, "FS_CONSENT_LOCK_TIMEOUT": None}
ADD_REQUEST = ("requests", "add", "--ref", "AVG-1", "--kind", "erase", "--received", "2026-11-02",
               "--identity-verified")
#: every command that reads or writes the ledger (serve and keys init may create one)
LEDGER_COMMANDS = [
    ("calls", "list"),
    ("calls", "show", "0f8b3c1e-aaaa-bbbb-cccc-000000000000"),
    ("recordings", "list"),
    ("recordings", "show", "0" * 32),
    ("recordings", "export", "0" * 32, "--out", "out.wav"),
    ("recordings", "export", "0" * 32, "--case", "PV-1", "--out", "export"),
    ("recordings", "play", "0" * 32, "--player", "cat"),
    ("withdraw", "0f8b3c1e-aaaa-bbbb-cccc-000000000000"),
    ("purge",),
    ("purge", "--dry-run"),
    ("hold", "list"),
    ("hold", "add", "0" * 32, "--reason", "other", "--case", "PV-1"),
    ("hold", "release", "1"),
    ADD_REQUEST,
    ("requests", "list"),
    ("requests", "show", "AVG-1"),
    ("requests", "extend", "AVG-1", "--reason", "busy"),
    ("requests", "decide", "AVG-1", "--decision", "granted", "--reason", "done"),
    ("subject", "find", "--phone", "06 1234 5678"),
    ("subject", "erase", "--phone", "06 1234 5678", "--request", "AVG-1"),
    ("subject", "restrict", "--phone", "06 1234 5678", "--request", "AVG-1"),
    ("subject", "object", "--phone", "06 1234 5678", "--request", "AVG-1"),
    ("subject", "export", "--phone", "06 1234 5678", "--request", "AVG-1", "--out", "access"),
    ("audit", "verify"),
    ("audit", "export"),
    ("audit", "checkpoint"),
    ("report",),
    ("compliance",),
]


def cli(data_dir: Path, *args: str, input: str | None = None):
    close_database()
    try:
        return CliRunner(env=CLEAN_ENV).invoke(main, ["--data-dir", str(data_dir), *args], input=input)
    finally:
        close_database()


def run(data_dir: Path, *args: str, prefix: tuple[str, ...] = (), timeout: float = 60) -> subprocess.CompletedProcess:
    """The real command in its own process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FS_CONSENT_")}
    return subprocess.run([*prefix, sys.executable, "-m", "fs_consent.cli", "--data-dir", str(data_dir), *args],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=data_dir.parent)


def one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def installed(tmp_path) -> DataDir:
    """A real installation with calls and recordings; the ledger closed (its WAL checkpointed)."""
    data = DataDir(tmp_path / "data")
    for n in range(3):
        data.add_call(age=n * DAY)
    for n in range(400):  # enough rows for the call table to span many pages
        data.add_call(age=n * DAY, recording=None, number=None)
    close_database()
    assert not (data.root / "ledger.db-wal").exists()
    yield data
    close_database()


@pytest.fixture
def ledger_file(installed) -> Path:
    return installed.root / "ledger.db"


# --- no ledger where --data-dir says ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("command", LEDGER_COMMANDS, ids=" ".join)
def test_a_mistyped_data_dir_is_refused_and_nothing_is_created(installed, tmp_path, command):
    typo = tmp_path / "dat"  # the installation is tmp_path/"data"
    before = tree(tmp_path)
    result = cli(typo, *command)
    assert result.exit_code == 2, result.output
    assert one_line(result.stderr) == f"Error: no ledger at {typo}: is --data-dir right?"
    assert result.stdout == ""
    assert not typo.exists()
    assert tree(tmp_path) == before


def test_a_data_dir_without_a_ledger_db_is_refused_and_left_as_it_was(tmp_path):
    data = tmp_path / "data"
    (data / "keys").mkdir(parents=True)  # keys by hand, no ledger yet: serve would create it
    for command in (("calls", "list"), ADD_REQUEST, ("report",)):
        result = cli(data, *command)
        assert (result.exit_code, one_line(result.stderr)) == (2, f"Error: no ledger at {data}: is --data-dir right?")
    assert tree(data) == ["keys"]


@pytest.mark.slow
def test_a_mistyped_data_dir_in_a_real_process(installed, tmp_path):
    typo = tmp_path / "dat"
    for command in (("calls", "list"), ADD_REQUEST, ("withdraw", "some-call"), ("compliance",)):
        proc = run(typo, *command)
        assert proc.returncode == 2, proc.stderr
        assert one_line(proc.stderr) == f"Error: no ledger at {typo}: is --data-dir right?"
        assert proc.stdout == ""
    assert not typo.exists()


def test_an_empty_sqlite_database_is_no_ledger_either(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    sqlite3.connect(data / "ledger.db").execute("PRAGMA user_version = 0").close()  # valid SQLite, no tables
    result = cli(data, "calls", "list")
    assert (result.exit_code, one_line(result.stderr)) == (2, f"Error: no ledger at {data}: is --data-dir right?")
    conn = sqlite3.connect(data / "ledger.db")
    assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)  # no table was created
    conn.close()


def test_keys_init_still_creates_the_data_dir_and_its_ledger(tmp_path):
    data = tmp_path / "new"
    result = cli(data, "keys", "init")
    assert result.exit_code == 0, result.output
    assert (data / "ledger.db").is_file()  # the key change is in the audit trail
    result = cli(data, "calls", "list")
    assert (result.exit_code, result.stdout.strip()) == (0, "(none)")


# --- the data dir is a file, or unreadable ---------------------------------------------------


@pytest.mark.parametrize("command", [("calls", "list"), ADD_REQUEST, ("compliance",), ("keys", "init"), ("serve",)],
                         ids=" ".join)
def test_a_file_as_data_dir_is_one_error(tmp_path, command):
    afile = tmp_path / "notes.txt"
    afile.write_text("not a directory\n")
    result = cli(afile, *command)
    assert result.exit_code == 2, result.output
    assert one_line(result.stderr) == f"Error: the data dir {afile} is not a directory: is --data-dir right?"
    assert afile.read_text() == "not a directory\n"


@pytest.mark.slow
def test_a_file_as_data_dir_in_a_real_process(tmp_path):
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    for command in (("calls", "list"), ("keys", "init"), ("requests", "list")):
        proc = run(afile, *command)
        assert proc.returncode == 2, proc.stderr
        assert one_line(proc.stderr) == f"Error: the data dir {afile} is not a directory: is --data-dir right?"


def _without_dac_override() -> tuple[str, ...]:
    """Run as root without the capabilities that ignore file modes (so 0o000 means something)."""
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        pytest.skip("root, and no setpriv to drop CAP_DAC_OVERRIDE with")
    return ("setpriv", "--bounding-set", "-dac_override,-dac_read_search")


@pytest.mark.slow
def test_an_unreadable_data_dir_or_ledger_is_one_error(installed, ledger_file):
    prefix = _without_dac_override()
    os.chmod(ledger_file, 0)
    try:
        proc = run(installed.root, "calls", "list", prefix=prefix)
        assert proc.returncode == 1, proc.stderr
        assert one_line(proc.stderr) == f"Error: cannot read the ledger at {ledger_file}: Permission denied"
    finally:
        os.chmod(ledger_file, 0o600)
    os.chmod(installed.root, 0)
    try:
        proc = run(installed.root, "calls", "list", prefix=prefix)
        assert proc.returncode == 1, proc.stderr
        assert one_line(proc.stderr) == f"Error: cannot read the data dir {installed.root}: Permission denied"
    finally:
        os.chmod(installed.root, 0o700)


# --- a damaged database ----------------------------------------------------------------------


def test_a_truncated_ledger_is_one_error_naming_the_file(ledger_file):
    whole = ledger_file.stat().st_size
    os.truncate(ledger_file, whole // 2)
    damaged = ledger_file.read_bytes()
    expected = f"Error: the ledger at {ledger_file} is damaged: truncated to {whole // 2} of {whole} bytes"
    for command in (("calls", "list"), ADD_REQUEST, ("report",), ("audit", "verify")):
        result = cli(ledger_file.parent, *command)
        assert (result.exit_code, one_line(result.stderr)) == (1, expected), result.output
    proc = run(ledger_file.parent, "calls", "list")
    assert (proc.returncode, one_line(proc.stderr)) == (1, expected)
    assert ledger_file.read_bytes() == damaged  # not "repaired" into a new ledger
    assert not ledger_file.with_name("ledger.db-wal").exists()


@pytest.mark.parametrize("content, detail", [
    (b"", "the file is empty (0 bytes)"),
    (b"SQLite format 3\x00\x10\x00", "truncated to 18 bytes"),
    (b"calls,outcome\nabc,granted\n" * 200, "it is not a SQLite database file"),
])
@pytest.mark.slow
def test_an_emptied_or_foreign_ledger_file_is_one_error(ledger_file, content, detail):
    ledger_file.write_bytes(content)
    result = cli(ledger_file.parent, "calls", "list")
    assert (result.exit_code, one_line(result.stderr)) == (1, f"Error: the ledger at {ledger_file} is damaged: {detail}")
    proc = run(ledger_file.parent, *ADD_REQUEST)
    assert (proc.returncode, one_line(proc.stderr)) == (1, f"Error: the ledger at {ledger_file} is damaged: {detail}")
    assert ledger_file.read_bytes() == content


@pytest.mark.slow
def test_a_damaged_page_met_during_a_command_is_one_error(ledger_file):
    """The header is whole, but the call table's root page is garbage: SQLite notices only
    when the command reads it ("database disk image is malformed")."""
    conn = sqlite3.connect(ledger_file)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'call'").fetchone()[0]
    conn.close()
    with open(ledger_file, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xde\xad\xbe\xef" * (page_size // 4))
    expected = f"Error: the ledger at {ledger_file} is damaged: database disk image is malformed"
    result = cli(ledger_file.parent, "calls", "list")
    assert (result.exit_code, one_line(result.stderr)) == (1, expected)
    proc = run(ledger_file.parent, "report")
    assert (proc.returncode, one_line(proc.stderr)) == (1, expected)


# --- a lock held by another process ------------------------------------------------------------


HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN " + sys.argv[2])
print("holding", flush=True)
sys.stdin.read()  # until the test closes our stdin
conn.execute("ROLLBACK")
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["EXCLUSIVE", "IMMEDIATE"])
def test_a_ledger_locked_by_another_process_is_waited_for_then_one_error(ledger_file, mode):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(ledger_file), mode], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "holding\n"
        started = time.monotonic()
        proc = run(ledger_file.parent, "--lock-timeout", "700ms", *ADD_REQUEST)
        waited = time.monotonic() - started
        assert proc.returncode == 1, proc.stderr
        assert one_line(proc.stderr) == (f"Error: the ledger at {ledger_file} is locked by another process; "
                                         "tried for 0.7 s")
        assert waited >= 0.7
        reader = run(ledger_file.parent, "calls", "list", "--limit", "1")  # WAL: reading is never blocked
        assert reader.returncode == 0, reader.stderr
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=10) == 0
    proc = run(ledger_file.parent, *ADD_REQUEST)  # the lock is gone: it goes through
    assert proc.returncode == 0, proc.stderr


def test_a_lock_held_by_another_connection_in_process(ledger_file):
    holder = sqlite3.connect(ledger_file, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        result = CliRunner(env=CLEAN_ENV).invoke(
            main, ["--lock-timeout", "0.3", "--data-dir", str(ledger_file.parent), *ADD_REQUEST])
        assert time.monotonic() - started >= 0.3
        assert result.exit_code == 1, result.output
        assert one_line(result.stderr) == (f"Error: the ledger at {ledger_file} is locked by another process; "
                                           "tried for 0.3 s")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        close_database()


def test_the_lock_timeout_is_documented_and_bounded(tmp_path):
    result = CliRunner(env=CLEAN_ENV).invoke(main, ["--help"])
    assert "--lock-timeout DURATION" in result.output and "[default: 10s]" in result.output
    assert "Exit status: 0 done; 1 failed" in result.output
    result = CliRunner(env=CLEAN_ENV).invoke(main, ["--lock-timeout", "2h", "--data-dir", str(tmp_path), "calls",
                                                    "list"])
    assert result.exit_code == 2
    assert "Invalid value for '--lock-timeout': at most 3600 s (1h), got 7200 s" in result.stderr
    result = CliRunner(env={**CLEAN_ENV, "FS_CONSENT_LOCK_TIMEOUT": "250ms"}).invoke(
        main, ["--data-dir", str(tmp_path / "x"), "calls", "list"])
    assert result.exit_code == 2  # the environment's value was read (and the missing ledger refused)


# --- anything else: one line, the exception's type, no personal value ------------------------


@pytest.mark.slow
def test_an_unforeseen_failure_shows_its_type_only(installed, ledger_file):
    """A real ledger whose schema version holds a phone number (damage nobody foresaw):
    the ValueError's message would show it; the line does not."""
    conn = sqlite3.connect(ledger_file)
    conn.execute("UPDATE meta SET value = '06 1234 5678' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    expected = "Error: unexpected ValueError; run with --log-level debug for details"
    result = cli(installed.root, "calls", "list")
    assert (result.exit_code, one_line(result.stderr)) == (1, expected)
    proc = run(installed.root, "subject", "find", "--phone", "06 1234 5678")
    assert (proc.returncode, one_line(proc.stderr)) == (1, expected)
    assert "1234" not in proc.stderr + proc.stdout
    debug = run(installed.root, "--log-level", "debug", "calls", "list")
    assert debug.returncode == 1
    assert debug.stderr.splitlines()[-1] == expected
    assert "level=debug logger=fs_consent.cli" in debug.stderr and "Traceback" in debug.stderr  # the details
    assert len(debug.stderr.splitlines()) == 2  # a log record is one line too


def test_the_top_level_turns_any_exception_into_one_line():
    group = CliGroup("fs-consent")

    @group.command()
    def number():
        raise KeyError("+31612345678")

    @group.command()
    def disk():
        raise OSError(28, "No space left on device", "/srv/fs-consent/export/0612345678.wav")

    @group.command()
    def refusal():
        raise click.ClickException("a refusal the command chose to make")

    @group.command()
    def status():
        sys.exit(3)

    runner = CliRunner()
    result = runner.invoke(group, ["number"])
    assert (result.exit_code, one_line(result.stderr)) == (
        1, "Error: unexpected KeyError; run with --log-level debug for details")
    result = runner.invoke(group, ["disk"])
    assert (result.exit_code, one_line(result.stderr)) == (
        1, "Error: unexpected OSError (No space left on device); run with --log-level debug for details")
    assert runner.invoke(group, ["refusal"]).stderr == "Error: a refusal the command chose to make\n"
    assert runner.invoke(group, ["status"]).exit_code == 3


# --- PostgreSQL: a database without the schema is no ledger -----------------------------------


@pytest.mark.skipif(not os.environ.get("FS_CONSENT_TEST_DATABASE"), reason="FS_CONSENT_TEST_DATABASE not set")
def test_postgresql_without_the_schema_is_refused_not_created(tmp_path):
    import psycopg

    from fs_consent.core.config import load_config

    from ..harness import TestDatabase

    database = TestDatabase()
    try:
        config = tmp_path / "fs-consent.toml"
        config.write_text(f'[storage]\ndatabase = "{database.url}"\n')
        shown = dict(load_config(config, env={"HOME": str(tmp_path)}).describe())["storage.database"]
        assert database.url.startswith("postgresql://") and "***" in shown  # the password is masked
        for command in (("calls", "list"), ADD_REQUEST, ("report",), ("compliance",)):
            result = cli(tmp_path / "data", "--config", str(config), *command)
            assert result.exit_code == 2, result.output
            assert one_line(result.stderr) == f"Error: no ledger at {shown}: is storage.database right?"
        with psycopg.connect(database.url) as conn:
            tables = conn.execute("SELECT count(*) FROM information_schema.tables "
                                  "WHERE table_schema = 'public'").fetchone()[0]
        assert tables == 0
        assert not (tmp_path / "data").exists()
        open_database(database.url)  # what serve does: create the schema
        close_database()
        result = cli(tmp_path / "data", "--config", str(config), "calls", "list")
        assert (result.exit_code, result.stdout.strip()) == (0, "(none)")
    finally:
        close_database()
        database.drop()
