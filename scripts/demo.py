"""`make demo`: the whole input path on a real recording, end to end, offline.

Until the embedded demo model lands (a later issue trains and ships it), this builds a tiny Qwen2-Audio with random
weights, saves it in the Hugging Face layout, loads it back, speaks a sentence with espeak-ng, and runs the chat
template, the processor, the model and generation on it. The printed text is random: the point is the plumbing.
"""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import qwen2audio
from qwen2audio.model import Qwen2AudioConfig

SENTENCE = "The quick brown fox jumps over the lazy dog."


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="qwen2audio-demo-"))
    try:
        torch.manual_seed(0)
        model = qwen2audio.Qwen2AudioForConditionalGeneration(Qwen2AudioConfig.from_name("tiny-random"))
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.02)
        model.save_pretrained(work / "tiny-random")
        print(f"saved a random tiny model to {work / 'tiny-random'}")
        subprocess.run([sys.executable, "-m", "qwen2audio", "info", str(work / "tiny-random")], check=True)

        model = qwen2audio.load(work / "tiny-random")
        wav = work / "speech.wav"
        if shutil.which("espeak-ng"):
            subprocess.run(["espeak-ng", "-w", str(wav), SENTENCE], check=True)
            audio = str(wav)
        else:  # a tone stands in when espeak-ng is missing
            audio = (0.3 * torch.sin(torch.arange(48000) * 440 * 2 * torch.pi / 16000)).numpy()
        conversation = [{"role": "user", "content": [{"type": "audio", "audio": audio},
                                                     {"type": "text", "text": "What does the speaker say?"}]}]
        prompt = model.processor.apply_chat_template(conversation, add_generation_prompt=True)
        inputs = model.processor(text=prompt, audio=qwen2audio.audios_in_conversation(conversation),
                                 sampling_rate=16000)
        print("prompt:", prompt.replace("\n", "\\n"))
        print({k: tuple(v.shape) for k, v in inputs.items()}, "audio tokens:", int((inputs.input_ids == 151646).sum()))
        with torch.no_grad():
            logits = model(**inputs).logits[0, -1]
        top = logits.topk(5).indices.tolist()
        print("next-token guesses of the random model:", [model.processor.decode([t]) for t in top])
        reply = model.chat(conversation, max_new_tokens=12)  # the whole chat path: template, audio, generate, decode
        print("model.chat (random weights, so gibberish):", repr(reply))
        print("The trained demo model arrives with a later issue; see README.")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
