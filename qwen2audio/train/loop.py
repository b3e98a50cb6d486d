"""The one training loop of every stage: setup -> fit -> validate -> finish.

    run = setup(config)      # processes, model (frozen parts, LoRA), FSDP/DDP, optimizer, schedule, data, resume
    fit(run)                 # optimizer steps: accumulate, clip, step; log, validate, checkpoint
    finish(run)              # the final model, LoRA merged, in the Hugging Face layout

A stage (`pretrain`, `sft`, `dpo`) only says how to count a micro-batch and what its loss is (`stage.Stage`).
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
import warnings
from collections import Counter, deque
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..api import Qwen2AudioForConditionalGeneration
from ..data import Batch, BatchLoader, Encoder, Planner, make_dataloader
from ..files import atomic_write
from ..logprobs import IdleAudio, TokenLogProbs, batch_token_logps
from . import dpo, pretrain, sft
from .checkpointing import clean_partial, latest_checkpoint, load_checkpoint, load_model_weights, save_checkpoint
from .config import PRECISIONS, TrainConfig, to_yaml
from .distributed import (Dist, all_reduce_sum, barrier, broadcast_object, init_distributed, no_sync,
                          shard_layers, wrap)
from .encoder_cache import prepare_encoder_cache
from .lora import adapters_disabled, lora_scalings, merge_lora_state_dict
from .metrics import MetricsWriter
from .model import auto_precision, has_only_adapters_trainable, part_of, prepare, trainable_counts
from .stage import Stage

HISTORY_KEPT = 10_000  # metric lines kept in memory (all of them go to metrics.jsonl)
# On a CPU, PyTorch's flash-attention kernel is slower than plain matmul + softmax ("math") over short sequences
# once its backward is counted. bench/bench_train_attention.py (forward + backward, bf16, causal with padding, 2-core
# AMX Xeon; 4 heads of 64 and 28 of 128): math takes 0.55-0.86x the flash kernel's time at 64-160 tokens, 1.1-1.4x
# at 192, 2.4-3.1x at 512-768; 40 pretraining batches of the demo corpus: 0.34-0.39 s a step against 0.41-0.47.
CPU_MATH_ATTENTION_MAX_TOKENS = 160
Hook = Callable[["Run", str], None]  # called as hook(run, event) with event "step" or "checkpoint"


@dataclass
class Run:
    config: TrainConfig
    dist: Dist
    model: Qwen2AudioForConditionalGeneration  # the bare model (its parameters are sharded under FSDP)
    module: torch.nn.Module  # what runs: TokenLogProbs(model), wrapped by FSDP/DDP
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    stage: Stage
    planner: Planner
    batch_loader: BatchLoader
    encoder: Encoder
    writer: MetricsWriter
    hooks: list[Hook] = field(default_factory=list)
    step: int = 0
    micro_batches: int = 0  # global micro-batches consumed (the data position)
    stats: Counter = field(default_factory=Counter)  # samples skipped, dropped, truncated ...
    history: deque = field(default_factory=lambda: deque(maxlen=HISTORY_KEPT))  # the latest metric lines
    last_checkpoint: Path | None = None

    @property
    def out_dir(self) -> Path:
        return Path(self.config.out_dir)

    @property
    def micro_batches_per_step(self) -> int:
        return self.config.train.grad_accum * self.dist.world_size

    def autocast(self):
        precision = self.config.model.precision
        if precision == "32-true":
            return contextlib.nullcontext()
        return torch.autocast(self.dist.device.type, dtype=torch.bfloat16)


def attention_backend(run: Run, batch: Batch):
    """The attention kernel for this micro-batch: math attention for short sequences on a CPU, PyTorch's own choice
    otherwise. It must hold over the backward too, where gradient checkpointing runs the forward again."""
    if run.dist.device.type == "cpu" and batch.input_ids.shape[-1] <= CPU_MATH_ATTENTION_MAX_TOKENS:
        return sdpa_kernel([SDPBackend.MATH])
    return contextlib.nullcontext()


# -- schedule ------------------------------------------------------------------------------------------------------
def lr_factor(step: int, warmup: int, max_steps: int, min_ratio: float) -> float:
    """Linear warmup to 1 over `warmup` steps, then cosine down to `min_ratio` at `max_steps`."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """One AdamW group per (part, decayed or not): each part has its own learning rate; biases, norms and LoRA's
    small matrices aside, only matrices decay."""
    groups: dict[tuple[str, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            decay = p.ndim >= 2 and config.optim.weight_decay > 0
            groups.setdefault((part_of(name.removeprefix("model.")), decay), []).append(p)
    parts = config.model.parts()
    return [{"params": ps, "name": f"{part}{'' if decay else '/no_decay'}",
             "lr": parts[part].lr if parts[part].lr is not None else config.optim.lr,
             "weight_decay": config.optim.weight_decay if decay else 0.0}
            for (part, decay), ps in sorted(groups.items())]


# -- setup ---------------------------------------------------------------------------------------------------------
def idle_audio_for(d: Dist, encoder_cached: bool) -> IdleAudio:
    """What a batch without audio runs at zero weight: nothing in one process; with several, the audio modules that
    train (the projector alone when the encoder's outputs are cached)."""
    if d.world_size == 1:
        return IdleAudio.SKIP
    return IdleAudio.PROJECTOR if encoder_cached else IdleAudio.ENCODER


def setup(config: TrainConfig, hooks: list[Hook] = (), resume: str | bool | None = None) -> Run:
    """Everything a run needs. `resume`: True = the latest checkpoint in out_dir (if any), or a checkpoint path."""
    out = Path(config.out_dir)
    path = checkpoint_to_resume(out, resume)
    d = init_distributed(config.distributed, config.device)
    if config.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if not any(p.mode != "frozen" for p in config.model.parts().values()):
        raise ValueError("nothing trains: set model.audio_encoder/projector/lm mode to full or lora")
    want_copy = config.stage == "dpo" and _reference_kind(config) == "copy"
    prepared = prepare(config.model, config.train.seed, reference_copy=want_copy)
    model = prepared.model
    precision_note = resolve_precision(config, model, d, path)
    writer = MetricsWriter(out, enabled=d.is_main, tensorboard=config.logging.tensorboard)
    encoder_cache = prepare_encoder_cache(config, model, d, writer.note)  # before sharding: the whole encoder runs
    module = TokenLogProbs(model, idle_audio_for(d, encoder_cached=encoder_cache is not None))
    if d.strategy != "fsdp":
        module.to(d.device)
    module = wrap(module, d, shard_layers(model))
    reference = _reference(config, module, prepared.reference, d)
    if config.train.compile:
        compile_decoder(model, d, writer.note)
    stage = dpo.make_stage(config.dpo, reference) if config.stage == "dpo" else \
        {"pretrain": pretrain.STAGE, "sft": sft.STAGE}[config.stage]
    optimizer, scheduler = make_optimizer(model, config)
    encoder, batch_loader, planner = build_data(config, stage, prepared.processor.tokenizer, model, d,
                                                encoder_cache)
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "config.yaml", to_yaml(config).encode())
    run = Run(config, d, model, module, optimizer, scheduler, stage, planner, batch_loader, encoder, writer,
              list(hooks))
    if isinstance(reference, dpo.PrecomputedReference):
        precompute_reference(run, reference)  # with the starting weights: before any checkpoint is loaded
    clean_partial(out / "checkpoints", d)
    if path is not None:
        resume_from(run, path)
    if d.is_main:
        run.writer.note(run_summary(run, precision_note, path))
    return run


