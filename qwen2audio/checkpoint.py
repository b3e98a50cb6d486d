"""Hugging Face checkpoints: the only module that knows the names on disk.

Reading: `config.json` + safetensors (one file, or shards with `model.safetensors.index.json`), in the hub layout
(`audio_tower.*`, `language_model.model.*`) or the transformers >= 5.10 layout (`model.audio_tower.*`,
`model.language_model.*`, `lm_head.*`). The model is built on the meta device and each tensor is a view of the
memory-mapped file (copied only when the dtype or device changes), so loading takes about one copy of the weights.
Pickle files are never opened.

Writing: the hub layout, sharded, each file written to a temporary name, fsynced and renamed, so a crash never
leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import struct
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors.torch import save_file

from .files import atomic_write, atomic_write_json
from .model import Qwen2Audio, Qwen2AudioConfig
from .tokenizer import ENDOFTEXT, IM_END, SPECIAL_TOKENS, Tokenizer

CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_SHARD_SIZE = 5 * 1024**3  # bytes per shard, as the hub checkpoints use
AUDIO_TOWER = "audio_tower."  # hub prefix of the audio encoder: Whisper's encoder names follow it unchanged
LANGUAGE_MODEL = "language_model."  # hub prefix of the LM: Qwen2ForCausalLM's names (model.*, lm_head.*) follow it

# Hub name -> our name, per module ('{}' = layer index). A parameter keeps its suffix (.weight/.bias) unless the
# entry names the full parameter. Used for loading and, inverted, for saving.
HF_TO_OURS: dict[str, str] = {
    "audio_tower.conv1": "audio_encoder.conv1",
    "audio_tower.conv2": "audio_encoder.conv2",
    "audio_tower.embed_positions.weight": "audio_encoder.positional_embedding",
    "audio_tower.layers.{}.self_attn.q_proj": "audio_encoder.layers.{}.attn.q_proj",
    "audio_tower.layers.{}.self_attn.k_proj": "audio_encoder.layers.{}.attn.k_proj",
    "audio_tower.layers.{}.self_attn.v_proj": "audio_encoder.layers.{}.attn.v_proj",
    "audio_tower.layers.{}.self_attn.out_proj": "audio_encoder.layers.{}.attn.out_proj",
    "audio_tower.layers.{}.self_attn_layer_norm": "audio_encoder.layers.{}.attn_norm",
    "audio_tower.layers.{}.final_layer_norm": "audio_encoder.layers.{}.mlp_norm",
    "audio_tower.layers.{}.fc1": "audio_encoder.layers.{}.fc1",
    "audio_tower.layers.{}.fc2": "audio_encoder.layers.{}.fc2",
    "audio_tower.layer_norm": "audio_encoder.final_norm",
    "multi_modal_projector.linear": "projector.linear",
    "language_model.model.embed_tokens": "decoder.embed_tokens",
    "language_model.model.layers.{}.self_attn.q_proj": "decoder.layers.{}.attn.q_proj",
    "language_model.model.layers.{}.self_attn.k_proj": "decoder.layers.{}.attn.k_proj",
    "language_model.model.layers.{}.self_attn.v_proj": "decoder.layers.{}.attn.v_proj",
    "language_model.model.layers.{}.self_attn.o_proj": "decoder.layers.{}.attn.o_proj",
    "language_model.model.layers.{}.mlp.gate_proj": "decoder.layers.{}.mlp.gate_proj",
    "language_model.model.layers.{}.mlp.up_proj": "decoder.layers.{}.mlp.up_proj",
    "language_model.model.layers.{}.mlp.down_proj": "decoder.layers.{}.mlp.down_proj",
    "language_model.model.layers.{}.input_layernorm": "decoder.layers.{}.attn_norm",
    "language_model.model.layers.{}.post_attention_layernorm": "decoder.layers.{}.mlp_norm",
    "language_model.model.norm": "decoder.norm",
    "language_model.lm_head": "decoder.lm_head",
}

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or written; the message names the file or key and what to do."""


# -- names --------------------------------------------------------------------------------------------------------

