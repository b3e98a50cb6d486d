"""Training checkpoints: the resume contract, written atomically.

    out_dir/checkpoints/step-00000100/
        state/          model (trained weights only) + optimizer, torch.distributed.checkpoint (one shard per process)
        rng-0.pt ...    each process's RNG states (python, numpy, torch, cuda)
        trainer.pt      step, data position, scheduler, counters, the config

Everything is written under `.tmp-step-N/` and fsynced; the first process then renames it to `step-N/` and fsyncs
the folder. A kill at any moment leaves either the new checkpoint complete or no `step-N` at all, so the latest
`step-*` is always loadable. Older ones beyond `keep` are renamed to `.trash-*` before they are deleted.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from .distributed import Dist, barrier

STEP_DIR = re.compile(r"^step-(\d{8})$")
OPTIONS = StateDictOptions(ignore_frozen_params=True)  # frozen weights come from the base checkpoint again
# dcp.load has already checked that the checkpoint holds every trained weight; the frozen ones are not in it
LOAD_OPTIONS = StateDictOptions(ignore_frozen_params=True, strict=False)


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:08d}"


def latest_checkpoint(root: str | Path) -> Path | None:
    root = Path(root)
    if not root.is_dir():
        return None
    steps = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir())
    return steps[-1][1] if steps else None


def clean_partial(root: Path, d: Dist) -> None:
    """Remove what a killed run left half-written (rank 0, before training)."""
    if d.is_main and root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((".tmp-", ".trash-")):
                shutil.rmtree(p, ignore_errors=True)
    barrier(d)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_fsynced(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _write_state(module, optimizer, directory: Path) -> None:
    model_state, optim_state = get_state_dict(module, optimizer, options=OPTIONS)
    with warnings.catch_warnings():  # one process without a process group is what we mean
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=directory)


def _publish(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def save_checkpoint(root: Path, step: int, module, optimizer, trainer_state: dict[str, Any], d: Dist,
                    keep: int) -> Path:
    """Write checkpoint `step` (every process calls this); returns its folder."""
    root = Path(root)
    tmp, final = root / f".tmp-step-{step:08d}", step_dir(root, step)
    if d.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(d)
    _write_state(module, optimizer, tmp / "state")
    _save_fsynced(rng_state(), tmp / f"rng-{d.rank}.pt")
    barrier(d)
    if d.is_main:
        _save_fsynced(trainer_state, tmp / "trainer.pt")
        _fsync_dir(tmp)
        if final.exists():  # a checkpoint of this step from an earlier, diverged run
            shutil.rmtree(final)
        _publish(tmp, final)
        _prune(root, keep)
    barrier(d)
    return final


def _prune(root: Path, keep: int) -> None:
    steps = sorted(p for p in root.iterdir() if STEP_DIR.match(p.name))
    for old in steps[:-keep] if keep > 0 else []:
        trash = root / f".trash-{old.name}"
        os.replace(old, trash)
        shutil.rmtree(trash, ignore_errors=True)


def load_model_weights(path: Path, module) -> None:
    """Only the trained weights of checkpoint `path` into `module` (no optimizer, no trainer state)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    state = get_model_state_dict(module, options=OPTIONS)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load({"model": state}, checkpoint_id=Path(path) / "state")
    set_model_state_dict(module, state, options=LOAD_OPTIONS)


def load_checkpoint(path: Path, module, optimizer, d: Dist) -> dict[str, Any]:
    """Restore model, optimizer and this process's RNG state; returns the trainer state."""
    path = Path(path)
    trainer_state = torch.load(path / "trainer.pt", weights_only=True)
    model_state, optim_state = get_state_dict(module, optimizer, options=OPTIONS)
    state = {"model": model_state, "optim": optim_state}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=path / "state")
    set_state_dict(module, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                   options=LOAD_OPTIONS)
    rng_file = path / f"rng-{d.rank}.pt"
    if rng_file.exists():  # absent when resuming with more processes than saved
        set_rng_state(torch.load(rng_file, weights_only=True))
    return trainer_state
