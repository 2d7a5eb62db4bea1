"""The Kubernetes manifests in cluster/ against the APIs a cluster would check them with, no cluster needed.

Core objects (and the pod templates inside the RayJob) against Kubernetes' own schemas, strict as `kubectl apply`
is (kubernetes-validate); the RayJob against the RayJob API of KubeRay v1.5.1 (tests/schemas/, made from that
release's CRD by tests/schemas/vendor_kuberay.py). A misspelt key, a key at the wrong level or a value of the
wrong type fails, as the negative cases below show.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource

from search import run

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ("rayjob.yaml", "rayjob-s3.yaml")
KUBERAY = "v1.5.1"  # the oldest KubeRay with token authentication (rayClusterSpec.authOptions)
KUBERNETES = "1.30"  # an older Kubernetes than most labs run: fields it knows, every newer one knows too

_STRICT = resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{KUBERNETES}.0-local-strict"
_CORE = Resource.from_contents(json.loads((_STRICT / "_definitions.json").read_text()))
RAYJOB = jsonschema.Draft202012Validator(
    json.loads((ROOT / "tests" / "schemas" / f"kuberay-{KUBERAY}-rayjob.json").read_text()),
    registry=_CORE @ Registry(),
)


def load(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((ROOT / "cluster" / name).read_text()) if d]


def problems(docs: list[dict]) -> list[str]:
    """What a cluster would refuse in these objects, one line each: `kind/name: path: message`."""
    out = []
    for doc in docs:
        where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if doc.get("apiVersion") == "ray.io/v1":
            out += [f"{where}: {e.json_path}: {e.message}" for e in RAYJOB.iter_errors(doc)]
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as e:
            out.append(f"{where}: {e.json_path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            out.append(f"{where}: {e.message}")
    return out


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_is_what_kubernetes_and_kuberay_accept(name):
    docs = load(name)
    assert [d["kind"] for d in docs].count("RayJob") == 1
    assert problems(docs) == []


def rayjob(docs: list[dict]) -> dict:
    return next(d for d in docs if d["kind"] == "RayJob")


def cluster(docs: list[dict]) -> dict:
    return rayjob(docs)["spec"]["rayClusterSpec"]


def head(docs: list[dict]) -> dict:
    return cluster(docs)["headGroupSpec"]["template"]["spec"]["containers"][0]


def pvc(docs: list[dict]) -> dict:
    return next(d for d in docs if d["kind"] == "PersistentVolumeClaim")


def rename(d: dict, old: str, new: str) -> None:
    d[new] = d.pop(old)


# Each mistake, and where in the object the error must point.
MISTAKES = {
    "misspelt RayJob field": (
        lambda docs: rename(rayjob(docs)["spec"], "shutdownAfterJobFinishes", "shutdownAfterJobFinish"),
        "$.spec",
    ),
    "misspelt cluster field": (
        lambda docs: rename(cluster(docs), "workerGroupSpecs", "workerGroupSpec"),
        "$.spec.rayClusterSpec",
    ),
    "rayStartParams one level up": (
        lambda docs: cluster(docs).update(rayStartParams=cluster(docs)["headGroupSpec"].pop("rayStartParams")),
        "$.spec.rayClusterSpec",
    ),
    "entrypoint inside the cluster": (
        lambda docs: cluster(docs).update(entrypoint=rayjob(docs)["spec"].pop("entrypoint")),
        "$.spec.rayClusterSpec",
    ),
    "replicas inside the pod template": (
        lambda docs: cluster(docs)["workerGroupSpecs"][0]["template"].update(replicas=2),
        "$.spec.rayClusterSpec.workerGroupSpecs[0].template",
    ),
    "a number where rayStartParams takes strings": (
        lambda docs: cluster(docs)["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),
        "$.spec.rayClusterSpec.headGroupSpec.rayStartParams['num-cpus']",
    ),
    "replicas as a string": (
        lambda docs: cluster(docs)["workerGroupSpecs"][0].update(replicas="2"),
        "$.spec.rayClusterSpec.workerGroupSpecs[0].replicas",
    ),
    "an unknown auth mode": (
        lambda docs: cluster(docs)["authOptions"].update(mode="tokens"),
        "$.spec.rayClusterSpec.authOptions.mode",
    ),
    "worker group without a name": (
        lambda docs: cluster(docs)["workerGroupSpecs"][0].pop("groupName"),
        "$.spec.rayClusterSpec.workerGroupSpecs[0]",
    ),
    "misspelt container field": (
        lambda docs: rename(head(docs), "volumeMounts", "volumeMount"),
        "$.spec.rayClusterSpec.headGroupSpec.template.spec.containers[0]",
    ),
    "image on the pod, not the container": (
        lambda docs: cluster(docs)["headGroupSpec"]["template"]["spec"].update(image=head(docs).pop("image")),
        "$.spec.rayClusterSpec.headGroupSpec.template.spec",
    ),
    "misspelt secret reference": (
        lambda docs: rename(head(docs)["env"][0]["valueFrom"], "secretKeyRef", "secretRef"),
        "$.spec.rayClusterSpec.headGroupSpec.template.spec.containers[0].env[0].valueFrom",
    ),
    "an env value that is a number": (
        lambda docs: head(docs)["env"].append({"name": "OMP_NUM_THREADS", "value": 2}),
        "$.spec.rayClusterSpec.headGroupSpec.template.spec.containers[0].env[4].value",
    ),
    "misspelt kind": (lambda docs: rayjob(docs).update(kind="RayJobs"), "$.kind"),
}
CORE_MISTAKES = {  # the PersistentVolumeClaim of rayjob.yaml, against Kubernetes' own schema
    "misspelt PVC field": (lambda docs: rename(pvc(docs)["spec"], "accessModes", "accessMode"), "$.spec"),
    "storage request one level up": (
        lambda docs: pvc(docs)["spec"].update(storage=pvc(docs)["spec"]["resources"].pop("requests")["storage"]),
        "$.spec",
    ),
    "access modes as a string": (
        lambda docs: pvc(docs)["spec"].update(accessModes="ReadWriteMany"),
        "$.spec.accessModes",
    ),
}


@pytest.mark.parametrize("name", MANIFESTS)
@pytest.mark.parametrize("mistake", MISTAKES)
def test_a_mistake_in_the_rayjob_is_refused_where_it_is(name, mistake):
    docs = load(name)
    mutate, where = MISTAKES[mistake]
    mutate(docs)
    found = problems(docs)
    assert len(found) == 1, found
    assert f"/vgg-search: {where}: " in found[0], found


@pytest.mark.parametrize("mistake", CORE_MISTAKES)
def test_a_mistake_in_a_core_object_is_refused_where_it_is(mistake):
    docs = load("rayjob.yaml")
    mutate, where = CORE_MISTAKES[mistake]
    mutate(docs)
    found = problems(docs)
    assert len(found) == 1, found
    assert found[0].startswith(f"PersistentVolumeClaim/vgg-search-shared: {where}: "), found


def test_an_object_kind_nobody_defines_is_refused():
    docs = [{"apiVersion": "v1", "kind": "PersistentVolumeClaimm", "metadata": {"name": "x"}, "spec": {}}]
    assert problems(docs) == [
        "PersistentVolumeClaimm/x: Couldn't find schema for kind PersistentVolumeClaimm "
        f"with api version v1 for kubernetes version {KUBERNETES}"
    ]


# --- the object-storage variant --------------------------------------------------------------------------------


def test_s3_manifest_keeps_the_record_in_a_bucket_with_credentials_from_a_secret():
    shared, s3 = load("rayjob.yaml"), load("rayjob-s3.yaml")
    assert [d["kind"] for d in s3] == ["RayJob"]  # no ReadWriteMany volume to claim
    args = run._parser().parse_args(rayjob(s3)["spec"]["entrypoint"].split()[3:])
    assert args.storage.startswith("s3://")

    pods = [cluster(s3)["headGroupSpec"]["template"], *(g["template"] for g in cluster(s3)["workerGroupSpecs"])]
    for pod in pods:
        volumes = pod["spec"]["volumes"]
        assert not [v for v in volumes if "persistentVolumeClaim" in v]
        (container,) = pod["spec"]["containers"]
        # the driver (head) and the trials (workers) both read and write the bucket: both get the keys
        assert {"secretRef": {"name": "s3-credentials"}} in container["envFrom"], container["name"]
        assert not [e for e in container.get("env", []) if e["name"].startswith("AWS_")]  # never in the manifest
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert args.data_dir in mounts  # each pod's own copy of the datasets, at the same path
        assert any(v["name"] == mounts[args.data_dir] and "emptyDir" in v for v in volumes)

    # Everything but the storage is rayjob.yaml's: the two stay one search, two ways to keep its record.
    options = lambda docs: [o for o in rayjob(docs)["spec"]["entrypoint"].split() if not o.startswith(("/", "s3:"))]
    assert options(s3) == options(shared)
    assert head(s3)["env"] == head(shared)["env"] and head(s3)["image"] == head(shared)["image"]
    for key in ("rayVersion", "authOptions"):
        assert cluster(s3)[key] == cluster(shared)[key]
