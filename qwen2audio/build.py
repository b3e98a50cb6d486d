"""Build an untrained Qwen2-Audio from a Whisper checkpoint and a Qwen2 language model, as the report initialised
Qwen2-Audio from Whisper-large-v3 and a Qwen LM (issue 4).

    model = build_model("whisper-large-v3", "Qwen2.5-7B")    # Qwen2AudioForConditionalGeneration, untrained
    model.save_pretrained("q2a-untrained")                    # or: qwen2audio build --encoder ... --llm ... --out ...

Where each part comes from:
- audio encoder: Whisper's encoder (conv1, conv2, positions, layers). Whisper's final `layer_norm` becomes Qwen2-Audio's
  `layer_norm`, which runs after the 2x average pooling (Whisper applies it to the 1500 unpooled frames). Whisper's
  decoder is dropped. Qwen2-Audio's encoder names are Whisper's under another prefix (`model.encoder.*` ->
  `audio_tower.*`), so each reader maps to hub names and `checkpoint.hf_to_ours` does the rest.
- language model: the Qwen2 / Qwen2.5 checkpoint as it is (tied or untied head); the embeddings grow only when they
  lack rows for Qwen2-Audio's special tokens (`fit_vocabulary`).
- projector: new, seeded, scaled so that projected frames start at the LM's embedding scale (`init_projector`).
- tokenizer: Qwen2-Audio's, the bundled one (Qwen2.5's tokenizer has other special tokens at ids 151646+).

Whisper formats are a registry, `ENCODER_FORMATS`: each entry detects its format from a path and reads it into an
`AudioEncoderConfig` plus tensors under our names, checked by `checked_state`. A new format is one more entry.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from .api import Qwen2AudioForConditionalGeneration
from .checkpoint import (CONFIG_NAME, DEFAULT_SHARD_SIZE, DTYPE_NAMES, CheckpointError, checkpoint_dtype,
                         checkpoint_files, default_generation_config, hf_to_ours, iter_safetensors, name_rules,
                         ours_to_hf, rename)
from .model import AudioEncoder, AudioEncoderConfig, Qwen2, Qwen2AudioConfig, TextConfig
from .model.qwen2 import RMSNorm
from .processor import Processor
from .tokenizer import ASSETS_DIR, Tokenizer

Log = Callable[[str], None]
Tensors = Iterable[tuple[Path, str, torch.Tensor]]  # (file, key in that file, tensor)

AUDIO_TOWER = "audio_tower."  # hub prefix of the audio encoder; Whisper's encoder names follow it unchanged
HF_WHISPER_ENCODER = ("model.encoder.", "encoder.")  # WhisperForConditionalGeneration, WhisperModel
LANGUAGE_MODEL = "language_model."  # hub prefix of the LM; Qwen2ForCausalLM's names (model.*, lm_head.*) follow it

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
_OPENAI_RULES = name_rules(OPENAI_TO_HF_WHISPER)
_OPENAI_NAMES = name_rules({hf: openai for openai, hf in OPENAI_TO_HF_WHISPER.items()})
OPENAI_MLP_RATIO = 4  # openai-whisper's MLP width is 4 * n_audio_state; its dims do not store it

VOCAB_MULTIPLE = 128  # Qwen pads its embedding tables to a multiple of 128 rows (151936, 152064, 156032)
# config.json keys of the LLM that describe its file, not the model: not carried into text_config
LLM_CONFIG_KEYS_NOT_KEPT = ("architectures", "transformers_version", "dtype", "torch_dtype", "_name_or_path",
                            "auto_map")
ROW_CHUNK = 8192  # rows per step when reducing an embedding table in float64


# -- the checks every reader shares ---------------------------------------------------------------------------------

def read_hf_config(directory: Path, model_type: str, role: str) -> dict[str, Any]:
    """config.json of a Hugging Face directory, refused unless its model_type is `model_type`."""
    path = directory / CONFIG_NAME
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory; {role} takes a Hugging Face checkpoint directory")
    if not path.is_file():
        raise CheckpointError(f"{directory} has no {CONFIG_NAME}: not a Hugging Face checkpoint directory ({role})")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from None
    if raw.get("model_type") != model_type:
        raise CheckpointError(f"{path}: model_type is {raw.get('model_type')!r}, but {role} must be a "
                              f"{model_type!r} checkpoint")
    return raw


def module_shapes(module: nn.Module, prefix: str) -> dict[str, torch.Size]:
    return {prefix + name: t.shape for name, t in module.state_dict().items()}


def checked_state(tensors: Tensors, to_hub: Callable[[str], str | None], expected: dict[str, torch.Size],
                  source: Path, source_name: Callable[[str], str] = lambda hub: hub,
                  optional: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """Tensors under our names, every shape checked against `expected` (our name -> shape).

    to_hub: key in the source -> hub name, or None for tensors that are not ours to read (Whisper's decoder).
    source_name: hub name -> key in the source, to name missing tensors the way the source spells them.
    """
    state: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for file, key, tensor in tensors:
        hub = to_hub(key)
        if hub is None:
            continue
        name = hf_to_ours(hub)
        if name not in expected:
            unexpected.append(f"{key} (in {file.name})")
            continue
        if tuple(tensor.shape) != tuple(expected[name]):
            raise CheckpointError(f"{file}: {key} has shape {list(tensor.shape)} but the config implies "
                                  f"{list(expected[name])}: the config does not match the weights")
        state[name] = tensor
    missing = sorted(set(expected) - set(state) - set(optional))
    if missing or unexpected:
        lines = [f"{source} does not hold the tensors its config describes:"]
        if missing:
            lines.append(f"  missing ({len(missing)}): " + ", ".join(source_name(ours_to_hf(n)) for n in missing[:8])
                         + (" ..." if len(missing) > 8 else ""))
        if unexpected:
            lines.append(f"  unexpected ({len(unexpected)}): " + ", ".join(unexpected[:8]) +
                         (" ..." if len(unexpected) > 8 else ""))
        raise CheckpointError("\n".join(lines))
    return state


def encoder_shapes(config: AudioEncoderConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):
        return module_shapes(AudioEncoder(config), "audio_encoder.")


# -- Whisper formats ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EncoderFormat:
    """One on-disk Whisper format. `detect(path)` is cheap and never raises; `read(path)` returns the encoder's config
    and its tensors under our names (`audio_encoder.*`), or raises CheckpointError naming the file and key."""

    name: str
    looks_like: str  # shown when no format matches
    detect: Callable[[Path], bool]
    read: Callable[[Path], tuple[AudioEncoderConfig, dict[str, torch.Tensor]]]


def _has_model_type(path: Path) -> bool:
    try:
        return path.is_dir() and "model_type" in json.loads((path / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return False


def read_hf_whisper(path: Path) -> tuple[AudioEncoderConfig, dict[str, torch.Tensor]]:
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

    tensors = ((file, key, t) for file in checkpoint_files(path) for key, t in iter_safetensors(file))
    return config, checked_state(tensors, to_hub, encoder_shapes(config), path,
                                 source_name=lambda hub: HF_WHISPER_ENCODER[0] + hub[len(AUDIO_TOWER):])


def read_openai_whisper(path: Path) -> tuple[AudioEncoderConfig, dict[str, torch.Tensor]]:
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
    dims = ckpt["dims"]
    fields = ("n_mels", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer")
    if missing := [f for f in fields if f not in dims]:
        raise CheckpointError(f"{path}: dims lacks {', '.join(missing)}")
    config = AudioEncoderConfig(n_mels=dims["n_mels"], dim=dims["n_audio_state"], n_layers=dims["n_audio_layer"],
                                n_heads=dims["n_audio_head"], ffn_dim=OPENAI_MLP_RATIO * dims["n_audio_state"],
                                n_positions=dims["n_audio_ctx"])

    def to_hub(key: str) -> str | None:
        if not key.startswith("encoder."):
            return None  # the decoder
        return AUDIO_TOWER + (rename(key, _OPENAI_RULES) or key)  # an unknown name stays unknown: reported

    tensors = ((path, key, t) for key, t in ckpt["model_state_dict"].items())
    return config, checked_state(tensors, to_hub, encoder_shapes(config), path,
                                 source_name=lambda hub: rename(hub[len(AUDIO_TOWER):], _OPENAI_NAMES) or hub)


# CTranslate2 (faster-whisper) directories: model.bin + config.json (SPEC §7). The file is read with numpy, never with
# ctranslate2 itself. Variable name under `encoder/` -> transformers' Whisper encoder name ('{}' = layer index).
CT2_MODEL_FILE = "model.bin"
CT2_BINARY_VERSION = 6  # the layout read here (CTranslate2 3.x and 4.x write it)
CT2_SPEC = "WhisperSpec"
CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}  # DataType enum
CT2_FLOAT_DTYPES = (0, 4, 5)
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
_CT2_RULES = name_rules(CT2_TO_HF_WHISPER)
_CT2_NAMES = name_rules({hf: ct2 for ct2, hf in CT2_TO_HF_WHISPER.items()})
CT2_FUSED_QKV = re.compile(r"^encoder/layer_(\d+)/self_attention/linear_0/(weight|bias)$")  # rows q | k | v
CT2_NUM_HEADS = "encoder/num_heads"


class _Ct2File:
    """A cursor over model.bin's bytes that turns every short read into a CheckpointError naming the file."""

    def __init__(self, path: Path):
        self.path, self.data, self.pos = path, np.memmap(path, dtype=np.uint8, mode="r"), 0

    def take(self, n: int, what: str) -> np.ndarray:
        if self.pos + n > len(self.data):
            raise CheckpointError(f"{self.path}: truncated at byte {len(self.data)} while reading {what} (needs "
                                  f"{self.pos + n}); copy or convert the model again")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def uint(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what).tobytes())[0]

    def string(self, what: str) -> str:
        raw = self.take(self.uint("H", what), what).tobytes()
        if not raw.endswith(b"\0"):
            raise CheckpointError(f"{self.path}: {what} is not a NUL-terminated string at byte {self.pos}: the file "
                                  "is not a CTranslate2 model or is corrupt")
        return raw[:-1].decode("utf-8", errors="replace")


