"""A driver program for the search resume tests, and the searches the reproducibility tests share:
a small deterministic TPE, Hyperband, ASHA or PBT search on digits, optionally SIGKILLing itself
after the N-th journal record of a kind, resumed with ``fit(df, resume=True)``; the history and
every model's final weights are saved.

Usage: python resume_search.py KIND STORE NAME OUT [--resume] [--kill-on TYPE:N]
  KIND    = tpe | hyperband | asha | pbt
  TYPE:N  = die right after the N-th journal record of that type ("epoch", "visit", ...; or
            "train"/"eval" for the N-th ok visit of that kind), as resume_experiment.py does.
Writes OUT.npz (weights: "<model_id>/<i>"), OUT.history.pkl (the history DataFrame, exact) and
OUT.json (each model's status and final params, the best model).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd

import cerebro
from cerebro import ASHASearch, HyperbandSearch, LocalBackend, LocalStore, PBTSearch, TPESearch, hp_choice, hp_loguniform

KINDS = ("tpe", "hyperband", "asha", "pbt")
SEED = 11

#: Learning rates over two decades, so that configurations really differ in score (and the
#: adaptive searches' decisions depend on them); one fixed tiny width, so PBT can copy weights.
SPACE = {"lr": hp_loguniform(3e-4, 3e-2), "width": hp_choice([16])}


def gen(params):
    import keras

    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(int(params["width"]), activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    return cerebro.KerasEstimator(model, keras.optimizers.Adam(params["lr"]), "sparse_categorical_crossentropy",
                                  metrics=["accuracy"], batch_size=32)


def make_search(kind: str, backend, store, name: str):
    """The deterministic search of ``kind``: the same call every time (only the name differs)."""
    common = dict(evaluation_metric="accuracy", scheduler="deterministic", seed=SEED, experiment_name=name,
                  verbose=0, tensorboard=False)
    if kind == "tpe":
        # 5 configurations, 2 at a time, 2 random start-up trials: the last 3 suggestions are
        # TPE's, modelled on the scores of the configurations that finished before them.
        return TPESearch(backend, store, gen, SPACE, num_models=5, num_epochs=2, n_startup_jobs=2, **common)
    if kind == "hyperband":
        return HyperbandSearch(backend, store, gen, SPACE, max_epochs=3, eta=3, **common)
    if kind == "asha":
        # rungs at 1, 2 and 4 epochs; half of each rung goes on
        return ASHASearch(backend, store, gen, SPACE, num_models=6, max_epochs=4, grace_period=1,
                          reduction_factor=2, **common)
    if kind == "pbt":
        return PBTSearch(backend, store, gen, SPACE, population_size=4, num_epochs=3, perturbation_interval=1,
                         quantile_fraction=0.25, **common)
    raise ValueError(f"unknown search kind {kind!r}; one of {KINDS}")


def final_weights(result) -> dict[str, np.ndarray]:
    """``{"<model_id>/<i>": array}`` for every model that has a checkpoint (all but failed ones)."""
    arrays = {}
    for mid, model in sorted(result.models.items()):
        if model.status == "failed":
            continue
        for i, w in enumerate(model.keras().get_weights()):
            arrays[f"{mid}/{i}"] = np.asarray(w)
    return arrays


def summary(result) -> dict:
    """Each model's status and final params, and the best model (as JSON gives them back)."""
    out = {"best_model_id": result.best_model_id,
           "models": {mid: {"status": m.status, "params": m.params} for mid, m in sorted(result.models.items())}}
    return json.loads(json.dumps(out, sort_keys=True))


def snapshot(result) -> dict:
    """What two runs of the same call must share: summary, history and final weights."""
    return {"summary": summary(result), "history": result.history, "weights": final_weights(result)}


def save(result, out: str) -> None:
    np.savez(out + ".npz", **final_weights(result))
    result.history.to_pickle(out + ".history.pkl")   # exact (no float formatting on the way)
    with open(out + ".json", "w") as fh:
        json.dump(summary(result), fh, indent=1, sort_keys=True)


def load(out: str) -> dict:
    """The :func:`snapshot` of the run that :func:`save` wrote to ``out``."""
    with open(out + ".json") as fh:
        summ = json.load(fh)
    with np.load(out + ".npz") as z:
        weights = {k: z[k] for k in z.files}
    return {"summary": summ, "history": pd.read_pickle(out + ".history.pkl"), "weights": weights}


