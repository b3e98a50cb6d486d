"""Training data: JSONL manifests (chat, task and preference rows) -> token ids with supervised masks -> batches.

    from qwen2audio.data import DataConfig, Encoder, Planner, BatchLoader, make_dataloader
"""

from .config import DataConfig, SourceConfig
from .encode import Encoded, EncodedPair, Encoder, expand_audio, safe_cut
from .loader import Batch, BatchLoader, BatchStream, Plan, Planner, estimated_length, make_dataloader
from .manifest import ManifestReader, Mixture
from .prompts import INSTRUCTIONS, LANGUAGES, TASK_ALIASES, canonical_task, draw_instruction
from .rows import AUDIO_TAG, Chat, Preference, RowError, RowRef, TaskRow, parse_row

__all__ = [
    "AUDIO_TAG", "Batch", "BatchLoader", "BatchStream", "Chat", "DataConfig", "Encoded", "EncodedPair", "Encoder", "INSTRUCTIONS",
    "LANGUAGES", "ManifestReader", "Mixture", "Plan", "Planner", "Preference", "RowError", "RowRef", "SourceConfig",
    "TASK_ALIASES", "TaskRow", "canonical_task", "draw_instruction", "estimated_length", "expand_audio",
    "make_dataloader", "parse_row", "safe_cut",
]
