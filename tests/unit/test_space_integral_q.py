"""q-dimensions with int ``low``, ``high`` and ``q`` give ints (a batch size, a layer width), in
every driver that makes values (random draws, hyperopt's TPE, PBT's perturbations) and through
the journal's JSON and a resume; any float among them gives floats."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cerebro.backends.base import WorkerSetup
from cerebro.backends.inline import InlineBackend
from cerebro.core.mop import MOPScheduler
from cerebro.drivers.grid import RandomDriver
from cerebro.drivers.pbt import PBTDriver, perturb
from cerebro.drivers.tpe import TPEDriver
from cerebro.experiment.engine import Engine
from cerebro.space import hp_qloguniform, hp_quniform, hp_uniform, sample
from test_engine import FakeRuntime, FakeStore, FakeWorkspace   # tests/unit is on sys.path

SPACE = {"batch_size": hp_quniform(16, 256, 16), "units": hp_qloguniform(8, 1024, 8),
         "dropout": hp_quniform(0, 0.5, 0.1), "lr": hp_uniform(1e-3, 1e-1)}


def assert_on_the_grid(config):
    assert type(config["batch_size"]) is int and config["batch_size"] % 16 == 0 and 16 <= config["batch_size"] <= 256
    assert type(config["units"]) is int and config["units"] % 8 == 0 and 8 <= config["units"] <= 1024
    assert type(config["dropout"]) is float and 0 <= config["dropout"] <= 0.5 + 1e-12
    assert np.isclose(config["dropout"] / 0.1, round(config["dropout"] / 0.1))


def test_int_bounds_and_step_give_ints_and_any_float_gives_floats():
    rng = np.random.default_rng(0)
    draws = [sample(SPACE, rng) for _ in range(300)]
    for config in draws:
        assert_on_the_grid(config)
    assert len({c["batch_size"] for c in draws}) == 16 and len({c["units"] for c in draws}) > 20
    for dim in (hp_quniform(16, 256, 16.0), hp_quniform(16.0, 256, 16), hp_qloguniform(1, 100.0, 5)):
        assert not dim.integral and all(type(dim.sample(rng)) is float for _ in range(20))
    numpy_ints = hp_quniform(np.int64(16), np.int32(64), np.int64(16))
    assert numpy_ints.integral and {type(numpy_ints.sample(rng)) for _ in range(20)} == {int}
    assert hp_quniform(16, 256, 16).snap(70.0) == 64 and type(hp_quniform(16, 256, 16).snap(300.0)) is int


def test_tpe_turns_hyperopts_floats_into_ints_through_its_json_state():
    driver = TPEDriver(24, 1, parallelism=1, n_startup_jobs=4)
    driver.bind(SPACE, np.random.default_rng(1), 2, "val_loss", "min")
    configs = []
    for i in range(12):   # past the random start-up: TPE models the losses
        (config,) = driver.suggest(0)
        assert_on_the_grid(config)
        configs.append(config)
        driver.on_model_added(f"m{i}", config)
        driver.on_epoch_end(f"m{i}", 1, {"val_loss": abs(config["batch_size"] - 64) + config["dropout"]})
    resumed = TPEDriver(24, 1, parallelism=1, n_startup_jobs=4)
    resumed.bind(SPACE, np.random.default_rng(1), 2, "val_loss", "min")
    resumed.set_state(json.loads(json.dumps(driver.get_state())))
    following, after_resume = driver.suggest(0), resumed.suggest(0)
    assert following == after_resume and len(after_resume) == 1
    assert_on_the_grid(after_resume[0])


def test_pbt_perturbs_an_int_dimension_to_an_int_on_its_grid():
    rng = np.random.default_rng(2)
    dim = hp_quniform(16, 256, 16)
    seen = {perturb(dim, 64, rng) for _ in range(100)}
    assert seen == {48, 80} and {type(v) for v in seen} == {int}   # 51.2 and 76.8, snapped
    assert {perturb(dim, 16, rng) for _ in range(50)} == {16, 32}  # 12.8 clipped to the bound: one step up
    driver = PBTDriver(4, 3)
    driver.bind(SPACE, np.random.default_rng(3), 2)
    for _ in range(50):
        assert_on_the_grid(driver.explore({"batch_size": 256, "units": 8, "dropout": 0.5, "lr": 0.01}))


def test_random_search_params_stay_ints_through_the_journal_and_a_resume():
    journal: list[dict] = []
    store = FakeStore()

    def run(records=None):
        driver = RandomDriver(3, 2)
        driver.bind(SPACE, np.random.default_rng(4), 2)
        sink = journal if records is None else []
        engine = Engine(backend=InlineBackend(2, runtime_factory=lambda setup, w: FakeRuntime(store, w)),
                        setup=WorkerSetup(store, {"key": "k"}), scheduler=MOPScheduler(2, mode="deterministic", seed=4),
                        driver=driver, workspace=FakeWorkspace(store, journal=sink), seed=4)
        if records is not None:
            engine.restore(records)
        return engine.run()

    full = run()
    assert len(full.models) == 3
    for model in full.models.values():
        assert_on_the_grid(model.params)
    as_json = [json.loads(json.dumps(r)) for r in journal]   # what the store holds and resume reads
    suggested = [c for r in as_json if r["type"] == "suggested" for c in r["configs"]]
    assert len(suggested) == 3 and all(type(c["batch_size"]) is int for c in suggested)
    for cut in (3, len(as_json) // 2, len(as_json) - 2):
        resumed = run(as_json[:cut])
        assert {m: r.params for m, r in resumed.models.items()} == {m: r.params for m, r in full.models.items()}
        for model in resumed.models.values():
            assert_on_the_grid(model.params)


@pytest.mark.parametrize("dim,only", [(hp_quniform(16, 20, 16), 16), (hp_qloguniform(3, 5, 4), 4)])
def test_a_grid_with_one_value_still_gives_an_int(dim, only):
    values = [dim.sample(np.random.default_rng(seed)) for seed in range(10)]
    assert values == [only] * 10 and {type(v) for v in values} == {int}
