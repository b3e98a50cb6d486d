"""compressed-tensors checkpoints: the format llm-compressor writes (and vLLM and transformers read) for weight-only
int8 / int4 (W8A16, W4A16), read into our int8/int4 layers and written from them.

On disk: a Hugging Face checkpoint whose config.json holds a `quantization_config` (`quant_method`
"compressed-tensors", format "pack-quantized", one `weights` scheme per config group, and the `ignore` list of the
linear layers left dense). A quantised linear layer `P` is stored as
    P.weight_packed      int32 [out, ceil(in * bits / 32)]: the integers + 2^(bits-1), packed densely from the
                         lowest bit up (4 bits: eight to a word; 8 bits: four), little-endian;
    P.weight_scale       [out, groups] in the model's dtype (groups = in / group_size; 1 for the channel strategy);
    P.weight_shape       int64 [2]: [out, in];
    P.weight_zero_point  asymmetric schemes only: int32, the zero points + 2^(bits-1) packed the same way along the
                         output dimension, [ceil(out * bits / 32), groups];
and W = (q - zero_point) * scale. Everything else (audio encoder, projector, embeddings, norms, a dense lm_head) is
stored as usual, under the hub names (`checkpoint.HF_TO_OURS`), or transformers >= 5.10's. GPTQ and round to
nearest store the same tensors; a `weight_g_idx` (GPTQ's old "group" activation ordering) is refused as an
unexpected key, and so are other formats and quantised activations, each by name.

Reading never builds a full-precision copy of a quantised layer: the packed integers become the int8 layer's
buffer (or ATen's int4 layout) one layer at a time. Writing (`quantize_checkpoint`) reads and writes one shard at a
time, so its peak memory is about one shard.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors.torch import save_file
from torch import nn

from .checkpoint import (CONFIG_NAME, DEFAULT_SHARD_SIZE, GENERATION_CONFIG_NAME, INDEX_FILE, SINGLE_FILE,
                         CheckpointError, checkpoint_dtype, checkpoint_files, default_generation_config, dtype_name,
                         hf_to_ours, hub_state_dict, iter_safetensors, load_model, ours_to_hf, read_config,
                         read_config_json, read_safetensors_header, resolve_dtype, to_hub_name, write_shards)
from .files import atomic_write, atomic_write_json
from .model import Qwen2Audio, Qwen2AudioConfig
from .quant import (QUANTIZED_LINEAR, Int4Linear, Int8Linear, QuantizedWeight, quantization_mode, quantize_weight,
                    replace_linear)

QUANTIZATION_CONFIG = "quantization_config"  # config.json key
QUANT_METHOD = "compressed-tensors"
PACKED_FORMAT = "pack-quantized"
FORMAT_VERSION = "0.20.1"  # the compressed-tensors release whose reader the tests check our files against
PACKED, SCALE, SHAPE, ZERO_POINT = "weight_packed", "weight_scale", "weight_shape", "weight_zero_point"
COMPRESSED_PARAMS = (PACKED, SCALE, SHAPE, ZERO_POINT)
SCHEMES = {"w8a16": 8, "w4a16": 4}  # `qwen2audio quantize --scheme` -> bits of the weights; activations stay 16-bit
DEFAULT_GROUP_SIZE = 128  # llm-compressor's W8A16 / W4A16 presets
WORD_BITS = 32


# -- the config ----------------------------------------------------------------------------------------------------

def quantization_config(raw_config: dict[str, Any]) -> dict[str, Any] | None:
    return raw_config.get(QUANTIZATION_CONFIG)


def weight_schemes(directory: Path, qconfig: dict[str, Any]) -> list[dict[str, Any]]:
    """The `weights` scheme of each config group, checked to be one we read: compressed-tensors, pack-quantized,
    integer weights of 4 or 8 bits, activations not quantised. Anything else: a CheckpointError naming it."""
    where = f"{directory / CONFIG_NAME} {QUANTIZATION_CONFIG}"
    if qconfig.get("quant_method") != QUANT_METHOD:
        raise CheckpointError(f"{where}: quant_method {qconfig.get('quant_method')!r} is not read; only "
                              f"{QUANT_METHOD!r} checkpoints (llm-compressor's) are")
    schemes = []
    for name, group in qconfig.get("config_groups", {}).items():
        weights, fmt = group.get("weights") or {}, group.get("format") or qconfig.get("format")
        if fmt != PACKED_FORMAT:
            raise CheckpointError(f"{where}: group {name} has format {fmt!r}; only {PACKED_FORMAT!r} is read")
        if group.get("input_activations") or weights.get("type") != "int" or weights.get("num_bits") not in (4, 8):
            raise CheckpointError(f"{where}: group {name} is not weight-only int8/int4 (weights "
                                  f"{weights.get('type')} {weights.get('num_bits')} bits, activations "
                                  f"{'quantised' if group.get('input_activations') else 'not quantised'}): "
                                  "only W8A16 and W4A16 are read")
        schemes.append(weights)
    if not schemes:
        raise CheckpointError(f"{where}: no config_groups")
    return schemes


def describe_scheme(weights: dict[str, Any]) -> str:
    """'int4 symmetric, group 128' / 'int8 asymmetric, per channel'."""
    group = f"group {weights.get('group_size')}" if weights.get("strategy") == "group" else \
        f"per {weights.get('strategy')}"
    return f"int{weights['num_bits']} {'symmetric' if weights.get('symmetric', True) else 'asymmetric'}, {group}"


def scheme_config(bits: int, group_size: int | None, ignore: list[str], symmetric: bool = True) -> dict[str, Any]:
    """`quantization_config` as llm-compressor writes it for a weight-only scheme on every Linear except `ignore`
    (hub names). group_size None: one scale per output channel."""
    weights = {"num_bits": bits, "type": "int", "symmetric": symmetric, "dynamic": False,
               "observer": "memoryless_minmax", "strategy": "group" if group_size else "channel",
               "group_size": group_size}
    group = {"targets": ["Linear"], "weights": weights, "input_activations": None, "output_activations": None,
             "format": PACKED_FORMAT}
    return {"quant_method": QUANT_METHOD, "format": PACKED_FORMAT, "quantization_status": "compressed",
            "config_groups": {"group_0": group}, "ignore": ignore, "kv_cache_scheme": None, "sparsity_config": {},
            "transform_config": {}, "global_compression_ratio": None, "version": FORMAT_VERSION}


# -- packing ---------------------------------------------------------------------------------------------------

def unpack_int32(packed: torch.Tensor, bits: int, columns: int) -> torch.Tensor:
    """int32 [rows, words] packed densely (`bits` per integer + 2^(bits-1), lowest bits first) -> int8 [rows,
    columns] of signed integers. 4 and 8 bits never straddle a byte: the words' bytes are read directly."""
    as_bytes = packed.contiguous().view(torch.uint8)  # little-endian: a word's low byte first
    if bits == 8:
        return (as_bytes ^ 0x80).view(torch.int8)[:, :columns]  # u - 128 in two's complement
    nibbles = torch.stack([as_bytes & 0xF, as_bytes >> 4], dim=-1).view(packed.shape[0], -1)[:, :columns]
    return nibbles.to(torch.int8) - 8


