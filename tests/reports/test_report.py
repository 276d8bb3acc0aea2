"""``fs-consent report``: the figures, every format, and the HTML rendered by a real
browser (headless Chromium) with its charts drawn."""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import json
import os
import random
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from fs_consent.cli import main
from fs_consent.core import consent
from fs_consent.privacy import subject_requests as requests
from fs_consent.reports import report
from fs_consent.secure import keys
from fs_consent.store import ledger
from fs_consent.store.connection import close_database, open_database

from ..harness import make_config

NOW = dt.datetime(2026, 11, 20, 12, 0)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def add_call(started, *, outcome="granted", by="silence", duration=60.0, wait=5.0, withdrawn_by=None,
             withdrawn_after=None, ended=True, caller_hash="ab" * 16):
    ended_at = started + dt.timedelta(seconds=duration or 0) if ended else None
    withdrawn_at = None
    if withdrawn_by:
        withdrawn_at = (ended_at + withdrawn_after) if withdrawn_after else started + dt.timedelta(seconds=1)
    return ledger.Call.create(
        uuid=str(uuid.uuid4()), started_at=started, ended_at=ended_at, duration_seconds=duration if ended else None,
        wait_seconds=wait, outcome=outcome, decided_by=by, withdrawn_by=withdrawn_by, withdrawn_at=withdrawn_at,
        consent_mode="opt-out", language="nl", prompt_id="consent-nl", prompt_version="1", caller_hash=caller_hash)


def add_recording(call, state=ledger.SEALED, reason=None, started=None):
    return ledger.Recording.create(id=uuid.uuid4().hex, call=call, state=state, state_reason=reason,
                                   started_at=started or call.started_at)


@pytest.fixture
def site(tmp_path):
    data = tmp_path / "data"
    config = make_config(data)
    keys.init_keys(Path(config.storage.keys_dir))
    open_database(config.storage.database)
    yield data, config
    close_database()


@pytest.fixture
def known(site):
    """Ten calls on 2026-11-18 and -19 (UTC), one of each outcome, known durations."""
    day1, day2 = dt.datetime(2026, 11, 18), dt.datetime(2026, 11, 19)
    calls = [
        add_call(day1.replace(hour=8, minute=5), duration=10, wait=1),  # granted by silence
        add_call(day1.replace(hour=8, minute=30), by="key", duration=20, wait=2),  # granted by key
        add_call(day1.replace(hour=9), outcome="refused", by="key", duration=30, wait=3),
        add_call(day1.replace(hour=23, minute=30), outcome="withdrawn", withdrawn_by="caller_keys", duration=40,
                 wait=4),
        add_call(day2.replace(hour=10), outcome="withdrawn", withdrawn_by="callback", duration=100, wait=5),
        add_call(day2.replace(hour=10, minute=5), outcome="withdrawn", withdrawn_by="command",
                 withdrawn_after=dt.timedelta(hours=2), duration=None, wait=None),
        add_call(day2.replace(hour=11), outcome="abandoned", by="hangup", duration=None, wait=None),
        add_call(day2.replace(hour=11, minute=1), outcome="error", by="failure", duration=None, wait=None),
        add_call(day2.replace(hour=11, minute=2), outcome=None, by=None, ended=False, wait=None),
        add_call(day2.replace(hour=11, minute=3), outcome="refused", by="objection", duration=None, wait=None),
    ]
    add_recording(calls[0])
    add_recording(calls[1])
    add_recording(calls[3], ledger.DELETED, "withdrawn")
    add_recording(calls[4], ledger.DELETED, "withdrawn")
    add_recording(calls[5], ledger.DELETED, "withdrawn")
    add_recording(calls[2], ledger.DISCARDED, "no-audio")
    return calls


def build(config, **kwargs):
    return report.build_report(config, timezone="UTC", now=NOW, **kwargs)


