"""The right of access (GDPR art. 15): everything held about a caller's calls, in one directory.

The privacy officer runs ``fs-consent subject export --phone N --request REF --out DIR``
for a registered access request. The directory (created 0700; refused if it exists and
is not empty) holds, each file 0600 and never overwritten (O_EXCL)::

    summary.html             one self-contained page for the requester (Dutch and English):
                             every call, its consent outcome, what became of its recording,
                             rectified details, restriction, objection, the retention terms
    calls.json               the same, machine-readable (times UTC), with each file's sha256
    <recording id>.wav       each stored recording, decrypted, or
    <recording id>.wav.age   re-encrypted to the requester's age key (``--to-recipient``):
                             decrypted and re-encrypted through a pipe, never plaintext on disk

A number with no calls still gets the summary: "nothing is held" is an answer too.
Recordings of a restricted call (art. 18) are left out unless a legal claim is given;
the summary says which were left out and why. Recordings under legal hold are included.

Everything is checked before the first byte is written (number, request, keys, every
recording's ciphertext against the ledger); a failure half-way removes what was written.
The export is audited as ``subject.export`` under the request's reference, with call
uuids, recording ids and file hashes only: never the number.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .. import __version__
from ..core.durations import format_duration
from ..secure import keys
from ..secure.files import fsync_dir
from ..secure.protect import FieldError, normalise_phone
from ..secure.vault import VaultError
from ..store import audit_actions, holds, ledger
from ..store.ledger import CallDetail, CallFlag, ConsentEvent, Objection, Recording
from . import subject_requests, subjects
from .errors import SubjectError
from .police_export import (
    ExportError,
    checked_store_file,
    discard_written,
    parse_recipient,
    prepare_dir,
    reencrypt,
    sha256_file,
    write_new,
)

FORMAT = "fs-consent-access/1"
SUMMARY = "summary.html"
CALLS = "calls.json"
DEFAULT_TIMEZONE = "Europe/Amsterdam"


@dataclass
class AccessExport:
    out_dir: Path
    calls: int
    files: list[str]  # the recordings written, then calls.json and summary.html
    left_out: list[dict]  # {recording_id, call_uuid, reason}


def zone(name: str) -> dt.tzinfo:
    """``UTC`` or an IANA zone name (``Europe/Amsterdam``); SubjectError if unknown."""
    if name.upper() == "UTC":
        return dt.timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise SubjectError(f"unknown time zone {name!r}") from None


def export(number: str, *, request_ref: str, out_dir: Path, config, vault, actor: str,
           recipient: str | None = None, identity_path: Path | None = None, legal_claim: str | None = None,
           timezone: str = DEFAULT_TIMEZONE, today: dt.date | None = None) -> AccessExport:
    """Write the access export; SubjectError (nothing written, nothing audited) on bad input."""
    keys_dir = Path(config.storage.keys_dir)
    tz = zone(timezone)
    legal_claim = (legal_claim or "").strip() or None
    try:
        to = parse_recipient(recipient) if recipient is not None else None
        protector = subjects.protector_for(keys_dir)
    except (ExportError, keys.KeyFileError) as exc:
        raise SubjectError(str(exc)) from None
    caller_hash = subjects.phone_hash(protector, number)
    try:
        request = subject_requests.require(request_ref, "access", today=today)
    except subject_requests.RequestError as exc:
        raise SubjectError(str(exc)) from None

    doc = _collect(caller_hash, protector, normalise_phone(number), request, config, legal_claim)
    included = [r for c in doc["calls"] for r in c["recordings"] if r["included"]]
    try:
        stores = {r["id"]: checked_store_file(vault, Recording.get_by_id(r["id"]))[0] for r in included}
        identity = keys.load_identity(keys_dir, identity_path) if included or identity_path else None
    except (ExportError, keys.KeyFileError) as exc:
        raise SubjectError(str(exc)) from None

    try:
        created_dir = prepare_dir(out_dir)
    except ExportError as exc:
        raise SubjectError(str(exc)) from None
    written: list[Path] = []
    try:
        for rec in included:
            file = _write_recording(rec["id"], stores[rec["id"]], out_dir, identity, to, vault, written)
            rec["file"] = file["name"]
            doc["files"].append(file)
        doc["generated_at"] = _iso(ledger.utcnow())
        write_new(out_dir / CALLS, (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode(), written)
        write_new(out_dir / SUMMARY, render_html(doc, tz).encode(), written)
        fsync_dir(out_dir)
        ledger.append_audit(
            actor, audit_actions.SUBJECT_EXPORT, "request", request.ref,
            calls=[c["uuid"] for c in doc["calls"]],
            recordings=[{"id": f["recording_id"], "sha256": f["sha256"]} for f in doc["files"]],
            left_out=[x["recording_id"] for x in doc["left_out"]],
            restrictions_overridden=sorted({r["restricted_by"] for r in included if r["restricted_by"]}),
            out=str(out_dir.resolve()), to_recipient=to is not None, legal_claim=legal_claim)
    except BaseException as exc:
        discard_written(out_dir, written, created_dir)
        if isinstance(exc, (OSError, VaultError, ExportError)):
            raise SubjectError(f"export to {out_dir} failed: {getattr(exc, 'strerror', None) or exc}; "
                                        "nothing was left behind") from None
        raise
    return AccessExport(out_dir, len(doc["calls"]), [p.name for p in written], doc["left_out"])


def _write_recording(rid: str, store_file: Path, out_dir: Path, identity, to, vault, written: list[Path]) -> dict:
    if to is None:
        target = out_dir / f"{rid}.wav"
        sha = vault.decrypt_to(rid, identity, target)
        written.append(target)
        return {"name": target.name, "recording_id": rid, "sha256": sha, "size": target.stat().st_size,
                "encryption": "none"}
    target = out_dir / f"{rid}.wav.age"
    plain_sha, plain_size = reencrypt(store_file, identity, to, target, written)
    sha, size = sha256_file(target)
    return {"name": target.name, "recording_id": rid, "sha256": sha, "size": size, "encryption": "age",
            "recipient": str(to), "plaintext_sha256": plain_sha, "plaintext_size": plain_size}


# --- what is held -------------------------------------------------------------------------


def _iso(value: dt.datetime | dt.date | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.isoformat(timespec="seconds") + "Z"
    return value.isoformat()


def _open(protector, kind: str, sealed, what: str) -> str:
    try:
        return protector.open(kind, bytes(sealed))
    except FieldError as exc:
        raise SubjectError(f"{what} cannot be read: {exc}") from None


def _collect(caller_hash: str, protector, number: str, request, config, legal_claim: str | None) -> dict:
    """The export's content as one JSON-ready dict (read before anything is written)."""
    calls = list(subjects.calls_of(caller_hash))
    ids = [c.id for c in calls]
    recordings = list(Recording.select().where(Recording.call.in_(ids)).order_by(Recording.started_at)) if ids else []
    held = {h.recording_id: h for h in holds.holds_on(r.id for r in recordings)}
    left_out: list[dict] = []
    out_calls = []
    for call in calls:
        restriction = subjects.active_restriction(call.id)
        recs = []
        for rec in (r for r in recordings if r.call_id == call.id):
            hold = held.get(rec.id)
            entry = {"id": rec.id, "state": rec.state, "reason": rec.state_reason,
                     "started_at": _iso(rec.started_at), "sealed_at": _iso(rec.sealed_at),
                     "deleted_at": _iso(rec.deleted_at), "legal_hold": hold.reason if hold else None,
                     "included": False, "restricted_by": None, "file": None}
            if rec.state == ledger.SEALED:
                if restriction is not None and not legal_claim:
                    left_out.append({"recording_id": rec.id, "call_uuid": call.uuid, "reason": "restricted",
                                     "request": restriction.request.ref})
                else:
                    entry["included"] = True
                    entry["restricted_by"] = restriction.request.ref if restriction is not None else None
            recs.append(entry)
        events = ConsentEvent.select().where(ConsentEvent.call == call.id).order_by(ConsentEvent.at, ConsentEvent.id)
        flags = CallFlag.select().where(CallFlag.call == call.id).order_by(CallFlag.at)
        details = CallDetail.select().where(CallDetail.call == call.id).order_by(CallDetail.field)
        out_calls.append({
            "uuid": call.uuid,
            "caller_number": (_open(protector, "phone", call.caller_sealed, f"the number of call {call.uuid}")
                              if call.caller_sealed is not None else None),
            "started_at": _iso(call.started_at), "answered_at": _iso(call.answered_at),
            "bridged_at": _iso(call.bridged_at), "ended_at": _iso(call.ended_at),
            "duration_seconds": call.duration_seconds, "wait_seconds": call.wait_seconds,
            "consent": {"mode": call.consent_mode, "outcome": call.outcome, "decided_by": call.decided_by,
                        "decided_at": _iso(call.decided_at), "withdrawn_by": call.withdrawn_by,
                        "withdrawn_at": _iso(call.withdrawn_at), "language": call.language,
                        "prompt_id": call.prompt_id, "prompt_version": call.prompt_version,
                        "history": [{"at": _iso(e.at), "kind": e.kind, "outcome": e.outcome, "by": e.by}
                                    for e in events]},
            "hangup_cause": call.hangup_cause,
            "recording_note": call.recording_note,
            "personal_data_erased": ({"at": _iso(call.personal_erased_at), "reason": call.personal_erased_reason}
                                     if call.personal_erased_at else None),
            "details": [{"field": d.field, "value": _open(protector, d.field, d.value_sealed,
                                                          f"the {d.field} of call {call.uuid}"),
                         "updated_at": _iso(d.updated_at), "request": d.request.ref} for d in details],
            "flags": [{"kind": f.kind, "at": _iso(f.at)} for f in flags],
            "restriction": ({"since": _iso(restriction.placed_at), "request": restriction.request.ref}
                            if restriction is not None else None),
            "recordings": recs,
        })
    objections = Objection.select().where(Objection.caller_hash == caller_hash).order_by(Objection.placed_at)
    retention = config.retention
    return {
        "format": FORMAT,
        "request": {"ref": request.ref, "kind": request.kind, "received_on": _iso(request.received_on),
                    "due_on": _iso(request.due_on)},
        "number": number,
        "generated_at": None,
        "fs_consent_version": __version__,
        "retention": {"recordings": format_duration(retention.recordings),
                      "call_records": format_duration(retention.call_records),
                      "recordings_seconds": retention.recordings, "call_records_seconds": retention.call_records},
        "calls": out_calls,
        "objections": [{"placed_at": _iso(o.placed_at), "withdrawn_at": _iso(o.withdrawn_at),
                        "request": o.request.ref} for o in objections],
        "files": [],
        "left_out": left_out,
    }


