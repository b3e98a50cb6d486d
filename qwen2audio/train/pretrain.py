"""Stage 1, multi-task pre-training with natural-language prompts: task rows get an instruction drawn from their
task's pool (`qwen2audio.data.prompts`) and the loss falls on the answer only; the loss is SFT's."""

from __future__ import annotations

from dataclasses import replace

from .sft import STAGE as SFT

STAGE = replace(SFT, name="pretrain", task_prompt_format="base")
