"""``fs-consent report``: what the call ledger says, for the privacy officer.

Calls per day and per hour of the day, duration and wait time (mean, median, p90),
consent outcomes and their rates, recordings stored / deleted by reason / held,
retention compliance (anything stored past its term is a violation, listed), the
subject-request register (open, overdue, decided, extended; overdue ones listed), and per
team (``staff add``: a call counts for every team of the staff who took it) and per route
(``[recording] route_variable``): calls, wait, duration and the rate recorded with consent.

The report is built in one pass over the calls (memory: two float arrays for the
percentiles and one counter per day) and rendered as a table, JSON, CSV or one
self-contained HTML file whose charts are inline SVG (no script, no network).
No phone number or other personal field is read: only pseudonymous ids (teams are matched
to the staff who took a call by the keyed hash, never by opening an identifier).
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import json
import statistics
from array import array
from collections import Counter
from collections.abc import Callable
from zoneinfo import ZoneInfo

from ..core import consent
from ..core.durations import format_duration
from ..privacy import subject_requests as request_register
from ..store import ledger
from .overdue import legal_holds, overdue_calls, overdue_recordings, retention_terms

REPORT_FORMATS = ("table", "json", "csv", "html")

# consent outcomes as the statement distinguishes them: (key, label)
OUTCOMES = (
    ("granted_by_silence", "Granted by silence"),
    ("granted_by_key", "Granted by key"),
    ("refused", "Refused"),
    ("refused_by_objection", "Refused by objection (art. 21)"),
    ("withdrawn_during_call", "Withdrawn during the call"),
    ("withdrawn_by_callback", "Withdrawn by callback"),
    ("withdrawn_after_call", "Withdrawn after the call"),
    ("abandoned", "Abandoned"),
    ("error", "Error (not recorded)"),
    ("error_by_restart", "Error: fs-consent restarted during the call (not recorded)"),
    ("undecided", "Undecided (live)"),
)
MAX_DAYS = 3660  # days shown in the per-day series
LIST_LIMIT = 1000  # violations listed (all are counted)
REQUEST_FIGURES = ("open", "overdue", "granted", "refused", "extended")  # subject_requests.counts


def outcome_of(outcome, decided_by, withdrawn_by, withdrawn_at, ended_at) -> str:
    if outcome == consent.GRANTED:
        return "granted_by_key" if decided_by == consent.BY_KEY else "granted_by_silence"
    if outcome == consent.WITHDRAWN:
        if withdrawn_by == consent.BY_CALLBACK:
            return "withdrawn_by_callback"
        if ended_at is None or withdrawn_at is None or withdrawn_at <= ended_at:
            return "withdrawn_during_call"
        return "withdrawn_after_call"
    if outcome == consent.REFUSED and decided_by == consent.BY_OBJECTION:
        return "refused_by_objection"
    if outcome == consent.ERROR and decided_by == consent.BY_RESTART:
        return "error_by_restart"
    if outcome in (consent.REFUSED, consent.ABANDONED, consent.ERROR):
        return outcome
    return "undecided"


def _plain(row: dict) -> dict:
    return {k: v.isoformat(timespec="seconds") + "Z" if isinstance(v, dt.datetime) else v for k, v in row.items()}


def _stats(values: array) -> dict:
    if not values:
        return {"count": 0, "mean": None, "median": None, "p90": None}
    data = sorted(values)
    p90 = data[0] if len(data) == 1 else statistics.quantiles(data, n=10, method="inclusive")[8]
    return {"count": len(data), "mean": round(statistics.fmean(data), 2),
            "median": round(statistics.median(data), 2), "p90": round(p90, 2)}


def _zone(name: str | None):
    """None/'local': the system's zone (with its DST rules); else an IANA name or 'UTC'."""
    if name in (None, "", "local"):
        return None
    return dt.timezone.utc if name.upper() == "UTC" else ZoneInfo(name)


def _local(ts: dt.datetime, zone) -> dt.datetime:
    aware = ts.replace(tzinfo=dt.timezone.utc)
    return aware.astimezone(zone) if zone is not None else aware.astimezone()


def count_calls(since: dt.datetime | None, until: dt.datetime | None) -> int:
    return _calls_in(ledger.Call.select(), since, until).count()


