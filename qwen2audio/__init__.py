"""qwen2audio: Qwen2-Audio in pure PyTorch.

    import qwen2audio
    model = qwen2audio.load("Qwen2-Audio-7B-Instruct", dtype="bfloat16")
    inputs = model.processor(text=prompt, audio=["speech.wav"])
    logits = model(**inputs).logits
"""

from .api import Qwen2AudioForConditionalGeneration, load
from .audio import AudioError, load_audio, log_mel_spectrogram
from .checkpoint import CheckpointError
from .model import Qwen2AudioConfig, audio_token_count
from .processor import ModelInputs, Processor, audios_in_conversation
from .tokenizer import Tokenizer

__version__ = "0.1.0"

__all__ = [
    "AudioError", "CheckpointError", "ModelInputs", "Processor", "Qwen2AudioConfig",
    "Qwen2AudioForConditionalGeneration", "Tokenizer", "audio_token_count", "audios_in_conversation", "load",
    "load_audio", "log_mel_spectrogram",
]
