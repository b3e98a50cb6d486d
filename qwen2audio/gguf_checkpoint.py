"""GGUF checkpoints: the pair that llama.cpp's `convert_hf_to_gguf.py` writes for Qwen2-Audio.

A directory holds the text model (arch `qwen2`) and the audio part written with `--mmproj` (arch `clip`, projector
type `qwen2a`), whose file name starts with `mmproj`. The config comes from both files' metadata, the tokenizer from
the text file's (`tokenizer.ggml.*`), so the directory needs nothing else. Tensors are read from memory-mapped files
(copy-on-write) with the `gguf` package (`pip install qwen2audio[gguf]`). The language model's q8_0 / q4_0 linear
layers become Int8Linear / Int4Linear over the stored integers and per-32 scales (no full-precision copy); every other
tensor is converted one at a time into the requested dtype (a view of the map when already in it), the k-quants
(q4_K, q6_K) dequantised. Any other type is refused by name.

Facts of the converter this reader relies on: qwen2's q/k weights are stored unpermuted (only llama-style archs are
permuted for ggml's rope); GGUF lists dimensions innermost first, so a tensor's PyTorch shape is its GGUF shape
reversed; the conv1d weights are forced to f16 and their biases stored as [dim, 1] columns; the audio positional
embedding is stored as a plain [positions, dim] weight; the audio layer norms' eps is stored, the text model's
`<|AUDIO|>` id is not (it is looked up in the token list).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .checkpoint import CheckpointError, check_complete, default_generation_config, name_rules, rename, resolve_dtype
from .model import AudioEncoderConfig, Qwen2Audio, Qwen2AudioConfig, TextConfig
from .processor import Processor
from .quant import QuantizedWeight, quantization_mode, replace_linear
from .tokenizer import AUDIO_TOKEN, Tokenizer

GGUF_SUFFIX = ".gguf"
MMPROJ_PREFIX = "mmproj"  # the audio file's name starts with it, as llama.cpp's converter and the hubs name it
TEXT_ARCH = "qwen2"
AUDIO_PROJECTOR = "qwen2a"
DEFAULT_DTYPE = torch.bfloat16  # what a dequantised or f16 tensor becomes unless the caller asks for another dtype
EMBEDDING, HEAD = "token_embd.weight", "output.weight"
CONV_BIASES = ("audio_encoder.conv1.bias", "audio_encoder.conv2.bias")  # stored as [dim, 1] columns

# GGUF name -> our name, per module ('{}' = layer index); a parameter keeps its suffix (.weight/.bias) unless the
# entry names the full parameter. The text file's names first, then the mmproj file's.
GGUF_TO_OURS: dict[str, str] = {
    "token_embd": "decoder.embed_tokens",
    "blk.{}.attn_norm": "decoder.layers.{}.attn_norm",
    "blk.{}.attn_q": "decoder.layers.{}.attn.q_proj",
    "blk.{}.attn_k": "decoder.layers.{}.attn.k_proj",
    "blk.{}.attn_v": "decoder.layers.{}.attn.v_proj",
    "blk.{}.attn_output": "decoder.layers.{}.attn.o_proj",
    "blk.{}.ffn_norm": "decoder.layers.{}.mlp_norm",
    "blk.{}.ffn_gate": "decoder.layers.{}.mlp.gate_proj",
    "blk.{}.ffn_up": "decoder.layers.{}.mlp.up_proj",
    "blk.{}.ffn_down": "decoder.layers.{}.mlp.down_proj",
    "output_norm": "decoder.norm",
    "output": "decoder.lm_head",
    "a.conv1d.1": "audio_encoder.conv1",
    "a.conv1d.2": "audio_encoder.conv2",
    "a.position_embd.weight": "audio_encoder.positional_embedding",
    "a.blk.{}.ln1": "audio_encoder.layers.{}.attn_norm",
    "a.blk.{}.attn_q": "audio_encoder.layers.{}.attn.q_proj",
    "a.blk.{}.attn_k": "audio_encoder.layers.{}.attn.k_proj",
    "a.blk.{}.attn_v": "audio_encoder.layers.{}.attn.v_proj",
    "a.blk.{}.attn_out": "audio_encoder.layers.{}.attn.out_proj",
    "a.blk.{}.ln2": "audio_encoder.layers.{}.mlp_norm",
    "a.blk.{}.ffn_up": "audio_encoder.layers.{}.fc1",
    "a.blk.{}.ffn_down": "audio_encoder.layers.{}.fc2",
    "a.post_ln": "audio_encoder.final_norm",
    "mm.a.fc": "projector.linear",
}
_GGUF_RULES = name_rules(GGUF_TO_OURS)

# llama.cpp's token types (gguf.TokenType): CONTROL tokens are the tokenizer's special added tokens, USER_DEFINED
# its other added tokens; the padding rows of a vocabulary larger than the tokenizer's are UNUSED (5) and skipped.
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED = 1, 3, 4


def gguf_to_ours(name: str) -> str | None:
    return rename(name, _GGUF_RULES)


# -- dequantisation ------------------------------------------------------------------------------------------------
# Ports of llama.cpp's reference dequantisation (as the `gguf` package writes it in numpy), computing in float32 in
# the same order, so that the result is bitwise equal. Each takes the [n_blocks, block_bytes] uint8 blocks.

QK_K = 256  # elements of a k-quant super-block


def _f16(column_bytes: torch.Tensor) -> torch.Tensor:
    """A [n, 2] uint8 slice holding one little-endian float16 per row -> [n, 1] float32."""
    return column_bytes.contiguous().view(torch.float16).float()


def _nibbles(packed: torch.Tensor, groups: int) -> torch.Tensor:
    """[n, groups * w] bytes -> [n, groups, 2 * w]: each group's low nibbles, then its high nibbles."""
    packed = packed.reshape(packed.shape[0], groups, 1, -1)
    return torch.cat([packed & 0x0F, packed >> 4], dim=2).reshape(packed.shape[0], groups, -1)