def _calls_in(query, since, until):
    Call = ledger.Call
    if since is not None:
        query = query.where(Call.started_at >= since)
    if until is not None:
        query = query.where(Call.started_at < until)
    return query


def build_report(config, *, since: dt.datetime | None = None, until: dt.datetime | None = None,
                 timezone: str | None = None, now: dt.datetime | None = None,
                 progress: Callable[[int], None] | None = None) -> dict:
    """The report as plain data (``since``/``until``: naive UTC, ``until`` exclusive)."""
    Call, Recording = ledger.Call, ledger.Recording
    now = now or ledger.utcnow()
    zone = _zone(timezone)
    per_day: Counter = Counter()
    per_hour = [0] * 24
    outcomes: Counter = Counter()
    durations, waits = array("d"), array("d")
    total = 0
    query = _calls_in(Call.select(Call.started_at, Call.duration_seconds, Call.wait_seconds, Call.outcome,
                                  Call.decided_by, Call.withdrawn_by, Call.withdrawn_at, Call.ended_at),
                      since, until).order_by(Call.id).tuples()
    for started, duration, wait, outcome, decided_by, withdrawn_by, withdrawn_at, ended in query.iterator():
        total += 1
        local = _local(started, zone)
        per_day[local.date()] += 1
        per_hour[local.hour] += 1
        outcomes[outcome_of(outcome, decided_by, withdrawn_by, withdrawn_at, ended)] += 1
        if duration is not None:
            durations.append(duration)
        if wait is not None:
            waits.append(wait)
        if progress is not None and total % 2000 == 0:
            progress(2000)
    if progress is not None:
        progress(total % 2000)

    days = []
    if per_day or (since and until):
        first = _local(since, zone).date() if since else min(per_day)
        last = (_local(until - dt.timedelta(microseconds=1), zone).date() if until else max(per_day))
        if per_day:
            first, last = min(first, min(per_day)), max(last, max(per_day))
        first = max(first, last - dt.timedelta(days=MAX_DAYS - 1))  # a very long period: its latest days
        span = (last - first).days + 1
        days = [{"date": (first + dt.timedelta(days=i)).isoformat(),
                 "calls": per_day.get(first + dt.timedelta(days=i), 0)} for i in range(span)]

    rec_query = Recording.select(Recording.state, Recording.state_reason)
    if since is not None:
        rec_query = rec_query.where(Recording.started_at >= since)
    if until is not None:
        rec_query = rec_query.where(Recording.started_at < until)
    states: Counter = Counter()
    deleted_by_reason: Counter = Counter()
    for state, reason in rec_query.tuples().iterator():
        states[state] += 1
        if state == ledger.DELETED:
            deleted_by_reason[reason or "unknown"] += 1

    terms = retention_terms(config)
    holds = legal_holds()
    held = 0
    if holds.present:
        held = sum(1 for rec_id, call_id in Recording.select(Recording.id, Recording.call)
                   .where(Recording.state == ledger.SEALED).tuples().iterator()
                   if holds.holds_recording(rec_id, call_id))
    late_recordings = overdue_recordings(terms, holds, now, limit=LIST_LIMIT)
    late_calls = overdue_calls(terms, holds, now, limit=LIST_LIMIT)

    report = {
        "generated_at": now.isoformat(timespec="seconds") + "Z",
        "period": {"since": since.isoformat() + "Z" if since else None,
                   "until": until.isoformat() + "Z" if until else None,
                   "timezone": timezone or "local"},
        "calls": {"total": total, "per_day": days,
                  "per_hour": [{"hour": h, "calls": n} for h, n in enumerate(per_hour)]},
        "duration_seconds": _stats(durations),
        "wait_seconds": _stats(waits),
        "consent": [{"outcome": key, "label": label, "calls": outcomes.get(key, 0),
                     "rate": round(outcomes.get(key, 0) / total, 4) if total else None}
                    for key, label in OUTCOMES],
        "recordings": {
            "stored": states.get(ledger.SEALED, 0), "held": held, "legal_holds": holds.present,
            "deleted": states.get(ledger.DELETED, 0),
            "deleted_by_reason": dict(sorted(deleted_by_reason.items())),
            "discarded": states.get(ledger.DISCARDED, 0), "failed": states.get(ledger.FAILED, 0),
            "in_progress": states.get(ledger.RECORDING, 0),
        },
        "retention": {
            "terms": {"recordings": format_duration(terms.recordings), "calls": format_duration(terms.calls),
                      "source": terms.source},
            "compliant": not (late_recordings.count or late_calls.count),
            "recordings_past_term": late_recordings.count,
            "calls_past_term": late_calls.count,
            "violations": [{"kind": "recording", **_plain(r)} for r in late_recordings.rows]
                          + [{"kind": "call", **_plain(r)} for r in late_calls.rows],
        },
    }
    report["subject_requests"] = subject_requests(_local(now, zone).date())
    report["teams"], report["routes"] = per_team_and_route(since, until)
    return report


