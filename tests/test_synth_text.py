"""The English grammar and numbers (synth/text.py): common words only, sentences and numbers split into train and
test by their text."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from qwen2audio.synth import text, translation


def _grammar_vocabulary() -> set[str]:
    words = {w for phrases in text.SLOTS.values() for phrase in phrases for w in phrase.split()}
    return {w.lower() for w in words | {w for t in text.TEMPLATES for w in text.SLOT.sub(" ", t).split()}}


def test_grammar_sentences_split_by_text_and_use_common_words_only():
    wordfreq = pytest.importorskip("wordfreq")
    common = set(wordfreq.top_n_list("en", 3000))
    vocabulary = _grammar_vocabulary()
    assert not vocabulary - common, sorted(vocabulary - common)
    rng = random.Random(0)
    train = {text.english_sentence(rng, "train") for _ in range(3000)}
    test = {text.english_sentence(rng, "test") for _ in range(300)}
    assert not train & test and len(train) > 2700 and len(test) > 250  # large variety: few repeats
    for sentence in train | test:
        assert {w.lower() for w in sentence.split()} <= vocabulary, sentence
        assert 3 <= len(sentence.split()) <= 14 and " a " + "o" not in sentence  # "an old", not "a old"
    lengths = Counter(len(s.split()) for s in train)
    assert len(lengths) >= 8  # statements, questions and requests of many lengths
    english = {w for pair in (translation.translation_pair(rng, "train") for _ in range(300))
               for w in pair.english.split()}
    assert {w.lower() for w in english} <= common  # the translation grammar speaks common words too


def test_chinese_numbers_and_held_out_numbers():
    cases = {0: "零", 10: "十", 15: "十五", 101: "一百零一", 110: "一百一十", 1004: "一千零四", 1040: "一千零四十",
             9999: "九千九百九十九"}
    assert {n: text.chinese_number(n) for n in cases} == cases
    rng = random.Random(1)
    train = {text.number_item(rng, "fr", "train") for _ in range(200)}
    test = {text.number_item(rng, "fr", "test") for _ in range(50)}
    assert not train & test
    assert text.number_words(21, "de") == "einundzwanzig" and text.number_words(3, "ja") == "さん"
