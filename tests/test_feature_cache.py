"""Frozen-encoder feature caching (`data.encoder_cache`): the same losses as computing the encoder every step, for
every stage; entries that follow the encoder weights and the audio; shards that survive a kill; exact resume."""

import json
import re
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import overrides, pitch_rows, run_script, write_jsonl, write_tone, write_training_dir
from qwen2audio import Qwen2AudioForConditionalGeneration
from qwen2audio.audio import load_audio, log_mel_spectrogram
from qwen2audio.data.feature_cache import FeatureCache, content_key
from qwen2audio.train import fit, load_config, setup, train

NOTE = re.compile(r"encoder cache (\S+): (\d+) clips, (\d+) cached, (\d+) computed")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    d = write_training_dir(tmp_path_factory.mktemp("tiny_cache"))
    write_jsonl(d / "multi.jsonl", multi_audio_rows(d))
    return d


def multi_audio_rows(d: Path) -> list[dict]:
    """Chat rows with two audios in one turn, and an audio in each of two user turns."""
    rows = []
    for i in range(8):
        a, b = f"audio/{i}.wav", f"audio/{(i + 5) % 16}.wav"
        rows.append({"messages": [{"role": "user", "content": "<audio><audio>Same pitch?"},
                                  {"role": "assistant", "content": "yes" if i % 4 == (i + 5) % 4 else "no"}],
                     "audios": [a, b]})
        rows.append({"messages": [{"role": "user", "content": "<audio>Pitch?"}, {"role": "assistant", "content": "a"},
                                  {"role": "user", "content": "<audio>And this?"},
                                  {"role": "assistant", "content": "b"}], "audios": [b, a]})
    return rows


def note(err: str) -> tuple[str, int, int, int]:
    """(folder, clips, cached, computed) of the last encoder-cache line a run printed."""
    folder, *numbers = NOTE.findall(err)[-1]
    return (folder, *map(int, numbers))


def encoder_must_not_run(run) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the audio encoder ran although its outputs are cached")
    run.model.audio_encoder.forward = refuse


# -- the loss is the same -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage,manifest,extra", [
    ("pretrain", "task.jsonl", ["model.lm=full"]),
    ("sft", "multi.jsonl", ["model.lm=lora", "data.bucket_batches=2"]),
    ("dpo", "dpo.jsonl", ["model.lm=lora", "dpo.sft_weight=0.5"]),
])
def test_cached_encoder_outputs_give_the_same_losses(tiny, tmp_path, stage, manifest, extra):
    common = [f"data.train={tiny / manifest}", f"data.validation={tiny / manifest}", "optim.lr=1e-2",
              "train.max_steps=4", *extra]
    plain = train(load_config(None, overrides(tiny, tmp_path / "plain", *common), stage=stage))
    run = setup(load_config(None, overrides(tiny, tmp_path / "cached", *common, "data.num_workers=2",
                                            f"data.encoder_cache={tmp_path / 'cache'}"), stage=stage))
    encoder_must_not_run(run)  # the loader (2 worker processes) yields cached frames: the encoder never runs
    fit(run)
    keys = ["loss", *(["rewards/margin", "sft"] if stage == "dpo" else [])]
    for key in keys:
        got, want = [line[key] for line in run.history], [line[key] for line in plain.history]
        assert got == pytest.approx(want, abs=1e-5, rel=0), key
    assert plain.history[-1]["loss"] < plain.history[0]["loss"]  # it trains
    distinct = {"task.jsonl": 16, "multi.jsonl": 13, "dpo.jsonl": 16}[manifest]  # multi: 0-7 with 5-12
    assert len(run.batch_loader.encoder_cache) == distinct  # each clip once, however many rows use it
    batch = run.batch_loader.load(next(iter(run.planner)))
    n_tokens = int((batch.input_ids == run.model.config.audio_token_id).sum())
    assert batch.input_features is None and batch.audio_frames.shape[0] * batch.audio_repeat == n_tokens > 0


def test_bf16_cache_is_what_the_projector_sees_under_autocast(tiny, tmp_path):
    common = [f"data.train={tiny / 'sft.jsonl'}", "model.precision=bf16-mixed", "model.lm=full", "optim.lr=1e-2",
              "train.max_steps=3"]
    plain = train(load_config(None, overrides(tiny, tmp_path / "plain", *common), stage="sft"))
    cached = train(load_config(None, overrides(tiny, tmp_path / "cached", *common,
                                               f"data.encoder_cache={tmp_path / 'c'}"), stage="sft"))
    assert cached.batch_loader.encoder_cache.dtype == torch.bfloat16  # auto: bf16 under bf16-mixed
    meta = json.loads((cached.batch_loader.encoder_cache.directory / "meta.json").read_text())
    assert meta["dtype"] == "bfloat16" and meta["precision"] == "bf16-mixed"
    # the bf16 encoder's matmuls round differently in another batch shape; the stored cast itself is exact
    assert [x["loss"] for x in cached.history] == pytest.approx([x["loss"] for x in plain.history], abs=2e-3)


