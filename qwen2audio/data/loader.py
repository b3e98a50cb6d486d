"""Micro-batches for training: plan in the main process, load in worker processes.

    planner = Planner(sources, encoder, batch_size=4, seed=0)          # rows -> lists of encoded samples
    loader = make_dataloader(planner, BatchLoader.from_tokenizer(tok))  # workers: audio -> log-mel -> Batch

The planner reads the mixed manifests as a stream, parses and tokenizes each row (a bad row raises `RowError` naming
file:line, or is skipped and counted), and groups rows into *pools* of `bucket_batches` micro-batches: a pool is
shuffled with a generator seeded by its index, sorted by estimated length and cut into micro-batches, whose order is
shuffled again (length bucketing). Micro-batch g of the whole run is the same whatever the number of processes:
process r of W takes the g with g % W == r, so W processes with gradient accumulation A see exactly what one process
with accumulation A*W sees. The position of a run is one number, the micro-batches consumed, plus the reader state
at the start of its pool (`Planner.state_at`), so a resumed run continues at the same row.

The workers decode audio and compute log-mel features, expand each <|AUDIO|> to `audio_token_count(frames)` copies,
apply the length policy (never cutting inside an audio span) and collate with left or right padding. With an encoder
cache (`feature_cache.FeatureCache`: a frozen encoder's outputs computed once per clip) they read each clip's encoder
frames instead of decoding it, and the batch carries `audio_frames` in place of log-mel features.
"""

from __future__ import annotations

import random
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import soundfile
import torch
from torch.utils.data import DataLoader

from ..audio import N_SAMPLES, SAMPLE_RATE, HOP_LENGTH, AudioError, load_audio, log_mel_spectrogram
from ..model import IGNORE_INDEX, audio_token_count, mel_frames_needed
from ..tokenizer import Tokenizer
from .config import SourceConfig
from .encode import Encoded, EncodedPair, Encoder, expand_audio, safe_cut
from .feature_cache import FeatureCache
from .manifest import Mixture, decode_json
from .rows import RowError, parse_row

