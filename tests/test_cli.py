"""The `qwen2audio` command line: info and convert."""

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from conftest import make_hf_model
from qwen2audio import load
from qwen2audio.cli import main


def test_info_on_preset_prints_the_7b_count(capsys):
    assert main(["info", "qwen2-audio-7b"]) == 0
    out = capsys.readouterr().out
    assert "8,397,094,912" in out and "32 layers, 32 heads / 32 kv" in out and "bfloat16 15.64" in out


def test_info_on_checkpoint(tmp_path, capsys):
    make_hf_model("gqa-untied").save_pretrained(tmp_path)
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1 safetensors file(s)" in out and "6 heads / 2 kv" in out


def test_convert_to_bf16_sharded_then_check(tmp_path, capsys):
    make_hf_model("gqa-untied").save_pretrained(tmp_path / "src")
    assert main(["convert", str(tmp_path / "src"), "--out", str(tmp_path / "dst"), "--dtype", "bfloat16",
                 "--max-shard-size", "5MB"]) == 0
    index = json.loads((tmp_path / "dst" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert (tmp_path / "dst" / "tokenizer_config.json").exists()
    assert (tmp_path / "dst" / "preprocessor_config.json").exists()
    first = load_file(tmp_path / "dst" / sorted(set(index["weight_map"].values()))[0])
    assert {t.dtype for t in first.values()} == {torch.bfloat16}
    src, dst = load(tmp_path / "src"), load(tmp_path / "dst")
    assert dst.dtype == torch.bfloat16
    assert dst.decoder.layers[1].mlp.up_proj.weight.equal(src.decoder.layers[1].mlp.up_proj.weight.bfloat16())
    assert main(["convert", str(tmp_path / "dst"), "--check"]) == 0
    assert "ok:" in capsys.readouterr().out


def test_errors_are_one_line_not_tracebacks(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing")]) == 1
    assert "neither a checkpoint directory nor a preset" in capsys.readouterr().err
    tmp_path.joinpath("config.json").write_text("{not json")
    assert main(["convert", str(tmp_path), "--check"]) == 1
    assert "invalid JSON" in capsys.readouterr().err


def test_output_cut_short_by_a_pipe_ends_quietly():
    """`qwen2audio info | head -1`: the reader leaves after one line; no BrokenPipeError traceback, exit status 0."""
    done = subprocess.run(f"set -o pipefail; {sys.executable} -m qwen2audio info qwen2-audio-7b | head -1",
                          shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.stdout.startswith("preset")
    assert "Traceback" not in done.stderr and done.returncode == 0, done.stderr
