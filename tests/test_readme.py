"""The README's quick start runs as written on a fresh clone: its Python example, its command lines (`run`,
`transcribe`, an interactive `chat` fed on stdin) and its server example (`qwen2audio serve` and the official `openai`
client), against the embedded demo model, each printing what the README shows.

The examples are read from the fenced blocks under the "## Quick start" heading: a ```python block is followed by a
```text block of what it prints; a ```console block holds `$ command` lines, the `> ` lines typed into the command
before it, and what it prints ("..." stands for any text, such as an absolute path). A command that ends in `&` is the
server, run on a free port for the client example."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
HEADING = "## Quick start"
VENV_BIN = ".venv/bin/"  # how the README writes the commands: run from the repository root
SERVER_URL = "http://127.0.0.1:8000"  # the server's default address, as the client example writes it
TIMEOUT = 120  # seconds for any one example (each takes a few)


def bin_dir() -> Path:
    """The clone's virtual environment (what `make install` made), else the one running the tests."""
    venv = ROOT / VENV_BIN
    return venv if (venv / "qwen2audio").exists() else Path(sys.executable).parent


def environment() -> dict[str, str]:
    return {**os.environ, "PATH": f"{bin_dir()}{os.pathsep}{os.environ.get('PATH', '')}"}


def quick_start() -> str:
    text = README.read_text(encoding="utf-8")
    assert HEADING in text, f"README.md has no {HEADING!r} section"
    body = text.split(HEADING, 1)[1]
    return body.split("\n## ", 1)[0]


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(info string, body) of each fenced block, in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)


def python_examples() -> list[tuple[str, str]]:
    """(code, what it prints) of each ```python block, its output from the ```text block right after it."""
    blocks = fenced_blocks(quick_start())
    return [(body, blocks[i + 1][1] if i + 1 < len(blocks) and blocks[i + 1][0] == "text" else "")
            for i, (kind, body) in enumerate(blocks) if kind == "python"]


@dataclass
class Command:
    line: str  # as the README writes it, without the "$ "
    stdin: list[str] = field(default_factory=list)
    output: list[str] = field(default_factory=list)

    def argv_line(self) -> str:
        """The command with the README's .venv/bin/ pointing at the environment under test."""
        return self.line.removesuffix("&").strip().replace(VENV_BIN, f"{bin_dir()}/")


def commands() -> list[Command]:
    found: list[Command] = []
    for kind, body in fenced_blocks(quick_start()):
        if kind != "console":
            continue
        for line in body.splitlines():
            if line.startswith("$ "):
                found.append(Command(line[2:]))
            elif line.startswith("> "):
                found[-1].stdin.append(line[2:])
            elif line.strip():
                found[-1].output.append(line)
    return found


def matches(pattern: str, line: str) -> bool:
    return re.fullmatch(".*".join(map(re.escape, pattern.split("..."))), line.rstrip()) is not None


def assert_prints(expected: list[str], stdout: str, stderr: str, what: str) -> None:
    """stdout's lines are the README's, but for lines the README shows that the command wrote to stderr."""
    err = [line for line in stderr.splitlines() if line.strip()]
    wanted = [p for p in expected if not any(matches(p, line) for line in err)]
    got = [line.rstrip() for line in stdout.splitlines() if line.strip()]
    assert len(got) == len(wanted) and all(map(matches, wanted, got)), \
        f"{what}\nREADME shows:\n" + "\n".join(wanted) + f"\nit printed:\n{stdout}\nstderr:\n{stderr[-2000:]}"


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_dir() / "python"), "-c", code], cwd=ROOT, env=environment(), capture_output=True,
                          text=True, timeout=TIMEOUT)


def test_the_quick_start_holds_the_three_examples():
    """Python (load, chat with an audio, transcribe), the CLI (run, chat, transcribe) and serve with openai."""
    code = [c for c, _ in python_examples()]
    assert any("qwen2audio.load(" in c and ".chat(" in c and ".transcribe(" in c for c in code)
    assert any("from openai import OpenAI" in c and SERVER_URL in c for c in code)
    names = {c.line.split()[1] for c in commands()}
    assert {"run", "chat", "transcribe", "serve"} <= names
    assert all(c.line.startswith(VENV_BIN) for c in commands())


def test_the_python_example_prints_what_the_readme_shows():
    code, expected = next((c, out) for c, out in python_examples() if "from openai" not in c)
    assert expected.strip(), "the README shows no output for its Python example"
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert_prints(expected.splitlines(), done.stdout, done.stderr, "the Python example")


@pytest.mark.parametrize("command", [c for c in commands() if not c.line.endswith("&")],
                         ids=lambda c: re.sub(r"\S*/", "", c.line)[:50])  # e.g. "qwen2audio chat"
def test_the_command_prints_what_the_readme_shows(command):
    assert command.output, f"the README shows no output for {command.line}"
    stdin = "".join(line + "\n" for line in command.stdin)
    done = subprocess.run(["bash", "-c", command.argv_line()], cwd=ROOT, env=environment(), input=stdin,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert_prints(command.output, done.stdout, done.stderr, command.line)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(url: str, server: subprocess.Popen, log: Path) -> None:
    give_up = time.monotonic() + TIMEOUT
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        assert server.poll() is None, f"the server stopped:\n{log.read_text()[-2000:]}"
        assert time.monotonic() < give_up, f"no /health after {TIMEOUT} s:\n{log.read_text()[-2000:]}"
        time.sleep(0.2)


def test_the_server_answers_the_openai_client_as_the_readme_shows(tmp_path):
    pytest.importorskip("openai")
    pytest.importorskip("uvicorn")
    serve = next(c for c in commands() if c.line.endswith("&"))
    code, expected = next((c, out) for c, out in python_examples() if "from openai" in c)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with open(log, "w") as sink:
        server = subprocess.Popen(["bash", "-c", f"exec {serve.argv_line()} --port {port}"], cwd=ROOT,
                                  env=environment(), stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_for_health(url, server, log)
        done = run_python(code.replace(SERVER_URL, url))
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert done.returncode == 0, done.stderr
    assert_prints(expected.splitlines(), done.stdout, done.stderr, "the openai client example")
