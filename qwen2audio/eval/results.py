"""What an evaluation leaves on disk, and the types it holds: the predictions JSONL (a row appended per item as it is
predicted, read back by a rerun so that only what is missing is computed) and the `{name}.results.json` / `.md`
pair of a finished run (`Results`, one `Score` per source)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..files import atomic_write, atomic_write_json


@dataclass
class Score:
    """One number (`value`, in `unit`), the count it is over, and what else a reader needs (`details`)."""

    metric: str
    value: float
    unit: str
    count: int
    details: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"metric": self.metric, "value": self.value, "unit": self.unit, "count": self.count, **self.details}


@dataclass
class Results:
    benchmark: str
    scores: dict[str, Score]
    computed: int  # items predicted by this call (the rest came from the predictions file)
    markdown: str
    published: dict  # the report's numbers per source (paper, or (paper, after the HF conversion))
    tasks: dict[str, Score] = field(default_factory=dict)  # pooled per task (the synthetic corpus)
    prompt_styles: list[str] = field(default_factory=list)  # of a local model's predictions (synthetic corpus)

    def as_dict(self) -> dict:
        out = {"benchmark": self.benchmark, "scores": {k: s.as_dict() for k, s in self.scores.items()},
               "published": {k: list(v) if isinstance(v, tuple) else v for k, v in self.published.items()}}
        if self.tasks:
            out["tasks"] = {k: s.as_dict() for k, s in self.tasks.items()}
        if self.prompt_styles:
            out["prompt_style"] = self.prompt_styles
        return out


def predictions_path(out_dir: Path, name: str) -> Path:
    return out_dir / f"{name}.predictions.jsonl"


def read_predictions(path: Path) -> dict[str, dict]:
    """Finished rows by id; a torn last line (a killed run) is ignored and later rewritten."""
    done = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[row["id"]] = row
    return done


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append whole lines and fsync: after a crash the file holds every finished batch."""
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
    else:
        torn = False
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n" if torn else "")
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        f.flush()
        os.fsync(f.fileno())


def write_results(out_dir: Path, results: Results) -> None:
    """`{benchmark}.results.json` and `.md`, each replaced whole (a reader never sees half a file)."""
    atomic_write_json(out_dir / f"{results.benchmark}.results.json", results.as_dict())
    atomic_write(out_dir / f"{results.benchmark}.results.md", results.markdown.encode())
