#!/usr/bin/env python3
"""Regenerate docs/configuration.md from the settings classes in core/settings.py.

The table is made from ``Settings.model_fields`` (and the fields of the nested
store settings), so a new setting appears in the docs with its environment
name, YAML key, default, accepted values and description the moment it exists:
there is no hand-kept copy to forget. ``make schemas`` runs this script;
tests/unit/test_docs.py fails when the file in the tree differs from what this
script produces, or when a field has no ``description=``.
"""

from __future__ import annotations

import re
import socket
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import annotated_types  # noqa: E402
from pydantic import BaseModel, SecretStr  # noqa: E402
from pydantic.fields import FieldInfo  # noqa: E402

from core import settings as settings_module  # noqa: E402
from core.settings import Settings  # noqa: E402

OUTPUT = "docs/configuration.md"
TOP_LEVEL = "top level"

#: defaults computed on the machine that renders would make the file differ from one host to the next
_FACTORY_SHOWN: dict[Callable[[], Any], str] = {socket.gethostname: "the host name"}


@dataclass(frozen=True)
class Setting:
    """One documented setting: its path in ``Settings`` (``("qdrant", "url")``) and its pydantic field."""

    path: tuple[str, ...]
    field: FieldInfo

    @property
    def env(self) -> str:
        return settings_module.ENV_PREFIX + "__".join(self.path).upper()

    @property
    def yaml(self) -> str:
        return yaml_key(self.path)

    @property
    def section(self) -> str:
        key = self.yaml
        return key.split(".", 1)[0] if "." in key else TOP_LEVEL

    @property
    def secret(self) -> bool:
        return self.path in set(getattr(settings_module, "SECRET_FIELDS", ())) or SecretStr in _leaves(
            self.field.annotation
        )


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The settings group a field holds (``qdrant: QdrantSettings``), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def all_fields(model: type[BaseModel] = Settings, prefix: tuple[str, ...] = ()) -> Iterator[Setting]:
    """Every field, groups included (``qdrant``) and then their own fields (``qdrant.url``), in class order."""
    for name, field in model.model_fields.items():
        path = (*prefix, name)
        yield Setting(path, field)
        nested = _nested_model(field.annotation)
        if nested is not None:
            yield from all_fields(nested, path)


def documented() -> list[Setting]:
    """The rows of the table: every field that holds a value (a group's own row would say nothing)."""
    return [s for s in all_fields() if _nested_model(s.field.annotation) is None]


def yaml_key(path: tuple[str, ...]) -> str:
    """The YAML location of a field, from YAML_KEYS read backwards; a field it does not name is a top-level key."""
    reverse = {field: key for key, field in getattr(settings_module, "YAML_KEYS", {}).items()}
    for cut in range(len(path), 0, -1):
        head = ".".join(path[:cut])
        if head in reverse:
            return ".".join([reverse[head], *path[cut:]])
    return ".".join(path)


def _leaves(annotation: Any) -> list[Any]:
    if get_origin(annotation) in (Union, types.UnionType):
        return [leaf for arg in get_args(annotation) for leaf in _leaves(arg)]
    return [annotation]


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    # separators only where digits are hard to count (ports and powers of two stay as written)
    return f"{value:,}" if isinstance(value, int) and abs(value) >= 1_000_000 else str(value)


def _size(value: int) -> str:
    for unit, power in (("GiB", 3), ("MiB", 2), ("KiB", 1)):
        if value >= 1024**power and value % 1024**power == 0:
            return f" ({value // 1024**power} {unit})"
    return ""


def default_text(setting: Setting) -> str:
    """The default as the reader would write it: ``none``, ``empty``, `true`, a list, bytes with their unit."""
    field = setting.field
    if field.default_factory is not None:
        factory: Any = field.default_factory
        if factory in _FACTORY_SHOWN:
            return _FACTORY_SHOWN[factory]
        try:
            value = factory()
        except TypeError:  # a factory that takes the fields validated so far (pydantic >= 2.10)
            value = factory({})
    else:
        value = field.default
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list | tuple | dict | str) and not value:
        return "empty"
    if isinstance(value, list | tuple):
        return ", ".join(f"`{item}`" for item in value)
    if isinstance(value, int | float):
        shown = f"`{_number(value)}`"
        return shown + (_size(value) if "bytes" in setting.path[-1] and isinstance(value, int) else "")
    return f"`{value}`"


_NAMES: dict[Any, tuple[str, str]] = {
    bool: ("bool", "bools"),
    int: ("integer", "integers"),
    float: ("number", "numbers"),
    str: ("text", "texts"),
    SecretStr: ("text", "texts"),
}


