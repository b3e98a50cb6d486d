"""`qwen2audio build` (convert/build.py): a Qwen2-Audio from a random tiny Whisper and a random tiny Qwen2, both saved
by transformers: transformers loads the result, its files carry Qwen2-Audio's tokens and Whisper's features, the new
projector starts at the embedding scale; errors name the file and key."""

import contextlib
import io
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import make_batch
from qwen2audio import Tokenizer, load
from qwen2audio.checkpoint import CheckpointError, dtype_name, resolve_dtype
from qwen2audio.cli import main
from qwen2audio.convert import build, build_model, init_projector, tokenizer_notes
from qwen2audio.tokenizer import ASSETS_DIR

TOL = 1e-4
# Qwen2.5's tokenizer has other special tokens where Qwen2-Audio puts its audio tokens.
QWEN25_ADDED = {151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>",
                151646: "<|object_ref_start|>", 151647: "<|object_ref_end|>", 151648: "<|box_start|>"}


def randomise(model, seed):
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
    randomise(WhisperForConditionalGeneration(config), seed).save_pretrained(path)
    return path


def make_qwen2(path, vocab_size=151936, tie=False, seed=1, added_tokens=None):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    config = Qwen2Config(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, rms_norm_eps=1e-6, rope_theta=1e6,
                         tie_word_embeddings=tie)
    randomise(Qwen2ForCausalLM(config), seed).save_pretrained(path)
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


def make_dirs(tmp_path_factory):
    """A random tiny Whisper and a random tiny Qwen2 (with Qwen2.5's special tokens), saved by transformers, and the
    Qwen2-Audio `qwen2audio build` makes of them."""
    root = tmp_path_factory.mktemp("build")
    whisper = make_whisper(root / "whisper")
    qwen2 = make_qwen2(root / "qwen2", added_tokens=QWEN25_ADDED)
    rc, printed, err = run_cli("build", "--encoder", whisper, "--llm", qwen2, "--out", root / "built")
    assert rc == 0, err
    return dict(root=root, whisper=whisper, qwen2=qwen2, built=root / "built", printed=printed)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return make_dirs(tmp_path_factory)


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


def test_a_different_bpe_is_flagged(tmp_path):
    vocab = json.loads((ASSETS_DIR / "vocab.json").read_text())
    vocab = {token: (i + 1) % len(vocab) for token, i in vocab.items()}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    notes = "\n".join(tokenizer_notes(tmp_path, Tokenizer.from_pretrained()))
    assert "differs from Qwen2's BPE in 151643 of 151643 entries" in notes


# -- errors ---------------------------------------------------------------------------------------------------------

def without(src, dst, key):
    shutil.copytree(src, dst)
    state = load_file(dst / "model.safetensors")
    del state[key]
    save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def with_config(src, dst, **changes):
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
    whisper = without(dirs["whisper"], tmp_path / "w", "model.encoder.layers.1.fc2.bias")
    with pytest.raises(CheckpointError, match=r"missing \(1\): model.encoder.layers.1.fc2.bias"):
        build_model(whisper, dirs["qwen2"])
    qwen2 = without(dirs["qwen2"], tmp_path / "q", "lm_head.weight")  # untied: the head is needed
    with pytest.raises(CheckpointError, match=r"missing \(1\): lm_head.weight"):
        build_model(dirs["whisper"], qwen2)


def test_mismatched_shapes_are_named(dirs, tmp_path):
    whisper = with_config(dirs["whisper"], tmp_path / "w", encoder_ffn_dim=100)
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


def test_a_missing_or_bare_llm_directory_is_named(dirs, tmp_path):
    with pytest.raises(CheckpointError, match="is not a directory"):
        build_model(dirs["whisper"], tmp_path / "missing")
    with pytest.raises(CheckpointError, match="has no config.json"):
        build_model(dirs["whisper"], tmp_path)


def test_dtypes_are_given_by_name_or_as_torch_dtypes():
    assert resolve_dtype("bfloat16") is torch.bfloat16 and resolve_dtype(torch.float16) is torch.float16
    assert resolve_dtype(None) is None and dtype_name(torch.float32) == "float32"
