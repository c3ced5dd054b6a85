"""ONNX Runtime for the text encoders on the CPU: export once, cache the file, check it against torch.

On some 2-core machines all-MiniLM-L6-v2 runs about twice as fast in ONNX
Runtime as in torch (fp32 both, vectors equal to 2e-7; bench/README.md), on
others barely faster. The sentence-transformers and transformers families
offer it as the engines ``onnx``, ``onnx-int8`` (:func:`quantized_model`) and
``onnx-int8-static`` (:func:`static_quantized_model`) to models/engines.py, which under ``models.backend`` ``auto`` (the default)
times it against the other engines on the CPU and keeps the fastest:

1. the family's transformer (a ``transformers`` model that returns token
   states) is exported with ``torch.onnx.export`` into
   ``<models.cache_dir>/onnx/<key>/model.onnx``; the key hashes the weights,
   the config and the torch/transformers versions, so a changed model or
   library exports anew and workers on one host share the folder (written
   under a name of the process's own, then renamed whole);
2. the family embeds a few probe texts both ways (padded batches, mixed case,
   one text past the length limit) and uses ONNX Runtime only when every
   vector matches torch's to :data:`PARITY_TOLERANCE`;
3. anything that fails (onnx not installed, an architecture the exporter
   cannot trace, a mismatch) leaves ONNX Runtime out with a warning under
   ``auto``, or fails the load with :class:`~core.errors.ModelLoadError` under
   ``onnx``. An export the exporter refused is remembered
   (``<key>.failed`` beside the exports, with the reason): later loads skip
   it until that file is deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import os
import shutil
import socket
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.resolve import first_line

log = logging.getLogger("worker.model_manager")

Backend = Literal["auto", "onnx", "torch"]
BACKEND_SETTING = "VECTORIZE_WORKER_MODELS_BACKEND (YAML models.backend)"
#: largest difference allowed between an ONNX Runtime vector and torch's, per component of a unit vector
PARITY_TOLERANCE = 1e-4
#: the texts both backends embed before ONNX Runtime is trusted: mixed case, accents, padding, truncation
PROBE_TEXTS = (
    "A short probe.",
    "The Quick Brown Fox jumps over the lazy dog near the riverbank, then rests in the Café du Monde!",
    "x",
    " ".join(["Truncation probe sentence with several words."] * 120),
)
#: probes run in calls of 3 and 1 texts: the export is traced on 2, so a batch size baked in would show
PROBE_BATCH = 3
OPSET = 17
#: in the static int8 copy's folder name: bump it when the calibration texts or the quantizer's options change, so
#: copies made the old way are not reused
STATIC_INT8_RECIPE = "v1"
#: the texts the static int8 engine calibrates its activation ranges on: none is a probe text or one of the
#: held-out retrieval texts (models/engines.py checks the engine on those); short and long (two past 256
#: tokens), several languages, code, numbers, an address
CALIBRATION_TEXTS = (
    "Hi",
    "ok",
    "Thanks!",
    "y",
    "Why?",
    "NEW RELEASE",
    "Where is the station?",
    "Is it safe to swim here?",
    "How can I change the email address on my account?",
    "The museum reopens its modern art wing next spring after a two-year renovation.",
    "Quarterly revenue beat analysts' expectations, driven by strong cloud sales in Asia.",
    "A recipe for lemon cake: flour, sugar, eggs, butter and two lemons.",
    "The patient reported mild headaches and dizziness after the second dose.",
    "Volunteers planted three thousand trees along the river banks over the weekend.",
    "Shipping is free for orders above 50 euros; returns are accepted within 30 days.",
    "The orchestra played Beethoven's ninth symphony to a sold-out hall.",
    "Climbers reached the summit at dawn, hours ahead of the forecast storm.",
    "The library extended its opening hours during the exam period for students.",
    "Electric scooters are banned from the pavements of the old town from June.",
    "Scientists sequenced the genome of a rare deep-sea octopus.",
    "Reset your router, then wait two minutes before reconnecting.",
    "The referee's late penalty decision sparked angry protests from the home fans.",
    "Los precios del aceite de oliva subieron un 40 % este año.",
    "Le conseil municipal a voté le budget mardi soir.",
    "Die Bahn kündigte neue Verbindungen zwischen München und Wien an.",
    "Café, naïve, résumé, façade — accented words.",
    "ERROR 504: gateway timeout while contacting upstream service",
    "def add(a, b): return a + b",
    "user@example.com wrote: please see the attached invoice #4471",
    "1, 2, 3, 4, 5",
    " ".join(["Long calibration sentence about software releases, bug fixes and deployment schedules."] * 30),
    " ".join(['A second long text mixes Names, NUMBERS like 2024 and punctuation; quotes "here" too.'] * 20),
)
#: SmoothQuant's migration strength: how much of an activation channel's range moves into the weights (its
#: paper's default, not tuned on the probes; on all-MiniLM-L6-v2 0.3 / 0.5 / 0.65 / 0.8 gave a lowest probe
#: cosine of 0.991 / 0.994 / 0.995 / 0.993, none of them faithful)
SMOOTHING_ALPHA = 0.5
#: a MatMul fed by one of these (an activation function; torch's GELU and SiLU end in Mul) stays in float
_ACTIVATIONS = frozenset(
    {"Mul", "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Relu", "LeakyRelu", "Elu", "Selu", "Sigmoid",
     "HardSigmoid", "HardSwish", "Tanh", "Softplus", "Erf"}
)  # fmt: skip
STALE_PARTIAL_S = 3600.0
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class OnnxUnavailable(Exception):
    """ONNX Runtime cannot run this model; the message says why (the model stays on torch under ``auto``)."""


class OnnxTransformer:
    """A transformer's last hidden state from an ONNX Runtime session; call it with tokenizer output."""

    def __init__(self, session: Any, input_names: Sequence[str], path: Path, run_options: Any = None) -> None:
        self._session = session
        self._run_options = run_options
        self.input_names = tuple(input_names)
        self.path = path
        # a model over 2 GB keeps its weights as files beside model.onnx; the folder never changes once renamed
        self._bytes = sum(f.stat().st_size for f in path.parent.iterdir() if f.is_file())

    def __call__(self, features: Mapping[str, Any]) -> np.ndarray:
        feeds = {name: np.asarray(features[name], dtype=np.int64) for name in self.input_names}
        return self._session.run(None, feeds, self._run_options)[0]

    def close(self) -> None:
        """Drop the session (its memory goes with the last reference)."""
        self._session = None

    def memory_bytes(self) -> int:
        """The weights ONNX Runtime holds: the export's files. Its prepared copies and per-call buffers are
        not counted."""
        return self._bytes


