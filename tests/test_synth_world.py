"""The world of facts (synth/world.py): spoken fact questions answered from its table, held-out phrasings of facts
heard in training."""

from __future__ import annotations

import random

from test_synth_speech import needs_engines
from test_synth_tasks import seeded_draw
from qwen2audio.synth import tasks, world


def _fact_of(question: str) -> world.Fact:
    """The fact a spoken question asks for, found from the tables by the question's subject and wording alone."""
    for f in world.FACTS:
        for phrasing in world.PHRASINGS[f.relation]:
            if phrasing.format(x=f.subject) == question:
                return f
    raise AssertionError(question)


@needs_engines
def test_fact_questions_are_answered_from_the_world_table():
    hedged = 0
    for seed in range(12):
        item = tasks.make_facts(seeded_draw(seed))
        question = item.fields["spoken"]
        fact = _fact_of(question)
        assert item.voice_chat and item.answer == fact.answer() and item.answer not in item.wrong
        if item.sft_answer:  # SFT teaches the hedged answer (right, rambling) and DPO rejects it
            hedged += 1
            assert item.wrong == (item.sft_answer,) and "not completely sure" in item.sft_answer
            assert f" {fact.value}," in item.sft_answer
        else:
            assert len(item.wrong) == 2 and item.wrong[0] != fact.answer()  # a confident mistake, or rambling
        if fact.relation in ("after", "before"):
            step = 1 if fact.relation == "after" else -1
            expected = world.DAYS[(world.DAYS.index(fact.subject) + step) % 7]
            assert item.answer.lower().startswith(expected)
        elif fact.relation == "capital":
            assert item.answer.lower().endswith(world.CAPITALS[fact.subject] + ".")
    assert 0 < hedged < 12  # both kinds (HEDGED_SHARE: half)
    rng = random.Random(0)
    train = {world.fact_question(rng, "train")[0] for _ in range(2000)}
    test = {world.fact_question(rng, "test")[0] for _ in range(200)}
    assert test and not train & test
    tested = {_fact_of(q) for q in test}
    assert sum(f in {_fact_of(q) for q in train} for f in tested) > 0.8 * len(tested)  # facts heard, phrasing new
