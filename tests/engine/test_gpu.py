"""On a CUDA GPU: float16 and 4-bit loading, and a stream served from the GPU. A tiny random-weight model made from
the embedded model's config (shrunk) and tokenizer, since GPU machines here cannot download weights."""

import dataclasses
import importlib.util
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import openai
import pytest
import torch
from fastapi import FastAPI
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from tokserve.config import Settings
from tokserve.engine import Engine, EngineSettings, embedded_model_file, load_model
from tokserve.server import create_app

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random-weight model directory with the embedded model's tokenizer."""
    # A machine without the embedded model's package brings its config and tokenizer files in a directory instead.
    source = os.environ.get("TOKSERVE_TEST_TOKENIZER_DIR")
    where, gguf_file = (source, None) if source else (str(embedded_model_file().parent), embedded_model_file().name)
    tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=gguf_file)
    config = AutoConfig.from_pretrained(where, gguf_file=gguf_file)
    config.update(
        {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 16}
    )  # fmt: skip
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny-model")
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_float16_loading(tiny_model: Path) -> None:
    loaded = load_model(str(tiny_model), device="cuda", dtype="float16")
    assert loaded.device.type == "cuda"
    assert {parameter.dtype for parameter in loaded.model.parameters()} == {torch.float16}
    assert {parameter.device.type for parameter in loaded.model.parameters()} == {"cuda"}


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
def test_4bit_loading(tiny_model: Path) -> None:
    loaded = load_model(str(tiny_model), device="cuda", quantization="bnb-4bit")
    assert loaded.model.is_loaded_in_4bit
    assert any(type(module).__name__ == "Linear4bit" for module in loaded.model.modules())


def test_device_map_auto_places_the_model_on_the_gpu(tiny_model: Path) -> None:
    loaded = load_model(str(tiny_model), device_map="auto")
    assert loaded.device.type == "cuda"


@pytest.fixture(scope="module")
def gpu_engine(tiny_model: Path) -> Iterator[Engine]:
    """float32, so that a batch's numbers are a single request's to the last bit but for summation order."""
    engine = Engine.load(EngineSettings(model=str(tiny_model), device="cuda", dtype="float32"))
    yield engine
    engine.close()


def test_streaming_on_the_gpu(
    gpu_engine: Engine, tiny_model: Path, serve_app: Callable[[FastAPI], AbstractContextManager[str]]
) -> None:
    settings = Settings(model=str(tiny_model))
    with (
        serve_app(create_app(settings, engine=gpu_engine)) as url,
        openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client,
    ):
        params = {"model": settings.model_name, "prompt": "Once upon a time", "temperature": 0, "max_tokens": 16}
        chunks = list(client.completions.create(stream=True, extra_body={"ignore_eos": True}, **params))  # type: ignore[call-overload]
        whole = client.completions.create(extra_body={"ignore_eos": True}, **params)  # type: ignore[call-overload]
    streamed = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    assert len([chunk for chunk in chunks if chunk.choices and chunk.choices[0].text]) > 1  # token by token
    assert streamed == whole.choices[0].text and whole.usage.completion_tokens == 16
    assert gpu_engine.loaded.device.type == "cuda"


def test_a_batch_on_the_gpu_gives_each_request_its_text_alone(
    gpu_engine: Engine, tiny_model: Path, serve_app: Callable[[FastAPI], AbstractContextManager[str]]
) -> None:
    """Eight prompts in one request share every step on the GPU; each gets the text it gets alone."""
    settings = Settings(model=str(tiny_model))
    prompts = [f"Story number {number}: once upon a time" * (1 + number % 3) for number in range(8)]
    with (
        serve_app(create_app(settings, engine=gpu_engine)) as url,
        openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client,
    ):
        params: dict[str, Any] = {"model": settings.model_name, "temperature": 0, "max_tokens": 16}
        alone = [client.completions.create(prompt=prompt, **params).choices[0].text for prompt in prompts]
        batched = client.completions.create(prompt=prompts, **params).choices
    assert [choice.text for choice in sorted(batched, key=lambda choice: choice.index)] == alone


def test_decode_steps_replayed_from_cuda_graphs_give_the_eager_tokens(
    gpu_engine: Engine, tiny_model: Path, serve_app: Callable[[FastAPI], AbstractContextManager[str]]
) -> None:
    """The session engine replays its decode steps from CUDA graphs; an engine on the same model that runs them
    eagerly gives the same greedy text, for batches and contexts that fall into several buckets (rows 1-8; contexts
    past 256 and 512 tokens)."""
    prompts = [f"Tale {number}: " + "the river runs past the town " * (number * 20) for number in range(6)]
    params: dict[str, Any] = {"model": Settings(model=str(tiny_model)).model_name, "temperature": 0, "max_tokens": 24}
    texts: list[list[str]] = []
    eager = Engine(gpu_engine.loaded, dataclasses.replace(gpu_engine.settings, no_cuda_graphs=True))
    try:
        for engine in (gpu_engine, eager):
            with (
                serve_app(create_app(Settings(model=str(tiny_model)), engine=engine)) as url,
                openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client,
            ):
                batched = client.completions.create(prompt=prompts, **params).choices
                alone = client.completions.create(prompt=prompts[-1], **params).choices
            texts.append([choice.text for choice in sorted(batched, key=lambda choice: choice.index)] + [alone[0].text])
    finally:
        eager.close()
    assert texts[0] == texts[1]
    assert len(set(texts[0])) > 1  # the prompts differ, so must (most of) their texts
