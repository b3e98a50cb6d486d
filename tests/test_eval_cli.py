"""`qwen2audio eval`: a local checkpoint and an OpenAI-compatible API, one benchmark and a suite."""

from __future__ import annotations

import json

import numpy as np
import soundfile as sf

from qwen2audio.audio import SAMPLE_RATE
from qwen2audio.cli import main


def vocalsound(root):
    for n, label in enumerate(["cough", "sigh", "sniff"]):
        (root / "audio_16k").mkdir(parents=True, exist_ok=True)
        wave = 0.2 * np.sin(np.arange(3200 + 800 * n) / 3.0)
        sf.write(root / "audio_16k" / f"f{n}_0_{label}.wav", wave, SAMPLE_RATE)
    return root


def test_eval_local_model(tmp_path, tiny_checkpoint, capsys):
    data = vocalsound(tmp_path / "vs")
    out = tmp_path / "out"
    assert main(["eval", "--model", str(tiny_checkpoint), "--benchmark", "vocalsound", "--data", str(data),
                 "--limit", "2", "--max-new-tokens", "2", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| vocalsound | 2 |" in printed and "0.9392" in printed
    assert json.loads((out / "vocalsound.results.json").read_text())["scores"]["vocalsound"]["count"] == 2
    assert len((out / "vocalsound.predictions.jsonl").read_text().splitlines()) == 2


def test_eval_api_suite(tmp_path, capsys):
    from test_eval_airbench import Server

    server = Server()
    try:
        root = tmp_path / "data"
        vocalsound(root / "vocalsound")
        chapter = root / "librispeech" / "test-clean" / "1" / "2"
        chapter.mkdir(parents=True)
        sf.write(chapter / "1-2-0.flac", 0.2 * np.sin(np.arange(4000) / 3.0), SAMPLE_RATE)
        (chapter / "1-2.trans.txt").write_text("1-2-0 A REPLY ABOUT THE AUDIO\n")
        assert main(["eval", "--api", server.url, "--suite", "vocalsound,librispeech", "--data", str(root),
                     "--out", str(tmp_path / "out"), "--no-progress"]) == 0
        printed = capsys.readouterr().out
        assert "| librispeech_test_clean | 1 | 0.00 | 1.6 / 1.7 |" in printed  # the server's reply is the reference
        assert "| vocalsound | 3 | 0.0000 | 0.9392 | outside_label_set 3 |" in printed
        assert server.calls["model"] == 4
    finally:
        server.httpd.shutdown()


def test_eval_errors_are_one_line(tmp_path, capsys):
    assert main(["eval", "--api", "http://127.0.0.1:9", "--benchmark", "meld", "--data", str(tmp_path / "no"),
                 "--no-progress"]) == 1
    assert "error: meld: no data at" in capsys.readouterr().err


def test_unreachable_api_is_one_line(tmp_path, capsys):
    root = vocalsound(tmp_path / "vs")
    assert main(["eval", "--api", "http://127.0.0.1:9/v1", "--benchmark", "vocalsound", "--data", str(root),
                 "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    assert "no usable reply after 3 tries" in capsys.readouterr().err
