"""Synthetic multi-task audio corpus (`qwen2audio synth`): sounds, counting, audio questions, espeak-ng, festival and
flite speech, translation, voice chat and conversations with exact labels, written as 16 kHz FLAC plus the training
and evaluation manifests."""

from .corpus import SynthConfig, generate, resolve
from .tasks import LANGUAGES, TASKS

__all__ = ["LANGUAGES", "TASKS", "SynthConfig", "generate", "resolve"]
