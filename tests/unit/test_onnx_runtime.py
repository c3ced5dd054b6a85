"""models/onnx_runtime.py: the parity check that guards ONNX Runtime (which engine a model gets: test_engine_choice.py)."""

from __future__ import annotations

import numpy as np
import pytest

from models.onnx_runtime import PARITY_TOLERANCE, OnnxUnavailable, check_parity


def test_parity_accepts_float_noise_and_refuses_drift_shape_and_nan() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(4, 8)).astype(np.float32)
    check_parity("m", ref + 1e-7, ref)
    drifted = ref.copy()
    drifted[2, 3] += 10 * PARITY_TOLERANCE * float(np.linalg.norm(ref[2]))
    with pytest.raises(OnnxUnavailable, match="differ from torch's by"):
        check_parity("m", drifted, ref)
    with pytest.raises(OnnxUnavailable, match="shape"):
        check_parity("m", ref[:3], ref)
    broken = ref.copy()
    broken[0, 0] = np.nan
    with pytest.raises(OnnxUnavailable, match="differ"):
        check_parity("m", broken, ref)
