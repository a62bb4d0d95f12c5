"""The one set of decision rules (core/actions.py), enforced by the engine and the contract suite alike."""

from __future__ import annotations

import pytest

from cerebro.core.actions import ActionError, Continue, Exploit, Pause, Stop, check_actions, normalise
from cerebro.drivers.grid import GridDriver
from cerebro.errors import CerebroError
from test_engine import run_with

STATUSES = {"m0": "running", "m1": "paused", "m2": "completed", "m3": "failed"}
EPOCHS = {"m0": 1, "m1": 1, "m2": 2, "m3": 1}


def check(actions, reporting="m0", names=("a",)):
    check_actions(normalise(actions, reporting), reporting, STATUSES, EPOCHS, names)


def test_legal_decisions_pass():
    check(Continue())
    check([Stop("finished"), Continue("m1")])
    check([Exploit("m0", "m1", {"a": 1}), Continue()])
    check([Exploit("m1", "m2", {"a": 1}), Pause("m1"), Stop("early")])


@pytest.mark.parametrize("actions, reporting, match", [
    ("continue", "m0", "is not a Continue"),
    (Continue(), None, "must name its model"),
    (Continue("nope"), "m0", "unknown model"),
    (Stop("x", "m2"), "m0", "which is completed"),
    ([Continue(), Pause()], "m0", "named more than once"),
    ([Exploit("m0", "m1", {"a": 1})], "m0", "not followed by Continue/Pause"),
    ([Exploit("m0", "m1", {"a": 1}), Stop("x")], "m0", "followed by Continue or Pause, not Stop"),
    ([Exploit("m0", "m3", {"a": 1}), Continue()], "m0", "unknown, failed or has no epoch"),
    ([Exploit("m0", "m1", {"b": 1}), Continue()], "m0", "search space has"),
    ([Exploit("m0", "m1", {"a": 1}), Continue(), Continue()], "m0", "named more than once"),
])
def test_illegal_decisions_are_refused_with_the_rule_they_break(actions, reporting, match):
    with pytest.raises(ActionError, match=match):
        check(actions, reporting)


class LonelyExploit(GridDriver):
    """Exploits without saying whether the target continues: the engine refuses it."""

    def __init__(self):
        super().__init__(2)

    def on_epoch_end(self, model_id, epoch, metrics):
        if model_id == "model_001":
            return [Exploit("model_001", "model_000", {"a": 1})]
        return Pause() if epoch == 1 else Stop("finished")


def test_the_engine_enforces_the_same_rules():
    engine, _ = run_with(LonelyExploit())
    with pytest.raises(CerebroError, match="search driver action refused: .*not followed by Continue/Pause"):
        engine.run()
