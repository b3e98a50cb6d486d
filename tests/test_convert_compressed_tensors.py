"""compressed-tensors checkpoints against their makers: llm-compressor itself writes W8A16 / W4A16 (round to nearest,
its asymmetric W4A16, and GPTQ) checkpoints of a tiny random Qwen2-Audio, and ours loads them with the logits that
transformers gives on the same checkpoint dequantised by compressed-tensors; `qwen2audio quantize` and
`save_pretrained` of a quantised model write checkpoints that compressed-tensors dequantises into exactly our layers'
weights."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import make_batch, make_hf_model
from qwen2audio import load
from qwen2audio.api import DEMO_MODEL_DIR
from qwen2audio.checkpoint import CheckpointError, to_transformers_name
from qwen2audio.cli import main as cli_main
from qwen2audio.compressed_checkpoint import pack_int32, unpack_int32
from qwen2audio.generate import GenerationConfig, Generator
from qwen2audio.quant import Int4Linear, Int8Linear, quantize, quantize_weight

compressed_tensors = pytest.importorskip("compressed_tensors")
llmcompressor = pytest.importorskip("llmcompressor")

# Every width a multiple of 128, llm-compressor's group size: hidden 128, kv 64, ffn 256; the audio part small.
HF_CONFIG = dict(
    audio_config=dict(d_model=64, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=128, num_mel_bins=128),
    text_config=dict(model_type="qwen2", vocab_size=151700, hidden_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, intermediate_size=256, rms_norm_eps=1e-6,
                     tie_word_embeddings=False))
IGNORE = ["lm_head", "re:.*audio_tower.*", "re:.*multi_modal_projector.*"]  # llm-compressor's Qwen2-Audio example
SCHEMES = ["W8A16", "W4A16", "W4A16_ASYM", "GPTQ-W4A16"]  # round to nearest, and GPTQ on a few random sequences
SECONDS = (0.8, 2.0)  # short clips: logits of two short sequences over the full vocabulary
LOGITS_TOLERANCE = dict(atol=2e-4, rtol=2e-4)  # fp32 throughout: only the int kernels' order of sums differs


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """The tiny model in full precision (fp32), saved by transformers."""
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    torch.manual_seed(0)
    model = Qwen2AudioForConditionalGeneration(Qwen2AudioConfig(**HF_CONFIG)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1 if p.ndim > 1 else 0.3)
    directory = tmp_path_factory.mktemp("source")
    model.save_pretrained(directory)
    return directory


def llm_compressor_checkpoint(source, out, scheme: str):
    """llm-compressor's weight-only oneshot, saved compressed: round to nearest (no calibration data), or GPTQ
    calibrated on four random token sequences (tokenised already; the processor it requires is any tokenizer)."""
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoTokenizer, Qwen2AudioForConditionalGeneration

    model = Qwen2AudioForConditionalGeneration.from_pretrained(source).eval()
    if scheme.startswith("GPTQ-"):
        seeded = torch.Generator().manual_seed(0)
        ids = torch.randint(0, HF_CONFIG["text_config"]["vocab_size"], (4, 32), generator=seeded)
        data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
        oneshot(model=model, dataset=data, recipe=GPTQModifier(targets="Linear", scheme=scheme[5:], ignore=IGNORE),
                num_calibration_samples=4, max_seq_length=32, pipeline="basic",
                processor=AutoTokenizer.from_pretrained(DEMO_MODEL_DIR))
    else:
        oneshot(model=model, recipe=QuantizationModifier(targets="Linear", scheme=scheme, ignore=IGNORE))
    model.save_pretrained(out, save_compressed=True)
    return out


def dequantized_by_compressed_tensors(directory, out):
    """The checkpoint as compressed-tensors' own file converter dequantises it (fp32), without a model."""
    from compressed_tensors.entrypoints.convert import convert_checkpoint
    from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import CompressedTensorsDequantizer

    convert_checkpoint(directory, out, CompressedTensorsDequantizer(directory, dtype=torch.float32), max_workers=1,
                       device="cpu")
    return out


def transformers_logits(directory, inputs):
    from transformers import Qwen2AudioForConditionalGeneration

    model = Qwen2AudioForConditionalGeneration.from_pretrained(directory).eval()
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture(scope="module", params=SCHEMES)
def compressed(request, source, tmp_path_factory):
    """(scheme, llm-compressor's checkpoint, the same dequantised by compressed-tensors)."""
    directory = tmp_path_factory.mktemp(request.param)
    checkpoint = llm_compressor_checkpoint(source, directory / "compressed", request.param)
    return request.param, checkpoint, dequantized_by_compressed_tensors(checkpoint, directory / "dequantized")