NO_ROUTE = "(no route)"


def _group_rows(groups: dict, key: str) -> list[dict]:
    rows = []
    for name in sorted(groups, key=lambda n: (n == NO_ROUTE, n)):
        g = groups[name]
        wait, duration = _stats(g["waits"]), _stats(g["durations"])
        rows.append({key: name, "calls": g["calls"], "wait_mean": wait["mean"], "wait_median": wait["median"],
                     "duration_mean": duration["mean"], "duration_median": duration["median"],
                     "granted": g["granted"], "consent_rate": round(g["granted"] / g["calls"], 4)})
    return rows


def per_team_and_route(since: dt.datetime | None, until: dt.datetime | None) -> tuple[list[dict], list[dict]]:
    """Calls, wait, duration and consent rate (granted / calls) per team and per route.

    A call counts once for each team of the staff who took it (two colleagues of one team:
    once); calls nobody of a team took are in no team row. Every call of the period has a
    route row, ``(no route)`` when its route variable was not set."""
    Call, CallStaff, StaffTeam = ledger.Call, ledger.CallStaff, ledger.StaffTeam

    def tally(groups, name, duration, wait, outcome):
        g = groups.setdefault(name, {"calls": 0, "granted": 0, "waits": array("d"), "durations": array("d")})
        g["calls"] += 1
        g["granted"] += outcome == consent.GRANTED
        if duration is not None:
            g["durations"].append(duration)
        if wait is not None:
            g["waits"].append(wait)

    routes: dict = {}
    query = _calls_in(Call.select(Call.route, Call.duration_seconds, Call.wait_seconds, Call.outcome),
                      since, until).tuples()
    for route, duration, wait, outcome in query.iterator():
        tally(routes, route or NO_ROUTE, duration, wait, outcome)
    teams: dict = {}
    query = _calls_in(Call.select(StaffTeam.team, Call.id, Call.duration_seconds, Call.wait_seconds, Call.outcome)
                      .join(CallStaff, on=(CallStaff.call == Call.id))
                      .join(StaffTeam, on=(StaffTeam.staff_hash == CallStaff.staff_hash))
                      .distinct(), since, until).tuples()
    for team, _id, duration, wait, outcome in query.iterator():
        tally(teams, team, duration, wait, outcome)
    return _group_rows(teams, "team"), _group_rows(routes, "route")


def subject_requests(today: dt.date) -> dict:
    """The request register as of ``today`` (the local calendar date; not limited to the period):
    open (undecided), overdue (of those), granted, refused, extended, and the overdue ones listed."""
    figures = {"as_of": today.isoformat(), **request_register.counts(today)}
    figures["overdue_requests"] = [
        {"ref": row["ref"], "kind": row["kind"], "due": row["due"], "days_overdue": -row["days_left"]}
        for row in request_register.rows(overdue_only=True, today=today)[:LIST_LIMIT]]
    return figures


# --- rendering ---------------------------------------------------------------------------------


