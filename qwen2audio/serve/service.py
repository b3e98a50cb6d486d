"""What the endpoints do, below HTTP: turn a chat request into engine requests (audio under the server's policy,
limits, the model's generation defaults, as `model.chat` builds them), follow their events, and run
transcriptions window by window through the same engine (stitched by `transcribe.transcription_from_windows`, as
`transcribe.transcribe` does).

Blocking work (decoding audio, log-mel features) runs in worker threads (`prepare_*`); the coroutines only wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from ..audio import SAMPLE_RATE, AudioError, load_audio
from ..chat import chat_inputs, generation_options, model_processor
from ..generate import GenerationConfig
from ..processor import ModelInputs, split_long_audio
from ..streaming import check_stop
from ..tokenizer import base_prompt, chat_task_prompt
from ..transcribe import Transcription, prompt_style, transcription_from_windows, transcription_prompt
from .audio_sources import resolve_audio
from .config import ServeConfig
from .engine import BatchEngine, Delta, Failed, Finished, Request
from .errors import QueueFull, Timeout, bad_request
from .protocol import ChatCompletionRequest

DEFAULT_MAX_TOKENS = 256  # when neither the request nor generation_config.json says (as model.chat)
TRANSCRIPTION_MAX_TOKENS = 256  # per 30 s window, as the official evaluation (and transcribe)
WINDOWS_IN_FLIGHT = 4  # windows of one transcription decoded at once; the next joins when one ends
POLL_S = 0.25  # how often a waiting non-streaming call checks that its client is still there
GRACE_S = 5.0  # the engine enforces deadlines; the HTTP side waits this much longer before giving up itself
TASKS = {"transcriptions": "asr", "translations": "translate"}


class ClientGone(Exception):
    """The HTTP client disconnected; its requests were cancelled."""


@dataclass
class Prepared:
    """One generation ready for the engine."""

    inputs: ModelInputs
    config: GenerationConfig
    stop: tuple[str, ...] = ()

    @property
    def prompt_tokens(self) -> int:
        return int(self.inputs["input_ids"].shape[1])


class Job:
    """The engine requests of one HTTP call (n choices, or a transcription's windows) and their events."""

    def __init__(self, service: "Service"):
        self.service = service
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self.arrival = time.monotonic()
        self.deadline = self.arrival + service.config.request_timeout_s
        self.requests: list[Request] = []
        self._first_seen: set[int] = set()

    def submit(self, items: Sequence[tuple[int, Prepared]]) -> None:
        """Queue (index, prepared) generations; QueueFull (429) when the engine's queue has no room."""
        batch = [Request(p.inputs, p.config, self._sink(i), p.stop, deadline=self.deadline, arrival=self.arrival)
                 for i, p in items]
        self.service.engine.submit(batch)
        self.requests += batch

    def _sink(self, index: int):
        loop, events = self.loop, self.events  # not self: no reference cycle job -> request -> sink -> job

        def put(event) -> None:  # called in the engine thread
            loop.call_soon_threadsafe(events.put_nowait, (index, event))
        return put

    def cancel(self) -> None:
        for request in self.requests:
            request.cancel()

    async def next(self, client=None):
        """The next (index, event); ClientGone when `client` (a Starlette request) disconnected meanwhile."""
        while True:
            remaining = self.deadline + GRACE_S - time.monotonic()
            if remaining <= 0:
                self.cancel()
                raise Timeout(self.service.config.request_timeout_s)
            try:
                index, event = await asyncio.wait_for(self.events.get(), min(POLL_S, remaining))
            except asyncio.TimeoutError:
                if client is not None and await client.is_disconnected():
                    self.cancel()
                    raise ClientGone() from None
                continue
            if index not in self._first_seen and isinstance(event, (Delta, Finished)):
                self._first_seen.add(index)
                self.service.observe_first_token(time.monotonic() - self.arrival)
            return index, event


class Service:
    def __init__(self, model, engine: BatchEngine, config: ServeConfig, metrics=None):
        self.model, self.engine, self.config, self.metrics = model, engine, config, metrics
        self.processor = model_processor(model)
        self.max_prompt_tokens = min(config.max_prompt_tokens or engine.max_len - 1, engine.max_len - 1)
        self.style = prompt_style(model)

    def observe_first_token(self, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.first_token.observe(seconds)

    # -- chat ------------------------------------------------------------------------------------------------------
    def prepare_chat(self, body: ChatCompletionRequest) -> list[Prepared]:
        """The request's n generations (choice i samples with seed + i). Runs in a worker thread."""
        if body.n > self.config.max_n:
            raise bad_request(f"n={body.n} choices; this server gives at most {self.config.max_n} (--max-n)",
                              "n_too_large", "n")
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        messages, _ = resolve_audio(messages, self.config)
        try:
            inputs, _ = chat_inputs(self.processor, [messages])
            stop = check_stop(body.stop)
        except ValueError as e:  # AudioError too
            raise bad_request(str(e), "invalid_request", "messages") from None
        max_tokens = self.check_lengths(inputs, body.max_completion_tokens or body.max_tokens)
        options = {"max_new_tokens": max_tokens, "temperature": body.temperature, "top_p": body.top_p,
                   "top_k": body.top_k, "repetition_penalty": body.repetition_penalty}
        out = []
        for i in range(body.n):
            seed = None if body.seed is None else body.seed + i
            out.append(Prepared(inputs, self.generation_config(options, seed), stop))
        return out

    def check_lengths(self, inputs: ModelInputs, max_tokens: int | None) -> int:
        """The reply's token budget: the request's, else the checkpoint's default; refused past the limits."""
        prompt = int(inputs["input_ids"].shape[1])
        if prompt > self.max_prompt_tokens:
            raise bad_request(f"the prompt takes {prompt} tokens (audio at about 25 tokens per second), over this "
                              f"server's limit of {self.max_prompt_tokens}; shorten the audio or the conversation",
                              "context_length_exceeded", "messages")
        if max_tokens is not None and max_tokens > self.config.max_tokens:
            raise bad_request(f"max_tokens={max_tokens} is over this server's limit of {self.config.max_tokens} "
                              "(--max-tokens)", "max_tokens_too_large", "max_tokens")
        room = self.engine.max_len - prompt
        if max_tokens is None:
            default = self.model.generation_defaults().get("max_new_tokens") or DEFAULT_MAX_TOKENS
            return max(1, min(default, self.config.max_tokens, room))
        if max_tokens > room:
            raise bad_request(f"the prompt takes {prompt} tokens and max_tokens={max_tokens}: over the "
                              f"{self.engine.max_len}-token context of this server; ask for at most {room}",
                              "context_length_exceeded", "max_tokens")
        return max_tokens

    def generation_config(self, options: dict, seed: int | None) -> GenerationConfig:
        try:
            return self.model.generation_config_for(**generation_options({**options, "seed": seed}))
        except (TypeError, ValueError) as e:
            raise bad_request(str(e), "invalid_generation_options") from None

    # -- transcription and translation ----------------------------------------------------------------------------
    def prepare_audio_file(self, data: bytes) -> tuple:
        """(16 kHz waveform, its windows) of an uploaded file. Runs in a worker thread."""
        if not data:
            raise bad_request("the uploaded file is empty (0 bytes)", "invalid_audio", "file")
        try:
            wave = load_audio(data)
        except AudioError as e:
            raise bad_request(f"file: {e}", "invalid_audio", "file") from None
        seconds = len(wave) / SAMPLE_RATE
        if seconds > self.config.max_transcription_seconds:
            raise bad_request(f"the file holds {seconds:.0f} s of audio, over this server's limit of "
                              f"{self.config.max_transcription_seconds:g} s (--max-transcription-seconds)",
                              "audio_too_long", "file")
        return wave, split_long_audio(wave)

    def window_prompt(self, task: str, language: str | None, context: str | None) -> str:
        """The prompt of one window: transcribe's for plain transcription; the same form for translation into
        English or with the caller's `prompt` (chat models read it as context after the instruction; the base
        prompt has no place for it)."""
        if task == "asr" and not context:
            return transcription_prompt(self.processor, self.style, language)
        if self.style == "base":
            return base_prompt(task, language, target="en")
        text = chat_task_prompt(task, language, target="en") + (f"\nContext: {context}" if context else "")
        conversation = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": text}]}]
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True)

    async def transcribe(self, data: bytes, endpoint: str, language: str | None, context: str | None,
                         temperature: float, client) -> tuple[Transcription, list[list[int]]]:
        """The whole file through the engine, WINDOWS_IN_FLIGHT windows at a time -> (result, tokens per window)."""
        task = TASKS[endpoint]
        wave, windows = await run_in_threadpool(self.prepare_audio_file, data)
        prompt = self.window_prompt(task, language if task == "asr" else None, context)
        options = {"max_new_tokens": min(TRANSCRIPTION_MAX_TOKENS, self.config.max_tokens), "temperature": temperature}
        config = self.generation_config(options, None)

        def prepare(i: int) -> Prepared:
            w = windows[i]
            inputs = self.processor(text=[prompt], audio=[wave[w.start:w.end]], sampling_rate=SAMPLE_RATE)
            return Prepared(inputs, config)

        results = await self._run_windows(len(windows), prepare, client)
        result = transcription_from_windows(windows, [r.text for r in results], language, len(wave) / SAMPLE_RATE)
        return result, [r.token_ids for r in results]

    async def _run_windows(self, n_windows: int, prepare: Callable[[int], Prepared], client) -> list[Finished]:
        """Windows 0..n_windows-1 through the engine, WINDOWS_IN_FLIGHT at a time (the next one is prepared and
        joins as one ends) -> their Finished events, in order; the first failure cancels the rest and raises."""
        job = Job(self)
        results: list[Finished | None] = [None] * n_windows
        first = min(n_windows, WINDOWS_IN_FLIGHT)
        job.submit([(i, p) for i, p in enumerate(await run_in_threadpool(lambda: [prepare(i) for i in range(first)]))])
        following = first
        try:
            while any(r is None for r in results):
                index, event = await job.next(client)
                if isinstance(event, Failed):
                    raise event.error
                if isinstance(event, Finished):
                    results[index] = event
                    if following < n_windows:
                        await self._submit_when_room(job, following, await run_in_threadpool(prepare, following))
                        following += 1
        except BaseException:
            job.cancel()
            raise
        return results

    async def _submit_when_room(self, job: Job, index: int, prepared: Prepared) -> None:
        """A later window of a transcription already under way waits for room in the queue instead of failing."""
        while True:
            try:
                return job.submit([(index, prepared)])
            except QueueFull:
                if time.monotonic() > job.deadline:
                    raise Timeout(self.config.request_timeout_s) from None
                await asyncio.sleep(0.05)