def pack_int32(q: torch.Tensor, bits: int) -> torch.Tensor:
    """The inverse of `unpack_int32`: int8 [rows, columns] -> int32 [rows, ceil(columns * bits / 32)]."""
    rows, columns = q.shape
    per_word = WORD_BITS // bits
    unsigned = (q.to(torch.int16) + 2 ** (bits - 1)).to(torch.uint8)
    unsigned = nn.functional.pad(unsigned, (0, -columns % per_word))
    if bits == 4:
        unsigned = unsigned[:, 0::2] | (unsigned[:, 1::2] << 4)
    words = unsigned.contiguous().view(-1).view(torch.int32)  # flat: a single row may carry any stride
    return words.view(rows, math.ceil(columns * bits / WORD_BITS))


def quantized_weight(parts: dict[str, torch.Tensor], where: str) -> QuantizedWeight:
    """One layer's stored tensors -> its integers and scales (bits from the packed width)."""
    missing = [p for p in (PACKED, SCALE, SHAPE) if p not in parts]
    if missing:
        raise CheckpointError(f"{where}: missing {', '.join(missing)}")
    out_features, in_features = (int(n) for n in parts[SHAPE])
    packed, scale = parts[PACKED], parts[SCALE]
    bits = packed.shape[1] * WORD_BITS // in_features
    if bits not in QUANTIZED_LINEAR or packed.shape != (out_features, math.ceil(in_features * bits / WORD_BITS)) \
            or scale.ndim != 2 or scale.shape[0] != out_features or in_features % scale.shape[1]:
        raise CheckpointError(f"{where}: packed {list(packed.shape)}, scale {list(scale.shape)} do not fit a "
                              f"4- or 8-bit weight of shape [{out_features}, {in_features}]")
    zero_point = parts.get(ZERO_POINT)
    if zero_point is not None:
        zero_point = unpack_int32(zero_point.T, bits, out_features).T
    return QuantizedWeight(unpack_int32(packed, bits, in_features), scale, bits, zero_point)


