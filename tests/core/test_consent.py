"""The consent rules, as event sequences in and commands out (no I/O)."""

from copy import deepcopy
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fs_consent.core import consent as c

RID = "0123456789abcdef0123456789abcdef"


def new_call(**policy):
    return c.ConsentCall(policy=replace(c.Policy(), **policy), recording_id=RID)


def of(commands, kind):
    return [cmd for cmd in commands if isinstance(cmd, kind)]


def start(call, *, can_record=True):
    """Run the call up to the consent prompt; returns the prompt's tag."""
    call.handle(c.CallStarted(can_record=can_record))
    answer = of(call.handle(c.CallStarted()), c.Execute)  # a second start is ignored
    assert answer == []
    return prompt_tag(call)


def prompt_tag(call):
    out = call.handle(c.AppCompleted(call._answer_tag))
    prompts = [cmd for cmd in of(out, c.Execute) if cmd.app == "play_and_get_digits"]
    assert len(prompts) == 1
    return prompts[0].tag


def test_start_answers_then_binds_agent_key_then_prompts():
    call = new_call()
    out = call.handle(c.CallStarted())
    assert [cmd.app for cmd in of(out, c.Execute)] == ["answer"]
    out = call.handle(c.AppCompleted(out[-1].tag))
    assert [(cmd.app, cmd.arg) for cmd in of(out, c.Execute)] == [
        ("bind_meta_app", "2 b a set::fs_consent_agent=withdraw"),
        ("play_and_get_digits", "1 1 1 5000 # phrase:fs-consent-prompt silence_stream://250 fs_consent_digit \\d 5000"),
    ]


def test_refusal_records_nothing_and_continues_to_the_menu():
    call = new_call()
    out = call.handle(c.PromptAnswered(start(call), "1"))
    assert c.Decide(c.REFUSED, c.BY_KEY) in out
    assert c.SetVariable("fs_consent", "refused") in out
    assert of(out, c.StartRecording) == []
    assert [cmd.app for cmd in of(out, c.Execute)] == ["execute_extension"]
    assert c.WithdrawEarlierCalls() in out


def test_silence_is_consent_in_opt_out_mode():
    call = new_call()
    out = call.handle(c.PromptAnswered(start(call), None))
    assert c.Decide(c.GRANTED, c.BY_SILENCE) in out
    assert c.SetVariable("RECORD_STEREO", "true") in out and c.SetVariable("RECORD_BRIDGE_REQ", "true") in out
    assert [cmd.recording_id for cmd in of(out, c.StartRecording)] == [RID]
    # the recording starts before the caller is sent on to the menu
    kinds = [type(cmd) for cmd in out]
    assert kinds.index(c.StartRecording) < kinds.index(c.Execute)


def test_opt_in_needs_the_grant_key_and_silence_is_no_consent():
    call = new_call(mode="opt-in")
    out = call.handle(c.PromptAnswered(start(call), None))
    assert c.Decide(c.REFUSED, c.BY_SILENCE) in out and of(out, c.StartRecording) == []
    assert of(out, c.WithdrawEarlierCalls) == []  # silence is not a callback refusal

    call = new_call(mode="opt-in")
    out = call.handle(c.PromptAnswered(start(call), "2"))
    assert c.Decide(c.GRANTED, c.BY_KEY) in out and len(of(out, c.StartRecording)) == 1


def test_another_digit_replays_the_prompt_then_counts_as_silence():
    call = new_call(tries=2)
    tag = start(call)
    out = call.handle(c.PromptAnswered(tag, "7"))
    again = [cmd for cmd in of(out, c.Execute) if cmd.app == "play_and_get_digits"]
    assert len(again) == 1 and of(out, c.Decide) == []
    assert call.handle(c.PromptAnswered(tag, None)) == []  # a stale completion is ignored
    out = call.handle(c.PromptAnswered(again[0].tag, "9"))
    assert c.Decide(c.GRANTED, c.BY_SILENCE) in out


def test_hangup_during_prompt_is_abandoned_with_nothing_recorded():
    call = new_call()
    tag = start(call)
    out = call.handle(c.HungUp())
    assert c.Decide(c.ABANDONED, c.BY_HANGUP) in out
    assert c.Finish(c.ABANDONED) in out
    # the prompt's completion arrives after the hangup (capture s8): nothing starts
    assert call.handle(c.PromptAnswered(tag, None)) == []


