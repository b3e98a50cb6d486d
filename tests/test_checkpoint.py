"""Checkpoint layouts, sharding, atomic writes, clear errors for bad checkpoints, and the memory of loading."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import make_batch, make_hf_model
from qwen2audio.checkpoint import (HF_TO_OURS, INDEX_FILE, CheckpointError, hf_to_ours, load_model, ours_to_hf,
                                   save_model, to_hub_name)
from qwen2audio.model import Qwen2Audio, Qwen2AudioConfig


@pytest.fixture
def hf_dir(tmp_path):
    make_hf_model("gqa-untied").save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def _logits(model):
    inputs, _ = make_batch(model.config.audio.n_mels)
    with torch.no_grad():
        return model(**inputs).logits


def test_every_parameter_has_one_hub_name_both_ways():
    model = Qwen2Audio(Qwen2AudioConfig.from_name("tiny-random").replace())
    names = list(model.state_dict())
    hub = [ours_to_hf(n) for n in names]
    assert len(set(hub)) == len(hub)
    assert [hf_to_ours(h) for h in hub] == names
    assert hf_to_ours("audio_tower.layers.3.self_attn.k_proj.weight") == "audio_encoder.layers.3.attn.k_proj.weight"
    assert len(HF_TO_OURS) == 25


@pytest.mark.parametrize("key,hub", [
    ("model.language_model.layers.0.mlp.up_proj.weight", "language_model.model.layers.0.mlp.up_proj.weight"),
    ("model.audio_tower.conv1.weight", "audio_tower.conv1.weight"),
    ("lm_head.weight", "language_model.lm_head.weight"),
    ("language_model.model.model.norm.weight", "language_model.model.norm.weight"),  # some 5.12 saves
    ("language_model.model.norm.weight", "language_model.model.norm.weight"),
])
def test_layouts_normalise_to_hub_names(key, hub):
    assert to_hub_name(key) == hub


def test_transformers5_layout_loads(hf_dir, tmp_path):
    """A file written with transformers' in-memory names (model.language_model.*, lm_head.*) loads the same."""
    from transformers import Qwen2AudioForConditionalGeneration
    hf = Qwen2AudioForConditionalGeneration.from_pretrained(hf_dir)
    out = tmp_path / "v5"
    out.mkdir()
    (out / "config.json").write_text((hf_dir / "config.json").read_text())
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, out / "model.safetensors")
    assert any(k.startswith("model.language_model.") for k in load_file(out / "model.safetensors"))
    torch.testing.assert_close(_logits(load_model(out)), _logits(load_model(hf_dir)), atol=0, rtol=0)