def export_transformer(model: Any, sample: Mapping[str, Any], *, cache_dir: str | Path | None) -> OnnxTransformer:
    """Export ``model`` (cached) and open an ONNX Runtime session on it.

    ``sample`` is tokenizer output (``return_tensors="pt"``) of at least two
    texts of different lengths, so the traced graph sees padding. Raises
    :class:`OnnxUnavailable` with the reason.
    """
    names, path = exported_model(model, sample, cache_dir=cache_dir)
    return open_session(path, names)


def exported_model(model: Any, sample: Mapping[str, Any], *, cache_dir: str | Path | None) -> tuple[list[str], Path]:
    """The inputs and the path of ``model``'s float32 export, exported now unless cached; raises
    :class:`OnnxUnavailable` with the reason."""
    try:
        import onnx  # noqa: F401 - torch.onnx.export writes through it
        import onnxruntime  # noqa: F401
        import torch
    except ImportError as exc:
        raise OnnxUnavailable(f"{exc.name or exc} is not installed (pip install onnx onnxruntime)") from None
    try:
        accepted = set(inspect.signature(model.forward).parameters)
        names = [n for n in _INPUTS if n in sample and n in accepted]
        if "input_ids" not in names or "attention_mask" not in names:
            raise OnnxUnavailable(f"{type(model).__name__}.forward does not take input_ids and attention_mask")
        folder = _cache_root(cache_dir) / _cache_key(model, names, torch)
    except OnnxUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - no cache folder (no HOME), an unhashable model: stay on torch
        raise OnnxUnavailable(f"preparing the export failed: {type(exc).__name__}: {first_line(exc)}") from None
    path = folder / "model.onnx"
    if not path.is_file():
        failed = _failure_marker(folder)
        if failed.is_file():  # the exporter cannot trace this model with these library versions: no new attempt
            reason = failed.read_text(encoding="utf-8", errors="replace").strip()
            raise OnnxUnavailable(f"{reason} (at an earlier load; delete {failed} to export again)")
        _export(model, names, sample, folder, torch)
    else:
        log.info("Using the ONNX export %s", path)
    return names, path


