"""Serving under load: time to first token, inter-token latency, end-to-end latency and aggregate tokens/s of
OpenAI-compatible servers at several concurrency levels, beside plain `model.generate` on the same prompts.

Each request is a streamed greedy chat completion of a fixed length (`max_tokens`, with `ignore_eos`), read with
httpx as raw SSE: time to first token runs from sending the request to the first content chunk, inter-token latency
is the gap between content chunks, tokens come from the final `usage` (else one per content chunk). A level of
concurrency C keeps C requests in flight (a closed loop) over max(8, 2C) requests, prompt i being PROMPTS[i % 16];
tokens/s is all tokens of the level over its wall time.

The baseline is the embedded model loaded with tokserve's loader in a separate process (its threads and memory stay
out of the server's), timing `model.generate` over the same prompts at fixed batch sizes (left padding, greedy,
`min_new_tokens` = `max_new_tokens`). Levels and baseline batches take turns, so every ratio comes from one run.
Peak resident memory is the server process's high-water mark (VmHWM), for servers found listening on the
target's port. Prints a markdown table for benchmarks/RESULTS.md. Not part of the test run.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_serving.py --tokserve-args "--max-running 8"
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_serving.py --peer NAME=http://127.0.0.1:8601 \\
        --peer-fixed-length generation-config
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import shlex
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx
import psutil

from server_process import running_tokserve, wait_until_healthy
from sse_stream import StreamFailed, stream_chunks

if TYPE_CHECKING:  # torch and the engine load in the baseline's process only
    from tokserve.engine import LoadedModel

# About 40 tokens each with SmolLM2's chat template (41-47), all asking for more than 64 tokens.
PROMPTS = [
    "Tell me a long story about a lighthouse keeper and a storm.",
    "Explain in detail how a steam engine turns heat into motion.",
    "Describe a busy morning at a fish market in a harbour town.",
    "Write a long letter from a sailor to his sister back home.",
    "Explain step by step how bread dough rises and bakes in an oven.",
    "Tell me a long story about a fox who learns to read the stars.",
    "Describe the life of a honey bee from egg to forager in detail.",
    "Write a detailed guide to planting a vegetable garden in spring.",
    "Explain how a bicycle stays upright and why steering matters.",
    "Tell me a long story about two friends crossing a snowy mountain pass.",
    "Describe how a river shapes its valley over thousands of years.",
    "Write a long diary entry of a girl on her first day at a new school.",
    "Explain in detail how the heart pumps blood around the body.",
    "Tell me a long story about a robot who tends an old library.",
    "Describe a thunderstorm rolling over wheat fields on a summer evening.",
    "Explain how a clock with pendulum and gears keeps accurate time.",
]


@dataclass
class Timing:
    """One request: seconds from sending it to its first content chunk and to its end, and the gaps between."""

    ttft: float = 0.0
    e2e: float = 0.0
    gaps: list[float] = field(default_factory=list)
    tokens: int = 0
    error: str | None = None


@dataclass
class Row:
    """One line of the table: a target at one concurrency, or the baseline at one batch size."""

    target: str
    load: str
    requests: int
    tokens: int
    rate: float
    timings: list[Timing] = field(default_factory=list)
    peak_rss: int | None = None
    ratio: float | None = None


@dataclass
class Target:
    name: str
    url: str
    fixed_length: dict[str, object]
    pid: int | None = None


def _requests_at(concurrency: int) -> int:
    return max(8, 2 * concurrency)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


async def _stream(client: httpx.AsyncClient, url: str, body: dict[str, object]) -> Timing:
    timing = Timing()
    chunks = 0
    start = last = time.perf_counter()
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            async for chunk in stream_chunks(response):
                if any((choice.get("delta") or {}).get("content") for choice in chunk.get("choices") or ()):
                    now = time.perf_counter()
                    if chunks:
                        timing.gaps.append(now - last)
                    else:
                        timing.ttft = now - start
                    chunks, last = chunks + 1, now
                if chunk.get("usage"):
                    timing.tokens = int(chunk["usage"]["completion_tokens"])
    except StreamFailed as failure:
        timing.error = str(failure)
        return timing
    except httpx.HTTPError as error:
        timing.error = f"{type(error).__name__}: {error}"
        return timing
    timing.e2e = time.perf_counter() - start
    timing.tokens = timing.tokens or chunks
    return timing


async def _stream_alone(url: str, body: dict[str, object]) -> Timing:
    async with httpx.AsyncClient(timeout=900) as client:
        return await _stream(client, url, body)


def _body(prompt: str, max_tokens: int, target: Target, model: str | None) -> dict[str, object]:
    body: dict[str, object] = {
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        **target.fixed_length,
    }
    return body | ({"model": model} if model else {})


async def _run_level(target: Target, concurrency: int, args: argparse.Namespace) -> tuple[list[Timing], float]:
    """Keep `concurrency` requests in flight until all of the level's requests are done; (timings, wall time)."""
    prompts = iter(range(_requests_at(concurrency)))
    timings: list[Timing] = []

    async def user(client: httpx.AsyncClient) -> None:
        for i in prompts:
            body = _body(PROMPTS[i % len(PROMPTS)], args.max_tokens, target, args.model)
            timings.append(await _stream(client, target.url, body))

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=httpx.Timeout(900, connect=10), limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(user(client) for _ in range(concurrency)))
        return timings, time.perf_counter() - start


