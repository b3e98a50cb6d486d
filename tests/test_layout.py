"""The package's shape, as the README's "Layout" section states it: layers that import only downward, no import
cycle, no package import hidden inside a function to dodge one, no private names borrowed across modules, and short
functions on the model, generate and train paths."""

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "qwen2audio"
MAX_FUNCTION_LINES = 40  # statements of a function, its docstring not counted
# the model, generate and train paths: what runs from a checkpoint to a token or a gradient
SHORT_FUNCTION_MODULES = ("model/", "train/", "generate", "logprobs", "checkpoint", "processor", "chat",
                          "transcribe", "api", "quant")


def readme_layers() -> dict[str, int]:
    """README's layer table: `N name name/ ...` lines in the fenced block of its Layout section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Layout", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```text\n(.*?)```", section, re.S).group(1)
    layers = {}
    for line in block.strip().splitlines():
        number, *names = line.split()
        for name in names:
            layers[name.rstrip("/")] = int(number)
    return layers


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(importer: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The package modules an import statement loads (`from . import x` loads the module x when there is one)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "qwen2audio"]
    if node.level:
        package = importer if MODULES[importer].name == "__init__.py" else importer.rsplit(".", 1)[0]
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1])
        base = f"{base}.{node.module}" if node.module else base
    else:
        base = node.module or ""
    if base.split(".")[0] != "qwen2audio":
        return []
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def imports(name: str):
    """(imported module, the import node, the function it runs in or None) for every package import of `name`."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    enclosing = {}
    for f in ast.walk(tree):
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for n in ast.walk(f):
                if n is not f:
                    enclosing.setdefault(id(n), f.name)  # outer functions come first: the outermost wins
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target in resolve(name, node):
                yield target, node, enclosing.get(id(node))


def layer_of(module: str, layers: dict[str, int]) -> int:
    parts = module.split(".")[1:]
    if not parts:
        return max(layers.values()) + 1  # the package's __init__ re-exports the public API from every layer
    if parts[-1] in ("cli", "__main__"):
        return layers["cli"]
    if parts[0] not in layers:
        raise AssertionError(f"{module} is in no layer of the README's Layout section: add it there")
    return layers[parts[0]]


def is_lazy_export(name: str, function: str | None) -> bool:
    """A package's `__getattr__`, which imports a module with optional dependencies only when it is asked for."""
    return MODULES[name].name == "__init__.py" and function == "__getattr__"


def test_every_module_sits_in_a_layer_and_imports_only_its_layer_or_below():
    layers = readme_layers()
    wrong = []
    for name in MODULES:
        own = layer_of(name, layers)
        for target, node, _ in imports(name):
            if layer_of(target, layers) > own:
                wrong.append(f"{name} (layer {own}) imports {target} (layer {layer_of(target, layers)}), "
                             f"line {node.lineno}")
    assert not wrong, "imports that go up a layer:\n" + "\n".join(wrong)


def test_no_import_cycle():
    graph = defaultdict(set)
    for name in MODULES:
        for target, _, function in imports(name):
            if function is None and target != name:
                graph[name].add(target)
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(MODULES):
        if name not in state:
            visit(name, [name])


def test_package_imports_inside_functions_only_in_command_line_modules():
    """A function-local import of our own module hides a cycle or a layering problem; only the command-line
    modules (which load a subcommand's heavy dependencies when it runs) and lazy exports may use one."""
    layers = readme_layers()
    hidden = [f"{name}:{node.lineno} imports {target}"
              for name in MODULES for target, node, function in imports(name)
              if function and layer_of(name, layers) != layers["cli"] and not is_lazy_export(name, function)]
    assert not hidden, "package imports inside functions:\n" + "\n".join(hidden)


def test_no_private_name_imported_from_another_module():
    borrowed = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and resolve(name, node):
                borrowed += [f"{name}:{node.lineno} imports {a.name}" for a in node.names
                             if a.name.startswith("_") and not a.name.startswith("__")]
    assert not borrowed, "private names imported across modules:\n" + "\n".join(borrowed)


def function_lengths(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            has_docstring = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            first = body[1] if has_docstring and len(body) > 1 else body[0]
            yield node.name, node.lineno, node.end_lineno - first.lineno + 1


@pytest.mark.parametrize("prefix", SHORT_FUNCTION_MODULES)
def test_functions_on_the_model_generate_and_train_paths_are_short(prefix):
    paths = sorted(PACKAGE.glob(f"{prefix}*.py") if prefix.endswith("/") else [PACKAGE / f"{prefix}.py"])
    assert paths, f"no module {prefix}"
    long = [f"{p.relative_to(ROOT)}:{line} {fn} ({n} lines)" for p in paths for fn, line, n in function_lengths(p)
            if n > MAX_FUNCTION_LINES]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def test_argument_parsing_only_in_command_line_modules():
    layers = readme_layers()
    parsing = [name for name, path in MODULES.items() if layer_of(name, layers) != layers["cli"]
               and re.search(r"^\s*(import argparse|from argparse import)", path.read_text(encoding="utf-8"), re.M)]
    assert not parsing, f"argparse outside the command-line modules: {parsing}"
