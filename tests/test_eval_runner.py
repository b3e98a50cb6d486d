"""The runner: local model predictions, resumable JSONL, per-source tables; killed half way (SIGKILL) and rerun it
gives the uninterrupted run's table without predicting finished items again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from qwen2audio.audio import SAMPLE_RATE
from qwen2audio.eval.results import read_predictions
from qwen2audio.eval.runner import LocalPredictor, evaluate

N_ITEMS = 6
MAX_NEW = 4


@pytest.fixture(scope="module")
def vocalsound_tree(tmp_path_factory) -> Path:
    """Six short clips in VocalSound's layout (tones: the tiny random model's answers are gibberish anyway)."""
    root = tmp_path_factory.mktemp("vocalsound")
    (root / "audio_16k").mkdir()
    labels = ["cough", "sigh", "sniff", "sneeze", "laughter", "throatclearing"]
    for n, label in enumerate(labels[:N_ITEMS]):
        t = np.arange(int(SAMPLE_RATE * (0.3 + 0.1 * n))) / SAMPLE_RATE
        sf.write(root / "audio_16k" / f"f{n:04d}_0_{label}.wav", 0.3 * np.sin(2 * np.pi * (200 + 50 * n) * t),
                 SAMPLE_RATE)
    return root


class Counting:
    def __init__(self, predictor):
        self.predictor, self.items = predictor, 0

    def __call__(self, items):
        self.items += len(items)
        return self.predictor(items)


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    import qwen2audio

    return qwen2audio.load(tiny_checkpoint)


def test_evaluate_writes_tables_and_skips_done(tmp_path, vocalsound_tree, model):
    predictor = Counting(LocalPredictor(model, max_new_tokens=MAX_NEW))
    results = evaluate("vocalsound", vocalsound_tree, predictor, tmp_path, batch_size=4, progress=False)
    assert predictor.items == N_ITEMS and results.computed == N_ITEMS
    rows = read_predictions(tmp_path / "vocalsound.predictions.jsonl")
    assert len(rows) == N_ITEMS and all(isinstance(r["prediction"], str) for r in rows.values())
    score = results.scores["vocalsound"]
    assert score.count == N_ITEMS and 0 <= score.value <= 1
    assert "0.9392" in results.markdown  # the published number beside ours
    saved = json.loads((tmp_path / "vocalsound.results.json").read_text())
    assert saved["scores"]["vocalsound"]["outside_label_set"] == score.details["outside_label_set"]
    again = Counting(LocalPredictor(model, max_new_tokens=MAX_NEW))
    assert evaluate("vocalsound", vocalsound_tree, again, tmp_path, progress=False).markdown == results.markdown
    assert again.items == 0
    # a torn last line (a crash mid-write) is ignored and its item predicted again
    path = tmp_path / "vocalsound.predictions.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][:10])
    torn = Counting(LocalPredictor(model, max_new_tokens=MAX_NEW))
    assert evaluate("vocalsound", vocalsound_tree, torn, tmp_path, progress=False).markdown == results.markdown
    assert torn.items == 1 and len(read_predictions(path)) == N_ITEMS


KILLED_RUN = """
import sys, time
import qwen2audio
from qwen2audio.eval.runner import LocalPredictor, evaluate

checkpoint, data, out, stop_after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
inner = LocalPredictor(qwen2audio.load(checkpoint), max_new_tokens={max_new})
done = 0
def predictor(items):
    global done
    if done >= stop_after:
        time.sleep(600)  # a long evaluation: the test kills it here
    done += len(items)
    return inner(items)
evaluate("vocalsound", data, predictor, out, batch_size=1, progress=False)
"""


def test_killed_half_way_then_rerun_gives_the_same_table(tmp_path, vocalsound_tree, tiny_checkpoint, model):
    uninterrupted = evaluate("vocalsound", vocalsound_tree, LocalPredictor(model, max_new_tokens=MAX_NEW),
                             tmp_path / "full", batch_size=1, progress=False)
    script = tmp_path / "killed_run.py"
    script.write_text(textwrap.dedent(KILLED_RUN.format(max_new=MAX_NEW)))
    out = tmp_path / "killed"
    half = N_ITEMS // 2
    process = subprocess.Popen([sys.executable, str(script), str(tiny_checkpoint), str(vocalsound_tree), str(out),
                                str(half)], env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    predictions = out / "vocalsound.predictions.jsonl"
    deadline = time.monotonic() + 90
    while len(read_predictions(predictions)) < half:
        assert process.poll() is None, "the run ended before it was killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(read_predictions(predictions)) == half
    assert not (out / "vocalsound.results.json").exists()
    rerun = Counting(LocalPredictor(model, max_new_tokens=MAX_NEW))
    resumed = evaluate("vocalsound", vocalsound_tree, rerun, out, batch_size=1, progress=False)
    assert rerun.items == N_ITEMS - half  # finished items are not predicted again
    assert resumed.markdown == uninterrupted.markdown
    assert resumed.as_dict() == uninterrupted.as_dict()
    assert read_predictions(predictions) == read_predictions(tmp_path / "full" / "vocalsound.predictions.jsonl")
