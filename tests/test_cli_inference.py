"""`qwen2audio run`, `chat` (an interactive session driven through stdin) and `transcribe` on a tiny model."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile

import qwen2audio
from conftest import clip_with_pauses, write_speech, write_tone
from qwen2audio.audio import SAMPLE_RATE
from qwen2audio.cli import main

COMMON = ["--max-new-tokens", "5", "--no-compile"]


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """A spoken sentence (espeak-ng), or a tone where espeak-ng is missing."""
    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    if shutil.which("espeak-ng"):
        write_speech(path, "Hello, what is the weather like today?")
    else:
        write_tone(path, 2.0)
    return path


def test_run_with_a_prompt_and_in_voice_chat_mode(tiny_checkpoint, speech, capsys):
    assert main(["run", "--model", str(tiny_checkpoint), "--audio", str(speech), "What is said?", *COMMON]) == 0
    with_prompt = capsys.readouterr().out
    assert with_prompt.endswith("\n") and len(with_prompt) > 1
    assert main(["run", "--model", str(tiny_checkpoint), "--audio", str(speech), "--audio", str(speech),
                 "--quantize", "int8", *COMMON]) == 0  # two audios, no prompt: voice chat
    assert len(capsys.readouterr().out) > 1


def test_run_errors_are_one_line(tiny_checkpoint, tmp_path, capsys):
    assert main(["run", "--model", str(tiny_checkpoint), "--audio", str(tmp_path / "nope.wav"), "hi"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.wav' not found" in err and "Traceback" not in err
    assert main(["run", "--model", str(tiny_checkpoint)]) == 1
    assert "give --audio FILE and/or a prompt" in capsys.readouterr().err


def test_transcribe_writes_txt_json_srt(tiny_checkpoint, speech, tmp_path, capsys):
    long_clip = tmp_path / "long.wav"
    soundfile.write(long_clip, clip_with_pauses(35.0)[0], SAMPLE_RATE)
    for fmt in ("txt", "json", "srt"):
        assert main(["transcribe", "--model", str(tiny_checkpoint), str(speech), str(long_clip),
                     "--output-format", fmt, "--output-dir", str(tmp_path / "out"), "--language", "en",
                     *COMMON]) == 0
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}.{fmt}" for stem in ("speech", "long") for fmt in ("txt", "json", "srt"))
    result = json.loads((out / "long.json").read_text())
    assert result["duration"] == 35.0 and result["language"] == "en" and len(result["segments"]) == 2
    assert result["segments"][0]["end"] == result["segments"][1]["start"] < 30.0
    assert (out / "long.srt").read_text().startswith("1\n00:00:00,000 --> 00:00:")
    assert (out / "long.txt").read_text() == result["text"] + "\n"
    assert "transcribed as 2 windows" in capsys.readouterr().err
    assert main(["transcribe", "--model", str(tiny_checkpoint), str(speech), "--language", "en", *COMMON]) == 0
    assert capsys.readouterr().out.strip() == (out / "speech.txt").read_text().strip()


def test_transcribe_missing_file_fails_before_loading(tmp_path, capsys):
    assert main(["transcribe", "--model", str(tmp_path), str(tmp_path / "gone.mp3")]) == 1
    assert "gone.mp3' not found" in capsys.readouterr().err


def test_chat_repl_through_stdin(tiny_checkpoint, speech):
    session = (f"/help\n/audio {speech}\nWhat is said?\n/audio {speech.parent / 'missing.wav'}\n/frobnicate\n"
               f"/audio {speech}\n\n/reset\nhello again\n/exit\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run([sys.executable, "-m", "qwen2audio", "chat", "--model", str(tiny_checkpoint), *COMMON],
                          input=session.encode(), capture_output=True, timeout=120, env=env)
    out, err = done.stdout.decode(), done.stderr.decode()  # bytes: the answers may hold "\r", kept as it is
    assert done.returncode == 0, err
    assert "/audio FILE" in out and out.count("(attached") == 2 and "(new conversation)" in out
    assert "missing.wav' not found" in err and "unknown command /frobnicate" in err
    assert "Traceback" not in err
    # the same three turns through the Python API: text + audio, then audio alone (voice chat), then after /reset
    model = qwen2audio.load(tiny_checkpoint)
    audio = {"type": "audio", "audio": str(speech)}
    turn_1 = {"role": "user", "content": [audio, {"type": "text", "text": "What is said?"}]}
    reply_1 = model.chat([turn_1], max_new_tokens=5)
    reply_2 = model.chat([turn_1, {"role": "assistant", "content": reply_1}, {"role": "user", "content": [audio]}],
                         max_new_tokens=5)
    reply_3 = model.chat([{"role": "user", "content": [{"type": "text", "text": "hello again"}]}], max_new_tokens=5)
    position = 0
    for reply in (reply_1, reply_2, reply_3):
        position = out.index(reply + "\n", position) + len(reply)
