"""The synthetic corpus: determinism, labels checked by independent measurement, manifests the trainer and the
evaluator read, bad arguments, and resuming an interrupted run."""

from __future__ import annotations

import io
import json
import math
import random
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from qwen2audio.audio import SAMPLE_RATE
from qwen2audio.data.rows import Chat, Preference, TaskRow, parse_row
from qwen2audio.eval.datasets import get_benchmark, load_manifest
from qwen2audio.synth import (TASKS, corpus, effects, fortunes, generate, names, resolve, sentences, sounds, speech,
                              tasks, text, translation, world)

def _missing_engine() -> str | None:
    try:
        resolve(None, None, clips=1)
    except speech.EngineError as e:
        return str(e)
    return None


needs_engines = pytest.mark.skipif(_missing_engine() is not None, reason=str(_missing_engine()))


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _dominant_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)[np.argmax(spectrum)])


def _onsets(x: np.ndarray, threshold: float = 0.1) -> int:
    """Events counted as rising edges of the rectified signal smoothed over 5 ms, merging edges < 30 ms apart."""
    envelope = np.convolve(np.abs(x), np.ones(80) / 80, mode="same")
    above = envelope > threshold * envelope.max()
    edges = np.flatnonzero(above[1:] & ~above[:-1])
    return int(1 + np.sum(np.diff(edges) > 0.03 * SAMPLE_RATE)) if len(edges) else 0


def _spectral_slope(x: np.ndarray) -> float:
    """Slope of log power against log frequency between 50 Hz and 4 kHz (0 white, -1 pink, -2 brown)."""
    power = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)
    band = (f > 50) & (f < 4000)
    return float(np.polyfit(np.log(f[band]), np.log(power[band] + 1e-20), 1)[0])


def _f0(x: np.ndarray, top_hz: int = 400) -> float:
    """Median pitch of the voiced 40-ms frames by autocorrelation (60..top_hz Hz)."""
    n, lo, hi = int(0.04 * SAMPLE_RATE), SAMPLE_RATE // top_hz, SAMPLE_RATE // 60
    pitches = []
    for start in range(0, len(x) - n, n):
        frame = x[start:start + n] - x[start:start + n].mean()
        if np.sqrt(np.mean(frame ** 2)) < 0.3 * np.sqrt(np.mean(x ** 2)):
            continue
        ac = np.correlate(frame, frame, "full")[n - 1:]
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.3 * ac[0]:
            pitches.append(SAMPLE_RATE / lag)
    return float(np.median(pitches))


def _draw(seed: int, split: str = "train", languages=tasks.LANGUAGES) -> tasks.Draw:
    return tasks.Draw(np.random.default_rng(seed), random.Random(seed), split, tuple(languages))


# -- labels by measurement ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("label", ["sine tone", "square wave", "sawtooth wave"])
def test_periodic_waves_have_the_drawn_fundamental(label):
    for seed in range(5):
        audio, params = sounds.render_sound(label, np.random.default_rng(seed))
        assert MIN <= len(audio) / SAMPLE_RATE <= MAX
        assert abs(_dominant_hz(audio) - params["freq"]) < 2.0, (label, params)
        assert np.abs(audio).max() == pytest.approx(sounds.PEAK, rel=1e-3)


MIN, MAX = sounds.MIN_SECONDS, sounds.MAX_SECONDS + 1e-3


@pytest.mark.parametrize("label,slope", [("white noise", 0.0), ("pink noise", -1.0), ("brown noise", -2.0)])
def test_noise_colour_by_spectral_slope(label, slope):
    audio, _ = sounds.render_sound(label, np.random.default_rng(3))
    assert _spectral_slope(audio) == pytest.approx(slope, abs=0.2)


@pytest.mark.parametrize("label,rising", [("rising sweep", True), ("falling sweep", False)])
def test_sweep_direction(label, rising):
    for seed in range(4):
        audio, _ = sounds.render_sound(label, np.random.default_rng(seed))
        quarter = len(audio) // 4
        start, end = _dominant_hz(audio[:quarter]), _dominant_hz(audio[-quarter:])
        assert (end > 1.5 * start) if rising else (start > 1.5 * end)


def test_click_train_and_beep_sequence_counts():
    for seed in range(6):
        rng = np.random.default_rng(seed)
        audio, params = sounds.render_sound("click train", rng)
        assert _onsets(audio) == params["count"]
        audio, params = sounds.render_sound("beep sequence", rng)
        assert _onsets(audio) == params["count"]
        assert abs(_dominant_hz(audio) - params["freq"]) < 10


