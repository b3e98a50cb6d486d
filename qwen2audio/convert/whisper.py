"""Whisper's audio encoder, read from any of three on-disk formats into an `AudioEncoderConfig` and tensors under our
names (`audio_encoder.*`).

Qwen2-Audio's encoder names are Whisper's under another prefix (`model.encoder.*` -> `audio_tower.*`), so each reader
maps its keys to hub names and `checkpoint.hf_to_ours` does the rest. Whisper's decoder is not read.

The formats are a registry, `ENCODER_FORMATS`: each entry detects its format from a path and reads it, checked by
`checked_state`. A new format is one more entry.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..checkpoint import AUDIO_TOWER, CONFIG_NAME, CheckpointError, name_rules, rename
from ..model import AudioEncoder, AudioEncoderConfig
from .ctranslate2 import CT2_DTYPES, CT2_FLOAT_DTYPES, CT2_MODEL_FILE, CT2_SPEC, read_ct2_variables
from .source import checked_state, module_shapes, read_hf_config, safetensors_tensors

EncoderState = tuple[AudioEncoderConfig, dict[str, torch.Tensor]]

HF_WHISPER_ENCODER = ("model.encoder.", "encoder.")  # WhisperForConditionalGeneration, WhisperModel

# openai-whisper encoder name -> transformers' Whisper encoder name ('{}' = block index; .weight/.bias are kept)
OPENAI_TO_HF_WHISPER: dict[str, str] = {
    "encoder.conv1": "conv1",
    "encoder.conv2": "conv2",
    "encoder.positional_embedding": "embed_positions.weight",  # a buffer in openai-whisper
    "encoder.blocks.{}.attn.query": "layers.{}.self_attn.q_proj",
    "encoder.blocks.{}.attn.key": "layers.{}.self_attn.k_proj",
    "encoder.blocks.{}.attn.value": "layers.{}.self_attn.v_proj",
    "encoder.blocks.{}.attn.out": "layers.{}.self_attn.out_proj",
    "encoder.blocks.{}.attn_ln": "layers.{}.self_attn_layer_norm",
    "encoder.blocks.{}.mlp.0": "layers.{}.fc1",
    "encoder.blocks.{}.mlp.2": "layers.{}.fc2",
    "encoder.blocks.{}.mlp_ln": "layers.{}.final_layer_norm",
    "encoder.ln_post": "layer_norm",
}
OPENAI_RULES = name_rules(OPENAI_TO_HF_WHISPER)
OPENAI_NAMES = name_rules({hf: openai for openai, hf in OPENAI_TO_HF_WHISPER.items()})
OPENAI_MLP_RATIO = 4  # openai-whisper's MLP width is 4 * n_audio_state; its dims do not store it

# CTranslate2 variable name under `encoder/` -> transformers' Whisper encoder name ('{}' = layer index)
CT2_TO_HF_WHISPER: dict[str, str] = {
    "encoder/conv1/weight": "conv1.weight", "encoder/conv1/bias": "conv1.bias",
    "encoder/conv2/weight": "conv2.weight", "encoder/conv2/bias": "conv2.bias",
    "encoder/position_encodings/encodings": "embed_positions.weight",  # Whisper's sinusoids as stored (fp16)
    "encoder/layer_{}/self_attention/linear_1/weight": "layers.{}.self_attn.out_proj.weight",
    "encoder/layer_{}/self_attention/linear_1/bias": "layers.{}.self_attn.out_proj.bias",
    "encoder/layer_{}/self_attention/layer_norm/gamma": "layers.{}.self_attn_layer_norm.weight",
    "encoder/layer_{}/self_attention/layer_norm/beta": "layers.{}.self_attn_layer_norm.bias",
    "encoder/layer_{}/ffn/linear_0/weight": "layers.{}.fc1.weight",
    "encoder/layer_{}/ffn/linear_0/bias": "layers.{}.fc1.bias",
    "encoder/layer_{}/ffn/linear_1/weight": "layers.{}.fc2.weight",
    "encoder/layer_{}/ffn/linear_1/bias": "layers.{}.fc2.bias",
    "encoder/layer_{}/ffn/layer_norm/gamma": "layers.{}.final_layer_norm.weight",
    "encoder/layer_{}/ffn/layer_norm/beta": "layers.{}.final_layer_norm.bias",
    "encoder/layer_norm/gamma": "layer_norm.weight", "encoder/layer_norm/beta": "layer_norm.bias",
}
CT2_RULES = name_rules(CT2_TO_HF_WHISPER)
CT2_NAMES = name_rules({hf: ct2 for ct2, hf in CT2_TO_HF_WHISPER.items()})
CT2_FUSED_QKV = re.compile(r"^encoder/layer_(\d+)/self_attention/linear_0/(weight|bias)$")  # rows q | k | v
CT2_SPLIT_QKV = re.compile(r"^encoder/layer_(\d+)/self_attention/([qkv])_proj/(weight|bias)$")  # after the split
HF_QKV = re.compile(r"^layers\.(\d+)\.self_attn\.[qkv]_proj\.(weight|bias)$")
CT2_NUM_HEADS = "encoder/num_heads"


def encoder_shapes(config: AudioEncoderConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):
        return module_shapes(AudioEncoder(config), "audio_encoder.")


# -- transformers -----------------------------------------------------------------------------------------------------

def read_hf_whisper(path: Path) -> EncoderState:
    """A transformers `WhisperForConditionalGeneration` / `WhisperModel` directory (safetensors, sharded or not)."""
    raw = read_hf_config(path, "whisper", "the Whisper encoder (--encoder)")
    if raw.get("activation_function", "gelu") != "gelu":
        raise CheckpointError(f"{path / CONFIG_NAME}: activation_function {raw['activation_function']!r} is not "
                              "supported (Qwen2-Audio's encoder uses gelu)")
    fields = ("num_mel_bins", "d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim",
              "max_source_positions")
    if missing := [f for f in fields if f not in raw]:
        raise CheckpointError(f"{path / CONFIG_NAME}: no {', '.join(missing)}: not a complete Whisper config")
    config = AudioEncoderConfig(n_mels=raw["num_mel_bins"], dim=raw["d_model"], n_layers=raw["encoder_layers"],
                                n_heads=raw["encoder_attention_heads"], ffn_dim=raw["encoder_ffn_dim"],
                                n_positions=raw["max_source_positions"])

    def to_hub(key: str) -> str | None:
        prefix = next((p for p in HF_WHISPER_ENCODER if key.startswith(p)), None)
        return None if prefix is None else AUDIO_TOWER + key[len(prefix):]

    return config, checked_state(safetensors_tensors(path), to_hub, encoder_shapes(config), path,
                                 source_name=lambda hub: HF_WHISPER_ENCODER[0] + hub[len(AUDIO_TOWER):])


# -- openai-whisper ---------------------------------------------------------------------------------------------------

def load_openai_checkpoint(path: Path) -> dict[str, Any]:
    """openai-whisper's `.pt` file: `{"dims": {...}, "model_state_dict": {...}}`.

    Read with torch's restricted loader (`torch.load(weights_only=True)`): only tensors and plain containers are
    rebuilt, so unpickling cannot run code; a file that holds anything else is refused. Memory-mapped when the file
    is a zip archive (every `torch.save` since PyTorch 1.6, openai-whisper's downloads included).
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused by torch's weights-only loader (it holds objects other than tensors "
                              f"and plain containers, and unpickling them could run code): "
                              f"{str(e).strip().splitlines()[-1]}") from None
    except Exception as e:  # torch.load fails in many ways on a file that is not a checkpoint
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get("dims"), dict)
            and isinstance(ckpt.get("model_state_dict"), dict)):
        found = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: not an openai-whisper checkpoint: expected a dict with 'dims' and "
                              f"'model_state_dict', found {found}")
    return ckpt


