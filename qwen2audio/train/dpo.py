"""Stage 3, direct preference optimisation.

Chosen and rejected answers run in one forward (the batch holds the chosen rows, then the rejected ones, sharing
their audio, encoded once). Sequence log-probabilities are summed over the answer tokens; the reference gives the
same for the starting model: the model with its LoRA adapters off, a frozen copy, or a table computed in one pass over
the data before training (`PrecomputedReference`: no second model in memory while training). With h = (log π(y_c) - log π_ref(y_c)) - (log π(y_r) - log π_ref(y_r)):

    sigmoid (DPO):  -(1 - ε) log σ(β h) - ε log σ(-β h)        (ε = label_smoothing: conservative DPO)
    ipo:            (h - 1 / (2β))²  with log-probabilities averaged per token, as TRL computes IPO

plus `sft_weight` × the chosen answers' NLL per token. Logged: rewards β(log π - log π_ref) of the chosen and
rejected answers, their margin, and the preference accuracy (chosen reward > rejected reward).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..data import Batch
from ..logprobs import batch_token_logps, sequence_logps, supervised_tokens
from .config import DPOConfig
from .stage import Stage, Term


def counts(batch: Batch) -> dict[str, int]:
    n = batch.n_samples
    return {"pairs": n, "chosen_tokens": int(supervised_tokens(batch.labels[:n], batch.attention_mask[:n]).sum())}


def preference_loss(h: torch.Tensor, config: DPOConfig) -> torch.Tensor:
    """Per-pair loss of the log-ratio difference h."""
    if config.loss == "ipo":
        return (h - 1 / (2 * config.beta)) ** 2
    eps = config.label_smoothing
    return -(1 - eps) * F.logsigmoid(config.beta * h) - eps * F.logsigmoid(-config.beta * h)


Reference = Callable[[Batch, bool], tuple[torch.Tensor, torch.Tensor]]  # (batch, average) -> chosen, rejected


def model_reference(module) -> Reference:
    """A reference that runs `module` (TokenLogProbs, or a function of a batch giving token log-probs)."""
    return lambda batch, average: sequence_logps(module(batch), batch, average)


class PrecomputedReference:
    """Reference sequence log-probs looked up by row (file:line); `table` is filled before training."""

    def __init__(self):
        self.table: dict[str, tuple[float, float]] = {}

    def __call__(self, batch: Batch, average: bool) -> tuple[torch.Tensor, torch.Tensor]:
        missing = [r for r in batch.rows if r not in self.table]
        if missing:
            raise KeyError(f"no precomputed reference log-probs for {missing[0]}: the data changed since they were "
                           "computed")
        values = torch.tensor([self.table[r] for r in batch.rows], dtype=torch.float32,
                              device=batch.input_ids.device).reshape(-1, 2)
        return values[:, 0], values[:, 1]

    def add(self, batch: Batch, token_logps: torch.Tensor, average: bool) -> None:
        chosen, rejected = sequence_logps(token_logps, batch, average)
        for row, c, r in zip(batch.rows, chosen.tolist(), rejected.tolist()):
            self.table[row] = (c, r)


def loss(module, batch: Batch, config: DPOConfig, reference: Reference):
    average = config.loss == "ipo"
    token_logps = batch_token_logps(module, batch)
    chosen, rejected = sequence_logps(token_logps, batch, average)
    with torch.no_grad():
        ref_chosen, ref_rejected = reference(batch, average)
    h = (chosen - ref_chosen) - (rejected - ref_rejected)
    terms = {"dpo": Term(preference_loss(h, config).sum(), "pairs")}
    if config.sft_weight:
        n = batch.n_samples
        terms["sft"] = Term(-token_logps[:n].sum(), "chosen_tokens", config.sft_weight)
    reward_chosen = config.beta * (chosen - ref_chosen).detach()
    reward_rejected = config.beta * (rejected - ref_rejected).detach()
    metrics = {
        "rewards/chosen": (reward_chosen.sum(), "pairs"),
        "rewards/rejected": (reward_rejected.sum(), "pairs"),
        "rewards/margin": ((reward_chosen - reward_rejected).sum(), "pairs"),
        "rewards/accuracy": ((reward_chosen > reward_rejected).float().sum(), "pairs"),
        "logps/chosen": (chosen.detach().sum(), "pairs"),
        "logps/rejected": (rejected.detach().sum(), "pairs"),
    }
    return terms, metrics


def make_stage(config: DPOConfig, reference: Reference) -> Stage:
    return Stage("dpo", counts, lambda module, batch: loss(module, batch, config, reference), preference_data=True)