def compress(hub_prefix: str, weight: QuantizedWeight, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A layer's tensors under compressed-tensors' names; the scales in `dtype` (refused where that rounds them)."""
    scale = weight.scale.to(dtype)
    if not torch.equal(scale.float(), weight.scale.float()):
        raise CheckpointError(f"{hub_prefix}: its scales are not exact in {dtype_name(dtype)}; save in the dtype "
                              "the model was quantised in")
    tensors = {f"{hub_prefix}.{PACKED}": pack_int32(weight.q, weight.bits), f"{hub_prefix}.{SCALE}": scale,
               f"{hub_prefix}.{SHAPE}": torch.tensor(weight.q.shape, dtype=torch.int64)}
    if weight.zero_point is not None:
        tensors[f"{hub_prefix}.{ZERO_POINT}"] = pack_int32(weight.zero_point.T, weight.bits).T.contiguous()
    return tensors


# -- reading ---------------------------------------------------------------------------------------------------

def split_packed(file: Path, packed: dict[str, dict[str, torch.Tensor]], dtype: torch.dtype | None,
                 device: str | torch.device) -> Iterator[tuple[str, torch.Tensor]]:
    """The file's tensors, with each quantised layer's parts put aside in `packed[module]` and its weight given as a
    placeholder of the right shape that holds one element (stride 0), so that `checkpoint.load_model` checks the
    names, shapes and completeness of the whole checkpoint without the layer ever existing in full precision."""
    for key, tensor in iter_safetensors(file):
        module, _, param = key.rpartition(".")
        if param not in COMPRESSED_PARAMS:
            yield key, tensor
            continue
        packed.setdefault(module, {})[param] = tensor
        if param == SHAPE:
            placeholder = torch.zeros((), dtype=dtype or torch.float32, device=device)  # replaced before use
            yield f"{module}.weight", placeholder.expand(*(int(n) for n in tensor))


def swap_quantized(model: Qwen2Audio, packed: dict[str, dict[str, torch.Tensor]], device, dtype) -> None:
    """Replace each placeholder layer by the int8/int4 layer of its stored integers (its bias kept)."""
    for hub_module, parts in packed.items():
        name = hf_to_ours(hub_module + ".weight").removesuffix(".weight")
        child = model.get_submodule(name)
        if not isinstance(child, nn.Linear):
            raise CheckpointError(f"{hub_module} is stored quantised but is not a linear layer of the model")
        weight = quantized_weight(parts, hub_module).to(device, dtype)  # the int4 layout is chosen by device
        replace_linear(model, name, weight, child.bias)


def load_compressed(path: str | os.PathLike, device: str | torch.device = "cpu",
                    dtype: torch.dtype | str | None = None,
                    model_cls: Callable[[Qwen2AudioConfig], Qwen2Audio] = Qwen2Audio) -> Qwen2Audio:
    """A compressed-tensors checkpoint: its quantised linear layers as Int8Linear / Int4Linear (weight-only), the
    rest loaded as `checkpoint.load_model` loads it, in `dtype` (None: the checkpoint's)."""
    directory = Path(path)
    raw = read_config_json(directory)
    schemes = weight_schemes(directory, quantization_config(raw))
    target = resolve_dtype(dtype) or checkpoint_dtype(raw)
    packed: dict[str, dict[str, torch.Tensor]] = {}
    model = load_model(directory, device=device, dtype=target, model_cls=model_cls,
                       read_tensors=lambda file: split_packed(file, packed, target, device))
    swap_quantized(model, packed, device, target)
    model.quantization = quantization_mode(s["num_bits"] for s in schemes)
    return model


def load_hf_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu",
                       dtype: torch.dtype | str | None = None,
                       model_cls: Callable[[Qwen2AudioConfig], Qwen2Audio] = Qwen2Audio) -> Qwen2Audio:
    """A Hugging Face checkpoint directory, full precision or compressed-tensors."""
    if quantization_config(read_config_json(Path(path))) is not None:
        return load_compressed(path, device=device, dtype=dtype, model_cls=model_cls)
    return load_model(path, device=device, dtype=dtype, model_cls=model_cls)


# -- writing ---------------------------------------------------------------------------------------------------

def decoder_linear_names(model: Qwen2Audio) -> list[str]:
    """The language model's linear layers inside its blocks: what `quantize_checkpoint` quantises."""
    return [f"decoder.layers.{i}.{part}.{name}" for i, layer in enumerate(model.decoder.layers)
            for part in ("attn", "mlp") for name, child in getattr(layer, part).named_children()
            if isinstance(child, (nn.Linear, Int8Linear, Int4Linear))]


def ignored_linears(model: Qwen2Audio, quantized: set[str]) -> list[str]:
    """Hub names of the model's linear layers left dense, as llm-compressor lists them in `ignore`."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear) and name not in quantized]
    if model.decoder.lm_head is None and "decoder.lm_head" not in quantized:  # tied: written out dense too
        names.append("decoder.lm_head")
    return [ours_to_hf(name + ".weight").removesuffix(".weight") for name in names]


def common_scheme(quantized: dict[str, QuantizedWeight]) -> tuple[int, int | None, bool]:
    """(bits, group size or None for per channel, symmetric) shared by every quantised layer: what one config
    group says. A layer whose single group spans its inputs fits either strategy when its width is the group size."""
    bits = {w.bits for w in quantized.values()}
    groups = {w.group_size for w in quantized.values() if w.scale.shape[1] > 1}
    symmetric = {w.zero_point is None for w in quantized.values()}
    group_size = next(iter(groups)) if len(groups) == 1 else None
    fits = all(w.scale.shape[1] > 1 or group_size in (None, w.q.shape[1]) for w in quantized.values())
    if len(bits) != 1 or len(groups) > 1 or not fits or len(symmetric) != 1:
        raise CheckpointError(f"saving needs one scheme for every quantised layer; found {sorted(bits)} bits, group "
                              f"sizes {sorted(groups)}, per-channel layers or zero points in some layers only")
    return bits.pop(), group_size, symmetric.pop()


def compressed_config(model: Qwen2Audio, quantized: dict[str, QuantizedWeight], dtype: torch.dtype) -> dict:
    """config.json of a quantised model: ours, in `dtype`, with its `quantization_config` (one scheme)."""
    bits, group_size, symmetric = common_scheme(quantized)
    name = dtype_name(dtype)
    hf = {**getattr(model, "hf_config", {}), **model.config.to_hf_dict(), "dtype": name, "torch_dtype": name}
    hf["text_config"] = {**hf["text_config"], "dtype": name, "torch_dtype": name}
    if "decoder.lm_head" in quantized:  # a quantised head is its own tensor, no longer the embeddings
        hf["tie_word_embeddings"] = hf["text_config"]["tie_word_embeddings"] = False
    hf[QUANTIZATION_CONFIG] = scheme_config(bits, group_size, ignored_linears(model, set(quantized)), symmetric)
    return hf


def save_compressed(model: Qwen2Audio, path: str | os.PathLike, dtype: torch.dtype | str | None = None,
                    max_shard_bytes: int = DEFAULT_SHARD_SIZE, generation_config: dict[str, Any] | None = None,
                    layout: str = "hub") -> Path:
    """Write a model quantised by `quant.quantize` (or read from compressed-tensors) as a compressed-tensors
    checkpoint in the hub layout: its int8/int4 layers packed with their scales, everything else in `dtype`."""
    if layout != "hub":
        raise CheckpointError("a quantised model is saved in the hub layout only (the names of its `ignore` list)")
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    dtype = resolve_dtype(dtype) or model.decoder.embed_tokens.weight.dtype
    quantized = {name: module.quantized_weight() for name, module in model.named_modules()
                 if isinstance(module, (Int8Linear, Int4Linear))}
    tensors = {key: t for key, t in hub_state_dict(model).items()
               if hf_to_ours(key).rpartition(".")[0] not in quantized or key.endswith(".bias")}
    for name, weight in quantized.items():
        tensors.update(compress(ours_to_hf(name + ".weight").removesuffix(".weight"), weight, dtype))
    names = write_shards(directory, tensors, dtype, max_shard_bytes)
    atomic_write_json(directory / CONFIG_NAME, compressed_config(model, quantized, dtype))
    atomic_write_json(directory / GENERATION_CONFIG_NAME,
                      generation_config or getattr(model, "generation_config", None) or default_generation_config())
    for stale in [p for p in directory.glob("model*.safetensors") if p.name not in names] + \
            ([directory / INDEX_FILE] if len(names) == 1 else []):
        stale.unlink(missing_ok=True)
    return directory


def quantize_shard(file: Path, targets: set[str], bits: int, group_size: int | None,
                   dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """One source file's tensors under hub names: the `targets` layers quantised and packed, the rest (views of the
    memory-mapped file) in `dtype` (None: as stored)."""
    shard: dict[str, torch.Tensor] = {}
    for key, tensor in iter_safetensors(file):
        hub, name = to_hub_name(key), hf_to_ours(key) or ""
        if name.endswith(".weight") and name.removesuffix(".weight") in targets:
            weight = tensor.to(dtype or tensor.dtype)
            shard.update(compress(hub.removesuffix(".weight"), quantize_weight(weight, bits, group_size), weight.dtype))
        else:
            shard[hub] = tensor.to(dtype) if dtype and tensor.is_floating_point() else tensor
    return shard


def quantize_checkpoint(source: str | os.PathLike, out: str | os.PathLike, scheme: str = "w4a16",
                        group_size: int | None = DEFAULT_GROUP_SIZE, dtype: torch.dtype | str | None = None) -> Path:
    """Write `source` (a full-precision checkpoint) as compressed-tensors `scheme` (w8a16 / w4a16: symmetric,
    round to nearest, groups of `group_size` inputs, None: per channel) into `out`, one shard at a time: the
    language model's block linears quantised; the audio encoder, projector, embeddings, lm_head and norms kept in
    `dtype` (None: as stored). Every other file of `source` (tokenizer, preprocessor, generation config) is copied."""
    if scheme not in SCHEMES:
        raise CheckpointError(f"unknown scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    source, out = Path(source), Path(out)
    config, raw = read_config(source)
    if quantization_config(raw) is not None:
        raise CheckpointError(f"{source} is already quantised ({QUANTIZATION_CONFIG} in {CONFIG_NAME})")
    dtype = resolve_dtype(dtype)
    with torch.device("meta"):
        model = Qwen2Audio(config)
    targets = set(decoder_linear_names(model))
    files = checkpoint_files(source)
    out.mkdir(parents=True, exist_ok=True)
    names = [SINGLE_FILE] if len(files) == 1 else \
        [f"model-{i:05d}-of-{len(files):05d}.safetensors" for i in range(1, len(files) + 1)]
    weight_map, total = {}, 0
    for file, name in zip(files, names):
        shard = quantize_shard(file, targets, SCHEMES[scheme], group_size, dtype)
        atomic_write(out / name, lambda tmp: save_file(shard, tmp, metadata={"format": "pt"}))
        weight_map.update(dict.fromkeys(shard, name))
        total += sum(t.numel() * t.element_size() for t in shard.values())
    if len(names) > 1:
        atomic_write_json(out / INDEX_FILE, {"metadata": {"total_size": total}, "weight_map": weight_map})
    dtype_fields = {"dtype": dtype_name(dtype), "torch_dtype": dtype_name(dtype)} if dtype else {}
    atomic_write_json(out / CONFIG_NAME, {**raw, **dtype_fields, QUANTIZATION_CONFIG: scheme_config(
        SCHEMES[scheme], group_size, ignored_linears(model, targets))})
    for other in source.iterdir():
        if other.is_file() and other.suffix != ".safetensors" and other.name not in (CONFIG_NAME, INDEX_FILE):
            shutil.copy2(other, out / other.name)
    return out


# -- describing ------------------------------------------------------------------------------------------------

def describe_checkpoint(directory: Path, raw_config: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) lines for `qwen2audio info`: the scheme, and the bytes of the packed integers, their scales
    and the dense tensors, from the files' headers."""
    qconfig = quantization_config(raw_config)
    if qconfig is None:
        return []
    schemes = weight_schemes(directory, qconfig)
    sizes = {"packed": 0, "scales": 0, "dense": 0}
    layers = 0
    for file in checkpoint_files(directory):
        header, _ = read_safetensors_header(file)
        for key, info in header.items():
            param = key.rpartition(".")[2]
            kind = {PACKED: "packed", ZERO_POINT: "scales", SCALE: "scales", SHAPE: "scales"}.get(param, "dense")
            sizes[kind] += info["data_offsets"][1] - info["data_offsets"][0]
            layers += param == PACKED
    scheme = "; ".join(sorted({describe_scheme(s) for s in schemes}))
    return [("quantized", f"{qconfig['quant_method']} {qconfig.get('format')}: {scheme}, {layers} layers, "
                          f"{len(qconfig.get('ignore', []))} linear layers left dense"),
            ("bytes", ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sizes.items()))]
