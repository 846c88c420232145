"""GET /metrics: Prometheus text whose values move as requests run and end; each app counts on its own."""

from collections.abc import Callable
from contextlib import AbstractContextManager

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tokserve.engine import Engine

MAX_TOKENS = 12
STREAM = {"prompt": "Once upon a time", "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True, "stream": True}


def scrape(http: httpx.Client) -> dict[str, float]:
    """Each sample as `name{label="value",...}` -> value."""
    response = http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f'{name}="{value}"' for name, value in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def test_metrics_move_as_a_stream_runs_and_ends(
    serve_with: Callable[..., AbstractContextManager[str]], engine: Engine, wait_idle: Callable[[], None]
) -> None:
    wait_idle()
    with serve_with() as url, httpx.Client(base_url=url, timeout=120) as http:
        before = scrape(http)
        assert before["tokserve_requests_running"] == 0
        assert before["tokserve_time_to_first_token_seconds_count"] == 0  # a new app starts from zero
        with http.stream("POST", "/v1/completions", json=STREAM) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            during = scrape(http)
            assert during["tokserve_requests_running"] == 1
            assert during["tokserve_time_to_first_token_seconds_count"] == 1
            assert during["tokserve_e2e_request_latency_seconds_count"] == 0
            assert "data: [DONE]" in list(lines)
        wait_idle()
        after = scrape(http)
    assert after["tokserve_requests_running"] == 0
    assert after["tokserve_e2e_request_latency_seconds_count"] == 1
    assert after["tokserve_e2e_request_latency_seconds_sum"] >= after["tokserve_time_to_first_token_seconds_sum"] > 0
    assert after["tokserve_inter_token_latency_seconds_count"] == MAX_TOKENS - 1
    assert after["tokserve_generation_tokens_total"] == MAX_TOKENS
    assert after["tokserve_prompt_tokens_total"] == len(engine.encode_text("Once upon a time"))
    assert after['tokserve_request_finished_total{finish_reason="length"}'] == 1
    assert after['tokserve_engine_requests_ended_total{outcome="finished"}'] >= 1


def test_errors_are_counted_by_type_and_code(serve_with: Callable[..., AbstractContextManager[str]]) -> None:
    with serve_with() as url, httpx.Client(base_url=url, timeout=120) as http:
        assert http.post("/v1/completions", json={"prompt": "x", "max_tokens": -1}).status_code == 400
        assert http.post("/v1/completions", json={"prompt": "x", "model": "nope"}).status_code == 404
        assert http.get("/v1/nothing-here").status_code == 404
        after = scrape(http)
    assert after['tokserve_request_errors_total{code="",type="invalid_request_error"}'] == 2
    assert after['tokserve_request_errors_total{code="model_not_found",type="invalid_request_error"}'] == 1