def test_long_audio_is_dropped_or_cut_as_without_the_cache(tiny, tmp_path):
    write_tone(tmp_path / "long.wav", 31.0, 300, noise=0.01)
    rows = pitch_rows(tmp_path, 4, "sft") + [
        {"messages": [{"role": "user", "content": "<audio>Pitch?"}, {"role": "assistant", "content": "low"}],
         "audios": ["long.wav"]}]
    write_jsonl(tmp_path / "rows.jsonl", rows)
    for policy in ("drop", "truncate"):
        common = [f"data.train={tmp_path / 'rows.jsonl'}", f"data.long_audio={policy}", "model.lm=full",
                  "data.batch_size=5", "data.bucket_batches=1", "data.max_length=4096", "train.max_steps=2"]
        plain = train(load_config(None, overrides(tiny, tmp_path / f"p-{policy}", *common), stage="sft"))
        cached = train(load_config(None, overrides(tiny, tmp_path / f"c-{policy}", *common,
                                                   f"data.encoder_cache={tmp_path / 'c'}"), stage="sft"))
        assert [x["loss"] for x in cached.history] == pytest.approx([x["loss"] for x in plain.history], abs=1e-5)
        assert cached.history[-1]["samples"] == plain.history[-1]["samples"] == (4 if policy == "drop" else 5)
        key = "data/dropped_long_audio" if policy == "drop" else "data/truncated_long_audio"
        assert cached.history[-1][key] == plain.history[-1][key] == 2


# -- entries ------------------------------------------------------------------------------------------------------
def test_an_entry_is_the_encoder_output_of_its_clip_alone(tiny, tmp_path):
    run = setup(load_config(None, overrides(tiny, tmp_path, f"data.train={tiny / 'task.jsonl'}", "model.lm=full",
                                            "data.encoder_cache=auto"), stage="pretrain"))
    cache = run.batch_loader.encoder_cache
    assert cache.directory.parent == tmp_path / "encoder-cache" and cache.dtype == torch.float32
    model = run.model.eval()
    for i, frames in ((0, 12), (7, 17), (13, 20)):  # 0.5, 0.7, 0.8 s: 50, 70, 80 mel frames; 40 ms per frame
        wave = load_audio(tiny / "audio" / f"{i}.wav")
        features, mask = log_mel_spectrogram([wave], n_mels=model.config.audio.n_mels)
        with torch.no_grad():
            alone = model.encoder_frames(features, mask)
        entry = cache.lookup(content_key(str(tiny / "audio" / f"{i}.wav")))
        assert entry.frames == alone.shape[0] == frames and entry.samples == wave.size
        torch.testing.assert_close(cache.read(entry), alone, atol=1e-5, rtol=0)


def test_changed_audio_or_encoder_weights_recompute_their_entries(tiny, tmp_path, capsys):
    data = tmp_path / "data"
    write_jsonl(data / "task.jsonl", pitch_rows(data, 8, "task"))
    common = [f"data.train={data / 'task.jsonl'}", "model.lm=full", f"data.encoder_cache={tmp_path / 'cache'}"]

    def cache_run(ckpt=tiny / "ckpt"):
        run = setup(load_config(None, overrides(tiny, tmp_path / "out", *common, f"model.path={ckpt}"),
                                stage="pretrain"))
        return run, note(capsys.readouterr().err)

    first, (folder, clips, cached, computed) = cache_run()
    assert (clips, cached, computed) == (8, 0, 8)
    _, again = cache_run()
    assert again == (folder, 8, 8, 0)

    # one audio file changes: only its entry is computed, and it holds the new clip's frames
    write_tone(data / "audio" / "3.wav", 0.8, 1000, noise=0.01, seed=99)
    run, changed = cache_run()
    assert changed == (folder, 8, 7, 1)
    cache = run.batch_loader.encoder_cache
    wave = load_audio(data / "audio" / "3.wav")
    features, mask = log_mel_spectrogram([wave], n_mels=run.model.config.audio.n_mels)
    with torch.no_grad():
        fresh = run.model.encoder_frames(features, mask)
    torch.testing.assert_close(cache.read(cache.lookup(content_key(str(data / "audio" / "3.wav")))), fresh,
                               atol=1e-5, rtol=0)

    # one encoder weight changes: a new fingerprint, every clip computed again; the projector's do not matter
    model = Qwen2AudioForConditionalGeneration.from_pretrained(tiny / "ckpt")
    with torch.no_grad():
        model.projector.linear.weight.add_(0.1)
    model.save_pretrained(tmp_path / "new-projector")
    assert cache_run(tmp_path / "new-projector")[1] == (folder, 8, 8, 0)
    with torch.no_grad():
        model.audio_encoder.layers[0].fc1.weight[0, 0] += 1e-3
    model.save_pretrained(tmp_path / "new-encoder")
    _, (new_folder, clips, cached, computed) = cache_run(tmp_path / "new-encoder")
    assert new_folder != folder and (clips, cached, computed) == (8, 0, 8)
    assert cache_run(tmp_path / "new-encoder")[1] == (new_folder, 8, 8, 0)


