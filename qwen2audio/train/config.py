"""The training config: typed dataclasses that are the YAML schema.

    config = load_config("recipes/sft_lora.yaml", overrides=["optim.lr=2e-4", "data.batch_size=8"], stage="sft")

Every field is documented where it is declared. Unknown keys, wrong types and bad values raise a ValueError that
names the key (`model.lora.rank: expected int, got 'eight'`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from ..data.config import DataConfig, SourceConfig

STAGES = ("pretrain", "sft", "dpo")
PART_MODES = ("frozen", "full", "lora")
PRECISIONS = ("auto", "32-true", "bf16-mixed", "bf16-true")
PARTS = ("audio_encoder", "projector", "lm")  # lm = the Qwen2 decoder (embeddings, layers, norm, head)


@dataclass
class PartConfig:
    mode: str = "frozen"  # frozen | full (every weight trains) | lora (adapters on lora.targets)
    lr: float | None = None  # this part's learning rate (default optim.lr)

    def __post_init__(self):
        if self.mode not in PART_MODES:
            raise ValueError(f"mode must be one of {', '.join(PART_MODES)}, not {self.mode!r}")


@dataclass
class LoRAConfig:
    rank: int = 8
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                        "up_proj", "down_proj"])  # Linear names; "all-linear"


@dataclass
class ModelConfig:
    path: str | None = None  # a Hugging Face Qwen2-Audio checkpoint directory (its tokenizer comes along)
    preset: str | None = None  # or a preset name, randomly initialised (smoke runs)
    precision: str = "bf16-mixed"  # 32-true | bf16-mixed (fp32 weights, bf16 autocast) | bf16-true (frozen weights
    #                                stored in bf16 too; trained ones stay fp32) | auto (bf16-mixed or 32-true,
    #                                whichever multiplies faster here at the model's width: train.model.auto_precision)
    gradient_checkpointing: bool = False  # recompute each transformer layer in the backward pass
    audio_encoder: PartConfig = field(default_factory=PartConfig)
    projector: PartConfig = field(default_factory=lambda: PartConfig("full"))
    lm: PartConfig = field(default_factory=lambda: PartConfig("lora"))
    lora: LoRAConfig = field(default_factory=LoRAConfig)

    def __post_init__(self):
        if (self.path is None) == (self.preset is None):
            raise ValueError("give exactly one of model.path (a checkpoint) and model.preset")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")

    def parts(self) -> dict[str, PartConfig]:
        return {name: getattr(self, name) for name in PARTS}


@dataclass
class OptimConfig:
    lr: float = 1e-4  # peak learning rate (per-part lr overrides it)
    weight_decay: float = 0.0  # AdamW decay, on matrices only (not biases, norms)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 0  # linear warmup from 0
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at max_steps
    grad_clip: float | None = 1.0  # max global gradient norm (None: no clipping)


@dataclass
class DPOConfig:
    beta: float = 0.1
    loss: str = "sigmoid"  # sigmoid (DPO) | ipo
    label_smoothing: float = 0.0  # conservative DPO: assumed probability that a preference label is flipped
    sft_weight: float = 0.0  # adds sft_weight * (NLL of the chosen answers, per token)
    reference: str = "auto"  # auto (lora_disabled when only LoRA adapters train, else copy) | copy | lora_disabled
    #                          | precomputed (one pass over data.train before training; no second model after)

    def __post_init__(self):
        if self.loss not in ("sigmoid", "ipo"):
            raise ValueError(f"dpo.loss must be sigmoid or ipo, not {self.loss!r}")
        if self.reference not in ("auto", "copy", "lora_disabled", "precomputed"):
            raise ValueError(f"dpo.reference must be auto, copy, lora_disabled or precomputed, not {self.reference!r}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError("dpo.label_smoothing must be in [0, 0.5)")


@dataclass
class TrainArgs:
    max_steps: int = 1000  # optimizer steps
    grad_accum: int = 1  # micro-batches per process per optimizer step
    seed: int = 0
    deterministic: bool = True  # torch.use_deterministic_algorithms (warn only)
    eval_every: int = 0  # steps between validations (0: only at the end, when data.validation is set)
    eval_batches: int = 0  # micro-batches per validation (0: the whole validation set)
    log_every: int = 1  # steps between metric lines
    compile: bool = False  # torch.compile the LM decoder (dynamic shapes): ~1.9x the demo model's steps on a CPU,
    #                        after a few minutes of compiling on first use (cached on disk for the next runs)

    def __post_init__(self):
        if self.max_steps < 1 or self.grad_accum < 1:
            raise ValueError("train.max_steps and train.grad_accum must be >= 1")


@dataclass
class CheckpointConfig:
    every: int = 0  # steps between checkpoints (0: none during training)
    keep: int = 2  # checkpoints kept (oldest removed); 0 keeps them all
    save_final: bool = True  # write the final model (LoRA merged) in the hub layout to out_dir/final
    final_dtype: str | None = None  # float32 | bfloat16 | float16 (default: the base checkpoint's dtype)


@dataclass
class DistributedConfig:
    strategy: str = "auto"  # auto (fsdp when launched by torchrun with several processes) | fsdp | ddp | none
    backend: str = "auto"  # auto: nccl on GPUs, gloo on CPU

    def __post_init__(self):
        if self.strategy not in ("auto", "fsdp", "ddp", "none"):
            raise ValueError(f"distributed.strategy must be auto, fsdp, ddp or none, not {self.strategy!r}")


@dataclass
class LoggingConfig:
    progress: bool = True  # tqdm progress bar on the first process
    tensorboard: bool = True  # also write TensorBoard events when tensorboard is installed


@dataclass
class TrainConfig:
    stage: str = "sft"  # pretrain | sft | dpo
    out_dir: str = "runs/qwen2audio"  # checkpoints/, final/, metrics.jsonl, config.yaml
    device: str = "auto"  # auto (cuda:LOCAL_RANK when there are GPUs, else cpu) | cpu | cuda | cuda:N | mps
    model: ModelConfig = field(default_factory=lambda: ModelConfig(preset="tiny-random"))
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainArgs = field(default_factory=TrainArgs)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, not {self.stage!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- YAML -> dataclasses -------------------------------------------------------------------------------------------
def load_config(path: str | Path | None = None, overrides: list[str] = (), stage: str | None = None) -> TrainConfig:
    """Read a YAML recipe, apply `key.sub=value` overrides (values parsed as YAML), check every key and type."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: a config is a YAML mapping, got {type(raw).__name__}")
    for item in overrides:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"override {item!r}: write key.sub=value")
        _set(raw, key.strip().split("."), yaml.safe_load(value))
    if stage is not None:
        if raw.get("stage", stage) != stage:
            raise ValueError(f"the config says stage: {raw['stage']} but --stage {stage} was given")
        raw["stage"] = stage
    return from_dict(TrainConfig, raw)