def test_llm_compressor_checkpoints_give_transformers_logits(compressed):
    scheme, checkpoint, dequantized = compressed
    config = json.loads((checkpoint / "config.json").read_text())["quantization_config"]
    assert config["format"] == "pack-quantized"
    model = load(checkpoint)
    layer = model.decoder.layers[0].mlp.down_proj
    assert isinstance(layer, Int8Linear if scheme == "W8A16" else Int4Linear)
    assert (layer.quantized_weight().zero_point is not None) == scheme.endswith("ASYM")
    assert model.audio_encoder.layers[0].fc1.weight.dtype == torch.float32  # ignored layers: dense, as stored
    inputs, _ = make_batch(128, seconds=SECONDS)
    with torch.no_grad():
        ours = model(**inputs).logits
    valid = inputs["attention_mask"].bool()  # padding rows differ by design (masked out of every result)
    torch.testing.assert_close(ours[valid], transformers_logits(dequantized, inputs)[valid], **LOGITS_TOLERANCE)


def test_compiled_decode_of_grouped_int8_gives_the_eager_tokens(compressed):
    """int8 with a scale per 128 inputs (the AVX-512 kernel where it runs, else the fused per-group pass) inside the
    compiled decode step that a quantised model gets by default."""
    scheme, checkpoint, _ = compressed
    if scheme != "W8A16":
        pytest.skip("int4 multiplies by ATen's kernel whatever its group size: no new path in the graph")
    inputs, _ = make_batch(128, seconds=SECONDS)
    config = GenerationConfig(max_new_tokens=6)
    eager = Generator(load(checkpoint), compile=False).generate(inputs, config)
    compiled = Generator(load(checkpoint), compile=None)
    assert compiled.compile
    assert torch.equal(compiled.generate(inputs, config), eager)


def test_llm_compressor_rtn_is_our_quantiser(compressed, source):
    """Symmetric round to nearest: our `quantize_weight` gives llm-compressor's integers and scales."""
    scheme, checkpoint, _ = compressed
    if scheme != scheme.removesuffix("_ASYM").removeprefix("GPTQ-"):
        pytest.skip("our quantiser is symmetric round to nearest")
    stored = load(checkpoint).decoder.layers[1].mlp.up_proj.quantized_weight()
    ours = quantize_weight(load(source).decoder.layers[1].mlp.up_proj.weight, stored.bits, 128)
    assert torch.equal(ours.q, stored.q) and torch.equal(ours.scale.float(), stored.scale.float())


@pytest.mark.parametrize("spelling", ["transformers", "transformers-5.17"])
def test_other_key_spellings_read_the_same(compressed, spelling, tmp_path):
    """transformers >= 5.10 names (model.language_model.*, lm_head) and 5.17's language_model.model.model.*."""
    _, checkpoint, _ = compressed
    for f in checkpoint.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, tmp_path / f.name)
    tensors = load_file(checkpoint / "model.safetensors")
    if spelling == "transformers":
        renamed = {to_transformers_name(k): t for k, t in tensors.items()}
    else:
        renamed = {k.replace("language_model.model.", "language_model.model.model."): t for k, t in tensors.items()}
    save_file(renamed, tmp_path / "model.safetensors")
    a, b = load(checkpoint), load(tmp_path)
    for (name, x), (_, y) in zip(sorted(a.state_dict().items()), sorted(b.state_dict().items())):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("bits", [4, 8])
def test_packing_is_compressed_tensors(bits):
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32

    q = torch.randint(-(2 ** (bits - 1)), 2 ** (bits - 1), (6, 40), dtype=torch.int8)  # 40: a partial last word
    packed = pack_int32(q, bits)
    assert torch.equal(packed, pack_to_int32(q, bits))
    assert torch.equal(unpack_int32(packed, bits, 40), q)
    assert torch.equal(unpack_from_int32(packed, bits, q.shape), q)
    row = q[:, :1].T  # one row of a transposed column, as a layer's zero points are packed
    assert torch.equal(pack_int32(row, bits), pack_to_int32(row.contiguous(), bits))


def quantized_layers(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, (Int8Linear, Int4Linear))}


def assert_dequantized_equal(model, dequantized_dir, dtype=torch.float32):
    """Every quantised layer of `model` equals compressed-tensors' dequantisation of the files, bit for bit (each
    weight one product of its integer and its scale, rounded once to the scales' `dtype`)."""
    from qwen2audio.checkpoint import ours_to_hf

    dense = {k: t for f in dequantized_dir.glob("*.safetensors") for k, t in load_file(f).items()}
    layers = quantized_layers(model)
    assert layers
    for name, layer in layers.items():
        theirs = dense[ours_to_hf(name + ".weight")].to(dtype)
        assert torch.equal(theirs, layer.quantized_weight().dequantize(dtype)), name


