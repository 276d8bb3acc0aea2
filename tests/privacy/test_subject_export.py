"""The right of access (art. 15) and restriction (art. 18) end to end.

Calls are made through the emulator against the real server (real TCP, a real database,
real age files); the export runs as the real command line in another process. The
requester must get every call of their number and nothing of anyone else's, readable
and complete, their recordings byte for byte; a restricted call's recording is opened
only for a legal claim; bad input leaves nothing behind and the audit trail unchanged.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from fs_consent.privacy import subject_export, subject_requests, subjects
from fs_consent.privacy.errors import SubjectError
from fs_consent.secure.vault import Vault
from fs_consent.store import ledger

from ..harness import Harness, age_decrypt, fs_consent

A_WRITTEN = "+31 6 1111 2222"  # how the privacy officer writes A's number
A_FORMS = ("06 1111 2222", "+31611112222", "0031 6 11112222")  # how A's calls arrived
B_CALLER_ID = "0633334444"
TODAY = dt.date.today()


@pytest.fixture
def harness(tmp_path):
    with Harness(tmp_path / "data") as h:
        yield h




def wav_checksums(result) -> dict[str, str]:
    """recording id -> sha256 of the WAV the emulated switch wrote."""
    return {Path(path).stem: info.sha256 for path, info in result.recordings.items()}


@dataclass
class History:
    a_refused: str  # call uuids
    a_granted: list[str]
    a_withdrawn: str
    b_granted: str
    wavs: dict[str, str]  # recording id -> sha256 of the original WAV

    @property
    def a_calls(self) -> list[str]:
        return [self.a_refused, *self.a_granted, self.a_withdrawn]


@pytest.fixture
def history(harness) -> History:
    """A refused (first: a later refusal would withdraw the earlier recordings), two recorded,
    one withdrawn during the call; B recorded once. A's number arrives written three ways."""
    refused = harness.call(digits=["1"], caller_number=A_FORMS[0])
    granted = [harness.call(digits=[None], caller_number=A_FORMS[1]),
               harness.call(digits=[None], caller_number=A_FORMS[2], talk_seconds=0.4)]
    withdrawn = harness.call(digits=[None], talk_seconds=0.5, caller_keys=[(0.1, "*1")], caller_number=A_FORMS[0])
    other = harness.call(digits=[None], caller_number=B_CALLER_ID)
    wavs = {}
    for result in (*granted, other):
        wavs.update(wav_checksums(result))
    assert harness.call_row(withdrawn.uuid).outcome == "withdrawn"
    return History(refused.uuid, [r.uuid for r in granted], withdrawn.uuid, other.uuid, wavs)


def recording_of(h: Harness, call_uuid: str) -> ledger.Recording:
    (rec,) = h.recordings_of(call_uuid)
    return rec


def access_request(ref: str = "AV-2027-001", received: dt.date = TODAY, kind: str = "access"):
    return subject_requests.add(ref, kind, received, actor="privacy-officer", today=TODAY)


def restrict(h: Harness, call_uuid: str, ref: str = "BP-2027-002") -> ledger.Restriction:
    request = access_request(ref, kind="restrict")
    return ledger.Restriction.create(call=h.call_row(call_uuid).id, request=request.id, placed_at=ledger.utcnow(),
                                     placed_by="privacy-officer")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def sha_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def audit(action: str) -> list[ledger.AuditEntry]:
    return list(ledger.AuditEntry.select().where(ledger.AuditEntry.action == action).order_by(ledger.AuditEntry.seq))


def export(h: Harness, out: Path, *extra: str, number: str = A_WRITTEN, ref: str = "AV-2027-001"):
    return fs_consent(h, "subject", "export", "--phone", number, "--request", ref, "--out", str(out), *extra)