def test_chord_has_three_partials_and_siren_wobbles():
    audio, params = sounds.render_sound("chord", np.random.default_rng(0))
    spectrum = np.abs(np.fft.rfft(audio))
    f = np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE)
    for freq in params["freqs"]:
        near = (f > freq - 3) & (f < freq + 3)
        assert spectrum[near].max() > 0.2 * spectrum.max()
    audio, p = sounds.render_sound("siren", np.random.default_rng(1))
    frame = SAMPLE_RATE // 20
    tracked = [_dominant_hz(audio[i:i + frame]) for i in range(0, len(audio) - frame, frame)]
    assert min(tracked) < p["centre"] - 0.5 * p["depth"] and max(tracked) > p["centre"] + 0.5 * p["depth"]


def test_question_families_answers_match_the_audio():
    for seed in range(12):
        item = tasks.make_count(_draw(seed))
        assert _onsets(item.audio) == int(item.answer), item.fields
        item = tasks.make_pitch(_draw(seed))
        assert (_dominant_hz(item.audio) > 1000) == (item.answer == "high")
        item = tasks.make_loudness(_draw(seed))
        half = len(item.audio) // 2
        first, second = (np.sqrt(np.mean(item.audio[s] ** 2)) for s in (slice(0, half), slice(half, None)))
        assert (first > second) == (item.answer == "first")
        assert 20 * np.log10(max(first, second) / min(first, second)) > tasks.LOUDNESS_DB[0] - 1
        item = tasks.make_order(_draw(seed))
        a, b = item.fields["params"]["seconds"]
        assert len(item.audio) / SAMPLE_RATE == pytest.approx(a + b + tasks.GAP_SECONDS, abs=1e-3)
        assert item.answer in item.fields["question"]


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


@needs_engines
def test_speaker_sex_by_measured_pitch_and_style_by_duration():
    male = [_f0(tasks.make_gender(_draw(s, languages=("en",))).audio) for s in range(40)
            if tasks.make_gender(_draw(s, languages=("en",))).answer == "male"]
    female = [_f0(tasks.make_gender(_draw(s, languages=("en",))).audio) for s in range(40)
              if tasks.make_gender(_draw(s, languages=("en",))).answer == "female"]
    assert male and female and np.median(male) < np.median(female)
    sentence = "the small dog is near the park"
    fast, slow = (speech.espeak(sentence, speech.Voice("espeak", "en", "male", "m1", rate=speech.RATE_WPM[s]))
                  for s in ("fast", "slow"))
    assert len(slow) > 1.8 * len(fast)


@needs_engines
def test_held_out_voices_and_sentences():
    train = {tasks.make_asr(_draw(s, "train")).voice for s in range(30)}
    test_items = [tasks.make_asr(_draw(s, "test")) for s in range(12)]
    assert not train & {i.voice for i in test_items}
    assert not any(v.startswith("flite:") for v in train) and any(v.startswith("festival:") for v in train)
    assert {"espeak", "flite"} == {i.voice.split(":")[0] for i in test_items}  # the held-out engine is heard
    assert all(text.sentence_split(i.answer) == "test" for i in test_items)


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


# -- the corpus ---------------------------------------------------------------------------------------------------
SMALL = dict(clips=10 * len(TASKS), seed=7)  # one test clip of each family


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "a"
    generate(resolve(None, None, **SMALL), out, workers=2)
    return out


@needs_engines
def test_same_seed_same_bytes_other_seed_differs(corpus_dir, tmp_path):
    generate(resolve(None, None, **SMALL), tmp_path / "b", workers=1)
    assert _files(corpus_dir) == _files(tmp_path / "b")
    generate(resolve(None, None, clips=140, seed=8), tmp_path / "c", workers=1)
    other = _files(tmp_path / "c")
    assert other["train/pretrain.jsonl"] != _files(corpus_dir)["train/pretrain.jsonl"]
    assert other["train/audio/0000000.flac"] != _files(corpus_dir)["train/audio/0000000.flac"]


