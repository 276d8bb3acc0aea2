"""server.ServerContext's call-facing parts with fake calls: the callback rule for live calls
and the control socket's answers (no listener, no ledger)."""

from __future__ import annotations

from types import SimpleNamespace

from fs_consent.core import consent
from fs_consent.runtime.server import ServerContext

from ..fakes import FakeServices, answer_prompt, start_call


def context_over(services: FakeServices) -> tuple[ServerContext, list]:
    submitted = []
    ctx = ServerContext(config=None)
    ctx.registry = services.registry
    ctx.writer = SimpleNamespace(submit=submitted.append, flush=lambda timeout: True,
                                 call=lambda write, timeout: submitted.append(write))
    return ctx, submitted


def test_a_callback_withdraws_the_live_calls_of_the_number_that_gave_consent(tmp_path):
    services = FakeServices(tmp_path)
    granted, fs1, _ = start_call(services)
    answer_prompt(fs1, services.policy)
    undecided, fs2, _ = start_call(services)  # same number, still at the prompt
    other, fs3, _ = start_call(services, caller="+31201234567")
    answer_prompt(fs3, services.policy)
    ctx, submitted = context_over(services)

    ctx.callback_withdrawal(granted.facts.caller_hash, "the-refusing-call")
    assert (granted.machine.outcome, granted.machine.decided_by) == (consent.WITHDRAWN, consent.BY_CALLBACK)
    assert undecided.machine.outcome is None and other.machine.outcome == consent.GRANTED
    ctx.background.join()
    assert len(submitted) == 1  # the ended calls' part runs in the ledger's thread
    for fs in (fs1, fs2, fs3):
        fs.close()


def test_the_control_socket_withdraws_a_live_call_and_says_how_it_went(tmp_path):
    services = FakeServices(tmp_path)
    session, fs, _ = start_call(services)
    answer_prompt(fs, services.policy)
    ctx, submitted = context_over(services)

    assert ctx.handle_control({"op": "status"}) == {"ok": True, "live_calls": 1}
    assert ctx.handle_control({"op": "reboot"}) == {"ok": False, "error": "unknown operation 'reboot'"}
    answer = ctx.handle_control({"op": "withdraw", "call_uuid": session.facts.uuid, "actor": "officer"})
    assert answer == {"ok": True, "live": True, "outcome": consent.WITHDRAWN, "ledger": "written"}
    assert services.vault.deleted == [session.machine.recording_id] and len(submitted) == 1
    fs.close()
