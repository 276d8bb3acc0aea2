"""Who took the call and its route, in the driver alone: CHANNEL_BRIDGE / CHANNEL_UNBRIDGE /
CHANNEL_HANGUP in, ``StaffBridged`` / ``StaffUnbridged`` / ``CallRouted`` facts out."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from fs_consent.runtime import driver
from fs_consent.store import facts as f

from ..fakes import FakeServices, answer_prompt, start_call
from .test_driver import hang_up


def bridge(fs, leg: str, **headers) -> None:
    fs.event("CHANNEL_BRIDGE", Bridge_A_Unique_ID="a", Bridge_B_Unique_ID=leg, Other_Leg_Unique_ID=leg, **headers)


def opened(services, fact) -> str:
    return services.protector.open("staff", fact.staff_sealed)


def run_call(tmp_path, script, **changes):
    services = dataclasses.replace(FakeServices(tmp_path), **changes)
    session, fs, runner = start_call(services)
    answer_prompt(fs, services.policy, "1")  # refused: staff are recorded whatever the consent
    script(fs)
    hang_up(fs, session, runner)
    return services


def test_a_transfer_between_two_members_of_staff_gives_two_rows_in_order(tmp_path):
    def script(fs):
        bridge(fs, "leg-1", Other_Leg_Destination_Number="1001", Other_Leg_Callee_ID_Number="default",
               variable_fs_consent_route="vergunningen")
        bridge(fs, "leg-1", Other_Leg_Destination_Number="1001")  # told again: nothing new
        fs.event("CHANNEL_UNBRIDGE", Other_Leg_Unique_ID="leg-1")
        bridge(fs, "leg-2", Other_Leg_Destination_Number="1002", variable_fs_consent_route="burgerzaken")
        bridge(fs, "leg-3", Other_Leg_Destination_Number="1003")  # a new leg without an unbridge first
    services = run_call(tmp_path, script)
    bridged = services.writer.of(f.StaffBridged)
    assert [(b.seq, opened(services, b), b.route) for b in bridged] == [
        (1, "1001", "vergunningen"), (2, "1002", "burgerzaken"), (3, "1003", None)]
    assert bridged[0].staff_hash == services.protector.lookup_hash("staff", "1001")
    unbridged = services.writer.of(f.StaffUnbridged)
    assert [u.seq for u in unbridged] == [1, 2, 3]  # the last one by the end of the call
    assert all(b.at <= u.at for b, u in zip(bridged, unbridged))
    assert [r.route for r in services.writer.of(f.CallRouted)] == ["vergunningen"]  # the first bridge's
    kinds = [type(x) for x in services.writer.facts]
    assert kinds.index(f.StaffUnbridged) < kinds.index(f.CallEnded)


def test_the_staff_variable_names_them_and_without_it_nothing_is_recorded(tmp_path):
    def script(fs):
        bridge(fs, "leg-1", Other_Leg_Destination_Number="1001", variable_cc_agent="agent-jan@default")
        fs.event("CHANNEL_UNBRIDGE")
        bridge(fs, "leg-2", Other_Leg_Destination_Number="1002")  # no cc_agent: the extension is not used
    services = run_call(tmp_path, script, staff_variable="cc_agent")
    assert [(b.seq, opened(services, b)) for b in services.writer.of(f.StaffBridged)] == [(1, "agent-jan@default")]
    assert [u.seq for u in services.writer.of(f.StaffUnbridged)] == [1]


@pytest.mark.parametrize("headers", [
    {}, {"Other_Leg_Destination_Number": "_undef_"}, {"Other_Leg_Destination_Number": " ",
                                                      "Other_Leg_Callee_ID_Number": "default"},
    {"Other_Leg_Destination_Number": "x" * 300},
])
def test_a_bridge_that_names_nobody_records_nothing(tmp_path, headers):
    services = run_call(tmp_path, lambda fs: bridge(fs, "leg-1", **headers))
    assert services.writer.of(f.StaffBridged) == [] and services.writer.of(f.StaffUnbridged) == []
    assert len(services.writer.of(f.CallEnded)) == 1


def test_the_callee_number_when_the_destination_is_missing(tmp_path):
    services = run_call(tmp_path, lambda fs: bridge(fs, "leg-1", Other_Leg_Callee_ID_Number="2002"))
    assert [opened(services, b) for b in services.writer.of(f.StaffBridged)] == ["2002"]


def test_the_route_at_the_end_when_no_bridge_had_one(tmp_path):
    services = dataclasses.replace(FakeServices(tmp_path), route_variable="cc_queue")
    session, fs, runner = start_call(services)
    answer_prompt(fs, services.policy, "1")
    fs.event("CHANNEL_HANGUP", Hangup_Cause="NORMAL_CLEARING", variable_cc_queue="balie")
    hang_up(fs, session, runner)
    assert [r.route for r in services.writer.of(f.CallRouted)] == ["balie"]


def test_a_failure_recording_the_staff_costs_the_call_nothing_and_logs_no_identifier(tmp_path, caplog):
    real = FakeServices(tmp_path).protector

    class Broken:
        def lookup_hash(self, kind, value):
            if kind == "staff":
                raise RuntimeError(value)  # a message holding the identifier: must not reach the log
            return real.lookup_hash(kind, value)

        def seal(self, kind, value):
            return real.seal(kind, value)

    caplog.set_level(logging.DEBUG)
    services = run_call(tmp_path, lambda fs: bridge(fs, "leg-1", Other_Leg_Destination_Number="4711"),
                        protector=Broken())
    assert services.writer.of(f.StaffBridged) == []
    assert len(services.writer.of(f.CallEnded)) == 1
    assert "cannot record the staff or route (RuntimeError)" in caplog.text
    assert "4711" not in caplog.text


def test_staff_of_reads_only_what_names_someone():
    assert driver.staff_of({"Other-Leg-Destination-Number": " 1001 "}, "") == "1001"
    assert driver.staff_of({"variable_cc_agent": "a@b", "Other-Leg-Destination-Number": "1"}, "cc_agent") == "a@b"
    assert driver.staff_of({"Other-Leg-Destination-Number": "a\nb"}, "") is None


def test_the_facts_survive_the_journal():
    fact = f.StaffBridged("inst", 2, "h" * 64, b"\x01sealed", "q", f._at("2026-03-02T09:00:00"))
    back = f.from_json(fact.to_json())  # times stay ISO text until apply() reads them
    assert (type(back), back.staff_sealed, back.to_json()) == (f.StaffBridged, b"\x01sealed", fact.to_json())
    for other in (f.StaffUnbridged("inst", 2, f._at("2026-03-02T09:01:00")), f.CallRouted("inst", "q")):
        assert f.from_json(other.to_json()).to_json() == other.to_json()


def test_a_real_freeswitch_bridge_names_the_extension_dialed_not_loopbacks_context(captures_dir):
    """Capture s18 (FreeSWITCH 1.10.12, a transfer into a bridge to extension ``staff``): its
    CHANNEL_BRIDGE and CHANNEL_UNBRIDGE, as the wire carried them, name the member of staff."""
    from fs_consent import esl

    wire = captures_dir / "s18_transfer_to_bridge.outbound.rx.bin"
    events = [m.event() for m in esl.FrameParser().feed(wire.read_bytes()) if m.content_type == "text/event-plain"]
    (bridged,) = [e for e in events if e.name == "CHANNEL_BRIDGE"]
    assert bridged.get("Other-Leg-Callee-ID-Number") == "default"  # loopback's context: nobody
    assert driver.staff_of(bridged, "") == "staff"  # the extension the bridge dialed
    assert driver.staff_of(bridged, "cc_agent") is None  # a variable the menu did not set names nobody
    assert [e.name for e in events].count("CHANNEL_UNBRIDGE") == 1
