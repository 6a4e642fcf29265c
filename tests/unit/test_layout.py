"""The package's layering: modules depend downward only, and no import (lazy ones included) forms a cycle.

Every import statement of ``mtrl/`` is read from the source (``ast``), wherever it stands: at the top of a module,
inside a function, or under ``TYPE_CHECKING``. A module that fits no layer fails the test, so a new module gets a
place in :data:`LAYERS` when it is added.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mtrl

ROOT = Path(mtrl.__file__).parent

LAYERS: list[tuple[str, ...]] = [
    ("mtrl.mto",),  # combiners, each beside its options dataclass
    ("mtrl.config",),  # the frozen config tree, composed of the combiners' option dataclasses
    ("mtrl.utils",),  # process-level helpers
    ("mtrl.envs", "mtrl.nets", "mtrl.buffers"),
    ("mtrl.agents",),
    ("mtrl.runs",),  # run directory, checkpoints, restoring an agent, TensorBoard output, a run's scalars
    ("mtrl.train", "mtrl.evaluate", "mtrl.video", "mtrl.single_task"),
    ("mtrl.compare", "mtrl.sweep", "mtrl.bench"),
    ("mtrl.cli", "mtrl.__main__"),
]
"""Bottom first. A module may import its own layer's modules and those below, never one above."""


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(ROOT.rglob("*.py")):
        name = ".".join(("mtrl", *f.relative_to(ROOT).with_suffix("").parts))
        out[name.removesuffix(".__init__")] = f
    return out


def _layer(module: str) -> int:
    for i, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return i
    raise AssertionError(f"{module} is in no layer of tests/unit/test_layout.py::LAYERS; give it one")


def _imports(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported mtrl module, line) for every import in ``path``; ``from a import b`` counts as ``a.b`` when that is a
    module. Relative imports are resolved against the module's package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != "mtrl" and name != module:
                found.append((name, node.lineno))
    return found


def _graph() -> dict[str, list[tuple[str, int]]]:
    modules = _modules()
    return {m: _imports(m, p, modules) for m, p in modules.items()}


def test_every_module_has_a_layer_and_imports_only_its_own_layer_or_below() -> None:
    wrong = []
    for module, imports in _graph().items():
        for target, line in imports:
            if _layer(target) > _layer(module):
                wrong.append(f"{module}:{line} imports {target}, a layer above it")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle() -> None:
    graph = {m: sorted({t for t, _ in imports}) for m, imports in _graph().items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_walker_sees_lazy_and_type_checking_imports() -> None:
    """The check is only as good as its reading: an import inside a function and one under TYPE_CHECKING count."""
    modules = _modules()
    lazy = {t for t, _ in _imports("mtrl.cli", modules["mtrl.cli"], modules)}
    assert "mtrl.train" in lazy  # imported inside cmd_train
    typed = {t for t, _ in _imports("mtrl.runs.tensorboard", modules["mtrl.runs.tensorboard"], modules)}
    assert "mtrl.envs.base" in typed  # imported under TYPE_CHECKING


def test_a_planted_upward_import_and_a_planted_cycle_are_found(tmp_path: Path, monkeypatch) -> None:
    """The two checks fail on the faults they exist for: a copy of the package with ``mtrl.nets`` importing
    ``mtrl.train`` (upward, and a cycle through train -> agents -> nets)."""
    import shutil

    copy = tmp_path / "mtrl"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    nets = copy / "nets.py"
    nets.write_text(nets.read_text() + "\n\ndef _planted():\n    from mtrl.train import train  # noqa: F401\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", copy)
    try:
        test_every_module_has_a_layer_and_imports_only_its_own_layer_or_below()
    except AssertionError as exc:
        assert "mtrl.nets" in str(exc) and "mtrl.train" in str(exc)
    else:
        raise AssertionError("the upward import was not found")
    try:
        test_no_import_cycle()
    except AssertionError as exc:
        assert "mtrl.nets -> mtrl.train" in str(exc) or "mtrl.train -> " in str(exc)
    else:
        raise AssertionError("the cycle was not found")
