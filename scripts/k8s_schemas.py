"""Offline JSON Schemas for kubeconform (scripts/k8s_check.sh): Kubernetes' own and those of CRDs.

    python scripts/k8s_schemas.py kubernetes WHEEL VERSION OUT_DIR
    python scripts/k8s_schemas.py crd CRD.yaml OUT_DIR

``kubernetes``: takes the strict schemas of Kubernetes ``VERSION`` (``1.33.0``) from the wheel of the PyPI
package ``kubernetes-validate`` into ``OUT_DIR/v<VERSION>-local-strict/`` (kubeconform's
``{{ .NormalizedKubernetesVersion }}-local-strict/{{ .ResourceKind }}{{ .KindSuffix }}.json``). Their
``$ref`` point at ``https://kubernetes.io/api/_definitions.json`` through their ``$id``, which kubeconform
would fetch: the ids are dropped and the references made relative to the file beside them.

``crd``: a CustomResourceDefinition's openAPIV3Schema as ``OUT_DIR/<group>/<kind lower>_<version>.json`` for
each served version (``{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json``). Strict, as the
Kubernetes schemas are: an object with declared properties accepts no other key unless the CRD says
``x-kubernetes-preserve-unknown-fields``; ``x-kubernetes-int-or-string`` accepts an integer or a string;
``nullable`` accepts null. Used for KEDA's ScaledObject and TriggerAuthentication.
"""

from __future__ import annotations

import json
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any

import yaml


def convert(node: Any) -> Any:
    """One OpenAPI v3 schema node (and everything under it) as a strict JSON Schema node."""
    if isinstance(node, list):
        return [convert(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-"):
            continue
        if key in ("properties", "patternProperties", "definitions") and isinstance(value, dict):
            out[key] = {name: convert(sub) for name, sub in value.items()}  # a map of names to schemas
        else:
            out[key] = convert(value)
    out.pop("nullable", None)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


def schemas(crd: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"<group>/<kind lower>_<version>.json": schema}`` for each served version of ``crd``."""
    if crd.get("kind") != "CustomResourceDefinition":
        raise SystemExit(f"k8s_schemas: {crd.get('kind')!r} is not a CustomResourceDefinition; pass a CRD file")
    spec = crd["spec"]
    group, kind = spec["group"], spec["names"]["kind"]
    out = {}
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        schema = version.get("schema", {}).get("openAPIV3Schema")
        if schema is None:
            raise SystemExit(f"k8s_schemas: {kind} {version['name']} has no openAPIV3Schema to convert")
        converted = convert(schema)
        props = converted.setdefault("properties", {})
        props["apiVersion"] = {"type": "string", "enum": [f"{group}/{version['name']}"]}
        props["kind"] = {"type": "string", "enum": [kind]}
        props["metadata"] = {"type": "object"}  # checked by the API server's ObjectMeta, not the CRD
        converted["required"] = sorted({*converted.get("required", []), "apiVersion", "kind", "metadata"})
        converted["$schema"] = "http://json-schema.org/draft-07/schema#"
        out[f"{group}/{kind.lower()}_{version['name']}.json"] = converted
    return out


DEFINITIONS_ID = "https://kubernetes.io/api/_definitions.json"


def kubernetes_schemas(wheel: Path, version: str, target: Path) -> Path:
    """Extract Kubernetes ``version``'s strict schemas from the kubernetes-validate ``wheel``; returns the folder."""
    prefix = f"kubernetes_validate/kubernetes-json-schema/v{version}-local-strict/"
    folder = target / f"v{version}-local-strict"
    if (folder / "_definitions.json").is_file():
        return folder  # done before (the folder appears whole, by a rename)
    with zipfile.ZipFile(wheel) as archive:
        names = [name for name in archive.namelist() if name.startswith(prefix) and name.endswith(".json")]
        if not names:
            versions = sorted({n.split("/")[2] for n in archive.namelist() if n.count("/") >= 3 and "strict" in n})
            raise SystemExit(
                f"k8s_schemas: {wheel.name} has no schemas for Kubernetes {version}; pick one of "
                f"{', '.join(v.removeprefix('v').removesuffix('-local-strict') for v in versions)}"
            )
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for name in names:
            schema = json.loads(archive.read(name))
            schema.pop("$id", None)
            text = json.dumps(schema).replace(f'"{DEFINITIONS_ID}#', '"_definitions.json#')
            text = text.replace('"/api/_definitions.json#', '"_definitions.json#')
            (partial / name.removeprefix(prefix)).write_text(text, encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    print(f"k8s_schemas: Kubernetes {version}: {len(names)} schemas in {folder}")
    return folder


def main(argv: list[str]) -> int:
    if len(argv) == 5 and argv[1] == "kubernetes":
        kubernetes_schemas(Path(argv[2]), argv[3], Path(argv[4]))
        return 0
    if len(argv) != 4 or argv[1] != "crd":
        print(
            "usage: python scripts/k8s_schemas.py kubernetes WHEEL VERSION OUT_DIR\n"
            "       python scripts/k8s_schemas.py crd CRD.yaml OUT_DIR",
            file=sys.stderr,
        )
        return 2
    source, target = Path(argv[2]), Path(argv[3])
    for document in yaml.safe_load_all(source.read_text(encoding="utf-8")):
        if not document:
            continue
        for name, schema in schemas(document).items():
            path = target / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            print(f"k8s_schemas: {source.name} -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
