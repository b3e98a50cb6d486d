"""Several processes (FSDP, DDP) against one with the same global batch."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, losses, overrides
from qwen2audio.train import load_config, train


@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_two_processes_match_one_with_the_same_global_batch(tiny, tmp_path, strategy):
    common = overrides(tiny, tmp_path / strategy, f"data.train={tiny / 'sft.jsonl'}", "data.batch_size=2",
                       "data.bucket_batches=2", "model.lm=full", "optim.lr=1e-2", "train.max_steps=5")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "qwen2audio.train", "--stage", "sft", *common, f"distributed.strategy={strategy}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"2 process(es) ({strategy})" in result.stderr
    two = [json.loads(x)["loss"] for x in (tmp_path / strategy / "metrics.jsonl").read_text().splitlines()]
    one = train(load_config(None, overrides(tiny, tmp_path / "one", f"data.train={tiny / 'sft.jsonl'}",
                                            "data.batch_size=2", "data.bucket_batches=2", "model.lm=full",
                                            "optim.lr=1e-2", "train.max_steps=5", "train.grad_accum=2"), stage="sft"))
    assert two[-1] < two[0] - 1.0  # it trains
    assert two == pytest.approx(losses(one), rel=1e-5)
