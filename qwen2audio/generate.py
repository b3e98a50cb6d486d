"""Autoregressive generation: prefill once, then one token per step from a static KV cache (gpt-fast's shape).

    config = GenerationConfig(max_new_tokens=64)
    sequences = Generator(model).generate(inputs, config)          # [B, prompt + new], like transformers
    for step in Generator(model).stream(inputs, config): ...       # new token ids [B] per step

    batch = ContinuousBatch(model, n_rows=8, max_len=4096)         # continuous batching (the server's engine)
    logits = batch.prefill(row, inputs)                             # a new request joins in a free row
    logits = batch.decode({row: token, other_row: token, ...})      # every row in use advances one token

Both engines are made of the same three pieces and one piece of state:

    logits = prefill(model, inputs, caches)                         # the prompt [B, T] into slots [0, T) of the
                                                                    # caches' rows -> next-token logits [B, V]
    logits = decode_step(decoder, tokens, positions, slot, valid)   # one token per row -> logits [B, V]
    tokens = sample(logits, config, seen, generator)                # penalty, temperature, top-k, top-p, draw
    sampler = SamplerState(config, input_ids, attention_mask, vocab_size, device)
    tokens = sampler.sample(logits); sampler.accept(tokens)         # a request's seeded generator and seen tokens

`Generator` runs them over one left-padded batch in its own caches; `ContinuousBatch` prefills one request into one
row of its caches and decodes the rows in use together, each with its own cache slots ([B, 1] instead of one slot
for the batch). The decode step has fixed shapes (cache slots, masks and positions are tensors), so it compiles
once with `torch.compile` and replays as a CUDA graph on GPUs. No I/O here.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .model import Qwen2Audio, token_positions
from .model.kv_cache import KVCache, clear_caches, make_caches, setup_caches, using_caches
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

def prompt_tensors(inputs: Mapping[str, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [B, T], attention_mask [B, T]) of a prompt on `device`; the mask is all ones when not given."""
    input_ids = inputs["input_ids"].to(device)
    attention_mask = inputs.get("attention_mask")
    return input_ids, torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)


def prefill(model: Qwen2Audio, inputs: Mapping[str, torch.Tensor], caches: Sequence[KVCache]) -> torch.Tensor:
    """A prompt (input_ids [B, T], left-padded where its attention_mask [B, T] is 0, with its audio features)
    through the decoder into cache slots [0, T) of `caches` (one per layer; their B rows take the prompt's rows:
    a Generator's whole cache, or one row of a continuous batch) -> logits of each row's next token [B, V] (fp32).

    The audio goes in through `model.embed` (the encoder reads each clip's valid frames only), and the last layer
    computes the last position only."""
    input_ids, attention_mask = prompt_tensors(inputs, model.device)
    B, T = input_ids.shape
    x = model.embed(input_ids, inputs.get("input_features"), inputs.get("feature_attention_mask"))
    slots = torch.arange(T, device=model.device)
    # the prompt fills slots [0, T): its attention reads those only, and needs no mask where nothing is padded
    mask = None if bool(attention_mask.all()) else attention_mask_for(attention_mask.bool(), slots)
    with using_caches(model.decoder, [cache.rows(0, B, T) for cache in caches]):
        hidden = model.decoder(x, token_positions(attention_mask), mask, cache_positions=slots, last_only=True)
    return model.decoder.logits(hidden[:, -1]).float()


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