@pytest.mark.parametrize("hangup_first", [True, False])
def test_a_hangup_racing_the_prompt_completion_is_abandoned_in_either_order(hangup_first):
    """On a real FreeSWITCH the completion can win the race with CHANNEL_HANGUP; it then
    says the caller is gone (Answer-State: hangup), and that is not silence."""
    call = new_call()
    tag = start(call)
    gone = c.PromptAnswered(tag, None, c.PROMPT_CALLER_GONE)
    events = [c.HungUp(), gone] if hangup_first else [gone, c.HungUp()]
    history = [cmd for ev in events + [c.Disconnected()] for cmd in call.handle(ev)]
    assert of(history, c.Decide) == [c.Decide(c.ABANDONED, c.BY_HANGUP)]
    assert of(history, c.StartRecording) == []
    assert [cmd for cmd in of(history, c.Execute) if cmd.app == "execute_extension"] == []
    assert of(history, c.Finish) == [c.Finish(c.ABANDONED)]


def test_a_refusal_pressed_just_before_hanging_up_still_counts():
    call = new_call()
    out = call.handle(c.PromptAnswered(start(call), "1", c.PROMPT_CALLER_GONE))
    assert c.Decide(c.REFUSED, c.BY_KEY) in out and of(out, c.WithdrawEarlierCalls)


def test_a_prompt_cut_short_waits_a_moment_for_the_hangup_that_usually_follows():
    """Capture s13: a completion that looks like a timeout but came too early; CHANNEL_HANGUP
    follows within milliseconds. It is abandoned, not silence."""
    call = new_call()
    out = call.handle(c.PromptAnswered(start(call), None, c.PROMPT_INTERRUPTED))
    assert out == [c.StartTimer(c.PROMPT_GRACE_TIMER, c.PROMPT_GRACE_S)]
    out = call.handle(c.HungUp()) + call.handle(c.TimerFired(c.PROMPT_GRACE_TIMER))
    assert of(out, c.Decide) == [c.Decide(c.ABANDONED, c.BY_HANGUP)]
    assert of(out, c.StartRecording) == [] and of(out, c.Execute) == []


def test_a_prompt_cut_short_without_a_hangup_is_an_error_not_silence():
    call = new_call()
    call.handle(c.PromptAnswered(start(call), None, c.PROMPT_INTERRUPTED))
    out = call.handle(c.TimerFired(c.PROMPT_GRACE_TIMER))
    assert of(out, c.Decide) == [c.Decide(c.ERROR, c.BY_FAILURE)]
    assert of(out, c.StartRecording) == []
    assert [cmd.app for cmd in of(out, c.Execute)] == ["execute_extension"]  # on into the menu


def test_a_caller_reported_gone_who_is_still_there_reaches_the_menu_at_the_deadline():
    call = new_call()
    call.handle(c.PromptAnswered(start(call), None, c.PROMPT_CALLER_GONE))
    out = call.handle(c.TimerFired(c.DECISION_DEADLINE_TIMER))
    assert [cmd.app for cmd in of(out, c.Execute)] == ["execute_extension"]
    assert of(out, c.StartRecording) == [] and call.outcome == c.ABANDONED


def granted_and_recording(**policy):
    call = new_call(**policy)
    call.handle(c.PromptAnswered(start(call), None))
    call.handle(c.RecordStarted(RID))
    return call


@pytest.mark.parametrize("event, by", [
    (None, c.BY_CALLER_KEYS),
    (c.AgentWithdraw(), c.BY_AGENT_KEY),
    (c.WithdrawRequested(c.BY_COMMAND), c.BY_COMMAND),
])
def test_withdrawal_stops_and_deletes_the_recording(event, by):
    call = granted_and_recording(confirmation_file="phrase:fs-consent-deleted")
    if event is None:
        out = call.handle(c.CallerDigit("*")) + call.handle(c.CallerDigit("1"))
    else:
        out = call.handle(event)
    assert out[:2] == [c.StopRecording(RID), c.DeleteRecording(RID, "withdrawn")]
    assert c.Decide(c.WITHDRAWN, by) in out
    assert c.SetVariable("fs_consent", "withdrawn") in out
    assert c.PlayToCaller("phrase:fs-consent-deleted") in out
    # FreeSWITCH's RECORD_STOP afterwards: deleted again, never sealed
    out = call.handle(c.RecordStopped(RID))
    assert of(out, c.SealRecording) == [] and of(out, c.DeleteRecording)
    out = call.handle(c.HungUp()) + call.handle(c.Disconnected())
    assert c.Finish(c.WITHDRAWN) in out


