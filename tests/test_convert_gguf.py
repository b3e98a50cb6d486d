"""GGUF checkpoints: a tiny Qwen2-Audio converted by llama.cpp's own `convert_hf_to_gguf.py` (text model + `--mmproj`
audio part) loads in ours; the quantised types decode exactly as the `gguf` package's reference dequantisation.

The converter is never part of this repository: `make llama-cpp-converter` puts it (from the llama-cpp-python sdist)
in build/llama.cpp, and the tests that need it skip with that instruction when it is absent.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, make_batch

gguf = pytest.importorskip("gguf", reason="GGUF tests need the gguf package: pip install 'qwen2audio[gguf]'")

from qwen2audio import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration, load  # noqa: E402
from qwen2audio.checkpoint import CheckpointError, load_model  # noqa: E402
from qwen2audio.cli import main  # noqa: E402
from qwen2audio.gguf_checkpoint import (  # noqa: E402
    INTEGER_TYPES, QUANTIZED_TYPES, gguf_files, gguf_to_ours, integer_weight, is_gguf_directory, open_gguf,
    read_gguf_state, tensor_to_torch)
from qwen2audio.model import AudioEncoderConfig, TextConfig  # noqa: E402
from qwen2audio.quant import Int4Linear, Int8Linear  # noqa: E402
from qwen2audio.tokenizer import Tokenizer  # noqa: E402

CONVERTER_DIR = REPO / "build" / "llama.cpp"  # where `make llama-cpp-converter` puts it
CONVERTER = CONVERTER_DIR / "convert_hf_to_gguf.py"
QT = gguf.GGMLQuantizationType


def tiny_config(tied: bool) -> Qwen2AudioConfig:
    """The converter needs >= 3 audio layers (it fails to map conv2 with 2) and the full Qwen vocabulary."""
    return Qwen2AudioConfig(
        audio=AudioEncoderConfig(n_mels=128, dim=64, n_layers=3, n_heads=4, ffn_dim=128),
        text=TextConfig(vocab_size=151936, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, norm_eps=1e-6,
                        rope_theta=1000000.0, max_positions=4096, tie_embeddings=tied))


def make_checkpoint(directory, tied: bool, seed: int):
    """A random tiny model whose weights are exact in float16, so that an f16 GGUF holds exactly them."""
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(tiny_config(tied))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2 if p.ndim > 1 else 0.1)
            p.copy_(p.half().float())
    model.save_pretrained(directory)
    return directory


def convert(hf_dir, out_dir, outtype: str):
    """llama.cpp's converter, twice: the text model and (--mmproj) the audio part."""
    if not CONVERTER.is_file():
        pytest.skip(f"llama.cpp's converter is not in {CONVERTER_DIR}: run `make llama-cpp-converter`")
    pytest.importorskip("sentencepiece", reason="llama.cpp's converter imports sentencepiece for every Qwen2 model")
    out_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(CONVERTER_DIR / "gguf-py")}
    for extra, name in (([], f"model-{outtype}.gguf"), (["--mmproj"], f"mmproj-model-{outtype}.gguf")):
        subprocess.run([sys.executable, str(CONVERTER), str(hf_dir), "--outtype", outtype, *extra,
                        "--outfile", str(out_dir / name)], check=True, env=env, capture_output=True, timeout=600)
    return out_dir


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """{'hf': untied original, 'f16': its GGUF pair, 'hf-tied': a tied original, 'q8_0': its GGUF pair}."""
    root = tmp_path_factory.mktemp("gguf")
    dirs = {"hf": make_checkpoint(root / "hf", tied=False, seed=0),
            "hf-tied": make_checkpoint(root / "hf-tied", tied=True, seed=1)}
    dirs["f16"] = convert(dirs["hf"], root / "f16", "f16")
    dirs["q8_0"] = convert(dirs["hf-tied"], root / "q8_0", "q8_0")
    return dirs


def test_f16_pair_loads_with_the_originals_config_weights_and_logits(converted):
    original = load_model(converted["hf"], dtype="float32")
    model = load(converted["f16"], dtype="float32")
    assert model.config == original.config
    reference = original.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, reference[name]), name
    inputs, _ = make_batch(128)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, original(**inputs).logits, atol=1e-3, rtol=0)


