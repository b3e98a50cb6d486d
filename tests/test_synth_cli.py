"""`qwen2audio synth` (synth/cli.py): one-line errors, weighted tasks, a corpus written."""

from __future__ import annotations

import json

from qwen2audio.synth import TASKS, speech


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
