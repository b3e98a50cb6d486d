"""Speech engines and voices (synth/speech.py): voice sets, festival's deterministic voices, espeak-ng reading each
script in its own language; `needs_engines` for the other synth tests that speak."""

from __future__ import annotations

import random
import shutil

import numpy as np
import pytest

from conftest import median_f0
from test_synth_sentences import HAN
from qwen2audio.audio import SAMPLE_RATE
from qwen2audio.synth import effects, fortunes, resolve, sentences, speech, tasks


def _missing_engine() -> str | None:
    try:
        resolve(None, None, clips=1)
    except speech.EngineError as e:
        return str(e)
    return None


needs_engines = pytest.mark.skipif(_missing_engine() is not None, reason=str(_missing_engine()))


@needs_engines
def test_extended_voices_add_named_variants_to_training_only():
    def gender_item(seed, split, voices):
        return tasks.make_gender(tasks.Draw(np.random.default_rng(seed), random.Random(seed), split, ("en",), voices))

    def variant(item):
        return item.voice.rsplit("+", 1)[1]

    numbered = set(speech.MALE_VARIANTS + speech.FEMALE_VARIANTS)
    core = {variant(gender_item(s, "train", "core")) for s in range(60)}
    extended = [gender_item(s, "train", "extended") for s in range(60)]
    named = [i for i in extended if variant(i) not in numbered]
    assert core == numbered - set(speech.TEST_VARIANTS)
    assert named and all(variant(i) in speech.EXTENDED_VARIANTS[i.answer] for i in named)  # each speaks its own sex
    for item in extended:  # every named variant speaks (espeak-ng knows it)
        assert len(item.audio) > 0.3 * SAMPLE_RATE and np.abs(item.audio).max() > 0.01
    test = {variant(gender_item(s, "test", "extended")) for s in range(20)}
    assert test == set(speech.TEST_VARIANTS)  # the test split keeps the held-out voices alone
    with pytest.raises(ValueError, match="unknown voice set 'all'"):
        resolve(["gender"], ["en"], clips=3, voices="all")
    assert "voices" not in resolve(["gender"], ["en"], clips=3).settings()  # older corpora's settings unchanged
    assert resolve(["gender"], ["en"], clips=3, voices="extended").settings()["voices"] == "extended"


needs_festival = pytest.mark.skipif(shutil.which("festival") is None, reason="festival is not installed")


@needs_festival
def test_festival_voices_speak_deterministically_at_16_khz():
    sentence = "the small dog is near the park"
    first = {}
    for name, sex in speech.FESTIVAL_VOICES.items():
        audio = speech.festival(sentence, speech.Voice(speech.FESTIVAL, "en", sex, name))
        seconds = len(audio) / SAMPLE_RATE
        assert audio.dtype == np.float32 and 0.8 < seconds < 4.0, (name, seconds)  # 7 words: ~2-3 words/s
        assert effects.rms(audio) > 0.01 and np.abs(audio).max() <= 1.0
        first[name] = audio
    speech.festival("something else entirely", speech.Voice(speech.FESTIVAL, "en", "male", "kal_diphone"))
    speech._festival.close()
    speech._festival = None  # a fresh server: the audio depends on the text and voice alone
    for name, sex in speech.FESTIVAL_VOICES.items():
        assert np.array_equal(speech.festival(sentence, speech.Voice(speech.FESTIVAL, "en", sex, name)), first[name])
    assert median_f0(first["cmu_us_slt_arctic_hts"]) > median_f0(first["kal_diphone"])  # the female voice is higher


def _phonemes(text: str, voice: str) -> list[str]:
    """espeak-ng's phonemes of each line of `text`; a line it reads in another language holds a "(en)" switch."""
    run = __import__("subprocess").run([speech.ESPEAK, "-v", voice, "-q", "-x"], input=text, capture_output=True,
                                       text=True, check=True)
    return run.stdout.splitlines()


@needs_engines
def test_espeak_reads_chinese_scripts_in_their_own_language():
    pytest.importorskip("faker")
    characters = sorted({ch for split in fortunes.mandarin_sentences().values() for s in split for ch in s
                         if f"{HAN[0]}" <= ch <= f"{HAN[-1]}"})
    lines = _phonemes("。\n".join(characters) + "。", speech.HANZI_VOICES["cmn"])
    assert len(lines) == len(characters) and not [c for c, l in zip(characters, lines) if "(en)" in l]
    assert "(en)" in _phonemes("今天天气很好", speech.ESPEAK_VOICES["cmn"])[0]  # why Mandarin needs HANZI_VOICES
    rng = random.Random(2)
    cantonese = sorted({ch for s in (sentences.cantonese_sentence(rng, "train") for _ in range(300)) for ch in s.text
                        if f"{HAN[0]}" <= ch <= f"{HAN[-1]}"})
    lines = _phonemes("。\n".join(cantonese) + "。", "yue")
    assert len(lines) == len(cantonese) and not any("(en)" in line for line in lines)
    readings = [sentences.japanese_sentence(rng, "train").reading.replace("、", "").rstrip("。") for _ in range(40)]
    assert not any("(en)" in line for line in _phonemes("\n".join(readings), "ja"))
    written = sentences.japanese_sentence(random.Random(0), "train").text
    assert "(en)" in "".join(_phonemes(written, "ja"))  # espeak-ng spells kanji out in English: why ja speaks kana
