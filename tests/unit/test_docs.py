"""The docs stay true to the code: the configuration page is the settings, and every link lands.

docs/configuration.md is generated from ``core.settings`` by scripts/gen_docs.py
(``make schemas``), the way docs/task.schema.json is generated from the task
model; these tests fail when someone changes a setting without regenerating it,
adds a setting without a description, or moves a page a link points to.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.settings import read_yaml
from scripts.gen_docs import ROOT, all_fields, documented, render

DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def test_configuration_page_is_in_sync_with_the_settings() -> None:
    for rel, text in render().items():
        assert (ROOT / rel).read_text(encoding="utf-8") == text, (
            f"{rel} is stale: run `make schemas` (scripts/gen_docs.py) after changing core/settings.py"
        )


def test_every_setting_has_a_description() -> None:
    missing = [".".join(s.path) for s in all_fields() if not (s.field.description or "").strip()]
    assert not missing, f"settings without description= in core/settings.py: {', '.join(missing)}"


def test_every_setting_has_a_row() -> None:
    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    absent = [s.env for s in documented() if f"| `{s.env}` |" not in page]
    assert not absent, f"docs/configuration.md has no row for {', '.join(absent)}: run `make schemas`"


@pytest.mark.parametrize("setting", documented(), ids=lambda s: ".".join(s.path))
def test_the_yaml_key_shown_loads_into_its_setting(setting: Any, tmp_path: Path) -> None:
    # the YAML column is read backwards from YAML_KEYS: check it forwards, through the real loader
    nested: dict[str, Any] = {}
    target = nested
    *parents, leaf = setting.yaml.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[leaf] = "sentinel"
    path = tmp_path / "worker.yaml"
    path.write_text(yaml.safe_dump(nested), encoding="utf-8")
    value: Any = read_yaml(path)
    for part in setting.path:
        assert isinstance(value, dict) and part in value, f"YAML {setting.yaml} does not load into {setting.path}"
        value = value[part]
    assert value == "sentinel"


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    headings = re.findall(r"^#+\s+(.+?)\s*$", text, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_lands(page: Path) -> None:
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z]+:", target):  # http(s), mailto: not ours to check offline
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(f"{target} (no file {dest})")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {'; '.join(broken)}"


def test_the_readme_maps_every_doc() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    unmapped = [p.name for p in DOCS.glob("*.md") if f"](docs/{p.name})" not in readme]
    assert not unmapped, f"README.md's documentation map does not link {', '.join(sorted(unmapped))}: add a line"
