from __future__ import annotations

import math

import numpy as np
import pytest

from cerebro.core.metrics import infer_mode
from cerebro.space import (
    grid, hp_choice, hp_loguniform, hp_qloguniform, hp_quniform, hp_randint, hp_uniform, sample, validate_space,
)


@pytest.mark.parametrize("make", [
    lambda: hp_uniform(1.0, 1.0),
    lambda: hp_uniform(2.0, 1.0),
    lambda: hp_loguniform(0.0, 1.0),
    lambda: hp_loguniform(-1e-3, 1e-1),
    lambda: hp_loguniform(1e-1, 1e-4),
    lambda: hp_quniform(0, 10, 0),
    lambda: hp_qloguniform(0, 10, 1),
    lambda: hp_randint(5, 5),
    lambda: hp_choice([]),
    lambda: hp_uniform(0.0, float("inf")),
    lambda: hp_quniform(1, 2, 3),
])
def test_bad_ranges_raise_value_error_at_construction(make):
    with pytest.raises(ValueError):
        make()


def test_loguniform_bounds_are_values_not_exponents():
    rng = np.random.default_rng(0)
    draws = [hp_loguniform(1e-4, 1e-1).sample(rng) for _ in range(2000)]
    assert 1e-4 <= min(draws) and max(draws) <= 1e-1
    logs = np.log10(draws)
    # uniform in log space: about a third of the mass in each decade
    assert 0.28 < np.mean(logs < -3) < 0.39
    assert 0.28 < np.mean(logs > -2) < 0.39


def test_quantised_and_integer_dimensions():
    rng = np.random.default_rng(1)
    for _ in range(200):
        q = hp_quniform(0, 10, 2.5).sample(rng)
        assert q in (0.0, 2.5, 5.0, 7.5, 10.0)
        ql = hp_qloguniform(1, 100, 5).sample(rng)
        assert 1 <= ql <= 100 and math.isclose(ql / 5, round(ql / 5))
        r = hp_randint(3, 6).sample(rng)
        assert r in (3, 4, 5) and isinstance(r, int)


def test_grid_is_the_product_in_sorted_key_order():
    space = {"b": hp_choice([1, 2]), "a": hp_choice(["x", "y", "z"])}
    configs = grid(space)
    assert len(configs) == 6
    assert configs[0] == {"a": "x", "b": 1} and configs[1] == {"a": "x", "b": 2} and configs[-1] == {"a": "z", "b": 2}


def test_grid_search_refuses_continuous_dimensions_and_empty_spaces():
    with pytest.raises(ValueError, match="'lr'.*hp_choice|hp_choice.*'lr'"):
        validate_space({"lr": hp_uniform(0, 1)}, owner="GridSearch", grid_only=True)
    with pytest.raises(ValueError, match="empty"):
        validate_space({}, owner="GridSearch")
    with pytest.raises(TypeError, match="'lr'"):
        validate_space({"lr": [0.1, 0.2]}, owner="GridSearch")


def test_sampling_is_seeded_and_dimensions_independent():
    space = {"x": hp_uniform(0, 1), "y": hp_uniform(0, 1)}
    a = [sample(space, np.random.default_rng(5)) for _ in range(3)]
    b = [sample(space, np.random.default_rng(5)) for _ in range(3)]
    assert a == b
    rng = np.random.default_rng(9)
    pts = np.array([[c["x"], c["y"]] for c in (sample(space, rng) for _ in range(500))])
    assert abs(np.corrcoef(pts.T)[0, 1]) < 0.15


@pytest.mark.parametrize("metric,mode", [
    ("loss", "min"), ("val_loss", "min"), ("accuracy", "max"), ("acc", "max"), ("val_accuracy", "max"),
    ("sparse_categorical_accuracy", "max"), ("auc", "max"), ("precision", "max"), ("recall", "max"),
    ("f1_score", "max"), ("r2_score", "max"), ("mse", "min"), ("mean_absolute_error", "min"),
    ("sparse_categorical_crossentropy", "min"), ("error_rate", "min"), ("mystery", None),
])
def test_metric_direction(metric, mode):
    assert infer_mode(metric) == mode