def checkpoint_to_resume(out: Path, resume: str | bool | None) -> Path | None:
    """The checkpoint a run resumes from, if any; refuses to start a new run over an old run's checkpoints."""
    if not resume and (previous := latest_checkpoint(out / "checkpoints")) is not None:
        # a new run would write its step-N over the old run's, and its metrics after the old ones
        raise FileExistsError(f"{out} already holds a run's checkpoints (latest {previous.name}): pass "
                              "--resume to continue that run, or out_dir=ANOTHER_DIR (or delete the folder) to "
                              "start a new one")
    return latest_checkpoint(out / "checkpoints") if resume is True else Path(resume) if resume else None


def resolve_precision(config: TrainConfig, model, d: Dist, resume_path: Path | None) -> str:
    """Turn `precision: auto` into a precision, once, by the first process, before anything reads it; returns a
    note for the log ("" when the precision was given)."""
    if config.model.precision != "auto":
        return ""
    # a resumed run keeps what it started with: a new measurement (on a busy machine it can come out the other way)
    # would change the numerics mid-run and the encoder cache's key with them
    recorded = _recorded_precision(resume_path) if resume_path is not None else None
    config.model.precision = recorded or broadcast_object(auto_precision(model.config.text.dim, d.device), d)
    return " (auto: as when this run started)" if recorded else " (auto: measured here)"