def test_withdraw_sequence_must_be_contiguous():
    call = granted_and_recording()
    for digit in "*21":
        assert of(call.handle(c.CallerDigit(digit)), c.DeleteRecording) == []
    assert of(call.handle(c.CallerDigit("*")) + call.handle(c.CallerDigit("1")), c.DeleteRecording)


def test_a_start_that_races_a_withdrawal_is_stopped_and_deleted():
    call = new_call()
    call.handle(c.PromptAnswered(start(call), None))
    call.handle(c.WithdrawRequested())  # before RECORD_START arrived
    out = call.handle(c.RecordStarted(RID))
    assert out == [c.StopRecording(RID), c.DeleteRecording(RID, "withdrawn")]


def test_hangup_while_recording_seals_after_record_stop():
    call = granted_and_recording()
    out = call.handle(c.HungUp())
    assert of(out, c.Finish) == []  # FreeSWITCH still has to close the file
    out = call.handle(c.RecordStopped(RID))
    assert out[0] == c.SealRecording(RID) and c.Finish(c.GRANTED) in out


def test_no_linger_disconnect_settles_an_open_recording():
    call = granted_and_recording()
    out = call.handle(c.HungUp()) + call.handle(c.Disconnected())
    # sealed, but marked unconfirmed: FreeSWITCH may still be closing the file
    assert c.SealRecording(RID, confirmed=False) in out and c.Finish(c.GRANTED) in out


def test_discarded_recording_is_not_sealed():
    call = granted_and_recording()
    call.handle(c.HungUp())
    out = call.handle(c.RecordStopped(RID, discarded=True))
    assert out[0] == c.RecordingDiscarded(RID) and of(out, c.SealRecording) == []


def test_hold_masks_and_unhold_unmasks():
    call = granted_and_recording()
    assert call.handle(c.Held()) == [c.MaskRecording(RID, True)]
    assert call.handle(c.Unheld()) == [c.MaskRecording(RID, False)]
    assert granted_and_recording(mask_on_hold=False).handle(c.Held()) == []


def test_no_recipient_means_consent_without_recording():
    call = new_call()
    call.handle(c.CallStarted(can_record=False))
    out = call.handle(c.PromptAnswered(prompt_tag(call), None))
    assert c.Decide(c.GRANTED, c.BY_SILENCE) in out and of(out, c.StartRecording) == []
    assert [cmd.app for cmd in of(out, c.Execute)] == ["execute_extension"]


def test_failure_fails_closed_for_the_recording_and_open_for_the_call():
    call = new_call()
    start(call)
    out = call.handle(c.Failed("boom"))
    assert c.Decide(c.ERROR, c.BY_FAILURE) in out
    assert [cmd.app for cmd in of(out, c.Execute)] == ["execute_extension"]

    call = granted_and_recording()
    out = call.handle(c.Failed("boom"))
    assert out[:2] == [c.StopRecording(RID), c.DeleteRecording(RID, "error")]
    assert of(out, c.Execute) == []  # already in the menu: not sent twice


def test_decision_deadline_sends_the_caller_on_unrecorded():
    call = new_call()
    start(call)
    out = call.handle(c.TimerFired(c.DECISION_DEADLINE_TIMER))
    assert c.Decide(c.ERROR, c.BY_FAILURE) in out and of(out, c.StartRecording) == []
    assert [cmd.app for cmd in of(out, c.Execute)] == ["execute_extension"]


# --- a number that objects (art. 21) ------------------------------------------------------


def objecting_call(**policy):
    """An objecting caller's call, answered; returns (call, commands after the answer)."""
    call = new_call(aggression_key="3", **policy)
    out = call.handle(c.CallStarted(objection=True))
    assert out[1:] == [c.Decide(c.REFUSED, c.BY_OBJECTION), c.SetVariable("fs_consent", "refused"),
                       c.Execute("answer", None, "answer-1", c.ANSWER)]
    return call, call.handle(c.AppCompleted("answer-1"))