@needs_engines
def test_manifests_are_read_by_the_trainer_and_the_evaluator(corpus_dir):
    info = json.loads((corpus_dir / "dataset_info.json").read_text())
    assert info["splits"]["train"]["clips"] + info["splits"]["test"]["clips"] == SMALL["clips"]
    assert set(info["splits"]["train"]["tasks"]) == set(TASKS)
    for split in ("train", "test"):
        folder = corpus_dir / split
        kinds = {"pretrain": TaskRow, "sft": Chat, "dpo": Preference}
        for name, cls in kinds.items():
            lines = (folder / f"{name}.jsonl").read_text().splitlines()
            multi_audio = info["splits"][split]["tasks"]["compare"]["clips"]  # no task row: it holds one audio
            decoys = info["splits"][split]["tasks"]["voice_chat"]["clips"]  # a second SFT row on the same audio
            assert len(lines) == info["splits"][split]["clips"] + {"pretrain": -multi_audio, "sft": decoys}.get(name, 0)
            for line in lines:
                sample = parse_row(json.loads(line), folder)
                assert isinstance(sample, cls)
                if cls is Preference:
                    assert sample.chosen != sample.rejected
        text = folder / "text.jsonl"  # the arithmetic facts, as text, for the train split only
        assert (split == "train") == text.exists()
        if text.exists():
            assert all(isinstance(parse_row(json.loads(line), folder), Chat) for line in text.read_text().splitlines())
        for line in (folder / "pretrain.jsonl").read_text().splitlines():
            row = json.loads(line)
            audio, rate = sf.read(folder / row["audio"])
            assert rate == SAMPLE_RATE and audio.ndim == 1 and len(audio) >= 0.25 * SAMPLE_RATE
    family = lambda source: source.removesuffix("_flite").rsplit("_", 1)[0]  # noqa: E731  (flite rows apart)
    asr_files = [m for m in sorted((corpus_dir / "eval").glob("*.jsonl"))
                 if family(m.stem) in ("synth_asr", "synth_numbers", "synth_noisy_asr", "synth_open_asr")]
    items = [i for m in asr_files for i in load_manifest(get_benchmark("asr"), m)]  # the official form still reads
    assert {family(i.source) for i in items} == {"synth_asr", "synth_numbers", "synth_noisy_asr", "synth_open_asr"}
    assert all(Path(i.audio).is_file() and i.language in ("en", "zh", "yue", "fr", "it", "es", "de", "ja")
               and i.prompt.endswith(f"<|{i.language}|>") for i in items)


EVAL_KEYS = {"id", "audio", "source", "task", "kind", "prompt", "instruction", "gt", "labels", "metric", "language"}


