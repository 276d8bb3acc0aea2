"""The listening room in a real browser (issue 14, acceptance 1).

Real calls through the emulator into the in-process server make real sealed recordings;
the accounts are made with the real command line; the room is a real `fs-consent listen`
process on 127.0.0.1; Debian's headless Chromium, driven by Playwright, signs in, lists,
plays. Screenshots of the list and the player go to $FS_CONSENT_SCREENSHOTS (else the test's tmp dir).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import gevent
import gevent.subprocess
import pytest

from ..harness import Harness, fs_consent
from ..listen.room import PASSWORD, in_team, recorded_call

CHROMIUM = os.environ.get("FS_CONSENT_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--autoplay-policy=no-user-gesture-required"]


def _browser_or_skip():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install -e .[test])")
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian package chromium; FS_CONSENT_CHROMIUM names another)")
    return sync_playwright


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RoomProcess:
    """`fs-consent listen` in its own process, stopped with SIGTERM."""

    def __init__(self, h: Harness):
        self.port = free_port()
        self.log = Path(h.config.storage.data_dir).parent / "listen.log"
        self.proc = gevent.subprocess.Popen(
            [sys.executable, "-m", "fs_consent.cli", "--data-dir", str(h.config.storage.data_dir), "--log-level",
             "debug", "listen", "--address", f"127.0.0.1:{self.port}"],
            stdout=gevent.subprocess.DEVNULL, stderr=open(self.log, "wb"))
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the listening room did not start: {self.log.read_text()}") from None
                gevent.sleep(0.1)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> str:
        self.proc.terminate()
        self.proc.wait(timeout=20)
        return self.log.read_text()


@pytest.fixture
def harness(tmp_path):
    with Harness(tmp_path / "data") as h:
        yield h


def add_coach(h, name: str, team: str) -> None:
    done = fs_consent(h, "listen", "account", "add", name, "--role", "coach", "--team", team, "--password-stdin",
                      input=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr


def sign_in(page, url: str, name: str) -> None:
    page.goto(url + "/signin?lang=nl")
    page.fill("#name", name)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("h2")


def listed(page) -> set[str]:
    return set(page.eval_on_selector_all("tr[data-recording]", "rows => rows.map(r => r.dataset.recording)"))


def test_a_coach_signs_in_hears_their_teams_recording_and_nothing_else(harness, tmp_path):
    sync_playwright = _browser_or_skip()
    h = harness
    uuid_a, rec_a = recorded_call(h, "2001", talk_seconds=3.0)  # taken by 2001 (Team Noord)
    uuid_b, rec_b = recorded_call(h, "2002", talk_seconds=0.5)  # by 2002 (Team Zuid)
    uuid_w, rec_w = recorded_call(h, "2001", talk_seconds=0.5)  # withdrawn below
    in_team(h, "2001", "Team Noord")
    in_team(h, "2002", "Team Zuid")
    add_coach(h, "coach.noord", "Team Noord")
    add_coach(h, "coach.zuid", "Team Zuid")
    room = RoomProcess(h)
    shots = Path(os.environ.get("FS_CONSENT_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            try:
                context = browser.new_context(locale="nl-NL", viewport={"width": 1100, "height": 640})
                page = context.new_page()
                sign_in(page, room.url, "coach.noord")
                assert listed(page) == {rec_a.id, rec_w.id}  # Team Zuid's recording is not there
                assert page.inner_text(f"tr[data-recording='{rec_a.id}'] td.staff") == "2001"  # whose call it is
                assert "Dagen over" in page.content()
                page.screenshot(path=str(shots / "listen-list.png"), full_page=True)

                page.click(f"tr[data-recording='{rec_a.id}'] a")
                page.wait_for_selector("audio#player")
                page.evaluate("""() => { const a = document.getElementById('player');
                    window.fsPlaying = false; a.addEventListener('playing', () => { window.fsPlaying = true; }); }""")
                box = page.locator("audio#player").bounding_box()
                page.mouse.click(box["x"] + 20, box["y"] + box["height"] / 2)  # the play button
                try:
                    page.wait_for_function("() => window.fsPlaying === true", timeout=5000)
                except Exception:  # the controls' layout differs: play by a click on the element's script API
                    page.click("audio#player")
                    page.evaluate("() => document.getElementById('player').play()")
                    page.wait_for_function("() => window.fsPlaying === true", timeout=10000)
                first = page.evaluate("() => document.getElementById('player').currentTime")
                page.wait_for_function("t => document.getElementById('player').currentTime > t + 0.5", arg=first,
                                       timeout=10000)
                page.screenshot(path=str(shots / "listen-player.png"), full_page=True)
                # no download: the audio URL answers with no-store and never as an attachment
                reply = context.request.get(f"{room.url}/recordings/{rec_a.id}/audio",
                                            headers={"Range": "bytes=0-1023"})
                assert reply.status == 206
                assert reply.headers["cache-control"] == "no-store"
                assert "attachment" not in reply.headers.get("content-disposition", "")

                # a coach of another team: 403 for the page and for the audio
                other = browser.new_context(locale="nl-NL")
                page_b = other.new_page()
                sign_in(page_b, room.url, "coach.zuid")
                assert listed(page_b) == {rec_b.id}
                assert page_b.goto(f"{room.url}/recordings/{rec_a.id}").status == 403
                assert other.request.get(f"{room.url}/recordings/{rec_a.id}/audio").status == 403

                # withdrawn a moment ago: gone from the list, its URLs 404
                page.goto(room.url + "/?lang=nl")
                assert rec_w.id in listed(page)
                done = fs_consent(h, "withdraw", uuid_w)
                assert done.returncode == 0, done.stderr
                page.reload()
                assert listed(page) == {rec_a.id}
                assert page.goto(f"{room.url}/recordings/{rec_w.id}").status == 404
                assert context.request.get(f"{room.url}/recordings/{rec_w.id}/audio").status == 404
            finally:
                browser.close()
    finally:
        log = room.stop()

    # the playback is in the audit export: who, which, when, how much
    export = fs_consent(h, "audit", "export")
    assert export.returncode == 0, export.stderr
    entries = [json.loads(line) for line in export.stdout.splitlines() if line.startswith("{")]
    entries = [e for e in entries if "action" in e]
    played = [e for e in entries if e["action"] == "listen.play" and e["object_id"] == rec_a.id]
    assert played and all(e["actor"] == "coach.noord" for e in played)
    ended = [json.loads(e["detail"]) for e in entries
             if e["action"] == "listen.play.end" and e["object_id"] == rec_a.id]
    assert sum(d["bytes"] for d in ended) > 0 and any(d["seconds"] for d in ended)
    refused = [(e["actor"], e["object_id"], json.loads(e["detail"])["status"]) for e in entries
               if e["action"] == "listen.refused"]
    assert ("coach.zuid", rec_a.id, 403) in refused and ("coach.noord", rec_w.id, 404) in refused
    # and the room's log names neither the staff nor the accounts
    for line in log.splitlines():
        assert "2001" not in line and "2002" not in line and "coach." not in line, line