def test_objection_refuses_at_once_and_skips_the_prompt_by_default():
    call, out = objecting_call()
    # the agent's keys are bound as on any call (the aggression flag is kept), then the menu
    assert [cmd.app for cmd in of(out, c.Execute)] == ["bind_meta_app", "bind_meta_app", "execute_extension"]
    assert c.CancelTimer(c.DECISION_DEADLINE_TIMER) in out
    out = call.handle(c.RecordStarted(RID)) + call.handle(c.CallerDigit("*")) + call.handle(c.CallerDigit("1"))
    out += call.handle(c.HungUp()) + call.handle(c.Disconnected())
    assert of(out, c.StartRecording) == [] and of(out, c.SealRecording) == [] and of(out, c.Decide) == []
    assert out[-1] == c.Finish(c.REFUSED) and call.decided_by == c.BY_OBJECTION
    assert call.plays == 0


@pytest.mark.parametrize("mode, answers", [
    ("opt-out", [None]), ("opt-in", [None]),
    ("opt-in", ["2"]),  # the grant digit grants nothing
    # a digit that means nothing replays the prompt, as it would for any caller
    ("opt-out", ["2", None]), ("opt-out", ["5", "5"]), ("opt-in", ["5", "5"]),
])
def test_objection_with_the_prompt_played_records_whatever_the_answer(mode, answers):
    call, out = objecting_call(mode=mode, objection_prompt="play", tries=2)
    history = list(out)
    for digit in answers:
        assert not call.in_menu
        prompt = [cmd for cmd in of(history, c.Execute) if cmd.app == "play_and_get_digits"][-1]
        history += call.handle(c.PromptAnswered(prompt.tag, digit))
    assert [cmd.app for cmd in of(history, c.Execute)][-1] == "execute_extension"
    assert call.plays == len(answers)
    history += call.handle(c.HungUp()) + call.handle(c.Disconnected())
    assert of(history, c.StartRecording) == [] and of(history, c.Decide) == []
    assert of(history, c.WithdrawEarlierCalls) == []
    assert history[-1] == c.Finish(c.REFUSED) and call.decided_by == c.BY_OBJECTION


@pytest.mark.parametrize("callback, expected", [(True, [c.WithdrawEarlierCalls()]), (False, [])])
def test_the_refuse_digit_under_objection_still_withdraws_earlier_recordings(callback, expected):
    """The played prompt says "press 1": the statement's callback withdrawal still holds."""
    call, out = objecting_call(objection_prompt="play", callback_withdrawal=callback)
    (prompt,) = [cmd for cmd in of(out, c.Execute) if cmd.app == "play_and_get_digits"]
    out = call.handle(c.PromptAnswered(prompt.tag, "1"))
    assert of(out, c.WithdrawEarlierCalls) == expected
    assert of(out, c.Decide) == [] and (call.outcome, call.decided_by) == (c.REFUSED, c.BY_OBJECTION)
    assert [cmd.app for cmd in of(out, c.Execute)] == ["execute_extension"]


def test_objection_deadline_sends_the_caller_on_when_the_answer_never_completes():
    call = new_call()
    call.handle(c.CallStarted(objection=True))
    out = call.handle(c.TimerFired(c.DECISION_DEADLINE_TIMER))
    assert [cmd.app for cmd in of(out, c.Execute)] == ["execute_extension"] and of(out, c.Decide) == []
    assert call.handle(c.AppCompleted("answer-1")) == []  # late: no prompt, no second menu


def test_failure_and_withdrawal_leave_an_objection_refused():
    call = new_call()
    call.handle(c.CallStarted(objection=True))
    assert call.handle(c.WithdrawRequested()) == []
    out = call.handle(c.Failed("boom"))
    assert of(out, c.Decide) == [] and [cmd.app for cmd in of(out, c.Execute)] == ["execute_extension"]
    assert (call.outcome, call.decided_by) == (c.REFUSED, c.BY_OBJECTION)


def test_hangup_before_the_answer_ends_an_objecting_call_refused_without_the_menu():
    call = new_call()
    call.handle(c.CallStarted(objection=True))
    out = call.handle(c.HungUp())
    assert out[-1] == c.Finish(c.REFUSED) and of(out, c.Execute) == []


# --- the agent's aggression flag (legal hold) --------------------------------------------


