"""Stage 3, DPO: its loss forms, and a run that raises preference accuracy with either reference."""

import pytest
import torch

from conftest import losses, overrides
from qwen2audio.train import load_config, train
from qwen2audio.train.config import DPOConfig
from qwen2audio.train.dpo import preference_loss


def test_dpo_raises_preference_accuracy_and_reward_margin(tiny, tmp_path):
    run = train(load_config(None, overrides(tiny, tmp_path, f"data.train={tiny / 'dpo.jsonl'}", "model.lm=lora",
                                            "model.projector=frozen", "optim.lr=2e-3", "dpo.beta=0.1",
                                            "train.max_steps=10"), stage="dpo"))
    accuracy, margin = losses(run, "rewards/accuracy"), losses(run, "rewards/margin")
    assert accuracy[0] == 0.0 and margin[0] == 0.0  # step 1: the policy is the reference (LoRA B = 0)
    assert losses(run)[0] == pytest.approx(0.6931, abs=1e-4)  # log 2
    assert accuracy[-1] == 1.0 and min(accuracy[3:]) == 1.0
    assert all(b > a for a, b in zip(margin, margin[1:])) and margin[-1] > 0.2  # 0 -> 0.23, rising every step
    assert losses(run)[-1] < 0.6


def test_dpo_loss_forms():
    h = torch.tensor([0.0, 2.0, -1.0])
    sigmoid = preference_loss(h, DPOConfig(beta=0.5))
    torch.testing.assert_close(sigmoid, -torch.nn.functional.logsigmoid(0.5 * h))
    smooth = preference_loss(h, DPOConfig(beta=0.5, label_smoothing=0.1))
    torch.testing.assert_close(smooth, 0.9 * sigmoid - 0.1 * torch.nn.functional.logsigmoid(-0.5 * h))
    torch.testing.assert_close(preference_loss(h, DPOConfig(beta=0.5, loss="ipo")), (h - 1.0) ** 2)


def test_dpo_references_a_frozen_copy_or_precomputed_log_probs_alike(tiny, tmp_path, capsys):
    runs = {}
    for reference in ("copy", "precomputed"):
        runs[reference] = train(load_config(None, overrides(
            tiny, tmp_path / reference, f"data.train={tiny / 'dpo.jsonl'}", "model.lm=full", "optim.lr=1e-3",
            "dpo.sft_weight=0.5", "dpo.loss=ipo", "train.max_steps=4", f"dpo.reference={reference}"), stage="dpo"))
    assert "precomputed reference log-probs of 16 pairs" in capsys.readouterr().err
    copy, precomputed = runs["copy"].history, runs["precomputed"].history
    assert copy[0]["rewards/margin"] == 0.0 and copy[-1]["rewards/accuracy"] == 1.0
    assert {"dpo", "sft"} <= copy[0].keys()
    for key in ("loss", "rewards/margin", "rewards/chosen"):
        assert [line[key] for line in precomputed] == pytest.approx([line[key] for line in copy], abs=1e-5)
