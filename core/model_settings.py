"""Settings pieces of the models section: custom model entries and byte sizes ("2GiB")."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Family = Literal["sentence-transformers", "transformers", "clip"]
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


class CustomModel(BaseModel):
    """One entry of ``models.sentence_transformers``: a plain name, or a mapping with these keys.

    ``family`` is guessed from the name (or ``path``) when absent; ``pooling``
    (``mean``/``cls``) implies the transformers family; ``max_length`` caps
    the tokens per input (text families); ``normalize`` is the default when
    a task does not say.
    """

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=512)
    family: Family | None = None
    path: str | None = None
    pooling: Literal["mean", "cls"] | None = None
    max_length: int | None = Field(None, ge=1, le=1_000_000)
    normalize: bool | None = None

    @field_validator("family", mode="before")
    @classmethod
    def _family_alias(cls, value: Any) -> Any:
        if isinstance(value, str):
            key = value.strip().lower()
            if key not in FAMILY_ALIASES:
                raise ValueError(
                    f"unknown family {value!r}; use sentence-transformers, transformers (or hf) or clip (or open_clip)"
                )
            return FAMILY_ALIASES[key]
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
