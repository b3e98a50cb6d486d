"""LoRA: low-rank adapters on chosen Linear layers, merged into the weights for export.

`LoRALinear` *is* an nn.Linear (same `weight`/`bias` names, so checkpoint names do not change) plus `lora_a`
[rank, in] and `lora_b` [out, rank]; the output is `x W^T + b + dropout(x) A^T B^T * alpha/rank`. B starts at zero,
so a fresh adapter leaves the model unchanged; A is initialised as peft does (Kaiming-uniform, a=sqrt(5)).
peft itself is not used: it depends on transformers, which this package never needs at run time.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math

import torch
import torch.nn.functional as F
from torch import nn

LORA_PARAMS = ("lora_a", "lora_b")


class LoRALinear(nn.Linear):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias  # shared, not copied
        self.rank, self.scaling = rank, alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.lora_a = nn.Parameter(torch.empty(rank, self.in_features, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(self.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.adapter_enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if not self.adapter_enabled:
            return out
        update = F.linear(F.linear(self.dropout(x), self.lora_a.to(x.dtype)), self.lora_b.to(x.dtype))
        return out + update * self.scaling

    def merged_linear(self) -> nn.Linear:
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight = nn.Parameter(merge_weight(self.weight, self.lora_a, self.lora_b, self.scaling),
                                     requires_grad=False)
        linear.bias = self.bias
        return linear

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scaling={self.scaling:g}"


def merge_weight(weight, lora_a, lora_b, scaling: float) -> torch.Tensor:
    """W + (B @ A) * scaling, computed in fp32 and returned in W's dtype."""
    delta = (lora_b.detach().float() @ lora_a.detach().float()) * scaling
    return (weight.detach().float() + delta.to(weight.device)).to(weight.dtype)


def _matches(name: str, targets: list[str]) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return "all-linear" in targets or any(fnmatch.fnmatchcase(leaf, t) or fnmatch.fnmatchcase(name, t)
                                          for t in targets)


def apply_lora(module: nn.Module, targets: list[str], rank: int, alpha: float, dropout: float = 0.0,
               prefix: str = "") -> list[str]:
    """Replace each nn.Linear under `module` whose name (leaf or full, fnmatch patterns) is in `targets` by a
    LoRALinear; returns the replaced names. `targets` may be ["all-linear"]."""
    replaced = []
    for name, child in list(module.named_modules()):
        if type(child) is not nn.Linear or not name or not _matches(name, targets):
            continue
        parent_name, _, leaf = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, leaf, LoRALinear(child, rank, alpha, dropout))
        replaced.append(f"{prefix}{name}")
    if not replaced:
        raise ValueError(f"no Linear layer matches the LoRA targets {targets}")
    return replaced


def merge_lora(module: nn.Module) -> nn.Module:
    """Fold every adapter into its weight and put a plain nn.Linear back (in place); returns `module`."""
    for name, child in list(module.named_modules()):
        if isinstance(child, LoRALinear):
            parent_name, _, leaf = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, leaf, child.merged_linear())
    return module


def merge_lora_state_dict(state: dict[str, torch.Tensor], scaling: dict[str, float]) -> dict[str, torch.Tensor]:
    """The same on a state dict: `X.weight += X.lora_b @ X.lora_a * scaling[X]`, adapter keys dropped."""
    out = {k: v for k, v in state.items() if not k.endswith(tuple("." + p for p in LORA_PARAMS))}
    for prefix, s in scaling.items():
        out[f"{prefix}.weight"] = merge_weight(state[f"{prefix}.weight"], state[f"{prefix}.lora_a"],
                                               state[f"{prefix}.lora_b"], s)
    return out


def lora_scalings(module: nn.Module) -> dict[str, float]:
    return {name: m.scaling for name, m in module.named_modules() if isinstance(m, LoRALinear)}


@contextlib.contextmanager
def adapters_disabled(module: nn.Module):
    """Run the base model: every LoRALinear of `module` skips its adapter inside the block."""
    layers = [m for m in module.modules() if isinstance(m, LoRALinear)]
    for m in layers:
        m.adapter_enabled = False
    try:
        yield
    finally:
        for m in layers:
            m.adapter_enabled = True
