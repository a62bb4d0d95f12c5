"""Distributed inference: :meth:`TrainedModel.transform` on a Spark DataFrame, computed in executors.

The model travels to the executors as bytes (its pickled spec and its state,
the same checkpoint format as between MOP workers) in a broadcast variable.
Each Python worker builds the model (Keras or torch) once, keyed by the bytes'
sha256, keeps it for later batches and tasks (``spark.python.worker.reuse``),
and limits the framework to one thread: Spark runs one task per core.

The feature columns reach Python through an Arrow UDF (a pandas UDF on
pyspark < 4.1), so the other columns stay in the JVM and no row goes through
the driver. The result is ``df`` with one ``<label>__output`` column per model
output (replacing a column of that name, as the pandas path does): ``double``
for a scalar output (shape ``(n,)`` or ``(n, 1)``), ``array<float>`` for a
vector output (higher ranks are flattened per row). The values are the pandas
path's (``model.predict``), up to float rounding of the batch split.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from .errors import CerebroError

__all__ = ["transform_spark_dataframe"]

logger = logging.getLogger(__name__)

#: Rows per predict call inside an Arrow batch (as the pandas path's ``predict(batch_size=1024)``).
_PREDICT_ROWS = 1024
#: Compiled models kept per Python worker (least recently used beyond that are dropped).
_MAX_CACHED_MODELS = 4
#: Use Spark's Arrow UDFs when this pyspark has them (4.1+); tests switch it off to cover the fallback.
_USE_ARROW_UDF = True

# Executor side: checksum -> (framework, spec, built model), per Python worker process.
_MODELS: OrderedDict[str, Any] = OrderedDict()


@dataclass(frozen=True)
class _Job:
    """What an executor needs to predict: picklable, small (the model bytes travel by broadcast)."""

    columns: tuple[str, ...]  # the model's feature columns, in order
    widths: tuple[int, ...]  # values per row of each output (1: a scalar output)
    checksum: str  # sha256 of the model bytes
    payload: Any  # a pyspark Broadcast of the bytes, or the bytes themselves (Spark Connect)


def _payload_bytes(payload: Any) -> bytes:
    return payload if isinstance(payload, (bytes, bytearray)) else payload.value


def _model(job: _Job) -> Any:
    """The compiled model of ``job`` in this process: built once per checksum, then cached."""
    model = _MODELS.get(job.checksum)
    if model is not None:
        _MODELS.move_to_end(job.checksum)
        return model
    from .frameworks.base import framework_of

    data = _payload_bytes(job.payload)
    actual = hashlib.sha256(data).hexdigest()
    if actual != job.checksum:
        raise CerebroError(f"model bytes for transform() are corrupted: sha256 {actual[:16]}... != {job.checksum[:16]}...")
    spec, state = pickle.loads(data)
    fw = framework_of(spec)
    fw.limit_threads(1)
    model = (fw, spec, fw.export(spec, state))
    _MODELS[job.checksum] = model
    while len(_MODELS) > _MAX_CACHED_MODELS:
        _MODELS.popitem(last=False)
    logger.info("built model %s for transform() in this Spark worker", job.checksum[:12])
    return model


def _feature_values(arr: Any, name: str) -> np.ndarray:
    """An Arrow column of one batch as float32 numpy: (n,) for numbers, (n, d) for arrays."""
    import pyarrow.compute as pc

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type)):
        return arr.to_numpy(zero_copy_only=False).astype(np.float32)
    if arr.null_count:
        raise ValueError(f"feature column {name!r} has {arr.null_count} null rows; transform() needs a value in every row")
    lengths = pc.min_max(pc.list_value_length(arr))
    lo, hi = lengths["min"].as_py(), lengths["max"].as_py()
    if n and lo != hi:
        raise ValueError(
            f"feature column {name!r} holds arrays of different lengths ({lo} to {hi}); every row must have the same length"
        )
    flat = arr.flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32).reshape(n, int(lo or 0) if n else -1)


def _predict(arrays: Sequence[Any], job: _Job) -> Any:
    """The model outputs of one batch of feature columns, as an Arrow struct array ``o0, o1, ...``."""
    n = len(arrays[0])
    fields = []
    for i, width in enumerate(job.widths):
        fields.append(pa.field(f"o{i}", pa.float64() if width == 1 else pa.list_(pa.float32())))
    if n == 0:
        return pa.array([], type=pa.struct(fields))
    fw, spec, model = _model(job)
    features = {name: _feature_values(arr, name) for name, arr in zip(job.columns, arrays)}
    x = fw.make_inputs(spec, features, list(job.columns))
    chunks = []
    for start in range(0, n, _PREDICT_ROWS):
        part = [a[start : start + _PREDICT_ROWS] for a in x] if isinstance(x, list) else x[start : start + _PREDICT_ROWS]
        chunks.append(fw.predict(model, part, batch_size=_PREDICT_ROWS))
    outputs = [np.concatenate([c[i] for c in chunks]) for i in range(len(job.widths))]
    columns = []
    for values, width in zip(outputs, job.widths):
        if width == 1:
            columns.append(pa.array(values.reshape(n).astype(np.float64)))
        else:
            flat = np.ascontiguousarray(values.reshape(n, -1), dtype=np.float32)
            offsets = pa.array(np.arange(0, n * flat.shape[1] + 1, flat.shape[1], dtype=np.int32))
            columns.append(pa.ListArray.from_arrays(offsets, pa.array(flat.reshape(-1))))
    return pa.StructArray.from_arrays(columns, fields=fields)


def _predict_pandas(series: Sequence[Any], job: _Job) -> Any:
    """The pandas-UDF form of :func:`_predict` (pyspark < 4.1): Series in, a DataFrame of outputs out."""
    import pandas as pd

    struct = _predict([pa.array(s, from_pandas=True) for s in series], job)
    return pd.DataFrame({f"o{i}": struct.field(i).to_pandas() for i in range(len(job.widths))})


# ---------------------------------------------------------------------------- driver side


def _check_features(df: Any, columns: Sequence[str]) -> list[Any]:
    """The feature columns as Spark expressions for the UDF (vectors as arrays); ValueError for bad ones."""
    from pyspark.sql import types as T

    from .data.spark import is_vector, numeric_type, quoted, type_label, vector_as_array

    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"feature column(s) {missing} not found; the DataFrame has columns {list(df.columns)}")
    fields = {f.name: f.dataType for f in df.schema.fields}
    exprs = []
    for name in columns:
        dt = fields[name]
        if is_vector(dt):
            exprs.append(vector_as_array(quoted(name)))
        elif numeric_type(dt)[0] or (isinstance(dt, T.ArrayType) and numeric_type(dt.elementType)[0]):
            exprs.append(quoted(name))
        else:
            raise ValueError(
                f"feature column {name!r} must hold numbers, fixed-length numeric arrays or Spark ML vectors; "
                f"it has type {type_label(dt)}"
            )
    return exprs


def _share(spark: Any, data: bytes) -> Any:
    """A broadcast of ``data`` (classic Spark), or the bytes themselves where there is no SparkContext."""
    try:
        sc = spark.sparkContext
    except Exception:  # noqa: BLE001 - Spark Connect
        return data
    return sc.broadcast(data)


def _udf(job: _Job, return_type: Any) -> Any:
    from pyspark.sql import functions as F

    if _USE_ARROW_UDF and hasattr(F, "arrow_udf"):
        def predict_arrow(*arrays: pa.Array) -> pa.Array:  # the hints tell Spark the UDF type
            return _predict(arrays, job)

        return F.arrow_udf(predict_arrow, return_type)
    import warnings

    from pyspark.sql.functions import PandasUDFType

    def predict_pandas(*series: Any) -> Any:
        return _predict_pandas(series, job)

    with warnings.catch_warnings():
        # Type hints cannot express a varargs pandas UDF; the explicit (older) form is intended.
        warnings.simplefilter("ignore", UserWarning)
        return F.pandas_udf(predict_pandas, return_type, PandasUDFType.SCALAR)


def transform_spark_dataframe(model: Any, df: Any) -> Any:
    """``model.transform(df)`` for a Spark DataFrame: ``df`` plus one ``<label>__output`` column per output.

    ``model`` is a :class:`cerebro.result.TrainedModel`. Lazy, like any Spark
    transformation: the returned DataFrame predicts in executors when an action
    runs; nothing is collected. Raises ValueError for missing or non-numeric
    feature columns (listing the DataFrame's columns), CerebroError when the
    model's outputs do not match its label columns.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from .frameworks.base import framework_of

    inputs = _check_features(df, model.feature_columns)
    spec = model.spec()
    fw = framework_of(spec)
    trained = model.adapter_model()
    widths = fw.output_widths(trained)
    if len(widths) != len(model.label_columns):
        raise CerebroError(
            f"the model has {len(widths)} outputs but {len(model.label_columns)} label columns {list(model.label_columns)}"
        )
    data = pickle.dumps((spec, fw.state_to_bytes(trained)), protocol=pickle.HIGHEST_PROTOCOL)
    checksum = hashlib.sha256(data).hexdigest()
    job = _Job(tuple(model.feature_columns), widths, checksum, _share(df.sparkSession, data))
    return_type = T.StructType([
        T.StructField(f"o{i}", T.DoubleType() if w == 1 else T.ArrayType(T.FloatType())) for i, w in enumerate(widths)
    ])
    tmp = f"__cerebro_outputs_{uuid.uuid4().hex[:8]}"
    out = df.withColumn(tmp, _udf(job, return_type)(*inputs))
    out = out.withColumns({
        f"{label}__output": F.col(tmp).getField(f"o{i}") for i, label in enumerate(model.label_columns)
    })
    logger.info("transform() of model %s on Spark: %d bytes shipped by broadcast", model.model_id, len(data))
    return out.drop(tmp)
