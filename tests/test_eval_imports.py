"""How `qwen2audio.eval` holds together: every benchmark the CLI offers has a loader in the table, and nothing in it
imports the training code (which shares its layer; `tests/test_layout.py` checks the layers and cycles)."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import qwen2audio.eval
from qwen2audio.eval.cli import add_arguments
from qwen2audio.eval.datasets import LOADERS, PRESETS

EVAL_DIR = Path(qwen2audio.eval.__file__).parent


def test_every_benchmark_the_cli_offers_has_a_loader():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    offered = next(a.choices for a in parser._actions if a.dest == "benchmark")
    assert set(offered) == set(PRESETS)
    # the preference pairs are read by `preference.load_pairs`: the one set that is not a list of EvalItems
    assert {name for name in offered if PRESETS[name].layout not in LOADERS} == {"preference"}


def imported_names(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of everything a module of qwen2audio/eval/ imports (`from ..x import y`:
    qwen2audio.x.y)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            package = ["qwen2audio", "eval"][:3 - node.level] if node.level else []
            base = ".".join(package + ([node.module] if node.module else []))
            out += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
    return out


def test_eval_never_imports_train():
    found = [f"{path.name}:{line} imports {name}" for path in sorted(EVAL_DIR.glob("*.py"))
             for line, name in imported_names(ast.parse(path.read_text(encoding="utf-8")))
             if name == "qwen2audio.train" or name.startswith("qwen2audio.train.")]
    assert not found, "\n".join(found)
