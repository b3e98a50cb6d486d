"""The public model class: the pure `Qwen2Audio` module plus what a user expects from transformers —
`from_pretrained`, `save_pretrained`, the matching `processor`, `generate` — and `chat`/`transcribe` on top."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from .chat import chat as run_chat
from .checkpoint import DEFAULT_SHARD_SIZE, default_generation_config, save_model
from .compressed_checkpoint import load_hf_checkpoint, save_compressed
from .generate import GenerationConfig, Generator
from .gguf_checkpoint import is_gguf_directory, load_gguf
from .model import Qwen2Audio
from .processor import Processor
from .transcribe import transcribe as run_transcribe


class Qwen2AudioForConditionalGeneration(Qwen2Audio):
    """`model(input_ids=, attention_mask=, input_features=, feature_attention_mask=, labels=None)` returns `.logits`
    (and `.loss` with labels), as transformers' class of the same name does."""

    processor: Processor | None = None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
                        dtype: torch.dtype | str | None = None) -> "Qwen2AudioForConditionalGeneration":
        model, processor = load_gguf(path, device=device, dtype=dtype, model_cls=cls) if is_gguf_directory(path) \
            else (load_hf_checkpoint(path, device=device, dtype=dtype, model_cls=cls), Processor.from_pretrained(path))
        model.processor = processor
        if model.processor.tokenizer.audio_token_id != model.config.audio_token_id:
            raise ValueError(f"{path}: the tokenizer's <|AUDIO|> id {model.processor.tokenizer.audio_token_id} "
                             f"differs from config.json audio_token_index {model.config.audio_token_id}")
        return model

    def save_pretrained(self, path: str | os.PathLike, dtype: torch.dtype | str | None = None,
                        max_shard_size: int | str = DEFAULT_SHARD_SIZE, layout: str = "hub") -> Path:
        """config.json, generation_config.json, sharded safetensors (hub layout unless told otherwise), tokenizer
        and preprocessor files: what transformers and vLLM load. A quantised model (int8/int4) is written as
        compressed-tensors (`compressed_checkpoint.save_compressed`)."""
        save = save_compressed if getattr(self, "quantization", None) else save_model
        directory = save(self, path, dtype=dtype, max_shard_bytes=parse_size(max_shard_size), layout=layout)
        (self.processor or Processor()).save_pretrained(directory)
        return directory

    # -- generation ----------------------------------------------------------------------------------------------
    @property
    def generator(self) -> Generator:
        """The generation engine of this model (KV caches, compiled decode step), made on first use."""
        if self.__dict__.get("_generator") is None:
            self.__dict__["_generator"] = Generator(self)
        return self.__dict__["_generator"]

    @generator.setter
    def generator(self, generator: Generator) -> None:
        """Use another engine, e.g. `model.generator = Generator(model, compile=False)` (the CLI's --no-compile)."""
        self.__dict__["_generator"] = generator

    def chat(self, messages, stream: bool = False, stop=None, **options):
        """The assistant's reply to OpenAI-style `messages` (text and audio parts), or to each of a batch of
        conversations; `stream=True` yields text pieces. See `qwen2audio.chat.chat`."""
        return run_chat(self, messages, stream=stream, stop=stop, **options)

    def transcribe(self, audio, language: str | None = None, **options):
        """Speech to text for audio of any length (windows cut at pauses). See `qwen2audio.transcribe.transcribe`."""
        return run_transcribe(self, audio, language=language, **options)

    def generation_defaults(self) -> dict:
        """generation_config.json of the checkpoint (eos and pad ids come from there, never from constants)."""
        return getattr(self, "generation_config", None) or default_generation_config()

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 input_features: torch.Tensor | None = None, feature_attention_mask: torch.Tensor | None = None,
                 **options) -> torch.Tensor:
        """transformers' `generate`: the prompts followed by the new tokens, [B, T + n].

        options: max_new_tokens, do_sample, temperature, top_p, top_k, repetition_penalty, eos_token_id,
        pad_token_id, seed. Defaults come from the checkpoint's generation_config.json, except that decoding is
        greedy unless do_sample=True is passed (as with transformers when you pass do_sample=False explicitly).
        """
        config = self.generation_config_for(**options)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "input_features": input_features,
                  "feature_attention_mask": feature_attention_mask}
        return self.generator.generate({k: v for k, v in inputs.items() if v is not None}, config)

    def generation_config_for(self, **options) -> GenerationConfig:
        options.setdefault("do_sample", False)
        return GenerationConfig.from_kwargs(self.generation_defaults(), **options)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


# The embedded default: the tiny model this project trains on its own synthetic corpus (`make demo-model`), shipped
# inside the package so that every command runs offline. Every `--model` defaults to it.
DEMO_MODEL_DIR = Path(__file__).resolve().parent / "assets" / "demo-model"
DEMO_CLIPS_DIR = DEMO_MODEL_DIR.with_name("demo-clips")  # the test clips `make demo` plays to it, with clips.json


def default_model_path() -> Path:
    """The shipped demo model's directory; a clear error when this copy of the package lacks it."""
    if not (DEMO_MODEL_DIR / "config.json").is_file():
        raise FileNotFoundError(f"the embedded demo model is missing ({DEMO_MODEL_DIR}): pass --model DIR, or "
                                "rebuild it with `make demo-model`")
    return DEMO_MODEL_DIR


def load(path: str | os.PathLike, device: str | torch.device = "cpu",
         dtype: torch.dtype | str | None = None) -> Qwen2AudioForConditionalGeneration:
    """Load a Hugging Face Qwen2-Audio checkpoint directory (Qwen2-Audio-7B, -7B-Instruct, or one of ours), or a
    directory holding llama.cpp's GGUF pair (text model + `mmproj*` audio part)."""
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
