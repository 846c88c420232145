"""Prometheus metrics of one app, in a registry of its own (never the process-global default registry), so several
apps in one process, as in the tests, count apart. The engine's counters are read when /metrics is scraped; the
latencies and token counts are observed by the server as requests stream (`server/request_record.py`)."""

from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tokserve.engine import Counters

# Seconds: from a loaded GPU's few milliseconds to a queued CPU request's minutes.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _EngineCollector(Collector):
    """The worker's counters at scrape time: requests running and waiting now, how the others ended, and the KV
    cache: preemptions, prefix-cache lookups and hits (in tokens), blocks in use."""

    def __init__(self, counters: Callable[[], Counters | None]) -> None:
        self._counters = counters

    def collect(self) -> Iterator[Metric]:
        counters = self._counters() or Counters()
        yield GaugeMetricFamily("tokserve_requests_running", "Requests generating now", value=counters.running)
        yield GaugeMetricFamily("tokserve_requests_waiting", "Requests queued for the worker", value=counters.waiting)
        ended = CounterMetricFamily(
            "tokserve_engine_requests_ended", "Generations the worker ended, by outcome", labels=["outcome"]
        )
        for outcome in ("finished", "cancelled", "failed"):
            ended.add_metric([outcome], getattr(counters, outcome))
        yield ended
        yield CounterMetricFamily(
            "tokserve_requests_preempted",
            "Times a running request was paused for lack of KV-cache blocks (it resumes later)",
            value=counters.preempted,
        )
        yield CounterMetricFamily(
            "tokserve_prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache",
            value=counters.prefix_cache_queries,
        )
        yield CounterMetricFamily(
            "tokserve_prefix_cache_hits", "Prompt tokens found in the prefix cache", value=counters.prefix_cache_hits
        )
        yield GaugeMetricFamily(
            "tokserve_kv_cache_usage_ratio",
            "Share of the KV cache's blocks held by requests (0-1)",
            value=counters.kv_cache_usage,
        )


class Metrics:
    """The instruments of one app; `render()` is the body of GET /metrics."""

    def __init__(self, counters: Callable[[], Counters | None]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(counters))
        self.time_to_first_token = Histogram(
            "tokserve_time_to_first_token_seconds",
            "From submission to the first generated token (queueing and prefill)",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inter_token_latency = Histogram(
            "tokserve_inter_token_latency_seconds",
            "Between two generated tokens of one choice",
            buckets=_TOKEN_GAP_BUCKETS,
            registry=self.registry,
        )
        self.request_latency = Histogram(
            "tokserve_e2e_request_latency_seconds",
            "From submission to the last byte of the answer",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "tokserve_prompt_tokens", "Prompt tokens of the requests answered", registry=self.registry
        )
        self.generation_tokens = Counter(
            "tokserve_generation_tokens", "Tokens generated for the requests answered", registry=self.registry
        )
        self.finished = Counter(
            "tokserve_request_finished",
            "Choices ended, by finish reason: stop, length; error and cancelled for the others",
            ["finish_reason"],
            registry=self.registry,
        )
        self.errors = Counter(
            "tokserve_request_errors",
            "Error answers and in-stream error events, by OpenAI error type and code",
            ["type", "code"],
            registry=self.registry,
        )

    def error(self, kind: str, code: str | None) -> None:
        self.errors.labels(kind, code or "").inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
