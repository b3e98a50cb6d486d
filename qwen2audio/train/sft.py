"""Stage 2, supervised fine-tuning (and the loss of stage 1): next-token cross entropy on the supervised tokens,
averaged over all supervised tokens of the optimizer step."""

from __future__ import annotations

from ..data import Batch
from ..logprobs import batch_token_logps, supervised_tokens
from .stage import Stage, Term


def counts(batch: Batch) -> dict[str, int]:
    return {"tokens": int(supervised_tokens(batch.labels, batch.attention_mask).sum())}


def loss(module, batch: Batch):
    nll = -batch_token_logps(module, batch).sum()
    return {"loss": Term(nll, "tokens")}, {}


STAGE = Stage("sft", counts, loss, task_prompt_format="chat")