class SamplerState:
    """What `sample` carries from one step to the next for B rows of one config: the seeded torch.Generator (when
    sampling) and the tokens each row has seen (when penalising repetition: the prompt's tokens, padding excluded,
    then every accepted token). Each is None where the config does not need it."""

    def __init__(self, config: GenerationConfig, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 vocab_size: int, device: torch.device):
        self.config = config
        self.generator = None
        if config.do_sample:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(config.seed if config.seed is not None else torch.seed())
        self.seen = None
        if config.repetition_penalty != 1.0:
            input_ids = input_ids.to(device)
            present = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device).long()
            counts = torch.zeros(input_ids.shape[0], vocab_size, dtype=torch.long, device=device)
            self.seen = counts.scatter_add_(1, input_ids, present) > 0

    @property
    def greedy(self) -> bool:
        """The next token is the argmax of the raw logits (no draw, no penalty), so such rows can share one argmax."""
        return self.generator is None and self.seen is None

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [B, V] -> next tokens [B]."""
        return sample(logits, self.config, self.seen, self.generator)

    def accept(self, tokens: torch.Tensor | Sequence[int]) -> None:
        """Record each row's new token (tokens [B]): the repetition penalty counts it from the next step on."""
        if self.seen is not None:
            self.seen.scatter_(1, torch.as_tensor(tokens, device=self.seen.device).view(-1, 1), True)


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
        device = self.model.device
        input_ids, attention_mask = prompt_tensors(inputs, device)
        B, T = input_ids.shape
        limit = self.model.config.text.max_positions
        if T + config.max_new_tokens > limit:
            raise ValueError(f"a prompt of {T} tokens plus max_new_tokens={config.max_new_tokens} exceeds the model's "
                             f"{limit} positions: shorten the prompt or the audio, or ask for fewer tokens")
        S = self._ensure_caches(B, T + config.max_new_tokens)
        self.stats = GenerationStats(prompt_tokens=int(attention_mask.sum()), compiled=self.compile)

        t0 = time.perf_counter()
        prompt = dict(inputs, input_ids=input_ids, attention_mask=attention_mask)
        logits = prefill(self.model, prompt, [layer.attn.kv_cache for layer in self.model.decoder.layers])
        sampler = SamplerState(config, input_ids, attention_mask, logits.shape[-1], device)
        valid = torch.zeros(B, S, dtype=torch.bool, device=device)  # which cache slots hold real tokens
        valid[:, :T] = attention_mask.bool()
        next_position = token_positions(attention_mask)[:, -1:] + 1
        self.stats.prefill_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        self._streaming = True
        try:
            yield from self._decode(logits, sampler, valid, next_position, T, config)
        finally:  # also when the consumer stops early (a stop string, a closed connection)
            self._streaming = False
            self.stats.decode_s = time.perf_counter() - t0

    def _decode(self, logits: torch.Tensor, sampler: SamplerState, valid: torch.Tensor, next_position: torch.Tensor,
                next_slot: int, config: GenerationConfig) -> Iterator[torch.Tensor]:
        """The loop after prefill: sample every row's token [B], yield it, write it to cache slot `next_slot` (and
        the following ones), until every row has ended or max_new_tokens."""
        device = self.model.device
        eos = torch.tensor(config.eos_token_id or [-1], device=device)
        pad = config.pad_token_id if config.pad_token_id is not None else (config.eos_token_id or (0,))[0]
        finished = torch.zeros(valid.shape[0], dtype=torch.bool, device=device)
        for step in range(config.max_new_tokens):
            token = sampler.sample(logits)
            token = torch.where(finished, torch.full_like(token, pad), token)
            finished |= torch.isin(token, eos)
            self.stats.new_tokens += 1
            yield token
            if step == config.max_new_tokens - 1 or bool(finished.all()):
                break
            sampler.accept(token)
            slot = torch.tensor([next_slot + step], device=device)
            valid[:, next_slot + step] = True
            logits = self._step(self.model.decoder, token[:, None], next_position, slot, valid)
            next_position = next_position + 1

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
        """One unpadded prompt (input_ids [1, T], its audio features) into `row`'s slots [0, T) -> logits of its
        next token [V]."""
        shape = tuple(inputs["input_ids"].shape)
        if shape[0] != 1 or not 0 < shape[1] < self.max_len:
            raise ValueError(f"prefill takes one prompt of 1..{self.max_len - 1} tokens, got {shape}")
        if not 0 <= row < self.n_rows:
            raise ValueError(f"row {row} is not one of the batch's {self.n_rows} rows")
        logits = prefill(self.model, inputs, [cache.rows(row, row + 1) for cache in self.caches])
        self.lengths[row] = shape[1]
        return logits[0]

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
