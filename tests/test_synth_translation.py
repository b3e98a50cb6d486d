"""Translation pairs (synth/translation.py): each reference in its own language and from the same template as the
English sentence; test sentences never in train."""

from __future__ import annotations

import random

import numpy as np
import pytest

from qwen2audio.synth import translation


def test_translation_references_are_in_their_language_and_from_the_same_template():
    wordfreq = pytest.importorskip("wordfreq")
    num2words = pytest.importorskip("num2words").num2words
    rng = random.Random(3)
    pairs = [translation.translation_pair(rng, "train") for _ in range(200)]
    assert {p.template for p in pairs} == set(translation.TEMPLATES)
    for pair in pairs:
        zh, fr, de = (pair.references[t] for t in ("zh", "fr", "de"))
        assert all("\u4e00" <= ch <= "\u9fff" for ch in zh[:-1]) and zh.endswith("。"), zh  # Han characters only
        for ref, language in ((fr, "fr"), (de, "de")):
            words = [w.strip(".").lower() for w in ref.replace("'", " ").split()]
            own = np.mean([wordfreq.zipf_frequency(w, language) for w in words])
            as_english = np.mean([wordfreq.zipf_frequency(w, "en") for w in words])
            assert own > as_english + 1 and ref[0].isupper() and ref.endswith("."), (ref, own, as_english)
        names = [n for n in translation.NAMES if n in pair.english.split()]
        for name in names:  # the same person in every language
            assert name in fr and name in de and translation.NAMES[name] in zh
        numbers = [n for n, words in translation.NUMBERS.items() if words[0] in pair.english.split()]
        for n in numbers:  # the same count, written by num2words independently
            assert num2words(n, lang="fr") in fr.split() and num2words(n, lang="de") in de.lower().split()
        nouns = [n for n in translation.NOUNS if n.en in pair.english.split() or n.en_plural in pair.english.split()]
        assert len(nouns) == (pair.template != "going")
        for noun in nouns:
            assert noun.zh in zh and (noun.de in de or noun.de_plural in de)
    test = {translation.translation_pair(rng, "test").english for _ in range(50)}
    assert not test & {p.english for p in pairs}
