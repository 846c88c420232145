"""deploy/kubernetes checked without a cluster: each rendering (`kubectl kustomize` of an overlay and of the
inference-gateway directory) against Kubernetes' own schemas for the oldest and the newest version we claim, and
the custom resources against their vendored CRDs; the Deployment against the server it runs (its variables are
valid flags, its port, probes, drain and writable paths agree with them) and against the image (user, cache).

Not checked here, since it needs a cluster: admission (quotas, policies), the CRDs' CEL rules (InferencePool's two
are checked by hand below), scheduling onto GPU nodes, and the drain as the kubelet times it."""

import json
import os
import re
from typing import Any

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_manifests import (
    KUBERNETES,
    RENDERINGS,
    ROOT,
    Object,
    container,
    custom_resource_schemas,
    env,
    find,
    port_number,
    render,
)

from tokserve.config import Settings, default_responses_db

# The oldest Kubernetes these manifests are for (managed services' extended support still runs 1.33, past upstream's
# own window; the preStop `sleep` action needs 1.30) and the newest that kubernetes-validate 1.37.0 has schemas for.
KUBERNETES_VERSIONS = ("1.33", "1.37")
DOCKERFILE = (ROOT / "Dockerfile").read_text()


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("directory", ["base", *RENDERINGS])
def test_renderings_follow_the_schemas(directory: str, version: str) -> None:
    custom = custom_resource_schemas()
    for item in render(directory):
        where = f"{item['kind']}/{item['metadata']['name']}"
        if (item["apiVersion"], item["kind"]) in custom:
            schema = custom[item["apiVersion"], item["kind"]]
            errors = [error.message for error in jsonschema.Draft202012Validator(schema).iter_errors(item)]
            assert not errors, f"{where}: {errors}"
        else:  # anything else must be Kubernetes' own: a kind with no schema at all fails here too
            try:
                kubernetes_validate.validate(item, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{where} on Kubernetes {version}: {'.'.join(map(str, error.path))}: {error.message}")


def test_inference_pool_keeps_the_rules_its_crd_checks_in_cel() -> None:
    pool = find(render("inference-gateway"), "InferencePool")["spec"]
    # "port is required when kind is 'Service' or unspecified"; "port number must be unique".
    assert pool["endpointPickerRef"].get("kind", "Service") != "Service" or "port" in pool["endpointPickerRef"]
    numbers = [port["number"] for port in pool["targetPorts"]]
    assert len(numbers) == len(set(numbers))


def test_every_manifest_is_rendered() -> None:
    for path in KUBERNETES.rglob("*.yaml"):
        if path.name in {"kustomization.yaml", "values.yaml", "endpoint-picker-config.yaml"}:
            continue  # the kustomizations, the adapter chart's values, the picker's file (in a ConfigMap)
        directory = str(path.parent.relative_to(KUBERNETES))
        rendered = {(item["kind"], item["metadata"]["name"]) for item in render(directory)}
        for item in yaml.safe_load_all(path.read_text()):
            assert (item["kind"], item["metadata"]["name"]) in rendered, path


def server_settings(monkeypatch: pytest.MonkeyPatch, tokserve: Object) -> Settings:
    """The Settings `tokserve serve` builds from the container's environment (a Secret's value stands in)."""
    for name in [name for name in os.environ if name.startswith("TOKSERVE_")]:
        monkeypatch.delenv(name)
    for name, item in env(tokserve).items():
        if name.startswith("TOKSERVE_"):
            monkeypatch.setenv(name, item.get("value", "key-one,key-two"))
    return Settings()


@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu"])
def test_deployment_agrees_with_the_server_flags(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    objects = render(overlay)
    deployment = find(objects, "Deployment", "tokserve")
    pod, tokserve = deployment["spec"]["template"]["spec"], container(deployment, "tokserve")
    settings = server_settings(monkeypatch, tokserve)  # every TOKSERVE_* variable is a valid flag
    assert settings.host == "0.0.0.0"  # the pod's address, where probes and peers reach it
    assert port_number(tokserve, "http") == settings.port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        check = tokserve[probe].get("httpGet") or tokserve[probe]["tcpSocket"]
        assert port_number(tokserve, check["port"]) == settings.port, probe
    service = find(objects, "Service", "tokserve")["spec"]
    assert [port_number(tokserve, port["targetPort"]) for port in service["ports"]] == [settings.port]
    # Keys come from the Secret, never from the manifest.
    assert "secretKeyRef" in env(tokserve)["TOKSERVE_API_KEYS"]["valueFrom"] and len(settings.api_keys) == 2
    # The kubelet's SIGKILL comes after preStop plus the drain plus the 10 s the server needs to end what is left.
    pre_stop = tokserve["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + settings.drain_timeout + 10
    # Loading the model may take as long as compose allows (start_period 10m) before the container is restarted.
    startup = tokserve["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600


def test_service_links_stay_off_since_they_would_set_the_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """With service links on, the Service named tokserve injects TOKSERVE_PORT=tcp://IP:8000 into every pod of the
    namespace, overriding the image's TOKSERVE_PORT, and the server refuses to start."""
    monkeypatch.setenv("TOKSERVE_PORT", "tcp://10.96.0.12:8000")
    with pytest.raises(ValueError, match="port"):
        Settings()
    for overlay in ("overlays/cpu", "overlays/gpu"):
        assert (
            find(render(overlay), "Deployment", "tokserve")["spec"]["template"]["spec"]["enableServiceLinks"] is False
        )


def test_probes_use_health_as_the_server_answers_it(http: httpx.Client) -> None:
    tokserve = container(find(render("overlays/cpu"), "Deployment", "tokserve"), "tokserve")
    for probe in ("startupProbe", "readinessProbe"):
        path = tokserve[probe]["httpGet"]["path"]
        reply = http.get(path)
        assert (reply.status_code, reply.json()) == (200, {"status": "ready"}), probe
    # /health is 503 while draining: a liveness probe on it would kill replicas that are finishing their streams.
    assert "httpGet" not in tokserve["livenessProbe"]


def test_runs_as_the_image_user_on_a_read_only_root() -> None:
    deployment = find(render("overlays/cpu"), "Deployment", "tokserve")
    pod, tokserve = deployment["spec"]["template"]["spec"], container(deployment, "tokserve")
    user = re.search(r"^USER (\d+):(\d+)$", DOCKERFILE, re.MULTILINE)
    assert user and (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == tuple(
        map(int, user.groups())
    )
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    hardened = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
    assert tokserve["securityContext"] == hardened
    # What the server writes lies on a volume: the model cache (the image's HF_HOME), stored responses, /tmp.
    mounts = [mount["mountPath"] for mount in tokserve["volumeMounts"]]
    hf_home = re.search(r"HF_HOME=(\S+)", DOCKERFILE)
    assert hf_home and hf_home.group(1) in mounts and "/tmp" in mounts
    home = "/home/tokserve"
    assert f"useradd --create-home --uid {user.group(1)}" in DOCKERFILE and home in mounts
    assert default_responses_db({"HOME": home}).startswith(home + "/")


def test_gpu_overlay_asks_for_one_gpu_and_uses_it() -> None:
    deployment = find(render("overlays/gpu"), "Deployment", "tokserve")
    tokserve = container(deployment, "tokserve")
    resources = tokserve["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1
    assert env(tokserve)["TOKSERVE_DEVICE"]["value"] == "cuda" and tokserve["image"] == "tokserve:cuda"
    tolerations = deployment["spec"]["template"]["spec"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations


def test_cpu_overlay_sizes_threads_and_kv_cache_to_the_pod() -> None:
    tokserve = container(find(render("overlays/cpu"), "Deployment", "tokserve"), "tokserve")
    variables, resources = env(tokserve), tokserve["resources"]
    assert "nvidia.com/gpu" not in json.dumps(resources) and tokserve["image"] == "tokserve:cpu"
    assert variables["TOKSERVE_DEVICE"]["value"] == "cpu"
    # Left to defaults, torch would use every core of the node and the KV cache a quarter of the node's memory.
    assert int(variables["TOKSERVE_THREADS"]["value"]) == int(resources["requests"]["cpu"])
    assert float(variables["TOKSERVE_KV_CACHE_MEMORY"]["value"]) < gibibytes(resources["limits"]["memory"]) / 2


def gibibytes(quantity: str) -> float:
    assert quantity.endswith("Gi"), quantity  # the only unit the overlays use for memory limits
    return float(quantity.removesuffix("Gi"))


def test_replicas_are_selected_scaled_and_disrupted_together() -> None:
    objects = render("overlays/cpu")
    deployment = find(objects, "Deployment", "tokserve")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert "replicas" not in deployment["spec"]  # the HPA owns the count; a re-apply must not reset it

    def selects(selector: dict[str, Any]) -> bool:
        return selector.items() <= labels.items()

    assert selects(deployment["spec"]["selector"]["matchLabels"])
    assert selects(find(objects, "Service", "tokserve")["spec"]["selector"])
    assert selects(find(objects, "PodDisruptionBudget", "tokserve")["spec"]["selector"]["matchLabels"])
    target = find(objects, "HorizontalPodAutoscaler", "tokserve")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "tokserve")
    # The pool selects these pods, and not the endpoint picker's.
    gateway = render("inference-gateway")
    pool = find(gateway, "InferencePool", "tokserve")["spec"]
    picker = find(gateway, "Deployment", "tokserve-epp")["spec"]["template"]["metadata"]["labels"]
    assert selects(pool["selector"]["matchLabels"]) and not pool["selector"]["matchLabels"].items() <= picker.items()


def test_pod_metrics_are_announced_where_the_server_serves_them(http: httpx.Client) -> None:
    deployment = find(render("overlays/cpu"), "Deployment", "tokserve")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port_number(container(deployment, "tokserve"), "http")
    assert http.get(annotations["prometheus.io/path"]).status_code == 200
