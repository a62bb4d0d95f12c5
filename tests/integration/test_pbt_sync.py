"""Synchronous PBT end to end: on digits, with real worker processes, the member that is worst
at an interval epoch is the one exploited there, whatever order MOP's waves report in.

The issue this guards: ranking a member that just finished epoch e against the others' latest
scores (some still from epoch e - 1) let a weak member that reported first escape.  Here every
(seed, scheduler) run checks, from the result's history (each member's validation loss and
learning rate per epoch) and the journal's exploit entries, that at each interval epoch exactly
the worst member there copied the best one, and continued with the best one's learning rate
times 0.8 or 1.2.
"""

from __future__ import annotations

import pytest

import cerebro
from cerebro import PBTSearch, hp_choice, hp_loguniform
from cerebro.experiment.journal import read_journal
from cerebro.frameworks.keras import limit_threads

pytestmark = pytest.mark.slow

limit_threads(1)

POPULATION, EPOCHS = 4, 4
LOW, HIGH = 1e-5, 5e-2
# log-uniform over 3.7 decades: a member near 1e-5 barely learns in 4 epochs, one near 1e-2 is
# at ~95% accuracy after one, so members differ clearly
SPACE = {"lr": hp_loguniform(LOW, HIGH), "width": hp_choice([16])}


def make_estimator(params):
    import keras

    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(int(params["width"]), activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    return cerebro.KerasEstimator(model, keras.optimizers.Adam(params["lr"]), "sparse_categorical_crossentropy",
                                  metrics=["accuracy"], batch_size=32)


def exploit_entries(store, name):
    """Every exploit the engine applied, from epoch records (released by the last report) and
    driver records (released by a failure)."""
    return [a for rec in read_journal(store, name) if rec["type"] in ("epoch", "driver") for a in rec["actions"]
            if a["action"] == "exploit"]


@pytest.mark.parametrize("scheduler", ["dynamic", "deterministic"])
@pytest.mark.parametrize("seed", range(5))   # ids seed-scheduler, run seed by seed
def test_the_worst_member_at_each_interval_is_exploited(backend, store, df, seed, scheduler):
    name = f"pbt-sync-{scheduler}-{seed}"
    r = PBTSearch(backend, store, make_estimator, SPACE, population_size=POPULATION, num_epochs=EPOCHS,
                  perturbation_interval=1, quantile_fraction=0.25, evaluation_metric="loss", validation=0.15,
                  seed=seed, scheduler=scheduler, experiment_name=name, verbose=0, tensorboard=False).fit(df)
    assert r.failures == {} and len(r.models) == POPULATION
    assert all(m.status == "completed" for m in r.models.values())
    h = r.history.set_index(["model_id", "epoch"]).sort_index()
    assert len(h) == POPULATION * EPOCHS
    members = sorted(r.models)   # model_000 ... : the order they were added (ties go to the earlier)
    exploits = exploit_entries(store, name)
    # one exploit per interval epoch before the last (4 members, fraction 0.25: one bottom, one top)
    assert sorted(e["epoch"] for e in exploits) == list(range(1, EPOCHS)), exploits
    for e in exploits:
        epoch = e["epoch"]
        loss = {m: float(h.loc[(m, epoch), "val_loss"]) for m in members}
        worst = max(members, key=lambda m: (loss[m], members.index(m)))
        best = min(members, key=lambda m: (loss[m], members.index(m)))
        assert e["model_id"] == worst, (epoch, loss, e["model_id"])
        assert e["source"] == best, (epoch, loss, e["source"])
        # the worst member trained the next epoch with the best one's learning rate, perturbed
        source_lr = float(h.loc[(best, epoch), "param_lr"])
        assert float(h.loc[(worst, epoch), "param_lr"]) == pytest.approx(e["old_params"]["lr"])
        assert float(h.loc[(worst, epoch + 1), "param_lr"]) == pytest.approx(e["params"]["lr"])
        expected = [min(max(source_lr * f, LOW), HIGH) for f in (0.8, 1.2)]
        assert any(e["params"]["lr"] == pytest.approx(x) for x in expected), (e["params"], source_lr)
    # the member worst at epoch 1 (the case: no member may escape there) was exploited at epoch 1
    loss1 = {m: float(h.loc[(m, 1), "val_loss"]) for m in members}
    worst1 = max(members, key=lambda m: (loss1[m], members.index(m)))
    assert [e["model_id"] for e in exploits if e["epoch"] == 1] == [worst1]
