"""Task families (synth/tasks.py): answers checked against the audio by independent measurement, held-out voices
and sentences; `seeded_draw`, the draw every family makes its item from, for the other synth tests."""

from __future__ import annotations

import random

import numpy as np
import pytest

from conftest import count_onsets, dominant_hz, median_f0
from test_synth_speech import needs_engines
from qwen2audio.audio import SAMPLE_RATE
from qwen2audio.synth import TASKS, effects, fortunes, sounds, speech, tasks, text, translation


def seeded_draw(seed: int, split: str = "train", languages=tasks.LANGUAGES) -> tasks.Draw:
    return tasks.Draw(np.random.default_rng(seed), random.Random(seed), split, tuple(languages))


def test_question_families_answers_match_the_audio():
    for seed in range(12):
        item = tasks.make_count(seeded_draw(seed))
        assert count_onsets(item.audio) == int(item.answer), item.fields
        item = tasks.make_pitch(seeded_draw(seed))
        assert (dominant_hz(item.audio) > 1000) == (item.answer == "high")
        item = tasks.make_loudness(seeded_draw(seed))
        half = len(item.audio) // 2
        first, second = (np.sqrt(np.mean(item.audio[s] ** 2)) for s in (slice(0, half), slice(half, None)))
        assert (first > second) == (item.answer == "first")
        assert 20 * np.log10(max(first, second) / min(first, second)) > tasks.LOUDNESS_DB[0] - 1
        item = tasks.make_order(seeded_draw(seed))
        a, b = item.fields["params"]["seconds"]
        assert len(item.audio) / SAMPLE_RATE == pytest.approx(a + b + tasks.GAP_SECONDS, abs=1e-3)
        assert item.answer in item.fields["question"]


@needs_engines
def test_speaker_sex_by_measured_pitch_and_style_by_duration():
    male = [median_f0(tasks.make_gender(seeded_draw(s, languages=("en",))).audio) for s in range(40)
            if tasks.make_gender(seeded_draw(s, languages=("en",))).answer == "male"]
    female = [median_f0(tasks.make_gender(seeded_draw(s, languages=("en",))).audio) for s in range(40)
              if tasks.make_gender(seeded_draw(s, languages=("en",))).answer == "female"]
    assert male and female and np.median(male) < np.median(female)
    sentence = "the small dog is near the park"
    fast, slow = (speech.espeak(sentence, speech.Voice("espeak", "en", "male", "m1", rate=speech.RATE_WPM[s]))
                  for s in ("fast", "slow"))
    assert len(slow) > 1.8 * len(fast)


@needs_engines
def test_held_out_voices_and_sentences():
    train = {tasks.make_asr(seeded_draw(s, "train")).voice for s in range(30)}
    test_items = [tasks.make_asr(seeded_draw(s, "test")) for s in range(12)]
    assert not train & {i.voice for i in test_items}
    assert not any(v.startswith("flite:") for v in train) and any(v.startswith("festival:") for v in train)
    assert {"espeak", "flite"} == {i.voice.split(":")[0] for i in test_items}  # the held-out engine is heard
    assert all(text.sentence_split(i.answer) == "test" for i in test_items)


@needs_engines
def test_captions_name_what_was_rendered():
    for seed in range(8):
        item = tasks.make_caption(seeded_draw(seed))
        language = tasks.language_name(item.fields["language"])
        assert f"speaks {language}" in item.answer
        events = [e for e in tasks.ORDER_EVENTS if f"a {e}" in item.answer]
        assert len(events) <= 1
        if events:  # the event adds its own length plus the gap
            assert len(item.audio) / SAMPLE_RATE > sounds.MIN_SECONDS + tasks.GAP_SECONDS


@needs_engines
def test_s2tt_items_speak_the_source_and_answer_the_target():
    seen = set()
    for seed in range(9):
        item = tasks.make_s2tt(seeded_draw(seed))
        target = item.fields["target_language"]
        seen.add(target)
        assert item.kind == "s2tt" and item.fields["source_language"] == "en" and target in translation.TARGETS
        # the same draw gives the same pair: the answer is the target reference of the spoken English sentence
        pair = translation.translation_pair(seeded_draw(seed).py, "train")
        assert item.fields["source_text"] == pair.english and item.answer == pair.references[target]
        assert pair.english in item.wrong and item.answer not in item.wrong
        words = len(pair.english.split())
        assert 0.15 * words < len(item.audio) / SAMPLE_RATE < 1.0 * words + 1
    assert seen == set(translation.TARGETS)


