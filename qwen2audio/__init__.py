"""qwen2audio: Qwen2-Audio in pure PyTorch.

    import qwen2audio
    model = qwen2audio.load("Qwen2-Audio-7B-Instruct", dtype="bfloat16")
    inputs = model.processor(text=prompt, audio=["speech.wav"])
    logits = model(**inputs).logits
"""

from importlib.metadata import version

from .api import Qwen2AudioForConditionalGeneration, load
from .audio import AudioError, load_audio, log_mel_spectrogram
from .chat import ChatReply
from .checkpoint import CheckpointError
from .generate import GenerationConfig, Generator
from .model import Qwen2AudioConfig, audio_token_count
from .processor import ModelInputs, Processor, audios_in_conversation
from .quant import quantize, use_decode_kernels
from .streaming import TextStream
from .tokenizer import Tokenizer
from .transcribe import Transcription

__version__ = version("qwen2audio")  # pyproject.toml's

__all__ = [
    "AudioError", "ChatReply", "CheckpointError", "GenerationConfig", "Generator", "ModelInputs", "Processor",
    "Qwen2AudioConfig", "Qwen2AudioForConditionalGeneration", "TextStream", "Tokenizer", "Transcription",
    "audio_token_count", "audios_in_conversation", "load", "load_audio", "log_mel_spectrogram", "quantize",
    "use_decode_kernels",
]