@pytest.mark.parametrize("scheme,group_size", [("w8a16", "128"), ("w4a16", "128"), ("w4a16", "channel")])
def test_quantize_command_is_read_back_exactly_by_compressed_tensors(source, scheme, group_size, tmp_path, capsys):
    out = tmp_path / "quantized"
    assert cli_main(["quantize", "--model", str(source), "--scheme", scheme, "--group-size", group_size,
                     "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    weights = config["config_groups"]["group_0"]["weights"]
    assert weights["num_bits"] == int(scheme[1]) and weights["strategy"] == ("channel" if group_size == "channel"
                                                                             else "group")
    assert "language_model.lm_head" in config["ignore"] and "multi_modal_projector.linear" in config["ignore"]
    model = load(out)
    assert not isinstance(model.decoder.lm_head, (Int8Linear, Int4Linear))  # lm_head stays dense
    assert len(quantized_layers(model)) == 2 * 7
    assert_dequantized_equal(model, dequantized_by_compressed_tensors(out, tmp_path / "dequantized"))
    assert cli_main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    group = "per channel" if group_size == "channel" else "group 128"
    assert f"int{scheme[1]} symmetric, {group}, 14 layers" in info and "packed" in info


def test_quantize_command_writes_shard_by_shard_a_tied_bf16_model(tmp_path):
    """A sharded bf16 source with tied embeddings: one quantised shard per source shard and the index; the head
    stays the embeddings; scales in bf16, read back exactly by compressed-tensors; logits near the source's."""
    make_hf_model("mha-tied").save_pretrained(tmp_path / "hf")
    source = load(tmp_path / "hf", dtype=torch.bfloat16).save_pretrained(tmp_path / "source", max_shard_size="2MB")
    shards = sorted(p.name for p in source.glob("*.safetensors"))
    assert len(shards) > 2
    out = tmp_path / "quantized"
    assert cli_main(["quantize", "--model", str(source), "--scheme", "w4a16", "--group-size", "32",
                     "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*.safetensors")) == shards
    assert set(json.loads((out / "model.safetensors.index.json").read_text())["weight_map"].values()) == set(shards)
    model, reference = load(out), load(source)
    assert model.decoder.lm_head is None  # tied: the head reads the (dense) embeddings
    assert model.decoder.layers[0].attn.q_proj.quantized_weight().scale.dtype == torch.bfloat16
    assert_dequantized_equal(model, dequantized_by_compressed_tensors(out, tmp_path / "dequantized"), torch.bfloat16)
    inputs, _ = make_batch(128, seconds=SECONDS)
    inputs["input_features"] = inputs["input_features"].bfloat16()
    valid = inputs["attention_mask"].bool()
    with torch.no_grad():
        a, b = model(**inputs).logits[valid].float(), reference(**inputs).logits[valid].float()
    assert torch.nn.functional.cosine_similarity(a, b, dim=-1).min() > 0.98


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_saved_quantized_model_loads_back_and_is_read_by_compressed_tensors(source, mode, tmp_path):
    """save_pretrained of `quantize(model)` (its head quantised too): the same integers come back, the same logits,
    and compressed-tensors dequantises the file into our weights."""
    model = quantize(load(source), mode, group_size=128)
    model.save_pretrained(tmp_path / "saved")
    again = load(tmp_path / "saved")
    assert set(quantized_layers(again)) == set(quantized_layers(model))
    inputs, _ = make_batch(128, seconds=SECONDS)
    with torch.no_grad():
        torch.testing.assert_close(again(**inputs).logits, model(**inputs).logits, atol=0, rtol=0)
    assert_dequantized_equal(again, dequantized_by_compressed_tensors(tmp_path / "saved", tmp_path / "dequantized"))


def test_llm_compressor_checkpoints_saved_again_are_the_same_files(compressed, tmp_path):
    """Loaded, then saved by us: the same packed integers, scales and zero points, tensor for tensor, and the same
    scheme in config.json."""
    scheme, checkpoint, _ = compressed
    load(checkpoint).save_pretrained(tmp_path)
    theirs, ours = load_file(checkpoint / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert sorted(theirs) == sorted(ours)
    for key, tensor in theirs.items():
        assert torch.equal(ours[key], tensor), key
    weights = [json.loads((d / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"]["weights"]
               for d in (checkpoint, tmp_path)]
    for field in ("num_bits", "symmetric", "strategy", "group_size"):
        assert weights[0][field] == weights[1][field], field


def test_unsupported_formats_are_refused_by_name(compressed, tmp_path):
    _, checkpoint, _ = compressed
    shutil.copytree(checkpoint, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "config.json"
    config = json.loads(path.read_text())
    config["quantization_config"]["config_groups"]["group_0"]["format"] = "float-quantized"
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="'float-quantized'"):
        load(tmp_path / "ckpt")
    config["quantization_config"]["quant_method"] = "gptq"
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="quant_method 'gptq'"):
        load(tmp_path / "ckpt")
