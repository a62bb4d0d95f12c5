"""Sequential replay of a MOP-trained model: the proof that MOP is sequential SGD.

MOP records every committed visit; replaying a model's visits in one process, with the same
per-sub-epoch shuffles and the optimizer state carried from pass to pass, must give the same
weights the workers produced.  Used by the tests and by users who want to audit a result.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from .core.seeds import sub_epoch_seed
from .result import TrainedModel
from .storage import layout


def replay_model(model: TrainedModel) -> Any:
    """Retrain ``model`` from its initial state over its recorded (epoch, partition) order, in
    this process; return the framework's model (a ``keras.Model`` or a ``torch.nn.Module``).

    Each pass uses the sub-epoch seed the workers used, and a per-epoch learning-rate schedule
    steps after the model's last partition of each epoch, as on the workers.
    """
    from .data import PreparedData, load_partition
    from .frameworks.base import framework_of

    store = model._store
    prov = model.provenance
    spec = model.spec()
    fw = framework_of(spec)
    prepared = PreparedData.from_dict(store.read_json(layout.data_manifest(prov["data_key"])))
    trained = fw.export(spec, spec.initial_state)
    order = [tuple(v) for v in prov["visit_order"]]
    per_epoch = Counter(epoch for epoch, _ in order)
    done: Counter = Counter()
    data: dict[int, tuple[Any, Any]] = {}
    for epoch, partition in order:
        if partition not in data:
            part = load_partition(store, prepared, "train", partition)
            data[partition] = (
                fw.make_inputs(spec, part.features, list(model.feature_columns)),
                fw.make_targets(spec, part.labels, list(prepared.label_columns)),
            )
        x, y = data[partition]
        done[epoch] += 1
        fw.train_sub_epoch(trained, x, y, batch_size=spec.batch_size,
                           seed=sub_epoch_seed(prov["seed"], prov["index"], epoch, partition),
                           epoch_end=done[epoch] == per_epoch[epoch] == prepared.num_partitions)
    return fw.user_model(trained)