# --- summary.html ---------------------------------------------------------------------------

# (Dutch, English) for every value the requester reads
OUTCOMES = {
    "granted": ("Opgenomen met uw toestemming", "Recorded with your consent"),
    "refused": ("U gaf geen toestemming: niet opgenomen", "You refused consent: not recorded"),
    "withdrawn": ("U trok uw toestemming in: de opname is verwijderd",
                  "You withdrew your consent: the recording was deleted"),
    "abandoned": ("Het gesprek eindigde voordat er een keuze was: niet opgenomen",
                  "The call ended before a choice was made: not recorded"),
    "error": ("Door een storing is geen keuze vastgelegd: niet opgenomen",
              "A technical fault prevented a choice: not recorded"),
    None: ("Geen keuze vastgelegd", "No choice recorded"),
}
BY = {
    "key": ("door een toets in te drukken", "by pressing a key"),
    "silence": ("doordat u geen toets indrukte", "because you pressed no key"),
    "hangup": ("doordat het gesprek werd beëindigd", "because the call was ended"),
    "caller_keys": ("met een toets tijdens het gesprek", "with a key during the call"),
    "agent_key": ("door de medewerker, op uw verzoek tijdens het gesprek",
                  "by the employee, at your request during the call"),
    "command": ("door de gemeente, op uw verzoek", "by the municipality, at your request"),
    "callback": ("door terug te bellen en 1 te kiezen", "by calling back and choosing 1"),
    "failure": ("door een technische storing", "by a technical fault"),
    "objection": ("door uw bezwaar tegen opnemen", "by your objection to recording"),
}
STATES = {
    ledger.SEALED: ("Versleuteld bewaard", "Stored encrypted"),
    ledger.DELETED: ("Verwijderd", "Deleted"),
    ledger.DISCARDED: ("Niet bewaard: er was geen geluid", "Not kept: there was no audio"),
    ledger.FAILED: ("Versleutelen mislukte; de opname wordt hersteld of verwijderd",
                    "Encryption failed; the recording is being recovered or deleted"),
    ledger.RECORDING: ("Opname liep nog", "Recording was in progress"),
}
DELETE_REASONS = {
    "withdrawn": ("u trok uw toestemming in", "you withdrew your consent"),
    "no-consent": ("er was geen toestemming", "there was no consent"),
    "error": ("storing tijdens het gesprek", "a fault during the call"),
    "retention": ("de bewaartermijn was verstreken", "its retention term had passed"),
    "recovery": ("niet afgerond na een storing", "not completed after a crash"),
}
FIELDS = {"name": ("Naam", "Name"), "address": ("Adres", "Address"), "subject": ("Onderwerp", "Subject")}
FLAGS = {"aggression": ("Door de medewerker gemarkeerd als agressie", "Marked by the employee as aggression")}
HOLDS = {"aggression": ("agressie", "aggression"), "intimidation": ("intimidatie", "intimidation"),
         "other": ("andere reden", "other reason")}

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f4f5f7;color:#1d2330;
line-height:1.45}
header{background:#14365d;color:#fff;padding:20px 32px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:0;opacity:.9;font-size:14px}
main{padding:8px 32px 40px;max-width:960px}
section{background:#fff;border-radius:8px;padding:16px 20px;margin:16px 0;box-shadow:0 1px 2px rgba(0,0,0,.08)}
h2{font-size:18px;margin:0 0 10px}h3{font-size:16px;margin:0 0 8px}
.en{color:#555;font-style:italic}header .en{color:#d5deea}
table{border-collapse:collapse;font-size:14px;width:100%}
th,td{padding:5px 12px 5px 0;text-align:left;vertical-align:top;border-top:1px solid #eceef2}
th{color:#444;font-weight:600;width:32%}
code{font-size:12px;word-break:break-all}
.note{background:#fff6e0;border-left:4px solid #e0a01e;padding:8px 12px;margin:8px 0}
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _both(pair: tuple[str, str]) -> str:
    nl, en = pair
    return f'{_e(nl)}<br><span class="en" lang="en">{_e(en)}</span>'


def _time(iso: str | None, tz: dt.tzinfo) -> str:
    if iso is None:
        return "&ndash;"
    moment = dt.datetime.fromisoformat(iso.removesuffix("Z")).replace(tzinfo=dt.timezone.utc).astimezone(tz)
    return _e(moment.strftime("%d-%m-%Y %H:%M:%S"))


def _seconds(value: float | None) -> str:
    if value is None:
        return "&ndash;"
    total = round(value)
    minutes, seconds = divmod(total, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


def _term(seconds: float) -> tuple[str, str]:
    days = seconds / 86400
    if days >= 365 and days % 365 == 0:
        years = int(days // 365)
        return (f"{years} jaar", f"{years} year{'s' if years > 1 else ''}")
    if days == int(days):
        return (f"{int(days)} dagen", f"{int(days)} days")
    text = format_duration(seconds)
    return (text, text)


def _deleted_reason(reason: str | None) -> tuple[str, str]:
    if reason and reason.startswith("erasure"):
        ref = reason.partition(":")[2]
        return (f"op uw verzoek tot wissen {ref}".strip(), f"at your erasure request {ref}".strip())
    return DELETE_REASONS.get(reason, (reason or "onbekend", reason or "unknown"))


def _recording_html(rec: dict, left: dict | None, tz: dt.tzinfo) -> str:
    state = _both(STATES.get(rec["state"], (rec["state"], rec["state"])))
    lines = [state]
    if rec["state"] == ledger.DELETED:
        nl, en = _deleted_reason(rec["reason"])
        lines.append(f'op {_time(rec["deleted_at"], tz)}, omdat {_e(nl)}<br>'
                     f'<span class="en" lang="en">on {_time(rec["deleted_at"], tz)}, because {_e(en)}</span>')
    if rec["legal_hold"]:
        nl, en = HOLDS.get(rec["legal_hold"], (rec["legal_hold"], rec["legal_hold"]))
        lines.append(_both((f"Langer bewaard voor de politie (wettelijke bewaring: {nl})",
                            f"Kept longer for the police (legal hold: {en})")))
    if rec["file"]:
        lines.append(f'Bestand / file: <code>{_e(rec["file"])}</code>')
    if left is not None:
        lines.append('<div class="note">' + _both((
            f"Niet meegeleverd: het gebruik van deze opname is beperkt op uw verzoek {left['request']} "
            "(art. 18 AVG); zij wordt alleen bewaard.",
            f"Not included: the use of this recording is restricted at your request {left['request']} "
            "(art. 18 GDPR); it is only stored.")) + "</div>")
    return (f'<tr><th>{_both(("Opname", "Recording"))}<br><code>{_e(rec["id"])}</code></th>'
            f'<td>{"<br>".join(lines)}</td></tr>')


def _call_html(n: int, call: dict, left_out: dict, tz: dt.tzinfo) -> str:
    consent = call["consent"]
    rows = [
        (("Datum en tijd", "Date and time"), _time(call["started_at"], tz)),
        (("Telefoonnummer zoals bewaard", "Phone number as stored"),
         _e(call["caller_number"]) if call["caller_number"] else _both(("niet (meer) bewaard", "not (or no longer) stored"))),
        (("Gespreksduur", "Duration"), _seconds(call["duration_seconds"])),
        (("Wachttijd tot een medewerker", "Wait for an employee"), _seconds(call["wait_seconds"])),
        (("Uitkomst", "Outcome"), _both(OUTCOMES.get(consent["outcome"], OUTCOMES[None]))),
    ]
    if consent["decided_by"]:
        nl, en = BY.get(consent["decided_by"], (consent["decided_by"], consent["decided_by"]))
        rows.append((("Hoe besloten", "How it was decided"),
                     f"{_e(nl)}, {_time(consent['decided_at'], tz)}<br>"
                     f'<span class="en" lang="en">{_e(en)}, {_time(consent["decided_at"], tz)}</span>'))
    if consent["withdrawn_by"]:
        nl, en = BY.get(consent["withdrawn_by"], (consent["withdrawn_by"], consent["withdrawn_by"]))
        rows.append((("Toestemming ingetrokken", "Consent withdrawn"),
                     f"{_e(nl)}, {_time(consent['withdrawn_at'], tz)}<br>"
                     f'<span class="en" lang="en">{_e(en)}, {_time(consent["withdrawn_at"], tz)}</span>'))
    for detail in call["details"]:
        label = FIELDS.get(detail["field"], (detail["field"], detail["field"]))
        rows.append((label, f'{_e(detail["value"])}<br><span class="en">(gecorrigeerd / rectified '
                            f'{_time(detail["updated_at"], tz)}, {_e(detail["request"])})</span>'))
    for flag in call["flags"]:
        rows.append((("Markering", "Flag"), _both(FLAGS.get(flag["kind"], (flag["kind"], flag["kind"])))
                     + f" ({_time(flag['at'], tz)})"))
    if call["restriction"]:
        r = call["restriction"]
        rows.append((("Beperking", "Restriction"),
                     _both((f"Sinds {_time(r['since'], tz)} op uw verzoek {r['request']}: alleen bewaren",
                            f"Since {_time(r['since'], tz)} at your request {r['request']}: storage only"))))
    if call["personal_data_erased"]:
        erased = call["personal_data_erased"]
        nl, en = _deleted_reason(erased["reason"])
        rows.append((("Persoonsgegevens gewist", "Personal data erased"),
                     f"{_time(erased['at'], tz)}: {_e(nl)}<br><span class='en' lang='en'>{_e(en)}</span>"))
    if not call["recordings"]:
        rows.append((("Opname", "Recording"), _both(("Geen opname", "No recording"))))
    body = "".join(f"<tr><th>{_both(label)}</th><td>{value}</td></tr>" for label, value in rows)
    body += "".join(_recording_html(rec, left_out.get(rec["id"]), tz) for rec in call["recordings"])
    return (f'<section class="call" id="call-{_e(call["uuid"])}"><h3>Gesprek {n} <span class="en">/ Call {n}</span>'
            f' &middot; <code>{_e(call["uuid"])}</code></h3><table>{body}</table></section>')


def render_html(doc: dict, tz: dt.tzinfo) -> str:
    """One page, no scripts, no external resources: readable offline in any browser."""
    calls, files = doc["calls"], doc["files"]
    left_out = {x["recording_id"]: x for x in doc["left_out"]}
    req = doc["request"]
    zone_name = getattr(tz, "key", "UTC")
    recs_nl, recs_en = _term(doc["retention"]["recordings_seconds"])
    calls_nl, calls_en = _term(doc["retention"]["call_records_seconds"])
    parts = [
        '<header><h1>Uw gegevens bij ons telefoonnummer <span class="en">/ Your data from our telephone '
        'system</span></h1>'
        f'<p>Inzageverzoek / access request {_e(req["ref"])} &middot; telefoonnummer / phone number '
        f'{_e(doc["number"])} &middot; gemaakt op / made on {_time(doc["generated_at"], tz)} '
        f'&middot; tijden in / times in {_e(zone_name)}</p></header><main>',
        '<section id="overview"><h2>Wat wij bewaren <span class="en">/ What we hold</span></h2>',
    ]
    if not calls:
        parts.append("<p>" + _both(("Wij bewaren geen gesprekken van dit telefoonnummer.",
                                    "We hold no calls from this phone number.")) + "</p>")
    else:
        parts.append("<p>" + _both((
            f"Wij bewaren {len(calls)} gesprek(ken) van dit telefoonnummer; {len(files)} opname(n) zijn "
            "bij dit overzicht gevoegd.",
            f"We hold {len(calls)} call(s) from this phone number; {len(files)} recording(s) are "
            "enclosed with this summary.")) + "</p>")
    if left_out:
        parts.append('<div class="note">' + _both((
            f"{len(left_out)} opname(n) zijn niet meegeleverd omdat het gebruik ervan op uw verzoek is beperkt "
            "(zie hieronder).",
            f"{len(left_out)} recording(s) are not enclosed because their use is restricted at your request "
            "(see below).")) + "</div>")
    for objection in doc["objections"]:
        state = (f"ingetrokken {_time(objection['withdrawn_at'], tz)}" if objection["withdrawn_at"] else "geldt",
                 f"withdrawn {_time(objection['withdrawn_at'], tz)}" if objection["withdrawn_at"] else "in force")
        parts.append("<p>" + _both((
            f"Bezwaar tegen opnemen (verzoek {objection['request']}) sinds {_time(objection['placed_at'], tz)}: "
            f"{state[0]}.",
            f"Objection to recording (request {objection['request']}) since {_time(objection['placed_at'], tz)}: "
            f"{state[1]}.")) + "</p>")
    parts.append("</section>")
    parts += [_call_html(n, call, left_out, tz) for n, call in enumerate(calls, start=1)]
    parts.append(
        '<section id="retention"><h2>Hoe lang wij bewaren <span class="en">/ How long we keep it</span></h2><p>'
        + _both((f"Opnames worden {recs_nl} na het gesprek verwijderd, tenzij ze langer bewaard moeten worden voor "
                 f"de politie (bij agressie of intimidatie). Gespreksgegevens worden {calls_nl} bewaard; daarna "
                 "wissen wij uw telefoonnummer en andere persoonsgegevens eruit.",
                 f"Recordings are deleted {recs_en} after the call, unless they must be kept for the police "
                 f"(aggression or intimidation). Call records are kept for {calls_en}; then your phone number "
                 "and other personal data are erased from them."))
        + "</p><p>" + _both(("U kunt ons vragen gegevens te verbeteren, te wissen of het gebruik ervan te beperken, "
                             "en bezwaar maken tegen opnemen.",
                             "You can ask us to rectify or erase your data or to restrict its use, and object to "
                             "being recorded.")) + "</p></section>")
    if files:
        rows = "".join(f'<tr><td><code>{_e(f["name"])}</code></td><td><code>{_e(f["sha256"])}</code></td></tr>'
                       for f in files)
        parts.append('<section id="files"><h2>Bestanden <span class="en">/ Files</span></h2><p>'
                     + _both(("De opnames zijn WAV-bestanden; de controlegetallen (SHA-256) staan hieronder en in "
                              "calls.json.",
                              "The recordings are WAV files; their checksums (SHA-256) are below and in "
                              "calls.json."))
                     + (" " + _both(("Ze zijn versleuteld voor uw sleutel; open ze met age -d.",
                                     "They are encrypted to your key; open them with age -d."))
                        if any(f["encryption"] == "age" for f in files) else "")
                     + f"</p><table><tr><th>bestand / file</th><th>SHA-256</th></tr>{rows}</table></section>")
    parts.append("</main>")
    return ('<!DOCTYPE html>\n<html lang="nl"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>Inzage / Access {_e(req['ref'])}</title><style>{_CSS}</style></head>"
            f"<body>{''.join(parts)}</body></html>\n")
