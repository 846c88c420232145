"""Time to first token and tokens/s of one tokserve stream, next to plain `model.generate` on the same prompt.

Starts `tokserve serve` on a free loopback port as a subprocess, streams a greedy chat completion from it with httpx,
then loads the same model in this process and times `model.generate` (a streamer records when each token comes).
Each side runs once to warm up, then `--repeats` times; the medians are printed. Not part of the test run.

    .venv/bin/python benchmarks/stream_vs_generate.py [--max-tokens 128] [--repeats 3]
"""

import argparse
import json
import statistics
import time

import httpx
import torch
from transformers.generation.streamers import BaseStreamer

from server_process import running_tokserve
from tokserve.engine import load_model

MESSAGES = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper and a storm."}]


class _Clock(BaseStreamer):
    """Records when generate() hands over each new token (the first put() is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if self._prompt_seen:
            self.times.append(time.perf_counter())
        self._prompt_seen = True

    def end(self) -> None:
        pass


def _stream_once(url: str, max_tokens: int) -> tuple[float, float, int]:
    body = {"messages": MESSAGES, "temperature": 0, "max_tokens": max_tokens, "stream": True}
    body["stream_options"] = {"include_usage": True}
    start = time.perf_counter()
    first = last = 0.0
    tokens = 0
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                last = time.perf_counter()
                first = first or last
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return first - start, (tokens - 1) / (last - first), tokens


def _generate_once(model_and_ids: tuple[object, torch.Tensor], max_tokens: int) -> tuple[float, float, int]:
    model, ids = model_and_ids
    clock = _Clock()
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=max_tokens, do_sample=False, streamer=clock)  # type: ignore[attr-defined]
    tokens = len(clock.times)
    return clock.times[0] - start, (tokens - 1) / (clock.times[-1] - clock.times[0]), tokens


def _median(runs: list[tuple[float, float, int]]) -> tuple[float, float, int]:
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs), runs[0][2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with running_tokserve() as (url, _):
        _stream_once(url, args.max_tokens)
        streamed = _median([_stream_once(url, args.max_tokens) for _ in range(args.repeats)])

    loaded = load_model(None, "auto", "auto")
    ids = loaded.tokenizer.apply_chat_template(
        MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=False
    ).to(loaded.device)
    _generate_once((loaded.model, ids), args.max_tokens)
    generated = _median([_generate_once((loaded.model, ids), args.max_tokens) for _ in range(args.repeats)])

    print(f"prompt tokens: {ids.shape[-1]}, device: {loaded.device}, threads: {torch.get_num_threads()}")
    print(f"{'':28}{'TTFT (s)':>10}{'tokens/s':>10}{'tokens':>8}")
    for name, (ttft, rate, tokens) in (
        ("tokserve stream (HTTP+SSE)", streamed),
        ("model.generate (in-process)", generated),
    ):
        print(f"{name:28}{ttft:10.3f}{rate:10.1f}{tokens:8d}")


if __name__ == "__main__":
    main()