def _fmt_seconds(value) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _pct(rate) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def render_table(r: dict) -> str:
    p = r["period"]
    out = [f"fs-consent report, generated {r['generated_at']}",
           f"period: {p['since'] or 'start'} .. {p['until'] or 'now'} (days and hours in {p['timezone']})", ""]
    out.append(f"calls: {r['calls']['total']}")
    busiest = sorted(r["calls"]["per_day"], key=lambda d: -d["calls"])[:1]
    if busiest:
        out.append(f"  days: {len(r['calls']['per_day'])}, busiest {busiest[0]['date']} ({busiest[0]['calls']})")
    if r["calls"]["total"]:
        last = r["calls"]["per_day"][-14:]
        more = " (the last 14 days; --format csv or html for all)" if len(r["calls"]["per_day"]) > 14 else ""
        out.append("  per day:  " + ", ".join(f"{d['date']} {d['calls']}" for d in last) + more)
        out.append("  per hour: " + " ".join(f"{h['hour']:02d}h:{h['calls']}" for h in r["calls"]["per_hour"]
                                             if h["calls"]))
    out.append("")
    out.append(f"{'':24}{'count':>8}{'mean':>10}{'median':>10}{'p90':>10}")
    for name in ("duration_seconds", "wait_seconds"):
        s = r[name]
        out.append(f"{name.split('_')[0] + ' (s)':24}{s['count']:>8}"
                   + "".join(f"{'-' if s[k] is None else s[k]:>10}" for k in ("mean", "median", "p90")))
    out += ["", "consent outcomes:"]
    for o in r["consent"]:
        out.append(f"  {o['label']:28}{o['calls']:>8}{_pct(o['rate']):>9}")
    rec = r["recordings"]
    out += ["", f"recordings: stored {rec['stored']}, held {rec['held']}, deleted {rec['deleted']}, "
                f"discarded {rec['discarded']}, failed {rec['failed']}, in progress {rec['in_progress']}"]
    for reason, n in rec["deleted_by_reason"].items():
        out.append(f"  deleted ({reason}): {n}")
    ret = r["retention"]
    out += ["", f"retention (recordings {ret['terms']['recordings']}, call data {ret['terms']['calls']}, "
                f"from {ret['terms']['source']}): "
                + ("compliant" if ret["compliant"] else
                   f"VIOLATIONS: {ret['recordings_past_term']} recording(s), {ret['calls_past_term']} call(s) "
                   "past their term")]
    for v in ret["violations"]:
        what = f"recording {v['recording_id']}" if v["kind"] == "recording" else f"call {v['call_uuid']}"
        out.append(f"  {what}: {v['age_days']} days old (term {v['term']})")
    sr = r["subject_requests"]
    out += ["", f"subject requests on {sr['as_of']}: {sr['open']} open, {sr['overdue']} overdue, {sr['granted']} granted, "
                f"{sr['refused']} refused, {sr['extended']} extended"]
    for q in sr["overdue_requests"]:
        out.append(f"  request {q['ref']} ({q['kind']}): due {q['due']}, {q['days_overdue']} day(s) overdue")
    for key, title in (("teams", "per team"), ("routes", "per route")):
        rows = r.get(key) or []
        out += ["", f"{title}:" + ("" if rows else " (none)")]
        if rows:
            out.append(f"  {'':24}{'calls':>8}{'wait (s)':>10}{'duration':>10}{'consent':>9}")
        for g in rows:
            out.append(f"  {g[key[:-1]]:24}{g['calls']:>8}{'-' if g['wait_mean'] is None else g['wait_mean']:>10}"
                       f"{'-' if g['duration_mean'] is None else g['duration_mean']:>10}{_pct(g['consent_rate']):>9}")
    return "\n".join(out)


def render_json(r: dict) -> str:
    return json.dumps(r, indent=2, default=lambda v: v.isoformat() + "Z" if isinstance(v, dt.datetime) else str(v))