def test_aggression_key_is_bound_on_the_agent_leg_when_configured():
    call = new_call(aggression_key="3")
    out = call.handle(c.CallStarted())
    out = call.handle(c.AppCompleted(out[-1].tag))
    assert [(cmd.app, cmd.arg) for cmd in of(out, c.Execute)][:2] == [
        ("bind_meta_app", "2 b a set::fs_consent_agent=withdraw"),
        ("bind_meta_app", "3 b a set::fs_consent_agent=aggression"),
    ]


def test_agent_flag_is_recorded_once_and_changes_nothing_about_consent():
    call = granted_and_recording(aggression_key="3")
    assert call.handle(c.AgentFlag()) == [c.FlagCall("aggression", c.BY_AGENT_KEY)]
    assert call.handle(c.AgentFlag()) == []  # pressed again: one flag
    assert call.consent_holds and call.rec is c.Rec.ACTIVE
    out = call.handle(c.HungUp()) + call.handle(c.RecordStopped(RID))
    assert c.SealRecording(RID) in out and c.Finish(c.GRANTED) in out


@pytest.mark.parametrize("before", ["refused", "withdrawn"])
def test_a_flag_without_consent_is_still_recorded_and_records_nothing(before):
    call = new_call()
    if before == "refused":
        call.handle(c.PromptAnswered(start(call), "1"))
    else:
        call = granted_and_recording()
        call.handle(c.AgentWithdraw())
    out = call.handle(c.AgentFlag())
    assert out == [c.FlagCall("aggression", c.BY_AGENT_KEY)]
    out = call.handle(c.RecordStopped(RID)) + call.handle(c.HungUp()) + call.handle(c.Disconnected())
    assert of(out, c.SealRecording) == [] and of(out, c.StartRecording) == []


def test_a_withdrawal_after_a_flag_still_deletes():
    """The hold is placed on what gets sealed; the statement's withdrawal comes first."""
    call = granted_and_recording()
    call.handle(c.AgentFlag())
    out = call.handle(c.CallerDigit("*")) + call.handle(c.CallerDigit("1"))
    assert out[:2] == [c.StopRecording(RID), c.DeleteRecording(RID, "withdrawn")]


# --- whatever happens, in whatever order -------------------------------------------------

EVENTS = st.one_of(
    st.just("answer"), st.just("prompt"),
    st.builds(lambda d, e: ("digit-at-prompt", d, e), st.sampled_from(["1", "2", "5", None]),
              st.sampled_from([c.PROMPT_TIMED_OUT, c.PROMPT_CALLER_GONE, c.PROMPT_INTERRUPTED])),
    st.builds(c.CallerDigit, st.sampled_from(list("*1250#"))),
    st.just(c.AgentWithdraw()), st.just(c.WithdrawRequested()), st.just(c.AgentFlag()),
    st.just(c.RecordStarted(RID)), st.builds(c.RecordStopped, st.just(RID), st.booleans()),
    st.just(c.Held()), st.just(c.Unheld()), st.just(c.HungUp()), st.just(c.Disconnected()),
    st.just(c.TimerFired(c.DECISION_DEADLINE_TIMER)), st.just(c.TimerFired(c.PROMPT_GRACE_TIMER)),
    st.just(c.Failed("x")),
)


def materialise(call, token):
    """Turn symbolic completions into events carrying the call's real tags."""
    if token == "answer":
        return c.AppCompleted(call._answer_tag or "answer-0")
    if isinstance(token, tuple) or token == "prompt":
        digit, ended = token[1:] if isinstance(token, tuple) else (None, c.PROMPT_TIMED_OUT)
        return c.PromptAnswered(call._prompt_tag or "prompt-0", digit, ended)
    return token


def menu_sent(history):
    return any(cmd.purpose == c.MENU for cmd in of(history, c.Execute))


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(["opt-out", "opt-in"]), st.booleans(), st.booleans(), st.sampled_from(["skip", "play"]),
       st.lists(EVENTS, max_size=30))