# --- the export -------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_export_holds_every_call_of_the_number_and_nothing_else(harness, history, tmp_path):
    access_request()
    first = recording_of(harness, history.a_granted[0])
    subjects.rectify(history.a_granted[0], "name", "Jan <b>de</b> Vries & Zn", access_request("RC-1", kind="rectify"),
                     actor="privacy-officer", protector=subjects.protector_for(Path(harness.config.storage.keys_dir)))
    out = tmp_path / "access"
    done = export(harness, out)
    assert done.returncode == 0, done.stderr
    assert "11112222" not in done.stdout + done.stderr  # the number is not echoed

    a_recs = [recording_of(harness, uuid) for uuid in history.a_granted]
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["summary.html", "calls.json", *(f"{r.id}.wav" for r in a_recs)])
    assert mode(out) == 0o700 and all(mode(p) == 0o600 for p in out.iterdir())
    for rec in a_recs:  # the recordings themselves, byte for byte
        assert sha_file(out / f"{rec.id}.wav") == history.wavs[rec.id]

    doc = json.loads((out / "calls.json").read_text())
    assert doc["request"]["ref"] == "AV-2027-001" and doc["number"] == "+31611112222"
    assert [c["uuid"] for c in doc["calls"]] == history.a_calls  # all of A's, oldest first; none of B's
    by_uuid = {c["uuid"]: c for c in doc["calls"]}
    assert {c["caller_number"] for c in doc["calls"]} == set(A_FORMS)  # as stored: the requester's own data
    refused = by_uuid[history.a_refused]
    assert (refused["consent"]["outcome"], refused["consent"]["decided_by"], refused["recordings"]) == (
        "refused", "key", [])
    withdrawn = by_uuid[history.a_withdrawn]
    assert withdrawn["consent"]["withdrawn_by"] == "caller_keys"
    assert [(r["state"], r["reason"], r["file"]) for r in withdrawn["recordings"]] == [("deleted", "withdrawn", None)]
    granted = by_uuid[history.a_granted[0]]
    assert granted["duration_seconds"] > 0 and granted["wait_seconds"] is not None
    assert granted["details"][0]["field"] == "name" and granted["details"][0]["value"] == "Jan <b>de</b> Vries & Zn"
    assert granted["recordings"][0]["file"] == f"{first.id}.wav"
    assert {f["name"]: f["sha256"] for f in doc["files"]} == {f"{r.id}.wav": history.wavs[r.id] for r in a_recs}
    assert doc["left_out"] == [] and doc["retention"]["recordings"] == "60d"

    page = (out / "summary.html").read_text()
    for uuid in history.a_calls:
        assert uuid in page
    for rec in a_recs:
        assert f"{rec.id}.wav" in page and history.wavs[rec.id] in page
    assert history.b_granted not in page and history.b_granted not in json.dumps(doc)
    assert recording_of(harness, history.b_granted).id not in page
    assert "Jan &lt;b&gt;de&lt;/b&gt; Vries &amp; Zn" in page and "<b>" not in page  # opened, as text
    for heading in ("Wat wij bewaren", "What we hold", "Hoe lang wij bewaren", "How long we keep it"):
        assert heading in page
    assert "60 dagen" in page and "60 days" in page and "1 jaar" in page
    assert "U trok uw toestemming in" in page and "You refused consent" in page
    for needle in ("http:", "https:", "<script", "<link", "src=", "url(", "@import"):
        assert needle not in page  # one offline page

    (entry,) = audit("subject.export")
    detail = json.loads(entry.detail)
    assert (entry.object_type, entry.object_id, entry.actor) == ("request", "AV-2027-001", ledger.os_user())
    assert detail["calls"] == history.a_calls
    assert detail["recordings"] == [{"id": r.id, "sha256": history.wavs[r.id]} for r in a_recs]
    assert (detail["to_recipient"], detail["legal_claim"], detail["out"]) == (False, None, str(out.resolve()))
    assert "11112222" not in entry.detail and "Jan" not in entry.detail


@pytest.mark.slow
def test_re_encrypted_to_the_requesters_key_it_opens_with_age_only_for_them(harness, history, tmp_path):
    access_request()
    identity = tmp_path / "requester.txt"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    public = subprocess.run(["age-keygen", "-y", str(identity)], check=True, capture_output=True,
                            text=True).stdout.strip()
    out = tmp_path / "access"
    done = export(harness, out, "--to-recipient", public)
    assert done.returncode == 0, done.stderr
    a_recs = [recording_of(harness, uuid) for uuid in history.a_granted]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["summary.html", "calls.json", *(f"{r.id}.wav.age" for r in a_recs)])  # no plaintext WAV
    for rec in a_recs:
        assert hashlib.sha256(age_decrypt(identity, out / f"{rec.id}.wav.age")).hexdigest() == history.wavs[rec.id]
        assert subprocess.run(["age", "-d", "-i", str(harness.identity), str(out / f"{rec.id}.wav.age")],
                              capture_output=True).returncode != 0  # for the requester only
    doc = json.loads((out / "calls.json").read_text())
    for entry in doc["files"]:
        assert entry["encryption"] == "age" and entry["recipient"] == public
        assert entry["sha256"] == sha_file(out / entry["name"])
        assert entry["plaintext_sha256"] == history.wavs[entry["recording_id"]]
    assert "open them with age -d" in (out / "summary.html").read_text()
    assert json.loads(audit("subject.export")[0].detail)["to_recipient"] is True


