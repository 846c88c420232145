"""`--weights native` end to end: the embedded GGUF's 4-bit linears computed as they are, in bfloat16 activations,
served by a real engine (continuous batching, prefix caching, the batch sampler), write what the dequantized float32
model writes, up to near-ties."""

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import openai
import pytest
import torch
from fastapi import FastAPI

from tokserve.config import Settings
from tokserve.engine import Engine, EngineSettings
from tokserve.errors import StartupError
from tokserve.server import create_app

PROMPTS = ["The capital of France is", "Once upon a time, in a small village,"]


@pytest.fixture(scope="module")
def native_engine() -> Iterator[Engine]:
    engine = Engine.load(EngineSettings(weights="auto", dtype="bfloat16", max_running=4))
    try:
        assert engine.loaded.weights == "native"  # the default for a GGUF on the CPU in bfloat16
        yield engine
    finally:
        engine.close()


@pytest.fixture(scope="module")
def native_url(native_engine: Engine, serve_app: Callable[[FastAPI], AbstractContextManager[str]]) -> Iterator[str]:
    with serve_app(create_app(Settings(), engine=native_engine)) as url:
        yield url


def test_native_weights_write_what_the_dequantized_model_writes(client: openai.OpenAI, native_url: str) -> None:
    params = {"prompt": PROMPTS, "max_tokens": 16, "temperature": 0, "logprobs": 5}
    reference = client.completions.create(model=None, **params)  # type: ignore[arg-type]
    with openai.OpenAI(base_url=f"{native_url}/v1", api_key="x", max_retries=0) as native_client:
        native = native_client.completions.create(model=None, **params)  # type: ignore[arg-type]
        again = native_client.completions.create(model=None, **params)  # type: ignore[arg-type]
    assert [choice.text for choice in again.choices] == [choice.text for choice in native.choices]  # prefix cached
    for expected, actual in zip(reference.choices, native.choices, strict=True):
        assert expected.logprobs is not None and actual.logprobs is not None
        expected_tokens, actual_tokens = expected.logprobs.tokens or [], actual.logprobs.tokens or []
        at = next((i for i, (a, b) in enumerate(zip(expected_tokens, actual_tokens, strict=False)) if a != b), None)
        if at is not None:  # bfloat16 may turn a near-tie: the native pick was (nearly) the reference's best too
            top = (expected.logprobs.top_logprobs or [])[at]
            assert actual_tokens[at] in top
            assert math.isclose(top[actual_tokens[at]], top[expected_tokens[at]], abs_tol=2e-2)
        first = (expected.logprobs.token_logprobs or [])[0], (actual.logprobs.token_logprobs or [])[0]
        assert first[0] is not None and first[1] is not None and abs(first[0] - first[1]) < 2e-2


def test_the_default_dequantizes_in_float32(engine: Engine) -> None:
    """The session's engine: the embedded GGUF at --dtype float32, where the int4 kernel is slower than dense."""
    assert engine.loaded.model.dtype == torch.float32 and engine.loaded.weights == "dequantized"


def test_native_weights_read_prompts_in_larger_steps(
    engine: Engine, native_engine: Engine, engine_with: Callable[..., AbstractContextManager[Engine]]
) -> None:
    """Each step that reads a prompt chunk dequantizes the 4-bit weights once: native steps read up to 1024 tokens
    where dense ones read 512, unless --prefill-tokens says otherwise."""
    assert (native_engine.prefill_tokens, engine.prefill_tokens) == (1024, 512)
    with engine_with(prefill_tokens=300) as told:
        assert told.prefill_tokens == 300


def test_native_weights_need_a_gguf_on_the_cpu() -> None:
    with pytest.raises(StartupError, match="--weights native"):
        Engine.load(EngineSettings(weights="native", device="cpu", quantization="bnb-4bit"))
