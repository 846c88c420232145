"""The GGUF's own 4-bit weights: blocks decoded as gguf decodes them, rows in transformers' order (bit-exact against
the model transformers dequantizes), QuantizedLinear against a dense product, and greedy text through whole models."""

import copy
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.generation.utils import GenerateOutput

from tokserve.engine import Engine
from tokserve.engine.gguf_native import (
    KERNEL_ROWS,
    Q4Blocks,
    QuantizedLinear,
    decode_blocks,
    load_llama,
    quantize_in_place,
    read_linears,
)
from tokserve.engine.kv_cache import ATTENTION, KVCache, StepLayout
from tokserve.engine.llama_step import LlamaStep
from tokserve.engine.loading import LoadedModel, embedded_model_file

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea."]
Q4 = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def loaded(engine: Engine) -> LoadedModel:
    """The embedded model as transformers dequantizes it, in float32 (the session's: tests run at --dtype float32):
    the reference. Only read here, and copied before it is changed."""
    assert engine.loaded.model.dtype == torch.float32
    return engine.loaded


@pytest.fixture(scope="module")
def linears() -> dict[str, Q4Blocks]:
    return read_linears(embedded_model_file())


def _relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.float() - expected.float()).norm() / expected.float().norm())


def test_q4_1_blocks_decode_as_gguf_dequantizes() -> None:
    reader = gguf.GGUFReader(embedded_model_file())
    tensors = [t for t in reader.tensors if t.tensor_type == Q4.Q4_1]
    assert len(tensors) == 210
    for tensor in tensors[:7]:  # one layer: the model test below covers every layer
        expected = torch.from_numpy(gguf.quants.dequantize(tensor.data, Q4.Q4_1))
        assert torch.equal(decode_blocks(tensor.data, Q4.Q4_1).dequantize(), expected), tensor.name


