"""Autoregressive generation: prefill once, then one token per step from a static KV cache (gpt-fast layout).

    config = GenerationConfig(max_new_tokens=64)
    sequences = Generator(model).generate(inputs, config)          # [B, prompt + new], like transformers
    for step in Generator(model).stream(inputs, config): ...       # new token ids [B] per step

    batch = ContinuousBatch(model, n_rows=8, max_len=4096)         # continuous batching (the server's engine)
    logits = batch.prefill(row, inputs)                             # a new request joins in a free row
    logits = batch.decode({row: token, other_row: token, ...})      # every row in use advances one token

The decode step has fixed shapes (cache slots, masks and positions are tensors), so it compiles once with
`torch.compile` and replays as a CUDA graph on GPUs. Both engines share it, the sampler and the KV cache; the
continuous batch gives each row its own cache slots ([B, 1] instead of one slot for the batch). No I/O here.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .model import Qwen2Audio
from .model.kv_cache import clear_caches, make_caches, setup_caches, using_caches
from .model.qwen2 import Qwen2
from .quant import use_decode_kernels

CACHE_BUCKET = 256  # cache lengths are rounded up to this, so that the compiled step is reused across calls


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding options, with transformers' names and meaning; checked once in `__post_init__`."""

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k filter
    repetition_penalty: float = 1.0
    eos_token_id: tuple[int, ...] = ()
    pad_token_id: int | None = None
    seed: int | None = None

    def __post_init__(self):
        if isinstance(self.eos_token_id, int):
            object.__setattr__(self, "eos_token_id", (self.eos_token_id,))
        object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id or ()))
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature} (use do_sample=False "
                             "for greedy decoding)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @classmethod
    def from_kwargs(cls, defaults: Mapping | None = None, **kwargs) -> "GenerationConfig":
        """Our fields from a generation_config.json-style dict, overridden by keyword arguments; unknown keys are
        ignored when they come from the file and rejected when given as arguments."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(kwargs) - names
        if unknown:
            raise TypeError(f"unknown generation arguments: {', '.join(sorted(unknown))}")
        values = {k: v for k, v in (defaults or {}).items() if k in names and v is not None}
        values.update({k: v for k, v in kwargs.items() if v is not None})
        return cls(**values)


# -- the three small pieces: prefill, decode step, sampling -----------------------------------------------------------

def attention_mask_for(valid: torch.Tensor, query_slots: torch.Tensor) -> torch.Tensor:
    """valid [B, S] (which cache slots hold real tokens), query_slots [T] (every row) or [B, T] (row by row) ->
    [B, 1, T, S] bool: causal over slots, padding hidden, and every query sees its own slot (a padded query row
    must not be empty: NaN)."""
    slots = torch.arange(valid.shape[1], device=valid.device)
    queries = (query_slots if query_slots.ndim == 2 else query_slots[None])[..., None]  # [B or 1, T, 1]
    causal, own = slots <= queries, slots == queries  # [B or 1, T, S]
    return ((causal & valid[:, None, :]) | own)[:, None]


def decode_step(decoder: Qwen2, tokens: torch.Tensor, positions: torch.Tensor, slot: torch.Tensor,
                valid: torch.Tensor) -> torch.Tensor:
    """tokens, positions [B, 1], slot [1] or [B, 1] (the cache slot being written, shared or per row), valid [B, S]
    -> logits [B, vocab] (fp32)."""
    x = decoder.embed_tokens(tokens)
    hidden = decoder(x, positions, attention_mask_for(valid, slot), cache_positions=slot)
    return decoder.logits(hidden[:, -1]).float()


def sample(logits: torch.Tensor, config: GenerationConfig, seen: torch.Tensor | None,
           generator: torch.Generator | None) -> torch.Tensor:
    """logits [B, V] -> next tokens [B]. Order as transformers: repetition penalty, then temperature, top-k, top-p."""
    if config.repetition_penalty != 1.0 and seen is not None:
        p = config.repetition_penalty
        penalised = torch.where(logits < 0, logits * p, logits / p)
        logits = torch.where(seen, penalised, logits)
    if not config.do_sample:
        return logits.argmax(-1)
    logits = logits / config.temperature
    if config.top_k:
        kth = logits.topk(min(config.top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_logits, order = logits.sort(descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= config.top_p  # keep the smallest set reaching top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
    # argmax(p / E) with E ~ Exp(1) draws from p (gpt-fast): no host sync, and far cheaper than torch.multinomial
    # over a 150k vocabulary
    noise = torch.empty_like(logits).exponential_(1, generator=generator)
    return (logits.softmax(-1) / noise).argmax(-1)


# -- the engine -------------------------------------------------------------------------------------------------------

@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    compiled: bool = False
    extra: dict = field(default_factory=dict)


class Generator:
    """Generation for one model: owns the KV caches (reused while big enough) and the compiled decode step.

    compile: None = where it pays: on CUDA (CUDA graphs), and on CPU for a quantised model or one with
    `use_decode_kernels` (the fused kernels need inductor); a plain CPU model stays eager (BLAS), because compiling
    costs tens of seconds once per process and pays only over long generations (a server, a batch job). True on CPU
    installs the decode kernels and compiles; False never compiles.
    """

    def __init__(self, model: Qwen2Audio, compile: bool | None = None):
        self.model = model
        self.compile = _setup_compile(model, compile)
        self._cache_shape: tuple[int, int] | None = None
        self._step = decode_step
        self._streaming = False
        self.stats = GenerationStats()

    def _ensure_caches(self, batch_size: int, needed_len: int) -> int:
        max_len = -(-needed_len // CACHE_BUCKET) * CACHE_BUCKET
        if self._cache_shape is None or self._cache_shape[0] != batch_size or self._cache_shape[1] < needed_len:
            setup_caches(self.model.decoder, batch_size, max_len)
            self._cache_shape = (batch_size, max_len)
            if self.compile:
                self._step = _compiled_step(self.model)
        return self._cache_shape[1]

    def release(self) -> None:
        """Free the KV caches."""
        clear_caches(self.model.decoder)
        self._cache_shape = None

    @torch.inference_mode()
    def stream(self, inputs: Mapping[str, torch.Tensor], config: GenerationConfig) -> Iterator[torch.Tensor]:
        """Yield the new token of every row [B] at each step until all rows end (eos) or max_new_tokens.

        Rows that already ended yield `config.pad_token_id` (or their eos). Prefill encodes the audio's valid
        frames only and computes logits for the last position only.
        """
        if self._streaming:
            raise RuntimeError("a generation stream of this model is still open: finish or close it first (the "
                               "KV cache is shared), or use another Generator")
        model = self.model
        device = model.device
        input_ids = inputs["input_ids"].to(device)
        B, T = input_ids.shape
        limit = model.config.text.max_positions
        if T + config.max_new_tokens > limit:
            raise ValueError(f"a prompt of {T} tokens plus max_new_tokens={config.max_new_tokens} exceeds the model's "
                             f"{limit} positions: shorten the prompt or the audio, or ask for fewer tokens")
        attention_mask = inputs.get("attention_mask")
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
        S = self._ensure_caches(B, T + config.max_new_tokens)
        stats = self.stats = GenerationStats(prompt_tokens=int(attention_mask.sum()), compiled=self.compile)

        t0 = time.perf_counter()
        valid = torch.zeros(B, S, dtype=torch.bool, device=device)
        valid[:, :T] = attention_mask.bool()
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        x = model.embed(input_ids, inputs.get("input_features"), inputs.get("feature_attention_mask"))
        slots = torch.arange(T, device=device)
        # the prompt fills slots [0, T): its attention reads those only, and needs no mask where nothing is padded
        mask = None if bool(attention_mask.all()) else attention_mask_for(valid[:, :T], slots)
        with using_caches(model.decoder, [layer.attn.kv_cache.rows(0, B, T) for layer in model.decoder.layers]):
            hidden = model.decoder(x, positions, mask, cache_positions=slots, last_only=True)
        logits = model.decoder.logits(hidden[:, -1]).float()

        generator = None
        if config.do_sample:
            generator = torch.Generator(device=device)
            generator.manual_seed(config.seed if config.seed is not None else torch.seed())
        seen = None
        if config.repetition_penalty != 1.0:
            counts = torch.zeros(B, logits.shape[-1], dtype=torch.long, device=device)
            seen = counts.scatter_add_(1, input_ids, attention_mask.long()) > 0  # prompt tokens, padding excluded
        eos = torch.tensor(config.eos_token_id or [-1], device=device)
        pad = config.pad_token_id if config.pad_token_id is not None else (config.eos_token_id or (0,))[0]
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        next_position = positions[:, -1:] + 1
        stats.prefill_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        self._streaming = True
        try:
            for step in range(config.max_new_tokens):
                token = sample(logits, config, seen, generator)
                token = torch.where(finished, torch.full_like(token, pad), token)
                finished |= torch.isin(token, eos)
                stats.new_tokens += 1
                yield token
                if step == config.max_new_tokens - 1 or bool(finished.all()):
                    break
                if seen is not None:
                    seen.scatter_(1, token[:, None], True)
                slot = torch.tensor([T + step], device=device)
                valid[:, T + step] = True
                logits = self._step(model.decoder, token[:, None], next_position, slot, valid)
                next_position = next_position + 1
        finally:  # also when the consumer stops early (a stop string, a closed connection)
            self._streaming = False
            stats.decode_s = time.perf_counter() - t0

    def generate(self, inputs: Mapping[str, torch.Tensor], config: GenerationConfig) -> torch.Tensor:
        """The prompt followed by the new tokens [B, T + n], rows that ended early padded: transformers' output."""
        new = list(self.stream(inputs, config))
        input_ids = inputs["input_ids"].to(self.model.device)
        if not new:
            return input_ids
        return torch.cat([input_ids, torch.stack(new, dim=1)], dim=1)


class ContinuousBatch:
    """The KV cache's rows as independent sequences, for continuous batching (the server's engine): `prefill` puts
    one prompt into a free row, `decode` advances the given rows by one token each in a single step, and a row is
    free for the next request as soon as its owner is done (nothing to clear: the next prefill overwrites its slots,
    and the causal mask over a row's own slots hides whatever lies beyond them).

    Row r holds its tokens at cache slots 0..length-1, with RoPE positions equal to the slots (no padding inside a
    row), so a request gives the same tokens whatever else is decoded beside it. Eager steps run on rows
    [0, highest row given] and on the slots up to the longest of them (rounded up to CACHE_BUCKET); a compiled
    step always runs on the whole cache, one shape (gpt-fast). The batch holds its own caches and puts them in the
    decoder only while it runs, so that a `Generator` on the same model can take turns with it.
    compile: as for `Generator`.
    """

    def __init__(self, model: Qwen2Audio, n_rows: int, max_len: int, compile: bool | None = None):
        limit = model.config.text.max_positions
        if n_rows < 1 or not 1 <= max_len <= limit:
            raise ValueError(f"need n_rows >= 1 and 1 <= max_len <= {limit} (the model's positions), got "
                             f"{n_rows} rows of {max_len}")
        self.model, self.n_rows, self.max_len = model, n_rows, max_len
        self.compile = _setup_compile(model, compile)
        self.caches = make_caches(model.decoder, n_rows, max_len)  # its own: installed only while it runs
        self.lengths = [0] * n_rows  # tokens in each row's cache
        self._valid = torch.ones(n_rows, max_len, dtype=torch.bool, device=model.device)
        self._step = _compiled_step(model) if self.compile else decode_step

    def release(self) -> None:
        """Free the KV caches."""
        self.caches = []

    def _rows(self, start: int, stop: int, length: int) -> list:
        return [cache.rows(start, stop, self._span(length)) for cache in self.caches]

    def _span(self, length: int) -> int:
        return min(-(-length // CACHE_BUCKET) * CACHE_BUCKET, self.max_len)

    @torch.inference_mode()
    def prefill(self, row: int, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """One unpadded prompt (input_ids [1, T], its audio features) into `row` -> logits of its next token [V]."""
        model, device = self.model, self.model.device
        input_ids = inputs["input_ids"].to(device)
        T = input_ids.shape[1]
        if input_ids.shape[0] != 1 or not 0 < T < self.max_len:
            raise ValueError(f"prefill takes one prompt of 1..{self.max_len - 1} tokens, got {tuple(input_ids.shape)}")
        if not 0 <= row < self.n_rows:
            raise ValueError(f"row {row} is not one of the batch's {self.n_rows} rows")
        features = inputs.get("input_features")
        x = model.embed(input_ids, None if features is None else features.to(device),
                        inputs.get("feature_attention_mask"))
        slots = torch.arange(T, device=device)
        with using_caches(model.decoder, [cache.rows(row, row + 1, T) for cache in self.caches]):
            hidden = model.decoder(x, slots[None], None, cache_positions=slots, last_only=True)  # causal, T slots
        self.lengths[row] = T
        return model.decoder.logits(hidden[0, -1]).float()

    @torch.inference_mode()
    def decode(self, tokens: Mapping[int, int]) -> torch.Tensor:
        """{row: its last token} -> logits [rows, V] of their next tokens (row r at index r; rows not given are
        computed on a dummy token and must be ignored)."""
        if any(self.lengths[r] >= self.max_len for r in tokens):
            raise ValueError(f"a row is full ({self.max_len} tokens): stop it before it reaches max_len")
        width = self.n_rows if self.compile else max(tokens) + 1
        ids, slots = [0] * width, [0] * width
        for r, token in tokens.items():
            ids[r], slots[r] = token, self.lengths[r]
        device = self.model.device
        ids = torch.tensor(ids, device=device)[:, None]
        slots = torch.tensor(slots, device=device)[:, None]
        decoder = self.model.decoder
        if self.compile:  # the whole cache: one shape, the same cache objects (no recompiles)
            with using_caches(decoder, self.caches):
                logits = self._step(decoder, ids, slots, slots, self._valid)
        else:
            longest = max(self.lengths[r] for r in tokens) + 1
            with using_caches(decoder, self._rows(0, width, longest)):
                logits = self._step(decoder, ids, slots, slots, self._valid[:width, :self._span(longest)])
        for r in tokens:
            self.lengths[r] += 1
        return logits


def _setup_compile(model: Qwen2Audio, compile: bool | None) -> bool:
    """Whether to compile the decode step (None: where it pays); True on a plain CPU model installs the decode
    kernels, through which compiling pays there."""
    compile = _compile_pays(model) if compile is None else compile
    if compile and model.device.type == "cpu" and not _compile_pays(model):
        use_decode_kernels(model)
    return compile


def _compiled_step(model: Qwen2Audio):
    mode = "reduce-overhead" if model.device.type == "cuda" else None  # CUDA graphs
    return torch.compile(decode_step, fullgraph=True, dynamic=False, mode=mode)


def _compile_pays(model: Qwen2Audio) -> bool:
    """Compiling the decode step pays on CUDA (CUDA graphs remove the launch overhead). On CPU it pays only with the
    memory-bound decode kernels (`use_decode_kernels`): inductor then fuses each matrix-vector product into one pass
    over the weights; with plain BLAS matmuls it changes little and costs a compile."""
    if model.device.type == "cuda":
        return True
    return any(getattr(m, "decode_kernel", None) == "gemv" for m in model.decoder.modules())
