"""Names and places (synth/names.py) from Faker in each language, in a fixed order whatever the string hash seed."""

from __future__ import annotations

import random
import re

import pytest

from test_synth_sentences import EUROPEAN, KANA, own_language_margin
from qwen2audio.synth import names, sentences


def test_names_and_places_come_from_faker_in_each_language():
    pytest.importorskip("faker")
    for language in names.FAKER_LOCALES:
        people, places = names.people(language), names.places(language)
        assert len(people) >= 40 and len(places) >= 10, language
        assert people == tuple(sorted(set(people), key=lambda n: (n.text, n.reading, n.sex or "")))  # fixed order
    assert {n.sex for n in names.people("de")} == {"male", "female"}
    assert all(all(f"{KANA[0]}" <= ch <= f"{KANA[-1]}" for ch in n.reading) for n in names.people("ja"))
    rng = random.Random(0)
    for language in names.FAKER_LOCALES:
        for _ in range(15):
            sentence = sentences.names_sentence(rng, language, "train")
            assert any(n.text in sentence.text and n.reading in sentence.reading for n in names.people(language))
            if language in EUROPEAN:
                assert own_language_margin(sentence.text, language) > 0.3, sentence
    assert sentences._spanish_and("Sonia y Isabel van") == "Sonia e Isabel van"  # y -> e before an i sound
    assert sentences._spanish_and("Sonia y Hilario y Hierro") == "Sonia e Hilario y Hierro"
    assert sentences._spanish_before_noun("tiene veintiuno años, treinta y uno años") == (
        "tiene veintiún años, treinta y un años")
    spanish = [sentences.names_sentence(rng, "es", "train").text for _ in range(300)]
    assert not any("uno años" in s or re.search(r" y (I|Hi)(?![aeo])", s) for s in spanish)


def test_name_and_place_pools_do_not_follow_the_string_hash_seed():
    """Faker's it_IT builds its town list from a set: drawn from as is, the pool (and so the corpus) changed with
    each process' PYTHONHASHSEED."""
    pytest.importorskip("faker")
    import os
    import subprocess
    import sys

    code = ("from qwen2audio.synth import names; print('|'.join(n.text for l in names.FAKER_LOCALES "
            "for n in names.people(l) + names.places(l)))")
    pools = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(pools) == 1 and pools.pop().count("|") > 2000
