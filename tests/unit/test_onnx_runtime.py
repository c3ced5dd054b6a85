"""models/onnx_runtime.py: which backend a model gets, and the parity check that guards ONNX Runtime."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from core.errors import ModelLoadError
from models.onnx_runtime import PARITY_TOLERANCE, OnnxUnavailable, check_parity, onnx_or_torch


def unavailable() -> object:
    raise OnnxUnavailable("exporting to ONNX failed: RuntimeError: unsupported operator")


def never() -> object:
    raise AssertionError("build must not run")


def test_torch_backend_never_builds() -> None:
    assert onnx_or_torch("torch", name="m", device="cpu", build=never) is None


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps"])
def test_auto_on_an_accelerator_stays_on_torch_and_onnx_refuses(device: str) -> None:
    assert onnx_or_torch("auto", name="m", device=device, build=never) is None
    with pytest.raises(ModelLoadError) as err:
        onnx_or_torch("onnx", name="m", device=device, build=never)
    message = str(err.value)
    assert "Failed to load model m" in message and f"device is {device}" in message
    assert "VECTORIZE_WORKER_MODELS_BACKEND" in message


def test_auto_on_the_cpu_uses_what_build_returns() -> None:
    session = object()
    assert onnx_or_torch("auto", name="m", device="cpu", build=lambda: session) is session
    assert onnx_or_torch("onnx", name="m", device="cpu", build=lambda: session) is session


def test_auto_falls_back_with_a_warning_onnx_fails_the_load(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="worker.model_manager"):
        assert onnx_or_torch("auto", name="m", device="cpu", build=unavailable) is None
    warning = caplog.records[-1].getMessage()
    assert "Model m runs on torch, not ONNX Runtime" in warning and "unsupported operator" in warning
    assert "VECTORIZE_WORKER_MODELS_BACKEND" in warning
    with pytest.raises(ModelLoadError) as err:
        onnx_or_torch("onnx", name="m", device="cpu", build=unavailable)
    assert "Failed to load model m with ONNX Runtime" in str(err.value) and "unsupported operator" in str(err.value)


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