@pytest.mark.slow
def test_a_number_without_calls_gets_a_summary_that_nothing_is_held(harness, tmp_path):
    harness.call(digits=[None], caller_number=B_CALLER_ID)
    access_request()
    out = tmp_path / "access"
    done = export(harness, out, number="06 9999 0000")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["calls.json", "summary.html"]
    doc = json.loads((out / "calls.json").read_text())
    assert doc["calls"] == [] and doc["files"] == [] and doc["number"] == "+31699990000"
    page = (out / "summary.html").read_text()
    assert "Wij bewaren geen gesprekken van dit telefoonnummer" in page and "We hold no calls" in page
    assert json.loads(audit("subject.export")[0].detail)["calls"] == []


# --- restriction (art. 18) ----------------------------------------------------------------------


@pytest.mark.slow
def test_a_restricted_calls_recording_is_left_out_unless_for_a_legal_claim(harness, history, tmp_path):
    access_request()
    kept, restricted = (recording_of(harness, uuid) for uuid in history.a_granted)
    restrict(harness, history.a_granted[1])
    out = tmp_path / "access"
    done = export(harness, out)
    assert done.returncode == 0, done.stderr
    assert f"left out (the call is restricted): {restricted.id}" in done.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(["summary.html", "calls.json", f"{kept.id}.wav"])
    doc = json.loads((out / "calls.json").read_text())
    assert doc["left_out"] == [{"recording_id": restricted.id, "call_uuid": history.a_granted[1],
                                "reason": "restricted", "request": "BP-2027-002"}]
    call = next(c for c in doc["calls"] if c["uuid"] == history.a_granted[1])
    assert call["restriction"]["request"] == "BP-2027-002" and call["recordings"][0]["file"] is None
    assert "Niet meegeleverd" in (out / "summary.html").read_text()  # the summary says why
    assert json.loads(audit("subject.export")[0].detail)["left_out"] == [restricted.id]

    claimed = tmp_path / "for-court"
    done = export(harness, claimed, "--legal-claim", "court case 2027/123")
    assert done.returncode == 0, done.stderr
    assert sha_file(claimed / f"{restricted.id}.wav") == history.wavs[restricted.id]
    detail = json.loads(audit("subject.export")[1].detail)
    assert detail["legal_claim"] == "court case 2027/123" and detail["restrictions_overridden"] == ["BP-2027-002"]
    assert detail["left_out"] == []


@pytest.mark.slow
def test_restriction_blocks_the_recordings_export_unless_for_a_legal_claim(harness, history, tmp_path):
    rec = recording_of(harness, history.a_granted[0])
    restrict(harness, history.a_granted[0])
    before = ledger.AuditEntry.select().count()
    for args in ([], ["--case", "PV-2027-9"]):
        out = tmp_path / f"out{len(args)}"
        done = fs_consent(harness, "recordings", "export", rec.id, "--out", str(out), *args)
        assert done.returncode == 1, done.stderr
        assert f"call {history.a_granted[0]} is restricted (request BP-2027-002" in done.stderr
        assert "--legal-claim REASON" in done.stderr and not out.exists()
    assert ledger.AuditEntry.select().count() == before

    plain = tmp_path / "plain.wav"
    done = fs_consent(harness, "recordings", "export", rec.id, "--out", str(plain), "--legal-claim", "claim 17")
    assert done.returncode == 0, done.stderr
    assert sha_file(plain) == history.wavs[rec.id] and mode(plain) == 0o600
    police = tmp_path / "police"
    done = fs_consent(harness, "recordings", "export", rec.id, "--out", str(police), "--case", "PV-2027-9",
                      "--legal-claim", "PV-2027-9 aggression report")
    assert done.returncode == 0, done.stderr
    assert sha_file(police / f"PV-2027-9-{rec.id}.wav") == history.wavs[rec.id]
    entries = [json.loads(e.detail) for e in audit("recording.export")]
    assert [(d["legal_claim"], d["restriction"]) for d in entries] == [
        ("claim 17", "BP-2027-002"), ("PV-2027-9 aggression report", "BP-2027-002")]

    done = fs_consent(harness, "recordings", "export", rec.id, "--out", str(tmp_path / "x.wav"),
                      "--legal-claim", "   ")
    assert done.returncode == 2 and "--legal-claim" in done.stderr and not (tmp_path / "x.wav").exists()


@pytest.mark.slow
def test_a_lifted_restriction_no_longer_blocks(harness, history, tmp_path):
    rec = recording_of(harness, history.a_granted[0])
    restriction = restrict(harness, history.a_granted[0])
    restriction.lifted_at, restriction.lifted_by = ledger.utcnow(), "privacy-officer"
    restriction.save()
    done = fs_consent(harness, "recordings", "export", rec.id, "--out", str(tmp_path / "r.wav"))
    assert done.returncode == 0, done.stderr
    assert json.loads(audit("recording.export")[0].detail)["restriction"] is None


