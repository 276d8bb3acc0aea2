"""Where each promise of the privacy statement is kept: clause -> handlers -> tests.

For the privacy officer (and the next developer): every clause of the statement
(``../shared/seed``, Dutch, quoted shortly) that fs-consent enforces, the code that
enforces it and the tests that prove it. Handlers are named ``module:attribute`` under
``fs_consent`` and tests by pytest node id, so this file imports nothing and can sit
beside the consent machine; ``tests/core/test_rules.py`` resolves every name and collects
every test, so a rename that forgets this index fails there.
"""

from __future__ import annotations

from dataclasses import dataclass

STATEMENT = "statement"  # the municipality's privacy statement
REGULATOR = "regulator"  # Autoriteit Persoonsgegevens guidance the statement relies on (DESIGN.md §3)


@dataclass(frozen=True)
class Rule:
    clause: str  # the source's words
    promise: str  # what fs-consent does about it
    handlers: tuple[str, ...]  # "module:Qualified.name" under fs_consent
    tests: tuple[str, ...]  # pytest node ids
    source: str = STATEMENT


RULES: tuple[Rule, ...] = (
    Rule(
        "Voorafgaand aan het keuzemenu kan je niet akkoord gaan met opnames door het intoetsen van een nummer (1).",
        "Before the menu the prompt asks; the refuse digit means nothing is recorded.",
        ("core.consent:ConsentCall._answered", "core.consent:ConsentCall._answer", "core.consent:ConsentCall._refuse"),
        ("tests/core/test_consent.py::test_refusal_records_nothing_and_continues_to_the_menu",
         "tests/runtime/test_driver.py::test_a_refusal_records_nothing_sends_the_caller_on_and_withdraws_earlier_calls",
         "tests/e2e/test_e2e_calls.py::test_refusal_records_nothing_and_the_call_goes_on"),
    ),
    Rule(
        "Als er geen nummer wordt gekozen, dan worden de telefoongesprekken opgenomen.",
        "Silence is consent (opt-out mode) only with proof that the whole prompt and its timeout "
        "ran out with the caller on the line; opt-in mode needs the grant key.",
        ("core.consent:ConsentCall._answer", "core.consent:ConsentCall._grant", "runtime.driver:prompt_answer"),
        ("tests/core/test_consent.py::test_silence_is_consent_in_opt_out_mode",
         "tests/core/test_consent.py::test_opt_in_needs_the_grant_key_and_silence_is_no_consent",
         "tests/runtime/test_driver_prompt.py::test_a_timeout_needs_proof_of_when_the_prompt_ended",
         "tests/e2e/test_e2e_wire.py::test_a_hangup_that_completes_the_prompt_like_a_timeout_is_abandoned_not_silence"),
    ),
    Rule(
        "Indien ze liever niet willen dat het gesprek opgenomen wordt, dan heeft dat geen enkele consequentie "
        "voor de verdere behandeling van de vraag en het verloop van het gesprek.",
        "Every path goes on into the menu, a failure of fs-consent included (fail open for the call, "
        "closed for the recording); a deadline sends on a caller nothing else did.",
        ("core.consent:ConsentCall._continue", "core.consent:ConsentCall._fail", "core.consent:ConsentCall._timer"),
        ("tests/core/test_consent.py::test_no_recording_after_refusal_or_withdrawal_and_every_call_ends",
         "tests/core/test_consent.py::test_failure_fails_closed_for_the_recording_and_open_for_the_call",
         "tests/core/test_consent.py::test_decision_deadline_sends_the_caller_on_unrecorded",
         "tests/runtime/test_driver.py::test_a_refused_prompt_fails_open_into_the_menu"),
    ),
    Rule(
        "De verleende toestemming kan op een later moment worden ingetrokken. Dit kan tijdens het gesprek "
        "worden aangegeven, waarna de opname wordt verwijderd",
        "The caller's keys, the agent's key or a command withdraw consent mid-call: the recording "
        "stops and every byte of it is deleted; nothing restarts.",
        ("core.consent:ConsentCall._caller_digit", "core.consent:ConsentCall._agent_withdraw",
         "core.consent:ConsentCall._withdraw_requested", "core.consent:ConsentCall._withdraw",
         "core.consent:ConsentCall._erase_recording", "runtime.driver:CallSession._delete"),
        ("tests/core/test_consent.py::test_withdrawal_stops_and_deletes_the_recording",
         "tests/core/test_consent.py::test_a_start_that_races_a_withdrawal_is_stopped_and_deleted",
         "tests/runtime/test_driver.py::test_the_caller_keys_stop_and_delete_every_byte_and_nothing_is_sealed",
         "tests/e2e/test_e2e_calls.py::test_withdrawal_during_the_call_deletes_every_byte"),
    ),
    Rule(
        "of door het gesprek te beëindigen en opnieuw te bellen. Je geeft dan door een 1 in te voeren aan "
        "dat je niet akkoord gaat met opname.",
        "The refuse digit withdraws consent for the same number's recent recorded calls (the callback "
        "window), live ones included; an objecting caller's 1 still counts.",
        ("core.consent:ConsentCall._refuse", "core.consent:ConsentCall._withdraw_requested",
         "runtime.server:ServerContext.callback_withdrawal", "privacy.withdrawal:recent_recorded_calls"),
        ("tests/core/test_consent.py::test_a_callback_withdraws_only_a_consent_that_was_given",
         "tests/core/test_consent.py::test_the_refuse_digit_under_objection_still_withdraws_earlier_recordings",
         "tests/e2e/test_e2e_calls.py::test_callback_refusal_deletes_the_earlier_recording_of_that_number"),
    ),
    Rule(
        "In dit menu staat duidelijk dat we het gesprek willen opnemen om de persoon beter te kunnen helpen. "
        "Ook wordt er verwezen naar deze privacyverklaring",
        "The prompt is played before the menu; its text says why and points to the statement.",
        ("core.consent:ConsentCall._answered", "core.consent:Policy.prompt_args"),
        ("tests/core/test_consent.py::test_start_answers_then_binds_agent_key_then_prompts",
         "tests/freeswitch/test_prompts.py::test_each_consent_question_says_what_the_privacy_statement_asks"),
    ),
    Rule(
        "Opnames van agressie en intimidatie worden, indien nodig, gedeeld met de politie.",
        "The agent's key flags the call; the recording is held once sealed (not purged, not erased by a "
        "withdrawal: the ledger refuses a sealed recording's deletion under hold) and exported with a "
        "signed manifest.",
        ("core.consent:ConsentCall._flag", "core.consent:ConsentCall._erase_recording", "store.holds:hold_flagged",
         "store.facts:RecordingDeleted.apply", "privacy.police_export:export"),
        ("tests/core/test_consent.py::test_agent_flag_is_recorded_once_and_changes_nothing_about_consent",
         "tests/core/test_consent.py::test_a_sealed_recording_is_deleted_by_the_ledger_which_knows_the_holds",
         "tests/store/test_holds.py::test_a_live_withdrawal_after_the_seal_leaves_a_held_recording",
         "tests/e2e/test_e2e_retention.py::test_the_agents_aggression_key_holds_the_recording_through_purges_until_released"),
    ),
    Rule(
        "Voor het opnemen van de telefoongesprekken beroepen we ons op de grondslag toestemming "
        "(artikel 6, lid 1 sub a AVG).",
        "Nothing is kept without consent: a call that cannot be recorded safely is not recorded, a "
        "recording closed without consent is deleted, and after a crash only a consented recording "
        "is sealed; a number that objects is never recorded.",
        ("core.consent:recording_note", "core.consent:ConsentCall._recording_closed", "core.consent:recovery_keeps",
         "runtime.server:ServerContext.recover_spool", "core.consent:ConsentCall._start"),
        ("tests/core/test_consent.py::test_the_reason_a_call_may_not_be_recorded",
         "tests/core/test_consent.py::test_recovery_seals_only_with_consent_never_withdrawn",
         "tests/secure/test_spool.py::test_recover_seals_deletes_and_leaves_the_rest",
         "tests/core/test_consent.py::test_objection_refuses_at_once_and_skips_the_prompt_by_default",
         "tests/runtime/test_driver.py::test_an_objection_the_ledger_cannot_check_goes_to_the_menu_unrecorded"),
    ),
    Rule(
        "Gespreksopnamen | Terugluisteren van gesprekken voor trainingsdoeleinden | 60 dagen",
        "Recordings are purged 60 days after they started (configurable), held ones excepted.",
        ("privacy.retention:Terms", "privacy.retention:Purge.run"),
        ("tests/privacy/test_retention.py::test_a_recording_of_59_days_survives_and_one_of_61_days_is_gone",
         "tests/privacy/test_retention.py::test_default_terms_are_the_statements",
         "tests/privacy/test_retention.py::test_a_held_recording_survives_until_released_and_then_goes"),
    ),
    Rule(
        "Belgegevens | Beantwoorden van vragen via de telefoon | 1 jaar",
        "Call records lose their personal fields after one year.",
        ("privacy.retention:Purge.run",),
        ("tests/privacy/test_retention.py::test_call_records_of_364_days_keep_the_number_and_of_366_days_lose_it",),
    ),
    Rule(
        "Om persoonsgegevens te beschermen tegen misbruik en verlies, hebben we maatregelen genomen volgens "
        "artikel 32 van de AVG.",
        "Every recording is sealed with age to its own file key; personal fields are a keyed hash and an "
        "AEAD-sealed value.",
        ("secure.vault:Vault.seal", "secure.protect:FieldProtector.seal", "secure.protect:FieldProtector.lookup_hash"),
        ("tests/secure/test_vault.py::test_sealed_recording_opens_with_the_age_cli",
         "tests/secure/test_protect.py::test_any_tampering_is_detected",
         "tests/secure/test_protect.py::test_lookup_hash_is_stable_and_keyed"),
    ),
    Rule(
        "om je persoonsgegevens te laten veranderen als deze niet juist zijn / (deels) te laten verwijderen / "
        "het gebruik van je persoonsgegevens te laten beperken",
        "Rectify, erase and restrict by phone number, each behind a registered request.",
        ("privacy.subjects:rectify", "privacy.subjects:erase", "privacy.subjects:restrict", "privacy.subject_requests:require"),
        ("tests/privacy/test_subjects.py::test_rectify_seals_the_value_replaces_it_and_never_audits_it",
         "tests/privacy/test_subjects.py::test_erase_leaves_no_file_no_personal_field_and_no_way_to_find_the_number",
         "tests/privacy/test_subjects.py::test_restrict_blocks_playing_and_export_until_lifted"),
    ),
    Rule(
        "Binnen een maand na ontvangst van je verzoek, ontvang je een beslissing van ons.",
        "Each request's due date is one calendar month after receipt (once extendable to three).",
        ("privacy.subject_requests:due_date", "privacy.subject_requests:extend"),
        ("tests/privacy/test_subject_requests.py::test_due_date_examples",
         "tests/privacy/test_subject_requests.py::test_an_extension_moves_the_due_date_to_three_months_after_receipt_once"),
    ),
    Rule(
        "Je kunt bezwaar maken tegen de verwerking van je persoonsgegevens",
        "An objection (art. 21) makes every later call of the number refused before a word is played.",
        ("privacy.objections:objects", "core.consent:ConsentCall._start"),
        ("tests/privacy/test_objections.py::test_an_objection_is_in_force_for_every_written_form_until_withdrawn",
         "tests/core/test_consent.py::test_objection_refuses_at_once_and_skips_the_prompt_by_default"),
    ),
    Rule(
        "Analyse en rapportage: ... gespreksduur, frequentie van oproepen, en prestatiemetingen.",
        "Duration, wait time (from the menu to staff) and outcomes come from the call ledger, no recording needed.",
        ("runtime.driver:CallSession._finish", "reports.report:build_report"),
        ("tests/reports/test_report.py::test_the_figures",),
    ),
    Rule(
        "Een beller in de wacht mag niet worden opgenomen.",
        "While the caller is on hold the recording is masked, whichever comes first, the hold or the "
        "recording's start.",
        ("core.consent:ConsentCall._held", "core.consent:ConsentCall._unheld", "core.consent:ConsentCall._mask"),
        ("tests/core/test_consent.py::test_hold_masks_and_unhold_unmasks",
         "tests/core/test_consent.py::test_a_recording_that_starts_while_the_caller_is_held_is_masked_at_once",
         "tests/runtime/test_driver.py::test_silence_records_masks_on_hold_and_seals_after_the_record_stop",
         "tests/e2e/test_e2e_calls.py::test_hold_masks_the_recording"),
        source=REGULATOR,
    ),
)