def test_sharded_save_roundtrip_and_transformers_reads_it(hf_dir, tmp_path):
    from transformers import Qwen2AudioForConditionalGeneration
    model = load_model(hf_dir)
    out = save_model(model, tmp_path / "sharded", max_shard_bytes=20_000_000)
    index = json.loads((out / INDEX_FILE).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert all(k.startswith(("audio_tower.", "multi_modal_projector.", "language_model.")) for k in index["weight_map"])
    torch.testing.assert_close(_logits(load_model(out)), _logits(model), atol=0, rtol=0)
    hf = Qwen2AudioForConditionalGeneration.from_pretrained(out)
    assert hf.model.language_model.layers[0].self_attn.q_proj.weight.equal(model.decoder.layers[0].attn.q_proj.weight)
    # the checkpoint's own generation_config.json travels with it
    assert json.loads((out / "generation_config.json").read_text()) == \
        json.loads((hf_dir / "generation_config.json").read_text())
    # saving again with one shard removes the old shards and index
    save_model(model, out)
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    assert not (out / INDEX_FILE).exists()


def test_dtype_conversion_on_load_and_save(hf_dir, tmp_path):
    bf16 = load_model(hf_dir, dtype="bfloat16")
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    out = save_model(bf16, tmp_path / "bf16")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert load_model(out).dtype == torch.bfloat16  # the checkpoint's dtype is the default
    assert load_model(out, dtype=torch.float32).dtype == torch.float32


def test_tied_checkpoint_with_equal_lm_head_stays_tied(tmp_path):
    make_hf_model("mha-tied").save_pretrained(tmp_path / "hf")
    model = load_model(tmp_path / "hf")
    assert model.decoder.lm_head is None
    tensors = load_file(tmp_path / "hf" / "model.safetensors")
    tensors["language_model.lm_head.weight"] = tensors["language_model.model.embed_tokens.weight"].clone()
    save_file(tensors, tmp_path / "hf" / "model.safetensors")
    assert load_model(tmp_path / "hf").decoder.lm_head is None
    # a mis-tied save (config says tied, weights differ): the stored head is kept, not thrown away
    tensors["language_model.lm_head.weight"] = tensors["language_model.lm_head.weight"] + 1
    save_file(tensors, tmp_path / "hf" / "model.safetensors")
    untied = load_model(tmp_path / "hf")
    assert untied.decoder.lm_head is not None and not untied.config.text.tie_embeddings
    assert untied.decoder.lm_head.weight.equal(tensors["language_model.lm_head.weight"])


# -- bad checkpoints ------------------------------------------------------------------------------------------

def _edit_tensors(directory, edit):
    tensors = load_file(directory / "model.safetensors")
    edit(tensors)
    save_file(tensors, directory / "model.safetensors")


def test_missing_key_is_named(hf_dir):
    _edit_tensors(hf_dir, lambda t: t.pop("language_model.model.layers.1.mlp.down_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing \(1\): language_model.model.layers.1.mlp.down_proj.weight"):
        load_model(hf_dir)


def test_unexpected_key_is_named(hf_dir):
    _edit_tensors(hf_dir, lambda t: t.__setitem__("vision_tower.patch_embed.weight", torch.zeros(2)))
    with pytest.raises(CheckpointError, match=r"unexpected \(1\): vision_tower.patch_embed.weight"):
        load_model(hf_dir)


def test_config_that_does_not_match_weights(hf_dir):
    config = json.loads((hf_dir / "config.json").read_text())
    config["text_config"]["intermediate_size"] = 81
    (hf_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"mlp\.\w+_proj\.weight has shape \[\d+, \d+\] but config.json "
                                              r"implies \[(81, 48|48, 81)\]"):
        load_model(hf_dir)


def test_truncated_file(hf_dir):
    path = hf_dir / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(hf_dir)


@pytest.mark.parametrize("content", [b"", b"garbage!", b"\xff" * 64])
def test_garbage_weights_file(hf_dir, content):
    (hf_dir / "model.safetensors").write_bytes(content)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(hf_dir)


def test_pickle_only_checkpoint_is_refused(hf_dir):
    (hf_dir / "model.safetensors").unlink()
    (hf_dir / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(CheckpointError, match="pickle weights .*pytorch_model.bin.*never loaded"):
        load_model(hf_dir)


def test_missing_shard_and_missing_config(hf_dir, tmp_path):
    (hf_dir / INDEX_FILE).write_text(json.dumps({"weight_map": {"a": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors, which is missing"):
        load_model(hf_dir)
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path)
    with pytest.raises(CheckpointError, match="not a directory"):
        load_model(tmp_path / "nope")


def test_wrong_model_type(hf_dir):
    config = json.loads((hf_dir / "config.json").read_text())
    config["model_type"] = "llava"
    (hf_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="model_type 'llava', expected 'qwen2_audio'"):
        load_model(hf_dir)


# -- memory -----------------------------------------------------------------------------------------------------

PEAK_SCRIPT = textwrap.dedent("""
    import sys, torch
    from qwen2audio.checkpoint import load_model
    def status_mb(field):  # VmHWM is this process's own peak; ru_maxrss would carry the parent's over fork+exec
        line = next(l for l in open('/proc/self/status') if l.startswith(field + ':'))
        return int(line.split()[1]) / 1024
    from qwen2audio.model import Qwen2Audio, Qwen2AudioConfig
    with torch.no_grad():  # load the kernels' code first, so that `base` holds everything but the weights
        warm = Qwen2Audio(Qwen2AudioConfig.from_name("tiny-random"))
        warm.decoder(warm.decoder.embed_tokens(torch.tensor([[1, 2]])), torch.tensor([[0, 1]]), None).sum()
        del warm
        with torch.device("meta"):  # the meta-device machinery imports ~70 MB of Python on first use
            Qwen2Audio(Qwen2AudioConfig.from_name("tiny-random"))
    base = status_mb('VmRSS')
    model = load_model(sys.argv[1])
    with torch.no_grad():  # touch every weight: a forward over a token reads them all
        model.decoder(model.decoder.embed_tokens(torch.tensor([[1, 2]])), torch.tensor([[0, 1]]), None)
        for p in model.parameters():
            p.sum()
    peak = status_mb('VmHWM')
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    print(base, peak, weights)
""")


def test_loading_takes_about_one_copy_of_the_weights(tmp_path):
    """A mid-size random sharded checkpoint (~360 MB): peak RSS minus the interpreter's is close to one copy."""
    config = Qwen2AudioConfig.from_name("tiny-random")
    config.text.n_layers, config.text.dim, config.text.ffn_dim, config.text.n_heads = 8, 512, 1536, 8
    model = Qwen2Audio(config)
    save_model(model, tmp_path, max_shard_bytes=100 * 2**20)
    del model
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                         check=True).stdout.split()
    base, peak, weights = map(float, out)
    assert 300 < weights < 500
    assert peak - base < 1.15 * weights, f"loading {weights:.0f} MB of weights peaked at {peak - base:.0f} MB"


def test_transformers_layout_output_loads_in_both(hf_dir, tmp_path):
    from transformers import Qwen2AudioForConditionalGeneration
    model = load_model(hf_dir)
    out = save_model(model, tmp_path / "v5", layout="transformers", dtype="float16")
    keys = load_file(out / "model.safetensors")
    assert "lm_head.weight" in keys and "model.audio_tower.conv1.weight" in keys
    assert all(t.dtype == torch.float16 for t in keys.values())
    assert load_model(out).dtype == torch.float16
    hf = Qwen2AudioForConditionalGeneration.from_pretrained(out)
    assert hf.lm_head.weight.equal(model.decoder.lm_head.weight.half())
