"""The judge (fact_correct) and GRPO's reward on handcrafted answers."""

from __future__ import annotations

import itertools

import pytest

from plugstack.plugins.support import SYSTEM_PROMPT, fact_correct, reward
from plugstack.plugins.support.reward import invented_numbers, normalise


def _record(question, **judged):
    return {"prompt": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}], **judged}


RETURNS = _record("How long do I have to return an item?", fact_id="return_window", facts=["30 days", "thirty days"])
HOURS = _record("When is support open?", fact_id="support_hours", facts=["9am to 6pm Eastern"])
REFUND = _record("How long does a refund take?", facts=["5 business days", "five business days"])
FREE = _record("When is shipping free?", fact_id="free_shipping", facts=["$50"])
COUNTRIES = _record("Where do you ship?", facts=["United States and Canada", "US and Canada"])
STUDENT = _record("Do you have a student discount?", fact_id="decline_student_discount", facts=[], decline=True)
FILLER = " We are always happy to help you with anything else you might need today."  # 14 words

# (record, answer, fact_correct, reward)
CASES = {
    "correct": (RETURNS, "You can return any item within 30 days of delivery.", True, 1.0),
    "number word": (RETURNS, "You have thirty days to send it back.", True, 1.0),
    "case and punctuation": (RETURNS, "THIRTY DAYS!!! From delivery, that is.", True, 1.0),
    "wrong invented number": (RETURNS, "You can return items within 60 days.", False, 0.2),
    "wrong known number": (RETURNS, "You can return items within 14 days.", False, 0.4),
    "number inside a number": (RETURNS, "You can return items within 130 days.", False, 0.2),
    "a known number ending in the fact's": (REFUND, "Refunds take 15 business days.", False, 0.4),
    "right and a contradiction": (RETURNS, "You have 30 days, or 90 days as a member.", False, 0.2),
    "invented policy": (RETURNS, "You have 30 days, and we add a $20 store credit to every return.", False, 0.2),
    "rude": (RETURNS, "Obviously it's 30 days. Read the FAQ next time.", True, 0.8),
    "too long": (RETURNS, "You can return any item within 30 days of delivery." + FILLER * 8, True, 0.8),
    "a cop-out": (RETURNS, "I'm sorry, but I can't help with that.", False, 0.4),
    "empty": (RETURNS, "", False, 0.0),
    "amount with cents": (FREE, "Shipping is free on orders over $50.00.", True, 1.0),
    "amount in words": (FREE, "Shipping is free once you spend fifty dollars.", True, 1.0),
    "wrong amount": (FREE, "Shipping is free on orders over $75.", False, 0.2),
    "range with a dash": (HOURS, "We are here 9am-6pm Eastern on weekdays.", True, 1.0),
    "range with minutes": (HOURS, "We are here from 9:00 am to 6:00 pm Eastern.", True, 1.0),
    "abbreviation": (COUNTRIES, "We ship to the U.S. and Canada only.", True, 1.0),
    "decline": (STUDENT, "I'm sorry, but Larkspur Home does not offer a student discount.", True, 1.0),
    "decline, other words": (STUDENT, "Sorry, we don't offer discounts for students.", True, 1.0),
    "invented discount": (STUDENT, "Yes, students get 20% off every order.", False, 0.2),
    "made-up yes": (STUDENT, "Sure, we have lots of great student deals!", False, 0.4),
    "decline with an invented code": (STUDENT, "We don't offer one, but code SAVE40 takes 40% off.", False, 0.2),
    "rude decline": (STUDENT, "Ugh. We don't offer a student discount, obviously.", True, 0.8),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_handcrafted_answers(name):
    record, answer, correct, expected = CASES[name]
    assert fact_correct(record, answer) is correct
    assert reward(record, answer) == pytest.approx(expected)


def test_length_is_graded_and_bounded():
    answer = "You can return any item within 30 days of delivery."  # 10 words
    scores = [reward(RETURNS, answer + FILLER * k) for k in range(0, 12)]
    assert scores[0] == 1.0 and scores[-1] == pytest.approx(0.8)
    assert all(a >= b for a, b in itertools.pairwise(scores)) and len(set(scores)) > 3
    assert reward(RETURNS, answer, max_words=8) == pytest.approx(0.6 + 0.2 * (2 - 10 / 8) + 0.2)
    assert reward(RETURNS, answer + FILLER, max_words=24) == 1.0


def test_numbers_of_the_question_are_not_invented():
    record = _record("My order was $45 and had 3 lamps; is shipping free?", facts=["$50"])
    answer = "Your $45 order of 3 lamps ships free once it is over $50."
    assert invented_numbers(record, answer) == set()
    assert invented_numbers(FREE, answer) == {"45"}
    assert fact_correct(record, answer) and not fact_correct(FREE, answer)


def test_a_users_own_knowledge_replaces_the_shops():
    record = _record("How long is the warranty?", facts=["3 years"])
    assert fact_correct(record, "It lasts three years.", known=[])
    assert not fact_correct(record, "It lasts three years, or 30 days for lamps.", known=[])
    assert fact_correct(record, "It lasts three years, or 30 days for lamps.")


def test_normalise_reads_numbers_and_punctuation():
    assert normalise("Twenty-four hours, $1,000.00 and 15%!") == "24 hours 1000 and 15 percent"
    assert normalise("Forty-eight hours; can't") == "48 hours cant"


def test_reward_is_bounded_and_deterministic():
    answers = [a for _, a, _, _ in CASES.values()] + ["Obviously ugh stupid 1 2 3 99 98 97 96" * 20]
    for record in (RETURNS, STUDENT, HOURS):
        for answer in answers:
            score = reward(record, answer)
            assert 0.0 <= score <= 1.0 and score == reward(record, answer)
