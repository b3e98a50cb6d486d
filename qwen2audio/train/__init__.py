"""Training: the three stages of the report (pre-training, SFT, DPO), LoRA or full fine-tuning, one process or many.

    from qwen2audio.train import load_config, train
    run = train(load_config("recipes/sft_lora.yaml", stage="sft"))

Command line: `qwen2audio train --stage pretrain|sft|dpo --config FILE.yaml [key=value ...] [--resume]`, or under
`torchrun --nproc_per_node N -m qwen2audio train ...` for FSDP2/DDP.
"""

from .config import (CheckpointConfig, DPOConfig, DistributedConfig, LoggingConfig, LoRAConfig, ModelConfig,
                     OptimConfig, PartConfig, TrainArgs, TrainConfig, from_dict, load_config, to_yaml)
from .lora import LoRALinear, adapters_disabled, apply_lora, merge_lora, merge_lora_state_dict
from .loop import Run, fit, finish, lr_factor, save_final, setup, train, validate

__all__ = [
    "CheckpointConfig", "DPOConfig", "DistributedConfig", "LoRAConfig", "LoRALinear", "LoggingConfig", "ModelConfig",
    "OptimConfig", "PartConfig", "Run", "TrainArgs", "TrainConfig", "adapters_disabled", "apply_lora", "finish",
    "fit", "from_dict", "load_config", "lr_factor", "merge_lora", "merge_lora_state_dict", "save_final", "setup",
    "to_yaml", "train", "validate",
]