def test_no_recording_after_refusal_or_withdrawal_and_every_call_ends(mode, can_record, objection,
                                                                      objection_prompt, tokens):
    call = new_call(mode=mode, objection_prompt=objection_prompt)
    history = call.handle(c.CallStarted(can_record=can_record, objection=objection))
    hung_up_before_menu = False
    for token in tokens:
        event = materialise(call, token)
        was_active = call.rec is c.Rec.ACTIVE
        out = call.handle(event)
        history += out
        # a decision stands: only a withdrawal or a failure changes it (a completion counts once)
        if len(of(history, c.Decide)) > 1:
            assert of(out, c.Decide) == [] or of(out, c.Decide)[0].outcome in (c.WITHDRAWN, c.ERROR)
        # a caller on hold is never recorded: a recording that starts while they are held is masked at once
        if isinstance(event, c.RecordStarted) and not was_active and call.rec is c.Rec.ACTIVE and call.on_hold:
            assert c.MaskRecording(RID, True) in out
        # silence is consent only after the whole prompt and its timeout, the caller still there
        if c.Decide(c.GRANTED, c.BY_SILENCE) in out:
            assert isinstance(event, c.PromptAnswered) and event.ended == c.PROMPT_TIMED_OUT
            assert not call.hung_up
        # the callback withdrawal follows only the refuse digit pressed at the prompt
        if of(out, c.WithdrawEarlierCalls):
            assert isinstance(event, c.PromptAnswered) and event.digit == call.policy.refuse_digit
        hung_up_before_menu = hung_up_before_menu or (call.hung_up and not menu_sent(history))
    if not call.hung_up:
        # whatever happened so far, the deadline sends a caller who is still there on to the menu
        probe = deepcopy(call)
        probe.handle(c.TimerFired(c.DECISION_DEADLINE_TIMER))
        assert probe.in_menu
    history += call.handle(c.HungUp()) + call.handle(c.Disconnected())
    hung_up_before_menu = hung_up_before_menu or not menu_sent(history)

    if objection:
        # never recorded, whatever the caller, the agent or FreeSWITCH did; the reason is kept
        assert of(history, c.StartRecording) == [] and of(history, c.SealRecording) == []
        assert of(history, c.Decide) == [c.Decide(c.REFUSED, c.BY_OBJECTION)]
        assert of(history, c.Finish) == [c.Finish(c.REFUSED)]
        prompts = [cmd for cmd in of(history, c.Execute) if cmd.app == "play_and_get_digits"]
        assert len(prompts) <= (0 if objection_prompt == "skip" else call.policy.tries)
        assert hung_up_before_menu or [cmd.app for cmd in of(history, c.Execute)].count("execute_extension") == 1

    starts = of(history, c.StartRecording)
    assert len(starts) <= 1
    assert can_record or not starts
    decisions = of(history, c.Decide)
    first_refusal = next((i for i, cmd in enumerate(history) if isinstance(cmd, c.Decide)
                          and cmd.outcome in (c.REFUSED, c.WITHDRAWN, c.ABANDONED, c.ERROR)), None)
    if first_refusal is not None:
        assert of(history[first_refusal:], c.StartRecording) == []
        assert of(history[first_refusal:], c.SealRecording) == []
    # every call ends exactly once, with an outcome
    finishes = of(history, c.Finish)
    assert len(finishes) == 1 and finishes[0].outcome in c.OUTCOMES
    assert decisions and finishes[0].outcome == decisions[-1].outcome
    # a started recording is settled: sealed, discarded or deleted, and sealed only with consent
    if starts:
        settled = of(history, (c.SealRecording, c.RecordingDiscarded, c.DeleteRecording))
        assert settled
        if of(history, c.SealRecording):
            assert finishes[0].outcome == c.GRANTED
    # the caller always goes on into the menu unless they hung up before a decision
    menu = [cmd for cmd in of(history, c.Execute) if cmd.app == "execute_extension"]
    assert len(menu) <= 1
    if finishes[0].outcome != c.ABANDONED and not objection:
        assert len(menu) == 1


# --- the transition table ---------------------------------------------------------------


def test_the_table_covers_every_phase_and_event_exactly_once():
    pairs = {(phase, event) for phase in c.Phase for event in c.EVENTS}
    assert set(c.TRANSITIONS) | set(c.IGNORED) == pairs
    assert set(c.TRANSITIONS) & set(c.IGNORED) == set()
    assert all(why for why in c.IGNORED.values())


def test_an_event_outside_the_table_is_a_programming_error():
    call = new_call()
    call.handle(c.CallStarted())
    with pytest.raises(c.NotInTable, match="object in phase ANSWERING"):
        call.handle(object())
    with pytest.raises(c.NotInTable, match="no timer"):
        call.handle(c.TimerFired("no-such-timer"))