def open_session(path: Path, names: Sequence[str]) -> OnnxTransformer:
    """An ONNX Runtime session on the export at ``path``, set up for the worker; raises :class:`OnnxUnavailable`."""
    import onnxruntime
    import torch

    options = onnxruntime.SessionOptions()
    # as many threads as torch would use (one thread was slower in the worker too: bulk 231-241 against 328-346/s)
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    # shapes change with every batch: a memory pattern per shape would only grow the process
    options.enable_mem_pattern = False
    # idle pool threads sleep instead of spinning: the event loop, Kafka client and tokenizer share these cores
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own types; the caller falls back to torch
        raise OnnxUnavailable(
            f"ONNX Runtime cannot open {path}: {type(exc).__name__}: {first_line(exc)} (delete that folder to export "
            "the model again)"
        ) from None
    # the arena gives back what a call took beyond its initial chunk: without this, one call of 32 texts of
    # 256 tokens keeps ~450 MB in the process for good (measured; torch returns it, and speed is the same)
    run_options = onnxruntime.RunOptions()
    run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return OnnxTransformer(session, names, path, run_options)


def quantized_model(path: Path) -> Path:
    """The int8 copy of the float32 export at ``path`` (ONNX Runtime dynamic quantization of the weights), made
    once into ``<its folder>-int8/model.onnx``; raises :class:`OnnxUnavailable` with the reason."""

    def quantize(source: Path, target: Path) -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)

    return _derived_model(path, "int8", "int8", quantize)


def static_quantized_model(path: Path, names: Sequence[str], tokenizer: Any, max_length: int) -> Path:
    """The statically calibrated int8 copy of the float32 export at ``path``, made once into
    ``<its folder>-int8-static-<recipe>/model.onnx``; raises :class:`OnnxUnavailable` with the reason.

    ONNX Runtime static quantization in QDQ format: int8 weights per output channel and uint8 activations
    (the fast u8s8 kernels of x86) whose ranges are calibrated (min/max) on :data:`CALIBRATION_TEXTS`, each
    tokenized alone by the model's ``tokenizer`` at ``max_length`` (no padding in the ranges). What keeps it
    close to float32: only the MatMuls with constant weights are quantized (attention's activation-by-activation
    products stay float), not those fed by an activation function (the feed-forward output projection, by far
    the most sensitive: alone it bends all-MiniLM-L6-v2's probes to cosine 0.905), and each quantized MatMul's
    input channels are first smoothed (SmoothQuant, :data:`SMOOTHING_ALPHA`): the channels with outliers are
    divided down and the weights multiplied up to match, the same function in float32.
    """
    extra = [f.name for f in path.parent.iterdir() if f.is_file() and f.name != path.name]
    if extra:
        raise OnnxUnavailable(
            f"static int8 is offered for exports under 2 GB only, and {path.parent} keeps its weights in separate "
            f"files ({', '.join(sorted(extra)[:3])}{', ...' if len(extra) > 3 else ''})"
        )

    def quantize(source: Path, target: Path) -> None:
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        feeds = calibration_feeds(tokenizer, names, max_length)
        model, nodes = smooth_for_int8(onnx.load(str(source)), feeds)
        if not nodes:
            raise OnnxUnavailable("the export has no MatMul with constant weights that static int8 would quantize")
        log.info("Quantizing %s to static int8 (%d MatMuls, calibrated on %d texts)", source, len(nodes), len(feeds))
        smoothed = target.with_name("smoothed.onnx")  # a path, not the proto: onnxruntime 1.17 takes paths only
        onnx.save(model, str(smoothed))
        del model
        quantize_static(
            str(smoothed),
            str(target),
            _Feeds(feeds),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"],
            nodes_to_quantize=nodes,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            calibration_providers=["CPUExecutionProvider"],
            extra_options={"MatMulConstBOnly": True},
        )
        smoothed.unlink()  # the folder holds the engine's files only (its size is the engine's memory)

    return _derived_model(path, f"int8-static-{STATIC_INT8_RECIPE}", "static int8", quantize)


