"""Qwen2-Audio's language model: a Qwen2 / Qwen2.5 checkpoint read as it is (tied or untied head), or a new Qwen2
initialised as transformers does, to be trained from scratch; and its embeddings grown when they lack rows for
Qwen2-Audio's special tokens (`fit_vocabulary`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import CONFIG_NAME, LANGUAGE_MODEL, CheckpointError
from ..model import Qwen2, Qwen2AudioConfig, TextConfig
from ..model.qwen2 import RMSNorm
from .source import Log, checked_state, module_shapes, read_hf_config, safetensors_tensors

VOCAB_MULTIPLE = 128  # Qwen pads its embedding tables to a multiple of 128 rows (151936, 152064, 156032)
# config.json keys of the LLM that describe its file, not the model: not carried into text_config
LLM_CONFIG_KEYS_NOT_KEPT = ("architectures", "transformers_version", "dtype", "torch_dtype", "_name_or_path",
                            "auto_map")
ROW_CHUNK = 8192  # rows per step when reducing an embedding table in float64
EMBED = "decoder.embed_tokens.weight"
LM_HEAD = "decoder.lm_head.weight"

# Qwen2 config.json fields that `--llm-config` may set; the vocabulary always comes from the tokenizer
LLM_CONFIG_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                     "intermediate_size", "tie_word_embeddings", "rope_theta", "max_position_embeddings",
                     "rms_norm_eps", "initializer_range", "head_dim")
LLM_CONFIG_REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
INITIALIZER_RANGE = 0.02  # Qwen2Config's initializer_range: the std of every initial weight matrix
LLM_SEED_OFFSET = 1  # the new LM draws from seed + 1, so that its numbers never repeat the projector's (seed)


def padded_rows(n: int, multiple: int = VOCAB_MULTIPLE) -> int:
    """`n` rounded up to a multiple of `multiple`: the rows of an embedding table for `n` tokens."""
    return -(-n // multiple) * multiple


def row_mean(weight: torch.Tensor) -> torch.Tensor:
    total = sum(chunk.double().sum(0) for chunk in weight.split(ROW_CHUNK))
    return (total / weight.shape[0]).to(weight.dtype)


def rms(weight: torch.Tensor) -> float:
    return (sum(chunk.double().pow(2).sum() for chunk in weight.split(ROW_CHUNK)) / weight.numel()).sqrt().item()


# -- a Qwen2 checkpoint -----------------------------------------------------------------------------------------------

def qwen2_text_config(path: Path) -> tuple[TextConfig, dict[str, Any]]:
    """The text config and raw config.json of a Qwen2ForCausalLM directory; sliding windows and quantised
    checkpoints are refused."""
    raw = read_hf_config(path, "qwen2", "the language model (--llm, Qwen2 or Qwen2.5)")
    if raw.get("use_sliding_window"):
        raise CheckpointError(f"{path / CONFIG_NAME}: use_sliding_window is set; Qwen2-Audio's decoder has full "
                              "attention only")
    if "quantization_config" in raw:
        raise CheckpointError(f"{path / CONFIG_NAME}: a quantised checkpoint ({raw['quantization_config']}); "
                              "build from the full-precision weights")
    try:
        text_config = {k: v for k, v in raw.items() if k not in LLM_CONFIG_KEYS_NOT_KEPT}
        return Qwen2AudioConfig.from_hf_dict({"text_config": text_config}).text, raw
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path / CONFIG_NAME}: {e}") from None


def qwen2_to_hub(key: str) -> str | None:
    return None if key.endswith("rotary_emb.inv_freq") else LANGUAGE_MODEL + key  # inv_freq: computed, not learnt


def read_qwen2(path: str | Path, log: Log = lambda line: None) -> tuple[TextConfig, dict[str, torch.Tensor], dict]:
    """A transformers `Qwen2ForCausalLM` directory (Qwen2 or Qwen2.5): its config, tensors under our names
    (`decoder.*`) and raw config.json. A head stored beside tied embeddings is dropped when it equals them; when it
    differs the weights are the truth, and the LM is kept untied."""
    path = Path(path)
    text, raw = qwen2_text_config(path)
    with torch.device("meta"):  # expect a head even when tied: some checkpoints store it anyway
        expected = module_shapes(Qwen2(dataclasses.replace(text, tie_embeddings=False)), "decoder.")
    state = checked_state(safetensors_tensors(path), qwen2_to_hub, expected, path,
                          optional=[LM_HEAD] if text.tie_embeddings else [],
                          source_name=lambda hub: hub[len(LANGUAGE_MODEL):])
    if text.tie_embeddings and LM_HEAD in state:
        stored = state.pop(LM_HEAD)
        if not torch.equal(stored, state[EMBED]):
            text.tie_embeddings = False
            state[LM_HEAD] = stored
            log(f"note       {path}: tie_word_embeddings is set but lm_head.weight differs from the embeddings: "
                "kept untied")
    return text, state, raw


def fit_vocabulary(state: dict[str, torch.Tensor], text: TextConfig, n_tokens: int, log: Log = lambda line: None):
    """Grow the embeddings (and an untied head) to hold `n_tokens` ids, rounded up to VOCAB_MULTIPLE rows, when the
    LLM has fewer. New rows are the mean of the existing rows (the mean-embedding init that transformers'
    `resize_token_embeddings` also starts from): new tokens begin as an average token the LM already handles, not as
    noise, and the head gives them an average logit."""
    if text.vocab_size >= n_tokens:
        return
    rows = padded_rows(n_tokens)
    for name in (EMBED, LM_HEAD):
        if name in state:
            old = state[name]
            state[name] = torch.cat([old, row_mean(old)[None].expand(rows - old.shape[0], -1)])
    log(f"vocab      the LLM has {text.vocab_size} rows, Qwen2-Audio's tokenizer needs {n_tokens}: resized to "
        f"{rows} (a multiple of {VOCAB_MULTIPLE}), new rows = the mean of the old ones")
    text.vocab_size = rows


# -- a new Qwen2, trained from scratch --------------------------------------------------------------------------------

def read_llm_spec(spec: str | Path | dict) -> dict[str, Any]:
    """`--llm-config`: a JSON file, inline JSON, or a dict of Qwen2 config.json fields (LLM_CONFIG_FIELDS)."""
    if isinstance(spec, dict):
        raw = spec
    else:
        text = str(spec)
        path = Path(text)
        if not text.lstrip().startswith("{") and not path.is_file():
            raise CheckpointError(f"--llm-config {text!r} is neither a JSON file nor inline JSON (e.g. "
                                  "'{\"hidden_size\": 256, ...}')")
        source = path if not text.lstrip().startswith("{") else "--llm-config"
        try:
            raw = json.loads(path.read_text() if source is path else text)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{source}: invalid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise CheckpointError(f"{source}: a JSON object of Qwen2 config fields is needed, got {type(raw).__name__}")
    if unknown := sorted(set(raw) - set(LLM_CONFIG_FIELDS)):
        hint = " (the vocabulary comes from the tokenizer)" if "vocab_size" in unknown else ""
        raise CheckpointError(f"--llm-config: unknown field(s) {', '.join(unknown)}{hint}; known: "
                              f"{', '.join(LLM_CONFIG_FIELDS)}")
    if missing := [f for f in LLM_CONFIG_REQUIRED if f not in raw]:
        raise CheckpointError(f"--llm-config: give {', '.join(missing)} (required: {', '.join(LLM_CONFIG_REQUIRED)})")
    return dict(raw)


def spec_text_config(fields: dict[str, Any], vocab_size: int) -> TextConfig:
    """The text config of `--llm-config`'s fields, every size a positive integer."""
    try:
        text = Qwen2AudioConfig.from_hf_dict({"text_config": {**fields, "vocab_size": vocab_size}}).text
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"--llm-config: {e}") from None
    for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "max_positions"):
        if not (isinstance(getattr(text, name), int) and getattr(text, name) > 0):
            raise CheckpointError(f"--llm-config: {name} must be a positive integer, got {getattr(text, name)!r}")
    return text


