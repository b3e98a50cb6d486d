"""The shared training loop: a recipe per stage on a tiny model and data made here, compiled and eager steps,
precisions, per-part learning rates, the attention kernel and the schedule."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import losses, overrides
from qwen2audio import Qwen2AudioForConditionalGeneration, load
from qwen2audio.train import load_config, lr_factor, train
from qwen2audio.train.loop import has_cxx_compiler


def test_pretrain_task_rows_full_lm_loss_falls(tiny, tmp_path):
    run = train(load_config(None, overrides(tiny, tmp_path, f"data.train={tiny / 'task.jsonl'}", "model.lm=full",
                                            "optim.lr=1e-2", "train.max_steps=20"), stage="pretrain"))
    curve = losses(run)
    assert curve[0] == pytest.approx(8.018, abs=0.01)  # ~ ln(272) + the random head's spread
    assert curve[-1] < curve[0] - 6.0  # 8.02 -> ~0.54 in 20 steps
    assert run.history[-1]["samples"] == 4


def test_sft_lora_recipe_loss_falls_and_exports_a_model_transformers_loads(tiny, tmp_path):
    run = train(load_config(None, overrides(
        tiny, tmp_path, f"data.train={tiny / 'sft.jsonl'}", f"data.validation={tiny / 'sft.jsonl'}", "model.lm=lora",
        "model.projector=full", "optim.lr=2e-2", "train.max_steps=30", "checkpoint.save_final=true"), stage="sft"))
    curve = losses(run)
    assert curve[0] == pytest.approx(7.142, abs=0.01)
    assert min(curve[-5:]) < curve[0] - 4.5  # 7.14 -> ~2.1
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 31)) + [30]
    assert metrics[-1]["val/loss"] < curve[0] - 4.5  # validation on the training rows after training
    assert {"lr/lm", "lr/projector", "grad_norm", "tokens_per_s"} <= metrics[0].keys()

    # the final model is in the hub layout, LoRA merged, and transformers computes the same logits from it
    from transformers import Qwen2AudioForConditionalGeneration as HF
    final = tmp_path / "final"
    assert not any("lora" in k for k in load_file(final / "model.safetensors"))
    ours, hf = load(final), HF.from_pretrained(final).eval()
    ids = torch.tensor([[5, 9, 77, 3, 101, 42]])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf(input_ids=ids).logits, atol=1e-5, rtol=0)


@pytest.mark.skipif(not has_cxx_compiler(), reason="torch.compile on a CPU needs a C++ compiler: apt-get install g++")
def test_compiled_decoder_trains_like_the_eager_one_and_saves_the_same_names(tiny, tmp_path):
    common = [f"data.train={tiny / 'task.jsonl'}", "model.lm=full", "optim.lr=1e-2", "train.max_steps=4",
              "checkpoint.save_final=true"]
    eager = train(load_config(None, overrides(tiny, tmp_path / "eager", *common), stage="pretrain"))
    compiled = train(load_config(None, overrides(tiny, tmp_path / "compiled", *common, "train.compile=true"),
                                 stage="pretrain"))
    assert compiled.model.decoder._compiled_call_impl is not None  # it did compile (a C++ compiler is installed)
    assert losses(compiled) == pytest.approx(losses(eager), abs=2e-4)  # fp32: the fused kernels round differently
    a = load_file(tmp_path / "eager" / "final" / "model.safetensors")
    b = load_file(tmp_path / "compiled" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3


def test_gradient_checkpointing_and_bf16_autocast(tiny, tmp_path):
    base = overrides(tiny, tmp_path, f"data.train={tiny / 'sft.jsonl'}", "model.lm=full", "optim.lr=1e-2",
                     "train.max_steps=3")
    plain = losses(train(load_config(None, base, stage="sft")))
    recomputed = losses(train(load_config(None, base + ["model.gradient_checkpointing=true",
                                                        "model.audio_encoder=full"], stage="sft")))
    assert recomputed[0] == pytest.approx(plain[0], abs=1e-6)
    bf16 = losses(train(load_config(None, base + ["model.precision=bf16-mixed"], stage="sft")))
    assert bf16 == pytest.approx(plain, abs=0.05)
    frozen_bf16 = train(load_config(None, base + ["model.precision=bf16-true", "model.lm=lora"], stage="sft"))
    dtypes = {p.dtype for p in frozen_bf16.model.parameters() if not p.requires_grad}
    assert dtypes == {torch.bfloat16} and {p.dtype for p in frozen_bf16.model.parameters() if p.requires_grad} == \
        {torch.float32}


def test_encoder_projector_lm_train_separately_with_their_own_learning_rates(tiny, tmp_path):
    run = train(load_config(None, overrides(
        tiny, tmp_path, f"data.train={tiny / 'sft.jsonl'}", "model.audio_encoder={mode: full, lr: 1e-4}",
        "model.projector={mode: full, lr: 1e-3}", "model.lm=frozen", "optim.lr=5e-2", "optim.warmup_steps=0",
        "optim.min_lr_ratio=1.0", "optim.weight_decay=0.1", "train.max_steps=2"), stage="sft"))
    lrs = {g["name"]: g["lr"] for g in run.optimizer.param_groups}
    assert lrs == {"audio_encoder": 1e-4, "audio_encoder/no_decay": 1e-4, "projector": 1e-3,
                   "projector/no_decay": 1e-3}
    start = Qwen2AudioForConditionalGeneration.from_pretrained(tiny / "ckpt")
    assert run.model.decoder.layers[0].mlp.up_proj.weight.equal(start.decoder.layers[0].mlp.up_proj.weight)
    assert not run.model.projector.linear.weight.equal(start.projector.linear.weight)
    assert run.model.audio_encoder.positional_embedding.equal(start.audio_encoder.positional_embedding)


def test_short_batches_on_a_cpu_train_with_math_attention_and_the_same_gradients(tiny):
    from types import SimpleNamespace

    from torch.nn.attention import SDPBackend, sdpa_kernel
    from qwen2audio.model import IGNORE_INDEX
    from qwen2audio.train.loop import CPU_MATH_ATTENTION_MAX_TOKENS, attention_backend

    cpu = SimpleNamespace(dist=SimpleNamespace(device=torch.device("cpu")))
    short = SimpleNamespace(input_ids=torch.zeros(2, CPU_MATH_ATTENTION_MAX_TOKENS, dtype=torch.long))
    long = SimpleNamespace(input_ids=torch.zeros(2, CPU_MATH_ATTENTION_MAX_TOKENS + 1, dtype=torch.long))
    cuda = SimpleNamespace(dist=SimpleNamespace(device=torch.device("cuda")))
    flash_allowed = torch.backends.cuda.flash_sdp_enabled  # the one switch for every device's flash kernel
    for run, batch, flash in ((cpu, short, False), (cpu, long, True), (cuda, short, True)):
        with attention_backend(run, batch):
            assert flash_allowed() is flash and torch.backends.cuda.math_sdp_enabled()
    assert flash_allowed()  # restored on leaving

    model = load(tiny / "ckpt", dtype=torch.float32)
    ids = torch.randint(0, 200, (3, 40), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 30:] = mask[2, 12:] = 0  # right padding, as training collates
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    grads = {}
    for backend in (SDPBackend.MATH, SDPBackend.FLASH_ATTENTION):
        model.zero_grad()
        with sdpa_kernel([backend]):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        grads[backend] = (loss.item(), [p.grad.clone() for p in model.decoder.parameters()])
    (math_loss, math_grads), (flash_loss, flash_grads) = grads.values()
    assert math_loss == pytest.approx(flash_loss, rel=1e-5)
    for a, b in zip(math_grads, flash_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    f = [lr_factor(s, warmup=4, max_steps=20, min_ratio=0.1) for s in range(21)]
    assert f[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8]) and f[4] == 1.0
    assert f[12] == pytest.approx(0.55) and f[20] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[4:], f[5:]))


def test_a_checkpoint_exports_the_model_it_holds(tiny, tmp_path, capsys):
    """`train --export`: the model of a training checkpoint, without resuming; the last one equals the final model."""
    from qwen2audio.cli import main

    args = overrides(tiny, tmp_path, f"data.train={tiny / 'sft.jsonl'}", "model.lm=lora", "model.projector=full",
                     "optim.lr=2e-2", "train.max_steps=6", "checkpoint.every=3", "checkpoint.keep=2",
                     "checkpoint.save_final=true")
    train(load_config(None, args, stage="sft"))
    step3, step6 = tmp_path / "checkpoints" / "step-00000003", tmp_path / "checkpoints" / "step-00000006"
    for step in (step3, step6):
        assert main(["train", "--stage", "sft", "--export", str(step), *args]) == 0
    final, last, earlier = (load(p) for p in (tmp_path / "final", tmp_path / "exports" / step6.name,
                                             tmp_path / "exports" / step3.name))
    ids = torch.tensor([[5, 9, 77, 3, 101, 42]])
    with torch.no_grad():
        torch.testing.assert_close(last(ids).logits, final(ids).logits, atol=0, rtol=0)
        assert (earlier(ids).logits - final(ids).logits).abs().max() > 1e-3  # three more steps changed it
    assert main(["train", "--stage", "sft", "--export", str(tmp_path), *args]) == 1
    assert "is not a training checkpoint" in capsys.readouterr().err
