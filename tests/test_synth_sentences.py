"""Sentences in French, Cantonese and Japanese (synth/sentences.py), each in its own language and script; the
script ranges and `own_language_margin` for the other synth tests."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

from qwen2audio.synth import names, sentences


HAN = "\u4e00-\u9fff"
KANA = "\u3040-\u30ff"
# words of written Cantonese that standard Mandarin does not use (it writes 在 了 的 不 们 他 来 那 这 是 些 东西 昨天 明天
# 喜欢 喝 家里 现在 回 礼拜 今天 一起)
CANTONESE_WORDS = ("喺", "咗", "嘅", "唔", "哋", "佢", "嚟", "嗰", "呢", "係", "啲", "嘢", "琴日", "聽日", "尋晚", "鍾意",
                   "飲", "屋企", "而家", "返", "禮拜", "今日", "一齊")
EUROPEAN = ("en", "fr", "it", "es", "de")


def own_language_margin(sentence: str, language: str) -> float:
    """How much more frequent (wordfreq zipf, mean over the words) the words are in `language` than in the most
    likely other European language of the report: > 0 means the text reads as `language`."""
    wordfreq = pytest.importorskip("wordfreq")
    words = [w.lower() for w in re.findall(r"[^\W\d_]+", sentence)]
    mean = {lang: np.mean([wordfreq.zipf_frequency(w, lang) for w in words]) for lang in EUROPEAN}
    return mean[language] - max(v for lang, v in mean.items() if lang != language)


def test_non_english_sentences_are_in_their_language():
    opencc = pytest.importorskip("opencc")
    pytest.importorskip("faker")
    rng = random.Random(1)
    t2s = opencc.OpenCC("t2s")
    french = [sentences.french_sentence(rng, "train") for _ in range(200)]
    assert {s.template for s in french} >= {"translation", *sentences.FRENCH_TEMPLATES}  # grammar side and templates
    for s in french:
        assert own_language_margin(s.text, "fr") > 1.0 and s.text[0].isupper() and s.text.endswith("."), s
        first = s.text.replace("'", " ").split()[0]
        if s.template == "translation" and first not in ("Le", "La", "Les", "L", "Nous", "Je", "J"):
            assert first in {n.text for n in names.people("fr")}, s  # the grammar's subject: a Faker French name
    cantonese = [sentences.cantonese_sentence(rng, "train") for _ in range(200)]
    for s in cantonese:
        assert all(f"{HAN[0]}" <= ch <= f"{HAN[-1]}" or ch in "，。？" for ch in s.text), s
    assert sum(t2s.convert(s.text) != s.text for s in cantonese) > 0.9 * len(cantonese)  # Traditional characters
    assert sum(any(w in s.text for w in CANTONESE_WORDS) for s in cantonese) > 0.9 * len(cantonese)
    japanese = [sentences.japanese_sentence(rng, "train") for _ in range(200)]
    for s in japanese:
        assert any("\u3040" <= ch <= "\u309f" for ch in s.text) and s.text.endswith("。"), s  # hiragana
        assert all(f"{KANA[0]}" <= ch <= f"{KANA[-1]}" or ch in "、。" for ch in s.reading), s  # no kanji read
    assert sum(any(f"{HAN[0]}" <= ch <= f"{HAN[-1]}" for ch in s.text) for s in japanese) > 0.9 * len(japanese)
    for make in (sentences.french_sentence, sentences.japanese_sentence, sentences.cantonese_sentence):
        train = {make(rng, "train").text for _ in range(300)}
        test = {make(rng, "test").text for _ in range(60)}
        assert len(test) > 30 and not train & test