@needs_engines
def test_multi_turn_answers_match_the_recording():
    for seed in range(12):
        item = tasks.make_dialog(seeded_draw(seed))
        (first_instruction, first_answer), = item.turns
        asked = item.fields["asked"]
        language = item.fields["language"]
        sex = "female" if item.voice.rsplit("+", 1)[1].startswith("f") else "male"
        truth = {"lid": tasks.language_name(language), "gender": sex}
        for kind, answer in zip(asked, (first_answer, item.answer)):
            if kind == "asr":
                assert answer in tasks.PHRASES[language]
            else:
                assert answer == truth[kind]
        assert item.kind == asked[1] and (not item.labels or item.answer in item.labels)
        assert first_instruction and item.instruction and "{" not in first_instruction + item.instruction


@needs_engines
def test_multi_audio_answers_by_measurement():
    for seed in range(16):
        item = tasks.make_compare(seeded_draw(seed))
        a, (b,) = item.audio, item.extra_audios
        what = item.fields["compare"]
        assert item.answer in item.labels and item.fields["question"] in item.instruction
        if what == "louder":
            assert (effects.rms(a) > effects.rms(b)) == (item.answer == "first")
        elif what == "siren":
            siren = a if item.answer == "first" else b
            frame = SAMPLE_RATE // 20
            tracked = [dominant_hz(siren[i:i + frame]) for i in range(0, len(siren) - frame, frame)]
            assert max(tracked) - min(tracked) > 200  # the wail sweeps
        elif what == "same_language" and "same language" in item.instruction:
            same = item.fields["languages"][0] == item.fields["languages"][1]
            assert item.answer == ("yes" if same else "no")
        else:
            named = item.instruction.split(" is in ")[1].split(",")[0]
            assert tasks.language_name(item.fields["languages"][("first", "second").index(item.answer)]) == named


MULTILINGUAL_ASR = {"names": None, "cmn_asr": "cmn", "yue_asr": "yue", "fr_asr": "fr", "ja_asr": "ja"}


@needs_engines
def test_multilingual_asr_items_speak_their_sentence():
    for family, language in MULTILINGUAL_ASR.items():
        for seed in range(6):
            draw = seeded_draw(seed, "test" if seed % 2 else "train", (language,) if language else tasks.LANGUAGES)
            item = TASKS[family].make(draw)
            spoken = item.fields["language"]
            assert item.kind == "asr" and item.labels == () and spoken in TASKS[family].languages
            seconds = len(item.audio) / SAMPLE_RATE
            letters = len([ch for ch in item.fields.get("reading", item.answer) if ch.isalpha()])
            assert 2 < letters / seconds < 25, (family, item.answer, seconds)  # spoken, at a speaking rate
            if spoken == "cmn":
                assert item.voice.startswith(f"espeak:{speech.HANZI_VOICES['cmn']}+")
            if spoken in tasks.CHARACTER_SCRIPTS:
                assert item.wrong and item.answer not in item.wrong
            if seed % 2:
                assert text.sentence_split(f"{spoken}:{item.answer}") == "test" or family == "cmn_asr"
    assert TASKS["cmn_asr"].make(seeded_draw(1, "test", ("cmn",))).answer in fortunes.mandarin_sentences()["test"]


@needs_engines
def test_age_labels_by_measured_pitch_and_speaking_rate():
    measured: dict[str, list[tuple[float, float]]] = {age: [] for age in tasks.AGES}
    for seed in range(36):
        item = tasks.make_age(seeded_draw(seed, "test" if seed % 4 == 0 else "train", ("en",)))
        assert item.kind == "age" and item.labels == tasks.AGES and item.answer in tasks.AGES
        rate = len(item.fields["params"]["text"]) / (len(item.audio) / SAMPLE_RATE)  # characters per second
        measured[item.answer].append((median_f0(item.audio, top_hz=600), rate))
    f0 = {age: [m[0] for m in v] for age, v in measured.items()}
    rate = {age: np.median([m[1] for m in v]) for age, v in measured.items()}
    assert all(len(v) >= 6 for v in f0.values())
    assert min(f0["child"]) > max(f0["adult"]) and min(f0["child"]) > 250  # a child's pitch, above every adult's
    assert np.median(f0["elderly"]) < np.median(f0["child"]) / 2
    assert rate["elderly"] < 0.88 * rate["adult"]  # old voices speak slower
    voices = {tasks.make_age(seeded_draw(s, "test", ("en",))).voice for s in range(8)}
    assert all(v.rsplit("+", 1)[1] in speech.TEST_VARIANTS for v in voices)  # held-out voices in test