# ---------------------------------------------------------------------- comparisons (the tests')


def differing_rows(a: pd.DataFrame, b: pd.DataFrame) -> str:
    """The (model, epoch) rows that differ between two histories, side by side."""
    key = ["model_id", "epoch"]
    merged = a.merge(b, on=key, how="outer", suffixes=("_a", "_b"), indicator=True)
    bad = merged["_merge"] != "both"
    for c in a.columns:
        if c not in key and f"{c}_a" in merged and f"{c}_b" in merged:
            x, y = merged[f"{c}_a"], merged[f"{c}_b"]
            bad |= ~((x == y) | (x.isna() & y.isna()))
    with pd.option_context("display.width", 250, "display.max_columns", 40, "display.precision", 17):
        return merged[bad].to_string() if bad.any() else "(no row differs)"


def assert_same_run(a: dict, b: dict) -> None:
    """Two :func:`snapshot` s are of the same run: same models (ids, statuses, final params), same
    best model, the same history row for row in every column (each epoch's parameters included),
    exactly, and bit-identical final weights."""
    ha, hb = a["history"], b["history"]
    assert a["summary"] == b["summary"], \
        f"models differ:\n{a['summary']}\n{b['summary']}\nhistory rows that differ:\n{differing_rows(ha, hb)}"
    assert list(ha.columns) == list(hb.columns)
    assert len(ha) == len(hb), differing_rows(ha, hb)
    pd.testing.assert_frame_equal(ha, hb, check_exact=True, obj=f"history (rows that differ:\n{differing_rows(ha, hb)}\n)")
    wa, wb = a["weights"], b["weights"]
    assert sorted(wa) == sorted(wb)
    for key in wa:
        np.testing.assert_array_equal(wa[key], wb[key], err_msg=f"final weights {key} differ")


def assert_decisions_mattered(kind: str, result, journal: list[dict]) -> None:
    """The search's adaptive decisions did something, so that two equal runs are not equal vacuously."""
    r = result
    assert r.failures == {}
    ok = r.visits[r.visits.status == "ok"].groupby(["model_id", "epoch", "partition"]).size()
    assert set(ok) == {1} and len(ok) == 2 * len(r.history)   # every model-epoch once on each partition
    epochs = r.history.groupby("model_id").epoch.max()
    if kind == "tpe":
        assert len(r.models) == 5 and len(r.history) == 5 * 2
        assert len({m.params["lr"] for m in r.models.values()}) == 5   # five distinct configurations
    elif kind in ("hyperband", "asha"):
        top = 3 if kind == "hyperband" else 4
        if kind == "asha":
            assert len(r.models) == 6
        stopped = [m for m, t in r.models.items() if t.status == "stopped"]
        assert stopped and all(epochs[m] < top for m in stopped), epochs   # some cut short ...
        assert (epochs == top).any() and (epochs < top).any(), epochs     # ... some trained to the end
        assert len(r.history) < len(r.models) * top
    elif kind == "pbt":
        exploits = [a for rec in journal if rec["type"] == "epoch" for a in rec["actions"] if a["action"] == "exploit"]
        assert exploits, "PBT never exploited"
        assert (epochs == 3).all() and len(r.models) == 4
        # a learning rate changed mid-run: the per-epoch parameters are part of what is compared
        assert (r.history.groupby("model_id").param_lr.nunique() > 1).any()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=KINDS)
    ap.add_argument("store")
    ap.add_argument("name")
    ap.add_argument("out")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--kill-on")
    args = ap.parse_args()
    if args.kill_on:
        from resume_experiment import install_kill_switch   # the same mechanism as the grid resume tests

        kind, n = args.kill_on.split(":")
        install_kill_switch(kind, int(n))
    from cerebro.datasets import digits_frame
    from cerebro.frameworks.keras import limit_threads

    limit_threads(1)
    # Imported by module name (not __main__), as resume_experiment.py does, so that the search
    # names its estimator_gen_fn the same way whoever runs it.
    from resume_search import make_search as importable

    with LocalBackend(2) as backend:
        result = importable(args.kind, backend, LocalStore(args.store), args.name).fit(digits_frame(), resume=args.resume)
    save(result, args.out)


if __name__ == "__main__":
    main()
