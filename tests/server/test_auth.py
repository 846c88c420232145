"""API keys: `Authorization: Bearer` on /v1/*, 401 in the OpenAI envelope, /health and /metrics open by default."""

from collections.abc import Callable
from contextlib import AbstractContextManager

import httpx
import openai
import pytest
from pydantic import ValidationError

from tokserve.config import Settings

KEYS = ["first-key-5b2c", "second-key-91d0"]
CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0}


def test_without_keys_no_key_is_needed(http: httpx.Client) -> None:
    assert http.get("/v1/models").status_code == 200


def test_every_key_opens_the_api_and_others_get_401(
    serve_with: Callable[..., AbstractContextManager[str]], caplog: pytest.LogCaptureFixture
) -> None:
    with serve_with(api_keys=KEYS) as url:
        for key in KEYS:
            with openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) as client:
                reply = client.chat.completions.create(model="SmolLM2-135M-Instruct", **CHAT)  # type: ignore[call-overload]
                assert reply.choices[0].message.content
        with (
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong-key-0000", max_retries=0) as client,
            pytest.raises(openai.AuthenticationError) as raised,
        ):
            client.models.list()
        assert raised.value.status_code == 401
        assert raised.value.response.json() == {
            "error": {
                "message": "Invalid API key.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        }
        with httpx.Client(base_url=url) as http:
            missing = http.post("/v1/chat/completions", content=b"{not json")  # the key is checked before the body
            assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
            assert missing.json()["error"]["code"] == "invalid_api_key"
            basic = http.get("/v1/models", headers={"Authorization": f"Basic {KEYS[0]}"})
            assert basic.status_code == 401
            assert http.get("/health").status_code == 200
            assert http.get("/metrics").status_code == 200
    for secret in [*KEYS, "wrong-key-0000"]:
        assert secret not in caplog.text


def test_protect_metrics_puts_metrics_behind_the_key(serve_with: Callable[..., AbstractContextManager[str]]) -> None:
    with serve_with(api_keys=KEYS, protect_metrics=True) as url, httpx.Client(base_url=url) as http:
        assert http.get("/metrics").status_code == 401
        assert http.get("/metrics", headers={"Authorization": f"Bearer {KEYS[1]}"}).status_code == 200
        assert http.get("/health").status_code == 200


def test_keys_are_hidden_in_settings_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKSERVE_API_KEYS", " ".join(KEYS).replace(" ", ","))
    settings = Settings()
    assert [key.get_secret_value() for key in settings.api_keys] == KEYS
    assert KEYS[0] not in repr(settings) and KEYS[0] not in str(settings.model_dump())
    with pytest.raises(ValidationError, match="needs at least one --api-key"):
        Settings(api_keys=[], protect_metrics=True)
