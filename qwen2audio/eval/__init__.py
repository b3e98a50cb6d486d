"""Evaluation with the official Qwen2-Audio protocol (SPEC §6): dataset presets as data (`datasets.PRESETS`), the
official normalisers and metrics, a resumable runner for a local model or any OpenAI-compatible API, AIR-Bench; the
synthetic corpus' test split scored by the metric each row names (`synthetic`), and preference pairs
(`preference.evaluate_preference`)."""

from .datasets import PRESETS, Benchmark, EvalItem, get_benchmark, load_items
from .metrics import METRICS, ROW_METRICS, Score, accuracy, bleu, cer, exact_match, label_accuracy, wer
from .normalize import answer_key, asr_units, normalize_asr
from .preference import evaluate_preference
from .runner import ApiPredictor, LocalPredictor, Results, evaluate

__all__ = ["PRESETS", "Benchmark", "EvalItem", "get_benchmark", "load_items", "METRICS", "ROW_METRICS", "Score",
           "accuracy", "bleu", "cer", "exact_match", "label_accuracy", "wer", "answer_key", "asr_units",
           "normalize_asr", "evaluate_preference", "ApiPredictor", "LocalPredictor", "Results", "evaluate"]
