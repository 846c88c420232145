"""X-Request-Id round trip and the request's log line; CORS, off by default."""

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager

import httpx
import pytest

STREAM = {"prompt": "The sea is", "max_tokens": 5, "temperature": 0, "ignore_eos": True, "stream": True}


def test_request_id_is_returned_and_logged(http: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level(logging.INFO, logger="tokserve.server.request_record"),
        http.stream("POST", "/v1/completions", json=STREAM, headers={"X-Request-Id": "client-7f3a"}) as response,
    ):
        assert response.headers["x-request-id"] == "client-7f3a"
        assert [line for line in response.iter_lines() if line][-1] == "data: [DONE]"
    lines = [record for record in caplog.records if getattr(record, "request", {}).get("request_id") == "client-7f3a"]
    assert len(lines) == 1
    fields = lines[0].request  # type: ignore[attr-defined]
    assert fields["model"] == "SmolLM2-135M-Instruct"
    assert fields["prompt_tokens"] == 3 and fields["completion_tokens"] == 5
    assert fields["finish_reason"] == "length"
    assert 0 < fields["ttft_s"] <= fields["duration_s"]
    assert "client-7f3a" in lines[0].getMessage() and "The sea is" not in caplog.text  # no prompt at INFO


@pytest.mark.parametrize("sent", [None, "", "two words", "x" * 200])
def test_missing_or_odd_request_ids_are_replaced(http: httpx.Client, sent: str | None) -> None:
    headers = {} if sent is None else {"X-Request-Id": sent}
    returned = http.get("/v1/models", headers=headers).headers["x-request-id"]
    assert len(returned) == 32 and returned != sent
    assert http.get("/v1/models").headers["x-request-id"] != returned  # one per request


def test_cors_is_off_by_default(http: httpx.Client) -> None:
    preflight = http.options("/v1/chat/completions", headers=_preflight("https://chat.example"))
    assert "access-control-allow-origin" not in preflight.headers
    assert (
        "access-control-allow-origin" not in http.get("/v1/models", headers={"Origin": "https://chat.example"}).headers
    )


def test_cors_preflight_for_an_allowed_origin_only(serve_with: Callable[..., AbstractContextManager[str]]) -> None:
    with serve_with(cors_origins=["https://chat.example"], api_keys=["k-1"]) as url, httpx.Client(base_url=url) as http:
        allowed = http.options("/v1/chat/completions", headers=_preflight("https://chat.example"))
        assert allowed.status_code == 200  # a preflight carries no key, and needs none
        assert allowed.headers["access-control-allow-origin"] == "https://chat.example"
        assert {"authorization", "x-session-id"} <= set(
            allowed.headers["access-control-allow-headers"].lower().split(", ")
        )
        assert "POST" in allowed.headers["access-control-allow-methods"]
        refused = http.options("/v1/chat/completions", headers=_preflight("https://elsewhere.example"))
        assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
        actual = http.get("/v1/models", headers={"Origin": "https://chat.example", "Authorization": "Bearer k-1"})
        assert actual.headers["access-control-allow-origin"] == "https://chat.example"
        assert "x-request-id" in actual.headers["access-control-expose-headers"].lower()


def _preflight(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-session-id",
    }
