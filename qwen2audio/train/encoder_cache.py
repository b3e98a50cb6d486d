"""Frozen-encoder feature caching (`data.encoder_cache`): the frozen audio encoder runs once per clip, not once per
epoch and stage.

Before the first step, `prepare_encoder_cache` lists the clips of data.train and data.validation, keys each by its
content (`feature_cache.content_key`), and computes the missing ones: decoded and turned into log-mel features in
DataLoader workers, encoded in the main process in batches of similar length (eval, no_grad, the run's precision),
written to new shards. Training then reads the frames (`BatchLoader.encoder_cache`) and skips the log-mel and the
encoder. Before rather than lazily: the loader's workers hold no model; every epoch, including the first, and every
later stage then finds the cache whole; and a pass of sorted, full batches is the fastest way to run the encoder.

One cache folder serves every stage that gives the same `data.encoder_cache` path: pretraining, SFT and DPO read the
same clips with the same frozen encoder, so the second and third stage compute nothing. New encoder weights, another
n_mels or another stored dtype or precision change the fingerprint and so the folder; a changed audio file changes
its key, and only that clip is computed again.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path
from typing import Any

import soundfile
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..audio import HOP_LENGTH, N_FFT, N_SAMPLES, SAMPLE_RATE, AudioError, load_audio, log_mel_spectrogram
from ..data.feature_cache import DTYPES, FeatureCache, content_key, corpus_audios
from ..data.rows import RowError, RowRef
from ..model import Qwen2Audio, audio_token_count
from .config import TrainConfig
from .distributed import Dist, barrier

CACHE_VERSION = 1  # bump when what an entry means changes
DEFAULT_FOLDER = "encoder-cache"  # under out_dir, for data.encoder_cache: auto
ENCODE_BATCH = 32  # clips per encoder forward while filling
KEY_CHUNK = 128  # clips per worker task while keying


def cache_dtype(config: TrainConfig) -> torch.dtype:
    """The stored dtype: data.encoder_cache_dtype, or auto = what the projector sees (bf16 under autocast)."""
    name = config.data.encoder_cache_dtype
    if name == "auto":
        name = "float32" if config.model.precision == "32-true" else "bfloat16"
    return DTYPES[name]


def encoder_fingerprint(encoder: nn.Module, n_mels: int, dtype: torch.dtype, precision: str) -> str:
    """A hash of everything an entry depends on besides the audio: the encoder's weights (every byte), the log-mel
    settings, the compute precision and the stored dtype."""
    h = hashlib.blake2b(digest_size=32)
    settings = {"version": CACHE_VERSION, "n_mels": n_mels, "sample_rate": SAMPLE_RATE, "n_fft": N_FFT,
                "hop_length": HOP_LENGTH, "max_samples": N_SAMPLES, "dtype": str(dtype),
                "compute": "float32" if precision == "32-true" else "bf16-autocast"}
    h.update(json.dumps(settings, sort_keys=True).encode())
    for name, t in sorted(encoder.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def cache_root(config: TrainConfig) -> Path:
    path = config.data.encoder_cache
    return Path(config.out_dir) / DEFAULT_FOLDER if path == "auto" else Path(path)


def prepare_encoder_cache(config: TrainConfig, model: Qwen2Audio, d: Dist, note) -> FeatureCache | None:
    """The run's encoder cache, filled for every clip of its manifests (every process calls this); None when
    data.encoder_cache is not set."""
    if not config.data.encoder_cache:
        return None
    if config.model.audio_encoder.mode != "frozen":
        raise ValueError("data.encoder_cache needs model.audio_encoder: frozen (a trained encoder's outputs change "
                         "every step)")
    dtype, n_mels = cache_dtype(config), model.config.audio.n_mels
    fingerprint = encoder_fingerprint(model.audio_encoder, n_mels, dtype, config.model.precision)
    meta = {"n_mels": n_mels, "precision": config.model.precision, "encoder_layers": model.config.audio.n_layers}
    root = cache_root(config)
    if d.is_main:
        FeatureCache.open(root, fingerprint, model.config.audio.dim, dtype, meta)
    barrier(d)
    cache = FeatureCache.open(root, fingerprint, model.config.audio.dim, dtype, meta, create=False)
    start = time.perf_counter()
    dc = config.data
    audios = corpus_audios([*dc.train, *dc.validation], dc.on_bad_row)
    missing, unreadable = _missing(cache, audios, dc.num_workers, dc.on_bad_row)
    computed = fill(cache, missing[d.rank::d.world_size], audios, model, config, d, note)
    barrier(d)
    if d.is_main:
        cache.remove_damaged()
    barrier(d)
    cache.reload()
    if d.is_main:
        found = len(audios) - len(missing) - unreadable
        note(f"encoder cache {cache.directory}: {len(audios)} clips, {found} cached, {computed} computed"
             + (f" ({d.world_size} processes)" if d.world_size > 1 else "")
             + (f", {unreadable} unreadable (skipped)" if unreadable else "")
             + f" in {time.perf_counter() - start:.1f} s")
    return cache


# -- keying ---------------------------------------------------------------------------------------------------------
class _KeyTasks(Dataset):
    """Chunk i of the sources -> [(key or None, samples estimate, error or None)] (reads and hashes the files)."""

    def __init__(self, sources: list[Any]):
        self.sources = sources

    def __len__(self) -> int:
        return -(-len(self.sources) // KEY_CHUNK)

    def __getitem__(self, i: int):
        out = []
        for source in self.sources[i * KEY_CHUNK:(i + 1) * KEY_CHUNK]:
            try:
                out.append((content_key(source), _length_estimate(source), None))
            except AudioError as e:
                out.append((None, 0, str(e)))
        return out


def _length_estimate(source: Any) -> int:
    """Samples at 16 kHz from the file header (to batch clips of similar length); 0 when unknown."""
    try:
        if isinstance(source, (bytes, bytearray)):
            source = io.BytesIO(source)
        elif not isinstance(source, str) or source.startswith(("data:", "http")):
            return 0
        info = soundfile.info(source)
        return int(info.frames * SAMPLE_RATE / info.samplerate)
    except (RuntimeError, OSError, ZeroDivisionError):
        return 0


def _missing(cache: FeatureCache, audios: dict[Any, RowRef], num_workers: int, on_bad_row: str):
    """Key every clip (remembering the keys of paths for the loader); -> the clips to compute, distinct by key and
    sorted by length, as (source, key, estimate); and how many could not be read."""
    sources = list(audios)
    loader = DataLoader(_KeyTasks(sources), batch_size=None, num_workers=min(num_workers, 2))
    missing, seen, unreadable = [], set(), 0
    at = 0
    for chunk in loader:
        for key, estimate, error in chunk:
            source = sources[at]
            at += 1
            if error is not None:
                if on_bad_row == "raise":
                    raise RowError(str(audios[source]), f"audio: {error}")
                unreadable += 1
                continue
            if isinstance(source, str):
                cache.known_keys[source] = key
            if cache.lookup(key) is None and key not in seen:
                seen.add(key)
                missing.append((source, key, estimate))
    missing.sort(key=lambda m: m[2])
    return missing, unreadable


# -- filling -------------------------------------------------------------------------------------------------------
class _MelTasks(Dataset):
    """Batch i of the clips to compute -> (positions decoded, log-mel features, frame mask, samples, errors)."""

    def __init__(self, batches: list[list[Any]], n_mels: int):
        self.batches, self.n_mels = batches, n_mels

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        kept, waves, samples, errors = [], [], [], []
        for j, source in enumerate(self.batches[i]):
            try:
                wave = load_audio(source)
            except (AudioError, OSError) as e:
                errors.append((j, str(e)))
                continue
            kept.append(j)
            samples.append(len(wave))
            waves.append(wave[:N_SAMPLES])  # the loader cuts (long_audio: truncate) or drops longer clips
        if not waves:
            return kept, None, None, samples, errors
        features, frame_mask = log_mel_spectrogram(waves, n_mels=self.n_mels)
        return kept, features, frame_mask, samples, errors


def fill(cache: FeatureCache, missing: list, audios: dict[Any, RowRef], model: Qwen2Audio, config: TrainConfig,
         d: Dist, note) -> int:
    """Compute and store the encoder frames of `missing` [(source, key, estimate)]; returns how many were stored."""
    if not missing:
        return 0
    batches = [missing[i:i + ENCODE_BATCH] for i in range(0, len(missing), ENCODE_BATCH)]
    dc = config.data
    loader = DataLoader(_MelTasks([[m[0] for m in b] for b in batches], model.config.audio.n_mels),
                        batch_size=None, num_workers=dc.num_workers,
                        prefetch_factor=dc.prefetch_batches if dc.num_workers else None)
    encoder = model.audio_encoder
    home = encoder.conv1.weight.device
    encoder.to(d.device)
    was_training = encoder.training
    encoder.eval()
    autocast = torch.autocast(d.device.type, dtype=torch.bfloat16) if config.model.precision != "32-true" \
        else torch.autocast(d.device.type, enabled=False)
    progress = None
    if d.is_main and config.logging.progress:
        from tqdm import tqdm
        progress = tqdm(total=len(missing), unit="clip", desc="encoder cache", dynamic_ncols=True)
    try:
        with torch.no_grad(), cache.writer() as writer:
            for batch, (kept, features, frame_mask, samples, errors) in zip(batches, loader):
                for j, error in errors:
                    if dc.on_bad_row == "raise":
                        raise RowError(str(audios[batch[j][0]]), f"audio: {error}")
                if features is not None:
                    with autocast:
                        frames = model.encoder_frames(features.to(d.device), frame_mask.to(d.device))
                    counts = audio_token_count(frame_mask.sum(-1)).tolist()
                    for j, clip, n in zip(kept, frames.float().split(counts), samples):
                        writer.add(batch[j][1], clip, n)
                if progress is not None:
                    progress.update(len(batch))
        return writer.written
    finally:
        if progress is not None:
            progress.close()
        encoder.to(home)
        encoder.train(was_training)