# --- bad input: one clear line, nothing written, nothing audited -----------------------------


@pytest.mark.parametrize("case", [
    "unparseable-number", "anonymous", "unknown-request", "bad-ref", "wrong-kind", "past-due", "refused",
    "not-empty", "out-is-file", "bad-recipient", "blank-claim", "bad-timezone", "missing-store-file",
])
@pytest.mark.slow
def test_bad_input_is_a_clear_error_and_changes_nothing(harness, tmp_path, case):
    recorded = harness.call(digits=[None], caller_number=A_FORMS[1])  # there is something to export
    access_request()
    out = tmp_path / "access"
    number, ref, extra = A_WRITTEN, "AV-2027-001", []
    expected = {
        "unparseable-number": "the phone number given is not usable",
        "anonymous": "the phone number given is empty or anonymous",
        "unknown-request": "no request AV-404 in the register",
        "bad-ref": "the request reference is not allowed",
        "wrong-kind": "request ER-1 is of kind erase; this action needs a request of kind access",
        "past-due": "request AV-OLD was due on",
        "refused": "request AV-NO was refused on",
        "not-empty": "exists and is not empty",
        "out-is-file": "exists and is not a directory",
        "bad-recipient": "--to-recipient is not an age X25519 public key",
        "blank-claim": "Invalid value for '--legal-claim'",
        "bad-timezone": "unknown time zone 'Mars/Olympus'",
        "missing-store-file": "cannot read",
    }[case]
    if case == "unparseable-number":
        number = "call me maybe"
    elif case == "anonymous":
        number = "anonymous"
    elif case == "unknown-request":
        ref = "AV-404"
    elif case == "bad-ref":
        ref = "../etc"
    elif case == "wrong-kind":
        access_request("ER-1", kind="erase")
        ref = "ER-1"
    elif case == "past-due":
        access_request("AV-OLD", received=TODAY - dt.timedelta(days=40))
        ref = "AV-OLD"
    elif case == "refused":
        access_request("AV-NO")
        subject_requests.decide("AV-NO", "refused", "identity not shown", actor="privacy-officer")
        ref = "AV-NO"
    elif case == "not-empty":
        out.mkdir()
        (out / "notes.txt").write_text("the officer's notes")
    elif case == "out-is-file":
        out.write_text("a file")
    elif case == "bad-recipient":
        extra = ["--to-recipient", "AGE-SECRET-KEY-1NOTAPUBLICKEY"]
    elif case == "blank-claim":
        extra = ["--legal-claim", ""]
    elif case == "bad-timezone":
        extra = ["--timezone", "Mars/Olympus"]
    elif case == "missing-store-file":  # the ciphertext vanished: found before anything is written
        (harness.store / f"{recording_of(harness, recorded.uuid).id}.age").unlink()
    before_dir = sorted(p.name for p in tmp_path.iterdir())
    before_out = sorted(p.name for p in out.iterdir()) if out.is_dir() else None
    before_audit = ledger.AuditEntry.select().count()
    done = export(harness, out, *extra, number=number, ref=ref)
    assert done.returncode != 0
    assert expected in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "11112222" not in done.stderr
    assert len([line for line in done.stderr.splitlines() if line.strip()]) <= 3  # at most usage, hint, error
    assert ledger.AuditEntry.select().count() == before_audit
    assert sorted(p.name for p in tmp_path.iterdir()) == before_dir
    assert (sorted(p.name for p in out.iterdir()) if out.is_dir() else None) == before_out


@pytest.mark.slow
def test_a_failure_half_way_leaves_nothing_behind(harness, history, tmp_path, monkeypatch):
    """The recordings are written, then the summary fails (disk full): all of it goes."""
    access_request()
    real = subject_export.write_new

    def full_at_the_summary(path, data, written):
        if path.name == subject_export.SUMMARY:
            raise OSError(28, "No space left on device")
        real(path, data, written)

    monkeypatch.setattr(subject_export, "write_new", full_at_the_summary)
    config = harness.config
    vault = Vault(Path(config.storage.store_dir), [], workers=0)
    out = tmp_path / "access"
    before = ledger.AuditEntry.select().count()
    with pytest.raises(SubjectError, match="No space left on device; nothing was left behind"):
        subject_export.export(A_WRITTEN, request_ref="AV-2027-001", out_dir=out, config=config, vault=vault,
                              actor="privacy-officer")
    assert not out.exists() and ledger.AuditEntry.select().count() == before
    assert os.listdir(tmp_path) == ["data"]
