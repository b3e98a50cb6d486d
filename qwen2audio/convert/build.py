"""Build an untrained Qwen2-Audio from a Whisper checkpoint and a Qwen2 language model, as the report initialised
Qwen2-Audio from Whisper-large-v3 and a Qwen LM.

    model = build_model("whisper-large-v3", "Qwen2.5-7B")    # Qwen2AudioForConditionalGeneration, untrained
    model.save_pretrained("q2a-untrained")                    # or: qwen2audio build --encoder ... --llm ... --out ...

Where each part comes from:
- audio encoder: Whisper's encoder (conv1, conv2, positions, layers; `whisper.py`). Whisper's final `layer_norm`
  becomes Qwen2-Audio's `layer_norm`, which runs after the 2x average pooling (Whisper applies it to the 1500 unpooled
  frames). Whisper's decoder is dropped.
- language model: the Qwen2 / Qwen2.5 checkpoint as it is, or a new one trained from scratch (`lm.py`).
- projector: new, seeded, scaled so that projected frames start at the LM's embedding scale (`init_projector`).
- tokenizer: Qwen2-Audio's, the bundled one (Qwen2.5's tokenizer has other special tokens at ids 151646+).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import torch

from ..api import Qwen2AudioForConditionalGeneration
from ..checkpoint import (DEFAULT_SHARD_SIZE, CheckpointError, checkpoint_dtype, default_generation_config,
                          dtype_name, resolve_dtype)
from ..model import Qwen2AudioConfig, TextConfig
from ..processor import Processor
from ..tokenizer import ASSETS_DIR, Tokenizer
from .lm import EMBED, LLM_SEED_OFFSET, VOCAB_MULTIPLE, fit_vocabulary, new_qwen2, padded_rows, read_qwen2, rms
from .source import Log
from .whisper import read_encoder

LanguageModel = tuple[TextConfig, dict[str, torch.Tensor], dict[str, Any]]  # config, tensors, raw config.json


# -- the new parts ----------------------------------------------------------------------------------------------------

def init_projector(norm_weight: torch.Tensor, norm_bias: torch.Tensor, embeddings: torch.Tensor,
                   seed: int = 0) -> tuple[dict[str, torch.Tensor], float]:
    """A new projector Linear(audio dim -> text dim) whose outputs start at the RMS of the LM's token embeddings.

    Its input leaves the encoder's final LayerNorm, so channel i is about gamma_i * z + beta_i with z of zero mean
    and unit variance, and E|x|^2 ~ sum(gamma^2 + beta^2). With W ~ N(0, s^2) and b = 0 each output has variance
    s^2 E|x|^2; s = rms(embeddings) / sqrt(sum(gamma^2 + beta^2)) makes audio frames look, in scale, like the token
    embeddings they replace. nn.Linear's default (std 1/sqrt(3 d_in)) would make them about 0.6 * rms(x), many
    times the scale of embeddings initialised at std 0.02 (Qwen2's initializer_range): audio would swamp the
    residual stream in the first steps.
    Data-free and seeded: the same inputs and seed give the same projector. Returns (tensors, s).
    """
    energy = (norm_weight.double().pow(2) + norm_bias.double().pow(2)).sum().item()
    std = rms(embeddings) / max(energy, 1e-12) ** 0.5
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(embeddings.shape[1], norm_weight.shape[0], generator=generator) * std
    return {"projector.linear.weight": weight, "projector.linear.bias": torch.zeros(embeddings.shape[1])}, std


def read_tokenizer_vocab(directory: Path) -> tuple[dict[str, int], dict[int, str]] | None:
    """The ordinary tokens (vocab.json, or tokenizer.json's model.vocab) and the added tokens by id of a tokenizer
    directory; None when it holds no tokenizer files."""
    config, full = directory / "tokenizer_config.json", directory / "tokenizer.json"
    vocab = json.loads((directory / "vocab.json").read_text()) if (directory / "vocab.json").is_file() else None
    added: dict[int, str] = {}
    if full.is_file():
        data = json.loads(full.read_text())
        vocab = vocab if vocab is not None else data.get("model", {}).get("vocab")
        added.update({t["id"]: t["content"] for t in data.get("added_tokens", [])})
    if config.is_file():
        decoder = json.loads(config.read_text()).get("added_tokens_decoder", {})
        added.update({int(i): t["content"] for i, t in decoder.items()})
    return None if vocab is None and not added else (vocab or {}, added)


def tokenizer_notes(llm_dir: Path, tokenizer: Tokenizer) -> list[str]:
    """What the switch to Qwen2-Audio's tokenizer means for the LLM's token ids, one line each."""
    ours = {i: t for i, t in tokenizer.backend.get_added_tokens_decoder().items()}
    lines = [f"tokenizer  Qwen2-Audio's (bundled, {len(tokenizer)} tokens): "
             + ", ".join(f"{i} {t.content}" for i, t in sorted(ours.items()))]
    theirs = read_tokenizer_vocab(llm_dir)
    if theirs is None:
        lines.append(f"note       {llm_dir} has no tokenizer files: its ids are taken to be Qwen2's")
        return lines
    vocab, added = theirs
    if vocab:
        bpe = json.loads((ASSETS_DIR / "vocab.json").read_text())
        differ = sum(vocab.get(token) != i for token, i in bpe.items())
        if differ:
            lines.append(f"warning    the LLM's vocabulary differs from Qwen2's BPE in {differ} of {len(bpe)} entries: "
                         "its embeddings do not line up with Qwen2-Audio's tokenizer")
    changed = [f"{i} {added.get(i, '(none)')} -> {t.content}" for i, t in sorted(ours.items())
               if added.get(i) != t.content]
    if changed:
        lines.append("note       the LLM's tokenizer had other tokens at these ids (their embedding rows are kept, "
                     "and learn the new tokens in training): " + ", ".join(changed))
    else:
        lines.append("note       the LLM's tokenizer has the same special tokens")
    return lines


# -- building ---------------------------------------------------------------------------------------------------------

def language_model(llm_path: str | Path | None, llm_config: str | Path | dict | None, tokenizer: Tokenizer,
                   seed: int, log: Log) -> LanguageModel:
    """The checkpoint at `llm_path`, or a new Qwen2 from the fields `llm_config` gives, with a log of each."""
    if llm_path is None:
        text, state = new_qwen2(llm_config, padded_rows(len(tokenizer)), seed)
        log(f"llm        new Qwen2, seed {seed + LLM_SEED_OFFSET}: vocab {text.vocab_size} (the tokenizer's "
            f"{len(tokenizer)} tokens, a multiple of {VOCAB_MULTIPLE}), d {text.dim}, {text.n_layers} layers, "
            f"{text.n_heads}/{text.n_kv_heads} heads, ffn {text.ffn_dim}, "
            f"{'tied' if text.tie_embeddings else 'untied'}, rope {text.rope_theta:g}, eps {text.norm_eps:g}; "
            f"weights N(0, {text.extra['initializer_range']:g}^2), biases 0, norms 1 (as transformers initialises "
            "Qwen2): untrained, to be trained from scratch")
        log(f"tokenizer  Qwen2-Audio's (bundled, {len(tokenizer)} tokens)")
        return text, state, {}
    text, state, raw = read_qwen2(llm_path, log)
    log(f"llm        qwen2 {llm_path}: vocab {text.vocab_size}, d {text.dim}, {text.n_layers} layers, "
        f"{text.n_heads}/{text.n_kv_heads} heads, ffn {text.ffn_dim}, "
        f"{'tied' if text.tie_embeddings else 'untied'}")
    for line in tokenizer_notes(Path(llm_path), tokenizer):
        log(line)
    return text, state, raw


def assemble(config: Qwen2AudioConfig, state: dict[str, torch.Tensor], dtype: torch.dtype,
             tokenizer: Tokenizer) -> Qwen2AudioForConditionalGeneration:
    """The model of `config` holding `state` (floating tensors in `dtype`), with a processor for its mel count and
    the tokenizer's generation config."""
    state = {name: t.to(dtype) if t.is_floating_point() else t for name, t in state.items()}
    with torch.device("meta"):
        model = Qwen2AudioForConditionalGeneration(config)
    model.load_state_dict(state, assign=True)
    model.audio_encoder.positional_embedding.requires_grad_(False)
    model.processor = Processor(tokenizer, n_mels=config.audio.n_mels)
    model.generation_config = default_generation_config(tokenizer)
    return model.eval()


def build_model(encoder_path: str | Path, llm_path: str | Path | None = None, dtype: torch.dtype | str | None = None,
                seed: int = 0, log: Log = lambda line: None,
                llm_config: str | Path | dict | None = None) -> Qwen2AudioForConditionalGeneration:
    """An untrained Qwen2-Audio: Whisper's encoder (any format of whisper.ENCODER_FORMATS), a new projector
    (`init_projector`, seeded) and a Qwen2 LM: the checkpoint at `llm_path`, or a new one from the fields `llm_config`
    gives (`lm.new_qwen2`, seeded, trained from scratch); with Qwen2-Audio's tokenizer and a preprocessor for
    Whisper's mel count.

    dtype: of every weight; None takes the LLM checkpoint's (float32 for a new LM). `log` receives one line per
    decision made. Tensors stay memory-mapped views of the source files where their dtype already fits, so building
    takes about one copy of the weights.
    """
    if (llm_path is None) == (llm_config is None):
        raise CheckpointError("give the language model either as a checkpoint (--llm) or as a config to train from "
                              "scratch (--llm-config): exactly one of the two")
    audio, audio_state, fmt = read_encoder(encoder_path)
    log(f"encoder    {fmt.name} {encoder_path}: {audio.n_mels} mels, d {audio.dim}, {audio.n_layers} layers, "
        f"{audio.n_heads} heads, ffn {audio.ffn_dim}; Whisper's final layer_norm now follows the 2x pooling")
    tokenizer = Tokenizer.from_pretrained()
    text, text_state, raw = language_model(llm_path, llm_config, tokenizer, seed, log)
    n_bpe = tokenizer.backend.get_vocab_size(with_added_tokens=False)
    if text.vocab_size < n_bpe:
        log(f"warning    the LLM has {text.vocab_size} embedding rows, fewer than the {n_bpe} tokens of Qwen2's BPE: "
            "its ids cannot be Qwen2's, so its embeddings do not line up with Qwen2-Audio's tokenizer")
    projector_state, std = init_projector(audio_state["audio_encoder.final_norm.weight"],
                                          audio_state["audio_encoder.final_norm.bias"], text_state[EMBED], seed)
    log(f"projector  new Linear({audio.dim} -> {text.dim}), seed {seed}: weights N(0, {std:.3g}^2), bias 0, so "
        "projected frames start at the RMS of the LLM's embeddings")
    fit_vocabulary(text_state, text, len(tokenizer), log)
    config = Qwen2AudioConfig(audio=audio, text=text, audio_token_id=tokenizer.audio_token_id)
    target = resolve_dtype(dtype) or checkpoint_dtype(raw) or text_state[EMBED].dtype
    return assemble(config, {**audio_state, **projector_state, **text_state}, target, tokenizer)


def check_out_dir(out: Path, sources: Iterable[Path], force: bool = False) -> None:
    """Refuse to write a new checkpoint over one of its sources, over a file, or into a non-empty directory unless
    `force`."""
    if any(out.resolve() == Path(s).resolve() for s in sources):
        raise CheckpointError(f"--out {out} is one of the source checkpoints; write the new model elsewhere")
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"--out {out} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise CheckpointError(f"--out {out} is not empty; choose a new directory, or pass --force to write over it")


def build(encoder_path: str | Path, llm_path: str | Path | None, out: str | Path,
          dtype: torch.dtype | str | None = None, seed: int = 0, force: bool = False,
          max_shard_size: int | str = DEFAULT_SHARD_SIZE, log: Log = print,
          llm_config: str | Path | dict | None = None) -> Path:
    """`build_model`, then save it in the hub layout (weights, config, generation config, tokenizer, preprocessor)."""
    out = Path(out)
    check_out_dir(out, [Path(encoder_path)] + ([Path(llm_path)] if llm_path is not None else []), force)
    model = build_model(encoder_path, llm_path, dtype=dtype, seed=seed, log=log, llm_config=llm_config)
    model.save_pretrained(out, max_shard_size=max_shard_size)
    log(f"wrote      {out}: {model.num_parameters():,} parameters, {dtype_name(model.dtype)}, hub layout; untrained: "
        "the projector is new, train it (stage 1) before the model can listen")
    return out
