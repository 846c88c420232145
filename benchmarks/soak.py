"""Soak: minutes of mixed load with disconnects against a `tokserve serve` subprocess; resident memory and errors.

    .venv/bin/python benchmarks/soak.py --minutes 10

Clients loop until the time is up, each request drawn at random: a streamed chat, a whole completion, a streamed
completion dropped after a few events, or a request dropped right after sending it. More clients than the queue
holds, so some requests are refused with 429 (the client then waits the Retry-After seconds): the only error
allowed. Resident memory (VmRSS of the server) is
read after a warm-up, which loads what a first run of each path loads, and at the end; growth must stay under 5%.
Exits 1 when it does not, or on any unintended error.
"""

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from server_process import running_tokserve

GROWTH_LIMIT = 0.05


def resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    unintended: list[str] = field(default_factory=list)

    def error(self, what: str) -> None:
        self.outcomes["unintended error"] += 1
        if len(self.unintended) < 10:
            self.unintended.append(what)


async def back_off(response: httpx.Response, tally: Tally) -> None:
    """A 429: wait the Retry-After seconds, as the openai SDK does; a client that hammers would only measure that."""
    tally.outcomes["429"] += 1
    await asyncio.sleep(float(response.headers["retry-after"]))


async def streamed(http: httpx.AsyncClient, path: str, body: dict[str, object], keep: int | None, tally: Tally) -> None:
    """A streaming request read to its end, or dropped after `keep` events."""
    async with http.stream("POST", path, json={**body, "stream": True}) as response:
        if response.status_code == 429:
            await back_off(response, tally)
            return
        if response.status_code != 200:
            tally.error(f"{path} {response.status_code}: {(await response.aread())[:200]!r}")
            return
        events = 0
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line.startswith('data: {"error"'):
                tally.error(f"{path} stream: {line[:200]}")
                return
            events += 1
            if keep is not None and events >= keep:
                tally.outcomes["dropped mid-stream"] += 1
                return
        tally.outcomes["done"] += 1


async def dropped_at_once(url: str, body: dict[str, object], tally: Tally) -> None:
    host, port = url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    payload = json.dumps({**body, "stream": True}).encode()
    writer.write(
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    await writer.drain()
    writer.close()
    tally.outcomes["dropped before the first byte"] += 1


async def one_request(http: httpx.AsyncClient, url: str, rng: random.Random, tally: Tally) -> None:
    common = {"max_tokens": rng.randint(1, 32), "temperature": rng.choice([0, 0.7, 1.0]), "seed": rng.randint(0, 99)}
    prompt = f"Story {rng.randint(0, 10**6)}: once upon a time"
    kind = rng.random()
    if kind < 0.4:
        messages = [{"role": "user", "content": prompt}]
        await streamed(http, "/v1/chat/completions", {"messages": messages, **common}, None, tally)
    elif kind < 0.7:
        response = await http.post("/v1/completions", json={"prompt": prompt, **common})
        if response.status_code == 429:
            await back_off(response, tally)
        elif response.status_code != 200:
            tally.error(f"/v1/completions {response.status_code}: {response.text[:200]}")
        else:
            tally.outcomes["done"] += 1
    elif kind < 0.9:
        await streamed(http, "/v1/completions", {"prompt": prompt, **common}, rng.randint(1, 4), tally)
    else:
        await dropped_at_once(url, {"prompt": prompt, **common}, tally)


async def load(url: str, seconds: float, clients: int, seed: int, tally: Tally) -> None:
    deadline = time.monotonic() + seconds

    async def client(number: int) -> None:
        rng = random.Random(seed * 1000 + number)
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            while time.monotonic() < deadline:
                try:
                    await one_request(http, url, rng, tally)
                except httpx.HTTPError as error:
                    tally.error(f"{type(error).__name__}: {error}")

    await asyncio.gather(*(client(number) for number in range(clients)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--warm-up", type=float, default=60, help="seconds of load before the first memory reading")
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--max-queue", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with running_tokserve(["--max-queue", str(args.max_queue)]) as (url, server):
        loaded = resident_bytes(server.pid)
        warm_up = Tally()
        asyncio.run(load(url, args.warm_up, args.clients, args.seed, warm_up))
        start = resident_bytes(server.pid)
        tally = Tally()
        began = time.monotonic()
        asyncio.run(load(url, args.minutes * 60, args.clients, args.seed + 1, tally))
        elapsed = time.monotonic() - began
        end = resident_bytes(server.pid)
        healthy = httpx.get(f"{url}/health").json()

    growth = (end - start) / start
    loaded_mib, start_mib, end_mib = (reading / 2**20 for reading in (loaded, start, end))
    print(f"soak: {args.minutes:g} min, {args.clients} clients, --max-queue {args.max_queue}, seed {args.seed}")
    print(
        f"resident memory (MiB): {loaded_mib:.0f} loaded, {start_mib:.0f} after the warm-up, {end_mib:.0f} at the end"
    )
    print(f"growth: {growth:+.2%} (limit {GROWTH_LIMIT:.0%})")
    print(f"requests in {elapsed:.0f} s: {dict(sorted(tally.outcomes.items()))}; /health: {healthy}")
    for what in tally.unintended:
        print(f"  unintended: {what}")
    if growth >= GROWTH_LIMIT or tally.outcomes["unintended error"] or healthy != {"status": "ready"}:
        sys.exit(1)


if __name__ == "__main__":
    main()