def name_rules(table: dict[str, str]) -> list[tuple[re.Pattern, str]]:
    """Compile a {source template: target template} table ('{}' = a layer index) for `rename`."""
    return [(re.compile("^" + re.escape(source).replace(r"\{\}", r"(\d+)") + "$"), target)
            for source, target in table.items()]


_LOAD_RULES = name_rules(HF_TO_OURS)
_SAVE_RULES = name_rules({ours: hf for hf, ours in HF_TO_OURS.items()})


def rename(name: str, rules: list[tuple[re.Pattern, str]]) -> str | None:
    """Apply the first matching rule to a full parameter name, or to its module path keeping the suffix."""
    for full in (True, False):  # a full-parameter entry first, then module + suffix
        module, suffix = (name, "") if full else (name.rpartition(".")[0], "." + name.rpartition(".")[2])
        for pattern, target in rules:
            m = pattern.match(module)
            if m:
                return target.replace("{}", m.group(1)) + suffix if m.groups() else target + suffix
    return None


def to_hub_name(key: str) -> str:
    """Any accepted on-disk layout -> the hub layout."""
    if key.startswith("model."):  # transformers >= 5.10 in-memory layout
        key = key[len("model."):]
    if key.startswith("lm_head."):
        return "language_model." + key
    if key.startswith("language_model."):
        rest = key[len("language_model."):]
        while rest.startswith("model."):  # 'model.' once in the hub layout; some 5.12 saves wrote it twice
            rest = rest[len("model."):]
        return "language_model." + (rest if rest.startswith("lm_head.") else "model." + rest)
    return key


def hf_to_ours(key: str) -> str | None:
    return rename(to_hub_name(key), _LOAD_RULES)


def ours_to_hf(name: str) -> str:
    hub = rename(name, _SAVE_RULES)
    if hub is None:
        raise CheckpointError(f"parameter {name!r} has no checkpoint name (add it to checkpoint.HF_TO_OURS)")
    return hub


# -- reading safetensors ---------------------------------------------------------------------------------------

def read_safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a .safetensors file and where its data begins; checks that every tensor fits the file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path}: {size} bytes, not a safetensors file (truncated or empty)")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8:
            raise CheckpointError(f"{path}: header of {n} bytes does not fit a {size}-byte file: the file is "
                                  "truncated or not safetensors; download or copy it again")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: unreadable safetensors header ({e}); the file is corrupt") from None
    header.pop("__metadata__", None)
    data_size = size - 8 - n
    for key, info in header.items():
        begin, end = info["data_offsets"]
        if end > data_size:
            raise CheckpointError(f"{path}: tensor {key!r} ends at byte {end} of a {data_size}-byte data section: "
                                  "the file is truncated; download or copy it again")
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{path}: tensor {key!r} has unsupported dtype {info['dtype']}")
    return header, 8 + n