def _measure(target: Target, concurrency: int, args: argparse.Namespace) -> Row:
    timings, wall = asyncio.run(_run_level(target, concurrency, args))
    tokens = sum(t.tokens for t in timings if t.error is None)
    row = Row(
        target.name, f"{concurrency} stream{'s' * (concurrency > 1)}", len(timings), tokens, tokens / wall, timings
    )
    row.peak_rss = _peak_rss(target.pid)
    short = sum(1 for t in timings if t.error is None and t.tokens < args.max_tokens)
    errors = [t.error for t in timings if t.error]
    print(
        f"{target.name} at {concurrency}: {row.rate:.1f} tok/s, {len(errors)} errors, {short} short"
        + (f" (first error: {errors[0]})" if errors else ""),
        file=sys.stderr,
    )
    return row


def generate_fixed(loaded: "LoadedModel", prompts: list[str], new_tokens: int) -> list[list[int]]:
    """Greedy `model.generate` of exactly `new_tokens` tokens for each prompt in one left-padded batch."""
    import torch

    tokenizer = loaded.tokenizer
    tokenizer.padding_side = "left"
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    conversations = [[{"role": "user", "content": p}] for p in prompts]
    inputs = tokenizer.apply_chat_template(
        conversations, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True
    ).to(loaded.device)
    with torch.inference_mode():
        output = loaded.model.generate(
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return output[:, inputs["input_ids"].shape[1] :].tolist()


def _baseline_worker(conn: Connection, dtype: str, threads: int | None, max_tokens: int) -> None:
    """In its own process: load the embedded model, then time `generate` for each (batch, requests) received."""
    import torch  # only here: the load generator's process stays free of torch and its threads

    from tokserve.engine import load_model

    if threads:
        torch.set_num_threads(threads)
    loaded = load_model(None, "auto", dtype)
    generate_fixed(loaded, PROMPTS[:1], 4)
    generate_fixed(loaded, PROMPTS[:8], 4)
    chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    lengths = [
        len(ids) for ids in loaded.tokenizer.apply_chat_template(chats, add_generation_prompt=True, return_dict=False)
    ]
    conn.send((str(loaded.model.dtype).removeprefix("torch."), torch.get_num_threads(), min(lengths), max(lengths)))
    while (job := conn.recv()) is not None:
        batch, requests = job
        start = time.perf_counter()
        for first in range(0, requests, batch):
            generate_fixed(loaded, [PROMPTS[i % len(PROMPTS)] for i in range(first, first + batch)], max_tokens)
        conn.send(time.perf_counter() - start)


class Baseline:
    """The `model.generate` process: started at once (it loads while servers warm up), asked for one batch size at a
    time."""

    def __init__(self, args: argparse.Namespace) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_baseline_worker, args=(child, args.dtype, args.threads, args.max_tokens), daemon=True
        )
        self._process.start()
        self._max_tokens = args.max_tokens
        self._ready: tuple[str, int, int, int] | None = None

    def describe(self) -> str:
        if self._ready is None:
            self._ready = self._conn.recv()
        dtype, threads, shortest, longest = self._ready
        return f"{dtype}, {threads} threads; prompts of {shortest}-{longest} tokens with the chat template"

    def measure(self, batch: int) -> Row:
        self.describe()
        requests = _requests_at(batch)
        self._conn.send((batch, requests))
        seconds = self._conn.recv()
        tokens = requests * self._max_tokens
        row = Row("`model.generate`", f"batch {batch}", requests, tokens, tokens / seconds, ratio=1.0)
        row.peak_rss = _peak_rss(self._process.pid)
        print(f"model.generate at batch {batch}: {row.rate:.1f} tok/s", file=sys.stderr)
        return row

    def close(self) -> None:
        self._conn.send(None)
        self._process.join()


