"""Log output: one structured line per record on stderr, for the journal.

Two formats (config ``logging.format``)::

    kv:   ts=2026-11-28T16:45:30.123Z level=info logger=fs_consent.runtime.driver event="call ended" call=8f0c... outcome=granted
    json: {"ts":"2026-11-28T16:45:30.123Z","level":"info","logger":"fs_consent.runtime.driver","event":"call ended",...}

``event`` is the formatted message, so ``log.info("spool recovery: %s", summary)`` keeps
working; structured fields ride along as ``log.info("call ended", extra=fields(call=uuid))``.
In ``kv`` a value is written bare when it has no space, quote, ``=`` or control
character, else in double quotes with ``\\``, ``"``, newlines and controls escaped, so a
record is always one line. An exception's traceback becomes the ``exc`` field.

Under journald (``$JOURNAL_STREAM`` names our stderr) the timestamp is left out, since the
journal stamps every line, and each line starts with its syslog priority (``<3>`` for an
error), which journald strips and keeps as the entry's priority (``journalctl -p warning``).

``debug`` applies to fs-consent's own loggers: libraries log from ``info`` up (peewee's
debug output lists every SQL statement with its parameters, which include pseudonymous
hashes of callers' numbers). Whatever is logged must not hold a phone number, a name or
any other personal value: name calls by their uuid, recordings by their id.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import sys
from collections.abc import Mapping

__all__ = ["FORMATS", "LEVELS", "StructuredFormatter", "announce", "fields", "setup", "under_journald"]

FORMATS = ("kv", "json")
LEVELS = ("debug", "info", "warning", "error")
LIBRARY_FLOOR = logging.INFO  # the least severe level other packages' loggers may emit at

_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
_BARE = re.compile(r'[^\s"=\\\x00-\x1f\x7f]+')
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_NEEDS_ESCAPE = re.compile(r'[\\"\x00-\x1f\x7f]')
_KEY_CHARS = re.compile(r"[^A-Za-z0-9_.-]")
_RESERVED = ("ts", "level", "logger", "event", "exc")


def fields(**values) -> dict:
    """``extra=`` for a log call: ``log.info("call ended", extra=fields(call=uuid))``."""
    return {"fields": values}


def under_journald(stream, env: Mapping[str, str] = os.environ) -> bool:
    """True when ``stream`` is the journal stream systemd gave us (``$JOURNAL_STREAM`` is
    ``<device>:<inode>`` of it; a redirected stderr of a child that inherited it is not)."""
    device, sep, inode = env.get("JOURNAL_STREAM", "").partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no file descriptor (a test's StringIO)
        return False
    return f"{st.st_dev}:{st.st_ino}" == f"{device}:{inode}"


def _kv_value(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if _BARE.fullmatch(text):
        return text
    escaped = _NEEDS_ESCAPE.sub(lambda m: _ESCAPES.get(m.group(), f"\\x{ord(m.group()):02x}"), text)
    return f'"{escaped}"'


class StructuredFormatter(logging.Formatter):
    """Formats a record as one ``kv`` or ``json`` line (see the module docstring)."""

    def __init__(self, fmt: str = "kv", *, journald: bool = False):
        super().__init__()
        if fmt not in FORMATS:
            raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        self.fmt, self.journald = fmt, journald

    def items(self, record: logging.LogRecord) -> list[tuple[str, object]]:
        """The record's fields in output order."""
        items: list[tuple[str, object]] = []
        if not self.journald:
            at = dt.datetime.fromtimestamp(record.created, dt.timezone.utc)
            items.append(("ts", at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"))
        items += [("level", record.levelname.lower()), ("logger", record.name), ("event", record.getMessage())]
        extra = getattr(record, "fields", None)
        if isinstance(extra, Mapping):
            for key, value in extra.items():
                key = _KEY_CHARS.sub("_", str(key)) or "_"
                items.append((key + "_" if key in _RESERVED else key, value))
        if record.exc_info:
            items.append(("exc", self.formatException(record.exc_info)))
        if record.stack_info:
            items.append(("stack", self.formatStack(record.stack_info)))
        return items

    def format(self, record: logging.LogRecord) -> str:
        items = self.items(record)
        if self.fmt == "json":
            line = json.dumps(dict(items), ensure_ascii=False, separators=(",", ":"), default=str)
        else:
            line = " ".join(f"{key}={_kv_value(value)}" for key, value in items)
        if self.journald:
            line = f"<{_SYSLOG_PRIORITY.get(record.levelno, 6)}>{line}"
        return line


class _Handler(logging.StreamHandler):
    """Ours, so that a second ``setup`` replaces it instead of doubling every line."""


def setup(level: str = "info", fmt: str = "kv", *, stream=None, env: Mapping[str, str] = os.environ) -> None:
    """Send every log record to ``stream`` (stderr) as one structured line, from ``level`` up."""
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    stream = sys.stderr if stream is None else stream
    handler = _Handler(stream)
    handler.setFormatter(StructuredFormatter(fmt, journald=under_journald(stream, env)))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    numeric = getattr(logging, level.upper())
    root.setLevel(max(numeric, LIBRARY_FLOOR))
    logging.getLogger("fs_consent").setLevel(numeric)


def announce(message: str, **values) -> None:
    """A line the operator must see whatever the level (start-up, generated keys), as info."""
    record = logging.getLogger("fs_consent").makeRecord(
        "fs_consent", logging.INFO, __file__, 0, message, (), None, extra=fields(**values))
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, _Handler)]
    if not handlers:
        print(StructuredFormatter().format(record), file=sys.stderr, flush=True)
    for handler in handlers:
        handler.handle(record)