def _type_name(annotation: Any, plural: bool = False) -> str:
    origin = get_origin(annotation)
    if origin is Literal:
        return " / ".join(f"`{value}`" for value in get_args(annotation))
    if origin in (list, tuple):
        (item, *_) = get_args(annotation) or (Any,)
        return f"list of {_type_name(item, plural=True)}"
    if origin is dict or _nested_model(annotation) is not None:
        return "mappings" if plural else "mapping"
    if annotation in _NAMES:
        return _NAMES[annotation][plural]
    return getattr(annotation, "__name__", str(annotation))


def type_text(setting: Setting) -> str:
    """The accepted values: the type (or the choices) and the bounds the field checks."""
    leaves = [leaf for leaf in _leaves(setting.field.annotation) if leaf is not type(None)]
    text = " or ".join(_type_name(leaf) for leaf in leaves)
    low = high = above = below = None
    bounds: list[str] = []
    for rule in setting.field.metadata:
        if isinstance(rule, annotated_types.Ge):
            low = _number(rule.ge)
        elif isinstance(rule, annotated_types.Gt):
            above = _number(rule.gt)
        elif isinstance(rule, annotated_types.Le):
            high = _number(rule.le)
        elif isinstance(rule, annotated_types.Lt):
            below = _number(rule.lt)
        elif isinstance(rule, annotated_types.MinLen) and rule.min_length > 0:
            bounds.append("not empty" if rule.min_length == 1 else f"at least {rule.min_length}")
        elif isinstance(rule, annotated_types.MaxLen):
            bounds.append(f"at most {_number(rule.max_length)} long")
        elif getattr(rule, "pattern", None):
            bounds.append(f"matching `{rule.pattern}`")
    if low is not None and high is not None:
        bounds.insert(0, f"{low}–{high}")
    else:
        lower = f"≥ {low}" if low is not None else f"> {above}" if above is not None else None
        upper = f"≤ {high}" if high is not None else f"< {below}" if below is not None else None
        bounds[:0] = [b for b in (lower, upper) if b]
    return ", ".join([text, *bounds])


def _cell(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().replace("|", "\\|")


def _linked(text: str) -> str:
    """``docs/models.md`` in a description becomes a link that works from docs/ itself."""
    return re.sub(r"\bdocs/([a-z0-9_-]+\.md)", r"[\1](\1)", text)


def meaning(setting: Setting) -> str:
    text = _linked(setting.field.description or "")
    if setting.secret:
        text = f"**secret**: {text}"
    return text


HEADER = """\
# Configuration

<!-- Generated by scripts/gen_docs.py from core/settings.py: edit the descriptions there and run
     `make schemas`; tests/unit/test_docs.py fails while this file is stale. -->

Defaults < YAML file < environment. The YAML file is `./faust.yml` unless
`--config FILE` (`python -m app`, `scripts/test_worker.py`) or
`VECTORIZE_WORKER_CONFIG` names another; the product documentation's
`config/worker.yaml` layout loads as is (`config/worker.yaml` is that file).
Top-level YAML keys named like a setting (`max_task_bytes: 8388608`) work too.
In the environment, a nested setting joins its parts with `__`
(`VECTORIZE_WORKER_QDRANT__URL`); lists are comma-separated
(`VECTORIZE_WORKER_VECTOR_DBS=weaviate,qdrant`); mappings are JSON. Sizes in
bytes for the model budgets accept `2GiB`, `1.5G`, `512MiB` (binary) or
`500MB` (decimal).

An invalid value stops start-up with one message that names every bad field,
its environment variable, its YAML key and the accepted values:

```
vectorize-worker: Invalid configuration (1 problem(s)); the worker will not start:
  - device (env VECTORIZE_WORKER_DEVICE, YAML device.type): got 'gpu'; Input should be 'auto', 'cpu', 'cuda' or 'mps'
```

Settings marked **secret** can also come from a file: `VECTORIZE_WORKER_<NAME>_FILE`
names one, or `secrets_dir` holds one named like the variable without its
prefix, in lower case; they are never printed ([security](security.md)).
Kafka's SASL and TLS settings are explained with an example in
[security](security.md#kafka-sasl-and-tls).

One table per YAML section, in the order of the fields in `core/settings.py`.
"""


def render_configuration() -> str:
    sections: dict[str, list[Setting]] = {}
    for setting in documented():
        sections.setdefault(setting.section, []).append(setting)
    parts = [HEADER]
    for section, rows in sections.items():
        title = f"`{section}`" if section != TOP_LEVEL else TOP_LEVEL
        parts.append(f"\n## {title}\n\n")
        parts.append("| environment | YAML | default | accepts | meaning |\n|---|---|---|---|---|\n")
        for s in rows:
            cells = [f"`{s.env}`", f"`{s.yaml}`", default_text(s), type_text(s), meaning(s)]
            parts.append("| " + " | ".join(_cell(c) for c in cells) + " |\n")
    return "".join(parts)


def render() -> dict[str, str]:
    return {OUTPUT: render_configuration()}


if __name__ == "__main__":
    for rel, text in render().items():
        (ROOT / rel).write_text(text, encoding="utf-8")
        print(f"wrote {rel}")