def _set(tree: dict, keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        tree = tree.setdefault(k, {})
        if not isinstance(tree, dict):
            raise ValueError(f"override of {'.'.join(keys)}: {k} is not a section")
    tree[keys[-1]] = value


def from_dict(cls, raw: Any, where: str = ""):
    """Build dataclass `cls` from plain data, converting and checking each field by its annotation."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where or 'config'}: expected a mapping, got {raw!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ValueError(f"{where or 'config'}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}" if where else k) for k, v in raw.items()}
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise ValueError(f"{where or 'config'}: {e}") from None


def _convert(tp, value: Any, where: str):
    """`value` (from YAML or the command line) as the annotation `tp` says, or a ValueError naming `where`."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _convert_union(get_args(tp), value, where)
    if origin is list:
        return _convert_list(get_args(tp)[0], value, where)
    if origin is Literal:
        if value not in get_args(tp):
            raise ValueError(f"{where}: expected one of {get_args(tp)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        shorthand = {SourceConfig: "path", PartConfig: "mode"}.get(tp)  # `- data.jsonl`, `lm: lora`
        return from_dict(tp, {shorthand: value} if shorthand and isinstance(value, str) else value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected true or false, got {value!r}")
    if tp in (int, float):
        return _convert_number(tp, value, where)
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"{where}: unsupported annotation {tp}")


def _convert_union(args: tuple, value: Any, where: str):
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in (a for a in args if a is not type(None)):
        try:
            return _convert(arg, value, where)
        except ValueError as e:
            errors.append(str(e))
    raise ValueError(errors[0])


def _convert_list(item, value: Any, where: str) -> list:
    if not isinstance(value, list) and item is SourceConfig and isinstance(value, (dict, str)):
        value = [value]  # one source given alone
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list, got {value!r}")
    return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]


def _convert_number(tp, value: Any, where: str):
    if isinstance(value, bool):
        raise ValueError(f"{where}: expected {tp.__name__}, got {value!r}")
    try:
        converted = tp(value) if tp is float else int(str(value), 10) if isinstance(value, str) else value
    except (TypeError, ValueError):
        converted = None
    if tp is int and not isinstance(converted, int) or converted is None:
        raise ValueError(f"{where}: expected {tp.__name__}, got {value!r}")
    return converted


def to_yaml(config: TrainConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