def init_like_transformers(model: nn.Module, std: float, generator: torch.Generator) -> None:
    """Every Linear weight and embedding N(0, std^2), biases 0, RMSNorm scales 1, drawn in module order."""
    with torch.no_grad():
        for module in model.modules():  # module order: the same draws every time
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.zero_()
            if isinstance(module, RMSNorm):
                module.weight.fill_(1.0)


def new_qwen2(spec: str | Path | dict, vocab_size: int, seed: int = 0) -> tuple[TextConfig, dict[str, torch.Tensor]]:
    """A Qwen2 LM initialised as transformers' Qwen2PreTrainedModel does: every Linear weight and the embeddings
    N(0, initializer_range^2), biases 0, RMSNorm scales 1; the head tied to the embeddings or drawn like them.
    Seeded: the same spec, vocabulary and seed give the same weights. Returns its config and tensors (`decoder.*`)."""
    fields = read_llm_spec(spec)
    text = spec_text_config(fields, vocab_size)
    std = float(fields.get("initializer_range", INITIALIZER_RANGE))
    text.extra["initializer_range"] = std
    model = Qwen2(text)
    init_like_transformers(model, std, torch.Generator().manual_seed(seed + LLM_SEED_OFFSET))
    return text, {"decoder." + name: t for name, t in model.state_dict().items()}
