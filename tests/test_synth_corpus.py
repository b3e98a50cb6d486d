"""The corpus (synth/corpus.py): determinism, manifests and eval rows the trainer and the evaluator read, task
weights, bad arguments, and resuming an interrupted run."""

from __future__ import annotations

import io
import json
import math
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from test_synth_speech import needs_engines
from test_synth_tasks import seeded_draw
from qwen2audio.audio import SAMPLE_RATE
from qwen2audio.data.rows import Chat, Preference, TaskRow, parse_row
from qwen2audio.eval.datasets import get_benchmark, load_manifest
from qwen2audio.synth import TASKS, corpus, fortunes, generate, names, resolve, sounds, speech, tasks


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


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


@needs_engines
def test_voice_chat_questions_are_spoken_and_answered_right(corpus_dir):
    restated = re.compile(r"^The answer to (\w+) (plus|minus|times) (\w+) is (\d+)\.$")

    def value(a, name, b):
        return tasks.OPERATIONS[name](tasks.SMALL_NUMBERS.index(a), tasks.SMALL_NUMBERS.index(b))

    for seed in range(6):
        item = tasks.make_voice_chat(seeded_draw(seed))
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


CORE_FAMILIES = ("sound", "count", "pitch", "order", "loudness", "asr", "lid", "gender", "numbers", "open_asr",
                 "noisy_asr", "caption", "voice_chat", "style", "s2tt", "facts", "dialog", "compare")


@needs_engines
def test_multilingual_asr_and_age_eval_rows_name_their_metric(corpus_dir):
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


def test_language_and_dependency_errors_of_families_are_one_clear_error(monkeypatch):
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
def test_new_families_leave_the_core_families_bytes_alone(tmp_path, monkeypatch):
    """Registering more families changes nothing an existing one renders: the same corpus with the registry cut back to
    the core families has the same bytes, and their voices keep their names and espeak-ng voices."""
    config = resolve(list(CORE_FAMILIES), ["en", "cmn", "fr"], clips=24, seed=11)
    generate(config, tmp_path / "all", workers=1)
    monkeypatch.setattr(corpus, "TASKS", {name: TASKS[name] for name in CORE_FAMILIES})
    generate(config, tmp_path / "old", workers=1)
    assert _files(tmp_path / "all") == _files(tmp_path / "old")
    voice = speech.Voice("espeak", "cmn", "male", "m1")
    assert voice.name == "espeak:cmn+m1" and voice.espeak_name == "cmn"  # the core families keep espeak-ng's cmn