def read_ct2_variables(path: Path, wanted: Callable[[str], bool]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The variables of a CTranslate2 model.bin whose names pass `wanted` (each a copy, in its stored dtype; bfloat16
    as a torch tensor since numpy has none), and a header {version, spec, revision, dtypes: name -> DataType id}."""
    f = _Ct2File(path)
    version = f.uint("I", "the format version")
    if version != CT2_BINARY_VERSION:
        raise CheckpointError(f"{path}: CTranslate2 format version {version}, but this reader knows version "
                              f"{CT2_BINARY_VERSION} only: not a CTranslate2 model.bin, or convert it with CTranslate2 "
                              ">= 3 (ct2-transformers-converter)")
    spec = f.string("the spec name")
    revision = f.uint("I", "the spec revision")
    if spec != CT2_SPEC:
        raise CheckpointError(f"{path}: a CTranslate2 {spec!r} model, not a Whisper one ({CT2_SPEC})")
    variables, dtypes = {}, {}
    for i in range(f.uint("I", "the variable count")):
        name = f.string(f"the name of variable {i}")
        rank = f.uint("B", f"the rank of {name}")
        shape = [f.uint("I", f"the dimensions of {name}") for _ in range(rank)]
        type_id = f.uint("B", f"the dtype of {name}")
        n_bytes = f.uint("I", f"the size of {name}")
        raw = f.take(n_bytes, f"the data of {name}")
        if type_id not in CT2_DTYPES:
            raise CheckpointError(f"{path}: variable {name} has unknown dtype id {type_id}")
        dtypes[name] = type_id
        if not wanted(name):
            continue
        dtype = CT2_DTYPES[type_id]
        itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
        if n_bytes != int(np.prod(shape)) * itemsize:
            raise CheckpointError(f"{path}: variable {name} holds {n_bytes} bytes, but shape {shape} needs "
                                  f"{int(np.prod(shape)) * itemsize}: the file is corrupt")
        if dtype == "bfloat16":
            variables[name] = torch.from_numpy(raw.view(np.int16).reshape(shape).copy()).view(torch.bfloat16)
        else:
            variables[name] = raw.view(dtype).reshape(shape).copy()
    for _ in range(f.uint("I", "the alias count")):  # aliases share a stored variable (the tied decoder head)
        f.string("an alias"), f.string("an alias target")
    return variables, {"version": version, "spec": spec, "revision": revision, "dtypes": dtypes}


def _ct2_tensor(value) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.from_numpy(value)


def read_ct2_whisper(path: Path) -> tuple[AudioEncoderConfig, dict[str, torch.Tensor]]:
    """A CTranslate2 / faster-whisper Whisper directory (model.bin + config.json): the fused q|k|v projection of each
    layer is split (its k bias, always zero in a converted Whisper, is dropped: a key bias adds the same q.b to every
    key's score and cannot change attention); the stored position table is used as it is (SPEC §7)."""
    model_bin = path / CT2_MODEL_FILE
    variables, header = read_ct2_variables(model_bin, lambda name: name.startswith("encoder/"))
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
    config = AudioEncoderConfig(n_mels=int(n_mels), dim=int(dim), n_layers=len(layers),
                                n_heads=int(variables[CT2_NUM_HEADS].reshape(-1)[0]),
                                ffn_dim=int(fc1.shape[0]) if fc1 is not None else 4 * int(dim),
                                n_positions=int(variables["encoder/position_encodings/encodings"].shape[0]))

    def tensors():
        for name, value in variables.items():
            t = _ct2_tensor(value)
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

    def to_hub(key: str) -> str | None:
        if key == CT2_NUM_HEADS or not key.startswith("encoder/"):
            return None  # the head count is config; the decoder is not read
        split = re.match(r"^encoder/layer_(\d+)/self_attention/([qkv])_proj/(weight|bias)$", key)
        if split:
            return AUDIO_TOWER + f"layers.{split[1]}.self_attn.{split[2]}_proj.{split[3]}"
        return AUDIO_TOWER + (rename(key, _CT2_RULES) or key)

    def source_name(hub: str) -> str:
        name = hub[len(AUDIO_TOWER):]
        if m := re.match(r"^layers\.(\d+)\.self_attn\.[qkv]_proj\.(weight|bias)$", name):
            return f"encoder/layer_{m[1]}/self_attention/linear_0/{m[2]}"
        return rename(name, _CT2_NAMES) or hub

    return config, checked_state(tensors(), to_hub, encoder_shapes(config), model_bin, source_name=source_name)


def _is_ct2_dir(path: Path) -> bool:
    return path.is_dir() and (path / CT2_MODEL_FILE).is_file()


# Tried in order; the first whose detect() is true reads the path.
ENCODER_FORMATS: list[EncoderFormat] = [
    EncoderFormat("hf-whisper", "a transformers Whisper directory (config.json with model_type 'whisper' + "
                  "*.safetensors)", _has_model_type, read_hf_whisper),
    EncoderFormat("openai-whisper", "an openai-whisper .pt file ({'dims', 'model_state_dict'})",
                  lambda p: p.is_file() and p.suffix in (".pt", ".pth"), read_openai_whisper),
    EncoderFormat("ct2-whisper", "a CTranslate2 / faster-whisper directory (model.bin + config.json)", _is_ct2_dir,
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


# -- the language model ---------------------------------------------------------------------------------------------

def read_qwen2(path: str | Path, log: Log = lambda line: None) -> tuple[TextConfig, dict[str, torch.Tensor], dict]:
    """A transformers `Qwen2ForCausalLM` directory (Qwen2 or Qwen2.5): its config, tensors under our names
    (`decoder.*`) and raw config.json."""
    path = Path(path)
    raw = read_hf_config(path, "qwen2", "the language model (--llm, Qwen2 or Qwen2.5)")
    if raw.get("use_sliding_window"):
        raise CheckpointError(f"{path / CONFIG_NAME}: use_sliding_window is set; Qwen2-Audio's decoder has full "
                              "attention only")
    if "quantization_config" in raw:
        raise CheckpointError(f"{path / CONFIG_NAME}: a quantised checkpoint ({raw['quantization_config']}); "
                              "build from the full-precision weights")
    try:
        text_config = {k: v for k, v in raw.items() if k not in LLM_CONFIG_KEYS_NOT_KEPT}
        text = Qwen2AudioConfig.from_hf_dict({"text_config": text_config}).text
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path / CONFIG_NAME}: {e}") from None
    with torch.device("meta"):  # expect a head even when tied: some checkpoints store it anyway
        expected = module_shapes(Qwen2(dataclasses.replace(text, tie_embeddings=False)), "decoder.")

    def to_hub(key: str) -> str | None:
        return None if key.endswith("rotary_emb.inv_freq") else LANGUAGE_MODEL + key  # inv_freq: computed, not learnt

    tensors = ((file, key, t) for file in checkpoint_files(path) for key, t in iter_safetensors(file))
    head = "decoder.lm_head.weight"
    state = checked_state(tensors, to_hub, expected, path, optional=[head] if text.tie_embeddings else [],
                          source_name=lambda hub: hub[len(LANGUAGE_MODEL):])
    if text.tie_embeddings and head in state:
        stored = state.pop(head)
        if not torch.equal(stored, state["decoder.embed_tokens.weight"]):  # the weights are the truth
            text.tie_embeddings = False
            state[head] = stored
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
    rows = -(-n_tokens // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    for name in ("decoder.embed_tokens.weight", "decoder.lm_head.weight"):
        if name in state:
            old = state[name]
            state[name] = torch.cat([old, row_mean(old)[None].expand(rows - old.shape[0], -1)])
    log(f"vocab      the LLM has {text.vocab_size} rows, Qwen2-Audio's tokenizer needs {n_tokens}: resized to "
        f"{rows} (a multiple of {VOCAB_MULTIPLE}), new rows = the mean of the old ones")
    text.vocab_size = rows


def row_mean(weight: torch.Tensor) -> torch.Tensor:
    total = sum(chunk.double().sum(0) for chunk in weight.split(ROW_CHUNK))
    return (total / weight.shape[0]).to(weight.dtype)


def rms(weight: torch.Tensor) -> float:
    return (sum(chunk.double().pow(2).sum() for chunk in weight.split(ROW_CHUNK)) / weight.numel()).sqrt().item()


# -- a new language model, trained from scratch --------------------------------------------------------------------

# Qwen2 config.json fields that `--llm-config` may set; the vocabulary always comes from the tokenizer
LLM_CONFIG_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                     "intermediate_size", "tie_word_embeddings", "rope_theta", "max_position_embeddings",
                     "rms_norm_eps", "initializer_range", "head_dim")
LLM_CONFIG_REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
INITIALIZER_RANGE = 0.02  # Qwen2Config's initializer_range: the std of every initial weight matrix
LLM_SEED_OFFSET = 1  # the new LM draws from seed + 1, so that its numbers never repeat the projector's (seed)


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


def new_qwen2(spec: str | Path | dict, vocab_size: int, seed: int = 0) -> tuple[TextConfig, dict[str, torch.Tensor]]:
    """A Qwen2 LM initialised as transformers' Qwen2PreTrainedModel does: every Linear weight and the embeddings
    N(0, initializer_range^2), biases 0, RMSNorm scales 1; the head tied to the embeddings or drawn like them.
    Seeded: the same spec, vocabulary and seed give the same weights. Returns its config and tensors (`decoder.*`)."""
    fields = read_llm_spec(spec)
    try:
        text = Qwen2AudioConfig.from_hf_dict({"text_config": {**fields, "vocab_size": vocab_size}}).text
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"--llm-config: {e}") from None
    for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "max_positions"):
        if not (isinstance(getattr(text, name), int) and getattr(text, name) > 0):
            raise CheckpointError(f"--llm-config: {name} must be a positive integer, got {getattr(text, name)!r}")
    std = float(fields.get("initializer_range", INITIALIZER_RANGE))
    text.extra["initializer_range"] = std
    generator = torch.Generator().manual_seed(seed + LLM_SEED_OFFSET)
    model = Qwen2(text)
    with torch.no_grad():
        for module in model.modules():  # module order: the same draws every time
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.zero_()
            if isinstance(module, RMSNorm):
                module.weight.fill_(1.0)
    return text, {"decoder." + name: t for name, t in model.state_dict().items()}


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


def _read_vocab(directory: Path) -> tuple[dict[str, int], dict[int, str]] | None:
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
    theirs = _read_vocab(llm_dir)
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


# -- building -------------------------------------------------------------------------------------------------------

def build_model(encoder_path: str | Path, llm_path: str | Path | None = None, dtype: torch.dtype | str | None = None,
                seed: int = 0, log: Log = lambda line: None,
                llm_config: str | Path | dict | None = None) -> Qwen2AudioForConditionalGeneration:
    """An untrained Qwen2-Audio: Whisper's encoder (any format of ENCODER_FORMATS), a new projector (`init_projector`,
    seeded) and a Qwen2 LM: the checkpoint at `llm_path`, or a new one from the fields `llm_config` gives
    (`new_qwen2`, seeded, trained from scratch); with Qwen2-Audio's tokenizer and a preprocessor for Whisper's mel
    count.

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
    if llm_path is None:
        rows = -(-len(tokenizer) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
        text, text_state = new_qwen2(llm_config, rows, seed)
        raw: dict[str, Any] = {}
        log(f"llm        new Qwen2, seed {seed + LLM_SEED_OFFSET}: vocab {text.vocab_size} (the tokenizer's "
            f"{len(tokenizer)} tokens, a multiple of {VOCAB_MULTIPLE}), d {text.dim}, {text.n_layers} layers, "
            f"{text.n_heads}/{text.n_kv_heads} heads, ffn {text.ffn_dim}, "
            f"{'tied' if text.tie_embeddings else 'untied'}, rope {text.rope_theta:g}, eps {text.norm_eps:g}; "
            f"weights N(0, {text.extra['initializer_range']:g}^2), biases 0, norms 1 (as transformers initialises "
            "Qwen2): untrained, to be trained from scratch")
        log(f"tokenizer  Qwen2-Audio's (bundled, {len(tokenizer)} tokens)")
    else:
        text, text_state, raw = read_qwen2(llm_path, log)
        log(f"llm        qwen2 {llm_path}: vocab {text.vocab_size}, d {text.dim}, {text.n_layers} layers, "
            f"{text.n_heads}/{text.n_kv_heads} heads, ffn {text.ffn_dim}, "
            f"{'tied' if text.tie_embeddings else 'untied'}")
        for line in tokenizer_notes(Path(llm_path), tokenizer):
            log(line)

    n_bpe = tokenizer.backend.get_vocab_size(with_added_tokens=False)
    if text.vocab_size < n_bpe:
        log(f"warning    the LLM has {text.vocab_size} embedding rows, fewer than the {n_bpe} tokens of Qwen2's BPE: "
            "its ids cannot be Qwen2's, so its embeddings do not line up with Qwen2-Audio's tokenizer")

    projector_state, std = init_projector(audio_state["audio_encoder.final_norm.weight"],
                                          audio_state["audio_encoder.final_norm.bias"],
                                          text_state["decoder.embed_tokens.weight"], seed)
    log(f"projector  new Linear({audio.dim} -> {text.dim}), seed {seed}: weights N(0, {std:.3g}^2), bias 0, so "
        "projected frames start at the RMS of the LLM's embeddings")
    fit_vocabulary(text_state, text, len(tokenizer), log)

    config = Qwen2AudioConfig(audio=audio, text=text, audio_token_id=tokenizer.audio_token_id)
    target = DTYPE_NAMES[dtype] if isinstance(dtype, str) else dtype
    target = target or checkpoint_dtype(raw) or text_state["decoder.embed_tokens.weight"].dtype
    state = {name: t.to(target) if t.is_floating_point() else t
             for name, t in {**audio_state, **projector_state, **text_state}.items()}
    with torch.device("meta"):
        model = Qwen2AudioForConditionalGeneration(config)
    model.load_state_dict(state, assign=True)
    model.audio_encoder.positional_embedding.requires_grad_(False)
    model.processor = Processor(tokenizer, n_mels=audio.n_mels)
    model.generation_config = default_generation_config(tokenizer)
    return model.eval()


def check_out_dir(out: Path, sources: Iterable[Path], force: bool = False) -> None:
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
    dtype_name = next(n for n, d in DTYPE_NAMES.items() if d == model.dtype)
    log(f"wrote      {out}: {model.num_parameters():,} parameters, {dtype_name}, hub layout; untrained: the projector "
        "is new, train it (stage 1) before the model can listen")
    return out


def cmd_build(args) -> None:
    build(args.encoder, args.llm, args.out, dtype=args.dtype, seed=args.seed, force=args.force,
          max_shard_size=args.max_shard_size, llm_config=args.llm_config)


def build_args(p) -> None:
    p.add_argument("--encoder", required=True, help="Whisper: " + "; or ".join(f.looks_like for f in ENCODER_FORMATS))
    llm = p.add_mutually_exclusive_group(required=True)
    llm.add_argument("--llm", help="Qwen2 / Qwen2.5 Qwen2ForCausalLM directory (safetensors)")
    llm.add_argument("--llm-config", metavar="SPEC",
                     help="a new LM trained from scratch: a JSON file or inline JSON of Qwen2 config fields ("
                          + ", ".join(LLM_CONFIG_FIELDS) + "; required: " + ", ".join(LLM_CONFIG_REQUIRED) + ")")
    p.add_argument("--out", required=True, help="new directory for the Qwen2-Audio checkpoint")
    p.add_argument("--dtype", choices=sorted(DTYPE_NAMES), help="weights' dtype (default: the LLM's; float32 for "
                   "a new LM)")
    p.add_argument("--seed", type=int, default=0, help="seed of the new projector's (and a new LM's) initialisation")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    p.add_argument("--max-shard-size", default=str(DEFAULT_SHARD_SIZE), help="e.g. 5GB, 500MB")
