"""Write ``kserve_crd_subset.json``: the parts of KServe's CRD schemas that our manifests use.

The full CRDs are 2 MB of YAML (the InferenceService one inlines the whole pod spec several
times). This keeps, from each CRD's ``openAPIV3Schema``, every property name at every level
our manifests reach, with the full schema (types, enums, required, patterns) of the
properties they set; a property they do not set keeps only its name and type. Descriptions
and CEL rules (``x-kubernetes-validations``, none in these CRDs) are dropped.

Source: github.com/kserve/kserve, ``config/crd/full/serving.kserve.io_{servingruntimes,
inferenceservices}.yaml`` (chart version in ``charts/kserve-crd/Chart.yaml``). To refresh
after a KServe upgrade or a new field in ``deploy/k8s/kserve/``::

    python tests/deploy/extract_kserve_schema.py KSERVE_CHECKOUT COMMIT VERSION
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).with_name("kserve_crd_subset.json")
CRDS = {"ServingRuntime": "serving.kserve.io_servingruntimes.yaml",
        "InferenceService": "serving.kserve.io_inferenceservices.yaml"}
MANIFESTS = {"ServingRuntime": "servingruntime.yaml", "InferenceService": "inferenceservice.yaml"}
KEEP = ("type", "required", "enum", "format", "pattern", "minimum", "maximum", "minLength", "maxLength",
        "minItems", "maxItems", "anyOf", "nullable", "x-kubernetes-int-or-string",
        "x-kubernetes-preserve-unknown-fields", "x-kubernetes-embedded-resource")


def prune(schema: dict[str, Any], instances: list[Any]) -> dict[str, Any]:
    """``schema`` cut down to what ``instances`` (values it validates) reach.

    Example:
        >>> prune({"type": "object", "description": "d", "properties": {
        ...     "a": {"type": "string", "description": "x"}, "b": {"type": "object", "properties": {}}}},
        ...     [{"a": "v"}])
        {'type': 'object', 'properties': {'a': {'type': 'string'}, 'b': {'type': 'object'}}}
    """
    out = {k: schema[k] for k in KEEP if k in schema}
    if not instances:
        return {k: out[k] for k in ("type", "x-kubernetes-int-or-string", "anyOf") if k in out}
    if "properties" in schema:
        dicts = [i for i in instances if isinstance(i, dict)]
        out["properties"] = {name: prune(sub, [d[name] for d in dicts if name in d])
                             for name, sub in schema["properties"].items()}
    if isinstance(schema.get("additionalProperties"), dict):
        values = [v for i in instances if isinstance(i, dict) for v in i.values()]
        out["additionalProperties"] = prune(schema["additionalProperties"], values)
    if "items" in schema:
        out["items"] = prune(schema["items"], [v for i in instances if isinstance(i, list) for v in i])
    return out


def extract(kserve: Path, commit: str, version: str) -> dict[str, Any]:
    """The subset for both CRDs, with where it came from."""
    crds = {}
    for kind, file in CRDS.items():
        crd = yaml.safe_load((kserve / "config/crd/full" / file).read_text(encoding="utf-8"))
        (served,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
        manifest = yaml.safe_load((ROOT / "deploy/k8s/kserve" / MANIFESTS[kind]).read_text(encoding="utf-8"))
        crds[kind] = {"apiVersion": f"{crd['spec']['group']}/{served['name']}",
                      "schema": prune(served["schema"]["openAPIV3Schema"], [manifest])}
    return {"source": f"https://github.com/kserve/kserve/tree/{commit}/config/crd/full",
            "kserve_version": version, "crds": crds}


if __name__ == "__main__":
    checkout, commit, version = sys.argv[1:4]
    OUT.write_text(json.dumps(extract(Path(checkout), commit, version), indent=1, sort_keys=True) + "\n",
                   encoding="utf-8")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
