"""What trains: the model loaded and prepared (frozen parts, LoRA, precision, gradient checkpointing). The module
that the loop runs, shards and differentiates is `logprobs.TokenLogProbs` around it."""

from __future__ import annotations

import copy
import functools
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..api import Qwen2AudioForConditionalGeneration
from ..model import Qwen2Audio, Qwen2AudioConfig
from ..processor import Processor
from .config import ModelConfig, PARTS
from .lora import apply_lora

INIT_STD = 0.02  # normal init of a preset's weights (smoke runs only; real runs start from a checkpoint)


@dataclass
class Prepared:
    model: Qwen2AudioForConditionalGeneration
    processor: Processor
    lora_layers: list[str]
    reference: Qwen2Audio | None = None  # a frozen copy of the starting weights (DPO), when asked for


def part_modules(model: Qwen2Audio) -> dict[str, nn.Module]:
    return {"audio_encoder": model.audio_encoder, "projector": model.projector, "lm": model.decoder}


AUTO_PRECISION_MARGIN = 0.8  # bf16 autocast is chosen only when it takes under this share of fp32's time


def auto_precision(dim: int, device: torch.device, rows: int = 2048, repeats: int = 5, warmup: int = 3) -> str:
    """What `precision: auto` becomes: bf16-mixed on a GPU that has bf16; on a CPU, whichever of bf16 autocast and
    fp32 runs a linear layer of the model's width (forward and backward, as a training step does) faster here.
    CPUs differ: with AMX bf16 is several times fp32; with AVX-512 BF16 alone it can be half of it (demo-model stage
    1: 1.45 steps/s in bf16-mixed against 2.4 in 32-true), so only a measurement can choose."""
    if device.type == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    if device.type != "cpu":
        return "32-true"
    dim = min(dim, 1024)  # wider: the same kernels' ratio, at seconds per try
    x = torch.randn(rows, dim)
    weight = torch.randn(4 * dim, dim, requires_grad=True)

    def seconds(autocast: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = F.linear(x, weight)
        y.float().square().mean().backward()
        return time.perf_counter() - start

    # Both warmed up, then timed in turn: a fresh process' first bf16 calls are slow (kernels made per shape), and
    # the machine's load drifts: timed one after the other, an AMX CPU can pick fp32 where bf16 is ~2x faster
    best = {True: float("inf"), False: float("inf")}
    for i in range(repeats + warmup):
        for autocast in (True, False):
            took = seconds(autocast)
            if i >= warmup:
                best[autocast] = min(best[autocast], took)
    return "bf16-mixed" if best[True] < AUTO_PRECISION_MARGIN * best[False] else "32-true"


def load_base(config: ModelConfig) -> tuple[Qwen2AudioForConditionalGeneration, Processor]:
    """The starting weights on the CPU: a checkpoint (memory-mapped), or a preset initialised at random."""
    dtype = torch.bfloat16 if config.precision == "bf16-true" else torch.float32  # auto is never bf16-true
    if config.path is not None:
        model = Qwen2AudioForConditionalGeneration.from_pretrained(config.path, dtype=dtype)
        return model, model.processor
    model = Qwen2AudioForConditionalGeneration(Qwen2AudioConfig.from_name(config.preset))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, INIT_STD)
    model.processor = Processor()
    return model.to(dtype), model.processor


def prepare(config: ModelConfig, seed: int, reference_copy: bool = False) -> Prepared:
    """Load, freeze what does not train, add LoRA adapters (seeded: every process draws the same), keep trained
    weights in fp32, and wrap layers for gradient checkpointing."""
    model, processor = load_base(config)
    model.requires_grad_(False)
    reference = frozen_copy(model) if reference_copy else None
    torch.manual_seed(seed)
    lora_layers = []
    for name, module in part_modules(model).items():
        mode = getattr(config, name).mode
        if mode == "full":
            module.requires_grad_(True)
        elif mode == "lora":
            lora_layers += apply_lora(module, config.lora.targets, config.lora.rank, config.lora.alpha,
                                      config.lora.dropout, prefix=f"{name}.")
    model.audio_encoder.positional_embedding.requires_grad_(False)  # saved, never trained (Whisper)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    if config.gradient_checkpointing:
        for layer in [*model.audio_encoder.layers, *model.decoder.layers]:
            layer.forward = functools.partial(checkpoint, layer.forward, use_reentrant=False)
    return Prepared(model.train(), processor, lora_layers, reference)


def part_of(name: str) -> str:
    """Which part a parameter name (of Qwen2Audio) belongs to."""
    head = name.split(".", 1)[0]
    return {"audio_encoder": "audio_encoder", "projector": "projector", "decoder": "lm"}[head]


def trainable_counts(model: nn.Module) -> dict[str, int]:
    """Trainable parameters per part, and in total."""
    counts = dict.fromkeys(PARTS, 0)
    for name, p in model.named_parameters():
        if p.requires_grad:
            counts[part_of(name)] += p.numel()
    return {**counts, "total": sum(counts.values())}


def frozen_copy(model: Qwen2Audio) -> Qwen2Audio:
    """A frozen copy to serve as the DPO reference."""
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    return ref.eval()


def has_only_adapters_trainable(model: nn.Module) -> bool:
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    return bool(trainable) and all(n.endswith((".lora_a", ".lora_b")) for n in trainable)

