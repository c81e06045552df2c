"""The layer rules of docs/architecture.md, checked on the code's own imports (AST, no import run).

Fails when an import runs against the layers, a cycle appears between subpackages, a room
imports another room's private module, the torch-free rooms import torch at module level, or a
function / file grows past the size limits. `python -m pytest tests/test_architecture.py -q`
prints the offending file and line.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "src" / "tunekit"
ROOMS = sorted(p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").is_file())
ALL = set(ROOMS)

# room -> rooms it may import (besides itself). The direction of docs/architecture.md.
ALLOWED: dict[str, set[str]] = {
    "config": set(),
    "modules": set(),
    "models": {"modules"},
    "tokenizers": set(),
    "data": {"tokenizers"},
    "distributed": set(),
    "checkpointing": {"config", "distributed", "models", "modules"},
    "training": {"distributed", "models", "modules"},
    "generation": {"checkpointing", "config", "data", "distributed", "models", "modules", "tokenizers"},
    "export": {"checkpointing", "config", "distributed", "generation", "models", "modules", "tokenizers"},
    "evaluation": {"checkpointing", "config", "data", "distributed", "generation", "models", "modules",
                   "tokenizers", "training"},
    "reporting": {"config"},
    "run": ALL - {"cli", "run"},
    "cli": ALL - {"cli"},
}
TORCH_FREE_AT_IMPORT = {"config", "cli", "reporting"}  # `--cfg job`, `--help`, `tunekit ls` stay fast
MAX_FUNCTION_LINES = 150
MAX_FILE_LINES = 600


def _sources() -> list[Path]:
    return sorted([*PKG.rglob("*.py"), *(REPO / "recipes").glob("*.py")])


def _room(path: Path) -> str:
    rel = path.relative_to(REPO)
    if rel.parts[0] == "recipes":
        return "recipes"
    return rel.parts[2] if len(rel.parts) > 3 else "tunekit"


def _imports(tree: ast.AST) -> list[tuple[int, str, bool]]:
    """``(line, module, at module level)`` for every tunekit / torch import, names included."""
    top = {id(n) for n in getattr(tree, "body", [])}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out += [(node.lineno, name, id(node) in top) for name in names]
    return out


def _target_room(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "tunekit" or len(parts) < 2 or parts[1] not in ALL:
        return None
    return parts[1]


def test_rooms_are_the_documented_ones():
    assert set(ALLOWED) == ALL, f"a room without a rule: {sorted(ALL ^ set(ALLOWED))}"


def test_imports_follow_the_layers():
    bad = []
    for path in _sources():
        room = _room(path)
        if room not in ALLOWED:
            continue
        for line, module, _ in _imports(ast.parse(path.read_text())):
            target = _target_room(module)
            if target is not None and target != room and target not in ALLOWED[room]:
                bad.append(f"{path.relative_to(REPO)}:{line}: {room} imports {module}")
    assert not bad, "imports against the layers:\n" + "\n".join(sorted(set(bad)))


def test_no_cycle_between_subpackages():
    graph: dict[str, set[str]] = defaultdict(set)
    for path in _sources():
        room = _room(path)
        for _, module, _ in _imports(ast.parse(path.read_text())):
            target = _target_room(module)
            if target is not None and room in ALL and target != room:
                graph[room].add(target)
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack, node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*stack, node])):
                return cycle
        state[node] = 2
        return None

    for room in sorted(graph):
        if room not in state:
            cycle = visit(room, [])
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_room_imports_another_rooms_private_module():
    bad = []
    for path in _sources():
        room = _room(path)
        for line, module, _ in _imports(ast.parse(path.read_text())):
            parts = module.split(".")
            target = _target_room(module)
            if target is None or target == room:
                continue
            private = [p for p in parts[2:-1] if p.startswith("_")] + (
                [parts[-1]] if len(parts) > 2 and parts[-1].startswith("_") and not parts[-1].startswith("__") else [])
            if private:
                bad.append(f"{path.relative_to(REPO)}:{line}: {room} imports {module}")
    assert not bad, "private modules or names of another room:\n" + "\n".join(sorted(set(bad)))


def test_nothing_in_src_imports_recipes_or_tests():
    bad = [f"{p.relative_to(REPO)}:{line}: {m}" for p in PKG.rglob("*.py")
           for line, m, _ in _imports(ast.parse(p.read_text())) if m.split(".")[0] in ("recipes", "tests")]
    assert not bad, bad


def test_torch_free_rooms_do_not_import_torch_at_module_level():
    bad = []
    for path in _sources():
        if _room(path) in TORCH_FREE_AT_IMPORT:
            for line, module, top in _imports(ast.parse(path.read_text())):
                if top and module.split(".")[0] == "torch":
                    bad.append(f"{path.relative_to(REPO)}:{line}")
    assert not bad, "torch imported at module level in a torch-free room: " + ", ".join(bad)


def test_distributed_is_a_floor():
    for path in (PKG / "distributed").rglob("*.py"):
        for line, module, _ in _imports(ast.parse(path.read_text())):
            target = _target_room(module)
            assert target in (None, "distributed"), f"{path.relative_to(REPO)}:{line} imports {module}"


def test_functions_and_files_stay_readable():
    long_functions, long_files = [], []
    for path in _sources():
        text = path.read_text()
        if text.count("\n") > MAX_FILE_LINES:
            long_files.append(f"{path.relative_to(REPO)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {n} lines")
    assert not long_files, f"files over {MAX_FILE_LINES} lines: {long_files}"
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"


def test_fingerprint_fields_agree_between_schema_and_resume():
    from tunekit.config.schemas import RESUME_FINGERPRINT_FIELDS
    from tunekit.run.resume import FINGERPRINT_FIELDS

    assert tuple(RESUME_FINGERPRINT_FIELDS) == tuple(FINGERPRINT_FIELDS)
