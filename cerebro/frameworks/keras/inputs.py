"""Feature and label columns to a Keras model's inputs and targets.

The rules are the framework-neutral ones of :mod:`cerebro.frameworks.arrays`; this module
only reads the model's signature (input shapes and dtypes, number of outputs) from a
:class:`~.estimator.ModelSpec` or a built ``keras.Model``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import keras

from ...errors import CerebroError
from .. import arrays
from .config import model_input_specs, model_output_names
from .estimator import ModelSpec

__all__ = ["make_inputs", "make_targets"]


def _io_specs(spec_or_model: Any) -> tuple[list[tuple], list[str], int]:
    """(input shapes, numpy dtype names of the inputs, number of outputs)."""
    if isinstance(spec_or_model, ModelSpec):
        shapes = [tuple(s) for s in spec_or_model.input_shapes]
        dtypes = list(spec_or_model.input_dtypes)
        num_outputs = spec_or_model.num_outputs
    else:
        specs = model_input_specs(spec_or_model)
        if specs is None:
            raise CerebroError(
                f"The model {getattr(spec_or_model, 'name', '?')!r} has no known inputs; "
                "build it first or pass its ModelSpec."
            )
        shapes, dtypes = [s for s, _ in specs], [d for _, d in specs]
        num_outputs = len(model_output_names(spec_or_model))
    # Keras dtype names (e.g. "float32", tf dtypes' names) -> names numpy understands.
    dtypes = [keras.backend.standardize_dtype(d) if d else None for d in dtypes]
    return shapes, dtypes, num_outputs


def make_inputs(spec_or_model: Any, features: Mapping[str, Any], feature_columns: Sequence[str]) -> Any:
    """The model input(s) for a block of feature columns.

    A single-input model gets the listed columns concatenated in order (a scalar column is one
    value per row, an array column d values), reshaped to the model's input shape when the
    sizes match (64 -> (8, 8, 1)). A multi-input model gets one column per input, in order,
    each reshaped to its input. Values are float32 (integer/boolean inputs keep an integer
    dtype). Mismatches raise CerebroError naming the input shape and the column widths.
    """
    shapes, dtypes, _ = _io_specs(spec_or_model)
    return arrays.feature_arrays(shapes, dtypes, features, feature_columns)


def make_targets(spec_or_model: Any, labels: Mapping[str, Any], label_columns: Any) -> Any:
    """The target(s): one label column per model output, in order (an array for one output)."""
    _, _, num_outputs = _io_specs(spec_or_model)
    return arrays.target_arrays(num_outputs, labels, label_columns)
