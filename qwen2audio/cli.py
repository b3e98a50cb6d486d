"""Command line: `qwen2audio COMMAND ...`. One table maps each command to a function of the library; the functions
here only parse arguments and print."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path

from .api import Qwen2AudioForConditionalGeneration, default_model_path, load
from .audio import SAMPLE_RATE, AudioError, load_audio
from .convert.cli import add_build_arguments as build_args, run_build as cmd_build
from .convert.cli import add_convert_arguments as convert_args, run_convert as cmd_convert
from .convert.cli import add_info_arguments as info_args, run_info as cmd_info
from .convert.cli import add_quantize_arguments as quantize_args, run_quantize as cmd_quantize
from .convert.cli import add_trim_vocab_arguments as trim_vocab_args, run_trim_vocab as cmd_trim_vocab
from .checkpoint import DTYPE_NAMES, CheckpointError
from .chat import generation_options
from .eval.cli import add_arguments as eval_args, run as cmd_eval
from .files import atomic_write
from .generate import Generator
from .quant import quantize
from .train.cli import add_arguments as train_args, run as cmd_train
from .synth.cli import add_arguments as synth_args, run as cmd_synth
from .serve.cli import add_arguments as serve_args, run as cmd_serve
from .transcribe import OUTPUT_FORMATS, STYLES, format_transcription


# -- inference: run, chat, transcribe ---------------------------------------------------------------------------------
CHAT_HELP = """Type a message and press Enter; the answer streams back. Commands:
  /audio FILE  attach an audio file to your next message (repeat for several audios);
               an empty line then sends the audio alone (voice chat: the question is spoken)
  /reset       start a new conversation
  /help        show this text
  /exit        quit (Ctrl-D too)"""


def _inference_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint directory (Qwen2-Audio-7B[-Instruct] or one of ours; default: the "
                   "shipped demo model)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ... (default: cpu)")
    p.add_argument("--dtype", choices=sorted(DTYPE_NAMES), help="weight dtype (default: as stored)")
    p.add_argument("--max-new-tokens", type=int, help="most tokens to generate (default 256)")
    p.add_argument("--temperature", type=float, help="sample at this temperature (default: greedy; 0 = greedy)")
    p.add_argument("--quantize", choices=("int8", "int4"), help="weight-only quantisation of the language model")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the decode step (default: where it pays: CUDA, quantised CPU decode)")


def _chat_args(p: argparse.ArgumentParser) -> None:
    _inference_args(p)
    p.add_argument("--system", help="system prompt (default: the template's 'You are a helpful assistant.')")
    p.add_argument("--stop", action="append", default=[], help="a string that ends the answer (repeatable)")


def _run_args(p: argparse.ArgumentParser) -> None:
    _chat_args(p)
    p.add_argument("--audio", action="append", default=[], metavar="FILE", help="an audio file (repeatable)")
    p.add_argument("prompt", nargs="?", help="the instruction; leave it out for voice chat (spoken instruction)")


def _transcribe_args(p: argparse.ArgumentParser) -> None:
    _inference_args(p)
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files of any length")
    p.add_argument("--language", help="language code, e.g. en, zh (default: the model detects it)")
    p.add_argument("--output-format", choices=OUTPUT_FORMATS, default="txt")
    p.add_argument("--output-dir", help="write FILE's stem + .txt/.json/.srt here (default: print to stdout)")
    p.add_argument("--batch-size", type=int, default=8, help="30-second windows per generate call")
    p.add_argument("--prompt-style", choices=STYLES, default="auto",
                   help="base: the official ASR prompt; chat: an Instruct chat turn (default: from the checkpoint)")


def _load_for_inference(args) -> Qwen2AudioForConditionalGeneration:
    model = load(args.model, device=args.device, dtype=args.dtype)
    if args.quantize:
        quantize(model, args.quantize)
    if args.compile is not None:
        model.generator = Generator(model, compile=args.compile)
    return model


def _generation_args(args) -> dict:
    return generation_options({"max_new_tokens": args.max_new_tokens, "temperature": args.temperature})


@contextlib.contextmanager
def _log_to_stderr():
    """Show the library's notes (e.g. how long audio was split) on stderr while a command runs."""
    logger = logging.getLogger("qwen2audio")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("qwen2audio: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _print_stream(pieces) -> str:
    text = ""
    for piece in pieces:
        print(piece, end="", flush=True)
        text += piece
    print(flush=True)
    return text


def cmd_run(args) -> None:
    """One turn: the audio files and the prompt (none: voice chat), the answer streamed to stdout."""
    if not args.audio and not args.prompt:
        raise ValueError("give --audio FILE and/or a prompt")
    audios = [load_audio(a) for a in args.audio]  # before loading the model: a bad file fails fast
    content = [{"type": "audio", "audio": a} for a in audios]
    content += [{"type": "text", "text": args.prompt}] if args.prompt else []
    messages = [{"role": "system", "content": args.system}] if args.system else []
    messages.append({"role": "user", "content": content})
    with _log_to_stderr():
        model = _load_for_inference(args)
        _print_stream(model.chat(messages, stream=True, stop=args.stop or None, **_generation_args(args)))


def cmd_chat(args) -> None:
    """Interactive multi-turn chat on stdin/stdout (see CHAT_HELP)."""
    with _log_to_stderr():
        model = _load_for_inference(args)
        options = _generation_args(args)
        system = [{"role": "system", "content": args.system}] if args.system else []
        history, attached = list(system), []
        print(f"chatting with {args.model}; /help for commands", file=sys.stderr)
        prompt = "> " if sys.stdin.isatty() else ""
        while True:
            try:
                line = input(prompt).strip()
            except (EOFError, KeyboardInterrupt):
                print(file=sys.stderr)
                return
            command, _, rest = line.partition(" ")
            if command in ("/exit", "/quit"):
                return
            if command == "/help":
                print(CHAT_HELP)
            elif command == "/reset":
                history, attached = list(system), []
                print("(new conversation)")
            elif command == "/audio":
                try:
                    attached.append(load_audio(rest.strip()))
                except AudioError as e:
                    print(f"error: {e}", file=sys.stderr)
                    continue
                print(f"(attached {rest.strip()}: {len(attached[-1]) / SAMPLE_RATE:.1f} s; it goes with your next "
                      "message, or press Enter to send it alone)")
            elif command.startswith("/"):
                print(f"error: unknown command {command}; /help lists them", file=sys.stderr)
            elif line or attached:
                content = [{"type": "audio", "audio": a} for a in attached]
                turn = {"role": "user", "content": content + ([{"type": "text", "text": line}] if line else [])}
                try:
                    reply = _print_stream(model.chat(history + [turn], stream=True, stop=args.stop or None,
                                                     **options))
                except KeyboardInterrupt:
                    print("\n(interrupted; the turn was dropped)", file=sys.stderr)
                    continue
                except ValueError as e:  # AudioError too: say so and keep the session
                    print(f"error: {e}", file=sys.stderr)
                    continue
                history += [turn, {"role": "assistant", "content": reply}]
                attached = []


def cmd_transcribe(args) -> None:
    """Transcribe audio files of any length, with a progress bar over files and 30-second windows."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    for f in args.files:
        if not Path(f).is_file():
            raise AudioError(f"audio file '{f}' not found: check the path")
    out_dir = Path(args.output_dir) if args.output_dir else None
    if out_dir is not None:
        names = [Path(f).stem for f in args.files]
        clash = sorted({n for n in names if names.count(n) > 1})
        if clash:
            raise ValueError(f"several files would write {clash[0]}.{args.output_format} in {out_dir}")
        out_dir.mkdir(parents=True, exist_ok=True)
    with _log_to_stderr():
        model = _load_for_inference(args)
        # bars on a terminal only (disable=None), so that logs and pipes get no carriage-return noise
        one_file = True if len(args.files) == 1 else None
        files = tqdm(args.files, unit="file", position=0, file=sys.stderr, disable=one_file)
        windows = tqdm(total=0, unit="window", position=1, leave=False, file=sys.stderr, disable=None)
        with files, windows, logging_redirect_tqdm(loggers=[logging.getLogger("qwen2audio")]):
            for f in files:
                offset = windows.n

                def progress(done: int, total: int) -> None:
                    windows.total, windows.n = offset + total, offset + done
                    windows.refresh()

                result = model.transcribe(f, language=args.language, style=args.prompt_style,
                                          batch_size=args.batch_size, progress=progress, **_generation_args(args))
                text = format_transcription(result, args.output_format)
                if out_dir is None:
                    tqdm.write((f"==> {f} <==\n" if len(args.files) > 1 else "") + text, file=sys.stdout, end="")
                else:
                    atomic_write(out_dir / f"{Path(f).stem}.{args.output_format}", text.encode())


# command -> (function, argument setup, one-line help)
COMMANDS = {
    "info": (cmd_info, info_args, "config, parameter count and memory estimate of a checkpoint or preset"),
    "convert": (cmd_convert, convert_args, "check a checkpoint and rewrite it in another layout or dtype"),
    "quantize": (cmd_quantize, quantize_args, "write a checkpoint as compressed-tensors W8A16 / W4A16 "
                 "(llm-compressor's format), shard by shard"),
    "build": (cmd_build, build_args, "a new, untrained Qwen2-Audio from a Whisper checkpoint and a Qwen2 LM (given "
              "or new)"),
    "trim-vocab": (cmd_trim_vocab, trim_vocab_args, "keep only the tokens a corpus uses (bytes and specials too): "
                   "smaller embeddings, same tokenization of the corpus"),
    "run": (cmd_run, _run_args, "one turn: audio files and a prompt (none: voice chat); the answer is streamed"),
    "chat": (cmd_chat, _chat_args, "interactive chat: type text, attach audio with /audio FILE"),
    "transcribe": (cmd_transcribe, _transcribe_args, "speech to text for audio of any length (txt, json, srt)"),
    "train": (cmd_train, train_args, "pre-train, fine-tune (LoRA or full) or DPO from a YAML recipe; torchrun-ready"),
    "eval": (cmd_eval, eval_args, "score a local model or an OpenAI-compatible API on the report's benchmarks"),
    "synth": (cmd_synth, synth_args, "a synthetic multi-task audio corpus (sounds, questions, espeak-ng speech)"),
    "serve": (cmd_serve, serve_args, "an OpenAI-compatible server (continuous batching, limits, a web page at /)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qwen2audio", description="Qwen2-Audio in pure PyTorch")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (func, setup, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        setup(p)
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "model", "") is None and not getattr(args, "api", None):
            args.model = str(default_model_path())  # every --model defaults to the embedded demo model
        args.func(args)
    except (CheckpointError, AudioError, ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"qwen2audio {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"qwen2audio {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (`| head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
