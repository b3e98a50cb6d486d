"""Evaluation with the official Qwen2-Audio protocol: dataset presets as data (`datasets.PRESETS`), the
official normalisers and metrics, a resumable runner for a local model or any OpenAI-compatible API, AIR-Bench; the
synthetic corpus' test split scored by the metric each row names (`synthetic`), and preference pairs
(`preference.evaluate_preference`).

Modules, each importing only those before it: `normalize` (text normalisers), `results` (Score, Results, the
predictions JSONL and the results files), `metrics`, `benchmark` (the Benchmark and EvalItem types), `airbench` and
`synthetic` (their loaders and scorers), `datasets` (the presets and the table of loaders), `runner` (predictors,
`evaluate`), `preference`, `cli`."""

from .benchmark import Benchmark, EvalItem
from .datasets import PRESETS, get_benchmark, load_items
from .metrics import METRICS, ROW_METRICS, accuracy, bleu, cer, choice_accuracy, exact_match, label_accuracy, wer
from .normalize import answer_key, asr_units, normalize_asr
from .preference import evaluate_preference
from .results import Results, Score
from .runner import ApiPredictor, LocalPredictor, evaluate

__all__ = ["PRESETS", "Benchmark", "EvalItem", "get_benchmark", "load_items", "METRICS", "ROW_METRICS", "Score",
           "accuracy", "bleu", "cer", "choice_accuracy", "exact_match", "label_accuracy", "wer", "answer_key",
           "asr_units", "normalize_asr", "evaluate_preference", "ApiPredictor", "LocalPredictor", "Results",
           "evaluate"]