def make_optimizer(model, config: TrainConfig):
    """AdamW over the trainable parameter groups, and its warm-up + cosine schedule."""
    o = config.optim
    optimizer = torch.optim.AdamW(param_groups(model, config), lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(
        lr_factor, warmup=o.warmup_steps, max_steps=config.train.max_steps, min_ratio=o.min_lr_ratio))
    return optimizer, scheduler


def run_summary(run: Run, precision_note: str, resumed_from: Path | None) -> str:
    """The log's first line: stage, processes, device, precision and what trains."""
    config, d = run.config, run.dist
    counts = trainable_counts(run.model)
    return (f"stage {config.stage}, {d.world_size} process(es) ({d.strategy}) on {d.device}, "
            f"precision {config.model.precision}{precision_note}; trainable parameters: "
            + ", ".join(f"{k} {v:,}" for k, v in counts.items())
            + (f"; resumed from {resumed_from} at step {run.step}" if resumed_from else ""))


def has_cxx_compiler() -> bool:
    """Whether inductor can build its CPU kernels here (it writes C++)."""
    return any(shutil.which(c) for c in ("c++", "g++", "clang++"))


def compile_decoder(model, d: Dist, note) -> None:
    """torch.compile the LM decoder in place (parameter names unchanged), for every sequence length at once. The
    decoder's elementwise work (norms, rotary, SiLU, residuals, autocast's casts) is most of a small model's step on
    a CPU, and the fused kernels halve it. The audio encoder is not compiled: it is frozen and cached, or trains too
    rarely here to have been measured. Without a C++ compiler on a CPU the run goes on uncompiled."""
    if d.device.type == "cpu" and not has_cxx_compiler():
        note("train.compile: no C++ compiler on this machine (apt-get install g++): training uncompiled")
        return
    model.decoder.compile(dynamic=True)
    note("train.compile: the LM decoder is compiled on the first steps (minutes the first time; cached after)")


def build_data(config: TrainConfig, stage: Stage, tokenizer, model, d: Dist, encoder_cache=None):
    """Rows -> encoded samples (Encoder), micro-batch plans (Planner), loaded batches (BatchLoader: from the audio,
    or from `encoder_cache`)."""
    if tokenizer.audio_token_id != model.config.audio_token_id:
        raise ValueError(f"the tokenizer's <|AUDIO|> id {tokenizer.audio_token_id} differs from the model's "
                         f"{model.config.audio_token_id}")
    dc = config.data
    encoder = Encoder(tokenizer, prompt_format=stage.task_prompt_format if dc.prompt_format == "auto"
                      else dc.prompt_format, train_on=dc.train_on, answer_suffix=dc.answer_suffix,
                      seed=config.train.seed, preference=stage.preference_data)
    batch_loader = BatchLoader.from_tokenizer(
        tokenizer, n_mels=model.config.audio.n_mels, max_length=dc.max_length, padding_side=dc.padding_side,
        truncation=dc.truncation, long_audio=dc.long_audio, on_bad_row=dc.on_bad_row, encoder_cache=encoder_cache)
    planner = Planner(dc.train, encoder, dc.batch_size, dc.bucket_batches, config.train.seed, dc.on_bad_row,
                      cycle=True, rank=d.rank, world_size=d.world_size)
    return encoder, batch_loader, planner


