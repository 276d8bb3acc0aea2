"""scripts/fs-capture writes new captures in exactly the format of the committed ones.

The digest and the verify report are derived from ``.wire.jsonl`` alone, so the tool must
re-render every committed ``.digest.txt`` and ``verify_report.txt`` byte for byte; the
transcript (``.txt``) must match too, except for its per-message ``t=`` (the first
captures took that from a second clock) and the notes, which the tool logs live.
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "fs-capture"


@pytest.fixture(scope="module")
def tool():
    loader = SourceFileLoader("fs_capture", str(SCRIPT))
    module = module_from_spec(spec_from_loader("fs_capture", loader))
    loader.exec_module(module)
    return module


def prefixes(tool, captures_dir):
    found = tool.capture_prefixes(captures_dir)
    assert found, "no captures"
    return found


def test_every_digest_re_renders_byte_identical(tool, captures_dir):
    for prefix in prefixes(tool, captures_dir):
        chunks = tool.load_chunks(Path(f"{prefix}.wire.jsonl"))
        assert tool.render_digest(chunks) == Path(f"{prefix}.digest.txt").read_text(), prefix


def test_verify_report_re_renders_byte_identical(tool, captures_dir):
    report = "".join(tool.verify_entry(p) + "\n" for p in prefixes(tool, captures_dir))
    assert report == (captures_dir / "verify_report.txt").read_text()


def _notes_of(tool, txt: Path, chunks):
    """The notes of a committed transcript, each placed before the message it precedes."""
    messages, _ = tool.split_messages(chunks)
    notes, count = [], 0
    for line in txt.read_text(encoding="utf-8", errors="backslashreplace").splitlines():
        m = re.match(r"^(?:<<< RECV|>>> SEND) #(\d+) ", line)
        if m and int(m.group(1)) == count + 1:
            count += 1
        m = re.match(r"^### NOTE t=\+([0-9.]+)s: (.*)$", line)
        if m:
            index = messages[count][3] if count < len(messages) else len(chunks)
            notes.append((float(m.group(1)), m.group(2), index))
    return notes


def test_every_transcript_re_renders_but_for_its_times(tool, captures_dir):
    times = re.compile(rb"t=\+[0-9.]+s")
    for prefix in prefixes(tool, captures_dir):
        chunks = tool.load_chunks(Path(f"{prefix}.wire.jsonl"))
        txt = Path(f"{prefix}.txt")
        # the proxy captures (greenswitch/, fs-consent behind the proxy) carry no event labels
        labels = "proxying to" not in txt.read_text(errors="replace")[:400]
        rendered = tool.render_txt(chunks, _notes_of(tool, txt, chunks), labels=labels).encode()
        assert times.sub(b"t=T", rendered) == times.sub(b"t=T", txt.read_bytes()), prefix


def test_order_report_finds_an_event_where_a_reply_was_due(tool):
    wire = tool.Wire()
    wire.log("SEND", b"linger\n\n")
    wire.log("RECV", b"Content-Type: command/reply\nReply-Text: +OK will linger\n\n")
    wire.log("SEND", b"event plain RECORD_START\n\n")
    body = b"Event-Name: CHANNEL_PARK\nUnique-ID: x\n\n"
    wire.log("RECV", b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(body) + body)
    wire.log("RECV", b"Content-Type: command/reply\nReply-Text: +OK event listener enabled plain\n\n")
    report = tool.order_report(wire)
    assert [(r["cmd"], r["between"], r["reply"]) for r in report] == [
        ("linger", [], "+OK will linger"),
        ("event plain RECORD_START", ["CHANNEL_PARK"], "+OK event listener enabled plain"),
    ]


def test_lists_its_scenarios():
    out = subprocess.run([sys.executable, str(SCRIPT), "list"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for name in ("handshake-race", "pagd-hangup-race", "agent-key", "hold", "transfer-bridge",
                 "transfer-nobridge", "killed-mid-prompt", "killed-mid-conversation"):
        assert name in out.stdout
