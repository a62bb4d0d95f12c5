"""Sequential replay of a MOP-trained model: the proof that MOP is sequential SGD.

MOP records every committed visit; replaying a model's visits in one process, with the same
per-sub-epoch shuffles and the optimizer state carried from pass to pass, must give the same
weights the workers produced.  Used by the tests and by users who want to audit a result.
"""

from __future__ import annotations

from typing import Any

from .core.seeds import sub_epoch_seed
from .result import TrainedModel
from .storage import layout


def replay_model(model: TrainedModel) -> Any:
    """Retrain ``model`` from its initial state over its recorded (epoch, partition) order; return the keras.Model."""
    from .data import PreparedData, load_partition
    from .frameworks import keras as kf

    store = model._store
    prov = model.provenance
    spec = model.spec()
    prepared = PreparedData.from_dict(store.read_json(layout.data_manifest(prov["data_key"])))
    keras_model = kf.export_model(spec, spec.initial_state)
    data: dict[int, tuple[Any, Any]] = {}
    for epoch, partition in prov["visit_order"]:
        if partition not in data:
            part = load_partition(store, prepared, "train", partition)
            data[partition] = (
                kf.make_inputs(keras_model, part.features, list(model.feature_columns)),
                kf.make_targets(keras_model, part.labels, list(prepared.label_columns)),
            )
        x, y = data[partition]
        kf.train_sub_epoch(keras_model, x, y, batch_size=spec.batch_size,
                           seed=sub_epoch_seed(prov["seed"], prov["index"], epoch, partition))
    return keras_model
