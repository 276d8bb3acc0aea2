"""How the driver reads the consent prompt's completion: from the completion itself and
its time on FreeSWITCH's clock, never from the order in which it and the hang-up arrive
(captures s1, s2, s8, s13, s15 and ``pagd_hangup_race.txt``)."""

from __future__ import annotations

import pytest

from fs_consent import esl
from fs_consent.core import consent
from fs_consent.runtime.driver import prompt_answer


def pagd_events(captures_dir, name: str, event_name: str) -> list[esl.Event]:
    rx = (captures_dir / f"{name}.outbound.rx.bin").read_bytes()
    events = [m.event() for m in esl.FrameParser().feed(rx) if m.content_type == "text/event-plain"]
    return [e for e in events if e.name == event_name and e.get("Application") == "play_and_get_digits"]


def completions(captures_dir, name: str) -> list[esl.Event]:
    """play_and_get_digits' CHANNEL_EXECUTE_COMPLETE events in a capture's outbound side."""
    return pagd_events(captures_dir, name, "CHANNEL_EXECUTE_COMPLETE")


#: the prompt audio of each capture (INDEX.md): these captures did not subscribe to PLAYBACK_STOP,
#: so its end is the prompt's CHANNEL_EXECUTE plus the audio's length, on FreeSWITCH's clock
PROMPT_MS = {"s1_digit_pressed": 1500, "s2_no_digit": 1500, "s8_caller_hangup_during_pagd": 1500,
             "s13_pagd_complete_before_hangup": 2500, "s15_pagd_timeout_then_hangup": 2500}
TIMEOUT_MS = {"s1_digit_pressed": 3000, "s2_no_digit": 3000, "s8_caller_hangup_during_pagd": 3000,
              "s13_pagd_complete_before_hangup": 5000, "s15_pagd_timeout_then_hangup": 5000}


def read(captures_dir, name: str, completion: esl.Event | None = None) -> consent.PromptAnswered:
    [started] = pagd_events(captures_dir, name, "CHANNEL_EXECUTE")
    played_at = int(started.get("Event-Date-Timestamp")) + PROMPT_MS[name] * 1000
    [captured] = completions(captures_dir, name)
    return prompt_answer("prompt-1", with_digit_variable(completion or captured), timeout_ms=TIMEOUT_MS[name],
                         prompt_played_at=played_at)


def with_digit_variable(ev: esl.Event) -> esl.Event:
    """The captures used the variable name consent_digit; fs-consent asks for fs_consent_digit."""
    items = [(f"variable_{consent.PROMPT_VARIABLE}" if n == "variable_consent_digit" else n, v) for n, v in ev.items]
    return esl.FrameParser().feed(esl.encode_event(items))[0].event()


@pytest.mark.parametrize("name, expected", [
    ("s1_digit_pressed", ("1", consent.PROMPT_TIMED_OUT)),
    ("s2_no_digit", (None, consent.PROMPT_TIMED_OUT)),
    ("s15_pagd_timeout_then_hangup", (None, consent.PROMPT_TIMED_OUT)),
    ("s8_caller_hangup_during_pagd", (None, consent.PROMPT_CALLER_GONE)),
    # the hang-up that won the race looks like a timeout header for header: its time gives it away
    ("s13_pagd_complete_before_hangup", (None, consent.PROMPT_INTERRUPTED)),
])
def test_the_captured_completions_read_as_what_the_caller_did(captures_dir, name, expected):
    answer = read(captures_dir, name)
    assert (answer.digit, answer.ended) == expected


def test_a_timeout_needs_proof_of_when_the_prompt_ended(captures_dir):
    [completion] = completions(captures_dir, "s2_no_digit")
    answer = prompt_answer("prompt-1", completion, timeout_ms=3000, prompt_played_at=None)
    assert answer.ended == consent.PROMPT_INTERRUPTED  # no PLAYBACK_STOP seen: not proof of silence


def race_winner(captures_dir, **changes: str | None) -> esl.Event:
    """s8's completion as it looks when it wins the race (same headers: the channel state and
    cause are set before CHANNEL_HANGUP fires), with some headers changed or dropped."""
    [completion] = completions(captures_dir, "s8_caller_hangup_during_pagd")
    items = [(n, changes.get(n, v)) for n, v in completion.items if changes.get(n, v) is not None]
    items += [(n, v) for n, v in changes.items() if v is not None and n not in dict(completion.items)]
    return esl.FrameParser().feed(esl.encode_event(items))[0].event()


def s8(captures_dir, completion: esl.Event) -> consent.PromptAnswered:
    return read(captures_dir, "s8_caller_hangup_during_pagd", completion)


def test_a_hangup_with_read_result_failure_is_still_the_caller_gone(captures_dir):
    """A hang-up during the collection after the prompt makes read_result 'failure', as a
    timeout does (s14): the completion's answer state says the caller is gone."""
    answer = s8(captures_dir, race_winner(captures_dir, variable_read_result="failure"))
    assert answer.ended == consent.PROMPT_CALLER_GONE


def test_a_hangup_cause_alone_marks_the_caller_gone(captures_dir):
    answer = s8(captures_dir, race_winner(captures_dir, **{"Answer-State": "answered"}))
    assert answer.ended == consent.PROMPT_CALLER_GONE


def test_no_read_result_and_no_hangup_is_an_interrupted_prompt(captures_dir):
    ev = race_winner(captures_dir, **{"Answer-State": "answered", "Hangup-Cause": None})
    assert s8(captures_dir, ev).ended == consent.PROMPT_INTERRUPTED


def test_a_digit_collected_counts_even_if_the_caller_then_hung_up(captures_dir):
    ev = race_winner(captures_dir, variable_read_result="success", **{f"variable_{consent.PROMPT_VARIABLE}": "1"})
    assert s8(captures_dir, ev).digit == "1"
