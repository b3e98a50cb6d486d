"""Training: a recipe per stage on a tiny model and data made here, exact resume after SIGKILL, FSDP/DDP against one
process, LoRA counting and merging, the config schema and the command line."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from test_data import pitch_rows, tiny_checkpoint, write_jsonl
from qwen2audio import Qwen2AudioForConditionalGeneration, load
from qwen2audio.train import LoRALinear, apply_lora, load_config, lr_factor, merge_lora, train
from qwen2audio.train.dpo import preference_loss
from qwen2audio.train.loop import has_cxx_compiler
from qwen2audio.train.config import DPOConfig
from qwen2audio.train.model import TokenLogProbs, auto_precision

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny")
    tiny_checkpoint(d / "ckpt")
    for kind in ("sft", "task", "dpo"):
        write_jsonl(d / f"{kind}.jsonl", pitch_rows(d, 16, kind))
    return d


def overrides(tiny: Path, out: Path, *extra: str) -> list[str]:
    return [f"model.path={tiny / 'ckpt'}", f"out_dir={out}", "data.batch_size=4", "data.num_workers=0",
            "model.precision=32-true", "logging.progress=false", "checkpoint.save_final=false", *extra]


def losses(run, key="loss"):
    return [line[key] for line in run.history]


# -- must show 1: a recipe per stage ------------------------------------------------------------------------------
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


# -- must show 3: resume -------------------------------------------------------------------------------------------
RESUME_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from qwen2audio.train import load_config, train
    import qwen2audio.train.checkpointing as checkpointing
    out, kill_at, mode, *extra = sys.argv[1:]
    kill_at = int(kill_at)
    def hook(run, event):
        if mode == "step" and event == "step" and run.step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    if mode == "write":  # die half-way through writing the new checkpoint's trainer state
        save = checkpointing._save_fsynced
        def dying_save(obj, path):
            if path.name == "trainer.pt" and path.parent.name == f".tmp-step-{kill_at:08d}":
                path.write_bytes(b"half a file")
                os.kill(os.getpid(), signal.SIGKILL)
            save(obj, path)
        checkpointing._save_fsynced = dying_save
    train(load_config(None, [f"out_dir={out}", *extra], stage="sft"), hooks=[hook], resume=True)
""")


def run_script(tmp_path, *args):
    script = tmp_path / "resume.py"
    script.write_text(RESUME_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(script), *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=300)


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


# -- must show 4: FSDP and DDP ------------------------------------------------------------------------------------
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


# -- must show 6: LoRA ---------------------------------------------------------------------------------------------
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


# -- switches -----------------------------------------------------------------------------------------------------
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


# -- config and command line ----------------------------------------------------------------------------------------
def test_recipes_are_valid_configs(tiny):
    recipes = sorted((REPO / "recipes").glob("*.yaml")) + sorted((REPO / "recipes" / "demo").glob("*.yaml"))
    assert len(recipes) >= 7
    for recipe in recipes:
        stage = recipe.stem.split("_")[0]
        config = load_config(recipe, ["data.num_workers=0"], stage=stage)
        assert config.stage == stage and config.data.train


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"model.lora.rank: expected int, got 'eight'"):
        load_config(None, ["model.lora.rank=eight"])
    with pytest.raises(ValueError, match=r"optim: unknown key\(s\) lrr"):
        load_config(None, ["optim.lrr=1"])
    with pytest.raises(ValueError, match="model.lm: mode must be one of frozen, full, lora"):
        load_config(None, ["model.lm=partly"])
    (tmp_path / "c.yaml").write_text("stage: dpo\n")
    with pytest.raises(ValueError, match="the config says stage: dpo but --stage sft"):
        load_config(tmp_path / "c.yaml", stage="sft")
    config = load_config(None, ["optim.lr=2e-4", "data.train=[a.jsonl, {path: b.jsonl, weight: 3}]"])
    assert config.optim.lr == 2e-4 and [s.weight for s in config.data.train] == [1.0, 3.0]


def test_command_line_trains(tiny, tmp_path, capsys):
    from qwen2audio.cli import main

    (tmp_path / "r.yaml").write_text(f"model:\n  path: {tiny / 'ckpt'}\n  lm: full\n  precision: 32-true\n"
                                     f"data:\n  train: [{tiny / 'task.jsonl'}]\n  num_workers: 0\n"
                                     "train:\n  max_steps: 2\nlogging:\n  progress: false\n"
                                     "checkpoint:\n  save_final: false\n")
    assert main(["train", "--stage", "pretrain", "--config", str(tmp_path / "r.yaml"), f"out_dir={tmp_path / 'o'}",
                 "optim.lr=1e-2"]) == 0
    assert "done: 2 steps" in capsys.readouterr().out
    assert main(["train", "--stage", "pretrain", "--config", str(tmp_path / "r.yaml"), "optim.nope=1"]) == 1
    assert "unknown key(s) nope" in capsys.readouterr().err


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
