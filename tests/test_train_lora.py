"""LoRA: which layers get adapters, their starting point, counting and the merged export."""

import pytest
import torch

from conftest import overrides
from qwen2audio import load
from qwen2audio.train import LoRALinear, apply_lora, load_config, merge_lora, train


def test_lora_counts_and_merged_export_equals_the_adapted_model(tiny, tmp_path):
    rank = 4
    run = train(load_config(None, overrides(tiny, tmp_path, f"data.train={tiny / 'sft.jsonl'}", "model.lm=lora",
                                            "model.projector=frozen", f"model.lora.rank={rank}", "optim.lr=1e-2",
                                            "train.max_steps=3", "checkpoint.save_final=true"), stage="sft"))
    dim, kv, ffn, layers = 32, 2 * 8, 64, 2  # tiny text config: 4 heads of 8, 2 kv heads
    shapes = {"q": (dim, dim), "k": (dim, kv), "v": (dim, kv), "o": (dim, dim), "gate": (dim, ffn),
              "up": (dim, ffn), "down": (ffn, dim)}
    expected = layers * sum(rank * (i + o) for i, o in shapes.values())
    trainable = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    assert trainable == expected == 4096
    assert sum(isinstance(m, LoRALinear) for m in run.model.modules()) == layers * 7
    assert any(m.lora_b.abs().sum() > 0 for m in run.model.modules() if isinstance(m, LoRALinear))

    batch_ids = torch.tensor([[7, 30, 99, 12, 5, 250, 13]])
    run.model.eval()
    with torch.no_grad():
        adapted = run.model(batch_ids).logits
        exported = load(tmp_path / "final")(batch_ids).logits
        merged = merge_lora(run.model)(batch_ids).logits
    torch.testing.assert_close(exported, adapted, atol=1e-5, rtol=0)
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=0)
    assert not any(isinstance(m, LoRALinear) for m in run.model.modules())


def test_apply_lora_matches_names_and_starts_as_the_identity():
    layer = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    x = torch.randn(3, 8)
    before = layer(x)
    assert apply_lora(layer, ["2"], rank=2, alpha=4) == ["2"]
    torch.testing.assert_close(layer(x), before)  # B = 0
    with pytest.raises(ValueError, match="no Linear layer matches"):
        apply_lora(layer, ["nothing"], rank=2, alpha=4)