def test_tokenizer_comes_from_the_metadata_and_weights_default_to_bf16(converted):
    model = load(converted["f16"])
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    ours, original = model.processor.tokenizer, Tokenizer.from_pretrained(converted["hf"])
    texts = ["<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>What's that?<|im_end|>\n",
             "机器学习很有趣，我们明天见！ def f(x): return x ** 2  # ✓ 🎉"]
    for text in texts:
        assert ours.encode(text) == original.encode(text)
    assert ours.vocab_size == original.vocab_size
    assert ours.chat_template == original.chat_template
    assert (ours.eos_token, ours.pad_token) == (original.eos_token, original.pad_token)


def test_q8_0_pair_decodes_as_gguf_dequantizes(converted):
    model = load(converted["q8_0"], dtype="float32")
    assert model.config.text.tie_embeddings and model.decoder.lm_head is None  # the converter wrote the head out
    assert model.quantization == "int8" and isinstance(model.decoder.layers[0].mlp.up_proj, Int8Linear)
    state = model.state_dict()
    for name, module in model.named_modules():
        if isinstance(module, Int8Linear):
            state[name + ".weight"] = module.dequantize(torch.float32)
    text, audio = gguf_files(converted["q8_0"])
    seen = set()
    for path in (text, audio):
        for tensor in open_gguf(path).tensors:
            seen.add(tensor.tensor_type.name)
            reference = torch.from_numpy(gguf.quants.dequantize(tensor.data, tensor.tensor_type).copy())
            name = gguf_to_ours(tensor.name)
            ours = state[name if name in state else "decoder.embed_tokens.weight"]  # the tied head is the embedding
            assert torch.equal(ours.reshape(reference.shape), reference), tensor.name
    assert "Q8_0" in seen


def test_q8_0_logits_stay_near_the_original(converted):
    original = load_model(converted["hf-tied"], dtype="float32")
    model = load(converted["q8_0"], dtype="float32")
    inputs, _ = make_batch(128)
    with torch.no_grad():
        ours, reference = model(**inputs).logits, original(**inputs).logits
    assert (ours.argmax(-1) == reference.argmax(-1)).float().mean() > 0.9