MAX_AUDIO_TOKENS = int(audio_token_count(N_SAMPLES // HOP_LENGTH))  # 750: the estimate for audio of unknown length
POOL_STATES_KEPT = 64  # pool start states remembered for checkpoints (the loader runs a few pools ahead at most)


@dataclass
class Plan:
    """What one micro-batch will hold: its global index and its encoded samples (audio not yet decoded)."""

    index: int
    samples: list[Encoded | EncodedPair]
    stats: dict[str, int] = field(default_factory=dict)  # rows skipped while planning (on a pool's first batch)


class Planner:
    """Mixed manifest rows -> `Plan`s, deterministically; iterate it for this process's micro-batches."""

    def __init__(self, sources: list[SourceConfig], encoder: Encoder, batch_size: int, bucket_batches: int = 16,
                 seed: int = 0, on_bad_row: str = "raise", cycle: bool = True, rank: int = 0, world_size: int = 1,
                 start: dict | None = None):
        self.sources, self.encoder = sources, encoder
        self.batch_size, self.bucket_batches, self.seed = batch_size, bucket_batches, seed
        self.on_bad_row, self.cycle, self.rank, self.world_size = on_bad_row, cycle, rank, world_size
        self.start = start or {"micro_batches": 0, "pool_start": None}
        self.pool_starts: dict[int, dict] = {}

    def state_at(self, micro_batches: int) -> dict:
        """The position after `micro_batches` global micro-batches: pass it as `start` to continue from there."""
        pool = micro_batches // self.bucket_batches
        if pool not in self.pool_starts:
            raise RuntimeError(f"pool {pool} has not been planned yet (planned: {sorted(self.pool_starts)})")
        return {"micro_batches": micro_batches, "pool_start": self.pool_starts[pool]}

    def __iter__(self) -> Iterator[Plan]:
        first = self.start["micro_batches"]
        pool = first // self.bucket_batches
        mixture = Mixture(self.sources, self.cycle, self.start["pool_start"])
        try:
            while True:
                self._remember(pool, mixture.state())
                samples, stats = self._read_pool(mixture)
                if not samples:
                    return
                for j, batch in enumerate(self._bucket(samples, pool)):
                    g = pool * self.bucket_batches + j
                    if g >= first and g % self.world_size == self.rank:
                        yield Plan(g, batch, dict(stats) if j == 0 else {})
                pool += 1
        finally:
            mixture.close()

    def _remember(self, pool: int, state: dict) -> None:
        self.pool_starts[pool] = state
        for old in [k for k in self.pool_starts if k < pool - POOL_STATES_KEPT]:
            del self.pool_starts[old]

    def _read_pool(self, mixture: Mixture) -> tuple[list, Counter]:
        wanted = self.bucket_batches * self.batch_size
        samples, stats = [], Counter()
        for raw in mixture:
            try:
                sample = parse_row(decode_json(raw), self._base_dir(raw.ref.source))
                samples.append(self.encoder(sample, raw.ref))
            except ValueError as e:
                if self.on_bad_row == "raise":
                    raise RowError(str(raw.ref), str(e)) from None
                stats["skipped_rows"] += 1
                if stats["skipped_rows"] <= 3:
                    warnings.warn(f"skipped {raw.ref}: {e}", stacklevel=2)
            if len(samples) == wanted:
                break
        return samples, stats

    def _base_dir(self, source: int) -> Path:
        s = self.sources[source]
        return Path(s.audio_dir) if s.audio_dir else Path(s.path).parent

    def _bucket(self, samples: list, pool: int) -> list[list]:
        """Shuffle, sort by estimated length, cut into micro-batches, shuffle their order (all seeded by the pool)."""
        if self.bucket_batches > 1:
            rng = random.Random(f"{self.seed}:pool:{pool}")
            rng.shuffle(samples)
            samples.sort(key=estimated_length)
        batches = [samples[i:i + self.batch_size] for i in range(0, len(samples), self.batch_size)]
        if self.bucket_batches > 1:
            rng.shuffle(batches)
        return batches


def estimated_length(sample: Encoded | EncodedPair) -> int:
    """Tokens after audio expansion, with each audio's length read from its file header (no decoding)."""
    return len(sample) + sum(_audio_tokens_estimate(a) - 1 for a in sample.audios)


def _audio_tokens_estimate(source: Any) -> int:
    if isinstance(source, str) and not source.startswith(("data:", "http")):
        try:
            info = soundfile.info(source)
            frames = -(-int(min(info.frames / info.samplerate, N_SAMPLES / SAMPLE_RATE) * SAMPLE_RATE) // HOP_LENGTH)
            return int(audio_token_count(frames))
        except (RuntimeError, OSError, ZeroDivisionError):
            pass
    return MAX_AUDIO_TOKENS


# -- worker side ------------------------------------------------------------------------------------------------
@dataclass
class Batch:
    """A collated micro-batch. DPO batches hold the chosen rows, then the rejected ones (`audio_repeat` = 2: both
    halves use the same audios, which are encoded once)."""

    input_ids: torch.Tensor  # [R, T]
    attention_mask: torch.Tensor  # [R, T]
    labels: torch.Tensor  # [R, T], IGNORE_INDEX where no loss
    input_features: torch.Tensor | None  # [N, n_mels, F], F = the frames the longest audio needs
    feature_attention_mask: torch.Tensor | None  # [N, F]
    audio_repeat: int = 1
    rows: list[str] = field(default_factory=list)  # file:line of each sample
    stats: dict[str, int] = field(default_factory=dict)
    index: int = -1  # global micro-batch index
    audio_frames: torch.Tensor | None = None  # [sum of audio tokens, audio dim]: cached encoder outputs, clip after
    #                                           clip (then input_features is None)

    TENSORS = ("input_ids", "attention_mask", "labels", "input_features", "feature_attention_mask", "audio_frames")

    @property
    def n_samples(self) -> int:
        return len(self.rows)

    def _map(self, f) -> "Batch":
        return replace(self, **{k: None if getattr(self, k) is None else f(getattr(self, k)) for k in self.TENSORS})

    def to(self, device, non_blocking: bool = False) -> "Batch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":
        return self._map(lambda t: t.pin_memory())


@dataclass
class BatchLoader:
    """Plan -> Batch: decode audio, log-mel, expand <|AUDIO|>, apply the length policy, pad. Picklable (no
    tokenizer: only the special ids), so it runs in DataLoader workers."""

    pad_id: int
    audio_id: int
    audio_bos_id: int
    audio_eos_id: int
    n_mels: int = 128
    max_length: int = 2048
    padding_side: str = "right"
    truncation: str = "drop"
    long_audio: str = "drop"
    on_bad_row: str = "raise"
    encoder_cache: FeatureCache | None = None  # read the clips' encoder frames instead of decoding the audio

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer, **options) -> "BatchLoader":
        return cls(tokenizer.pad_id, tokenizer.audio_token_id, tokenizer.audio_bos_id, tokenizer.audio_eos_id,
                   **options)

    def __getitem__(self, plan: Plan) -> "Batch | RowError":
        try:
            return self.load(plan)
        except RowError as e:  # returned, not raised: the main process raises it as it is (see BatchStream)
            return e

    def load(self, plan: Plan) -> Batch:
        stats = Counter(plan.stats)
        load = self._load_audios if self.encoder_cache is None else self._cached_audios
        loaded = [(s, w) for s in plan.samples if (w := load(s, stats)) is not None]
        waves = [w for _, ws in loaded for w in ws]
        counts: list[int] = []
        features = frame_mask = None
        if waves and self.encoder_cache is not None:
            features, counts = waves, [len(w) for w in waves]  # encoder frames per clip: the counts themselves
        elif waves:
            features, frame_mask = log_mel_spectrogram(waves, n_mels=self.n_mels)
            counts = audio_token_count(frame_mask.sum(-1)).tolist()
        rows, kept_audio, refs = [], [], []
        pairs = bool(plan.samples) and isinstance(plan.samples[0], EncodedPair)
        at = 0
        for sample, ws in loaded:
            sample_counts, first_audio = counts[at:at + len(ws)], at
            at += len(ws)
            fitted = self._fit(sample, sample_counts, stats)
            if fitted is None:
                continue
            seqs, n_audio = fitted
            rows.append(seqs)
            kept_audio += range(first_audio, first_audio + n_audio)
            refs.append(str(sample.ref))
        if pairs:  # chosen rows first, then rejected rows
            rows = [r[0] for r in rows] + [r[1] for r in rows]
        else:
            rows = [r[0] for r in rows]
        batch = self._collate(rows, features, frame_mask, kept_audio)
        batch.audio_repeat, batch.rows, batch.stats, batch.index = (2 if pairs else 1), refs, dict(stats), plan.index
        return batch

    def _load_audios(self, sample, stats: Counter) -> list[np.ndarray] | None:
        try:
            waves = [load_audio(a) for a in sample.audios]
        except (AudioError, OSError) as e:
            if self.on_bad_row == "raise":
                raise RowError(str(sample.ref), f"audio: {e}") from None
            stats["skipped_audio"] += 1
            return None
        if any(len(w) > N_SAMPLES for w in waves):
            if self.long_audio == "drop":
                stats["dropped_long_audio"] += 1
                return None
            stats["truncated_long_audio"] += 1
            waves = [w[:N_SAMPLES] for w in waves]
        return waves

    def _cached_audios(self, sample, stats: Counter) -> list[torch.Tensor] | None:
        """The sample's clips as cached encoder frames, under the same long-audio policy as _load_audios."""
        cache = self.encoder_cache
        entries = []
        for a in sample.audios:
            try:
                entry = cache.lookup(cache.key_of(a))
            except AudioError as e:
                entry, why = None, f"audio: {e}"
            else:
                why = "audio: not in the encoder cache (unreadable when the cache was filled, or changed since)"
            if entry is None:
                if self.on_bad_row == "raise":
                    raise RowError(str(sample.ref), why)
                stats["skipped_audio"] += 1
                return None
            entries.append(entry)
        if any(e.samples > N_SAMPLES for e in entries):
            if self.long_audio == "drop":
                stats["dropped_long_audio"] += 1
                return None
            stats["truncated_long_audio"] += 1  # the entry was computed from the first 30 s
        return [cache.read(e) for e in entries]

    def _fit(self, sample, counts: list[int], stats: Counter):
        """Expand the audio and apply max_length -> ([(ids, supervised)...], audios kept) or None (dropped)."""
        seqs = sample if isinstance(sample, EncodedPair) else None
        parts = [seqs.chosen, seqs.rejected] if seqs else [sample]
        expanded = [expand_audio(p.ids, p.supervised, counts, self.audio_id) for p in parts]
        if all(len(ids) <= self.max_length for ids, _ in expanded):
            return expanded, len(counts)
        if self.truncation == "drop":
            stats["dropped_too_long"] += 1
            return None
        cut_rows = []
        for ids, sup in expanded:
            cut = safe_cut(ids, self.max_length, self.audio_bos_id, self.audio_id, self.audio_eos_id)
            if not any(sup[:cut]):
                stats["dropped_too_long"] += 1
                return None
            cut_rows.append((ids[:cut], sup[:cut]))
        n_audio_tokens = min(sum(t == self.audio_id for t in ids) for ids, _ in cut_rows)
        kept = next((n for n in range(len(counts) + 1) if sum(counts[:n]) >= n_audio_tokens), len(counts))
        if seqs and any(sum(t == self.audio_id for t in ids) != sum(counts[:kept]) for ids, _ in cut_rows):
            stats["dropped_too_long"] += 1  # a pair must keep the same audios in both halves
            return None
        stats["truncated"] += 1
        return cut_rows, kept

    def empty_batch(self) -> Batch:
        """One padding token that carries no loss (a process with no data left still runs the model)."""
        return self._collate([], None, None, [])

    def _collate(self, rows, features, frame_mask, kept_audio) -> Batch:
        if not rows:  # everything dropped: one padding row that carries no loss keeps every process in step
            rows = [([self.pad_id], [False])]
        T = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), T), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), T), dtype=torch.long)
        labels = torch.full((len(rows), T), IGNORE_INDEX, dtype=torch.long)
        for i, (ids, sup) in enumerate(rows):
            span = slice(T - len(ids), T) if self.padding_side == "left" else slice(0, len(ids))
            ids_t = torch.tensor(ids, dtype=torch.long)
            input_ids[i, span] = ids_t
            attention_mask[i, span] = 1
            labels[i, span] = torch.where(torch.tensor(sup, dtype=torch.bool), ids_t, IGNORE_INDEX)
        if not kept_audio:
            return Batch(input_ids, attention_mask, labels, None, None)
        if frame_mask is None:  # cached encoder frames, one tensor per clip
            return Batch(input_ids, attention_mask, labels, None, None,
                         audio_frames=torch.cat([features[i] for i in kept_audio]))
        keep = torch.tensor(kept_audio)
        lengths = frame_mask[keep].sum(-1)
        width = int(mel_frames_needed(lengths).clamp(max=features.shape[-1]).max())
        # frames past each audio's own need are never seen by its valid positions (the encoder masks them)
        return Batch(input_ids, attention_mask, labels, features[keep, :, :width].contiguous(),
                     frame_mask[keep, :width].contiguous())


def _identity(x):
    return x


class BatchStream:
    """Iterates a DataLoader of Batches; a bad row found in a worker is raised here as the RowError it was."""

    def __init__(self, loader: DataLoader):
        self.loader = loader

    def __iter__(self) -> Iterator[Batch]:
        for item in self.loader:
            if isinstance(item, RowError):
                raise RowError(item.where, item.message)
            yield item


def make_dataloader(planner: Planner, loader: BatchLoader, num_workers: int = 2, prefetch_batches: int = 2,
                    pin_memory: bool = False) -> BatchStream:
    """Batches in order: the planner's Plans are the DataLoader's 'indices', its workers turn them into Batches."""
    # its own generator: starting the workers must not draw from the global RNG, whose state a checkpoint restores
    return BatchStream(DataLoader(loader, batch_size=None, sampler=planner, num_workers=num_workers, collate_fn=_identity,
                      pin_memory=pin_memory, prefetch_factor=prefetch_batches if num_workers else None,
                      generator=torch.Generator().manual_seed(0)))