def dequantize_q8_0(blocks: torch.Tensor) -> torch.Tensor:
    return blocks[:, 2:].view(torch.int8).float() * _f16(blocks[:, :2])


def dequantize_q4_0(blocks: torch.Tensor) -> torch.Tensor:
    q = _nibbles(blocks[:, 2:], 1).reshape(blocks.shape[0], -1).to(torch.int8) - 8
    return _f16(blocks[:, :2]) * q.float()


def q4_k_scales_and_mins(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8 six-bit scales and mins packed in a Q4_K/Q5_K block's 12 bytes -> two [n, 8] uint8 tensors."""
    d, m, m_d = scales.reshape(-1, 3, 4).unbind(dim=1)
    sc = torch.cat([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mins = torch.cat([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc, mins


def dequantize_q4_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    sc, mins = q4_k_scales_and_mins(blocks[:, 4:16])
    d = (_f16(blocks[:, 0:2]) * sc.float()).reshape(n, -1, 1)
    dm = (_f16(blocks[:, 2:4]) * mins.float()).reshape(n, -1, 1)
    q = _nibbles(blocks[:, 16:], 4).reshape(n, -1, 32).float()
    return (d * q - dm).reshape(n, QK_K)


def dequantize_q6_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    ql, qh = blocks[:, :QK_K // 2], blocks[:, QK_K // 2:QK_K // 2 + QK_K // 4]
    scales = blocks[:, QK_K // 2 + QK_K // 4:QK_K // 2 + QK_K // 4 + QK_K // 16].view(torch.int8).float()
    d = (_f16(blocks[:, -2:]) * scales).reshape(n, QK_K // 16, 1)
    low = _nibbles(ql, 2).reshape(n, -1, 32)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).reshape(1, 1, 4, 1)
    high = ((qh.reshape(n, -1, 1, 32) >> shifts) & 0x03).reshape(n, -1, 32)
    q = (low | (high << 4)).to(torch.int8) - 32
    return (d * q.reshape(n, QK_K // 16, -1).float()).reshape(n, QK_K)


# ggml type name -> (elements per block, bytes per block, dequantise [n_blocks, bytes] uint8 -> [n_blocks, elements])
QUANTIZED_TYPES: dict[str, tuple[int, int, Callable[[torch.Tensor], torch.Tensor]]] = {
    "Q8_0": (32, 34, dequantize_q8_0),
    "Q4_0": (32, 18, dequantize_q4_0),
    "Q4_K": (QK_K, 144, dequantize_q4_k),
    "Q6_K": (QK_K, 210, dequantize_q6_k),
}
# The types whose blocks are one float16 scale per 32 weights plus signed integers: the language model's linear layers
# stored in them become Int8Linear / Int4Linear over those integers and scales, never a full-precision copy.
INTEGER_TYPES = {"Q8_0": 8, "Q4_0": 4}
FLOAT_TYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
READABLE_TYPES = (*FLOAT_TYPES, *QUANTIZED_TYPES)


def tensor_to_torch(type_name: str, data: np.ndarray, shape: list[int], dtype: torch.dtype) -> torch.Tensor:
    """One GGUF tensor's raw `data` (as the reader maps it) -> a [shape] tensor in `dtype` (a view of the map when
    the stored type is already `dtype`)."""
    raw = torch.from_numpy(data)
    if type_name in FLOAT_TYPES:
        stored = raw.view(torch.uint8).view(FLOAT_TYPES[type_name]).reshape(shape)
        return stored if stored.dtype == dtype else stored.to(dtype)
    if type_name not in QUANTIZED_TYPES:
        raise CheckpointError(f"GGUF type {type_name} is not supported; readable types: {', '.join(READABLE_TYPES)}")
    _, block_bytes, dequantize = QUANTIZED_TYPES[type_name]
    blocks = raw.view(torch.uint8).reshape(-1, block_bytes)
    return dequantize(blocks).reshape(shape).to(dtype)


def integer_weight(type_name: str, data: np.ndarray, shape: list[int]) -> QuantizedWeight:
    """A Q8_0 / Q4_0 tensor as integers [out, in] and one float32 scale per 32 of them (dequantising it gives
    exactly `tensor_to_torch`'s float32)."""
    block_elements, block_bytes, _ = QUANTIZED_TYPES[type_name]
    blocks = torch.from_numpy(data).view(torch.uint8).reshape(-1, block_bytes)
    if type_name == "Q8_0":
        q = blocks[:, 2:].view(torch.int8)
    else:
        q = _nibbles(blocks[:, 2:], 1).to(torch.int8) - 8
    out_features, in_features = shape
    return QuantizedWeight(q=q.reshape(out_features, in_features),
                           scale=_f16(blocks[:, :2]).reshape(out_features, in_features // block_elements),
                           bits=INTEGER_TYPES[type_name])


def keeps_integers(name: str, type_name: str) -> bool:
    """Whether our parameter `name`, stored as `type_name`, is loaded as integers: the language model's linear
    weights (its layers and a separate head) in Q8_0 / Q4_0; the audio encoder, projector and embeddings stay in
    floating point."""
    linear = (name.startswith("decoder.layers.") and (".attn." in name or ".mlp." in name)) or \
        name == "decoder.lm_head.weight"
    return linear and name.endswith(".weight") and type_name in INTEGER_TYPES


def swap_integer_layers(model: Qwen2Audio, integers: dict[str, QuantizedWeight], state: dict[str, torch.Tensor],
                        device: str | torch.device, dtype: torch.dtype) -> None:
    """Replace each linear layer whose weight is in `integers` by an Int8Linear / Int4Linear (its bias taken from
    `state`) -> `model.quantization` says which. Int4Linear keeps its scales in `dtype` (the float16 scales of the
    file round to it), Int8Linear in float32."""
    for name, weight in integers.items():
        module = name.removesuffix(".weight")
        if weight.bits == 4:
            weight.scale = weight.scale.to(dtype)
        replace_linear(model, module, weight, state.pop(module + ".bias", None)).to(device)
    if integers:
        model.quantization = quantization_mode(weight.bits for weight in integers.values())


# -- files ---------------------------------------------------------------------------------------------------------

def is_gguf_directory(path: str | os.PathLike) -> bool:
    """A directory with GGUF files and no safetensors (a Hugging Face checkpoint beside GGUF copies loads as such)."""
    directory = Path(path)
    return directory.is_dir() and any(directory.glob("*" + GGUF_SUFFIX)) and not any(directory.glob("*.safetensors"))


def gguf_files(directory: Path) -> tuple[Path, Path]:
    """(text file, audio file) of a GGUF directory; an error naming what is missing or ambiguous."""
    files = sorted(directory.glob("*" + GGUF_SUFFIX))
    audio = [f for f in files if f.name.startswith(MMPROJ_PREFIX)]
    text = [f for f in files if not f.name.startswith(MMPROJ_PREFIX)]
    if len(text) != 1 or len(audio) != 1:
        raise CheckpointError(
            f"{directory} must hold exactly one text GGUF and one audio GGUF whose name starts with "
            f"{MMPROJ_PREFIX!r} (llama.cpp's convert_hf_to_gguf.py, then again with --mmproj); found "
            f"{[f.name for f in text]} and {[f.name for f in audio]}")
    return text[0], audio[0]


def open_gguf(path: Path):
    """A GGUFReader over a copy-on-write map of `path` (tensors become writable torch views without a copy)."""
    try:
        from gguf import GGUFReader  # optional dependency: only GGUF checkpoints need it
    except ImportError:
        raise CheckpointError(f"reading {path.name} needs the gguf package: pip install 'qwen2audio[gguf]'") from None
    try:
        return GGUFReader(path, "c")
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable GGUF file ({e})") from None


def metadata(reader) -> dict[str, Any]:
    """Every key-value field of a GGUF file (arrays as lists), without the reader's own GGUF.* entries."""
    return {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}


def as_float32_decimal(value: float) -> float:
    """A float stored as float32 (1e-6 reads back as 9.99999997e-07) -> the shortest decimal that rounds to it."""
    return float(str(np.float32(value)))


# -- config and tokenizer ------------------------------------------------------------------------------------------

def text_config(meta: dict[str, Any], shapes: dict[str, list[int]], tied: bool, path: Path) -> TextConfig:
    """The decoder's config from the text file's `qwen2.*` metadata and the vocabulary's size."""
    arch = meta.get("general.architecture")
    if arch != TEXT_ARCH:
        raise CheckpointError(f"{path}: architecture {arch!r}, expected {TEXT_ARCH!r} (Qwen2-Audio's text model)")
    if EMBEDDING not in shapes:
        raise CheckpointError(f"{path} has no {EMBEDDING}: not a complete text model")
    n_heads = int(meta[f"{arch}.attention.head_count"])
    return TextConfig(
        vocab_size=shapes[EMBEDDING][0], dim=int(meta[f"{arch}.embedding_length"]),
        n_layers=int(meta[f"{arch}.block_count"]), n_heads=n_heads,
        n_kv_heads=int(meta.get(f"{arch}.attention.head_count_kv", n_heads)),
        ffn_dim=int(meta[f"{arch}.feed_forward_length"]),
        norm_eps=as_float32_decimal(meta[f"{arch}.attention.layer_norm_rms_epsilon"]),
        rope_theta=as_float32_decimal(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        max_positions=int(meta[f"{arch}.context_length"]), tie_embeddings=tied)


def audio_config(meta: dict[str, Any], shapes: dict[str, list[int]], path: Path) -> AudioEncoderConfig:
    """The audio encoder's config from the mmproj file's `clip.audio.*` metadata and positional embedding."""
    projector = meta.get("clip.projector_type")
    if projector != AUDIO_PROJECTOR:
        raise CheckpointError(f"{path}: projector type {projector!r}, expected {AUDIO_PROJECTOR!r} (Qwen2-Audio)")
    return AudioEncoderConfig(
        n_mels=int(meta["clip.audio.num_mel_bins"]), dim=int(meta["clip.audio.embedding_length"]),
        n_layers=int(meta["clip.audio.block_count"]), n_heads=int(meta["clip.audio.attention.head_count"]),
        ffn_dim=int(meta["clip.audio.feed_forward_length"]), n_positions=shapes["a.position_embd.weight"][0],
        norm_eps=as_float32_decimal(meta.get("clip.audio.attention.layer_norm_epsilon", 1e-5)))


def gguf_tokenizer(meta: dict[str, Any], path: Path) -> Tokenizer:
    """Our tokenizer from `tokenizer.ggml.*`: the byte-level BPE tokens and merges, the added tokens (CONTROL =
    special), the chat template and eos/pad, written as the Hugging Face files our Tokenizer reads."""
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise CheckpointError(f"{path}: tokenizer model {meta.get('tokenizer.ggml.model')!r}, expected 'gpt2' "
                              "(Qwen2's byte-level BPE)")
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    added = {str(i): {"content": t, "special": kind == TOKEN_CONTROL, "normalized": False, "lstrip": False,
                      "rstrip": False, "single_word": False}
             for i, (t, kind) in enumerate(zip(tokens, types)) if kind in (TOKEN_CONTROL, TOKEN_USER_DEFINED)}
    config = {"added_tokens_decoder": added, "chat_template": meta.get("tokenizer.chat_template"),
              "eos_token": tokens[meta["tokenizer.ggml.eos_token_id"]] if "tokenizer.ggml.eos_token_id" in meta
              else None,
              "pad_token": tokens[meta["tokenizer.ggml.padding_token_id"]]
              if "tokenizer.ggml.padding_token_id" in meta else None}
    with tempfile.TemporaryDirectory(prefix="qwen2audio-gguf-tokenizer-") as tmp:
        directory = Path(tmp)
        vocab = {t: i for i, (t, kind) in enumerate(zip(tokens, types)) if kind == TOKEN_NORMAL}
        (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        merges = "\n".join(["#version: 0.2", *meta["tokenizer.ggml.merges"]]) + "\n"
        (directory / "merges.txt").write_text(merges, encoding="utf-8")
        (directory / "tokenizer_config.json").write_text(
            json.dumps({k: v for k, v in config.items() if v is not None}, ensure_ascii=False), encoding="utf-8")
        try:
            return Tokenizer.from_pretrained(directory)
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from None


# -- loading -------------------------------------------------------------------------------------------------------

def head_is_embedding(reader) -> bool:
    """Whether the text file's output head is absent or byte for byte its token embedding (a tied head that the
    converter wrote out: we tie it again instead of keeping a second copy)."""
    tensors = {t.name: t for t in reader.tensors}
    head, embedding = tensors.get(HEAD), tensors.get(EMBEDDING)
    return head is None or (embedding is not None and head.tensor_type == embedding.tensor_type and
                            np.array_equal(head.data, embedding.data))


def read_gguf_state(readers: list[tuple[Path, Any]], expected: dict[str, torch.Size], dtype: torch.dtype):
    """The tensors of the GGUF files under our names, shape-checked and converted one at a time into `dtype`, or
    kept as integers (`keeps_integers`) -> (state, integers, the unexpected names). A head that the model ties to
    the embedding is skipped."""
    state: dict[str, torch.Tensor] = {}
    integers: dict[str, QuantizedWeight] = {}
    unexpected: list[str] = []
    for path, reader in readers:
        for tensor in reader.tensors:
            name = gguf_to_ours(tensor.name)
            if tensor.name == HEAD and name not in expected:
                continue
            if name is None or name not in expected:
                unexpected.append(f"{tensor.name} (in {path.name})")
                continue
            shape = [int(n) for n in reversed(tensor.shape)]
            if name in CONV_BIASES and shape == [int(expected[name][0]), 1]:
                shape = shape[:1]
            if shape != list(expected[name]):
                raise CheckpointError(f"{path}: {tensor.name} has shape {shape} but the metadata implies "
                                      f"{list(expected[name])}: the metadata does not match the weights")
            type_name = tensor.tensor_type.name
            try:
                if keeps_integers(name, type_name):
                    integers[name] = integer_weight(type_name, tensor.data, shape)
                else:
                    state[name] = tensor_to_torch(type_name, tensor.data, shape, dtype)
            except CheckpointError as e:
                raise CheckpointError(f"{path}: tensor {tensor.name}: {e}") from None
    return state, integers, unexpected


def read_gguf_config(text: tuple[Path, Any], audio: tuple[Path, Any]) -> tuple[Qwen2AudioConfig, dict[str, Any]]:
    """Our config from the two files' metadata -> (config, the text file's metadata, which holds the tokenizer)."""
    (text_path, text_reader), (audio_path, audio_reader) = text, audio
    text_meta, audio_meta = metadata(text_reader), metadata(audio_reader)
    shapes = {t.name: [int(n) for n in reversed(t.shape)] for _, r in (text, audio) for t in r.tensors}
    tokens = text_meta.get("tokenizer.ggml.tokens") or []
    if AUDIO_TOKEN not in tokens:
        raise CheckpointError(f"{text_path}: the vocabulary has no {AUDIO_TOKEN} token: not a Qwen2-Audio text model")
    config = Qwen2AudioConfig(audio=audio_config(audio_meta, shapes, audio_path),
                              text=text_config(text_meta, shapes, head_is_embedding(text_reader), text_path),
                              audio_token_id=tokens.index(AUDIO_TOKEN))
    return config, text_meta


def describe_gguf(path: str | os.PathLike) -> tuple[Qwen2AudioConfig, list[tuple[str, str]]]:
    """What `qwen2audio info` prints of a GGUF directory: (config, [(label, value)]) with files, bytes and the
    stored tensor types."""
    directory = Path(path)
    readers = [(f, open_gguf(f)) for f in gguf_files(directory)]
    config, _ = read_gguf_config(*readers)
    types = Counter(t.tensor_type.name for _, reader in readers for t in reader.tensors)
    size = sum(f.stat().st_size for f, _ in readers)
    return config, [
        ("checkpoint", str(directory)),
        ("weights", f"GGUF {', '.join(f.name for f, _ in readers)}, {size / 2**30:.2f} GiB"),
        ("types", ", ".join(f"{name} x{n}" for name, n in types.most_common()) +
         f" (dequantised at load; readable: {', '.join(READABLE_TYPES)})"),
    ]


def load_gguf(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None,
              model_cls: Callable[[Qwen2AudioConfig], Qwen2Audio] = Qwen2Audio) -> tuple[Qwen2Audio, Processor]:
    """Build `model_cls(config)` on the meta device from a GGUF directory and fill it: the language model's Q8_0 /
    Q4_0 linear layers as Int8Linear / Int4Linear, everything else in `dtype` (None: DEFAULT_DTYPE)
    -> (model, its processor: the metadata's tokenizer and Whisper's features at the model's mel bins)."""
    directory = Path(path)
    readers = [(f, open_gguf(f)) for f in gguf_files(directory)]
    config, text_meta = read_gguf_config(*readers)
    tokenizer = gguf_tokenizer(text_meta, readers[0][0])
    with torch.device("meta"):
        model = model_cls(config)
    expected = {name: t.shape for name, t in model.state_dict().items()}
    dtype = resolve_dtype(dtype) or DEFAULT_DTYPE
    state, integers, unexpected = read_gguf_state(readers, expected, dtype)
    check_complete(directory, sorted(set(expected) - set(state) - set(integers)), unexpected)
    swap_integer_layers(model, integers, state, device, dtype)
    model.load_state_dict({name: t.to(device) for name, t in state.items()}, assign=True, strict=False)
    unfilled = [name for name, t in model.state_dict().items() if t.is_meta]
    if unfilled:  # a bug of ours, not of the file: every stored tensor was found above
        raise CheckpointError(f"{directory}: parameters left unfilled: {', '.join(unfilled[:8])}")
    model.audio_encoder.positional_embedding.requires_grad_(False)
    model.hf_config = config.to_hf_dict()  # saving writes a Hugging Face checkpoint of the dequantised weights
    model.generation_config = default_generation_config(tokenizer)
    return model.eval(), Processor(tokenizer, n_mels=config.audio.n_mels)