def render_csv(r: dict) -> str:
    """Long format: one row per figure (section, item, value, rate)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["section", "item", "value", "rate"])
    w.writerow(["period", "since", r["period"]["since"] or "", ""])
    w.writerow(["period", "until", r["period"]["until"] or "", ""])
    w.writerow(["calls", "total", r["calls"]["total"], ""])
    for d in r["calls"]["per_day"]:
        w.writerow(["calls_per_day", d["date"], d["calls"], ""])
    for h in r["calls"]["per_hour"]:
        w.writerow(["calls_per_hour", f"{h['hour']:02d}", h["calls"], ""])
    for name in ("duration_seconds", "wait_seconds"):
        for k in ("count", "mean", "median", "p90"):
            w.writerow([name, k, "" if r[name][k] is None else r[name][k], ""])
    for o in r["consent"]:
        w.writerow(["consent", o["outcome"], o["calls"], "" if o["rate"] is None else o["rate"]])
    rec = r["recordings"]
    for k in ("stored", "held", "deleted", "discarded", "failed", "in_progress"):
        w.writerow(["recordings", k, rec[k], ""])
    for reason, n in rec["deleted_by_reason"].items():
        w.writerow(["recordings_deleted_by_reason", reason, n, ""])
    ret = r["retention"]
    w.writerow(["retention", "recordings_term", ret["terms"]["recordings"], ""])
    w.writerow(["retention", "calls_term", ret["terms"]["calls"], ""])
    w.writerow(["retention", "compliant", ret["compliant"], ""])
    w.writerow(["retention", "recordings_past_term", ret["recordings_past_term"], ""])
    w.writerow(["retention", "calls_past_term", ret["calls_past_term"], ""])
    for v in ret["violations"]:
        ident = v["recording_id"] if v["kind"] == "recording" else v["call_uuid"]
        w.writerow([f"retention_violation_{v['kind']}", ident, v["age_days"], ""])
    sr = r["subject_requests"]
    w.writerow(["subject_requests", "as_of", sr["as_of"], ""])
    for k in REQUEST_FIGURES:
        w.writerow(["subject_requests", k, sr[k], ""])
    for q in sr["overdue_requests"]:
        w.writerow(["subject_request_overdue", q["ref"], q["days_overdue"], ""])
    for key in ("teams", "routes"):
        for g in r.get(key) or []:
            name = g[key[:-1]]
            w.writerow([key[:-1], f"{name}:calls", g["calls"], g["consent_rate"]])
            for figure in ("wait_mean", "wait_median", "duration_mean", "duration_median", "granted"):
                w.writerow([key[:-1], f"{name}:{figure}", "" if g[figure] is None else g[figure], ""])
    return buf.getvalue().rstrip("\n")


# --- html: one file, inline SVG ------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#14365d;color:#fff;padding:20px 32px}
header h1{margin:0 0 4px;font-size:22px}header p{margin:0;opacity:.85;font-size:14px}
main{padding:16px 32px 40px;max-width:1100px}
section{background:#fff;border-radius:8px;padding:16px 20px;margin:16px 0;box-shadow:0 1px 2px rgba(0,0,0,.08)}
h2{font-size:17px;margin:0 0 12px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{flex:1 1 140px;background:#f4f5f7;border-radius:6px;padding:10px 14px}
.card b{display:block;font-size:24px}.card span{font-size:13px;color:#555}
table{border-collapse:collapse;font-size:14px}td,th{padding:4px 12px 4px 0;text-align:left}
th{color:#555;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#17753a;font-weight:600}.bad{color:#b3261e;font-weight:600}
svg{display:block;width:100%;height:auto}svg text{font-size:11px;fill:#444}
.bar{fill:#2f6fb3}.bar.alt{fill:#e08a1e}.axis{stroke:#999;stroke-width:1}.grid{stroke:#e3e3e3;stroke-width:1}
"""

_OUTCOME_COLOURS = {
    "granted_by_silence": "#4f8fd6", "granted_by_key": "#2f6fb3", "refused": "#7a7a7a",
    "refused_by_objection": "#5c5c5c",
    "withdrawn_during_call": "#d9822b", "withdrawn_by_callback": "#b35c12", "withdrawn_after_call": "#8c4a10",
    "abandoned": "#a3a3a3", "error": "#b3261e", "error_by_restart": "#7f1d1d", "undecided": "#cfcfcf",
}


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def svg_columns(points: list[tuple[str, int]], *, title: str, css: str = "bar", width: int = 1000,
                height: int = 260, label_every: int = 1) -> str:
    """A column chart: one <rect class="bar"> per point, with axis, grid and labels."""
    left, right, top, bottom = 44, 10, 12, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max((v for _l, v in points), default=0) or 1
    step = plot_w / max(len(points), 1)
    bar_w = max(step * 0.8, 1.0)
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">',
             f"<title>{_e(title)}</title>"]
    for frac in (0, 0.5, 1):
        y = top + plot_h * (1 - frac)
        parts.append(f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_e(round(peak * frac))}</text>')
    for i, (label, value) in enumerate(points):
        x = left + i * step + (step - bar_w) / 2
        h = plot_h * value / peak
        parts.append(f'<rect class="{css}" x="{x:.2f}" y="{top + plot_h - h:.2f}" width="{bar_w:.2f}" '
                     f'height="{h:.2f}" data-value="{value}"><title>{_e(label)}: {value}</title></rect>')
        if i % label_every == 0:
            cx = left + i * step + step / 2
            parts.append(f'<text x="{cx:.1f}" y="{height - bottom + 16}" text-anchor="middle">{_e(label)}</text>')
    parts.append(f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}"/>')
    parts.append("</svg>")
    return "".join(parts)


