"""Normalisers and metrics of the official evaluation against known values."""

from __future__ import annotations

import pytest

from qwen2audio.eval.metrics import accuracy, bleu, bleu_tokenizer, edit_distance, wer
from qwen2audio.eval.normalize import (asr_units, basic_normalize, cardinal_to_chinese, chinese_normalize,
                                       english_normalize, normalize_asr, strip_tags)

TRICKY_ENGLISH = [
    "Mr. Smith paid $20 million and 7 cents, twenty-one percent!",
    "one oh one, the twenty first of May in the 1960s",
    "I can't believe it's 3.5 o'clock; we're gonna be late",
    "Café [NOISE] (um) naïve, ma'am: hmm uh three hundred and five",
    "two thousand and twenty four, double seven point five",
    "It costs $1.50 or one pound, 1,000,000 people, 50% off",
    "minus forty degrees, the 32nd and 274th, sixes and sevens",
    "The Colour of Analysed Theatre Programmes",
]


@pytest.mark.parametrize("text", TRICKY_ENGLISH)
def test_whisper_normalizers_match_transformers(text):
    """transformers ships the same Whisper normalisers (test-only oracle; the spelling map is passed the same)."""
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer

    from qwen2audio.eval.normalize import english_spelling

    assert english_normalize(text) == EnglishTextNormalizer(english_spelling())(text)
    assert basic_normalize(text) == BasicTextNormalizer()(text)


def test_english_known_values():
    assert english_normalize("Mr. Smith paid $20 million and 7 cents") == "mister smith paid $20000000.07"
    assert english_normalize("one oh one") == "101"
    assert english_normalize("I can't believe it's twenty-one percent") == "i can not believe it is 21%"
    assert english_normalize("half a million") == "500000"  # openai-whisper's current rule
    assert english_normalize("The colour of the theatre centre, mhm.") == "the color of the theater center"


def test_spelling_map_is_whisper_s():
    from qwen2audio.eval.normalize import english_spelling

    spelling = english_spelling()
    assert len(spelling) > 1700 and all(b != a for b, a in spelling.items())
    assert (spelling["aeroplane"], spelling["analyse"], spelling["yoghurt"], spelling["mmm"]) == \
        ("airplane", "analyze", "yogurt", "hmm")


def test_official_post_processing():
    assert strip_tags("<|en|>Hello , world !  How   are you ?") == "Hello, world! How are you?"
    assert strip_tags("<|zh|>今天 天气 很好 。", "zh") == "今天天气很好。"
    # Whisper's number rule reads "3 o" as "30": a quirk of the official scoring, kept
    assert normalize_asr("<|en|> Hello, WORLD! It's 3 o'clock.", "en") == "hello world it is 30 clock"
    assert asr_units("<|en|> - Hello , world !", "en") == ["hello", "world"]


def test_chinese_numbers_and_punctuation():
    assert [cardinal_to_chinese(n) for n in ["0", "10", "12", "101", "110", "1001", "10086", "20000", "100000000"]] \
        == ["零", "十", "十二", "一百零一", "一百一十", "一千零一", "一万零八十六", "两万", "一亿"]
    assert [cardinal_to_chinese(n) for n in ["200", "22000", "120000", "20200", "22"]] \
        == ["两百", "两万两千", "十二万", "两万零二百", "二十二"]
    assert chinese_normalize("我在2024年花了3.5元，占50%，共1/3。") == "我在二零二四年花了三点五元 占百分之五十 共三分之一 "
    assert chinese_normalize("电话13812345678！") == "电话一三八一二三四五六七八 "
    assert asr_units("<|zh|>今天，天气 很好。", "zh") == list("今天天气很好")
    assert asr_units("廣東話，講緊嘢", "yue") == list("广东话讲紧嘢")  # Traditional → Simplified


def test_wer_hand_worked():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance([], ["a"]) == 1
    # 1 deletion over 6 words + 1 insertion over 2 words: corpus WER = 2 / 8, not the mean of per-utterance WERs
    s = wer(["the cat sat on the mat", "hello world"], ["the cat sat on mat", "hello there world"])
    assert (s.details["edits"], s.details["reference_units"], s.value) == (2, 8, 25.0)
    # normalisation makes these equal: case, punctuation, numbers, contractions
    assert wer(["Twenty-one dollars, isn't it?"], ["21 dollars is not it"]).value == 0.0
    # characters for Chinese: 1 substitution over 6 characters
    s = wer(["今天天气很好"], ["今天天汽很好。"], language="zh")
    assert (s.details["edits"], s.details["reference_units"]) == (1, 6)


def test_bleu_matches_sacrebleu():
    import sacrebleu

    refs = ["The cat sat on the mat.", "It is raining today in the city."]
    hyps = ["The cat sat on a mat.", "Today it rains in the city."]
    assert bleu(refs, hyps).value == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a").score)
    zh_refs, zh_hyps = ["猫坐在垫子上。"], ["猫坐在垫子。"]
    assert bleu(zh_refs, zh_hyps, "zh").value == pytest.approx(
        sacrebleu.corpus_bleu(zh_hyps, [zh_refs], tokenize="zh").score)
    assert bleu(["a b c d"], ["a b c d"]).value == pytest.approx(100.0)
    assert bleu_tokenizer("zh") == "zh" and bleu_tokenizer("de") == "13a"
    assert bleu_tokenizer("ja") in ("ja-mecab", "char")


def test_accuracy_exact_match_and_outside_labels():
    labels = ("neutral", "joy", "sadness")
    s = accuracy(["joy", "neutral", "sadness", "joy"], [" joy", "Neutral", "sadness", "happy"], labels)
    assert s.value == 0.5 and s.details == {"correct": 2, "outside_label_set": 2}  # case-sensitive