def requantize(source, destination, qtype, tensor_names):
    """A copy of GGUF file `source` (metadata and tensors) with `tensor_names` re-quantised to `qtype` by `gguf`."""
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(destination, reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if not key.startswith("GGUF.") and key != "general.architecture":
            sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub_type)
    for tensor in reader.tensors:
        if tensor.name in tensor_names:
            floats = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            writer.add_tensor(tensor.name, gguf.quants.quantize(floats, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_q4_0_linears_load_as_int4_layers_equal_to_gguf(converted, tmp_path):
    """The converter writes no q4_0: the f16 text file's linear weights re-quantised by `gguf` itself."""
    text, audio = gguf_files(converted["f16"])
    linears = {t.name for t in open_gguf(text).tensors if len(t.shape) == 2 and t.name != "token_embd.weight"}
    requantize(text, tmp_path / "model-q4_0.gguf", QT.Q4_0, linears)
    (tmp_path / audio.name).symlink_to(audio)
    model = load(tmp_path, dtype="float32")
    assert model.quantization == "int4" and isinstance(model.decoder.lm_head, Int4Linear)
    for tensor in open_gguf(tmp_path / "model-q4_0.gguf").tensors:
        if tensor.name in linears:
            reference = torch.from_numpy(gguf.quants.dequantize(tensor.data, tensor.tensor_type).copy())
            layer = model.get_submodule(gguf_to_ours(tensor.name).removesuffix(".weight"))
            assert torch.equal(layer.dequantize(torch.float32), reference), tensor.name
    original = load_model(converted["hf"], dtype="float32")
    inputs, _ = make_batch(128)
    with torch.no_grad():
        ours, reference = model(**inputs).logits, original(**inputs).logits
    assert (ours.argmax(-1) == reference.argmax(-1)).float().mean() > 0.8


def random_blocks(qtype, n_blocks: int, seed: int) -> np.ndarray:
    """Random valid blocks of a k-quant (no quantiser in `gguf`): random bytes with finite float16 scales."""
    rng = np.random.default_rng(seed)
    block_bytes = QUANTIZED_TYPES[qtype.name][1]
    blocks = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    scales = rng.normal(0, 0.01, size=(n_blocks, 2)).astype(np.float16).view(np.uint8)
    if qtype == QT.Q6_K:  # d is the block's last float16
        blocks[:, -2:] = scales[:, :2]
    else:  # Q4_K: d and dmin lead the block
        blocks[:, :4] = scales
    return blocks


@pytest.mark.parametrize("qtype", [QT.Q8_0, QT.Q4_0, QT.Q4_K, QT.Q6_K])
def test_each_quantized_type_dequantizes_exactly_as_gguf(qtype):
    rows, cols = 6, 512
    if qtype in (QT.Q8_0, QT.Q4_0):
        weights = np.random.default_rng(0).normal(0, 0.1, size=(rows, cols)).astype(np.float32)
        data = gguf.quants.quantize(weights, qtype)
    else:
        data = random_blocks(qtype, rows * cols // 256, seed=1).reshape(rows, -1)
    reference = torch.from_numpy(gguf.quants.dequantize(data, qtype).copy())
    ours = tensor_to_torch(qtype.name, data, [rows, cols], torch.float32)
    assert torch.equal(ours, reference)
    if qtype.name in INTEGER_TYPES:  # the integers and scales that Int8Linear / Int4Linear hold
        assert torch.equal(integer_weight(qtype.name, data, [rows, cols]).dequantize(torch.float32), reference)
    assert tensor_to_torch(qtype.name, data, [rows, cols], torch.bfloat16).dtype == torch.bfloat16


def test_an_unsupported_type_is_named(tmp_path):
    path = tmp_path / "model-q4_1.gguf"
    writer = gguf.GGUFWriter(path, "qwen2")
    weights = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    writer.add_tensor("blk.0.attn_q.weight", gguf.quants.quantize(weights, QT.Q4_1), raw_dtype=QT.Q4_1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    expected = {"decoder.layers.0.attn.q_proj.weight": torch.Size([64, 64])}
    with pytest.raises(CheckpointError, match=r"blk\.0\.attn_q\.weight.*GGUF type Q4_1 is not supported"):
        read_gguf_state([(path, open_gguf(path))], expected, torch.float32)


def test_directories_are_recognised_and_the_pair_is_required(tmp_path):
    assert not is_gguf_directory(tmp_path)
    (tmp_path / "model-f16.gguf").write_bytes(b"")
    assert is_gguf_directory(tmp_path)
    with pytest.raises(CheckpointError, match="mmproj"):
        gguf_files(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert not is_gguf_directory(tmp_path)  # a Hugging Face checkpoint with GGUF copies beside it



def test_cli_info_and_convert_read_a_gguf_directory(converted, tmp_path, capsys):
    assert main(["info", str(converted["q8_0"])]) == 0
    printed = capsys.readouterr().out
    assert "model-q8_0.gguf" in printed and "Q8_0 x" in printed and "tied" in printed
    assert main(["convert", str(converted["f16"]), "--out", str(tmp_path / "hf"), "--dtype", "float32"]) == 0
    original, rewritten = load_model(converted["hf"]).state_dict(), load_model(tmp_path / "hf").state_dict()
    assert all(torch.equal(rewritten[name], tensor) for name, tensor in original.items())


def test_loading_a_pair_with_an_unsupported_type_names_it(converted, tmp_path):
    text, audio = gguf_files(converted["f16"])
    requantize(text, tmp_path / "model-mixed.gguf", QT.Q5_1, {"blk.1.ffn_up.weight"})
    (tmp_path / audio.name).symlink_to(audio)
    with pytest.raises(CheckpointError, match=r"model-mixed\.gguf: tensor blk\.1\.ffn_up\.weight: GGUF type Q5_1"):
        load(tmp_path)
