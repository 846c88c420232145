"""Headers an attacker sends, and headers every response carries: the Host check against DNS rebinding, one
Authorization header only, `nosniff`, a 405's `Allow`, HEAD on the pages probes hit, and API docs with no CDN."""

import re
from collections.abc import Callable
from contextlib import AbstractContextManager

import httpx
import pytest

COMPLETION = {"prompt": "Hi", "max_tokens": 1}


def host_answer(url: str, host: str, path: str = "/v1/models") -> int:
    with httpx.Client(base_url=url, headers={"Host": host}) as http:
        return http.get(path).status_code


def test_bound_to_loopback_only_loopback_names_are_answered(base_url: str) -> None:
    port = base_url.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}", "127.0.0.2", "app.localhost"):
        assert host_answer(base_url, host) == 200, host
    with httpx.Client(base_url=base_url, headers={"Host": "rebind.attacker.example"}) as http:
        refused = http.post("/v1/completions", json=COMPLETION)
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "host_not_allowed"
        assert "--allowed-host" in refused.json()["error"]["message"]
        assert http.get("/").status_code == 400  # the chat page too: it would run the attacker's requests
        assert http.get("/health").status_code == 200  # nothing to steal; probes send what they reached
    for host in ("127.0.0.1.attacker.example", "localhost.attacker.example:80", "[::1", "a:b:c"):
        assert host_answer(base_url, host) == 400, host


def test_elsewhere_any_host_unless_allowed_hosts_are_given(
    serve_with: Callable[..., AbstractContextManager[str]],
) -> None:
    # The app's policy follows --host; the test server itself listens on loopback all the same.
    with serve_with(host="0.0.0.0") as url:
        assert host_answer(url, "tokserve.internal:8000") == 200
        assert host_answer(url, "10.1.2.3:8000") == 200
    with serve_with(host="0.0.0.0", allowed_hosts=["api.example.com", "*.svc.cluster.local"]) as url:
        assert host_answer(url, "api.example.com") == 200
        assert host_answer(url, "API.Example.com.:443") == 200
        assert host_answer(url, "tokserve.default.svc.cluster.local:8000") == 200
        assert host_answer(url, "svc.cluster.local.attacker.example") == 400
        assert host_answer(url, "127.0.0.1") == 400  # the list is the whole list there
    with serve_with(allowed_hosts=["laptop.local"]) as url:
        assert host_answer(url, "laptop.local:8000") == 200
        assert host_answer(url, "localhost") == 200  # loopback names stay when bound to loopback


def test_two_authorization_headers_are_refused(serve_with: Callable[..., AbstractContextManager[str]]) -> None:
    """Proxies and servers disagree on which of two counts; the last one won here, with the wrong key first."""
    with serve_with(api_keys=["right"]) as url, httpx.Client(base_url=url) as http:
        both = [("Authorization", "Bearer wrong"), ("Authorization", "Bearer right")]
        refused = http.post("/v1/completions", json=COMPLETION, headers=httpx.Headers(both))
        assert refused.status_code == 400
        assert "Authorization" in refused.json()["error"]["message"]
        accepted = http.post("/v1/completions", json=COMPLETION, headers={"Authorization": "Bearer right"})
        assert accepted.status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/health", 200),
        ("GET", "/v1/models", 200),
        ("GET", "/", 200),
        ("GET", "/ui/chat.js", 200),
        ("GET", "/openapi.json", 200),
        ("GET", "/metrics", 200),
        ("GET", "/nowhere", 404),
        ("POST", "/v1/completions", 200),
    ],
)
def test_every_response_says_nosniff(http: httpx.Client, method: str, path: str, status: int) -> None:
    response = http.request(method, path, json=COMPLETION if method == "POST" else None)
    assert response.status_code == status
    assert response.headers["x-content-type-options"] == "nosniff"


def test_streams_and_errors_say_nosniff_too(http: httpx.Client) -> None:
    with http.stream("POST", "/v1/completions", json={**COMPLETION, "stream": True}) as stream:
        assert stream.headers["x-content-type-options"] == "nosniff"
    refused = http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 0})
    assert refused.status_code == 400 and refused.headers["x-content-type-options"] == "nosniff"


def test_a_405_says_what_is_allowed(http: httpx.Client) -> None:
    wrong = http.get("/v1/chat/completions")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"
    assert wrong.json()["error"]["type"] == "invalid_request_error"


def test_head_of_the_page_and_health(http: httpx.Client) -> None:
    for path in ("/", "/health"):
        head = http.head(path)
        assert head.status_code == 200, path
        assert head.content == b""


def test_api_docs_are_off_unless_asked_and_load_nothing_from_elsewhere(
    http: httpx.Client, serve_with: Callable[..., AbstractContextManager[str]]
) -> None:
    assert http.get("/docs").status_code == 404 and http.get("/redoc").status_code == 404
    with serve_with(docs=True) as url, httpx.Client(base_url=url) as docs:
        for page in ("/docs", "/redoc"):
            html = docs.get(page).text
            sources = re.findall(r'(?:src|href)="([^"]+)"', html)
            assert sources and all(source.startswith("/docs/static/") for source in sources), sources
            assert "https://" not in html and "http://" not in html
            for source in sources:
                asset = docs.get(source)
                assert asset.status_code == 200 and len(asset.content) > 1000
        assert docs.get("/docs/static/../../config.py").status_code == 404