def test_the_figures(site, known):
    r = build(site[1])
    assert r["calls"]["total"] == 10
    assert r["calls"]["per_day"] == [{"date": "2026-11-18", "calls": 4}, {"date": "2026-11-19", "calls": 6}]
    per_hour = {h["hour"]: h["calls"] for h in r["calls"]["per_hour"] if h["calls"]}
    assert per_hour == {8: 2, 9: 1, 10: 2, 11: 4, 23: 1}
    # durations 10, 20, 30, 40, 100 (the rest never ended or have none): p90 interpolated
    assert r["duration_seconds"] == {"count": 5, "mean": 40.0, "median": 30.0, "p90": 76.0}
    assert r["wait_seconds"] == {"count": 5, "mean": 3.0, "median": 3.0, "p90": 4.6}
    outcomes = {o["outcome"]: (o["calls"], o["rate"]) for o in r["consent"]}
    assert outcomes == {
        "granted_by_silence": (1, 0.1), "granted_by_key": (1, 0.1), "refused": (1, 0.1),
        "refused_by_objection": (1, 0.1), "withdrawn_during_call": (1, 0.1), "withdrawn_by_callback": (1, 0.1),
        "withdrawn_after_call": (1, 0.1), "abandoned": (1, 0.1), "error": (1, 0.1), "error_by_restart": (0, 0.0),
        "undecided": (1, 0.1)}
    rec = r["recordings"]
    assert (rec["stored"], rec["deleted"], rec["discarded"], rec["failed"]) == (2, 3, 1, 0)
    assert rec["deleted_by_reason"] == {"withdrawn": 3}
    assert r["retention"]["compliant"] and r["retention"]["violations"] == []
    assert r["subject_requests"] == {"as_of": "2026-11-20", "open": 0, "overdue": 0, "granted": 0, "refused": 0,
                                     "extended": 0, "overdue_requests": []}


def test_period_and_time_zone(site, known):
    r = build(site[1], since=dt.datetime(2026, 11, 19), until=dt.datetime(2026, 11, 20))
    assert r["calls"]["total"] == 6 and [d["calls"] for d in r["calls"]["per_day"]] == [6]
    assert r["recordings"]["deleted_by_reason"] == {"withdrawn": 2}
    # Amsterdam is UTC+1 in November: the 23:30 call belongs to the next local day, at 00h
    r = report.build_report(site[1], timezone="Europe/Amsterdam", now=NOW)
    assert r["calls"]["per_day"] == [{"date": "2026-11-18", "calls": 3}, {"date": "2026-11-19", "calls": 7}]
    assert r["calls"]["per_hour"][0]["calls"] == 1 and r["calls"]["per_hour"][9]["calls"] == 2


def test_days_without_calls_are_shown_as_zero(site):
    add_call(dt.datetime(2026, 11, 1, 9))
    add_call(dt.datetime(2026, 11, 4, 9))
    r = build(site[1])
    assert [d["calls"] for d in r["calls"]["per_day"]] == [1, 0, 0, 1]


def test_retention_violations_are_listed(site, known):
    old = add_call(NOW - dt.timedelta(days=70))
    late = add_recording(old)
    gone = add_recording(add_call(NOW - dt.timedelta(days=80)), ledger.DELETED, "retention")
    ancient = add_call(NOW - dt.timedelta(days=400))
    add_call(NOW - dt.timedelta(days=420), caller_hash=None)  # erased: anonymous, may stay
    r = build(site[1])
    ret = r["retention"]
    assert not ret["compliant"] and (ret["recordings_past_term"], ret["calls_past_term"]) == (1, 1)
    listed = {(v["kind"], v.get("recording_id") or v["call_uuid"]) for v in ret["violations"]}
    assert listed == {("recording", late.id), ("call", ancient.uuid)}
    assert gone.id not in json.dumps(ret)
    assert r["recordings"]["deleted_by_reason"] == {"retention": 1, "withdrawn": 3}
    if hasattr(ledger, "LegalHold"):  # issue 3: a held recording is not late, and is counted as held
        ledger.LegalHold.create(recording=late.id, call=old, reason="aggression", case_ref="PV-1", placed_at=NOW,
                                placed_by="officer")
        r = build(site[1])
        assert r["retention"]["recordings_past_term"] == 0 and r["recordings"]["held"] == 1