def _q4_0_blocks(rows: int, columns: int) -> tuple[np.ndarray, Q4Blocks]:
    """A synthetic Q4_0 tensor (the embedded file has none): its bytes, and them decoded."""
    weights = np.random.default_rng(0).standard_normal((rows, columns), dtype=np.float32)
    data = gguf.quants.quantize(weights, Q4.Q4_0)
    assert data.shape == (rows, columns // 32 * 18)
    return data, decode_blocks(data, Q4.Q4_0)


def test_q4_0_blocks_decode_as_gguf_dequantizes() -> None:
    data, blocks = _q4_0_blocks(128, 96)
    expected = torch.from_numpy(gguf.quants.dequantize(data, Q4.Q4_0))
    assert torch.equal(blocks.dequantize(), expected)
    # One block by hand: d = 0.5, nibbles 0..15 low and 15..0 high give weights -4, -3.5, .. 3.5, 3.5, 3, .. -4.
    block = np.frombuffer(np.float16(0.5).tobytes() + bytes(q | (15 - q) << 4 for q in range(16)), dtype=np.uint8)
    expected_row = [0.5 * (q - 8) for q in range(16)] + [0.5 * (7 - q) for q in range(16)]
    assert decode_blocks(block.reshape(1, 18), Q4.Q4_0).dequantize().tolist() == [expected_row]


def test_every_q4_1_linear_equals_the_float32_model_bit_for_bit(
    loaded: LoadedModel, linears: dict[str, Q4Blocks]
) -> None:
    modules = dict(loaded.model.named_modules())
    assert len(linears) == 210
    for name, blocks in linears.items():
        assert torch.equal(blocks.dequantize(), modules[name].get_parameter("weight")), name
    # attn_q and attn_k really were permuted: without it their rows differ.
    raw = next(t for t in gguf.GGUFReader(embedded_model_file()).tensors if t.name == "blk.0.attn_q.weight")
    assert not torch.equal(
        decode_blocks(raw.data, Q4.Q4_1).dequantize(), linears["model.layers.0.self_attn.q_proj"].dequantize()
    )


def _inputs(columns: int) -> Iterator[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    for shape in [(1, columns), (KERNEL_ROWS, columns), (3 * KERNEL_ROWS, columns), (1, 1, columns), (2, 40, columns)]:
        yield torch.randn(shape, generator=generator)


@pytest.mark.parametrize("name", ["model.layers.0.self_attn.q_proj", "model.layers.3.mlp.down_proj"])
def test_quantized_linear_matches_a_dense_product(name: str, linears: dict[str, Q4Blocks]) -> None:
    blocks = linears[name]
    layer, weight = QuantizedLinear.of(blocks), blocks.dequantize()
    assert torch.equal(layer.weight(), weight)
    with torch.inference_mode():
        for x in _inputs(layer.in_features):
            expected = F.linear(x, weight)
            assert layer(x).shape == expected.shape
            assert _relative(layer(x), expected) < 1e-5
            assert layer(x.bfloat16()).dtype == torch.bfloat16
            assert _relative(layer(x.bfloat16()), F.linear(x.bfloat16().float(), weight)) < 2e-2


def test_quantized_linear_of_q4_0_blocks_with_a_bias() -> None:
    _, blocks = _q4_0_blocks(128, 96)
    bias = torch.randn(128)
    layer, weight = QuantizedLinear.of(blocks, bias), blocks.dequantize()
    with torch.inference_mode():
        for x in _inputs(96):
            assert _relative(layer(x), F.linear(x, weight, bias)) < 1e-5
            assert _relative(layer(x.bfloat16()), F.linear(x.bfloat16().float(), weight, bias)) < 2e-2


def _quantized(model: PreTrainedModel, dtype: torch.dtype) -> PreTrainedModel:
    quantized = copy.deepcopy(model)
    torch.nn.Module.to(quantized, dtype)
    assert quantize_in_place(quantized, embedded_model_file()) == ["lm_head"]  # the tied Q8_0 embedding
    return quantized


@pytest.fixture(scope="module")
def built() -> tuple[PreTrainedModel, list[str]]:
    """The embedded model as `--weights native` builds it, in bfloat16."""
    found = load_llama(embedded_model_file(), torch.bfloat16)
    assert found is not None
    return found


def test_a_model_built_from_the_file_is_the_one_transformers_loads_then_quantized(
    loaded: LoadedModel, built: tuple[PreTrainedModel, list[str]]
) -> None:
    model, dequantized = built
    layers = range(model.config.num_hidden_layers)
    norms = [
        f"model.layers.{i}.{norm}.weight" for i in layers for norm in ("input_layernorm", "post_attention_layernorm")
    ]
    assert sorted(dequantized) == sorted(
        [f"{name} (F32)" for name in [*norms, "model.norm.weight"]] + ["model.embed_tokens.weight (Q8_0)"]
    )
    reference = _quantized(loaded.model, torch.bfloat16)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # the tied embedding, stored once
    # Not read from the file: the dtype asked for, and transformers' note that it dequantized the file.
    unlike = {"dtype", "quantization_config"}
    config, expected_config = model.config.to_dict(), reference.config.to_dict()
    assert {key: config[key] for key in config.keys() - unlike} == {
        key: expected_config[key] for key in expected_config.keys() - unlike
    }
    assert not model.training and model.dtype == torch.bfloat16
    # Its 4-bit weights count as the dense model's do (the prompt pacing weighs attention against them).
    assert dataclasses.replace(loaded, model=model).parameters == loaded.model.num_parameters()
    for (name, actual), (_, expected) in zip(model.named_parameters(), reference.named_parameters(), strict=True):
        assert actual.dtype == expected.dtype and torch.equal(actual, expected), name
    # The rotary table stays float32, as transformers makes it for a bfloat16 model (a cast model rounds it).
    for (name, actual), (_, expected) in zip(model.named_buffers(), loaded.model.named_buffers(), strict=True):
        assert actual.dtype == torch.float32 and torch.equal(actual, expected), name
    for (name, actual), (_, expected) in zip(model.named_modules(), reference.named_modules(), strict=True):
        if isinstance(expected, QuantizedLinear):
            assert isinstance(actual, QuantizedLinear), name
            assert torch.equal(actual.packed, expected.packed), name
            assert torch.equal(actual.scales_and_zeros, expected.scales_and_zeros), name


def test_the_engine_step_without_transformers_modules_computes_the_models_logits(
    built: tuple[PreTrainedModel, list[str]],
) -> None:
    """Two steps on one cache: a 5-token and a 70-token prompt from nothing (75 rows: the dense path), then one row
    decoding and one continuing its prompt (4 rows: the int4 kernel, q/k/v and gate/up joined)."""
    model, _ = built
    model.set_attn_implementation(ATTENTION)  # as loading sets it: the engine's paged attention
    step = LlamaStep.of(model)
    assert step is not None
    cache = KVCache(blocks=16, block_size=16, dtype=torch.bfloat16)
    tokens = torch.randint(0, model.config.vocab_size, (80,), generator=torch.Generator().manual_seed(0)).tolist()
    short, long = [1, 2], [3, 4, 5, 6, 7]
    steps = [
        [(short, 0, 5, tokens[:5]), (long, 0, 70, tokens[5:75])],
        [(short, 5, 1, tokens[75:76]), (long, 70, 3, tokens[76:79])],
    ]
    with torch.inference_mode():
        for rows in steps:
            layout = StepLayout.build(
                cache, torch.device("cpu"), [(blocks, start, count) for blocks, start, count, _ in rows]
            )
            ids = torch.tensor([[token for *_, chunk in rows for token in chunk]])
            positions = torch.tensor([[p for _, start, count, _ in rows for p in range(start, start + count)]])
            kept = torch.tensor([4, 74]) if positions.shape[1] == 75 else torch.arange(4)
            expected = model(
                input_ids=ids, position_ids=positions, logits_to_keep=kept, use_cache=False, tokserve_step=layout
            ).logits[0]
            assert torch.equal(step(ids, positions, kept, layout), expected)


def test_only_llama_files_are_built_from_the_file(tmp_path: Path) -> None:
    writer = gguf.GGUFWriter(tmp_path / "other.gguf", "qwen2")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert load_llama(tmp_path / "other.gguf", torch.float32) is None


def _prompt_ids(loaded: LoadedModel, prompt: str) -> torch.Tensor:
    message = [{"role": "user", "content": prompt}]
    text = loaded.tokenizer.apply_chat_template(message, tokenize=False, add_generation_prompt=True)
    return torch.tensor([loaded.tokenizer(str(text))["input_ids"]])


@pytest.fixture(scope="module")
def references(loaded: LoadedModel) -> list[tuple[torch.Tensor, GenerateOutput, torch.Tensor]]:
    """Per prompt: its ids, the reference's greedy 16 tokens with their logits, and its last position's logprobs."""
    found = []
    with torch.inference_mode():
        for prompt in PROMPTS:
            ids = _prompt_ids(loaded, prompt)
            output = loaded.model.generate(
                ids, max_new_tokens=16, do_sample=False, return_dict_in_generate=True, output_logits=True
            )
            found.append((ids, output, loaded.model(output.sequences).logits[0, -1].log_softmax(-1)))
    return found


# bfloat16's top 5: the dense bfloat16 model is itself 0.23 away from float32 there, on "What is the capital".
@pytest.mark.parametrize(("dtype", "top1", "top5"), [(torch.float32, 1e-3, 1e-3), (torch.bfloat16, 2e-2, 0.25)])
def test_a_quantized_model_writes_what_the_dequantized_one_writes(
    loaded: LoadedModel,
    references: list[tuple[torch.Tensor, GenerateOutput, torch.Tensor]],
    dtype: torch.dtype,
    top1: float,
    top5: float,
) -> None:
    quantized = _quantized(loaded.model, dtype)
    with torch.inference_mode():
        for ids, reference, expected_logprobs in references:
            generated = quantized.generate(ids, max_new_tokens=16, do_sample=False)
            expected, actual = reference.sequences[0, ids.shape[1] :], generated[0, ids.shape[1] :]
            if not torch.equal(actual, expected):  # allowed only where the reference itself nearly tied
                step = int((actual != expected).nonzero()[0])
                top2 = reference.logits[step][0].topk(2).values
                assert float(top2[0] - top2[1]) < 0.05, (step, top2)
            # The last position after the reference's text: a prefill of several rows, then one decoding step.
            context = reference.sequences
            prefill = quantized(context[:, :-1], use_cache=True)
            last = quantized(context[:, -1:], cache=prefill.cache).logits[0, -1].float()
            top = expected_logprobs.topk(5).indices
            error = (last.log_softmax(-1)[top] - expected_logprobs[top]).abs()
            assert float(error[0]) < top1
            assert float(error.max()) < top5
