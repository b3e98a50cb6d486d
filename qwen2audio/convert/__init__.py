"""Tools that make new checkpoints: a Qwen2-Audio built from a Whisper encoder and a Qwen2 LM, and a checkpoint whose
vocabulary is trimmed to a corpus.

    whisper.py      the Whisper encoder from transformers, openai-whisper (.pt) or CTranslate2 (faster-whisper)
    ctranslate2.py  CTranslate2's model.bin, read with numpy
    lm.py           a Qwen2 checkpoint, or a new Qwen2 to train from scratch; embeddings grown to the vocabulary
    build.py        the model assembled: encoder, new projector, LM, tokenizer (`qwen2audio build`)
    vocab.py        the vocabulary trimmed to a corpus (`qwen2audio trim-vocab`)
    source.py       what every reader shares: config.json of a model type, tensors checked against the config
    cli.py          the two commands' arguments
"""

from .build import build, build_model, check_out_dir, init_projector, tokenizer_notes
from .lm import fit_vocabulary, new_qwen2, read_llm_spec, read_qwen2
from .vocab import plan_trim, trim_model, trim_vocabulary
from .whisper import ENCODER_FORMATS, EncoderFormat, read_encoder

__all__ = [
    "ENCODER_FORMATS", "EncoderFormat", "build", "build_model", "check_out_dir", "fit_vocabulary", "init_projector",
    "new_qwen2", "plan_trim", "read_encoder", "read_llm_spec", "read_qwen2", "tokenizer_notes", "trim_model",
    "trim_vocabulary",
]
