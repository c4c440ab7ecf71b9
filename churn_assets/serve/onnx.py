"""The champion compiled to ONNX for serving.

scikit-learn's HistGradientBoosting walks its trees in a Python loop, about 6 ms for one row;
onnxruntime evaluates the same pipeline in well under 0.1 ms, which is what makes the service
fast. The sklearn pipeline in MLflow stays the source of truth; onnxruntime computes in float32,
so its probabilities match it to about 1e-6.

skl2onnx gives the pipeline one input per column. A ``Split`` in front of it takes all numeric
features as one float matrix instead: onnxruntime checks and converts each input on every call,
so two inputs instead of twenty-three cut a one-row call from about 28 to 17 microseconds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from churn_assets.contract import CATEGORICAL_FEATURES, FEATURE_COLUMNS, NUMERIC_FEATURES

OPSETS = {"": 18, "ai.onnx.ml": 3}
ONNX_TOLERANCE = 1e-4
"""Largest probability difference from the sklearn pipeline a compilation may have to be used."""
NUMERIC_INPUT = "numeric"
ONNX_INPUTS: tuple[str, ...] = (NUMERIC_INPUT, *CATEGORICAL_FEATURES)
"""The compiled model's inputs: an (n, len(NUMERIC_FEATURES)) float matrix, then one (n, 1) string column each."""


def compile_pipeline(pipeline) -> bytes:
    from onnx import TensorProto, compose, helper
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    inputs = [(c, FloatTensorType([None, 1])) for c in NUMERIC_FEATURES]
    inputs += [(c, StringTensorType([None, 1])) for c in CATEGORICAL_FEATURES]
    options = {id(pipeline.named_steps["model"]): {"zipmap": False}}
    per_column = to_onnx(pipeline, initial_types=inputs, options=options, target_opset=OPSETS)

    split = helper.make_graph(
        [helper.make_node("Split", [NUMERIC_INPUT], list(NUMERIC_FEATURES), axis=1, num_outputs=len(NUMERIC_FEATURES))],
        "split_numeric",
        [helper.make_tensor_value_info(NUMERIC_INPUT, TensorProto.FLOAT, [None, len(NUMERIC_FEATURES)])],
        [helper.make_tensor_value_info(c, TensorProto.FLOAT, [None, 1]) for c in NUMERIC_FEATURES],
    )
    front = compose.add_prefix(
        helper.make_model(split, opset_imports=list(per_column.opset_import), ir_version=per_column.ir_version),
        "split_",
        rename_inputs=False,
    )
    merged = compose.merge_models(front, per_column, io_map=[(f"split_{c}", c) for c in NUMERIC_FEATURES])
    return merged.SerializeToString()


def feeds(rows: Sequence[Sequence]) -> dict[str, np.ndarray]:
    """onnxruntime inputs from rows of feature values in FEATURE_COLUMNS order (``feature_values``).

    Rows rather than records: a batch validated by msgspec is already one tuple per record away.
    """
    numeric = len(NUMERIC_FEATURES)
    out = {NUMERIC_INPUT: np.array([row[:numeric] for row in rows], dtype=np.float32)}
    for position, column in enumerate(CATEGORICAL_FEATURES, numeric):
        # Filling an empty object array is ten times faster than building one from nested lists.
        values = np.empty((len(rows), 1), dtype=object)
        values[:, 0] = [row[position] for row in rows]
        out[column] = values
    return out


def frame_feeds(frame) -> dict[str, np.ndarray]:
    """onnxruntime inputs from a DataFrame of feature columns: the batch-scoring form of ``feeds``."""
    out = {NUMERIC_INPUT: frame[list(NUMERIC_FEATURES)].to_numpy(dtype=np.float32)}
    out.update({c: frame[[c]].to_numpy(dtype=object) for c in CATEGORICAL_FEATURES})
    return out


def load_session(model: bytes, threads: int = 1):
    """One thread by default: each service worker owns a core.

    A second thread for the service's 1,000-record batches cost more CPU than it saved time (32
    instead of 23 ms of worker CPU a batch, benchmarks/README.md), so only batch scoring, which
    has the cores to itself, uses more. Those threads sleep between calls instead of spinning.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if threads > 1:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def input_names(session) -> tuple[str, ...]:
    return tuple(i.name for i in session.get_inputs())


def churn_probabilities(session, batch: dict[str, np.ndarray]) -> np.ndarray:
    return session.run(["probabilities"], batch)[0][:, 1].astype(float)


def onnx_disagreement(pipeline, compiled: bytes, features) -> float:
    """Largest probability difference between the sklearn pipeline and its ONNX compilation."""
    if len(features) == 0:
        return 0.0
    served = churn_probabilities(load_session(compiled), frame_feeds(features))
    return float(np.abs(served - pipeline.predict_proba(features[list(FEATURE_COLUMNS)])[:, 1]).max())
