"""`qwen2audio train --stage pretrain|sft|dpo --config FILE.yaml [key=value ...] [--resume [PATH]]`.

Runs as one process, or as many under torchrun (`torchrun --nproc_per_node N -m qwen2audio train ...`).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from .config import STAGES, load_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stage", choices=STAGES, required=True, help="pretrain (task rows), sft (chat rows), dpo (pairs)")
    p.add_argument("--config", help="YAML recipe (see recipes/); its keys are the TrainConfig dataclasses")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. optim.lr=2e-4 data.batch_size=8")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="PATH",
                   help="continue from the latest checkpoint in out_dir (or from PATH)")
    p.add_argument("--export", metavar="CHECKPOINT", help="do not train: write the model of this training checkpoint "
                   "(LoRA merged, hub layout) to out_dir/exports/<checkpoint name>, e.g. to evaluate it")


def run(args: argparse.Namespace) -> None:
    """Train as the arguments say. Under torchrun, the process ends here once all processes are done (see below)."""
    import torch.distributed as dist

    from .distributed import shutdown
    from .loop import train

    if isinstance(args.resume, str) and "=" in args.resume and not os.path.exists(args.resume):
        args.overrides, args.resume = [*args.overrides, args.resume], True  # `--resume key=value`: not a path
    config = load_config(args.config, args.overrides, stage=args.stage)
    if args.export:
        from .loop import export_checkpoint

        checkpoint = os.path.normpath(args.export)
        if not os.path.isfile(os.path.join(checkpoint, "trainer.pt")):
            raise FileNotFoundError(f"{checkpoint} is not a training checkpoint (no trainer.pt): give "
                                    "out_dir/checkpoints/step-N")
        out = export_checkpoint(config, checkpoint, os.path.join(config.out_dir, "exports", os.path.basename(checkpoint)))
        print(f"wrote {out}")
        return
    code = 1
    try:
        run_ = train(config, resume=args.resume)
        if run_.dist.is_main and run_.history:
            last = run_.history[-1]
            print(f"done: {last['step']} steps, last loss {last['loss']:.4f}; out_dir {config.out_dir}")
        code = 0
    finally:
        if dist.is_initialized():
            shutdown()
            # torch 2.13: after FSDP2 over gloo, about one exit in ten aborts in a C++ destructor ("terminate called
            # without an active exception") although all work is done and written; leave without running them
            if code:
                traceback.print_exc()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qwen2audio train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"qwen2audio train: error: {e}", file=sys.stderr)
        return 1
    return 0
