"""Int8 weights on the CPU: plain `model.generate` tokens/s at batch 1 and 8, and whether greedy outputs match.

The embedded model in a plain dtype, then the same with torchao's weight-only int8 (`Int8WeightOnlyConfig`:
int8 weights, activations in the dtype) and with torch's own dynamic int8 (`quantize_dynamic`: int8 weights and
int8 activations per batch, float32 only). Variants take turns in one process; outputs are compared token by token
with the plain dtype's on the same prompts. An experiment for issue 5, not part of the test run.

    .venv/bin/pip install --no-deps torchao   # not a dependency of tokserve
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/int8_generate.py [--dtype bfloat16] [--batch1-prompts 4]
"""

import argparse
import time
from collections.abc import Callable
from dataclasses import replace

import torch

from bench_serving import PROMPTS, generate_fixed
from tokserve.engine import LoadedModel, load_model


def _torchao_int8(loaded: LoadedModel) -> LoadedModel:
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    quantize_(loaded.model, Int8WeightOnlyConfig())
    return loaded


def _dynamic_int8(loaded: LoadedModel) -> LoadedModel:
    model = torch.ao.quantization.quantize_dynamic(loaded.model, {torch.nn.Linear}, dtype=torch.qint8)
    return replace(loaded, model=model)


def _timed(loaded: LoadedModel, batch: int, prompts: int, new_tokens: int) -> tuple[float, list[list[int]]]:
    """(tokens/s, outputs) of `prompts` prompts generated `batch` at a time."""
    outputs: list[list[int]] = []
    start = time.perf_counter()
    for first in range(0, prompts, batch):
        outputs += generate_fixed(loaded, PROMPTS[first : first + batch], new_tokens)
    return prompts * new_tokens / (time.perf_counter() - start), outputs


def _agreement(outputs: list[list[int]], reference: list[list[int]]) -> str:
    """How many outputs equal the reference's, and where the others first differ."""
    firsts = [
        next(i for i, (a, b) in enumerate(zip(o, r, strict=True)) if a != b)
        for o, r in zip(outputs, reference, strict=True)
        if o != r
    ]
    return f"{len(outputs) - len(firsts)} of {len(outputs)}" + (
        f" (others differ from token {sorted(firsts)})" if firsts else ""
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16", help="the plain dtype and torchao's activations")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch1-prompts", type=int, default=4, help="prompts generated one at a time")
    args = parser.parse_args()

    # (name, plain dtype it is compared with, how to load it); each plain dtype comes before its int8 variants.
    variants: list[tuple[str, str, Callable[[], LoadedModel]]] = [
        (args.dtype, args.dtype, lambda: load_model(None, "cpu", args.dtype)),
        (
            f"int8 weight-only (torchao), {args.dtype} activations",
            args.dtype,
            lambda: _torchao_int8(load_model(None, "cpu", args.dtype)),
        ),
    ]
    if args.dtype != "float32":
        variants.append(("float32", "float32", lambda: load_model(None, "cpu", "float32")))
    variants.append(
        ("dynamic int8 (torch.ao), float32", "float32", lambda: _dynamic_int8(load_model(None, "cpu", "float32")))
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU {torch.backends.cpu.get_cpu_capability()}"
    )
    print("| weights | batch 1 tok/s | batch 8 tok/s | vs plain, batch 1 | vs plain, batch 8 | same greedy output |")
    print("|---|---|---|---|---|---|")
    plain: dict[str, tuple[float, float, list[list[int]]]] = {}
    for name, compared_with, make in variants:
        loaded = make()
        generate_fixed(loaded, PROMPTS[:8], 4)  # warm-up
        batch8, outputs = _timed(loaded, 8, 8, args.max_tokens)
        batch1, _ = _timed(loaded, 1, args.batch1_prompts, args.max_tokens)
        reference = plain.setdefault(compared_with, (batch1, batch8, outputs))
        print(
            f"| {name} | {batch1:.1f} | {batch8:.1f} | {batch1 / reference[0]:.2f}x | {batch8 / reference[1]:.2f}x "
            f"| {_agreement(outputs, reference[2])} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
