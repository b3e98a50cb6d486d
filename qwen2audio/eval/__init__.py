"""Evaluation with the official Qwen2-Audio protocol (SPEC §6): dataset presets as data (`datasets.PRESETS`), the
official normalisers and metrics, a resumable runner for a local model or any OpenAI-compatible API, AIR-Bench."""

from .datasets import PRESETS, Benchmark, EvalItem, get_benchmark, load_items
from .metrics import METRICS, Score, accuracy, bleu, wer
from .normalize import asr_units, normalize_asr
from .runner import ApiPredictor, LocalPredictor, Results, evaluate

__all__ = ["PRESETS", "Benchmark", "EvalItem", "get_benchmark", "load_items", "METRICS", "Score", "accuracy", "bleu",
           "wer", "asr_units", "normalize_asr", "ApiPredictor", "LocalPredictor", "Results", "evaluate"]