def test_an_ignored_event_is_logged_with_its_reason(caplog):
    call = new_call()
    start(call)
    with caplog.at_level("DEBUG", logger="fs_consent.core.consent"):
        assert call.handle(c.CallerDigit("5")) == []
    assert "CallerDigit ignored in phase PROMPTING: digits before the menu belong to play_and_get_digits" in caplog.text


def test_decide_is_emitted_in_one_place():
    import inspect

    assert inspect.getsource(c.ConsentCall).count("Decide(") == 1


def test_a_second_completion_after_the_caller_is_gone_changes_nothing():
    """Caught by the property test once the decision had to stand: a duplicate completion
    used to grant by silence after the call was abandoned."""
    call = new_call()
    tag = start(call)
    call.handle(c.PromptAnswered(tag, None, c.PROMPT_CALLER_GONE))
    assert call.handle(c.PromptAnswered(tag, None)) == []
    assert (call.phase, call.outcome) == (c.Phase.LEAVING, c.ABANDONED)


def test_a_recording_that_starts_while_the_caller_is_held_is_masked_at_once():
    call = new_call()
    call.handle(c.PromptAnswered(start(call), None))
    assert call.handle(c.Held()) == []  # nothing is being written yet
    assert call.handle(c.RecordStarted(RID)) == [c.MaskRecording(RID, True)]
    assert call.handle(c.Unheld()) == [c.MaskRecording(RID, False)]


def test_a_sealed_recording_is_deleted_by_the_ledger_which_knows_the_holds():
    call = granted_and_recording(aggression_key="3")
    call.handle(c.AgentFlag())
    assert call.handle(c.RecordStopped(RID)) == [c.SealRecording(RID)]  # the bridge ended, the call goes on
    out = call.handle(c.CallerDigit("*")) + call.handle(c.CallerDigit("1"))
    assert out[0] == c.DeleteRecording(RID, "withdrawn", sealed=True) and of(out, c.StopRecording) == []
    assert c.Decide(c.WITHDRAWN, c.BY_CALLER_KEYS) in out and out[0].recording_id == RID


def test_an_objection_the_ledger_could_not_check_is_not_recorded_and_goes_to_the_menu():
    call = new_call()
    out = call.handle(c.CallStarted(objection=None))
    assert c.Decide(c.ERROR, c.BY_FAILURE) in out and not call.can_record
    assert [cmd.purpose for cmd in of(out, c.Execute)] == [c.ANSWER, c.MENU]
    assert call.handle(c.AppCompleted(call._answer_tag)) == []  # no prompt follows


@pytest.mark.parametrize("answer, expected", [("1", None), (None, c.WITHDRAWN)])
def test_a_callback_withdraws_only_a_consent_that_was_given(answer, expected):
    call = new_call()
    tag = start(call)
    assert call.handle(c.WithdrawRequested(c.BY_CALLBACK)) == []  # undecided: nothing to withdraw
    call.handle(c.PromptAnswered(tag, answer))
    out = call.handle(c.WithdrawRequested(c.BY_CALLBACK))
    assert [d.outcome for d in of(out, c.Decide)] == ([expected] if expected else [])
    assert c.Decide(c.WITHDRAWN, c.BY_CALLBACK).kind == "withdrawal" and c.Decide(c.GRANTED, "x").kind == "decision"


@pytest.mark.parametrize("objection, can_seal, healthy, store, note", [
    (False, True, True, True, None), (None, True, True, True, "objection-unknown"), (True, True, True, True, None),
    (False, False, True, True, "no-recipient"), (False, True, False, True, "ledger-unavailable"),
    (False, True, True, False, "store-unwritable"), (False, True, False, False, "store-unwritable"),
])
def test_the_reason_a_call_may_not_be_recorded(objection, can_seal, healthy, store, note):
    assert c.recording_note(objection=objection, can_seal=can_seal, ledger_healthy=healthy,
                            store_writable=store) == note


def test_recovery_seals_only_with_consent_never_withdrawn():
    assert c.recovery_keeps(c.GRANTED, withdrawn=False)
    assert not c.recovery_keeps(c.GRANTED, withdrawn=True)
    assert not any(c.recovery_keeps(outcome, withdrawn=False) for outcome in c.OUTCOMES if outcome != c.GRANTED)
    assert not c.recovery_keeps(None, withdrawn=False)
