"""Write the JSON schema of KubeRay's RayJob (ray.io/v1) from the CRD of a KubeRay release.

    git clone --branch v1.5.1 https://github.com/ray-project/kuberay
    python tests/schemas/vendor_kuberay.py kuberay/ray-operator/config/crd/bases/ray.io_rayjobs.yaml v1.5.1 \
        > tests/schemas/kuberay-v1.5.1-rayjob.json

The CRD's openAPIV3Schema, turned into a JSON schema that fails where `kubectl apply` (strict field validation,
kubectl's default) fails: every object that lists its properties is closed (`additionalProperties: false`; the
CRD has no `x-kubernetes-preserve-unknown-fields`), and the CRD's copies of core types (pod templates, the head
Service, object metadata) are replaced by references to Kubernetes' own schemas (kubernetes-validate's
`_definitions.json`), which are as strict and give the same error paths. The CRD's CEL rules
(`x-kubernetes-validations`: deletionStrategy, managedBy) are not checked; the manifests use neither field.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

CORE = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s."
# Where the CRD inlines a core Kubernetes type: replaced by a reference to that type's own schema.
CORE_TYPES = {
    ("spec", "submitterPodTemplate"): "api.core.v1.PodTemplateSpec",
    ("headGroupSpec", "template"): "api.core.v1.PodTemplateSpec",
    ("workerGroupSpecs", "template"): "api.core.v1.PodTemplateSpec",
    ("headGroupSpec", "headService"): "api.core.v1.Service",
    ("", "metadata"): "apimachinery.pkg.apis.meta.v1.ObjectMeta",
}


def convert(node: dict, parent: str = "", name: str = "") -> dict:
    """One CRD (OpenAPI v3) schema node as a JSON schema node, closed where it lists its properties."""
    if (parent, name) in CORE_TYPES:
        return {"$ref": CORE + CORE_TYPES[parent, name]}
    out = {k: v for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in node:
        out["properties"] = {k: convert(v, name, k) for k, v in node["properties"].items()}
        out["additionalProperties"] = False
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = convert(node["additionalProperties"], name)
    if "items" in node:
        out["items"] = convert(node["items"], parent, name)  # a list's items answer to the list's name
    return out


def main(crd_path: str, release: str) -> None:
    crd = yaml.safe_load(Path(crd_path).read_text())
    (version,) = (v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = version["schema"]["openAPIV3Schema"]
    del schema["properties"]["status"]  # written by the operator, never by a manifest
    out = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": f"RayJob ray.io/v1 from KubeRay {release}, ray-operator/config/crd/bases/ray.io_rayjobs.yaml "
        f"(github.com/ray-project/kuberay), made by tests/schemas/vendor_kuberay.py",
        **convert(schema),
    }
    out["required"] = ["apiVersion", "kind", "metadata", "spec"]
    out["properties"]["apiVersion"] = {"const": "ray.io/v1"}
    out["properties"]["kind"] = {"const": "RayJob"}
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
