"""Metrics: one JSON line per logged step in out_dir/metrics.jsonl, TensorBoard events when tensorboard is installed,
and a tqdm progress bar with loss, learning rate and throughput. Only the first process writes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..files import atomic_write

METRICS_FILE = "metrics.jsonl"


class MetricsWriter:
    def __init__(self, out_dir: Path, enabled: bool = True, tensorboard: bool = True):
        self.path = Path(out_dir) / METRICS_FILE
        self.enabled = enabled
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))
            except ImportError:  # tensorboard is optional
                pass

    def log(self, line: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")
        if self._tb is not None:
            for key, value in line.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, line["step"])

    def note(self, message: str) -> None:
        if self.enabled:
            print(f"qwen2audio train: {message}", file=sys.stderr, flush=True)

    def truncate_after(self, step: int) -> None:
        """On resume: drop the lines a killed run wrote past its last checkpoint."""
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        atomic_write(self.path, "".join(line + "\n" for line in kept).encode())

    def progress(self, total: int, initial: int, enabled: bool = True) -> "Progress":
        return Progress(total, initial, enabled and self.enabled)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class Progress:
    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, line: dict) -> None:
        if self.bar is None:
            return
        lr = next((v for k, v in line.items() if k.startswith("lr/")), 0.0)
        self.bar.set_postfix(loss=f"{line['loss']:.4f}", lr=f"{lr:.2e}", tok_s=f"{line['tokens_per_s']:.0f}",
                             refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
