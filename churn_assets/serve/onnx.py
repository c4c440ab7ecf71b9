"""The champion compiled to ONNX for serving.

scikit-learn's HistGradientBoosting walks its trees in a Python loop, about 6 ms for one row;
onnxruntime evaluates the same pipeline in well under 0.1 ms, which is what makes the service
fast. The sklearn pipeline in MLflow stays the source of truth; onnxruntime computes in float32,
so its probabilities match it to about 1e-6.
"""

from __future__ import annotations

import numpy as np

from churn_assets.contract import CATEGORICAL_FEATURES, NUMERIC_FEATURES

OPSETS = {"": 18, "ai.onnx.ml": 3}


def compile_pipeline(pipeline) -> bytes:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    inputs = [(c, FloatTensorType([None, 1])) for c in NUMERIC_FEATURES]
    inputs += [(c, StringTensorType([None, 1])) for c in CATEGORICAL_FEATURES]
    options = {id(pipeline.named_steps["model"]): {"zipmap": False}}
    return to_onnx(pipeline, initial_types=inputs, options=options, target_opset=OPSETS).SerializeToString()


def feeds(rows: list[dict]) -> dict[str, np.ndarray]:
    """onnxruntime inputs, one (n, 1) column each, from feature records, in one pass over the rows."""
    numeric = np.array([[r[c] for c in NUMERIC_FEATURES] for r in rows], dtype=np.float32)
    out = {c: numeric[:, i : i + 1] for i, c in enumerate(NUMERIC_FEATURES)}
    out.update({c: np.array([[r[c]] for r in rows], dtype=object) for c in CATEGORICAL_FEATURES})
    return out


def load_session(model: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def churn_probabilities(session, batch: dict[str, np.ndarray]) -> np.ndarray:
    return session.run(["probabilities"], batch)[0][:, 1].astype(float)