def svg_hbars(rows: list[tuple[str, float, str, str]], *, title: str, width: int = 1000) -> str:
    """Horizontal bars: (label, value, value text, colour) per row."""
    label_w, right, row_h = 230, 120, 26
    height = row_h * len(rows) + 8
    peak = max((v for _l, v, _t, _c in rows), default=0) or 1
    plot_w = width - label_w - right
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">',
             f"<title>{_e(title)}</title>"]
    for i, (label, value, text, colour) in enumerate(rows):
        y = 4 + i * row_h
        w = plot_w * value / peak
        parts.append(f'<text x="{label_w - 8}" y="{y + 16}" text-anchor="end">{_e(label)}</text>')
        parts.append(f'<rect class="bar" style="fill:{colour}" x="{label_w}" y="{y + 3}" width="{w:.2f}" '
                     f'height="{row_h - 8}" data-value="{value}"><title>{_e(label)}: {_e(text)}</title></rect>')
        parts.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 16}">{_e(text)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(r: dict) -> str:
    p, calls, rec, ret = r["period"], r["calls"], r["recordings"], r["retention"]
    total = calls["total"]
    days = calls["per_day"]
    every = max(1, len(days) // 12)
    granted = sum(o["calls"] for o in r["consent"] if o["outcome"].startswith("granted"))
    withdrawn = sum(o["calls"] for o in r["consent"] if o["outcome"].startswith("withdrawn"))
    refused = sum(o["calls"] for o in r["consent"] if o["outcome"].startswith("refused"))

    def card(value, label):
        return f'<div class="card"><b>{_e(value)}</b><span>{_e(label)}</span></div>'

    def rate(n):
        return f" ({n / total * 100:.1f}%)" if total else ""

    body = [f'<header><h1>fs-consent report</h1><p>Period {_e(p["since"] or "start")} to {_e(p["until"] or "now")}'
            f' &middot; days and hours in {_e(p["timezone"])} &middot; generated {_e(r["generated_at"])}</p></header>',
            "<main>",
            '<section><h2>Summary</h2><div class="cards">'
            + card(total, "calls") + card(f"{granted}{rate(granted)}", "recorded with consent")
            + card(f"{refused}{rate(refused)}", "refused") + card(f"{withdrawn}{rate(withdrawn)}", "withdrawn")
            + card(rec["stored"], "recordings stored") + card(rec["held"], "under legal hold")
            + card("yes" if ret["compliant"] else "NO", "retention compliant")
            + "</div></section>"]
    body.append('<section id="per-day"><h2>Calls per day</h2>'
                + (svg_columns([(d["date"][5:], d["calls"]) for d in days], title="Calls per day",
                               label_every=every) if days else "<p>No calls in this period.</p>")
                + "</section>")
    body.append('<section id="per-hour"><h2>Calls per hour of the day</h2>'
                + svg_columns([(f"{h['hour']:02d}", h["calls"]) for h in calls["per_hour"]],
                              title="Calls per hour of the day", css="bar alt")
                + "</section>")
    body.append('<section id="consent"><h2>Consent outcomes</h2>'
                + svg_hbars([(o["label"], o["calls"], f"{o['calls']} ({_pct(o['rate'])})",
                              _OUTCOME_COLOURS[o["outcome"]]) for o in r["consent"]],
                            title="Consent outcomes") + "</section>")
    timing_rows = []
    for name, label in (("duration_seconds", "Call duration"), ("wait_seconds", "Wait for staff")):
        for k in ("mean", "median", "p90"):
            v = r[name][k]
            timing_rows.append((f"{label}, {k}", v or 0, _fmt_seconds(v),
                                "#2f6fb3" if name == "duration_seconds" else "#e08a1e"))
    body.append('<section id="timing"><h2>Duration and wait time</h2>'
                + svg_hbars(timing_rows, title="Duration and wait time (seconds)")
                + "<table><tr><th></th><th>calls</th><th>mean</th><th>median</th><th>p90</th></tr>"
                + "".join(f"<tr><td>{label}</td><td class=n>{r[n]['count']}</td>"
                          + "".join(f"<td class=n>{_fmt_seconds(r[n][k])}</td>" for k in ("mean", "median", "p90"))
                          + "</tr>" for n, label in (("duration_seconds", "duration"), ("wait_seconds", "wait")))
                + "</table></section>")
    rec_rows = [("Stored (sealed)", rec["stored"], str(rec["stored"]), "#2f6fb3"),
                ("Under legal hold", rec["held"], str(rec["held"]), "#6a3fb3")]
    rec_rows += [(f"Deleted: {reason}", n, str(n), "#d9822b") for reason, n in rec["deleted_by_reason"].items()]
    rec_rows += [("Discarded (no audio)", rec["discarded"], str(rec["discarded"]), "#a3a3a3"),
                 ("Failed to seal", rec["failed"], str(rec["failed"]), "#b3261e")]
    body.append('<section id="recordings"><h2>Recordings</h2>'
                + svg_hbars(rec_rows, title="Recordings by state") + "</section>")
    verdict = ('<p class="ok">Compliant: nothing is stored past its term.</p>' if ret["compliant"] else
               f'<p class="bad">Violation: {ret["recordings_past_term"]} recording(s) and {ret["calls_past_term"]} '
               "call(s) are stored past their term.</p>")
    rows = "".join(
        f"<tr><td>{_e(v['kind'])}</td><td>{_e(v.get('recording_id') or v.get('call_uuid'))}</td>"
        f"<td>{_e(v['counted_from'])}</td><td class=n>{_e(v['age_days'])}</td><td>{_e(v['term'])}</td></tr>"
        for v in ret["violations"])
    body.append(f'<section id="retention"><h2>Retention</h2><p>Terms: recordings {_e(ret["terms"]["recordings"])}, '
                f'call data {_e(ret["terms"]["calls"])} ({_e(ret["terms"]["source"])}).</p>{verdict}'
                + ("<table><tr><th>kind</th><th>id</th><th>term counted from (UTC)</th><th>age (days)</th><th>term</th></tr>"
                   + rows + "</table>" if rows else "") + "</section>")
    sr = r["subject_requests"]
    late = "".join(f"<tr><td>{_e(q['ref'])}</td><td>{_e(q['kind'])}</td><td>{_e(q['due'])}</td>"
                   f"<td class=n>{_e(q['days_overdue'])}</td></tr>" for q in sr["overdue_requests"])
    body.append(f'<section id="requests"><h2>Subject requests</h2><p>The register on {_e(sr["as_of"])}.</p>'
                '<div class="cards">'
                + "".join(card(sr[k], k) for k in REQUEST_FIGURES) + "</div>"
                + ('<p class="bad">Overdue: undecided past the due date.</p><table><tr><th>request</th>'
                   "<th>kind</th><th>due</th><th>days overdue</th></tr>" + late + "</table>" if late else "")
                + "</section>")
    for key, title in (("teams", "Per team"), ("routes", "Per route")):
        groups = r.get(key) or []
        cells = "".join(f"<tr><td>{_e(g[key[:-1]])}</td><td class=n>{g['calls']}</td>"
                        f"<td class=n>{_fmt_seconds(g['wait_mean'])}</td><td class=n>{_fmt_seconds(g['duration_mean'])}</td>"
                        f"<td class=n>{_pct(g['consent_rate'])}</td></tr>" for g in groups)
        body.append(f'<section id="{key}"><h2>{title}</h2>'
                    + (f"<table><tr><th>{key[:-1]}</th><th>calls</th><th>mean wait</th><th>mean duration</th>"
                       f"<th>recorded with consent</th></tr>{cells}</table>" if groups else
                       f"<p>No {key} in this period.</p>") + "</section>")
    body.append("</main>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>fs-consent report {_e(p['since'] or '')} {_e(p['until'] or '')}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")


RENDERERS = {"table": render_table, "json": render_json, "csv": render_csv, "html": render_html}


def render(report: dict, fmt: str) -> str:
    return RENDERERS[fmt](report)