def _recorded_precision(checkpoint: Path) -> str | None:
    """The precision `auto` resolved to in the run that wrote `checkpoint` (None for a checkpoint without one)."""
    trainer = Path(checkpoint) / "trainer.pt"
    if not trainer.exists():
        return None
    recorded = torch.load(trainer, weights_only=True).get("config", {}).get("model", {}).get("precision")
    return recorded if recorded in PRECISIONS and recorded != "auto" else None


def resume_from(run: Run, path: Path) -> None:
    """Model, optimizer, RNG (load_checkpoint), schedule, step, counters and data position of checkpoint `path`."""
    state = load_checkpoint(path, run.module, run.optimizer, run.dist)
    run.scheduler.load_state_dict(state["scheduler"])
    run.step, run.stats = state["step"], Counter(state["stats"])
    run.planner.start = state["data"]
    run.micro_batches = state["data"]["micro_batches"]
    if state["micro_batches_per_step"] != run.micro_batches_per_step:
        warnings.warn("grad_accum x processes changed since the checkpoint: the data continue where they stopped, but "
                      "the run is no longer the same as an uninterrupted one", stacklevel=2)
    run.writer.truncate_after(run.step)
    run.last_checkpoint = path


def _reference_kind(config: TrainConfig) -> str:
    if config.dpo.reference != "auto":
        return config.dpo.reference
    parts = config.model.parts().values()
    only_lora = all(p.mode in ("frozen", "lora") for p in parts) and any(p.mode == "lora" for p in parts)
    return "lora_disabled" if only_lora else "copy"


def _reference(config: TrainConfig, module, copy_model, d: Dist):
    """The DPO reference: (chosen, rejected) sequence log-probs of the starting model, as a function of a batch."""
    if config.stage != "dpo":
        return None
    kind = _reference_kind(config)
    if kind == "precomputed":
        return dpo.PrecomputedReference()  # filled by precompute_reference once the data pipeline exists
    if kind == "lora_disabled":
        if not has_only_adapters_trainable(module):
            raise ValueError("dpo.reference lora_disabled needs every trained weight to be a LoRA adapter")
        def run_base(batch):
            with adapters_disabled(module):
                return batch_token_logps(module, batch)
        return dpo.model_reference(run_base)
    ref = TokenLogProbs(copy_model, idle_audio_for(d, encoder_cached=False))
    if d.strategy == "fsdp":
        wrap(ref, d, shard_layers(copy_model))
    else:
        ref.to(d.device)
    return dpo.model_reference(lambda batch: batch_token_logps(ref, batch))


def precompute_reference(run: Run, reference: dpo.PrecomputedReference) -> None:
    """One pass over the training rows with the starting model: every row's reference log-probs, on every process."""
    average = run.config.dpo.loss == "ipo"
    with torch.no_grad():
        for batch in _in_step(run, run.config.data.train):
            with run.autocast():
                reference.add(batch, batch_token_logps(run.module, batch), average)
    if run.dist.world_size > 1:
        tables = [None] * run.dist.world_size
        torch.distributed.all_gather_object(tables, reference.table)
        for table in tables:
            reference.table.update(table)
    run.writer.note(f"precomputed reference log-probs of {len(reference.table)} pairs")


# -- fit -----------------------------------------------------------------------------------------------------------
def batches(run: Run) -> Iterator[Batch]:
    dc = run.config.data
    loader = make_dataloader(run.planner, run.batch_loader, dc.num_workers, dc.prefetch_batches,
                             pin_memory=run.dist.device.type == "cuda")
    for batch in loader:
        yield batch.to(run.dist.device, non_blocking=True)


