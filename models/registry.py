"""Find model families by name; families register through Python entry points.

A third-party family declares, in its own pyproject.toml::

    [project.entry-points."vectorize_worker.model_families"]
    hashing = "mypackage.families:HashingFamily"

where ``HashingFamily`` is a :class:`~models.base.ModelFamily` subclass
(instantiated once, without arguments) or an instance of one; a custom model
entry then names it (``family: hashing``). The built-in families register the
same way (this project's pyproject.toml); :data:`BUILTINS` stands in for those
entry points when the project runs from a checkout that is not pip-installed.
An entry point of a built-in name replaces the built-in family, as with the
vector-database adapters (sinks/registry.py).
"""

from __future__ import annotations

import threading
from importlib.metadata import entry_points

from core import plugins
from core.errors import ModelLoadError
from core.model_settings import MODEL_FAMILIES_GROUP, describe_families
from models.base import ModelFamily

ENTRY_POINT_GROUP = MODEL_FAMILIES_GROUP
#: used when the project runs from a checkout that is not pip-installed
BUILTINS = {
    "sentence-transformers": "models.families:SentenceTransformersFamily",
    "transformers": "models.families:TransformersFamily",
    "clip": "models.families:ClipFamily",
}
_families: dict[str, ModelFamily] = {}  # target ("module:attr") -> the family object, made once per process
_lock = threading.RLock()  # re-entrant: a plugin module may look a family up while it is imported


def available() -> dict[str, str]:
    """Every installed family: name -> ``module:attr`` of its :class:`ModelFamily`."""
    return plugins.installed(ENTRY_POINT_GROUP, BUILTINS, entry_points)


def get_family(family: str, *, model: str) -> ModelFamily:
    """The :class:`ModelFamily` registered as ``family`` (imported at its first use).

    Raises :class:`ModelLoadError` (for ``model``, the model being loaded) when no installed package
    registers that name, or when its entry point cannot be imported or is not a family.
    """
    installed = available()
    target = installed.get(family)
    if target is None:
        raise ModelLoadError(
            f"Failed to load model {model}: its family {family!r} is not installed; installed families: "
            f"{describe_families(sorted(installed))}. Install the package that provides it in the worker's "
            f"environment (it registers the family under the entry-point group {ENTRY_POINT_GROUP}) or fix the "
            "family of this model's entry under models.sentence_transformers (VECTORIZE_WORKER_CUSTOM_MODELS)."
        )
    with _lock:
        known = _families.get(target)
        if known is not None:
            return known
        made = _make(family, target, model)
        _families[target] = made
        return made


def _make(family: str, target: str, model: str) -> ModelFamily:
    where = f"the model family {family!r} ({target}, entry-point group {ENTRY_POINT_GROUP})"
    try:
        found: object = plugins.load(target)
    except Exception as exc:  # noqa: BLE001 - whatever a plugin's import raises, the model's tasks fail with it
        raise ModelLoadError(
            f"Failed to load model {model}: {where} cannot be imported ({type(exc).__name__}: {exc}); "
            "reinstall the package that provides it, or check its dependencies are installed."
        ) from None
    if isinstance(found, type) and issubclass(found, ModelFamily):
        try:
            found = found()
        except Exception as exc:  # noqa: BLE001 - a plugin's constructor
            raise ModelLoadError(
                f"Failed to load model {model}: creating {where} failed ({type(exc).__name__}: {exc}); "
                "fix or reinstall the package that provides it."
            ) from None
    if not isinstance(found, ModelFamily):
        raise ModelLoadError(
            f"Failed to load model {model}: {where} is a {type(found).__name__}, not a models.base.ModelFamily "
            "subclass or instance; fix the entry point in the package that provides it."
        )
    return found
