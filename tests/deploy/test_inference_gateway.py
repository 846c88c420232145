"""The model-server protocol of the Gateway API Inference Extension, as deploy/kubernetes wires tokserve into it:
the metrics that the endpoint picker and the autoscaler are configured to read exist on a real /metrics with the
types and meaning the protocol asks for (queued requests, running requests: gauges; KV-cache use: a gauge in 0-1),
and the pool, the picker, the route, the HPA and the adapter's rule name each other consistently.

The protocol (kubernetes-sigs/gateway-api-inference-extension, docs/proposals/003-model-server-protocol) fixes
types and meaning, not names: the picker is configured with tokserve's own names for a pod labelled with engine
type `tokserve`, as it is for vLLM's or SGLang's. The picker itself cannot run here: its configuration is checked
against what tokserve serves and what the other objects say, not loaded by the picker."""

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml
from kubernetes_manifests import KUBERNETES, ROOT, Object, container, find, port_number, render
from prometheus_client.parser import text_string_to_metric_families

PICKER_CONFIG = KUBERNETES / "inference-gateway" / "endpoint-picker-config.yaml"
ADAPTER_VALUES = KUBERNETES / "prometheus-adapter" / "values.yaml"


def picker_config() -> Object:
    loaded: Object = yaml.safe_load(PICKER_CONFIG.read_text())
    return loaded


def plugin(config: Object, kind: str) -> Object:
    found: Object = next(item for item in config["plugins"] if item["type"] == kind)
    return found


def arguments(deployment: Object, name: str) -> dict[str, str]:
    """A container's `--flag=value` arguments, by flag."""
    return dict(argument.removeprefix("--").split("=", 1) for argument in container(deployment, name)["args"])


def metric_names() -> Iterator[tuple[str, str]]:
    """(where, metric name) for every tokserve metric the manifests and the adapter's rule name."""
    engine = plugin(picker_config(), "core-metrics-extractor")["parameters"]["engineConfigs"][0]
    for spec in ("queuedRequestsSpec", "runningRequestsSpec", "kvUsageSpec"):
        yield f"endpoint picker {spec}", engine[spec]
    for metric in find(render("overlays/cpu"), "HorizontalPodAutoscaler")["spec"]["metrics"]:
        yield "HorizontalPodAutoscaler", metric["pods"]["metric"]["name"]
    for rule in yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]:
        selector = re.fullmatch(r"(\w+)\{.*\}", rule["seriesQuery"])
        assert selector, rule["seriesQuery"]
        yield "adapter seriesQuery", selector.group(1)


def scrape(http: httpx.Client) -> dict[str, Any]:
    """GET /metrics, parsed as Prometheus parses it: metric family name -> family."""
    reply = http.get("/metrics")
    assert reply.status_code == 200
    return {family.name: family for family in text_string_to_metric_families(reply.text)}


def test_metrics_named_in_the_manifests_are_gauges_on_a_real_server(http: httpx.Client) -> None:
    families = scrape(http)
    for where, name in metric_names():
        assert name in families, f"{where}: {name} is not on /metrics"
        assert families[name].type == "gauge", f"{where}: {name} is a {families[name].type}"
        [sample] = families[name].samples  # one value per pod: no labels to choose between
        assert sample.value >= 0
    engine = plugin(picker_config(), "core-metrics-extractor")["parameters"]["engineConfigs"][0]
    [usage] = families[engine["kvUsageSpec"]].samples
    assert 0 <= usage.value <= 1  # a fraction, as vLLM's kv_cache_usage_perc is, not a percentage


def test_running_requests_count_a_stream_in_flight(
    base_url: str, http: httpx.Client, wait_idle: Callable[[], None]
) -> None:
    engine = plugin(picker_config(), "core-metrics-extractor")["parameters"]["engineConfigs"][0]
    body = {"prompt": "Once upon a time", "max_tokens": 256, "ignore_eos": True, "temperature": 0, "stream": True}
    with (
        httpx.Client(base_url=base_url, timeout=120) as streaming,
        streaming.stream("POST", "/v1/completions", json=body) as response,
    ):
        assert response.status_code == 200
        next(line for line in response.iter_lines() if line.startswith("data: "))  # the first token is out
        [running] = scrape(http)[engine["runningRequestsSpec"]].samples
        assert running.value >= 1
    wait_idle()  # the stream closed early is cancelled at the worker's next step; later tests count from idle


