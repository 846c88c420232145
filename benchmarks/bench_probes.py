"""Issue 14's probe table: the six probes by which the next engine (an owned paged KV cache, prefix caching, a batched
sampler, fair steps) is judged, run against `tokserve serve` or any OpenAI-compatible server.

- turns: one chat of 6 turns, 300 streamed tokens each, every answer appended to the history: time to first token
  per turn, turn 6 / turn 1, and `usage.prompt_tokens_details.cached_tokens` per turn ("n/a" where not reported).
- shared-prompt: 4 chats one after another sharing a ~1,500-token system prompt, 16 tokens each: time to first token
  each, and each later one / the first.
- late-early: 8 concurrent completions of 1,024 tokens: the median gap between content chunks over the last 10% of
  each stream's gaps / over the first 10%, all streams pooled.
- scaling: aggregate tokens/s of 32 concurrent completions of 128 tokens against 1 alone.
- long-prompt: 4 completions streaming, then an ~8,000-token prompt (`max_tokens` 1) and right behind it a tiny
  request (`max_tokens` 4): the tiny request's time to first token, and the running streams' gap p99 and worst while
  the long prompt is read against their median gap before it came (fewer tokens where the context is shorter).
- choices: two `n=4` completions of 500 tokens running, then a 16-token request: its time to first token and total.

Every request is greedy (temperature 0) and sets `ignore_eos` with its length; streams are read as raw SSE with httpx,
a gap being the time between two content chunks. A request gives up after `--timeout` seconds, so a run always ends
(about 10 minutes on 2 CPU cores). Prints each probe's rows as it goes, then one Markdown table for
benchmarks/RESULTS.md. By hand, never part of the test run.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_probes.py
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_probes.py --tokserve-args "--max-running 16" --probe turns
    .venv/bin/python benchmarks/bench_probes.py --peer vllm=http://127.0.0.1:8601
"""

import argparse
import asyncio
import shlex
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass, field

import httpx

from server_process import running_tokserve, wait_until_healthy
from sse_stream import StreamFailed, stream_chunks

# Words that are one token each in common BPE vocabularies: long deterministic prompts of a predictable size.
_TEXT = (
    "the river runs past a small town where people keep bees grow apples and mend boats in the long quiet "
    "evenings of late summer while children read old books about ships stars and distant cities"
)
_WORDS = _TEXT.split()
_USER_TURNS = [
    "Tell me a long story about a lighthouse keeper and a storm.",
    "Go on, what happened next?",
    "And then?",
    "Tell me more about the keeper.",
    "What did the town think?",
    "How does it end?",
]
_QUESTIONS = ["What is this text about?", "Name three things in it.", "Summarise it briefly.", "Who lives there?"]
_PROMPTS = [
    "Once upon a time a lighthouse keeper",
    "The steam engine works because",
    "At the fish market in the morning",
    "Dear sister, the sea has been",
    "To bake bread you first",
    "The fox looked up at the stars and",
    "A honey bee begins its life",
    "In spring the vegetable garden",
]


@dataclass
class Stream:
    """One streamed request: when it was sent, when each content chunk came, what it said, its usage."""

    sent: float = 0.0
    chunks: list[float] = field(default_factory=list)
    ended: float | None = None
    text: str = ""
    completion_tokens: int = 0
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    error: str | None = None

    @property
    def ttft(self) -> float:
        return self.chunks[0] - self.sent if self.chunks else float("nan")

    @property
    def gaps(self) -> list[tuple[float, float]]:
        """(gap in seconds, when it ended) between consecutive content chunks."""
        return [(b - a, b) for a, b in zip(self.chunks, self.chunks[1:], strict=False)]


@dataclass
class Target:
    name: str
    url: str
    model: str
    max_model_len: int | None
    rows: list[tuple[str, str, str]] = field(default_factory=list)

    def row(self, probe: str, measure: str, value: str) -> None:
        self.rows.append((probe, measure, value))
        print(f"{self.name} | {probe} | {measure} | {value}", file=sys.stderr)


