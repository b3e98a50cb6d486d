"""The data section of a training config: which manifests, how they mix, and how samples become batches.

These dataclasses are the YAML schema (`data:` in a recipe); every field is documented where it is declared.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PADDING_SIDES = ("left", "right")
TRUNCATIONS = ("drop", "right")
LONG_AUDIO = ("drop", "truncate")
ON_BAD_ROW = ("raise", "skip")
PROMPT_FORMATS = ("auto", "base", "chat")
TRAIN_ON = ("all", "last")
ENCODER_CACHE_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class SourceConfig:
    path: str  # a JSONL manifest, read as a stream (never loaded whole)
    weight: float = 1.0  # share of the mix: rows are drawn so that each source's count follows its weight
    audio_dir: str | None = None  # relative audio paths resolve against this (default: the manifest's folder)
    name: str | None = None  # shown in metrics (default: the file name)

    def __post_init__(self):
        if not self.weight > 0:
            raise ValueError(f"source {self.path}: weight must be > 0, got {self.weight}")

    @property
    def label(self) -> str:
        return self.name or self.path.rsplit("/", 1)[-1]


@dataclass
class DataConfig:
    train: list[SourceConfig] = field(default_factory=list)  # mixed by weight, cycled forever (training is by steps)
    validation: list[SourceConfig] = field(default_factory=list)  # read once per evaluation, in order
    batch_size: int = 1  # samples per micro-batch per process (preference pairs for DPO)
    max_length: int = 2048  # tokens per sequence after <|AUDIO|> expansion
    padding_side: str = "right"  # left or right: positions count real tokens only, so both train the same
    truncation: str = "drop"  # over max_length: drop the sample, or cut text on the right (never inside an audio)
    long_audio: str = "drop"  # audio over 30 s: drop the sample, or cut the audio to 30 s (counted either way)
    on_bad_row: str = "raise"  # a malformed row or undecodable audio: raise naming file:line, or skip and count
    bucket_batches: int = 16  # length bucketing: sort this many micro-batches' worth of samples by length
    num_workers: int = 2  # processes that decode audio and compute log-mel features (0: in the main process)
    prefetch_batches: int = 2  # micro-batches each worker prepares ahead
    prompt_format: str = "auto"  # task rows: "base" (audio + instruction, no template) or "chat"; auto: base for
    #                              pretraining, chat for SFT
    train_on: str = "all"  # chat rows: loss on "all" assistant turns, or on the "last" one only
    answer_suffix: str = "<|endoftext|>"  # closes a base-format answer (the base model's end of text)
    encoder_cache: str | None = None  # a frozen encoder's outputs computed once per clip and kept in this folder
    #                                   (auto: out_dir/encoder-cache; give one path to every stage to share it)
    encoder_cache_dtype: str = "auto"  # float32 | bfloat16 | float16; auto: bfloat16 under bf16 precisions (exact:
    #                                    the projector casts its input to bf16 there), float32 under 32-true

    def __post_init__(self):
        for name, allowed in (("padding_side", PADDING_SIDES), ("truncation", TRUNCATIONS),
                              ("long_audio", LONG_AUDIO), ("on_bad_row", ON_BAD_ROW),
                              ("prompt_format", PROMPT_FORMATS), ("train_on", TRAIN_ON)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"data.{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        for name in ("batch_size", "max_length", "bucket_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.encoder_cache_dtype not in ENCODER_CACHE_DTYPES:
            raise ValueError(f"data.encoder_cache_dtype must be one of {', '.join(ENCODER_CACHE_DTYPES)}, not "
                             f"{self.encoder_cache_dtype!r}")
        if self.num_workers < 0 or self.prefetch_batches < 1:
            raise ValueError("data.num_workers must be >= 0 and data.prefetch_batches >= 1")