def train_step(run: Run, micro: list[Batch]) -> dict[str, float]:
    """One optimizer step over this process's micro-batches; returns the step's metrics (all processes)."""
    d, stage = run.dist, run.stage
    counts = all_reduce_sum(sum((Counter(stage.counts(b)) for b in micro), Counter()), d, d.device)
    sums: Counter = Counter()
    for i, batch in enumerate(micro):
        with attention_backend(run, batch):  # backward too: gradient checkpointing recomputes the forward there
            with no_sync(run.module, d, sync=i == len(micro) - 1), run.autocast():
                terms, metrics = stage.loss(run.module, batch)
                loss = sum(t.weight * t.total / max(counts.get(t.unit, 0), 1) for t in terms.values())
            (loss * d.world_size).backward()  # data parallelism averages gradients over processes: undo it
        for name, t in terms.items():
            sums[name] += float(t.total.detach()) / max(counts.get(t.unit, 0), 1) * t.weight
        for name, (total, unit) in metrics.items():
            sums[name] += float(total) / max(counts.get(unit, 0), 1)
        sums["tokens_in"] += float(batch.attention_mask.sum())
        sums["samples"] += batch.n_samples
        run.stats.update(batch.stats)
    grad_norm = clip_gradients(run)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    out = all_reduce_sum(dict(sums), d, d.device)
    out["loss"] = sum(out[name] for name in terms)
    out["grad_norm"] = grad_norm
    return out


def clip_gradients(run: Run) -> float:
    params = [p for p in run.module.parameters() if p.grad is not None]
    clip = run.config.optim.grad_clip
    norm = torch.nn.utils.clip_grad_norm_(params, clip if clip is not None else float("inf"), foreach=None)
    if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
        norm = norm.full_tensor()
    return float(norm)


def fit(run: Run) -> deque:
    """Train to max_steps from wherever the run stands; returns the latest metric lines."""
    cfg = run.config
    stream = batches(run)
    progress = run.writer.progress(cfg.train.max_steps, run.step, enabled=cfg.logging.progress)
    try:
        while run.step < cfg.train.max_steps:
            start = time.perf_counter()
            micro = [next(stream) for _ in range(cfg.train.grad_accum)]
            metrics = train_step(run, micro)
            run.step += 1
            run.micro_batches += run.micro_batches_per_step
            elapsed = time.perf_counter() - start
            line = {"step": run.step, "loss": metrics.pop("loss"),
                    **{f"lr/{g['name'].split('/')[0]}": g["lr"] for g in run.optimizer.param_groups},
                    "grad_norm": metrics.pop("grad_norm"), "tokens_per_s": metrics["tokens_in"] / elapsed,
                    "step_s": elapsed, **metrics, **{f"data/{k}": v for k, v in sorted(run.stats.items())}}
            run.history.append(line)
            if run.step % cfg.train.log_every == 0 or run.step == cfg.train.max_steps:
                run.writer.log(line)
            progress.update(line)
            for hook in run.hooks:
                hook(run, "step")
            if cfg.train.eval_every and run.step % cfg.train.eval_every == 0 and cfg.data.validation:
                run.writer.log({"step": run.step, **{f"val/{k}": v for k, v in validate(run).items()}})
            if cfg.checkpoint.every and run.step % cfg.checkpoint.every == 0:
                checkpoint(run)
    finally:
        progress.close()
    return run.history


def checkpoint(run: Run) -> Path:
    state = {"step": run.step, "data": run.planner.state_at(run.micro_batches),
             "scheduler": run.scheduler.state_dict(), "stats": dict(run.stats),
             "micro_batches_per_step": run.micro_batches_per_step, "config": run.config.to_dict()}
    run.last_checkpoint = save_checkpoint(run.out_dir / "checkpoints", run.step, run.module, run.optimizer, state,
                                          run.dist, run.config.checkpoint.keep)
    for hook in run.hooks:
        hook(run, "checkpoint")
    return run.last_checkpoint


def _in_step(run: Run, sources, limit: int = 0) -> Iterator[Batch]:
    """One pass over `sources`, this process's share, with every process running the same number of batches (a
    process that runs out first gets rows without loss), so sharded models stay in step."""
    cfg, d = run.config, run.dist
    planner = Planner(sources, run.encoder, cfg.data.batch_size, 1, cfg.train.seed, cfg.data.on_bad_row,
                      cycle=False, rank=d.rank, world_size=d.world_size)
    loader = iter(make_dataloader(planner, run.batch_loader, 0))
    was_training = run.module.training
    run.module.eval()
    n = 0
    try:
        while not limit or n < limit:
            batch = next(loader, None)
            if not all_reduce_sum({"more": batch is not None}, d, d.device)["more"]:
                break
            yield (batch or run.batch_loader.empty_batch()).to(d.device)
            n += 1
    finally:
        run.module.train(was_training)


