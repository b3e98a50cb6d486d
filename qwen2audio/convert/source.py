"""What every reader of a source checkpoint shares: its config.json refused unless of the right model type, and its
tensors under our names with every shape checked against the model the config describes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..checkpoint import (CONFIG_NAME, CheckpointError, check_complete, checkpoint_files, hf_to_ours, iter_safetensors,
                          ours_to_hf, read_config_json)

Log = Callable[[str], None]
Tensors = Iterable[tuple[Path, str, torch.Tensor]]  # (file, key in that file, tensor)
def read_hf_config(directory: Path, model_type: str, role: str) -> dict[str, Any]:
    """config.json of a Hugging Face directory, refused unless its model_type is `model_type`."""
    raw = read_config_json(directory)
    if raw.get("model_type") != model_type:
        raise CheckpointError(f"{directory / CONFIG_NAME}: model_type is {raw.get('model_type')!r}, but {role} must "
                              f"be a {model_type!r} checkpoint")
    return raw


def safetensors_tensors(directory: Path) -> Tensors:
    """Every tensor of a safetensors checkpoint directory (sharded or not), memory-mapped."""
    return ((file, key, t) for file in checkpoint_files(directory) for key, t in iter_safetensors(file))


def module_shapes(module: nn.Module, prefix: str) -> dict[str, torch.Size]:
    return {prefix + name: t.shape for name, t in module.state_dict().items()}


def checked_state(tensors: Tensors, to_hub: Callable[[str], str | None], expected: dict[str, torch.Size],
                  source: Path, source_name: Callable[[str], str] = lambda hub: hub,
                  optional: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """Tensors under our names, every shape checked against `expected` (our name -> shape).

    to_hub: key in the source -> hub name, or None for tensors that are not ours to read (Whisper's decoder).
    source_name: hub name -> key in the source, to name missing tensors the way the source spells them.
    """
    state: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for file, key, tensor in tensors:
        hub = to_hub(key)
        if hub is None:
            continue
        name = hf_to_ours(hub)
        if name not in expected:
            unexpected.append(f"{key} (in {file.name})")
            continue
        if tuple(tensor.shape) != tuple(expected[name]):
            raise CheckpointError(f"{file}: {key} has shape {list(tensor.shape)} but the config implies "
                                  f"{list(expected[name])}: the config does not match the weights")
        state[name] = tensor
    missing = sorted(set(expected) - set(state) - set(optional))
    check_complete(source, missing, unexpected, f"{source} does not hold the tensors its config describes:",
                   lambda name: source_name(ours_to_hf(name)))
    return state
