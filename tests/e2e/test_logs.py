"""Log lines: one structured line per record, journald-friendly, and no personal data.

The privacy test runs real calls (the emulator over TCP into an in-process server) at
debug level with a distinctive caller number and name, and reads every line logged.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fs_consent.core import logs
from fs_consent.secure.protect import normalise_phone
from fs_consent.store import ledger

from ..harness import Harness

KV_TOKEN = re.compile(r'([A-Za-z0-9_.-]+)=("(?:[^"\\]|\\.)*"|[^\s"=\\]+)(?: |$)')
ESCAPE = re.compile(r'\\(x[0-9a-f]{2}|.)')
UNESCAPED = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"'}


def parse_kv(line: str) -> dict[str, str]:
    """A strict parser of the kv format: every character must belong to a key=value pair."""
    pairs, pos = {}, 0
    while pos < len(line):
        match = KV_TOKEN.match(line, pos)
        assert match, f"not key=value at {line[pos:]!r} in {line!r}"
        key, raw = match.groups()
        if raw.startswith('"'):
            raw = ESCAPE.sub(lambda m: chr(int(m.group(1)[1:], 16)) if m.group(1)[0] == "x" and len(m.group(1)) == 3
                             else UNESCAPED[m.group(1)], raw[1:-1])
        assert key not in pairs, f"{key} twice in {line!r}"
        pairs[key] = raw
        pos = match.end()
    return pairs


@pytest.fixture
def restore_logging():
    """setup() changes process-wide logging: put it back for the other tests."""
    root, ours = logging.getLogger(), logging.getLogger("fs_consent")
    saved = (list(root.handlers), root.level, ours.level)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    ours.setLevel(saved[2])


def captured(level: str = "debug", fmt: str = "kv", env=None) -> io.StringIO:
    stream = io.StringIO()
    logs.setup(level, fmt, stream=stream, env=env if env is not None else {})
    return stream


# --- the format ---------------------------------------------------------------------------


def test_a_kv_line_has_level_logger_event_and_the_fields(restore_logging):
    out = captured()
    logging.getLogger("fs_consent.runtime.driver").info(
        "call ended", extra=logs.fields(call="8f0c2a", outcome="granted", seconds=12.5, hangup_cause=None))
    [line] = out.getvalue().splitlines()
    assert re.fullmatch(r"ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=info logger=fs_consent\.runtime\.driver "
                        r'event="call ended" call=8f0c2a outcome=granted seconds=12\.5 hangup_cause=none', line)


def test_percent_style_calls_keep_working(restore_logging):
    out = captured()
    logging.getLogger("fs_consent.secure.spool").warning("recovery of recording %s failed (%s)", "ab12", "OSError")
    assert parse_kv(out.getvalue().strip())["event"] == "recovery of recording ab12 failed (OSError)"


@given(message=st.text(), values=st.dictionaries(st.from_regex(r"[a-z_]{1,12}", fullmatch=True), st.text()))
def test_any_record_is_one_line_that_parses_back(message, values):
    formatter = logs.StructuredFormatter("kv")
    record = logging.LogRecord("fs_consent.x", logging.INFO, __file__, 1, message, (), None)
    record.fields = values
    line = formatter.format(record)
    assert "\n" not in line and "\r" not in line
    parsed = parse_kv(line)
    assert parsed["event"] == message
    for key, value in values.items():
        name = key + "_" if key in ("ts", "level", "logger", "event", "exc") else key
        assert parsed[name] == value


@given(message=st.text(), value=st.one_of(st.text(), st.integers(), st.floats(allow_nan=False), st.none()))
def test_json_lines_parse_back(message, value):
    record = logging.LogRecord("fs_consent.x", logging.ERROR, __file__, 1, message, (), None)
    record.fields = {"call": value}
    line = logs.StructuredFormatter("json").format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert (parsed["level"], parsed["logger"], parsed["event"], parsed["call"]) == (
        "error", "fs_consent.x", message, value)


def test_a_traceback_stays_on_the_line(restore_logging):
    out = captured()
    try:
        raise KeyError("boom")
    except KeyError:
        logging.getLogger("fs_consent.store.ledger").exception("ledger write failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    exc = parse_kv(lines[0])["exc"]
    assert exc.startswith("Traceback (most recent call last):") and exc.endswith("KeyError: 'boom'")


# --- levels -----------------------------------------------------------------------------------


def test_the_level_filters_and_libraries_never_log_debug(restore_logging):
    out = captured("warning")
    logging.getLogger("fs_consent.runtime.server").info("not shown")
    logging.getLogger("fs_consent.runtime.server").warning("shown")
    assert [parse_kv(line)["event"] for line in out.getvalue().splitlines()] == ["shown"]
    out = captured("debug")
    logging.getLogger("fs_consent.runtime.driver").debug("ours")
    logging.getLogger("peewee").debug("('SELECT ...', ['a caller hash'])")
    logging.getLogger("peewee").info("a library's info")
    assert [parse_kv(line)["event"] for line in out.getvalue().splitlines()] == ["ours", "a library's info"]


def test_setting_up_twice_does_not_double_the_lines(restore_logging):
    first = captured()
    second = captured()
    logging.getLogger("fs_consent").error("once")
    assert first.getvalue() == "" and len(second.getvalue().splitlines()) == 1


def test_announcements_show_whatever_the_level(restore_logging):
    out = captured("error")
    logs.announce("fs-consent listening on 127.0.0.1:8040", data_dir="/var/lib/fs-consent")
    line = parse_kv(out.getvalue().strip())
    assert (line["level"], line["event"], line["data_dir"]) == (
        "info", "fs-consent listening on 127.0.0.1:8040", "/var/lib/fs-consent")


# --- journald -----------------------------------------------------------------------------------


def test_under_journald_no_timestamp_and_a_priority_prefix(restore_logging, tmp_path):
    with open(tmp_path / "journal", "w+") as stream:
        st_ = os.fstat(stream.fileno())
        logs.setup("info", "kv", stream=stream, env={"JOURNAL_STREAM": f"{st_.st_dev}:{st_.st_ino}"})
        logging.getLogger("fs_consent.runtime.server").error("at max_calls")
        logging.getLogger("fs_consent.runtime.server").info("listening")
        stream.seek(0)
        lines = stream.read().splitlines()
    assert lines == ["<3>level=error logger=fs_consent.runtime.server event=\"at max_calls\"",
                     "<6>level=info logger=fs_consent.runtime.server event=listening"]


def test_a_journal_stream_that_is_not_our_stderr_is_not_journald(tmp_path):
    """A child that inherited $JOURNAL_STREAM but writes elsewhere keeps its timestamps."""
    with open(tmp_path / "a", "w") as ours, open(tmp_path / "b", "w") as other:
        st_ = os.fstat(other.fileno())
        assert not logs.under_journald(ours, {"JOURNAL_STREAM": f"{st_.st_dev}:{st_.st_ino}"})
        assert logs.under_journald(other, {"JOURNAL_STREAM": f"{st_.st_dev}:{st_.st_ino}"})
        assert not logs.under_journald(other, {})


# --- the server process: --log-level and logging.format ------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_logs_json_lines_from_the_main_log_level(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[logging]\nformat = "json"\nlevel = "warning"\n')
    env = {**os.environ, "HOME": str(tmp_path)}
    env.pop("JOURNAL_STREAM", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fs_consent.cli", "--log-level", "debug", "--config", str(config),
         "--data-dir", str(tmp_path / "data"), "serve", "--listen", f"127.0.0.1:{free_port()}"],
        env=env, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in proc.stderr:  # ends when the process does: it is stopped below or fails
            lines.append(json.loads(line))
            if "fs-consent listening on" in lines[-1]["event"]:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert lines and "fs-consent listening on" in lines[-1]["event"]
    assert lines[-1]["data_dir"] == str(tmp_path / "data")
    assert {"ts", "level", "logger", "event"} <= set(lines[0])
    assert any(line["level"] == "info" for line in lines)  # --log-level debug beat the config's warning


# --- no personal data, from real calls ------------------------------------------------------------

NUMBER = "0687654329"
NAME = "Wilhelmina Zuiderzee-Knoop"
STAFF = ["Quirijn.Vollenhove", "agent-Ermengarde@default"]  # who took the calls: personal data too


def forms_of(number: str) -> list[str]:
    """The number as it may appear: as dialled, without the trunk 0, international."""
    national = number.lstrip("0")
    return [number, national, f"+31{national}", f"31{national}", f"0031{national}", normalise_phone(number)]


@pytest.mark.parametrize("fmt", ["kv", "json"])
def test_calls_at_debug_level_log_no_number_and_no_name(tmp_path, restore_logging, fmt):
    out = captured("debug", fmt)
    with Harness(tmp_path / "data", recording={"staff_variable": "cc_agent"}) as h:
        calls = [
            # silence: recorded and sealed; taken by one member of staff who transfers to another
            h.call(caller_number=NUMBER, caller_name=NAME, staff=STAFF, staff_variable="cc_agent", route="q1"),
            h.call(caller_number=NUMBER, caller_name=NAME, record_keys=[(0.05, "*1")], talk_seconds=0.3),
            h.call(caller_number=NUMBER, caller_name=NAME, digits=["1"]),  # refusal: withdraws the first call
            h.call(caller_number=f"+31{NUMBER[1:]}", caller_name=NAME, digits=["7", None]),
        ]
        caller_hash = h.server.ctx.protector.lookup_hash("phone", normalise_phone(NUMBER))
        staff_hashes = [h.server.ctx.protector.lookup_hash("staff", s) for s in STAFF]
        assert ledger.CallStaff.select().count() == 2  # they were recorded, not just left out
    text = out.getvalue()
    lines = text.splitlines()
    parsed = [json.loads(line) if fmt == "json" else parse_kv(line) for line in lines]
    ended = [p["call"] for p in parsed if p["event"] == "call ended"]
    assert sorted(ended) == sorted(c.uuid for c in calls)  # the calls were logged, one line each
    assert any(p["level"] == "debug" for p in parsed)
    staff_words = [w for s in STAFF for w in (s, s.lower(), *s.replace("-", ".").replace("@", ".").split("."))
                   if w not in ("agent", "default")]
    for secret in [*forms_of(NUMBER), NAME, *NAME.replace("-", " ").split(), caller_hash, *staff_words,
                   *staff_hashes, *(x[:12] for x in staff_hashes)]:
        assert secret not in text, f"{secret!r} in the log"
    for value in (str(v) for p in parsed for v in p.values()):  # also written with spaces or dashes
        assert NUMBER[1:] not in re.sub(r"\D", "", value), value


def test_an_unknown_log_format_is_a_config_error_naming_the_key(tmp_path):
    from fs_consent.core.config import ConfigError, load_config

    config = tmp_path / "config.toml"
    config.write_text('[logging]\nformat = "syslog"\n')
    with pytest.raises(ConfigError, match=r"logging\.format: expected one of kv, json"):
        load_config(config, env={"HOME": str(tmp_path)})
