"""docs/search_drivers.md stays true: its example driver passes the driver contract.

The code is taken from the documentation itself (the ```python block that starts with
``# example: driver``), so the page cannot drift from the SearchDriver interface.  The run
block (``# example: run``) needs Keras and worker processes; here its ModelSelection subclass
is built and its driver checked, and the whole block must compile.  Fast: no TensorFlow.
"""

from __future__ import annotations

import ast
import json
import re
import sys
import types
from pathlib import Path

import pytest

from cerebro import hp_choice, hp_loguniform, hp_quniform
from cerebro.drivers.base import SearchDriver
from cerebro.drivers.early_stopping import EarlyStoppingDriver, MedianStopping
from cerebro.selection import ModelSelection
from cerebro.testing import check_driver_contract

DOC = Path(__file__).resolve().parents[2] / "docs" / "search_drivers.md"
SPACE = {"lr": hp_loguniform(1e-4, 1e-1), "width": hp_quniform(16, 128, 16), "batch_size": hp_choice([16, 64])}


def _blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


def _block(marker: str) -> str:
    found = [b for b in _blocks() if b.lstrip().startswith(marker)]
    assert len(found) == 1, f"docs/search_drivers.md needs exactly one ```python block starting with {marker!r}"
    return found[0]


@pytest.fixture(scope="module")
def example() -> types.ModuleType:
    """The driver block, executed as a module of its own."""
    module = types.ModuleType("docs_search_drivers_example")
    sys.modules[module.__name__] = module
    try:
        exec(compile(_block("# example: driver"), str(DOC), "exec"), module.__dict__)
        yield module
    finally:
        sys.modules.pop(module.__name__, None)


def _actions(report) -> list[list]:
    """Every action in the contract run's log (epoch ends and failure notices), as JSON-able lists."""
    out = []
    for entry in report.log:
        answer = {"epoch": 3, "failed": 3, "creation_failed": 2}.get(entry[0])
        if answer is None or not entry[answer]:
            continue
        decision = entry[answer]
        out.extend(decision if isinstance(decision[0], list) else [decision])
    return out


def _driver(example, *args, **kwargs):
    return lambda: example.ReviewedRandomDriver(*args, **kwargs)


def test_the_example_defines_a_search_driver(example):
    assert issubclass(example.ReviewedRandomDriver, SearchDriver)
    with pytest.raises(ValueError):
        example.ReviewedRandomDriver(4, 3, review_at=3)


@pytest.mark.parametrize("metric,mode", [("val_loss", "min"), ("val_accuracy", "max")])
@pytest.mark.parametrize("num_models,num_epochs,review_at,patience", [(12, 6, 2, 2), (7, 4, 1, 1), (1, 3, 2, 2)])
def test_the_example_driver_passes_the_contract(example, metric, mode, num_models, num_epochs, review_at, patience):
    report = check_driver_contract(_driver(example, num_models, num_epochs, review_at, patience), SPACE,
                                   metric=metric, mode=mode)
    assert report.num_suggested == num_models
    reasons = [a[2] for a in _actions(report) if a[0] == "Stop"]
    if num_models >= 7:
        # the review happened: some models stopped there, the others went on to the end
        assert any(r == "not in the better half at the review" for r in reasons)
        assert any(m["epochs"] > review_at for m in report.models.values())
        assert report.early_stops > 0


def test_the_example_driver_pauses_until_the_review(example):
    report = check_driver_contract(_driver(example, 12, 6, 2, 2), SPACE, failures=False, diverging=False)
    paused = [entry for entry in report.log if entry[0] == "epoch" and entry[3] == ["Pause", None]]
    assert paused, "no model paused at the review"
    assert all(entry[2] == 2 for entry in paused)
    assert max(m["epochs"] for m in report.models.values()) == 6


def test_the_example_driver_resumes_from_a_journaled_state(example):
    # the journal writes the state with sorted keys: the driver must not depend on key order
    class Journaled(example.ReviewedRandomDriver):
        def set_state(self, state):
            super().set_state(json.loads(json.dumps(state, sort_keys=True)))

    check_driver_contract(lambda: Journaled(12, 6, review_at=2, patience=2), SPACE)


def test_the_example_driver_under_an_early_stopping_wrapper(example):
    # the optional on_model_stopped hook keeps the review from waiting for a stopped model
    report = check_driver_contract(
        lambda: EarlyStoppingDriver(example.ReviewedRandomDriver(12, 6, review_at=3, patience=3),
                                    MedianStopping(grace_epochs=1, min_models=2)), SPACE)
    assert report.early_stops > 0


def test_the_docs_contract_test_snippet_runs(example):
    snippet = next(b for b in _blocks() if "check_driver_contract(" in b and "def test_" in b)
    namespace = dict(example.__dict__)
    exec(compile(snippet, str(DOC), "exec"), namespace)
    tests = [v for k, v in namespace.items() if k.startswith("test_") and callable(v)]
    assert tests
    for test in tests:
        test()


def test_the_run_block_plugs_the_driver_into_model_selection(example):
    source = _block("# example: run")
    tree = ast.parse(source)   # the whole block compiles
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    assert [c.name for c in classes] == ["ReviewedRandomSearch"]
    # Build the subclass alone (the rest of the block imports Keras) and check its driver.
    namespace = {**example.__dict__, "ModelSelection": ModelSelection}
    exec(compile(ast.Module(body=classes, type_ignores=[]), str(DOC), "exec"), namespace)
    search_cls = namespace["ReviewedRandomSearch"]
    assert issubclass(search_cls, ModelSelection)
    search = search_cls(None, "/nonexistent", lambda p: None, SPACE, num_models=5, num_epochs=4, review_at=2,
                        patience=1, evaluation_metric="accuracy", verbose=0)
    assert search.num_epochs == 4 and search.evaluation_metric == "accuracy"
    driver = search._make_driver()
    assert isinstance(driver, example.ReviewedRandomDriver) and driver is not search._make_driver()
    assert (driver.num_models, driver.num_epochs, driver.review_at, driver.patience) == (5, 4, 2, 1)
    check_driver_contract(search._make_driver, SPACE, metric="val_accuracy", mode="max")
    assert "search.fit(" in source and "_make_driver" in source