def _words(count: int, offset: int = 0) -> str:
    # A stride coprime with the list's length, so the text does not repeat with a short period.
    return " ".join(_WORDS[(offset + 7 * i + i // len(_WORDS)) % len(_WORDS)] for i in range(count))


def _content(choice: dict[str, object]) -> str:
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return str(delta.get("content") or "")
    return str(choice.get("text") or "")


def _read_usage(record: Stream, usage: dict[str, object]) -> None:
    record.completion_tokens = int(str(usage.get("completion_tokens", 0)))
    record.prompt_tokens = int(str(usage["prompt_tokens"])) if "prompt_tokens" in usage else None
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict) and details.get("cached_tokens") is not None:
        record.cached_tokens = int(details["cached_tokens"])


async def _read(client: httpx.AsyncClient, target: Target, path: str, body: dict[str, object], record: Stream) -> None:
    """Stream one request into `record`; errors are kept in it, not raised."""
    body = {
        "model": target.model,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    } | body
    record.sent = time.perf_counter()
    async with client.stream("POST", f"{target.url}{path}", json=body) as response:
        try:
            async for chunk in stream_chunks(response):
                texts = [_content(choice) for choice in chunk.get("choices") or ()]
                if any(texts):
                    record.chunks.append(time.perf_counter())
                    record.text += "".join(texts)
                if chunk.get("usage"):
                    _read_usage(record, chunk["usage"])
        except StreamFailed as failure:
            record.error = str(failure)
            return
    record.ended = time.perf_counter()


async def _run(
    client: httpx.AsyncClient,
    target: Target,
    path: str,
    body: dict[str, object],
    timeout: float,
    record: Stream | None = None,
) -> Stream:
    """One streamed request, given up after `timeout` seconds; into `record` if given, so that what a cancelled
    request got so far stays readable."""
    record = Stream() if record is None else record
    try:
        await asyncio.wait_for(_read(client, target, path, body, record), timeout)
    except TimeoutError:
        record.error = f"gave up after {timeout:.0f} s"
    except httpx.HTTPError as error:
        record.error = f"{type(error).__name__}: {error}"
    return record


def _completion(prompt: str, max_tokens: int, **extra: object) -> dict[str, object]:
    return {"prompt": prompt, "max_tokens": max_tokens, **extra}


def _seconds(value: float) -> str:
    return f"{value:.2f} s"


def _ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}x" if denominator else "n/a"


def _check(target: Target, probe: str, streams: list[Stream]) -> None:
    errors = [s.error for s in streams if s.error]
    if errors:
        target.row(probe, "errors", f"{len(errors)} (first: {errors[0]})")


async def probe_turns(client: httpx.AsyncClient, target: Target, timeout: float) -> None:
    messages: list[dict[str, str]] = []
    turns: list[Stream] = []
    for number, user in enumerate(_USER_TURNS, 1):
        messages.append({"role": "user", "content": user})
        turn = await _run(client, target, "/v1/chat/completions", {"messages": messages, "max_tokens": 300}, timeout)
        turns.append(turn)
        messages.append({"role": "assistant", "content": turn.text})
        cached = "n/a" if turn.cached_tokens is None else str(turn.cached_tokens)
        target.row("turns", f"turn {number}: TTFT", _seconds(turn.ttft))
        target.row("turns", f"turn {number}: prompt / cached tokens", f"{turn.prompt_tokens} / {cached}")
    target.row("turns", "turn 6 / turn 1 TTFT", _ratio(turns[-1].ttft, turns[0].ttft))
    _check(target, "turns", turns)


async def probe_shared_prompt(client: httpx.AsyncClient, target: Target, timeout: float) -> None:
    system = "Read this text and answer questions about it. " + _words(1500)
    streams: list[Stream] = []
    for number, question in enumerate(_QUESTIONS, 1):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        stream = await _run(client, target, "/v1/chat/completions", {"messages": messages, "max_tokens": 16}, timeout)
        streams.append(stream)
        target.row("shared-prompt", f"request {number}: TTFT", _seconds(stream.ttft))
        if number > 1:
            target.row("shared-prompt", f"request {number} / request 1 TTFT", _ratio(stream.ttft, streams[0].ttft))
    target.row("shared-prompt", "prompt tokens", str(streams[0].prompt_tokens))
    _check(target, "shared-prompt", streams)


async def probe_late_early(client: httpx.AsyncClient, target: Target, timeout: float) -> None:
    streams = await asyncio.gather(
        *(_run(client, target, "/v1/completions", _completion(p, 1024), timeout) for p in _PROMPTS)
    )
    early: list[float] = []
    late: list[float] = []
    for stream in streams:
        gaps = [gap for gap, _ in stream.gaps]
        tenth = max(1, len(gaps) // 10)
        early += gaps[:tenth]
        late += gaps[-tenth:]
    if not early:
        target.row("late-early", "errors", "no gaps measured")
        return
    late_ms, early_ms = 1000 * statistics.median(late), 1000 * statistics.median(early)
    target.row("late-early", "gap median, first 10% (8 x 1,024)", f"{early_ms:.0f} ms")
    target.row("late-early", "gap median, last 10%", f"{late_ms:.0f} ms")
    target.row("late-early", "late / early", _ratio(late_ms, early_ms))
    _check(target, "late-early", streams)


async def _aggregate_rate(client: httpx.AsyncClient, target: Target, count: int, timeout: float) -> float:
    start = time.perf_counter()
    streams = await asyncio.gather(
        *(
            _run(client, target, "/v1/completions", _completion(_PROMPTS[i % len(_PROMPTS)] + f" ({i})", 128), timeout)
            for i in range(count)
        )
    )
    _check(target, "scaling", streams)
    return sum(s.completion_tokens or len(s.chunks) for s in streams) / (time.perf_counter() - start)


async def probe_scaling(client: httpx.AsyncClient, target: Target, timeout: float) -> None:
    alone = await _aggregate_rate(client, target, 1, timeout)
    target.row("scaling", "1 stream (128 tokens)", f"{alone:.1f} tok/s")
    together = await _aggregate_rate(client, target, 32, timeout)
    target.row("scaling", "32 streams, aggregate", f"{together:.1f} tok/s")
    target.row("scaling", "32 / 1", _ratio(together, alone))


async def _streaming(streams: list[Stream], chunks: int, timeout: float) -> None:
    """Wait until every stream has `chunks` content chunks (or has ended)."""
    deadline = time.perf_counter() + timeout
    while any(len(s.chunks) < chunks and s.ended is None and s.error is None for s in streams):
        if time.perf_counter() > deadline:
            return
        await asyncio.sleep(0.05)


async def _long_prompt_words(client: httpx.AsyncClient, target: Target, wanted: int, timeout: float) -> int:
    """How many of `_WORDS` make a prompt of about `wanted` tokens, from the tokens of a 400-word sample."""
    sample = await _run(client, target, "/v1/completions", _completion(_words(400), 1), timeout)
    per_word = (sample.prompt_tokens or 400) / 400
    return int(wanted / per_word)


async def probe_long_prompt(client: httpx.AsyncClient, target: Target, timeout: float) -> None:
    wanted = 8000
    if target.max_model_len is not None and target.max_model_len < wanted + 64:
        wanted = target.max_model_len - 64
        target.row("long-prompt", "note", f"context {target.max_model_len}: a {wanted}-token prompt, not 8,000")
    words = await _long_prompt_words(client, target, wanted, timeout)
    length = 4000 if target.max_model_len is None else min(4000, target.max_model_len - 64)
    running = [Stream() for _ in range(4)]
    tasks = [
        asyncio.create_task(
            _run(client, target, "/v1/completions", _completion(_PROMPTS[i], length), timeout, running[i])
        )
        for i in range(4)
    ]
    await asyncio.sleep(0)
    await _streaming(running, 30, timeout)
    arrived = time.perf_counter()
    long = asyncio.create_task(_run(client, target, "/v1/completions", _completion(_words(words), 1), timeout))
    await asyncio.sleep(0.05)  # right behind it, but surely behind it
    tiny = await _run(client, target, "/v1/completions", _completion("Hello", 4), timeout)
    read = await long
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    prompt_read = read.chunks[0] if read.chunks else arrived
    before = [gap for s in running for gap, at in s.gaps[5:] if at < arrived]
    # Every gap that overlaps the read, the one spanning its end (often the longest stall) included.
    during = [gap for s in running for gap, at in s.gaps if at > arrived and at - gap < prompt_read]
    target.row("long-prompt", "long prompt tokens", str(read.prompt_tokens))
    target.row("long-prompt", "long prompt: TTFT", _seconds(read.ttft))
    target.row("long-prompt", "tiny request behind it: TTFT", _seconds(tiny.ttft))
    if before and during:
        median = statistics.median(before)
        p99 = statistics.quantiles(during, n=100, method="inclusive")[-1] if len(during) > 1 else during[0]
        target.row("long-prompt", "running streams: gap median before", f"{1000 * median:.0f} ms")
        target.row("long-prompt", "running streams: gap p99 / worst while read", f"{p99:.2f} s / {max(during):.2f} s")
        target.row("long-prompt", "gap p99 while read / median before", _ratio(p99, median))
    _check(target, "long-prompt", [read, tiny, *running])


async def probe_choices(client: httpx.AsyncClient, target: Target, timeout: float) -> None:
    running = [Stream(), Stream()]
    tasks = [
        asyncio.create_task(
            _run(client, target, "/v1/completions", _completion(_PROMPTS[i], 500, n=4), timeout, running[i])
        )
        for i in range(2)
    ]
    await asyncio.sleep(0)
    await _streaming(running, 1, timeout)
    short = await _run(client, target, "/v1/completions", _completion("Hello", 16), timeout)
    still_running = sum(not task.done() for task in tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    total = (short.ended or time.perf_counter()) - short.sent
    target.row("choices", "16-token request: TTFT (2 x n=4 x 500 running)", _seconds(short.ttft))
    target.row("choices", "16-token request: total", _seconds(total))
    target.row("choices", "n=4 requests still running when it ended", f"{still_running} of 2")
    _check(target, "choices", [short])


PROBES: dict[str, Callable[[httpx.AsyncClient, Target, float], Awaitable[None]]] = {
    "turns": probe_turns,
    "shared-prompt": probe_shared_prompt,
    "late-early": probe_late_early,
    "scaling": probe_scaling,
    "long-prompt": probe_long_prompt,
    "choices": probe_choices,
}


async def _measure(target: Target, probes: list[str], timeout: float) -> None:
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=10), limits=limits) as client:
        warm = await _run(client, target, "/v1/completions", _completion("Hello", 4), timeout)
        if warm.error:
            sys.exit(f"{target.name} failed its first request: {warm.error}")
        for name in probes:
            start = time.perf_counter()
            await PROBES[name](client, target, timeout)
            print(f"{target.name}: {name} took {time.perf_counter() - start:.0f} s", file=sys.stderr)


def _target(name: str, url: str) -> Target:
    """A ready server, its model and context length read from its /v1/models."""
    url = url.rstrip("/")
    wait_until_healthy(url)
    model = httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]
    length = model.get("max_model_len")
    return Target(name, url, str(model["id"]), int(length) if length else None)


