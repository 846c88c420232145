"""`--weights native` against dequantized weights on the embedded model, through the engine (no HTTP): load time,
resident memory after load and at peak (before and after the long prompts), one stream's and 8 streams' decode
rate, the time to the first token of a prompt of about 600 and of about 1,900 tokens (alone, nothing cached), one
stream's rate after the longer one, and the time to the first token of a short chat sent 0.3 s after a ~1,900-token
prompt (which waits for the prompt step under way: the price of larger steps).
Each variant runs in its own process (memory is per process); the variants take turns round by round, so a noisy
neighbour hits them alike.

    HF_HUB_OFFLINE=1 PYTHONPATH=src python benchmarks/bench_native_weights.py --rounds 3 --out native.json
"""

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {
    "dequantized float32": {"weights": "dequantized", "dtype": "float32"},
    "dequantized bfloat16": {"weights": "dequantized", "dtype": "bfloat16"},
    "native bfloat16": {"weights": "native", "dtype": "bfloat16"},
}


def _memory() -> dict[str, float]:
    """VmRSS and VmHWM of this process, in MB."""
    status = Path("/proc/self/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status if ":" in line)
    return {name: int(fields[key].split()[0]) / 1024 for name, key in (("rss", "VmRSS"), ("peak", "VmHWM"))}


def measure(weights: str, dtype: str, tokens: int) -> dict[str, float]:
    """One variant, in this process."""
    from tokserve.engine import Engine, EngineSettings, GenerationRequest, SamplingParams

    started = time.perf_counter()
    engine = Engine.load(EngineSettings(weights=weights, dtype=dtype, max_running=8))
    load = time.perf_counter() - started
    memory = _memory()
    prompt = tuple(engine.encode_chat([{"role": "user", "content": "Tell me a story about the sea."}]))

    async def streams(count: int) -> float:
        requests = [
            GenerationRequest(f"r{i}", prompt, tokens, SamplingParams(temperature=0.0), ignore_eos=True)
            for i in range(count)
        ]
        begun = time.perf_counter()

        async def drain(stream: object) -> int:
            return len([event async for event in stream.events()])  # type: ignore[attr-defined]

        counted = await asyncio.gather(*(drain(stream) for stream in engine.submit_all(requests)))
        return sum(counted) / (time.perf_counter() - begun)

    async def alone(prompt: tuple[int, ...], count: int) -> tuple[float, float]:
        """One request by itself: seconds to its first token, and tokens a second after it."""
        begun = time.perf_counter()
        request = GenerationRequest(f"p{prompt[0]}", prompt, count, SamplingParams(temperature=0.0), ignore_eos=True)
        times = [time.perf_counter() async for _ in engine.submit(request).events()]
        return times[0] - begun, (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0

    asyncio.run(streams(1))  # warm-up
    one = statistics.median(asyncio.run(streams(1)) for _ in range(3))
    eight = asyncio.run(streams(8))
    peak = _memory()["peak"]  # before the long prompts, whose activations are another matter
    sentence = "The history of the sea is long and full of stories about sailors, storms and distant islands. "
    prompts = {
        repeats: tuple(engine.encode_chat([{"role": "user", "content": sentence * repeats}])) for repeats in (30, 100)
    }
    long_prompts = {}
    for repeats, count in ((30, 1), (100, tokens)):
        # A different first token each time: no prefix of one is cached for the next.
        runs = [asyncio.run(alone((repeats + i, *prompts[repeats]), count)) for i in range(3)]
        long_prompts[repeats] = [statistics.median(values) for values in zip(*runs, strict=True)]
    short_prompt = tuple(engine.encode_chat([{"role": "user", "content": "Hi there!"}]))

    async def behind(first: int) -> float:
        """A short request's time to its first token, sent 0.3 s after a long prompt (alone till then); distinct
        first tokens keep the requests' ids apart and nothing cached."""
        ahead = asyncio.ensure_future(alone((first, *prompts[100]), 1))
        await asyncio.sleep(0.3)
        short, _ = await asyncio.gather(alone((first + 100, *short_prompt), 1), ahead)
        return short[0]

    short_behind = statistics.median(asyncio.run(behind(200 + i)) for i in range(3))
    peak_after = _memory()["peak"]
    engine.close()
    return {
        "load_s": load,
        "rss_mb": memory["rss"],
        "peak_mb": peak,
        "one_tok_s": one,
        "eight_tok_s": eight,
        "ttft_600_s": long_prompts[30][0],
        "ttft_1900_s": long_prompts[100][0],
        "after_1900_tok_s": long_prompts[100][1],  # one stream decoding over a long context
        "short_behind_s": short_behind,
        "peak_after_mb": peak_after,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--out")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # a child process: measure one variant
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(**VARIANTS[args.variant], tokens=args.tokens)))
        return
    results: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name in VARIANTS:
            command = [sys.executable, __file__, "--variant", name, "--tokens", str(args.tokens)]
            run = subprocess.run(command, capture_output=True, text=True, check=True)
            results[name].append(json.loads(run.stdout.strip().splitlines()[-1]))
    base, bf16 = (statistics.median(r["one_tok_s"] for r in results[name]) for name in list(VARIANTS)[:2])
    print(
        f"{'variant':22} {'load s':>7} {'RSS MB':>7} {'peak MB':>8} {'1 stream':>9} {'vs fp32':>8} {'vs bf16':>8} "
        f"{'8 streams':>10} {'TTFT 600':>9} {'TTFT 1900':>10} {'then tok/s':>11} {'short behind':>13} "
        f"{'peak after':>11}"
    )
    for name, runs in results.items():
        median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        print(
            f"{name:22} {median['load_s']:7.1f} {median['rss_mb']:7.0f} {median['peak_mb']:8.0f} "
            f"{median['one_tok_s']:9.1f} {median['one_tok_s'] / base:7.2f}x {median['one_tok_s'] / bf16:7.2f}x "
            f"{median['eight_tok_s']:10.1f} {median['ttft_600_s']:8.2f}s {median['ttft_1900_s']:9.2f}s "
            f"{median['after_1900_tok_s']:11.1f} {median['short_behind_s']:12.2f}s {median['peak_after_mb']:11.0f}"
        )
    if args.out:
        with open(args.out, "w") as file:
            json.dump(results, file, indent=1)


if __name__ == "__main__":
    main()