@torch.no_grad()
def validate(run: Run) -> dict[str, float]:
    """The stage's loss and metrics over the validation sources, all processes together."""
    sums, units = Counter(), {}
    for batch in _in_step(run, run.config.data.validation, run.config.train.eval_batches):
        with run.autocast():
            terms, metrics = run.stage.loss(run.module, batch)
        sums.update(run.stage.counts(batch))
        for name, t in terms.items():
            sums[name] += float(t.total) * t.weight
            units[name] = t.unit
        for name, (total, unit) in metrics.items():
            sums[name] += float(total)
            units[name] = unit
    units = broadcast_object(units, run.dist)
    sums = all_reduce_sum({k: sums.get(k, 0.0) for k in {*units, *units.values()}}, run.dist, run.dist.device)
    out = {name: sums[name] / max(sums[unit], 1) for name, unit in units.items()}
    losses = [name for name in units if name in ("loss", "dpo", "sft")]
    if losses:
        out["loss"] = sum(out[name] for name in losses)
    return out


# -- finish --------------------------------------------------------------------------------------------------------
def export_state_dict(module: torch.nn.Module, model: Qwen2AudioForConditionalGeneration,
                      d: Dist) -> dict[str, torch.Tensor] | None:
    """The full model state (LoRA merged) on the first process; None on the others. Every process must call it."""
    state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not d.is_main:
        return None
    state = {k.removeprefix("model."): v for k, v in state.items()}
    return merge_lora_state_dict(state, lora_scalings(model))


def write_model(module: torch.nn.Module, model: Qwen2AudioForConditionalGeneration, config: TrainConfig, d: Dist,
                directory: Path) -> None:
    """The trained model, LoRA merged, in the Hugging Face layout (with tokenizer and preprocessor files)."""
    state = export_state_dict(module, model, d)
    if d.is_main:
        with torch.device("meta"):
            final = Qwen2AudioForConditionalGeneration(model.config)
        final.load_state_dict(state, assign=True)
        final.processor = model.processor
        final.hf_config = getattr(model, "hf_config", {})
        final.generation_config = getattr(model, "generation_config", None)
        dtype = config.checkpoint.final_dtype or (final.hf_config.get("torch_dtype") if final.hf_config else None)
        final.save_pretrained(directory, dtype=dtype)
    barrier(d)


def save_final(run: Run, directory: str | Path | None = None) -> Path | None:
    directory = Path(directory or run.out_dir / "final")
    write_model(run.module, run.model, run.config, run.dist, directory)
    if run.dist.is_main:
        run.writer.note(f"saved the final model to {directory}")
    return directory if run.dist.is_main else None


def export_checkpoint(config: TrainConfig, checkpoint: str | Path, directory: str | Path) -> Path:
    """The model a training checkpoint of `config`'s run holds, in the Hugging Face layout, without resuming the run
    (one process): to evaluate a run's checkpoints (a learning curve), or keep one that did better than the end."""
    d = init_distributed(config.distributed, config.device)
    prepared = prepare(config.model, config.train.seed)
    module = TokenLogProbs(prepared.model)
    load_model_weights(Path(checkpoint), module)
    write_model(module, prepared.model, config, d, Path(directory))
    return Path(directory)


def finish(run: Run) -> Path | None:
    cfg = run.config
    if cfg.data.validation and not cfg.train.eval_every:
        run.writer.log({"step": run.step, **{f"val/{k}": v for k, v in validate(run).items()}})
    if cfg.checkpoint.every and run.step % cfg.checkpoint.every and run.step == cfg.train.max_steps:
        checkpoint(run)
    path = save_final(run) if cfg.checkpoint.save_final else None
    run.writer.close()
    return path


def train(config: TrainConfig, hooks: list[Hook] = (), resume: str | bool | None = None) -> Run:
    """setup -> fit -> finish; returns the run (its `history` holds the metric lines)."""
    run = setup(config, hooks, resume)
    fit(run)
    finish(run)
    return run
