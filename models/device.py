"""Device choice: ``auto`` picks cuda, then mps, then cpu; and returning memory to the device."""

from __future__ import annotations

import gc
import logging
import os

from core.errors import ConfigError

log = logging.getLogger("worker.model_manager")


def resolve_device(requested: str) -> str:
    """Turn a configured device (auto/cpu/cuda/mps) into one torch can use.

    ``CUDA_VISIBLE_DEVICES`` is honoured by torch itself: with it empty (or
    ``-1``) no GPU is visible and ``auto`` picks mps or cpu; ``cuda`` is the
    first visible GPU. Raises :class:`ConfigError` when a device is requested
    explicitly but absent. Blocks while torch initialises CUDA (a second or so).
    """
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        if visible is not None:
            log.info("No CUDA device visible (CUDA_VISIBLE_DEVICES=%r); using the CPU", visible)
        return "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"VECTORIZE_WORKER_DEVICE=cuda but torch sees no CUDA device (CUDA_VISIBLE_DEVICES={visible!r}; "
            "check it and the driver); use device auto or cpu."
        )
    if requested == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError("VECTORIZE_WORKER_DEVICE=mps but MPS is not available on this machine; use auto or cpu.")
    return requested


def call_plan(device: str, parallel_calls: int) -> tuple[int, int | None]:
    """(model calls run at once, torch threads per call) for ``models.parallel_calls`` (0 = auto) on ``device``.

    Auto: on a CPU with at least two cores two calls at once, each with half of torch's threads (what
    ``OMP_NUM_THREADS`` or the cores allow); one call elsewhere (a GPU runs one call at a time anyway). A
    count given runs that many calls, each with torch's threads divided among them (at least one).
    """
    import torch

    threads = torch.get_num_threads()
    if parallel_calls == 0:
        parallel_calls = 2 if device == "cpu" and threads >= 2 else 1
    if parallel_calls == 1:
        return 1, None
    return parallel_calls, max(1, threads // parallel_calls)


def set_call_threads(threads: int | None) -> None:
    """Set the calling thread's torch (OpenMP) threads for the model calls it runs next; None leaves them.

    OpenMP keeps the count per calling thread, so each device thread sets its own; torch also remembers it as the
    default of threads that have not run torch yet.
    """
    if threads is None:
        return
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def freeze_heap() -> None:
    """Collect every generation once, then keep what survives out of later collections.

    A worker holds 700,000+ long-lived objects once its libraries and default
    model are loaded (torch, transformers, ONNX Runtime, Faust). Python's
    full collections scan all of them, about half a second each with the GIL
    held: event loop, Kafka and the model's next call all stopped, roughly
    every 10 s under load. ``gc.freeze`` moves them to a permanent generation
    that collections skip (docs/performance.md). Called after each model
    load and, by :func:`release_memory`, after each unload: unfreezing first
    lets one collection find cycles among objects frozen earlier (a dropped
    model). Objects of tasks in flight at a freeze are frozen too: freed as
    usual when nothing refers to them, but a cycle among them waits for the
    next load or unload (bounded by what was in flight at that moment).
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def release_memory(device: str) -> None:
    """Give freed tensors back to the device after a model is dropped or a batch ran out of memory."""
    if gc.get_freeze_count():
        freeze_heap()  # a frozen model's objects are collected only once unfrozen
    else:
        gc.collect()
    try:
        import torch
    except ImportError:  # pragma: no cover - a core dependency
        return
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif device == "mps" and getattr(torch, "mps", None) is not None:
        try:
            torch.mps.empty_cache()
        except (RuntimeError, AttributeError):  # pragma: no cover - no MPS here
            pass


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a device out-of-memory error (CUDA's OutOfMemoryError, MPS's RuntimeError)."""
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - a core dependency
        pass
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