@pytest.fixture
def register(site):
    """Requests in every state on NOW's date (2026-11-20): two open (one past its due date), one
    extended and still in time, one extended and overdue, one granted, one refused late."""
    today = NOW.date()

    def add(ref, kind, received):
        requests.add(ref, kind, received, actor="officer", note="Mr. Jansen, Dorpsstraat 1", today=today)

    add("R-open", "access", dt.date(2026, 11, 1))  # due 2026-12-01
    add("R-late", "erase", dt.date(2026, 10, 12))  # due 2026-11-12: 8 days overdue
    add("R-ext", "rectify", dt.date(2026, 10, 1))  # due 2026-11-01, extended to 2027-01-01
    requests.extend("R-ext", "many calls to go through", actor="officer", today=dt.date(2026, 10, 20))
    add("R-ext-late", "object", dt.date(2026, 8, 19))  # extended to 2026-11-19: 1 day overdue
    requests.extend("R-ext-late", "complex", actor="officer", today=dt.date(2026, 9, 1))
    add("R-granted", "restrict", dt.date(2026, 9, 30))
    requests.decide("R-granted", "granted", "identity and calls match", actor="officer", today=today)
    add("R-refused", "erase", dt.date(2026, 6, 2))
    requests.decide("R-refused", "refused", "kept for a legal claim", actor="officer", today=today)


def test_subject_requests_in_the_report(site, register):
    r = build(site[1])
    sr = r["subject_requests"]
    assert {k: sr[k] for k in report.REQUEST_FIGURES} == {"open": 4, "overdue": 2, "granted": 1, "refused": 1,
                                                          "extended": 2}
    assert sr["overdue_requests"] == [  # soonest due first
        {"ref": "R-late", "kind": "erase", "due": "2026-11-12", "days_overdue": 8},
        {"ref": "R-ext-late", "kind": "object", "due": "2026-11-19", "days_overdue": 1}]
    # on its due date a request is still in time; the day after, it is overdue
    on_due = report.build_report(site[1], timezone="UTC", now=dt.datetime(2026, 11, 12, 23))["subject_requests"]
    after = report.build_report(site[1], timezone="UTC", now=dt.datetime(2026, 11, 13, 1))["subject_requests"]
    assert (on_due["overdue"], on_due["overdue_requests"]) == (0, [])
    assert [q["ref"] for q in after["overdue_requests"]] == ["R-late"] and after["overdue"] == 1

    # every rendering carries the same figures and names the same overdue requests
    table = report.render(r, "table")
    assert "subject requests on 2026-11-20: 4 open, 2 overdue, 1 granted, 1 refused, 2 extended" in table
    assert "request R-late (erase): due 2026-11-12, 8 day(s) overdue" in table
    assert "request R-ext-late (object): due 2026-11-19, 1 day(s) overdue" in table
    assert json.loads(report.render(r, "json"))["subject_requests"] == sr
    rows = list(csv.DictReader(io.StringIO(report.render(r, "csv"))))
    figures = {row["item"]: row["value"] for row in rows if row["section"] == "subject_requests"}
    assert figures == {"as_of": "2026-11-20", "open": "4", "overdue": "2", "granted": "1", "refused": "1",
                       "extended": "2"}
    assert [(row["item"], row["value"]) for row in rows if row["section"] == "subject_request_overdue"] == [
        ("R-late", "8"), ("R-ext-late", "1")]
    page = report.render(r, "html")
    section = page[page.index('<section id="requests">'):]
    section = section[:section.index("</section>")]
    cards = dict((label, int(value)) for value, label in re.findall(r"<b>(\d+)</b><span>(\w+)</span>", section))
    assert cards == {k: sr[k] for k in report.REQUEST_FIGURES}
    assert re.findall(r"<tr><td>(R-[\w-]+)</td><td>\w+</td><td>([\d-]+)</td><td class=n>(\d+)</td>", section) == [
        ("R-late", "2026-11-12", "8"), ("R-ext-late", "2026-11-19", "1")]
    # no note or reason (free text, possibly personal) reaches any rendering
    for fmt in report.REPORT_FORMATS:
        out = report.render(r, fmt)
        for text in ("Jansen", "Dorpsstraat", "many calls", "complex", "legal claim", "match"):
            assert text not in out, (fmt, text)


