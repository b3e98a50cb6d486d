"""What a stage gives the shared loop: how a micro-batch is counted, and its loss.

A loss is returned as sums over the micro-batch (`Term`), each normalised by the count of its unit over the *whole*
optimizer step (all micro-batches, all processes), so that gradient accumulation and data parallelism give the
gradient of one big batch, whatever the split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..data import Batch


@dataclass
class Term:
    total: torch.Tensor  # a sum over the micro-batch (differentiable)
    unit: str  # the count that normalises it ("tokens", "pairs", ...)
    weight: float = 1.0


@dataclass(frozen=True)
class Stage:
    name: str
    counts: Callable[[Batch], dict[str, int]]
    loss: Callable  # (module, batch) -> (dict[str, Term], dict[str, tuple[float-tensor sum, unit]])
    preference_data: bool = False  # rows must be preference pairs
    task_prompt_format: str = "chat"  # how task rows are laid out when data.prompt_format is auto