def calibration_feeds(tokenizer: Any, names: Sequence[str], max_length: int) -> list[dict[str, np.ndarray]]:
    """ONNX Runtime feeds of :data:`CALIBRATION_TEXTS`, one text per feed, cut at ``max_length`` tokens."""
    feeds = []
    for text in CALIBRATION_TEXTS:
        encoded = tokenizer([text], truncation=True, max_length=max_length, return_tensors="np")
        feeds.append({name: np.asarray(encoded[name], dtype=np.int64) for name in names})
    return feeds


class _Feeds:
    """ONNX Runtime's CalibrationDataReader over prepared feeds."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]) -> None:
        self._feeds = list(feeds)
        self._next = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._next, None)

    def rewind(self) -> None:
        self._next = iter(self._feeds)


def smooth_for_int8(model: Any, feeds: Sequence[Mapping[str, np.ndarray]]) -> tuple[Any, list[str]]:
    """``model`` (an ``onnx.ModelProto``, changed in place) with the inputs of the MatMuls to quantize smoothed,
    and those MatMuls' names.

    Those MatMuls: a constant 2-D weight, an input not produced by an activation function (:data:`_ACTIVATIONS`).
    For each input tensor ``x`` they share, with per-channel maxima ``a`` (of ``|x|`` over ``feeds``) and ``w``
    (of their weights' rows), ``s = a**alpha / w**(1 - alpha)``: a new ``Mul`` gives them ``x / s`` and their
    weights' rows are multiplied by ``s``. The graph computes the same function; its activations' outliers have
    moved into the weights, which are quantized per output channel.
    """
    import onnx
    import onnxruntime
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    groups: dict[str, list[Any]] = {}
    for index, node in enumerate(graph.node):
        if node.op_type != "MatMul" or node.input[1] not in weights or len(weights[node.input[1]].dims) != 2:
            continue
        source = producers.get(node.input[0])
        if source is not None and source.op_type in _ACTIVATIONS:
            continue
        node.name = node.name or f"MatMul/{index}"  # the quantizer is told its MatMuls by name
        groups.setdefault(node.input[0], []).append(node)
    if not groups:
        return model, []
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    listed = {o.name for o in probe.graph.output}
    probe.graph.output.extend(
        helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None) for x in groups if x not in listed
    )
    session = onnxruntime.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    del probe
    wanted = list(groups)
    peaks: dict[str, np.ndarray] = {}
    for feed in feeds:
        for x, value in zip(wanted, session.run(wanted, dict(feed)), strict=True):
            peak = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
            peaks[x] = np.maximum(peaks[x], peak) if x in peaks else peak
    del session
    muls, replaced = [], set()
    for group, (x, nodes) in enumerate(groups.items()):
        matrices = [numpy_helper.to_array(weights[n.input[1]]) for n in nodes]
        if any(m.shape[0] != peaks[x].shape[0] for m in matrices):
            continue  # a weight that does not multiply the last axis: left as it is (quantized unsmoothed)
        a = peaks[x].astype(np.float64)
        w = np.max([np.abs(m).max(axis=1) for m in matrices], axis=0).astype(np.float64)
        scale = np.where((a > 0) & (w > 0), a**SMOOTHING_ALPHA / np.maximum(w, 1e-12) ** (1 - SMOOTHING_ALPHA), 1.0)
        scale = np.clip(scale, 1e-4, 1e4)
        inverse = numpy_helper.from_array((1 / scale).astype(np.float32), name=f"smoothquant/{group}/inverse")
        graph.initializer.append(inverse)
        smoothed = f"smoothquant/{group}/input"
        muls.append((nodes[0], helper.make_node("Mul", [x, inverse.name], [smoothed], name=f"smoothquant/{group}")))
        for member, (node, matrix) in enumerate(zip(nodes, matrices, strict=True)):
            replaced.add(node.input[1])
            scaled = numpy_helper.from_array(
                (matrix * scale[:, None]).astype(np.float32), f"smoothquant/{group}/weight/{member}"
            )
            graph.initializer.append(scaled)
            node.input[0], node.input[1] = smoothed, scaled.name
    order = list(graph.node)
    for first, mul in muls:  # each Mul just before the first MatMul it feeds: the graph stays in topological order
        order.insert(order.index(first), mul)
    del graph.node[:]
    graph.node.extend(order)
    used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name not in replaced or i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model, [n.name for nodes in groups.values() for n in nodes]


def _derived_model(path: Path, suffix: str, what: str, make: Any) -> Path:
    """A model made once from the float32 export at ``path`` by ``make(source, target)`` into ``<its
    folder>-<suffix>/model.onnx`` (written under a name of the process's own, then renamed whole); a failure other
    than the file system's is remembered beside it (``<folder>-<suffix>.failed``) and not tried again."""
    folder = path.parent.with_name(f"{path.parent.name}-{suffix}")
    target = folder / "model.onnx"
    if target.is_file():
        return target
    failed = _failure_marker(folder)
    if failed.is_file():
        reason = failed.read_text(encoding="utf-8", errors="replace").strip()
        raise OnnxUnavailable(f"{reason} (at an earlier load; delete {failed} to quantize again)")
    partial = own_partial(folder)
    try:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        # the quantizer writes a `<model>-inferred.onnx` beside its input and deletes it: on a copy of our own,
        # so that workers sharing the models folder do not write and delete one file at once
        source = _private_source(path, partial / "source")
        with warnings.catch_warnings(), _quiet_quantizer():
            warnings.simplefilter("ignore")
            make(source, partial / "model.onnx")
        shutil.rmtree(partial / "source")
        try:
            os.replace(partial, folder)
        except OSError:
            if not target.is_file():
                raise
    except Exception as exc:  # noqa: BLE001 - the quantizer raises many types; each means "no such engine"
        why = str(exc) if isinstance(exc, OnnxUnavailable) else f"{type(exc).__name__}: {first_line(exc)}"
        reason = f"quantizing {path} to {what} failed: {why}"
        if not isinstance(exc, OSError):
            _remember_failure(folder, reason)
        raise OnnxUnavailable(reason) from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


class _QuantizerChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and not str(record.msg).startswith("Please consider")


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """The quantizer logs on the root logger: a line per tensor (info) and advice to pre-process at every call
    (tried: it changes neither the vectors nor the speed here). Both are dropped while it runs; its other
    warnings and errors go through, and so does whatever other loggers say."""
    chatter = _QuantizerChatter()
    root = logging.getLogger()
    root.addFilter(chatter)
    try:
        yield
    finally:
        root.removeFilter(chatter)


def check_parity(name: str, onnx_vectors: np.ndarray, torch_vectors: np.ndarray) -> None:
    """Raise :class:`OnnxUnavailable` unless the probe vectors of both backends agree."""
    if onnx_vectors.shape != torch_vectors.shape:
        raise OnnxUnavailable(
            f"probe vectors have shape {onnx_vectors.shape} from ONNX Runtime but {torch_vectors.shape} from torch"
        )
    scale = np.maximum(np.linalg.norm(torch_vectors, axis=1, keepdims=True), 1e-12)
    diff = float(np.abs((onnx_vectors - torch_vectors) / scale).max())
    if not np.isfinite(diff) or diff > PARITY_TOLERANCE:
        raise OnnxUnavailable(
            f"its probe vectors differ from torch's by {diff:.1e} (allowed {PARITY_TOLERANCE:.0e} of the vector norm)"
        )
    log.debug("Model %s: ONNX Runtime's probe vectors are within %.1e of torch's", name, diff)


def _cache_root(cache_dir: str | Path | None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser() / "onnx"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vectorize-worker" / "onnx"


def _cache_key(model: Any, names: Sequence[str], torch: Any) -> str:
    """Hash of everything the exported graph depends on: weights, config, inputs, library versions."""
    import transformers

    digest = hashlib.blake2b(digest_size=12)
    config = getattr(model, "config", None)
    header = [type(model).__name__, torch.__version__, transformers.__version__, str(OPSET), ",".join(names)]
    digest.update("|".join(header).encode())
    if config is not None and hasattr(config, "to_json_string"):
        digest.update(config.to_json_string(use_diff=False).encode())
    for key, tensor in model.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _last_hidden_state(model: Any, names: Sequence[str], torch: Any) -> Any:
    """A module taking the inputs positionally and returning the model's token states (what the exporter traces)."""

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: Any) -> Any:
            out = self.model(**dict(zip(names, inputs, strict=True)))
            return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    return LastHiddenState().eval()


def _export(model: Any, names: Sequence[str], sample: Mapping[str, Any], folder: Path, torch: Any) -> None:
    """Write the export into a folder of this process's own, then rename it into place (atomic, whole).

    A model over 2 GB gets its weights as files beside ``model.onnx``; they
    travel with the folder. When another worker renamed its export first,
    ours is discarded and theirs used.
    """
    partial = own_partial(folder)
    axes = {n: {0: "batch", 1: "tokens"} for n in [*names, "last_hidden_state"]}
    kind = type(model).__name__
    log.info("Exporting %s to ONNX at %s (once per model and library version)", kind, folder)
    try:
        _remove_stale_partials(folder.parent)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always")
            torch.onnx.export(
                _last_hidden_state(model, names, torch),
                tuple(sample[n] for n in names),
                str(partial / "model.onnx"),
                input_names=list(names),
                output_names=["last_hidden_state"],
                dynamic_axes=axes,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        for warning in caught:  # tracer warnings: the probe texts decide whether they matter
            log.debug("ONNX export of %s: %s", kind, first_line(warning.message))
        try:
            os.replace(partial, folder)
        except OSError:
            if not (folder / "model.onnx").is_file():
                raise
            log.info("Another process exported %s first; using %s", kind, folder)
    except Exception as exc:  # noqa: BLE001 - exporters raise many types; every one means "stay on torch"
        reason = f"exporting {kind} to ONNX in {folder.parent} failed: {type(exc).__name__}: {first_line(exc)}"
        if not isinstance(exc, OSError):  # the exporter refused the model: remembered; a full disk is not
            _remember_failure(folder, reason)
        raise OnnxUnavailable(reason) from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _failure_marker(folder: Path) -> Path:
    return folder.with_name(f"{folder.name}.failed")


def _remember_failure(folder: Path, reason: str) -> None:
    """Later loads of the same model (same weights and library versions) skip the export that failed (for a
    large model it takes minutes). Best effort."""
    try:
        _failure_marker(folder).write_text(reason + "\n", encoding="utf-8")
    except OSError as exc:
        log.debug("Could not record the failed export beside %s (%r)", folder, exc)


def _private_source(path: Path, folder: Path) -> Path:
    """The export folder of ``path`` (``model.onnx`` and any external weight files) linked into ``folder``
    (copied where the file system refuses hard links); the path of ``model.onnx`` there."""
    folder.mkdir()
    for item in path.parent.iterdir():
        if item.is_file():
            try:
                os.link(item, folder / item.name)
            except OSError:
                shutil.copy2(item, folder / item.name)
    return folder / path.name


def own_partial(path: Path) -> Path:
    """Where this process writes ``path`` before renaming it into place: a name no other writer of the same
    folder uses. The process id alone is not one: workers in containers sharing a models volume all run with
    the same small pid, and two of them quantizing at once removed each other's files (and remembered the
    failure); the host name (a container's own) and a random part make it unique."""
    return path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")


def _remove_stale_partials(root: Path, max_age_s: float = STALE_PARTIAL_S) -> None:
    """Delete what exporters killed mid-write left behind (``*.partial`` folders untouched for an hour)."""
    now = time.time()
    for leftover in root.glob("*.partial"):
        try:
            if now - leftover.stat().st_mtime > max_age_s:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            continue