def test_subject_requests_count_on_the_report_time_zones_date(site):
    """Due dates are calendar days where the municipality is: 23:30 UTC on the due date is already
    the next day in Amsterdam (UTC+1 in November), so the request is overdue there."""
    requests.add("R-1", "access", dt.date(2026, 10, 20), actor="officer", today=dt.date(2026, 10, 20))
    late_evening = dt.datetime(2026, 11, 20, 23, 30)  # due 2026-11-20
    in_utc = report.build_report(site[1], timezone="UTC", now=late_evening)["subject_requests"]
    in_amsterdam = report.build_report(site[1], timezone="Europe/Amsterdam", now=late_evening)["subject_requests"]
    assert (in_utc["as_of"], in_utc["overdue"]) == ("2026-11-20", 0)
    assert (in_amsterdam["as_of"], in_amsterdam["overdue"]) == ("2026-11-21", 1)


def test_every_format_from_the_command_line(site, known):
    data, _config = site
    runner = CliRunner()
    base = ["--data-dir", str(data), "report", "--timezone", "UTC"]
    table = runner.invoke(main, base)
    assert table.exit_code == 0, table.output
    assert "calls: 10" in table.output and "Granted by silence" in table.output
    assert "Refused by objection (art. 21)" in table.output
    doc = json.loads(runner.invoke(main, [*base, "--format", "json"]).output)
    assert doc["calls"]["total"] == 10
    rows = list(csv.DictReader(io.StringIO(runner.invoke(main, [*base, "--format", "csv"]).output)))
    assert {"section": "consent", "item": "refused", "value": "1", "rate": "0.1"} in rows
    out = runner.invoke(main, [*base, "--format", "html", "--out", str(data / "r.html")])
    assert out.exit_code == 0 and (data / "r.html").read_text().startswith("<!DOCTYPE html>")
    assert runner.invoke(main, [*base[:-2], "--timezone", "Mars/Olympus"]).exit_code == 2
    # the reports are audited (who, which format, which period)
    entries = [e for e in ledger.AuditEntry.select() if e.action == "report.generate"]
    assert [e.object_id for e in entries] == ["table", "json", "csv", "html"]
    assert json.loads(entries[0].detail)["calls"] == 10


def test_html_is_one_file_with_no_network(site, known):
    page = report.render(build(site[1]), "html")
    for needle in ("http:", "https:", "<script", "<link", "src=", "url(", "@import"):
        assert needle not in page
    assert page.count("<svg") == 5 and "<title>Calls per day</title>" in page


# --- in a real browser ------------------------------------------------------------------------------

LAYOUT_PROBE = """<script>
const charts = [...document.querySelectorAll('svg.chart')].map(svg => {
  const box = svg.getBoundingClientRect();
  return {section: svg.closest('section').id, width: box.width, height: box.height,
          bars: [...svg.querySelectorAll('rect.bar')].map(b => {
            const bb = b.getBBox(), screen = b.getBoundingClientRect();
            return {value: Number(b.getAttribute('data-value')), width: bb.width, height: bb.height,
                    screen_w: screen.width, screen_h: screen.height,
                    fill: getComputedStyle(b).fill};
          })};
});
document.body.setAttribute('data-layout', JSON.stringify(charts));
</script>"""


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         "--hide-scrollbars", *args],
        capture_output=True, text=True, timeout=90)