@needs_engines
def test_every_test_item_has_an_eval_row_the_scorer_reads(corpus_dir):
    from qwen2audio.eval.datasets import LOADERS

    records = {json.loads(p.read_text())["id"]: json.loads(p.read_text())
               for p in (corpus_dir / "test" / "audio").glob("*.json")}
    rows = [json.loads(line) for m in sorted((corpus_dir / "eval").glob("*.jsonl"))
            for line in m.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(records) and {r["task"] for r in rows} == set(TASKS)
    metrics = {"asr": "wer", "numbers": None, "s2tt": "bleu", "caption": "bleu", "sound": "accuracy",
               "lid": "accuracy", "voice_chat": "exact", "facts": "exact", "compare": "accuracy"}
    for row in rows:
        record = records[row["id"]]
        assert EVAL_KEYS <= row.keys() and row["gt"] == record["answer"] and row["labels"] == record["labels"]
        assert metrics.get(row["task"]) in (None, row["metric"]), row
        assert row["prompt"].count("<|AUDIO|>") == len(row.get("audios", [row["audio"]]))
        assert (corpus_dir / "eval" / row["audio"]).is_file()
        if row["task"] == "s2tt":
            assert row["source"] == f"synth_s2tt_{row['target']}" and row["language"] == "en"
            assert row["prompt"].endswith(f"into {tasks.language_name(row['target'])}: <|en|>")
        if row["task"] in ("dialog", "compare"):
            user_turns = [m for m in row["messages"] if m["role"] == "user"]
            assert row["messages"][-1]["role"] == "user" and len(user_turns) == (2 if row["task"] == "dialog" else 1)
            assert user_turns[0]["content"].count("<audio>") == len(row.get("audios", [row["audio"]]))
        if row["task"] == "voice_chat":
            assert row["instruction"] == "" and row["prompt"] == "<|audio_bos|><|AUDIO|><|audio_eos|>"
    items = list(LOADERS["synth"](get_benchmark("synth"), corpus_dir / "eval"))
    assert len(items) == len(rows) and all(len(i.audios) in (0, 2) for i in items)


def test_bad_arguments_name_the_value_and_the_choices(monkeypatch):
    with pytest.raises(ValueError, match="unknown task 'bark'; known: sound"):
        resolve(["bark"], None, clips=3)
    with pytest.raises(ValueError, match="unknown language 'xx'; known: en"):
        resolve(None, ["xx"], clips=3)
    with pytest.raises(ValueError, match="speaks only en"):
        resolve(["asr"], ["fr"], clips=3)
    with pytest.raises(ValueError, match="either clips or hours"):
        resolve(None, None)
    if shutil.which("festival"):
        monkeypatch.setattr(speech, "FESTIVAL_VOICE_DIR", Path("/nonexistent"))
        with pytest.raises(speech.EngineError, match="festival voice kal_diphone is not installed: apt-get install "
                                                     "festvox-kallpc16k"):
            resolve(["asr"], None, clips=3)
    monkeypatch.setattr(speech.shutil, "which", lambda name: None)
    with pytest.raises(speech.EngineError, match="espeak-ng is not installed"):
        resolve(["lid"], None, clips=3)
    assert resolve(["sound", "count"], None, hours=0.01).clips == 21  # 36 s / 1.75 s, no engine needed


def test_interrupted_run_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    config = resolve(["sound", "count", "pitch", "order", "loudness"], None, clips=20, seed=3)
    generate(config, tmp_path / "whole")
    made = []
    real = corpus.make_item

    def dies_after_five(*args):
        if len(made) == 5:
            raise KeyboardInterrupt
        made.append(args)
        return real(*args)

    monkeypatch.setattr(corpus, "make_item", dies_after_five)
    with pytest.raises(KeyboardInterrupt):
        generate(config, tmp_path / "cut")
    assert not (tmp_path / "cut" / "dataset_info.json").exists()
    (tmp_path / "cut" / "train" / "audio" / ".0000009.flac.abcd.tmp").write_bytes(b"half")  # a killed write
    monkeypatch.setattr(corpus, "make_item", real)
    assert len(corpus.pending_items(config, tmp_path / "cut")) == 15
    generate(config, tmp_path / "cut")
    assert _files(tmp_path / "cut") == _files(tmp_path / "whole")
    with pytest.raises(ValueError, match="other settings \\(clips\\)"):
        generate(resolve(["sound", "count", "pitch", "order", "loudness"], None, clips=21, seed=3), tmp_path / "cut")


def test_flac_is_lossless_16_bit():
    audio, _ = sounds.render_sound("sine tone", np.random.default_rng(0))
    decoded, rate = sf.read(io.BytesIO(corpus.flac_bytes(audio)), dtype="float32")
    assert rate == SAMPLE_RATE and np.abs(decoded - audio).max() <= 1 / 32768


def test_cli_gives_one_line_errors_and_writes_a_corpus(tmp_path, monkeypatch, capsys):
    from qwen2audio.cli import main

    assert main(["synth", "--out", str(tmp_path / "x"), "--clips", "3", "--seed", "0", "--tasks", "bark"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"qwen2audio synth: error: unknown task 'bark'; known: {', '.join(TASKS)}"]
    monkeypatch.setattr(speech.shutil, "which", lambda name: None)
    assert main(["synth", "--out", str(tmp_path / "x"), "--clips", "3", "--seed", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "espeak-ng is not installed" in err
    out = tmp_path / "y"
    assert main(["synth", "--out", str(out), "--clips", "4", "--seed", "0", "--tasks", "sound", "pitch",
                 "--workers", "1", "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert json.loads((out / "dataset_info.json").read_text())["splits"]["train"]["clips"] == 4


def test_chinese_numbers_and_held_out_numbers():
    cases = {0: "零", 10: "十", 15: "十五", 101: "一百零一", 110: "一百一十", 1004: "一千零四", 1040: "一千零四十",
             9999: "九千九百九十九"}
    assert {n: text.chinese_number(n) for n in cases} == cases
    rng = random.Random(1)
    train = {text.number_item(rng, "fr", "train") for _ in range(200)}
    test = {text.number_item(rng, "fr", "test") for _ in range(50)}
    assert not train & test
    assert text.number_words(21, "de") == "einundzwanzig" and text.number_words(3, "ja") == "さん"


def test_mixing_snr_and_telephone_band():
    rng = np.random.default_rng(0)
    speechlike = sounds.tone(440.0, 1.0).astype(np.float32) * 0.3
    noise = rng.standard_normal(SAMPLE_RATE * 2)
    mixed = effects.mix_at_snr(speechlike, noise, 6.0, offset=SAMPLE_RATE // 2)
    residual = mixed[:SAMPLE_RATE // 2]  # noise alone before the signal starts
    assert 20 * np.log10(effects.rms(speechlike) / effects.rms(residual)) == pytest.approx(6.0, abs=0.3)
    if shutil.which("sox"):
        phone = effects.apply_chain(noise.astype(np.float32) * 0.1, "telephone")
        power = np.abs(np.fft.rfft(phone)) ** 2
        f = np.fft.rfftfreq(len(phone), 1 / SAMPLE_RATE)
        inside, outside = power[(f > 500) & (f < 3000)].mean(), power[(f < 150) | (f > 4500)].mean()
        assert inside > 100 * outside
        assert np.array_equal(phone, effects.apply_chain(noise.astype(np.float32) * 0.1, "telephone"))


@needs_engines
def test_captions_name_what_was_rendered():
    for seed in range(8):
        item = tasks.make_caption(_draw(seed))
        language = tasks.language_name(item.fields["language"])
        assert f"speaks {language}" in item.answer
        events = [e for e in tasks.ORDER_EVENTS if f"a {e}" in item.answer]
        assert len(events) <= 1
        if events:  # the event adds its own length plus the gap
            assert len(item.audio) / SAMPLE_RATE > sounds.MIN_SECONDS + tasks.GAP_SECONDS


@needs_engines
def test_voice_chat_questions_are_spoken_and_answered_right(corpus_dir):
    restated = re.compile(r"^The answer to (\w+) (plus|minus|times) (\w+) is (\d+)\.$")

    def value(a, name, b):
        return tasks.OPERATIONS[name](tasks.SMALL_NUMBERS.index(a), tasks.SMALL_NUMBERS.index(b))

    for seed in range(6):
        item = tasks.make_voice_chat(_draw(seed))
        a, name, b = item.fields["spoken"].split()[2:]
        assert item.answer == f"The answer to {a} {name} {b} is {value(a, name, b)}." and item.voice_chat
        assert item.answer not in item.wrong and item.pretrain == ("asr", item.fields["spoken"])
        # trained on the restatement and the full stop, not on the result (the facts give it, as text)
        assert "".join(t for t, _ in item.answer_parts) == item.answer
        assert [trained for _, trained in item.answer_parts] == [True, False, True]
        assert item.answer_parts[1][0] == f" {value(a, name, b)}"
        # the decoy restates another question (out of the loss) and gives its result (in it)
        ((decoy_question, in_loss), (decoy_result, result_in_loss)), = item.decoys
        x, op, y, r = restated.match(decoy_question + decoy_result).groups()
        assert (x, op, y) != (a, name, b) and int(r) == value(x, op, y) and not in_loss and result_in_loss
    rows = [json.loads(line) for line in (corpus_dir / "train" / "sft.jsonl").read_text().splitlines()]
    voice = [r for r in rows if r["messages"][0]["content"] == "<audio>"]  # audio alone: the question is spoken
    arithmetic = [r for r in voice if isinstance(r["messages"][1]["content"], list)]
    assert arithmetic and len(arithmetic) < len(voice)  # and the world's facts
    assert {tuple(p.get("loss", True) for p in r["messages"][1]["content"]) for r in arithmetic} == \
        {(True, False, True), (False, True)}  # the answers and their decoys
    pretrain = [json.loads(line) for line in (corpus_dir / "train" / "pretrain.jsonl").read_text().splitlines()]
    assert all(r["task"] == "asr" and r["text"] == r["spoken"] for r in pretrain if r["source"] == "synth_voice_chat")
    # the facts as text: every question of both splits, FACT_PASSES times each, several to an answer
    text = [json.loads(line)["messages"] for line in (corpus_dir / "train" / "text.jsonl").read_text().splitlines()]
    facts = Counter(f for m in text for f in re.findall(r"The answer to .+? is \d+\.", m[1]["content"]))
    assert len(facts) == len(tasks.arithmetic_facts()) == 741 and set(facts.values()) == {tasks.FACT_PASSES}
    assert all(int(restated.match(f).group(4)) == value(*restated.match(f).groups()[:3]) for f in facts)
    assert {m[0]["content"] for m in text} == set(tasks.FACT_PROMPTS) and len(text) < len(facts) * tasks.FACT_PASSES / 3


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
    item = tasks.make_open_asr(_draw(0, "test"))
    assert item.answer in fortune_sentences(item.fields["language"])["test"]


# -- part two: weights, festival, translation, facts, conversations -------------------------------------------------
def test_task_weights_give_shares_in_a_fixed_schedule():
    assert corpus.parse_tasks(["asr:6,lid", "sound:2"]) == {"asr": 6, "lid": 1, "sound": 2}
    config = resolve(["sound:3", "pitch"], None, clips=40, seed=0, test_fraction=0.0)
    assert config.schedule == ("sound", "sound", "pitch", "sound")  # spread out, fixed
    assert Counter(corpus.item_task(config, i) for i in range(40)) == {"sound": 30, "pitch": 10}
    plain = resolve(["sound", "pitch"], None, clips=4)
    assert [corpus.item_task(plain, i) for i in range(4)] == ["sound", "pitch", "sound", "pitch"]
    assert resolve(["sound:3", "count"], None, hours=0.01).clips == math.ceil(36 / ((3 * 2.0 + 1.5) / 4))
    for bad, message in (("asr:x", "bad task weight 'asr:x'"), ("asr:0", "bad task weight 'asr:0'"),
                         ("asr:", "bad task weight 'asr:'"), ("bark:2", "unknown task 'bark'"),
                         ("asr,asr:2", "task 'asr' is given twice")):
        with pytest.raises(ValueError, match=message):
            resolve([bad], None, clips=3)


def test_cli_takes_weighted_tasks(tmp_path, capsys):
    from qwen2audio.cli import main

    assert main(["synth", "--out", str(tmp_path / "x"), "--clips", "3", "--seed", "0", "--tasks", "sound:x"]) == 1
    assert capsys.readouterr().err.strip().count("\n") == 0
    out = tmp_path / "w"
    assert main(["synth", "--out", str(out), "--clips", "8", "--seed", "0", "--tasks", "sound:3,pitch",
                 "--test-fraction", "0", "--workers", "1", "--no-progress"]) == 0
    info = json.loads((out / "dataset_info.json").read_text())
    assert {t: v["clips"] for t, v in info["splits"]["train"]["tasks"].items()} == {"sound": 6, "pitch": 2}
    assert info["settings"]["weights"] == [3, 1]


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
    assert _f0(first["cmu_us_slt_arctic_hts"]) > _f0(first["kal_diphone"])  # the female voice is higher


def test_speed_and_gain_change_length_and_level():
    tone = sounds.finish(sounds.tone(440.0, 1.0), 0.3)
    fast = effects.speed_and_gain(tone, 1.08, 0.0)
    assert len(fast) == pytest.approx(len(tone) / 1.08, abs=2)
    assert _dominant_hz(fast) == pytest.approx(440 * 1.08, abs=3)
    quiet = effects.speed_and_gain(tone, 1.0, -6.0)
    assert 20 * np.log10(effects.rms(tone) / effects.rms(quiet)) == pytest.approx(6.0, abs=0.01)
    assert np.abs(effects.speed_and_gain(tone, 1.0, 20.0)).max() <= effects.PEAK_LIMIT + 1e-6


@needs_engines
def test_s2tt_items_speak_the_source_and_answer_the_target():
    seen = set()
    for seed in range(9):
        item = tasks.make_s2tt(_draw(seed))
        target = item.fields["target_language"]
        seen.add(target)
        assert item.kind == "s2tt" and item.fields["source_language"] == "en" and target in translation.TARGETS
        # the same draw gives the same pair: the answer is the target reference of the spoken English sentence
        pair = translation.translation_pair(_draw(seed).py, "train")
        assert item.fields["source_text"] == pair.english and item.answer == pair.references[target]
        assert pair.english in item.wrong and item.answer not in item.wrong
        words = len(pair.english.split())
        assert 0.15 * words < len(item.audio) / SAMPLE_RATE < 1.0 * words + 1
    assert seen == set(translation.TARGETS)


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
        item = tasks.make_facts(_draw(seed))
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


@needs_engines
def test_multi_turn_answers_match_the_recording():
    for seed in range(12):
        item = tasks.make_dialog(_draw(seed))
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
        item = tasks.make_compare(_draw(seed))
        a, (b,) = item.audio, item.extra_audios
        what = item.fields["compare"]
        assert item.answer in item.labels and item.fields["question"] in item.instruction
        if what == "louder":
            assert (effects.rms(a) > effects.rms(b)) == (item.answer == "first")
        elif what == "siren":
            siren = a if item.answer == "first" else b
            frame = SAMPLE_RATE // 20
            tracked = [_dominant_hz(siren[i:i + frame]) for i in range(0, len(siren) - frame, frame)]
            assert max(tracked) - min(tracked) > 200  # the wail sweeps
        elif what == "same_language" and "same language" in item.instruction:
            same = item.fields["languages"][0] == item.fields["languages"][1]
            assert item.answer == ("yes" if same else "no")
        else:
            named = item.instruction.split(" is in ")[1].split(",")[0]
            assert tasks.language_name(item.fields["languages"][("first", "second").index(item.answer)]) == named


# -- part B: ASR beyond English, names and places, age -------------------------------------------------------------
OLD_FAMILIES = ("sound", "count", "pitch", "order", "loudness", "asr", "lid", "gender", "numbers", "open_asr",
                "noisy_asr", "caption", "voice_chat", "style", "s2tt", "facts", "dialog", "compare")
PART_B_ASR = {"names": None, "cmn_asr": "cmn", "yue_asr": "yue", "fr_asr": "fr", "ja_asr": "ja"}
HAN = "\u4e00-\u9fff"
KANA = "\u3040-\u30ff"
# words of written Cantonese that standard Mandarin does not use (it writes 在 了 的 不 们 他 来 那 这 是 些 东西 昨天 明天
# 喜欢 喝 家里 现在 回 礼拜 今天 一起)
CANTONESE_WORDS = ("喺", "咗", "嘅", "唔", "哋", "佢", "嚟", "嗰", "呢", "係", "啲", "嘢", "琴日", "聽日", "尋晚", "鍾意",
                   "飲", "屋企", "而家", "返", "禮拜", "今日", "一齊")
EUROPEAN = ("en", "fr", "it", "es", "de")


def _phonemes(text: str, voice: str) -> list[str]:
    """espeak-ng's phonemes of each line of `text`; a line it reads in another language holds a "(en)" switch."""
    run = __import__("subprocess").run([speech.ESPEAK, "-v", voice, "-q", "-x"], input=text, capture_output=True,
                                       text=True, check=True)
    return run.stdout.splitlines()


def _own_language_margin(sentence: str, language: str) -> float:
    """How much more frequent (wordfreq zipf, mean over the words) the words are in `language` than in the most
    likely other European language of the report: > 0 means the text reads as `language`."""
    wordfreq = pytest.importorskip("wordfreq")
    words = [w.lower() for w in re.findall(r"[^\W\d_]+", sentence)]
    mean = {lang: np.mean([wordfreq.zipf_frequency(w, lang) for w in words]) for lang in EUROPEAN}
    return mean[language] - max(v for lang, v in mean.items() if lang != language)


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
                assert _own_language_margin(sentence.text, language) > 0.3, sentence
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


def test_part_b_text_is_in_its_language():
    opencc = pytest.importorskip("opencc")
    pytest.importorskip("faker")
    rng = random.Random(1)
    t2s = opencc.OpenCC("t2s")
    french = [sentences.french_sentence(rng, "train") for _ in range(200)]
    assert {s.template for s in french} >= {"translation", *sentences.FRENCH_TEMPLATES}  # grammar side and templates
    for s in french:
        assert _own_language_margin(s.text, "fr") > 1.0 and s.text[0].isupper() and s.text.endswith("."), s
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


@needs_engines
def test_espeak_reads_part_b_scripts_in_their_own_language():
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


@needs_engines
def test_part_b_asr_items_speak_their_sentence():
    for family, language in PART_B_ASR.items():
        for seed in range(6):
            draw = _draw(seed, "test" if seed % 2 else "train", (language,) if language else tasks.LANGUAGES)
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
    assert TASKS["cmn_asr"].make(_draw(1, "test", ("cmn",))).answer in fortunes.mandarin_sentences()["test"]


@needs_engines
def test_part_b_eval_rows_name_their_metric(corpus_dir):
    rows = [json.loads(line) for m in sorted((corpus_dir / "eval").glob("*.jsonl"))
            for line in m.read_text().splitlines()]
    by_task = {r["task"]: r for r in rows}
    expected = {"cmn_asr": ("synth_cmn_asr_zh", "cer"), "yue_asr": ("synth_yue_asr_yue", "cer"),
                "ja_asr": ("synth_ja_asr_ja", "cer"), "fr_asr": ("synth_fr_asr_fr", "wer"),
                "age": ("synth_age", "accuracy")}
    for task, (source, metric) in expected.items():
        assert (by_task[task]["source"], by_task[task]["metric"]) == (source, metric)
    names_row = by_task["names"]
    assert names_row["metric"] == ("cer" if names_row["language"] in corpus.CHARACTER_LANGUAGES else "wer")
    assert names_row["source"] == f"synth_names_{names_row['language']}"
    assert by_task["age"]["labels"] == list(tasks.AGES) and by_task["age"]["gt"] in tasks.AGES


def test_tremor_wobbles_pitch_and_level_by_the_drawn_depths():
    tone = sounds.finish(sounds.tone(200.0, 2.0), 0.5)
    shaken = effects.tremor(tone, 5.0, 0.04, 0.4)
    frame = SAMPLE_RATE // 20  # 50 ms: four tremor cycles a second are resolved
    spans = range(SAMPLE_RATE // 5, len(tone) - frame - SAMPLE_RATE // 5, frame // 5)
    freqs = [_dominant_hz(np.pad(shaken[i:i + frame], (0, 15 * frame))) for i in spans]  # zero-padded: 1.25 Hz bins
    assert max(freqs) / min(freqs) == pytest.approx(1.04 / 0.96, abs=0.03)
    level = np.array([effects.rms(shaken[i:i + frame // 2]) for i in spans])
    assert 1 - level.min() / level.max() == pytest.approx(0.4, abs=0.06)
    cycle = np.abs(np.fft.rfft(level - level.mean()))
    assert np.fft.rfftfreq(len(level), frame / 5 / SAMPLE_RATE)[np.argmax(cycle)] == pytest.approx(5.0, abs=0.4)


@needs_engines
def test_age_labels_by_measured_pitch_and_speaking_rate():
    measured: dict[str, list[tuple[float, float]]] = {age: [] for age in tasks.AGES}
    for seed in range(36):
        item = tasks.make_age(_draw(seed, "test" if seed % 4 == 0 else "train", ("en",)))
        assert item.kind == "age" and item.labels == tasks.AGES and item.answer in tasks.AGES
        rate = len(item.fields["params"]["text"]) / (len(item.audio) / SAMPLE_RATE)  # characters per second
        measured[item.answer].append((_f0(item.audio, top_hz=600), rate))
    f0 = {age: [m[0] for m in v] for age, v in measured.items()}
    rate = {age: np.median([m[1] for m in v]) for age, v in measured.items()}
    assert all(len(v) >= 6 for v in f0.values())
    assert min(f0["child"]) > max(f0["adult"]) and min(f0["child"]) > 250  # a child's pitch, above every adult's
    assert np.median(f0["elderly"]) < np.median(f0["child"]) / 2
    assert rate["elderly"] < 0.88 * rate["adult"]  # old voices speak slower
    voices = {tasks.make_age(_draw(s, "test", ("en",))).voice for s in range(8)}
    assert all(v.rsplit("+", 1)[1] in speech.TEST_VARIANTS for v in voices)  # held-out voices in test


def test_part_b_bad_arguments_are_one_clear_error(monkeypatch):
    with pytest.raises(ValueError, match="task 'ja_asr' speaks only ja"):
        resolve(["ja_asr"], ["fr"], clips=3)
    with pytest.raises(ValueError, match="task 'lid' tells languages apart: give at least two --languages"):
        resolve(["lid", "asr"], ["en"], clips=3)
    with pytest.raises(ValueError, match="no Faker locale for language 'xx'"):
        names._faker("xx")
    monkeypatch.setattr(fortunes, "DPKG_LISTS", Path("/nonexistent"))
    fortunes.mandarin_sentences.cache_clear()
    try:
        with pytest.raises(speech.EngineError, match="apt-get install fortunes-zh"):
            resolve(["cmn_asr"], None, clips=3)
    finally:
        monkeypatch.undo()
        fortunes.mandarin_sentences.cache_clear()
    real_find_spec = speech.importlib.util.find_spec
    monkeypatch.setattr(speech.importlib.util, "find_spec", lambda m: None if m == "faker" else real_find_spec(m))
    with pytest.raises(speech.EngineError, match="the Python package faker is not installed"):
        resolve(["names"], None, clips=3)


@needs_engines
def test_new_families_leave_the_old_families_bytes_alone(tmp_path, monkeypatch):
    """Registering part B changes nothing an older family renders: the same corpus with the registry cut back to the
    old families has the same bytes, and the old families' voices keep their names and espeak-ng voices."""
    config = resolve(list(OLD_FAMILIES), ["en", "cmn", "fr"], clips=24, seed=11)
    generate(config, tmp_path / "all", workers=1)
    monkeypatch.setattr(corpus, "TASKS", {name: TASKS[name] for name in OLD_FAMILIES})
    generate(config, tmp_path / "old", workers=1)
    assert _files(tmp_path / "all") == _files(tmp_path / "old")
    voice = speech.Voice("espeak", "cmn", "male", "m1")
    assert voice.name == "espeak:cmn+m1" and voice.espeak_name == "cmn"  # the old families keep espeak-ng's cmn