def test_a_damaged_or_half_written_shard_is_ignored_and_recomputed(tiny, tmp_path, capsys):
    common = overrides(tiny, tmp_path / "out", f"data.train={tiny / 'task.jsonl'}", "model.lm=full",
                       f"data.encoder_cache={tmp_path / 'cache'}")
    run = setup(load_config(None, common, stage="pretrain"))
    directory = run.batch_loader.encoder_cache.directory
    (shard,) = directory.glob("shard-*.bin")
    # what a kill leaves: the writer's temporary file (never read), and a shard cut short (a damaged disk)
    (directory / ".shard-dead.bin.x.tmp").write_bytes(b"partial")
    shard.write_bytes(shard.read_bytes()[:-10])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = setup(load_config(None, common, stage="pretrain"))
    assert any("ignoring shard" in str(w.message) for w in caught)
    assert note(capsys.readouterr().err)[1:] == (16, 0, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the damaged shard was removed once its clips were computed again
        assert len(FeatureCache(directory, 32, torch.float32)) == 16
    assert not shard.exists() and len(list(directory.glob("shard-*.bin"))) == 1


def test_config_errors(tiny, tmp_path):
    with pytest.raises(ValueError, match="data.encoder_cache needs model.audio_encoder: frozen"):
        setup(load_config(None, overrides(tiny, tmp_path, f"data.train={tiny / 'task.jsonl'}", "model.lm=full",
                                          "model.audio_encoder=full", "data.encoder_cache=auto"), stage="pretrain"))
    with pytest.raises(ValueError, match="data.encoder_cache_dtype must be one of auto, float32"):
        load_config(None, ["data.encoder_cache_dtype=int8"])


# -- resume -------------------------------------------------------------------------------------------------------
def test_sigkill_and_resume_with_the_cache_gives_the_uninterrupted_weights(tiny, tmp_path):
    N = 3
    common = [o for o in overrides(tiny, "unused", f"data.train={tiny / 'sft.jsonl'}", "data.batch_size=2",
                                   "data.num_workers=2", "data.bucket_batches=3", f"train.max_steps={2 * N}",
                                   "optim.lr=1e-2", f"checkpoint.every={N}", "checkpoint.save_final=true",
                                   f"data.encoder_cache={tmp_path / 'cache'}") if not o.startswith("out_dir=")]
    straight = run_script(tmp_path, tmp_path / "straight", 0, "none", *common)
    assert straight.returncode == 0, straight.stderr
    killed = run_script(tmp_path, tmp_path / "killed", N + 1, "step", *common)
    assert killed.returncode == -9
    resumed = run_script(tmp_path, tmp_path / "killed", 0, "none", *common)
    assert resumed.returncode == 0, resumed.stderr
    assert f"at step {N}" in resumed.stderr and note(resumed.stderr)[1:] == (16, 16, 0)
    a = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "final" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_three_stages_chained_through_their_final_models_share_one_cache(tiny, tmp_path, capsys):
    cache = f"data.encoder_cache={tmp_path / 'cache'}"
    model = tiny / "ckpt"
    seen = []
    for stage, manifest in (("pretrain", "task.jsonl"), ("sft", "sft.jsonl"), ("dpo", "dpo.jsonl")):
        train(load_config(None, overrides(tiny, tmp_path / stage, f"data.train={tiny / manifest}", cache,
                                          f"model.path={model}", "model.lm=lora", "train.max_steps=1",
                                          "checkpoint.save_final=true"), stage=stage))
        seen.append(note(capsys.readouterr().err))
        model = tmp_path / stage / "final"  # the next stage starts from this one's model: the same encoder bytes
    assert [s[1:] for s in seen] == [(16, 0, 16), (16, 16, 0), (16, 16, 0)]
    assert len({s[0] for s in seen}) == 1
