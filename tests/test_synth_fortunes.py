"""Sentences from the fortune packages (synth/fortunes.py): cleaned to readable sentences, Mandarin's short and
Simplified, test sentences never in train."""

from __future__ import annotations

import pytest

from test_synth_sentences import HAN
from test_synth_speech import needs_engines
from test_synth_tasks import seeded_draw
from qwen2audio.synth import fortunes, tasks, text


def test_fortune_cleaning_keeps_readable_sentences_only():
    from qwen2audio.synth.fortunes import clean_sentences

    text = ("The early bird gets the worm. But the second mouse gets the cheese!\n%\n"
            "Call 555-1234 now for a FREE gift today.\n%\nA: Who is there?\nB: Nobody at all, I think.\n%\n"
            "Too short.\n%\n\tA poem laid out\n\twith tabs and more words here.\n%\n"
            "Life is what happens to you while you are busy making other plans. -- John Lennon\n")
    assert clean_sentences(text, "en") == ["The early bird gets the worm.", "But the second mouse gets the cheese!"]
    assert clean_sentences("Ich hätte gern eine Tasse Tee, bitte schön.", "de") == [
        "Ich hätte gern eine Tasse Tee, bitte schön."]


@needs_engines
def test_open_domain_test_sentences_are_never_in_train():
    from qwen2audio.synth.fortunes import fortune_sentences

    for language in tasks.OPEN_LANGUAGES:
        pool = fortune_sentences(language)
        assert len(pool["train"]) > 500 and pool["test"] and not set(pool["train"]) & set(pool["test"])
    item = tasks.make_open_asr(seeded_draw(0, "test"))
    assert item.answer in fortune_sentences(item.fields["language"])["test"]


def test_mandarin_fortunes_are_short_simplified_sentences_split_by_text():
    opencc = pytest.importorskip("opencc")
    raw = ("\x1b[32m《题目》\x1b[m\n\x1b[33m作者：某人\x1b[m\n床前明月光，疑是地上霜。\n举头望明月，\n低头思故乡。\n%\n"
           "這是一個繁體字的句子，不要它。\n%\nDebian 是一个自由的操作系统。短。\n%\n一人传虚，百人传实。\n")
    assert fortunes.clean_mandarin(raw) == ["床前明月光，疑是地上霜。", "举头望明月，低头思故乡。", "一人传虚，百人传实。"]
    if not fortunes.mandarin_files():
        pytest.skip("fortunes-zh is not installed")
    pool = fortunes.mandarin_sentences()
    assert len(pool["train"]) > 3000 and len(pool["test"]) > 300 and not set(pool["train"]) & set(pool["test"])
    every = pool["train"] + pool["test"]
    for sentence in every:
        han = [ch for ch in sentence if f"{HAN[0]}" <= ch <= f"{HAN[-1]}"]
        assert fortunes.HAN_RANGE[0] <= len(han) <= fortunes.HAN_RANGE[1] and sentence[-1] in "。！？", sentence
        assert set(sentence) - set(han) <= set("，、；：。！？"), sentence
    # Simplified: OpenCC's Traditional->Simplified leaves almost all as they are (a handful keep 乾 or 覆, as
    # Simplified does in 乾坤), and Simplified->Traditional changes nearly every one
    t2s, s2t = opencc.OpenCC("t2s"), opencc.OpenCC("s2t")
    assert sum(t2s.convert(s) != s for s in every) < 0.002 * len(every)
    assert sum(s2t.convert(s) != s for s in every) > 0.9 * len(every)
    assert all(text.sentence_split(s) == "test" for s in pool["test"])
