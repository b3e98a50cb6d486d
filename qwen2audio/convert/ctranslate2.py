"""CTranslate2's model.bin, read with numpy, never with ctranslate2 itself.

The layout (binary version 6, written by CTranslate2 3.x and 4.x), all little-endian: the version (uint32), the spec
name (a string), the spec revision (uint32), the variable count (uint32), then per variable its name (a string), rank
(uint8), dimensions (uint32 each), dtype id (uint8), byte count (uint32) and data; then the alias count (uint32) and
(alias, target) string pairs. A string is its byte count (uint16, NUL included) and its bytes, NUL-terminated.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..checkpoint import CheckpointError

CT2_MODEL_FILE = "model.bin"
CT2_BINARY_VERSION = 6  # the layout read here (CTranslate2 3.x and 4.x write it)
CT2_SPEC = "WhisperSpec"
CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}  # DataType enum
CT2_FLOAT_DTYPES = (0, 4, 5)


class Ct2File:
    """A cursor over model.bin's bytes that turns every short read into a CheckpointError naming the file."""

    def __init__(self, path: Path):
        self.path, self.data, self.pos = path, np.memmap(path, dtype=np.uint8, mode="r"), 0

    def take(self, n: int, what: str) -> np.ndarray:
        if self.pos + n > len(self.data):
            raise CheckpointError(f"{self.path}: truncated at byte {len(self.data)} while reading {what} (needs "
                                  f"{self.pos + n}); copy or convert the model again")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def uint(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what).tobytes())[0]

    def string(self, what: str) -> str:
        raw = self.take(self.uint("H", what), what).tobytes()
        if not raw.endswith(b"\0"):
            raise CheckpointError(f"{self.path}: {what} is not a NUL-terminated string at byte {self.pos}: the file "
                                  "is not a CTranslate2 model or is corrupt")
        return raw[:-1].decode("utf-8", errors="replace")


def read_header(f: Ct2File) -> tuple[int, str, int]:
    """(version, spec, revision), refused unless a Whisper model in the layout this reader knows."""
    version = f.uint("I", "the format version")
    if version != CT2_BINARY_VERSION:
        raise CheckpointError(f"{f.path}: CTranslate2 format version {version}, but this reader knows version "
                              f"{CT2_BINARY_VERSION} only: not a CTranslate2 model.bin, or convert it with CTranslate2 "
                              ">= 3 (ct2-transformers-converter)")
    spec = f.string("the spec name")
    revision = f.uint("I", "the spec revision")
    if spec != CT2_SPEC:
        raise CheckpointError(f"{f.path}: a CTranslate2 {spec!r} model, not a Whisper one ({CT2_SPEC})")
    return version, spec, revision


def variable_value(path: Path, name: str, shape: list[int], type_id: int, raw: np.ndarray) -> np.ndarray | torch.Tensor:
    """A copy of one variable's bytes in its stored dtype (bfloat16 as a torch tensor: numpy has none)."""
    dtype = CT2_DTYPES[type_id]
    itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
    if len(raw) != int(np.prod(shape)) * itemsize:
        raise CheckpointError(f"{path}: variable {name} holds {len(raw)} bytes, but shape {shape} needs "
                              f"{int(np.prod(shape)) * itemsize}: the file is corrupt")
    if dtype == "bfloat16":
        return torch.from_numpy(raw.view(np.int16).reshape(shape).copy()).view(torch.bfloat16)
    return raw.view(dtype).reshape(shape).copy()


def read_ct2_variables(path: Path, wanted: Callable[[str], bool]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The variables of a CTranslate2 model.bin whose names pass `wanted` (each a copy, in its stored dtype; bfloat16
    as a torch tensor since numpy has none), and a header {version, spec, revision, dtypes: name -> DataType id}."""
    f = Ct2File(path)
    version, spec, revision = read_header(f)
    variables, dtypes = {}, {}
    for i in range(f.uint("I", "the variable count")):
        name = f.string(f"the name of variable {i}")
        rank = f.uint("B", f"the rank of {name}")
        shape = [f.uint("I", f"the dimensions of {name}") for _ in range(rank)]
        type_id = f.uint("B", f"the dtype of {name}")
        n_bytes = f.uint("I", f"the size of {name}")
        raw = f.take(n_bytes, f"the data of {name}")
        if type_id not in CT2_DTYPES:
            raise CheckpointError(f"{path}: variable {name} has unknown dtype id {type_id}")
        dtypes[name] = type_id
        if wanted(name):
            variables[name] = variable_value(path, name, shape, type_id, raw)
    for _ in range(f.uint("I", "the alias count")):  # aliases share a stored variable (the tied decoder head)
        f.string("an alias"), f.string("an alias target")
    return variables, {"version": version, "spec": spec, "revision": revision, "dtypes": dtypes}