def openai_to_hub(key: str) -> str | None:
    if not key.startswith("encoder."):
        return None  # the decoder
    return AUDIO_TOWER + (rename(key, OPENAI_RULES) or key)  # an unknown name stays unknown: reported


def read_openai_whisper(path: Path) -> EncoderState:
    """openai-whisper's `.pt` file (see `load_openai_checkpoint`)."""
    ckpt = load_openai_checkpoint(path)
    dims = ckpt["dims"]
    fields = ("n_mels", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer")
    if missing := [f for f in fields if f not in dims]:
        raise CheckpointError(f"{path}: dims lacks {', '.join(missing)}")
    config = AudioEncoderConfig(n_mels=dims["n_mels"], dim=dims["n_audio_state"], n_layers=dims["n_audio_layer"],
                                n_heads=dims["n_audio_head"], ffn_dim=OPENAI_MLP_RATIO * dims["n_audio_state"],
                                n_positions=dims["n_audio_ctx"])
    tensors = ((path, key, t) for key, t in ckpt["model_state_dict"].items())
    return config, checked_state(tensors, openai_to_hub, encoder_shapes(config), path,
                                 source_name=lambda hub: rename(hub[len(AUDIO_TOWER):], OPENAI_NAMES) or hub)


# -- CTranslate2 (faster-whisper) -------------------------------------------------------------------------------------

def ct2_encoder_config(variables: dict[str, Any], header: dict[str, Any], model_bin: Path) -> AudioEncoderConfig:
    """The encoder's shape, from its variables' shapes and the stored head count; a quantised model is refused."""
    quantised = sorted({name for name, t in header["dtypes"].items()
                        if name.startswith("encoder/") and name.endswith("weight") and t not in CT2_FLOAT_DTYPES})
    if quantised:
        raise CheckpointError(f"{model_bin}: a quantised CTranslate2 model ({quantised[0]} is "
                              f"{np.dtype(CT2_DTYPES[header['dtypes'][quantised[0]]]).name}); build from a float16 or "
                              "float32 conversion (ct2-transformers-converter without --quantization)")
    for name in ("encoder/conv1/weight", "encoder/position_encodings/encodings", CT2_NUM_HEADS):
        if name not in variables:
            raise CheckpointError(f"{model_bin}: no variable {name}: not a Whisper model this reader knows "
                                  f"({CT2_SPEC} revision {header['revision']})")
    dim, n_mels, _ = variables["encoder/conv1/weight"].shape
    layers = sorted({int(m.group(1)) for name in variables if (m := re.match(r"encoder/layer_(\d+)/", name))})
    fc1 = variables.get("encoder/layer_0/ffn/linear_0/weight")
    return AudioEncoderConfig(n_mels=int(n_mels), dim=int(dim), n_layers=len(layers),
                              n_heads=int(variables[CT2_NUM_HEADS].reshape(-1)[0]),
                              ffn_dim=int(fc1.shape[0]) if fc1 is not None else 4 * int(dim),
                              n_positions=int(variables["encoder/position_encodings/encodings"].shape[0]))


def ct2_tensors(variables: dict[str, Any], model_bin: Path) -> Iterator[tuple[Path, str, torch.Tensor]]:
    """The variables as tensors, each layer's fused q|k|v projection split into q_proj, k_proj and v_proj. The k
    bias, always zero in a converted Whisper, is dropped: a key bias adds the same q.b to every key's score and
    cannot change attention."""
    for name, value in variables.items():
        t = value if isinstance(value, torch.Tensor) else torch.from_numpy(value)
        fused = CT2_FUSED_QKV.match(name)
        if fused is None:
            yield model_bin, name, t
            continue
        layer, kind = fused.groups()
        if t.shape[0] % 3:
            raise CheckpointError(f"{model_bin}: {name} has {t.shape[0]} rows, not 3 x d (fused q|k|v)")
        for proj, part in zip(("q", "k", "v"), t.chunk(3)):
            if not (proj == "k" and kind == "bias"):
                yield model_bin, f"encoder/layer_{layer}/self_attention/{proj}_proj/{kind}", part


def ct2_to_hub(key: str) -> str | None:
    if key == CT2_NUM_HEADS or not key.startswith("encoder/"):
        return None  # the head count is config; the decoder is not read
    if split := CT2_SPLIT_QKV.match(key):
        return AUDIO_TOWER + f"layers.{split[1]}.self_attn.{split[2]}_proj.{split[3]}"
    return AUDIO_TOWER + (rename(key, CT2_RULES) or key)


def ct2_source_name(hub: str) -> str:
    name = hub[len(AUDIO_TOWER):]
    if m := HF_QKV.match(name):
        return f"encoder/layer_{m[1]}/self_attention/linear_0/{m[2]}"
    return rename(name, CT2_NAMES) or hub


def read_ct2_whisper(path: Path) -> EncoderState:
    """A CTranslate2 / faster-whisper Whisper directory (model.bin + config.json); the stored position table is used
    as it is."""
    model_bin = path / CT2_MODEL_FILE
    variables, header = read_ct2_variables(model_bin, lambda name: name.startswith("encoder/"))
    config = ct2_encoder_config(variables, header, model_bin)
    return config, checked_state(ct2_tensors(variables, model_bin), ct2_to_hub, encoder_shapes(config), model_bin,
                                 source_name=ct2_source_name)


# -- the registry -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EncoderFormat:
    """One on-disk Whisper format. `detect(path)` is cheap and never raises; `read(path)` returns the encoder's config
    and its tensors under our names (`audio_encoder.*`), or raises CheckpointError naming the file and key."""

    name: str
    looks_like: str  # shown when no format matches
    detect: Callable[[Path], bool]
    read: Callable[[Path], EncoderState]


def has_model_type(path: Path) -> bool:
    try:
        return path.is_dir() and "model_type" in json.loads((path / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return False


def is_ct2_dir(path: Path) -> bool:
    return path.is_dir() and (path / CT2_MODEL_FILE).is_file()


# Tried in order; the first whose detect() is true reads the path.
ENCODER_FORMATS: list[EncoderFormat] = [
    EncoderFormat("hf-whisper", "a transformers Whisper directory (config.json with model_type 'whisper' + "
                  "*.safetensors)", has_model_type, read_hf_whisper),
    EncoderFormat("openai-whisper", "an openai-whisper .pt file ({'dims', 'model_state_dict'})",
                  lambda p: p.is_file() and p.suffix in (".pt", ".pth"), read_openai_whisper),
    EncoderFormat("ct2-whisper", "a CTranslate2 / faster-whisper directory (model.bin + config.json)", is_ct2_dir,
                  read_ct2_whisper),
]


def encoder_format(path: Path) -> EncoderFormat:
    if not path.exists():
        raise CheckpointError(f"encoder checkpoint {path} does not exist")
    for fmt in ENCODER_FORMATS:
        if fmt.detect(path):
            return fmt
    raise CheckpointError(f"{path} is not a Whisper checkpoint this package reads; expected "
                          + "; or ".join(f.looks_like for f in ENCODER_FORMATS))


def read_encoder(path: str | Path) -> tuple[AudioEncoderConfig, dict[str, torch.Tensor], EncoderFormat]:
    fmt = encoder_format(Path(path))
    return (*fmt.read(Path(path)), fmt)
