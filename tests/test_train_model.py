"""What trains: `precision: auto` measured, recorded and kept on resume."""

import pytest
import torch
import yaml

from conftest import losses, overrides
from qwen2audio.train import load_config, train
from qwen2audio.train.model import auto_precision


def test_auto_precision_is_measured_then_trains_and_is_recorded_as_what_it_chose(tiny, tmp_path):
    assert auto_precision(64, torch.device("cpu")) in ("32-true", "bf16-mixed")
    base = overrides(tiny, tmp_path / "auto", f"data.train={tiny / 'sft.jsonl'}", "model.lm=full", "optim.lr=1e-2",
                     "train.max_steps=3")
    run = train(load_config(None, base + ["model.precision=auto"], stage="sft"))
    chosen = run.config.model.precision
    assert chosen in ("32-true", "bf16-mixed")
    assert yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())["model"]["precision"] == chosen
    explicit = train(load_config(None, base + [f"out_dir={tmp_path / 'explicit'}", f"model.precision={chosen}"],
                                 stage="sft"))
    assert losses(run) == pytest.approx(losses(explicit), abs=1e-6)


def test_a_resumed_auto_precision_run_keeps_the_precision_it_started_with(tiny, tmp_path, monkeypatch):
    """A measurement on resume could come out the other way (a busy machine: it did once, beside another job),
    which would change the numerics mid-run and the encoder cache's key."""
    import qwen2audio.train.loop as loop

    base = overrides(tiny, tmp_path, f"data.train={tiny / 'sft.jsonl'}", "model.lm=full", "model.precision=auto",
                     "checkpoint.every=2")
    monkeypatch.setattr(loop, "auto_precision", lambda dim, device: "32-true")
    first = train(load_config(None, base + ["train.max_steps=2"], stage="sft"))
    assert first.config.model.precision == "32-true"
    monkeypatch.setattr(loop, "auto_precision", lambda dim, device: "bf16-mixed")
    resumed = train(load_config(None, base + ["train.max_steps=4"], stage="sft"), resume=True)
    assert resumed.config.model.precision == "32-true" and resumed.step == 4
    fresh = train(load_config(None, base + [f"out_dir={tmp_path / 'fresh'}", "train.max_steps=1"], stage="sft"))
    assert fresh.config.model.precision == "bf16-mixed"  # a new run measures
