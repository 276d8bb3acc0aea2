"""`recordings play` end to end: decrypted through a pipe into the player, never onto the disk.

The calls are made through the emulator against the real server; the command runs in
another process. The "player" is a real program reading its stdin: a small Python
script that writes the sha256 of what it heard (and its arguments) to a file, so the
test can compare it with the WAV the emulated switch wrote.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import stat
import sys
from pathlib import Path

import pytest

from fs_consent.privacy import subject_requests
from fs_consent.store import ledger

from ..harness import Harness, fs_consent

LISTENER = """\
import hashlib, json, sys
data = sys.stdin.buffer.read()
with open(sys.argv[1], "w") as out:
    json.dump({"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "args": sys.argv[2:]}, out)
"""


@pytest.fixture
def harness(tmp_path):
    with Harness(tmp_path / "data") as h:
        yield h


@pytest.fixture
def listener(tmp_path) -> Path:
    script = tmp_path / "listener.py"
    script.write_text(LISTENER)
    return script




def player(script: Path, heard: Path) -> str:
    return shlex.join([sys.executable, str(script), str(heard)])


def recorded(h: Harness, **script) -> tuple[ledger.Recording, str]:
    """A call recorded with consent: its recording and the sha256 of the WAV the switch wrote."""
    result = h.call(digits=[None], **script)
    (rec,) = h.recordings_of(result.uuid)
    assert rec.state == ledger.SEALED
    (info,) = result.recordings.values()
    return rec, info.sha256


def plays() -> list[dict]:
    return [json.loads(e.detail) | {"id": e.object_id, "actor": e.actor}
            for e in ledger.AuditEntry.select().where(ledger.AuditEntry.action == "recording.play")
            .order_by(ledger.AuditEntry.seq)]


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_the_recording_is_streamed_into_the_player_and_audited(harness, listener, tmp_path):
    rec, wav_sha = recorded(harness, talk_seconds=0.6)
    data_dir = Path(harness.config.storage.data_dir)
    before = files_under(data_dir)
    heard = tmp_path / "heard.json"
    done = fs_consent(harness, "recordings", "play", rec.id, "--player", player(listener, heard))
    assert done.returncode == 0, done.stderr
    assert f"played recording {rec.id}" in done.stderr
    assert json.loads(heard.read_text())["sha256"] == wav_sha  # every byte, as recorded
    # nothing was written in the data dir (no plaintext, no temporary file): only the ledger changed
    assert {p for p in files_under(data_dir) - before if not p.name.startswith("ledger.db")} == set()
    assert harness.spool_files() == [] and harness.store_files() == [f"{rec.id}.age"]
    assert plays() == [{"id": rec.id, "actor": ledger.os_user(), "player": Path(sys.executable).name,
                        "legal_claim": None, "restriction": None}]


@pytest.mark.slow
def test_the_default_player_is_sox_play_reading_a_wav_from_stdin(harness, listener, tmp_path):
    rec, wav_sha = recorded(harness)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    heard = tmp_path / "heard.json"
    fake_play = bin_dir / "play"  # stands in for sox's play: same name, same stdin
    fake_play.write_text(f"#!{sys.executable}\nimport sys\nsys.argv.insert(1, {str(heard)!r})\n"
                         + LISTENER)
    fake_play.chmod(fake_play.stat().st_mode | stat.S_IXUSR)
    done = fs_consent(harness, "recordings", "play", rec.id, env=dict(os.environ, PATH=str(bin_dir)))
    assert done.returncode == 0, done.stderr
    heard_doc = json.loads(heard.read_text())
    assert heard_doc["sha256"] == wav_sha and heard_doc["args"] == ["-q", "-t", "wav", "-"]
    assert plays()[0]["player"] == "play"

    # with neither sox nor aplay there, a clear error and no audit entry
    fake_play.unlink()
    done = fs_consent(harness, "recordings", "play", rec.id, env=dict(os.environ, PATH=str(bin_dir)))
    assert done.returncode == 1 and "no player found: install sox (play) or alsa-utils (aplay)" in done.stderr
    assert len(plays()) == 1


@pytest.mark.slow
def test_a_restricted_recording_is_played_only_for_a_legal_claim(harness, listener, tmp_path):
    rec, wav_sha = recorded(harness)
    request = subject_requests.add("BP-7", "restrict", dt.date.today(), actor="privacy-officer")
    ledger.Restriction.create(call=rec.call_id, request=request.id, placed_at=ledger.utcnow(),
                              placed_by="privacy-officer")
    heard = tmp_path / "heard.json"
    before = ledger.AuditEntry.select().count()
    done = fs_consent(harness, "recordings", "play", rec.id, "--player", player(listener, heard))
    assert done.returncode == 1
    assert f"call {rec.call.uuid} is restricted (request BP-7" in done.stderr and "--legal-claim" in done.stderr
    assert not heard.exists()  # the player never ran
    assert ledger.AuditEntry.select().count() == before

    done = fs_consent(harness, "recordings", "play", rec.id, "--player", player(listener, heard),
                      "--legal-claim", "objection procedure 2027-14")
    assert done.returncode == 0, done.stderr
    assert json.loads(heard.read_text())["sha256"] == wav_sha
    (entry,) = plays()
    assert (entry["legal_claim"], entry["restriction"]) == ("objection procedure 2027-14", "BP-7")


@pytest.mark.parametrize("case", ["unknown", "deleted", "no-such-player", "empty-player", "unbalanced-quote",
                                  "blank-claim", "tampered"])
@pytest.mark.slow
def test_what_cannot_be_played_is_a_clear_error_and_nothing_is_audited(harness, listener, tmp_path, case):
    rec, _ = recorded(harness)
    heard = tmp_path / "heard.json"
    rid, extra = rec.id, ["--player", player(listener, heard)]
    expected = {
        "unknown": "no recording with id 5c1b8c5e2a9f4d3b8e7f6a5b4c3d2e1f",
        "deleted": "is deleted (withdrawn), not sealed: there is nothing to play",
        "no-such-player": "no-such-player-xyz is not an executable program",
        "empty-player": "Invalid value for --player: is empty",
        "unbalanced-quote": "Invalid value for --player: No closing quotation",
        "blank-claim": "Invalid value for '--legal-claim'",
        "tampered": "does not match the ledger",
    }[case]
    if case == "unknown":
        rid = "5c1b8c5e2a9f4d3b8e7f6a5b4c3d2e1f"
    elif case == "deleted":
        withdrawn = harness.call(digits=[None], talk_seconds=0.5, caller_keys=[(0.1, "*1")])
        (gone,) = harness.recordings_of(withdrawn.uuid)
        rid = gone.id
    elif case == "no-such-player":
        extra = ["--player", "no-such-player-xyz -q"]
    elif case == "empty-player":
        extra = ["--player", "  "]
    elif case == "unbalanced-quote":
        extra = ["--player", "play 'oops"]
    elif case == "blank-claim":
        extra += ["--legal-claim", " "]
    elif case == "tampered":
        path = harness.store / f"{rec.id}.age"
        data = bytearray(path.read_bytes())
        data[-10] ^= 1
        path.write_bytes(bytes(data))
    before = ledger.AuditEntry.select().count()
    done = fs_consent(harness, "recordings", "play", rid, *extra)
    assert done.returncode != 0
    assert expected in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not heard.exists() and ledger.AuditEntry.select().count() == before


@pytest.mark.slow
def test_a_player_that_fails_is_reported(harness, tmp_path):
    rec, _ = recorded(harness)
    failing = shlex.join([sys.executable, "-c", "import sys; sys.exit(3)"])
    done = fs_consent(harness, "recordings", "play", rec.id, "--player", failing)
    assert done.returncode == 1 and "exited with status 3" in done.stderr
    assert "Traceback" not in done.stderr
    assert len(plays()) == 1  # it was started with the recording: that is audited all the same
