"""The continuous-batching engine: one thread owns the model and decodes every request in flight together.

    engine = BatchEngine(model, n_rows=8, max_len=4096, max_queue=64).start()
    engine.submit([Request(inputs, config, sink=events.append, stop=("\\n\\n",))])   # QueueFull when full
    ...                                      # sink gets Delta(text) pieces, then Finished(...) or Failed(error)
    request.cancel()                         # the client went away: its row is free before the next step
    engine.close()

The KV cache's rows are slots (`generate.ContinuousBatch`). Between two decode steps the engine drops requests
that were cancelled or ran past their deadline, prefills waiting requests into free rows (each with its own cache
slots and positions, so a request's tokens do not depend on what else is decoded), then advances every row in use
by one token in a single step. Sampling is per request (its own options and `generate.SamplerState`, the seeded
generator and seen tokens that `Generator.stream` uses too), except that the greedy rows share one argmax; so is
the text: `streaming.IncrementalDecoder` (UTF-8 safe, stop strings).
The HTTP layer talks to the engine through `submit` (a bounded queue) and the sinks; nothing else touches the
model while the engine runs.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from ..generate import ContinuousBatch, GenerationConfig, SamplerState
from ..streaming import FINISH_LENGTH, FINISH_STOP, IncrementalDecoder, TokenBytes
from .errors import ApiError, EngineStopped, QueueFull, Timeout

logger = logging.getLogger("qwen2audio.serve")

TOKENS_PER_S_WINDOW = 10.0  # seconds over which the tokens/s figure is averaged
IDLE_WAIT_S = 0.05  # how long the idle engine sleeps between looks at its queue (a submit wakes it at once)


# -- what the engine tells a request's owner ---------------------------------------------------------------------------

@dataclass
class Delta:
    text: str


@dataclass
class Finished:
    text: str
    finish_reason: str  # "stop" (eos or a stop string) or "length" (max_new_tokens)
    prompt_tokens: int
    completion_tokens: int
    token_ids: list[int]


@dataclass
class Failed:
    error: ApiError


Event = Delta | Finished | Failed


@dataclass(eq=False)
class Request:
    """One generation: an unpadded prompt (input_ids [1, T] and its audio features) and its decoding options.
    `sink` is called from the engine thread with each Event; it must be quick and must not raise."""

    inputs: Mapping[str, torch.Tensor] | None  # dropped once prefilled (the audio features are the bulk of it)
    config: GenerationConfig
    sink: Callable[[Event], None]
    stop: tuple[str, ...] = ()
    deadline: float = math.inf  # time.monotonic() after which the request fails with Timeout
    arrival: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    prompt_tokens: int = field(init=False)

    def __post_init__(self):
        self.prompt_tokens = int(self.inputs["input_ids"].shape[1])

    def cancel(self) -> None:
        """Stop generating (the client disconnected); the engine frees the row before its next step."""
        self.cancelled = True


@dataclass(eq=False)
class _Running:
    """Engine-side state of a request that holds a row."""

    request: Request
    row: int
    text: IncrementalDecoder
    sampler: SamplerState  # one row: its seeded generator and seen tokens
    token_ids: list[int] = field(default_factory=list)
    steps: int = 0


@dataclass
class EngineStats:
    """Counters since start; read by /metrics and /health (written by the engine thread only)."""

    submitted: int = 0
    finished: int = 0
    failed: int = 0
    cancelled: int = 0  # clients that went away (their rows freed at once)
    timed_out: int = 0
    rejected: int = 0  # queue full
    prompt_tokens: int = 0
    generated_tokens: int = 0
    decode_steps: int = 0
    decode_rows: int = 0  # rows advanced over all steps: decode_rows / decode_steps = mean batch
    prefills: int = 0
    prefill_s: float = 0.0  # seconds spent prefilling (audio encoder included) ...
    decode_s: float = 0.0  # ... and in decode steps (sampling and text included)


class BatchEngine:
    def __init__(self, model, n_rows: int, max_len: int, max_queue: int = 64, compile: bool | None = None):
        self.model = model
        self.tokenizer = model.processor.tokenizer
        self.n_rows, self.max_len, self.max_queue = n_rows, max_len, max_queue
        self.compile = compile
        self.stats = EngineStats()
        self._pending: collections.deque[Request] = collections.deque()
        self._wake = threading.Condition()
        self._running: dict[int, _Running] = {}  # row -> request
        self._token_bytes = TokenBytes(self.tokenizer)
        self._recent: collections.deque[tuple[float, int]] = collections.deque()  # (time, tokens) per step
        self._service_s = 1.0  # moving average of a request's time in a row, for Retry-After
        self._batch: ContinuousBatch | None = None  # made by start(), in the thread that will use it
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.error: str | None = None  # set when the engine thread died

    # -- the HTTP side ---------------------------------------------------------------------------------------------
    def start(self) -> "BatchEngine":
        self._batch = ContinuousBatch(self.model, self.n_rows, self.max_len, compile=self.compile)
        self._thread = threading.Thread(target=self._run, name="qwen2audio-engine", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread; waiting and running requests fail with 503."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for request in self._drain_pending():
            self._emit(request, Failed(EngineStopped()))
        if self._batch is not None:
            self._batch.release()

    def submit(self, requests: Sequence[Request]) -> None:
        """Queue requests (all or none); QueueFull when the queue has no room for all of them."""
        with self._wake:
            if self._stopping or self.error:
                raise EngineStopped(self.error or "the server is shutting down")
            if len(self._pending) + len(requests) > self.max_queue:
                self.stats.rejected += len(requests)
                raise QueueFull(self.retry_after_s(), len(self._pending))
            self._pending.extend(requests)
            self.stats.submitted += len(requests)
            self._wake.notify()

    def retry_after_s(self) -> int:
        """Seconds until a row is likely free for one more request: the queue ahead of it, served n_rows at a time."""
        waves = (len(self._pending) + 1) / self.n_rows
        return max(1, min(60, math.ceil(waves * self._service_s)))

    @property
    def healthy(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.error is None

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    @property
    def active(self) -> int:
        return len(self._running)

    def tokens_per_s(self) -> float:
        """Generated tokens per second over the last TOKENS_PER_S_WINDOW seconds."""
        now = time.monotonic()
        recent = [(t, n) for t, n in list(self._recent) if now - t <= TOKENS_PER_S_WINDOW]
        return sum(n for _, n in recent) / TOKENS_PER_S_WINDOW

    # -- the engine thread -----------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while not self._stopping:
                    self._drop_cancelled_and_late()
                    started = time.monotonic()
                    self._admit()
                    self.stats.prefill_s += time.monotonic() - started
                    if self._running:
                        started = time.monotonic()
                        try:
                            self._step()
                        except Exception as e:  # e.g. out of memory: fail the rows in flight, keep serving
                            logger.exception("decode step failed")
                            self._fail_running(ApiError(500, f"generation failed: {type(e).__name__}: {e}",
                                                        "generation_failed"))
                        self.stats.decode_s += time.monotonic() - started
                    else:
                        with self._wake:
                            if not self._pending and not self._stopping:
                                self._wake.wait(IDLE_WAIT_S)
        except BaseException as e:  # a bug or a broken device: say so on /health and fail everyone in flight
            self.error = f"the engine stopped: {type(e).__name__}: {e}"
            logger.exception("engine thread died")
        finally:
            stopped = EngineStopped(self.error or "the server is shutting down")
            self._fail_running(stopped)
            for request in self._drain_pending():
                self._emit(request, Failed(stopped))

    def _fail_running(self, error: ApiError) -> None:
        for running in list(self._running.values()):
            self.stats.failed += 1
            self._free(running, Failed(error))

    def _drain_pending(self) -> list[Request]:
        with self._wake:
            pending, self._pending = list(self._pending), collections.deque()
        return pending

    def _drop_cancelled_and_late(self) -> None:
        now = time.monotonic()
        for running in list(self._running.values()):
            if running.request.cancelled:
                self.stats.cancelled += 1
                self._free(running, None)
            elif now > running.request.deadline:
                self.stats.timed_out += 1
                self._free(running, Failed(Timeout(running.request.deadline - running.request.arrival)))
        with self._wake:
            if not any(r.cancelled or now > r.deadline for r in self._pending):
                return
            keep = collections.deque(r for r in self._pending if not (r.cancelled or now > r.deadline))
            gone = [r for r in self._pending if r.cancelled or now > r.deadline]
            self._pending = keep
        for request in gone:
            if request.cancelled:
                self.stats.cancelled += 1
            else:
                self.stats.timed_out += 1
                self._emit(request, Failed(Timeout(request.deadline - request.arrival)))

    def _admit(self) -> None:
        """Prefill waiting requests into the free rows (lowest first, so that decode steps stay narrow)."""
        free = [r for r in range(self.n_rows) if r not in self._running]
        for row in free:
            with self._wake:
                if not self._pending:
                    return
                request = self._pending.popleft()
            try:
                self._prefill(row, request)
            except ApiError as e:
                self.stats.failed += 1
                self._emit(request, Failed(e))
            except Exception as e:  # bad inputs (ValueError), memory, a bug: this request fails, the rest go on
                logger.exception("prefill failed")
                self.stats.failed += 1
                self._running.pop(row, None)
                status = 400 if isinstance(e, ValueError) else 500
                self._emit(request, Failed(ApiError(status, f"generation failed: {type(e).__name__}: {e}",
                                                    "generation_failed")))

    def _prefill(self, row: int, request: Request) -> None:
        config = request.config
        if request.prompt_tokens + config.max_new_tokens > self.max_len:
            raise ApiError(400, f"the prompt ({request.prompt_tokens} tokens) plus max_tokens "
                                f"({config.max_new_tokens}) exceeds the server's {self.max_len}-token context",
                           "context_length_exceeded", "max_tokens")
        inputs, request.inputs = request.inputs, None
        logits = self._batch.prefill(row, inputs)
        self.stats.prefills += 1
        self.stats.prompt_tokens += request.prompt_tokens
        sampler = SamplerState(config, inputs["input_ids"], inputs.get("attention_mask"), logits.shape[-1],
                               logits.device)
        running = _Running(request, row, IncrementalDecoder(self._token_bytes, request.stop), sampler)
        self._running[row] = running
        self._accept(running, int(sampler.sample(logits[None])[0]))

    def _step(self) -> None:
        logits = self._batch.decode({row: r.token_ids[-1] for row, r in self._running.items()})
        rows = list(self._running.values())
        greedy = [r for r in rows if r.sampler.greedy]
        tokens = {}
        if greedy:  # one argmax (and one host sync) for every greedy row
            best = logits[[r.row for r in greedy]].argmax(-1).tolist()
            tokens.update(zip((r.row for r in greedy), best))
        for r in rows:
            if not r.sampler.greedy:
                tokens[r.row] = int(r.sampler.sample(logits[r.row:r.row + 1])[0])
        self.stats.decode_steps += 1
        self.stats.decode_rows += len(rows)
        self._recent.append((time.monotonic(), len(rows)))
        while self._recent and time.monotonic() - self._recent[0][0] > TOKENS_PER_S_WINDOW:
            self._recent.popleft()
        for r in rows:
            self._accept(r, tokens[r.row])

    def _accept(self, running: _Running, token: int) -> None:
        """One new token of a request: its text, and whether it ends here (eos, stop string, max_new_tokens)."""
        config = running.request.config
        running.token_ids.append(token)
        running.steps += 1
        self.stats.generated_tokens += 1
        running.sampler.accept([token])
        if token in config.eos_token_id:
            piece = running.text.finish(FINISH_STOP)
        else:
            piece = running.text.push(token)
            if not running.text.done and running.steps >= config.max_new_tokens:
                piece += running.text.finish(FINISH_LENGTH)
        if piece:
            self._emit(running.request, Delta(piece))
        if running.text.done:
            self.stats.finished += 1
            d = running.text
            self._free(running, Finished(d.text, d.finish_reason, running.request.prompt_tokens, d.n_tokens,
                                         running.token_ids))

    def _free(self, running: _Running, event: Event | None) -> None:
        del self._running[running.row]
        elapsed = time.monotonic() - running.request.arrival
        self._service_s = 0.9 * self._service_s + 0.1 * elapsed
        if event is not None:
            self._emit(running.request, event)

    def _emit(self, request: Request, event: Event) -> None:
        try:
            request.sink(event)
        except Exception:  # the owner is gone (its event loop closed): nothing to tell
            request.cancelled = True
