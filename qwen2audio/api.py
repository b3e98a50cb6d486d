"""The public model class: the pure `Qwen2Audio` module plus what a user expects from transformers —
`from_pretrained`, `save_pretrained` and the matching `processor`."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from .checkpoint import DEFAULT_SHARD_SIZE, load_model, save_model
from .model import Qwen2Audio
from .processor import Processor


class Qwen2AudioForConditionalGeneration(Qwen2Audio):
    """`model(input_ids=, attention_mask=, input_features=, feature_attention_mask=, labels=None)` returns `.logits`
    (and `.loss` with labels), as transformers' class of the same name does."""

    processor: Processor | None = None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
                        dtype: torch.dtype | str | None = None) -> "Qwen2AudioForConditionalGeneration":
        model = load_model(path, device=device, dtype=dtype, model_cls=cls)
        model.processor = Processor.from_pretrained(path)
        if model.processor.tokenizer.audio_token_id != model.config.audio_token_id:
            raise ValueError(f"{path}: the tokenizer's <|AUDIO|> id {model.processor.tokenizer.audio_token_id} "
                             f"differs from config.json audio_token_index {model.config.audio_token_id}")
        return model

    def save_pretrained(self, path: str | os.PathLike, dtype: torch.dtype | str | None = None,
                        max_shard_size: int | str = DEFAULT_SHARD_SIZE, layout: str = "hub") -> Path:
        """config.json, generation_config.json, sharded safetensors (hub layout unless told otherwise), tokenizer
        and preprocessor files: what transformers and vLLM load."""
        directory = save_model(self, path, dtype=dtype, max_shard_bytes=parse_size(max_shard_size), layout=layout)
        (self.processor or Processor()).save_pretrained(directory)
        return directory

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def load(path: str | os.PathLike, device: str | torch.device = "cpu",
         dtype: torch.dtype | str | None = None) -> Qwen2AudioForConditionalGeneration:
    """Load a Hugging Face Qwen2-Audio checkpoint directory (Qwen2-Audio-7B, -7B-Instruct, or one of ours)."""
    return Qwen2AudioForConditionalGeneration.from_pretrained(path, device=device, dtype=dtype)


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(size: int | str) -> int:
    """Bytes from an int or a transformers-style size string ('5GB', '500MiB')."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", size, flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"cannot read size {size!r}: write e.g. 5GB, 500MB or 2GiB")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])
