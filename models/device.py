"""Device choice: ``auto`` picks cuda, then mps, then cpu."""

from __future__ import annotations

from app.errors import ConfigError


def resolve_device(requested: str) -> str:
    """Turn a configured device (auto/cpu/cuda/mps) into one torch can use.

    ``CUDA_VISIBLE_DEVICES`` is honoured by torch itself. Raises
    :class:`ConfigError` when a device is requested explicitly but absent.
    """
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "VECTORIZE_WORKER_DEVICE=cuda but torch sees no CUDA device (check CUDA_VISIBLE_DEVICES and the driver); "
            "use device auto or cpu."
        )
    if requested == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError("VECTORIZE_WORKER_DEVICE=mps but MPS is not available on this machine; use auto or cpu.")
    return requested
