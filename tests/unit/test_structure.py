"""Architecture facts, read from the source (no import): no import cycle between cerebro's
modules, no private name (``_x``) imported from another module, and the experiment layer
imports no framework at module level (so PyTorch can sit beside Keras)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "cerebro"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return out


MODS = _modules()


def _target(mod: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".")
    if not MODS[mod].name == "__init__.py":
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(mod: str, top_level_only: bool = False):
    """(target module, imported name or None) for every import in ``mod``."""
    tree = ast.parse(MODS[mod].read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            target = _target(mod, node)
            for a in node.names:
                yield target, a.name
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, None


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for mod in MODS:
        for target, name in _imports(mod):
            full = f"{target}.{name}" if name else target
            dest = full if full in MODS else target
            if dest in MODS and dest != mod and not MODS[dest].name == "__init__.py" and not MODS[mod].name == "__init__.py":
                edges.setdefault(mod, set()).add(dest)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_cerebro_modules():
    assert _cycles(_edges()) == []


def test_the_cycle_check_is_not_vacuous():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    # the real graph has the edges the check relies on
    assert "cerebro.core.state" in _edges()["cerebro.experiment.engine"]


def test_no_private_name_is_imported_from_another_module():
    private = []
    for mod in MODS:
        for target, name in _imports(mod):
            if target.startswith("cerebro") and name and name.startswith("_") and not name.startswith("__") \
                    and f"{target}.{name}" not in MODS:
                private.append(f"{mod} <- {target}.{name}")
    assert private == []


def test_the_experiment_layer_and_the_worker_import_no_heavy_library_at_module_level():
    heavy = ("keras", "tensorflow", "torch", "pyspark")
    for mod in ("cerebro.experiment.engine", "cerebro.experiment.workspace", "cerebro.experiment.tasks",
                "cerebro.experiment.journal", "cerebro.worker", "cerebro.selection", "cerebro.result"):
        for target, _ in _imports(mod, top_level_only=True):
            assert target.partition(".")[0] not in heavy, (mod, target)


#: The demo's models are user code: they are written in Keras and PyTorch on purpose.
#: TensorBoard's event files are written with tf.summary (TensorBoard's own writer), whatever
#: framework trained the models.  ``cerebro.keras`` is the original Cerebro's Keras-only module
#: (``SparkEstimator`` is a ``KerasEstimator`` taking the original's arguments): it is the Keras
#: adapter's public face, so it imports Keras and the adapter by definition.
ALLOWED = {"cerebro.cli": ("keras", "torch", "cerebro.frameworks"), "cerebro.tracking": ("tensorflow",),
           "cerebro.keras": ("keras", "cerebro.frameworks.keras")}


def _framework_imports(mod: str) -> list[str]:
    frameworks = ("keras", "tensorflow", "torch")
    adapters = ("cerebro.frameworks.keras", "cerebro.frameworks.torch")
    return [target for target, _ in _imports(mod)
            if target.partition(".")[0] in frameworks or target.startswith(adapters)]


def test_nothing_outside_frameworks_imports_keras_or_torch_or_an_adapter():
    # The worker, the workspace, replay, results and transform talk to the Framework interface
    # (cerebro.frameworks.base.get_framework) only, so a third framework needs no change there.
    offenders = {}
    for mod in MODS:
        if mod.startswith("cerebro.frameworks."):
            continue
        bad = [t for t in _framework_imports(mod) if not t.startswith(ALLOWED.get(mod, ()))]
        if bad:
            offenders[mod] = bad
    assert offenders == {}


def test_the_framework_import_check_is_not_vacuous():
    assert "keras" in _framework_imports("cerebro.frameworks.keras") or any(
        "keras" in _framework_imports(m) for m in MODS if m.startswith("cerebro.frameworks.keras."))
    assert any(t.startswith("cerebro.frameworks") or t == "keras" for t in _framework_imports("cerebro.cli"))
