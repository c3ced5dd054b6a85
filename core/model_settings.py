"""Settings pieces of the models section: custom model entries and byte sizes ("2GiB")."""

from __future__ import annotations

import json
import re
from importlib.metadata import entry_points
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: the families built into the worker (models/families.py); others come from plugins (see installed_families)
BUILTIN_FAMILIES = ("sentence-transformers", "transformers", "clip")
#: the entry-point group a package registers a model family under (docs/models.md, "Model family plugins")
MODEL_FAMILIES_GROUP = "vectorize_worker.model_families"
FAMILY_ALIASES: dict[str, str] = {
    "sentence-transformers": "sentence-transformers",
    "sentence_transformers": "sentence-transformers",
    "st": "sentence-transformers",
    "transformers": "transformers",
    "hf": "transformers",
    "huggingface": "transformers",
    "clip": "clip",
    "open_clip": "clip",
    "open-clip": "clip",
}
_ALIASES_OF = {
    family: [a for a in FAMILY_ALIASES if a != family and FAMILY_ALIASES[a] == family] for family in BUILTIN_FAMILIES
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_byte_size(value: Any) -> int | None:
    """``2GiB``, ``1.5G``, ``512MiB`` (binary), ``500MB`` (decimal), ``1048576``; ``0``/None/"" = no limit.

    A bare unit letter (``2G``) is binary, like ``GiB``; ``KB``/``MB``/``GB``/``TB`` are powers of 1000.
    """
    if value is None or value == "" or value is False:
        return None
    if isinstance(value, bool):
        raise ValueError("expected a size such as 2GiB or a number of bytes, not true")
    if isinstance(value, int | float):
        number = int(value)
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a size; write bytes (1073741824) or a size like 512MiB, 2GiB, 1.5GB")
        digits, unit, binary, b = match.groups()
        base = 1000 if (b and not binary and unit) else 1024
        number = int(float(digits) * base ** _POWERS[unit.lower()])
    if number < 0:
        raise ValueError("a size cannot be negative")
    return number or None


def plugin_families() -> list[str]:
    """The model families installed packages register under :data:`MODEL_FAMILIES_GROUP`, by name.

    Read from the packages' metadata: nothing is imported (models/registry.py loads a family when it is used).
    """
    return sorted({ep.name for ep in entry_points(group=MODEL_FAMILIES_GROUP)})


def installed_families() -> list[str]:
    """Every family a custom entry may name: the built-in ones and the plugins' (sorted, no aliases)."""
    return sorted({*BUILTIN_FAMILIES, *plugin_families()})


def describe_families(names: list[str] | None = None) -> str:
    """``clip (or open_clip, open-clip), hashing, sentence-transformers (or …), …`` for error messages."""
    shown = []
    for name in installed_families() if names is None else names:
        aliases = _ALIASES_OF.get(name)
        shown.append(f"{name} (or {', '.join(aliases)})" if aliases else name)
    return ", ".join(shown)


def canonical_family(value: str) -> str:
    """The family a custom entry's ``family`` names: a built-in one (aliases resolved) or an installed plugin's.

    Raises ``ValueError`` naming the installed families for any other name.
    """
    key = value.strip().lower()
    if key in FAMILY_ALIASES:
        return FAMILY_ALIASES[key]
    plugins = plugin_families()
    for name in plugins:
        if name.lower() == key:
            return name
    raise ValueError(
        f"unknown family {value!r}; installed families: {describe_families(sorted({*BUILTIN_FAMILIES, *plugins}))}. "
        f"A family of another package is available once that package is installed in the worker's environment "
        f"(it registers the family under the entry-point group {MODEL_FAMILIES_GROUP}; docs/models.md)"
    )


class CustomModel(BaseModel):
    """One entry of ``models.sentence_transformers``: a plain name, or a mapping with these keys.

    ``family`` is guessed from the name (or ``path``) when absent; ``pooling``
    (``mean``/``cls``) implies the transformers family; ``max_length`` caps
    the tokens per input (text families); ``normalize`` is the default when
    a task does not say. ``family`` may also name a plugin family (an installed
    package's, entry-point group :data:`MODEL_FAMILIES_GROUP`); such an entry's
    other keys (``dim: 256``) are that family's ``options``. An entry of a
    built-in family accepts only the keys above.
    """

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=512)
    family: str | None = None
    path: str | None = None
    pooling: Literal["mean", "cls"] | None = None
    max_length: int | None = Field(None, ge=1, le=1_000_000)
    normalize: bool | None = None
    options: dict[str, Any] = Field(default_factory=dict)  # a plugin family's own keys

    @model_validator(mode="before")
    @classmethod
    def _plugin_options(cls, data: Any) -> Any:
        """A plugin family's own keys go into ``options``; a built-in family takes none."""
        if not isinstance(data, dict):
            return data
        family = data.get("family")
        builtin = not isinstance(family, str) or family.strip().lower() in FAMILY_ALIASES
        if builtin:
            if data.get("options"):
                raise ValueError(
                    f"model {data.get('name')}: options apply to plugin families, not to "
                    f"{FAMILY_ALIASES.get(str(family).strip().lower(), 'the built-in families')}; remove options"
                )
            return data
        own = {key: value for key, value in data.items() if key not in cls.model_fields}
        if not own:
            return data
        options = data.get("options")
        merged = {**(options if isinstance(options, dict) else {}), **own}
        return {**{k: v for k, v in data.items() if k not in own}, "options": merged}

    @field_validator("family", mode="before")
    @classmethod
    def _family_alias(cls, value: Any) -> Any:
        if isinstance(value, str):
            return canonical_family(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CustomModel:
        if self.pooling is not None:
            if self.family not in (None, "transformers"):
                raise ValueError(f"model {self.name}: pooling applies to the transformers family, not {self.family}")
            self.family = "transformers"
        if self.max_length is not None and self.family == "clip":
            raise ValueError(f"model {self.name}: CLIP models have a fixed text length; remove max_length")
        return self


def parse_custom_models(value: Any) -> Any:
    """Accept a YAML list of names/mappings, a JSON list (env), or comma-separated names (env)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON ({exc})") from None
        else:
            value = [part.strip() for part in text.split(",") if part.strip()]
    if isinstance(value, list):
        value = [{"name": item} if isinstance(item, str) else item for item in value]
        names = [item.get("name") for item in value if isinstance(item, dict)]
        duplicates = sorted({n for n in names if n is not None and names.count(n) > 1})
        if duplicates:
            raise ValueError(f"model(s) listed twice: {', '.join(duplicates)}")
    return value