def synthetic_month(rng: random.Random) -> None:
    """Four weeks of office-hours traffic with every outcome."""
    for day in range(28):
        date = dt.datetime(2026, 10, 20) + dt.timedelta(days=day)
        weekend = date.weekday() >= 5
        for _ in range(rng.randrange(2, 6) if weekend else rng.randrange(25, 45)):
            started = date.replace(hour=min(16, max(7, int(rng.gauss(11, 2.5)))), minute=rng.randrange(60))
            roll = rng.random()
            kind = ("granted", "silence") if roll < .55 else ("granted", "key") if roll < .65 else \
                ("refused", "key") if roll < .85 else ("withdrawn", None) if roll < .92 else ("abandoned", "hangup")
            call = add_call(started, outcome=kind[0], by=kind[1], duration=rng.lognormvariate(5.3, 0.6),
                            wait=rng.expovariate(1 / 40), withdrawn_by="caller_keys" if kind[0] == "withdrawn" else None)
            if kind[0] == "granted":
                add_recording(call)
            elif kind[0] == "withdrawn":
                add_recording(call, ledger.DELETED, "withdrawn")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium)")
def test_the_html_report_draws_its_charts_in_chromium(site, tmp_path):
    data, config = site
    synthetic_month(random.Random(4))
    late = add_recording(add_call(NOW - dt.timedelta(days=75)))  # one violation to show (outside the period)
    figures = build(config, since=dt.datetime(2026, 10, 20), until=dt.datetime(2026, 11, 17))
    page = report.render(figures, "html")
    assert late.id in page
    report_file = tmp_path / "report.html"
    report_file.write_text(page, encoding="utf-8")
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", LAYOUT_PROBE + "</body>"), encoding="utf-8")

    done = chromium("--dump-dom", "--window-size=1200,900", probe.as_uri(), profile=tmp_path / "profile")
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'data-layout="([^"]*)"', done.stdout)
    assert found, done.stdout[:2000]
    charts = {c["section"]: c for c in json.loads(html.unescape(found.group(1)))}
    assert set(charts) == {"per-day", "per-hour", "consent", "timing", "recordings"}
    for name, chart in charts.items():
        assert chart["width"] > 300 and chart["height"] > 50, (name, chart)
        drawn = [b for b in chart["bars"] if b["value"] > 0]
        assert drawn, name
        for bar in drawn:  # every non-zero value is a visible, filled shape on the page
            assert bar["width"] > 0 and bar["height"] > 0 and bar["screen_w"] > 0 and bar["screen_h"] > 0, (name, bar)
            assert bar["fill"] not in ("none", "", "rgba(0, 0, 0, 0)"), (name, bar)
    per_day = charts["per-day"]["bars"]
    assert len(per_day) == len(figures["calls"]["per_day"]) == 28
    tallest = max(per_day, key=lambda b: b["height"])
    assert tallest["value"] == max(b["value"] for b in per_day)  # heights follow the values

    shot = tmp_path / "report.png"
    done = chromium(f"--screenshot={shot}", "--window-size=1200,2400", report_file.as_uri(),
                    profile=tmp_path / "profile")
    assert done.returncode == 0 and shot.stat().st_size > 20_000, done.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    keep = os.environ.get("FS_CONSENT_TEST_SCREENSHOT_DIR")
    if keep:  # to look at it: FS_CONSENT_TEST_SCREENSHOT_DIR=/tmp/shots pytest tests/reports/test_report.py
        shutil.copy(shot, Path(keep) / "report.png")
        shutil.copy(report_file, Path(keep) / "report.html")


def test_outcome_classes_cover_every_outcome():
    assert {report.outcome_of(o, None, None, None, None) for o in consent.OUTCOMES} <= {k for k, _l in report.OUTCOMES}
