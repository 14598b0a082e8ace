"""The guard: prompts that need a different answer are told apart; rewordings are not."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.semantic.guard import Guard

# A stand-in vocabulary: the guard only asks whether a sentence-initial word is common.
VOCAB = {"capital": 3007, "distance": 3292, "speed": 3177}


def verdict(a: str, b: str) -> tuple[bool, str]:
    guard = Guard(VOCAB)
    result = guard.check(guard.facets(a), guard.facets(b))
    return result.ok, result.rule


DIFFERENT = [
    ("How far is 24 miles in kilometers?", "How far is 42 miles in kilometers?", "numbers"),
    ("Summarize Hamlet in three sentences.", "Summarize Hamlet in five sentences.", "numbers"),
    ("List twenty-one facts about Mars.", "List twenty-two facts about Mars.", "numbers"),
    ("What is 12 plus 30?", "What is 12 times 30?", "operators"),
    ("Translate 'good luck' into Spanish.", "Translate 'good night' into Spanish.", "quoted"),
    ("What is the capital of France?", "What is the capital of Germany?", "entities"),
    ("How do I install Docker on Ubuntu?", "How do I install Docker on Fedora?", "entities"),
    ("Is it safe to eat raw eggs?", "Is it not safe to eat raw eggs?", "negation"),
    ("Why don't cats like water?", "Why do cats like water?", "negation"),
    ("Train times from Oslo to Bergen", "Train times from Bergen to Oslo", "order"),
    ("What is 90 minus 15?", "What is 15 minus 90?", "order"),
    ("Convert 30 pounds to kilograms.", "Convert 30 kilograms to pounds.", "units"),
    ("Write a sonnet about winter.", "Write a limerick about winter.", "slot"),
    ("How do I lock a folder in Windows?", "How do I unlock a folder in Windows?", "slot"),
]

SAME = [
    ("What is the capital of France?", "Tell me the capital of France."),
    ("what is the capital of france", "What is the capital of France?"),
    ("How many people live in Lisbon?", "How many people live in Lisbno?"),
    ("Summarize Hamlet in 3 sentences.", "Summarize Hamlet in three sentences."),
    ("Give me twenty-five ideas for Rome.", "Give me 25 ideas for Rome."),
    ("List twenty one facts about Mars.", "List 21 facts about Mars."),
    ("What is 12 times 30?", "Multiply 30 by 12."),
    ("Convert 30 pounds to kilograms.", "How many kilograms is 30 pounds?"),
    ("Distance between Oslo and Bergen?", "How far is Bergen from Oslo?"),
    ("Translate 'good luck' into Spanish.", "How do you say 'good luck' in Spanish?"),
    ("I'd like a poem about the sea, please.", "Write a poem about the sea."),
]


@pytest.mark.parametrize(("a", "b", "rule"), DIFFERENT)
def test_prompts_needing_another_answer_are_rejected(a: str, b: str, rule: str) -> None:
    assert verdict(a, b) == (False, rule)
    assert not verdict(b, a)[0]


@pytest.mark.parametrize(("a", "b"), SAME)
def test_rewordings_are_accepted(a: str, b: str) -> None:
    assert verdict(a, b) == (True, "ok")
    assert verdict(b, a) == (True, "ok")


def test_disabled_rules_are_skipped() -> None:
    a, b = "Is it safe to eat raw eggs?", "Is it not safe to eat raw eggs?"
    guard = Guard(VOCAB, disabled=frozenset({"negation"}))
    assert guard.check(guard.facets(a), guard.facets(b)).ok


NUMBER_WORDS = st.sampled_from(["one", "twenty", "five", "ninety", "-", " ", "first", "7", "x"])


@given(st.text(max_size=200) | st.lists(NUMBER_WORDS, max_size=12).map("".join))
def test_any_prompt_is_accepted_against_itself(text: str) -> None:
    guard = Guard(VOCAB)
    assert guard.check(guard.facets(text), guard.facets(text)).ok


@given(st.text(max_size=120), st.text(max_size=120))
def test_verdicts_do_not_depend_on_which_prompt_was_cached(a: str, b: str) -> None:
    guard = Guard(VOCAB)
    fa, fb = guard.facets(a), guard.facets(b)
    assert guard.check(fa, fb).ok == guard.check(fb, fa).ok