def _table(targets: list[Target]) -> str:
    names = [t.name for t in targets] if len(targets) > 1 else ["value"]
    lines = ["| probe | measure | " + " | ".join(names) + " |", "|---" * (2 + len(names)) + "|"]
    keys = list(dict.fromkeys((probe, measure) for t in targets for probe, measure, _ in t.rows))
    for probe, measure in keys:
        values = [next((v for p, m, v in t.rows if (p, m) == (probe, measure)), "") for t in targets]
        lines.append(f"| {probe} | {measure} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--probe", action="append", choices=list(PROBES), help="a probe to run, repeatable (all)")
    parser.add_argument(
        "--tokserve-args",
        help="extra flags of the started `tokserve serve` (quoted; a single flag as --tokserve-args=--flag); "
        "tokserve is started when this is given or no --peer is",
    )
    parser.add_argument("--peer", action="append", default=[], metavar="NAME=URL", help="a running server, repeatable")
    parser.add_argument("--timeout", type=float, default=300, help="seconds before a request is given up (300)")
    args = parser.parse_args()
    if any("=" not in peer for peer in args.peer):
        parser.error("--peer takes NAME=URL")
    return args


def main() -> None:
    args = _parse_args()
    probes = args.probe or list(PROBES)
    with ExitStack() as stack:
        targets = [_target(*peer.split("=", 1)) for peer in args.peer]
        if args.tokserve_args is not None or not targets:
            url, _ = stack.enter_context(running_tokserve(shlex.split(args.tokserve_args or "")))
            targets.insert(0, _target(f"tokserve {args.tokserve_args or ''}".strip(), url))
        for target in targets:
            asyncio.run(_measure(target, probes, args.timeout))
    print(_table(targets))


if __name__ == "__main__":
    main()