def _peak_rss(pid: int | None) -> int | None:
    """The process's resident high-water mark in bytes (Linux), or None."""
    status = Path(f"/proc/{pid}/status")
    if pid is None or not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def _listening_pid(url: str) -> int | None:
    """The process listening on the URL's port on this machine, if it can be seen."""
    port = urlsplit(url).port or 80
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return None
    return next((c.pid for c in connections if c.status == psutil.CONN_LISTEN and c.laddr.port == port), None)


def _warm_up(target: Target, args: argparse.Namespace) -> None:
    """One short request, so a lazy first-request set-up is not measured as the first level's latency."""
    wait_until_healthy(target.url)
    start = time.perf_counter()
    body = _body(PROMPTS[0], 4, target, args.model) | {"max_tokens": 4}
    body.pop("generation_config", None)
    body.pop("min_tokens", None)
    timing = asyncio.run(_stream_alone(target.url, body))
    if timing.error:
        sys.exit(f"{target.name} at {target.url} failed its first request: {timing.error}")
    print(f"{target.name}: first request took {time.perf_counter() - start:.1f} s", file=sys.stderr)


def _table(rows: list[Row]) -> str:
    lines = [
        "| target | load | requests | errors | TTFT p50 (s) | TTFT p90 (s) | ITL p50 (ms) | e2e p50 (s) | tokens "
        "| tok/s | vs generate | peak RSS (GB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        done = [t for t in row.timings if t.error is None]
        gaps = [gap for t in done for gap in t.gaps]
        cells = [
            row.target,
            row.load,
            str(row.requests),
            str(row.requests - len(done)) if row.timings else "",
            f"{_percentile([t.ttft for t in done], 0.5):.3f}" if done else "",
            f"{_percentile([t.ttft for t in done], 0.9):.3f}" if done else "",
            f"{1000 * _percentile(gaps, 0.5):.1f}" if gaps else "",
            f"{_percentile([t.e2e for t in done], 0.5):.2f}" if done else "",
            str(row.tokens),
            f"{row.rate:.1f}",
            f"{row.ratio:.2f}x" if row.ratio is not None else "",
            f"{row.peak_rss / 1e9:.2f}" if row.peak_rss else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fixed_length(how: str, max_tokens: int) -> dict[str, object]:
    """The request fields that make a server generate exactly `max_tokens` tokens."""
    if how == "ignore-eos":
        return {"ignore_eos": True}
    if how == "generation-config":  # transformers serve: a GenerationConfig as a JSON string
        return {"generation_config": json.dumps({"min_new_tokens": max_tokens})}
    if how == "min-tokens":  # llama-cpp-python's server: its end-of-sequence token held back (llama_cpp_peer.md)
        return {"min_tokens": max_tokens}
    return {}


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,4,8,16", help="comma-separated levels (default: 1,4,8,16)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per request (default: 64)")
    parser.add_argument(
        "--tokserve-args",
        help="start `tokserve serve` on the embedded model with these extra flags (quoted; a single flag as "
        "--tokserve-args=--flag); `--dtype` comes from this script's --dtype",
    )
    parser.add_argument("--url", action="append", default=[], help="a running server, labelled by its URL; repeatable")
    parser.add_argument("--peer", action="append", default=[], metavar="NAME=URL", help="a labelled running server")
    parser.add_argument(
        "--peer-fixed-length",
        choices=["ignore-eos", "generation-config", "min-tokens", "none"],
        default="ignore-eos",
        help="how --url/--peer servers are asked for exactly --max-tokens tokens: `ignore_eos` (tokserve, vLLM), "
        "transformers serve's `generation_config` with min_new_tokens, `min_tokens` (llama-cpp-python), or nothing "
        "(for servers that refuse all of them)",
    )
    parser.add_argument("--model", help="`model` sent in each request (default: none, the server's only model)")
    parser.add_argument(
        "--dtype", default="float32", help="dtype of the baseline and of the started tokserve (default: float32)"
    )
    parser.add_argument("--threads", type=int, help="torch threads of the baseline (default: torch's)")
    parser.add_argument("--baseline-batches", default="1,8", help="model.generate batch sizes; empty: no baseline")
    args = parser.parse_args()
    if args.tokserve_args and "--dtype" in shlex.split(args.tokserve_args):
        parser.error("give the dtype once, with --dtype: the baseline uses it too")
    if any("=" not in peer for peer in args.peer):
        parser.error("--peer takes NAME=URL")
    return args


def _targets(args: argparse.Namespace) -> list[Target]:
    peers = [(url, url) for url in args.url] + [peer.split("=", 1) for peer in args.peer]
    fields = _fixed_length(args.peer_fixed_length, args.max_tokens)
    return [Target(name, url.rstrip("/"), fields, _listening_pid(url)) for name, url in peers]


def main() -> None:
    args = _parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    batches = [int(b) for b in args.baseline_batches.split(",") if b]
    load_at_start = os.getloadavg()
    with ExitStack() as stack:
        baseline = Baseline(args) if batches else None
        if baseline:
            stack.callback(baseline.close)
        targets = _targets(args)
        if args.tokserve_args is not None:
            flags = ["--dtype", args.dtype, *shlex.split(args.tokserve_args)]
            url, server = stack.enter_context(running_tokserve(flags))
            name = f"tokserve {args.tokserve_args}".strip()
            targets.insert(0, Target(name, url, _fixed_length("ignore-eos", args.max_tokens), server.pid))
        if not targets:
            sys.exit("nothing to measure: give --tokserve-args, --url or --peer")
        for target in targets:
            _warm_up(target, args)
        rows: list[Row] = []
        baseline_rates: dict[int, float] = {}
        # Baseline batch sizes that are no level run first; the others just before their level.
        for level in [b for b in batches if b not in levels] + levels:
            if baseline and level in batches:
                rows.append(baseline.measure(level))
                baseline_rates[level] = rows[-1].rate
            if level not in levels:
                continue
            for target in targets:
                rows.append(_measure(target, level, args))
                if level in baseline_rates:
                    rows[-1].ratio = rows[-1].rate / baseline_rates[level]
        described = baseline.describe() if baseline else f"{args.dtype} (no baseline)"
    print(_table(rows))
    print()
    print(
        f"{args.max_tokens} greedy tokens per request; baseline {described}; "
        f"load average {load_at_start[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end"
    )
    for row in rows:
        short = sum(1 for t in row.timings if t.error is None and t.tokens < args.max_tokens)
        if short:
            print(
                f"{row.target} at {row.load}: {short} of {row.requests} requests ended before {args.max_tokens} tokens"
            )


if __name__ == "__main__":
    main()
