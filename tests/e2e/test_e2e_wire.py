"""The call path against the wire as a real FreeSWITCH writes it (issue 10's defects).

Each test forces one disorder the real FreeSWITCH showed (captures s10, s11, s13,
handshake_race.txt, pagd_hangup_race.txt) and checks what the municipality must be able
to show afterwards: every call in the ledger, with the outcome the caller chose.
"""

from __future__ import annotations

import uuid
from collections import Counter

import pytest

from fs_consent.emulator import CallerScript, FreeSwitchEmulator, WireChaos
from fs_consent.store import ledger

from ..harness import TIME_SCALE, Harness


def emulator(h: Harness, chaos: WireChaos) -> FreeSwitchEmulator:
    return FreeSwitchEmulator(*h.server.address, spool_dir=h.spool, time_scale=TIME_SCALE, chaos=chaos)


@pytest.mark.parametrize("script, outcome", [
    (dict(digits=["1"]), "refused"), (dict(digits=[None]), "granted")])
def test_an_event_before_a_handshake_reply_does_not_drop_the_call(tmp_path, script, outcome):
    """CHANNEL_PARK between '+OK will linger' and the reply to 'event plain ...' (s10, s11)."""
    with Harness(tmp_path / "data") as h:
        results = [emulator(h, WireChaos.only(park=1.0, seed=n)).place_call(CallerScript(**script), timeout=20)
                   for n in range(6)]
        h.settle()
        for result in results:
            assert result.errors == [], result.errors
            assert result.channel_vars.get("fs_consent") == outcome  # it went through the prompt
            assert h.call_row(result.uuid).outcome == outcome


def test_a_hangup_that_completes_the_prompt_like_a_timeout_is_abandoned_not_silence(tmp_path):
    """s13: the caller hangs up while the prompt waits for the digit; the completion comes
    first, header for header a timeout, and CHANNEL_HANGUP a millisecond later."""
    with Harness(tmp_path / "data") as h:
        result = emulator(h, WireChaos.only(completion_before_hangup=1.0)).place_call(
            CallerScript(digits=[None], hangup_in_timeout=True), timeout=20)
        h.settle()
        assert result.errors == []
        row = h.call_row(result.uuid)
        assert (row.outcome, row.decided_by) == ("abandoned", "hangup")
        assert h.recordings_of(result.uuid) == [] and result.recordings == {}
        assert "execute_extension" not in [app for app, _arg in result.executed]  # nobody left to send on


def test_in_the_usual_order_the_same_hangup_is_abandoned_too(tmp_path):
    with Harness(tmp_path / "data") as h:
        result = emulator(h, WireChaos.off()).place_call(CallerScript(digits=[None], hangup_in_timeout=True),
                                                        timeout=20)
        h.settle()
        row = h.call_row(result.uuid)
        assert (row.outcome, row.decided_by) == ("abandoned", "hangup")


def test_a_genuine_timeout_is_still_consent_by_silence_under_chaos(tmp_path):
    with Harness(tmp_path / "data") as h:
        result = emulator(h, WireChaos(seed=7)).place_call(CallerScript(digits=[None], hangup_after_digits=0.05),
                                                          timeout=20)
        h.settle()
        row = h.call_row(result.uuid)
        assert (row.outcome, row.decided_by) == ("granted", "silence")


#: what the wire decides: the handshake and the prompt (timed keys during the talk are left to the
#: smaller mixed tests: with a thousand emulated calls and the server on one hub here, a key
#: 0.1 s into the talk can fire after the talk ended, which measures this machine, not fs-consent)
WIRE_SCENARIOS = ("refuse", "silence", "grant-key", "other-digit", "hangup-in-prompt")


def place_thousand(h: Harness, chaos: WireChaos) -> tuple[Counter, list]:
    import gevent.pool

    from fs_consent.emulator.scenarios import caller_script, expected_outcome

    # real-time timers: the emulator stamps events on a clock time_scale times faster, so with
    # a thousand calls on this one hub a scheduling lag would look twenty times longer to the driver
    em = FreeSwitchEmulator(*h.server.address, spool_dir=h.spool, time_scale=1.0, chaos=chaos)
    placed, errors, pool = [], [], gevent.pool.Pool(1000)

    def one(i: int) -> None:
        name = WIRE_SCENARIOS[i % len(WIRE_SCENARIOS)]
        result = em.place_call(caller_script(name, f"06{30000000 + i:08d}"), timeout=120)
        errors.extend(result.errors)
        placed.append((name, result.uuid))
        assert (result.channel_vars.get("fs_consent") or None) == expected_outcome(name, opt_in=False)

    for i in range(1000):
        pool.spawn(one, i)
    pool.join(raise_error=True)
    h.settle()
    outcomes = Counter()
    for name, call_uuid in placed:
        rows = list(ledger.Call.select().where(ledger.Call.uuid == call_uuid))
        outcomes[name, rows[0].outcome if len(rows) == 1 else f"{len(rows)} rows"] += 1
    return outcomes, errors


@pytest.mark.slow
def test_a_thousand_concurrent_calls_with_interleaving_each_end_in_the_ledger_as_without(tmp_path):
    """Acceptance: 1,000 calls at once, the wire unruly: none dropped in the handshake, every
    call in the ledger with an outcome, and per scenario the outcomes the polite wire gives."""
    seen = {}
    for label, chaos in (("unruly", WireChaos(seed=uuid.uuid4().int % 1_000_000)), ("polite", WireChaos.off())):
        with Harness(tmp_path / label) as h:
            outcomes, errors = place_thousand(h, chaos)
            assert errors == [], (label, str(chaos), errors[:5])
            calls = list(ledger.Call.select())
            assert len(calls) == 1000
            assert all(c.outcome is not None and c.ended_at is not None for c in calls)
            seen[label] = outcomes
    assert seen["unruly"] == seen["polite"]
    assert seen["polite"] == Counter({("refuse", "refused"): 200, ("silence", "granted"): 200,
                                      ("grant-key", "granted"): 200, ("other-digit", "granted"): 200,
                                      ("hangup-in-prompt", "abandoned"): 200})