def test_picker_reads_tokserve_pods_by_their_engine_type() -> None:
    extractor = plugin(picker_config(), "core-metrics-extractor")["parameters"]
    [engine] = extractor["engineConfigs"]
    labels = find(render("overlays/cpu"), "Deployment", "tokserve")["spec"]["template"]["metadata"]["labels"]
    assert labels["llm-d.ai/engine-type"] == engine["name"] == extractor["defaultEngine"]
    # No LoRA adapters and no cache-info gauge: empty specs keep the picker from looking for vLLM's names.
    assert engine["loraSpec"] == engine["cacheInfoSpec"] == ""


def test_picker_scores_queue_kv_cache_and_prefix_and_pins_sessions() -> None:
    config = picker_config()
    assert (config["apiVersion"], config["kind"]) == ("llm-d.ai/v1alpha1", "EndpointPickerConfig")
    [profile] = config["schedulingProfiles"]
    used = {entry["pluginRef"] for entry in profile["plugins"]}
    assert {"queue-scorer", "kv-cache-utilization-scorer", "prefix-cache-scorer", "session-affinity-filter"} <= used
    affinity = plugin(config, "session-affinity-filter")["parameters"]
    assert affinity["strategy"] == "session_id"
    # The same header as nginx's session key in the compose `scale` profile: clients set it once for both.
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    assert affinity["sessionIdConfig"]["sources"] == [{"header": "x-session-id"}] and "$http_x_session_id" in nginx
    # session-affinity-filter is an Alpha plugin in llm-d-router v0.10.0: the picker refuses it without this flag.
    picker = find(render("inference-gateway"), "Deployment", "tokserve-epp")
    assert arguments(picker, "epp")["allow-experimental-plugins"] == "true"


def test_pool_picker_route_and_gateway_name_each_other() -> None:
    objects = render("inference-gateway")
    pool = find(objects, "InferencePool", "tokserve")
    picker = find(objects, "Deployment", "tokserve-epp")
    flags = arguments(picker, "epp")
    tokserve = container(find(render("overlays/cpu"), "Deployment", "tokserve"), "tokserve")
    assert [port["number"] for port in pool["spec"]["targetPorts"]] == [port_number(tokserve, "http")]
    assert (flags["pool-name"], flags["pool-group"]) == (pool["metadata"]["name"], pool["apiVersion"].split("/")[0])
    # The gateway calls the picker's Service on the pool's port, which reaches the picker's gRPC port.
    reference = pool["spec"]["endpointPickerRef"]
    service = find(objects, "Service", reference["name"])
    [port] = [port for port in service["spec"]["ports"] if port["port"] == reference["port"]["number"]]
    assert port_number(container(picker, "epp"), port["targetPort"]) == int(flags["grpc-port"])
    assert service["spec"]["selector"].items() <= picker["spec"]["template"]["metadata"]["labels"].items()
    # Its configuration file is the generated ConfigMap's, mounted where --config-file points.
    config_file = Path(flags["config-file"])
    [mount] = [
        mount for mount in container(picker, "epp")["volumeMounts"] if mount["mountPath"] == str(config_file.parent)
    ]
    [volume] = [volume for volume in picker["spec"]["template"]["spec"]["volumes"] if volume["name"] == mount["name"]]
    config_map = find(objects, "ConfigMap", volume["configMap"]["name"])
    assert yaml.safe_load(config_map["data"][config_file.name]) == picker_config()
    # The route sends everything to the pool, through the gateway named in it.
    route = find(objects, "HTTPRoute", "tokserve")["spec"]
    [rule] = route["rules"]
    [backend] = rule["backendRefs"]
    assert (backend["group"], backend["kind"], backend["name"]) == (
        "inference.networking.k8s.io",
        "InferencePool",
        "tokserve",
    )
    assert [parent["name"] for parent in route["parentRefs"]] == [find(objects, "Gateway")["metadata"]["name"]]


def test_adapter_rule_serves_the_metric_the_hpa_asks_for() -> None:
    [metric] = find(render("overlays/cpu"), "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    [rule] = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    assert re.fullmatch(rule["name"]["matches"], metric["pods"]["metric"]["name"])
    # Per pod: the series' namespace and pod labels map onto the objects the HPA asks about.
    overrides = rule["resources"]["overrides"]
    assert (overrides["namespace"]["resource"], overrides["pod"]["resource"]) == ("namespace", "pod")
    assert "<<.Series>>{<<.LabelMatchers>>}" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
