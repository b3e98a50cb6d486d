"""/metrics in Prometheus' text format: requests by route and status, latency histograms (whole request, time to
first token), queue depth, rows in use, tokens and tokens/s, decode steps and rows (their ratio is the mean
decode batch), and the engine's cancel/timeout/reject counts. One registry per app, so that several servers
can live in one process (the tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

PREFIX = "qwen2audio"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class EngineCollector:
    """The engine's counters and gauges, read at scrape time."""

    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        e, s = self.engine, self.engine.stats
        gauges = {"queue_depth": ("requests waiting for a row", e.queue_depth),
                  "active_requests": ("requests holding a row (decoding)", e.active),
                  "batch_rows": ("rows of the KV cache (most requests decoded together)", e.n_rows),
                  "tokens_per_second": ("generated tokens per second over the last 10 s", e.tokens_per_s()),
                  "engine_healthy": ("1 while the engine thread runs", int(e.healthy))}
        for name, (doc, value) in gauges.items():
            yield GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)
        counters = {"engine_requests_submitted": ("generations queued", s.submitted),
                    "engine_requests_finished": ("generations that ended normally", s.finished),
                    "engine_requests_failed": ("generations that failed", s.failed),
                    "engine_requests_cancelled": ("generations stopped because the client went away", s.cancelled),
                    "engine_requests_timed_out": ("generations past their deadline", s.timed_out),
                    "engine_requests_rejected": ("generations refused because the queue was full", s.rejected),
                    "prompt_tokens": ("prompt tokens prefilled", s.prompt_tokens),
                    "generation_tokens": ("tokens generated", s.generated_tokens),
                    "decode_steps": ("decode steps run", s.decode_steps),
                    "decode_rows": ("rows advanced by decode steps (divide by decode_steps: mean batch)",
                                    s.decode_rows),
                    "engine_prefill_seconds": ("seconds the engine spent prefilling (audio encoder included)",
                                               s.prefill_s),
                    "engine_decode_seconds": ("seconds the engine spent in decode steps", s.decode_s)}
        for name, (doc, value) in counters.items():
            yield CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)


class Metrics:
    def __init__(self, engine):
        self.registry = CollectorRegistry()
        self.requests = Counter(f"{PREFIX}_http_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram(f"{PREFIX}_http_request_duration_seconds", "HTTP request time, to the last byte",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.first_token = Histogram(f"{PREFIX}_time_to_first_token_seconds",
                                     "time from a generation's arrival to its first text", buckets=LATENCY_BUCKETS,
                                     registry=self.registry)
        self.registry.register(EngineCollector(engine))

    def render(self) -> bytes:
        return generate_latest(self.registry)