def iter_safetensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor in the file, each a zero-copy view of a private memory map."""
    header, data_start = read_safetensors_header(path)
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # copy-on-write: writable, file untouched
    for key, info in header.items():
        dtype = SAFETENSORS_DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        count = (end - begin) // dtype.itemsize
        flat = torch.frombuffer(buf, dtype=dtype, count=count, offset=data_start + begin) if count else \
            torch.empty(0, dtype=dtype)
        yield key, flat.view(info["shape"])


def checkpoint_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory, from the index when there is one."""
    index = directory / INDEX_FILE
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from None
        files = [directory / name for name in dict.fromkeys(weight_map.values())]
        for f in files:
            if not f.exists():
                raise CheckpointError(f"{index} names {f.name}, which is missing from {directory}")
        return files
    if (directory / SINGLE_FILE).exists():
        return [directory / SINGLE_FILE]
    files = sorted(directory.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if pickles:
        raise CheckpointError(f"{directory} holds only pickle weights ({', '.join(pickles)}), which are never "
                              "loaded (unpickling runs arbitrary code); convert them to safetensors first")
    raise CheckpointError(f"no *.safetensors weights in {directory}")


def read_config_json(directory: Path) -> dict[str, Any]:
    """The raw config.json dict of a Hugging Face checkpoint directory, of any model type."""
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory; pass a Hugging Face checkpoint directory")
    path = directory / CONFIG_NAME
    if not path.exists():
        raise CheckpointError(f"{directory} has no {CONFIG_NAME}: not a Hugging Face checkpoint directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from None


def read_config(directory: Path) -> tuple[Qwen2AudioConfig, dict[str, Any]]:
    """Our config and the raw config.json dict."""
    raw = read_config_json(directory)
    try:
        return Qwen2AudioConfig.from_hf_dict(raw), raw
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{directory / CONFIG_NAME}: {e}") from None


def checkpoint_dtype(raw_config: dict[str, Any]) -> torch.dtype | None:
    name = raw_config.get("dtype") or raw_config.get("torch_dtype") or \
        (raw_config.get("text_config") or {}).get("dtype") or (raw_config.get("text_config") or {}).get("torch_dtype")
    return DTYPE_NAMES.get(name) if isinstance(name, str) else None


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A dtype given by its name in DTYPE_NAMES or as a torch.dtype; None stays None."""
    return DTYPE_NAMES[dtype] if isinstance(dtype, str) else dtype


def dtype_name(dtype: torch.dtype) -> str:
    return next(n for n, d in DTYPE_NAMES.items() if d == dtype)


# -- loading ---------------------------------------------------------------------------------------------------

def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None,
               model_cls: Callable[[Qwen2AudioConfig], Qwen2Audio] = Qwen2Audio,
               read_tensors: Callable[[Path], Iterator[tuple[str, torch.Tensor]]] = iter_safetensors) -> Qwen2Audio:
    """Build `model_cls(config)` on the meta device and fill it with the checkpoint's tensors.

    dtype: None keeps the checkpoint's dtype (config.json `dtype`/`torch_dtype`, else as stored).
    read_tensors: (name, tensor) of one file (a format that stores some tensors otherwise filters them).
    """
    directory = Path(path)
    config, raw = read_config(directory)
    dtype = resolve_dtype(dtype)
    with torch.device("meta"):
        model = model_cls(config)
    expected = {name: t.shape for name, t in model.state_dict().items()}
    state, unexpected, stored_lm_head = read_state(checkpoint_files(directory), expected, config.text.tie_embeddings,
                                                   read_tensors)
    if stored_lm_head is not None:
        state = _resolve_tied_head(model, config, state, stored_lm_head)
        expected = {name: t.shape for name, t in model.state_dict().items()}
    check_complete(directory, sorted(set(expected) - set(state)), unexpected)

    target = dtype or checkpoint_dtype(raw)
    for name, t in state.items():
        state[name] = t.to(device=device, dtype=target if target and t.is_floating_point() else t.dtype)
    model.load_state_dict(state, assign=True)
    model.audio_encoder.positional_embedding.requires_grad_(False)
    model.hf_config = raw  # kept so that saving writes back what we do not model
    generation = directory / GENERATION_CONFIG_NAME
    model.generation_config = json.loads(generation.read_text()) if generation.exists() else \
        default_generation_config(Tokenizer.from_pretrained(directory))  # the ids of this checkpoint's tokenizer
    return model.eval()


def read_state(files: list[Path], expected: dict[str, torch.Size], tied: bool,
               read_tensors: Callable[[Path], Iterator[tuple[str, torch.Tensor]]] = iter_safetensors):
    """The checkpoint's tensors (memory-mapped) under our names, shape-checked against `expected` -> (state, the
    unexpected keys, the stored lm_head as (file, key, tensor) when the config ties it, else None)."""
    state: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    stored_lm_head: tuple[Path, str, torch.Tensor] | None = None
    for file in files:
        for key, tensor in read_tensors(file):
            name = hf_to_ours(key)
            if name == "decoder.lm_head.weight" and tied:
                stored_lm_head = (file, key, tensor)
                continue
            if name is None or name not in expected:
                unexpected.append(f"{key} (in {file.name})")
                continue
            if tuple(tensor.shape) != tuple(expected[name]):
                raise CheckpointError(
                    f"{file}: {key} has shape {list(tensor.shape)} but config.json implies {list(expected[name])}: "
                    "the config does not match the weights")
            state[name] = tensor
    return state, unexpected, stored_lm_head


LISTED = 8  # missing or unexpected names shown in an error; the count says how many there are


def listed(names: list[str]) -> str:
    return ", ".join(names[:LISTED]) + (" ..." if len(names) > LISTED else "")


def check_complete(directory: Path, missing: list[str], unexpected: list[str], headline: str | None = None,
                   missing_name: Callable[[str], str] = ours_to_hf) -> None:
    """A CheckpointError listing (the first few of) the missing tensors (our names, shown as `missing_name` spells
    them) and the unexpected ones, if any; `headline` says what does not match (default: the config.json)."""
    if not missing and not unexpected:
        return
    lines = [headline or f"checkpoint {directory} does not match its config.json:"]
    if missing:
        lines.append(f"  missing ({len(missing)}): " + listed([missing_name(n) for n in missing]))
    if unexpected:
        lines.append(f"  unexpected ({len(unexpected)}): " + listed(unexpected))
    raise CheckpointError("\n".join(lines))


def _resolve_tied_head(model, config, state, stored):
    """config says tied but the file has an lm_head: fine when it equals the embeddings (drop it); otherwise the
    weights are the truth (some transformers 5.10 saves mis-tied): untie, so nothing stored is thrown away."""
    file, key, head = stored
    embed = state.get("decoder.embed_tokens.weight")
    if embed is not None and head.shape == embed.shape and head.dtype == embed.dtype and \
            _equal_to_stored(file, key, embed):
        return state
    config.text.tie_embeddings = False
    with torch.device("meta"):
        model.decoder.lm_head = torch.nn.Linear(config.text.dim, config.text.vocab_size, bias=False)
    return {**state, "decoder.lm_head.weight": head}


def _equal_to_stored(file: Path, key: str, other: torch.Tensor, chunk_bytes: int = 4 * 2**20) -> bool:
    """torch.equal(tensor `key` of `file`, other), reading the file in small chunks instead of mapping it, so that a
    tensor we are about to drop (a tied lm_head) never counts as a second copy of the embeddings in memory."""
    header, data_start = read_safetensors_header(file)
    begin, end = header[key]["data_offsets"]
    flat = other.contiguous().view(-1).view(torch.uint8)
    if end - begin != flat.numel():
        return False
    chunk = bytearray(chunk_bytes)
    with open(file, "rb") as f:
        f.seek(data_start + begin)
        for start in range(0, flat.numel(), chunk_bytes):
            n = f.readinto(memoryview(chunk)[:min(chunk_bytes, flat.numel() - start)])
            if not torch.equal(torch.frombuffer(chunk, dtype=torch.uint8, count=n), flat[start:start + n]):
                return False
    return True


# -- writing ---------------------------------------------------------------------------------------------------

def hub_state_dict(model: Qwen2Audio) -> dict[str, torch.Tensor]:
    """The model's tensors under their hub names.

    A tied lm_head is written too, as the embeddings again: transformers (5.24) does not tie Qwen2-Audio's lm_head
    on load and would initialise it at random; vLLM skips it when `tie_word_embeddings` is set, and we tie it again
    on load because the two are equal.
    """
    state = {ours_to_hf(name): t.detach() for name, t in model.state_dict().items()}
    if model.decoder.lm_head is None:
        state["language_model.lm_head.weight"] = state["language_model.model.embed_tokens.weight"]
    return state


def to_transformers_name(hub: str) -> str:
    """Hub layout -> transformers >= 5.10 in-memory layout (model.audio_tower.*, model.language_model.*, lm_head)."""
    if hub.startswith("language_model.lm_head."):
        return hub[len("language_model."):]
    if hub.startswith("language_model.model."):
        return "model.language_model." + hub[len("language_model.model."):]
    return "model." + hub


LAYOUTS = {"hub": lambda name: name, "transformers": to_transformers_name}


def write_shards(directory: Path, tensors: dict[str, torch.Tensor], dtype: torch.dtype,
                 max_shard_bytes: int) -> list[str]:
    """`tensors` in `dtype` as safetensors shards of at most `max_shard_bytes` (each written atomically, converted
    one shard at a time), and the index when there are several -> the shard file names."""
    def nbytes(t: torch.Tensor) -> int:
        return t.numel() * (dtype.itemsize if t.is_floating_point() else t.element_size())

    shards: list[list[str]] = [[]]
    size = 0
    for key, t in tensors.items():
        if shards[-1] and size + nbytes(t) > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes(t)

    # safetensors refuses two names over one storage (the tied lm_head): those are written as copies
    storages = Counter(t.untyped_storage().data_ptr() for t in tensors.values())

    def write_shard(keys: list[str]):
        def write(tmp: str) -> None:
            shard = {}
            for k in keys:
                t = tensors[k].to(dtype) if tensors[k].is_floating_point() else tensors[k]
                shared = t.data_ptr() == tensors[k].data_ptr() and storages[t.untyped_storage().data_ptr()] > 1
                shard[k] = t.clone() if shared else t.contiguous()
            save_file(shard, tmp, metadata={"format": "pt"})
        return write

    names = [SINGLE_FILE] if len(shards) == 1 else \
        [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    for name, keys in zip(names, shards):
        atomic_write(directory / name, write_shard(keys))
    if len(shards) > 1:
        weight_map = {k: name for name, keys in zip(names, shards) for k in keys}
        total = sum(nbytes(t) for t in tensors.values())
        atomic_write_json(directory / INDEX_FILE, {"metadata": {"total_size": total}, "weight_map": weight_map})
    return names


def save_model(model: Qwen2Audio, path: str | os.PathLike, dtype: torch.dtype | str | None = None,
               max_shard_bytes: int = DEFAULT_SHARD_SIZE, generation_config: dict[str, Any] | None = None,
               layout: str = "hub") -> Path:
    """Write config.json, generation_config.json and sharded safetensors (hub layout unless told otherwise).

    Tensors are converted to `dtype` one shard at a time, so saving needs at most one shard of extra memory. New
    files are written first (each atomically), then the index and config, and only then are stale shards of an
    earlier save in the same directory removed.
    """
    if getattr(model, "quantization", None):
        raise CheckpointError(f"this model is quantised ({model.quantization}): save it with `save_pretrained` "
                              "(compressed-tensors, compressed_checkpoint.save_compressed)")
    if layout not in LAYOUTS:
        raise CheckpointError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    dtype = resolve_dtype(dtype)
    saved_dtype = dtype or model.decoder.embed_tokens.weight.dtype
    if saved_dtype not in DTYPE_NAMES.values():
        raise CheckpointError(f"cannot save in dtype {saved_dtype}; use float32, bfloat16 or float16")
    tensors = {LAYOUTS[layout](k): t for k, t in hub_state_dict(model).items()}
    names = write_shards(directory, tensors, saved_dtype, max_shard_bytes)
    saved_name = dtype_name(saved_dtype)
    hf = {**getattr(model, "hf_config", {}), **model.config.to_hf_dict(), "dtype": saved_name,
          "torch_dtype": saved_name}
    hf["text_config"] = {**hf["text_config"], "dtype": saved_name, "torch_dtype": saved_name}
    atomic_write_json(directory / CONFIG_NAME, hf)
    generation_config = generation_config or getattr(model, "generation_config", None) or default_generation_config()
    atomic_write_json(directory / GENERATION_CONFIG_NAME, generation_config)
    stale = [p for p in directory.glob("model*.safetensors") if p.name not in names]
    if len(names) == 1:
        stale.append(directory / INDEX_FILE)
    for p in stale:  # a previous save with another shard count must not linger
        p.unlink(missing_ok=True)
    return directory


def default_generation_config(tokenizer: Tokenizer | None = None) -> dict[str, Any]:
    """eos/pad/bos ids of `tokenizer` (a trimmed vocabulary renumbers them), else Qwen2-Audio's (SPECIAL_TOKENS)."""
    # <|endoftext|> pads; <|im_end|> ends an Instruct turn, <|endoftext|> ends base-model output.
    endoftext, im_end = (tokenizer.token_to_id(ENDOFTEXT), tokenizer.token_to_id(IM_END)) if tokenizer else \
        (SPECIAL_TOKENS[ENDOFTEXT], SPECIAL_TOKENS[IM_END])
    return {"bos_token_id": endoftext, "pad_token_id": endoftext, "eos_token_id": [endoftext, im_end]}
