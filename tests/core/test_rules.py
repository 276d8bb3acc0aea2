"""The RULES index names code and tests that exist, and covers every clause it promises to."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from fs_consent.core import consent
from fs_consent.core.rules import REGULATOR, RULES, STATEMENT

REPO = Path(__file__).resolve().parents[2]


def resolve(name: str):
    module, _, attribute = name.partition(":")
    target = importlib.import_module(f"fs_consent.{module}")
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.clause[:40])
def test_each_rule_names_handlers_that_exist(rule):
    assert rule.handlers and rule.source in (STATEMENT, REGULATOR)
    for name in rule.handlers:
        assert callable(resolve(name)), name


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.clause[:40])
def test_each_rule_names_tests_that_exist(rule):
    assert rule.tests
    for node in rule.tests:
        path, _, name = node.partition("::")
        module = importlib.import_module(path[:-3].replace("/", "."))
        assert (REPO / path).is_file() and callable(getattr(module, name, None)), node


def test_every_transition_of_the_machine_that_keeps_a_promise_is_indexed():
    """The handlers of the table that decide, record, withdraw or delete are each named by a rule."""
    indexed = {resolve(name) for rule in RULES for name in rule.handlers}
    # these settle what FreeSWITCH reports; the promises they serve are kept by what they call
    # (_recording_closed, _abandon), which the rules name
    plumbing = {consent.ConsentCall._record_started, consent.ConsentCall._record_stopped,
                consent.ConsentCall._hung_up, consent.ConsentCall._disconnected}
    for handler in set(consent.TRANSITIONS.values()) - plumbing:
        assert handler in indexed, handler.__name__
