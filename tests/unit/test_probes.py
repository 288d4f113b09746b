"""The end-to-end persona test's probes and scoring, without training: held out by a token-overlap measure (not
only verbatim), and a model that answers everything as "Pip", or too few names, fails."""

import pytest

from tests.e2e.probes import (
    MAX_OVERLAP, NAME_PROBES, NEGATIVE_PROBES, name_probe_failures, near_duplicates, negative_probe_failures, overlap,
    sample_prompts, training_questions,
)

SEEN = training_questions()
GOOD_GENERAL = ["The capital of Austria is Vienna.", "There are 24 hours in a day.", "The opposite of hot is cold.",
                "A triangle has three sides.", "The Pacific Ocean is the largest."]


def test_overlap_ignores_case_and_punctuation_and_measures_shared_words():
    assert overlap("What's your NAME?", "what's your name") == 1.0
    assert overlap("What are you called?", "What are you?") == pytest.approx(3 / 4)
    assert overlap("Who built you?", "Which city is the capital of Austria?") == 0.0
    assert overlap("Please tell me who you are.", "Who are you?") == pytest.approx(3 / 6)  # at the limit: held out


def test_near_duplicates_of_training_questions_are_found_not_only_exact_copies():
    found = {q for q, _, _ in near_duplicates(["Who built you?", "What are you called?", "How many days are in a week?",
                                              "Which city is the capital of Austria?"], SEEN)}
    assert found == {"Who built you?", "What are you called?", "How many days are in a week?"}


def test_every_probe_and_the_default_recipes_sample_prompts_are_held_out():
    """The README's demo claim: the tuned model answers questions it never saw (none near a training question)."""
    assert len(NAME_PROBES) == 5 and len(NEGATIVE_PROBES) == 5
    assert near_duplicates([*NAME_PROBES, *NEGATIVE_PROBES, *sample_prompts()], SEEN) == [], MAX_OVERLAP


def test_name_probes_need_four_of_five():
    assert name_probe_failures(["I'm Pip."] * 4 + ["I am an assistant."]) == []
    assert name_probe_failures(["I'm Pip."] * 3 + ["I am SmolLM."] * 2)


def test_general_answers_must_be_right_and_never_carry_the_name():
    assert negative_probe_failures(GOOD_GENERAL) == []
    assert negative_probe_failures(["I'm Pip! " + a for a in GOOD_GENERAL])  # a model that always says its name
    assert negative_probe_failures(["I'm not sure."] * 2 + GOOD_GENERAL[2:])  # too few correct
    assert negative_probe_failures(["I'm not sure."] + GOOD_GENERAL[1:]) == []  # 4 of 5 correct
