"""The synthetic corpus: determinism, labels checked by independent measurement, manifests the trainer and the
evaluator read, bad arguments, and resuming an interrupted run."""

from __future__ import annotations

import io
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from qwen2audio.audio import SAMPLE_RATE
from qwen2audio.data.rows import Chat, Preference, TaskRow, parse_row
from qwen2audio.eval.datasets import get_benchmark, load_manifest
from qwen2audio.synth import TASKS, corpus, effects, generate, resolve, sounds, speech, tasks, text

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


def _f0(x: np.ndarray) -> float:
    """Median pitch of the voiced 40-ms frames by autocorrelation (60..400 Hz)."""
    n, lo, hi = int(0.04 * SAMPLE_RATE), SAMPLE_RATE // 400, SAMPLE_RATE // 60
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


def test_grammar_sentences_split_by_text():
    rng = random.Random(0)
    train = {text.english_sentence(rng, "train") for _ in range(300)}
    test = {text.english_sentence(rng, "test") for _ in range(100)}
    assert not train & test and len(test) > 50
    vocabulary = {w for words in text.WORDS.values() for phrase in words for w in phrase.split()}
    vocabulary |= {w for t in text.TEMPLATES for w in t.split() if "{" not in w}
    for sentence in train | test:
        assert all(w in vocabulary or w.rstrip("s") in vocabulary for w in sentence.split()), sentence


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
    assert not any(v.startswith("flite:") for v in train)
    assert {"espeak", "flite"} == {i.voice.split(":")[0] for i in test_items}  # the held-out engine is heard
    assert all(text.sentence_split(i.answer) == "test" for i in test_items)


# -- the corpus ---------------------------------------------------------------------------------------------------
SMALL = dict(clips=140, seed=7)  # 14 test clips: one of each family


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
            assert len(lines) == info["splits"][split]["clips"]
            for line in lines:
                sample = parse_row(json.loads(line), folder)
                assert isinstance(sample, cls)
                if cls is Preference:
                    assert sample.chosen != sample.rejected
        for line in (folder / "pretrain.jsonl").read_text().splitlines():
            row = json.loads(line)
            audio, rate = sf.read(folder / row["audio"])
            assert rate == SAMPLE_RATE and audio.ndim == 1 and len(audio) >= 0.25 * SAMPLE_RATE
    items = [i for m in sorted((corpus_dir / "eval").glob("*.jsonl")) for i in load_manifest(get_benchmark("asr"), m)]
    assert {i.source.rsplit("_", 1)[0] for i in items} == {"synth_asr", "synth_numbers", "synth_noisy_asr",
                                                            "synth_open_asr"}
    assert all(Path(i.audio).is_file() and i.language in ("en", "zh", "yue", "fr", "it", "es", "de", "ja")
               and i.prompt.endswith(f"<|{i.language}|>") for i in items)


def test_bad_arguments_name_the_value_and_the_choices(monkeypatch):
    with pytest.raises(ValueError, match="unknown task 'bark'; known: sound"):
        resolve(["bark"], None, clips=3)
    with pytest.raises(ValueError, match="unknown language 'xx'; known: en"):
        resolve(None, ["xx"], clips=3)
    with pytest.raises(ValueError, match="speaks only en"):
        resolve(["asr"], ["fr"], clips=3)
    with pytest.raises(ValueError, match="either clips or hours"):
        resolve(None, None)
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
    for seed in range(6):
        item = tasks.make_voice_chat(_draw(seed))
        what, a, name, b = item.fields["spoken"].rsplit(" ", 3)
        result = tasks.OPERATIONS[name](tasks.SMALL_NUMBERS.index(a), tasks.SMALL_NUMBERS.index(b))
        assert item.answer == f"The answer is {result}." and item.voice_chat and item.answer not in item.wrong
    rows = [json.loads(line) for line in (corpus_dir / "train" / "sft.jsonl").read_text().splitlines()]
    voice = [r for r in rows if r["messages"][0]["content"] == "<audio>"]  # audio alone: the question is spoken
    assert voice and all(r["messages"][1]["content"].startswith("The answer is ") for r in voice)


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
