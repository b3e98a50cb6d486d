"""Serving: an OpenAI-compatible HTTP server with continuous batching, safety limits and a web page.

    qwen2audio serve --model DIR --port 8000 [--api-key KEY]         # the CLI
    from qwen2audio.serve import ServeConfig, create_app, ServerThread
    with ServerThread(create_app(model, ServeConfig(max_batch=16))) as server:
        print(server.url)                                              # http://127.0.0.1:<free port>

Layers, top down: `cli` (arguments) -> `app` (FastAPI routes, middleware, errors) -> `service` (requests to engine
requests, transcription windows) -> `engine` (the thread that owns the model: continuous batching) ->
`generate.ContinuousBatch` (KV cache rows as slots). `audio_sources` holds the policy for where audio may come
from; `config` the operator's limits. FastAPI and uvicorn are the `serve` extra: imported on first use.
"""

from __future__ import annotations

__all__ = ["ServeConfig", "ServerThread", "create_app"]


def __getattr__(name: str):
    if name == "ServeConfig":
        from .config import ServeConfig
        return ServeConfig
    if name == "create_app":
        from .app import create_app
        return create_app
    if name == "ServerThread":
        from .background import ServerThread
        return ServerThread
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
