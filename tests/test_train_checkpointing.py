"""Resume: a run killed at a step or half-way through writing a checkpoint continues to the uninterrupted run's
weights."""

import json

import pytest
from safetensors.torch import load_file

from conftest import overrides, run_script
from qwen2audio.train import load_config, train


def test_sigkill_and_resume_gives_the_uninterrupted_weights(tiny, tmp_path):
    N = 4
    common = [o for o in overrides(tiny, "unused", f"data.train={tiny / 'sft.jsonl'}", "data.batch_size=2",
                         "data.num_workers=2", "data.bucket_batches=3", f"train.max_steps={2 * N}",
                         "optim.warmup_steps=2", "optim.lr=1e-2", "model.lora.dropout=0.1", f"checkpoint.every={N}",
                         "checkpoint.save_final=true") if not o.startswith("out_dir=")]
    straight = run_script(tmp_path, tmp_path / "straight", 0, "none", *common)
    assert straight.returncode == 0, straight.stderr
    killed = run_script(tmp_path, tmp_path / "killed", N + 2, "step", *common)
    assert killed.returncode == -9  # SIGKILL, mid-way between checkpoints
    assert sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir()) == [f"step-{N:08d}"]
    resumed = run_script(tmp_path, tmp_path / "killed", 0, "none", *common)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {tmp_path / 'killed' / 'checkpoints' / f'step-{N:08d}'} at step {N}" in resumed.stderr
    a = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "final" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    curve = lambda d: [json.loads(x)["loss"] for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert curve(tmp_path / "killed") == pytest.approx(curve(tmp_path / "straight"), abs=1e-6)

    # a kill while the next checkpoint is being written leaves the previous one whole and loadable
    dying = run_script(tmp_path, tmp_path / "dying", 2 * N, "write", *common)
    assert dying.returncode == -9
    names = sorted(p.name for p in (tmp_path / "dying" / "checkpoints").iterdir())
    assert names == [f".tmp-step-{2 * N:08d}", f"step-{N:08d}"]
    assert (tmp_path / "dying" / "checkpoints" / f".tmp-step-{2 * N:08d}" / "trainer.pt").read_bytes() == b"half a file"
    again = run_script(tmp_path, tmp_path / "dying", 0, "none", *common)
    assert again.returncode == 0, again.stderr
    assert f"at step {N}" in again.stderr
    assert sorted(p.name for p in (tmp_path / "dying" / "checkpoints").iterdir()) == [f"step-{N:08d}",
                                                                                      f"step-{2 * N:08d}"]
    c = load_file(tmp_path / "dying" / "final" / "model.safetensors")
    assert max((a[k] - c[k]).abs().max().item() for k in a) <= 1e-6

    # a new run (no resume) into a folder holding checkpoints stops before it writes anything over them
    before = (tmp_path / "dying" / "metrics.jsonl").read_bytes()
    with pytest.raises(FileExistsError, match=f"latest step-{2 * N:08d}.*--resume"):
        train(load_config(None, [f"out_dir={tmp_path / 'dying'}", *common], stage="sft"))
    assert (tmp_path / "dying" / "metrics.jsonl").read_bytes() == before
