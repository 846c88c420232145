"""Attacks of issue 13 against a running tokserve server: what they do to `/health` and to a stream beside them.

    .venv/bin/python benchmarks/attack.py --url http://127.0.0.1:8000 --scenario all --server-log server.log

Scenarios (`--scenario`, repeatable, or `all`: nested-json, big-prompts, then idle, which may leave a server broken):

- idle: `--idle` connections that send nothing and `--trickle` ones that send one byte of a request head a second,
  never finishing it. While they are held: `/health` `--probes` times one after another, each on a new connection
  (median and worst, a timeout at 5 s counted as 5 s), then one greedy streamed completion of 32 tokens (`ignore_eos`):
  its time to first token and tokens/s, or its failure. Then the connections are closed, and the time `/health`
  takes to answer again is reported.
- nested-json: a streamed completion of 200 tokens, alone, then while `--clients` clients loop posting chat requests
  whose `chat_template_kwargs` nests 800 objects (`{"a": {"a": ...}}`): the stream's median and worst inter-token gap
  in each run, and attacked / alone.
- big-prompts: a streamed completion of 100 tokens, alone, then while 3 clients loop posting `/v1/completions` with a
  1,000,000-character prompt (refused with a 400, but tokenized first): the stream's total time, attacked / alone.

Each attack stops when its measurement ends or after `--seconds`, whichever comes first, and closes its sockets. With
`--server-log`, the bytes the server's log grew by during each attack. The attackers run on their own event loop in a
thread; the measured requests are made from the main thread with a fresh connection each. Prints one table.
Loopback servers only. Raises this process's open-file soft limit to its hard limit (the idle scenario needs
`--idle` + `--trickle` sockets).
"""

import argparse
import asyncio
import ipaddress
import json
import resource
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx

PROBE_TIMEOUT = 5.0
STREAM_TIMEOUT = 30.0  # per read of a measured stream; a stream under attack may be slow, not silent for this long
NESTING = 800
BIG_PROMPT_CHARS = 1_000_000
BIG_PROMPT_CLIENTS = 3
TRICKLE_HEAD = b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-Padding: "

Attack = Callable[[threading.Event, Counter[str]], Coroutine[None, None, None]]


@dataclass
class Table:
    """The rows printed at the end: scenario, measure, value."""

    rows: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, scenario: str, measure: str, value: str) -> None:
        self.rows.append((scenario, measure, value))
        print(f"  {scenario}: {measure}: {value}", file=sys.stderr, flush=True)

    def render(self) -> str:
        lines = ["| scenario | measure | value |", "|---|---|---|"]
        lines += [f"| {scenario} | {measure} | {value} |" for scenario, measure, value in self.rows]
        return "\n".join(lines)


@dataclass
class StreamTiming:
    """One measured stream: arrival times of its content events, from the request's start."""

    arrivals: list[float] = field(default_factory=list)
    tokens: int | None = None
    failure: str | None = None

    @property
    def gaps(self) -> list[float]:
        return [later - earlier for earlier, later in zip(self.arrivals, self.arrivals[1:], strict=False)]

    def summary(self) -> str:
        if not self.arrivals:
            return f"failed: {self.failure}"
        tokens = self.tokens if self.tokens is not None else len(self.arrivals)
        total = self.arrivals[-1]
        text = f"{tokens} tokens in {total:.2f} s, first after {self.arrivals[0]:.2f} s, {tokens / total:.1f} tok/s"
        return text if self.failure is None else f"{text}, then failed: {self.failure}"


def raise_open_file_limit() -> int:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def log_size(path: Path | None) -> int | None:
    return path.stat().st_size if path is not None else None


def growth(path: Path | None, before: int | None) -> str:
    if path is None or before is None:
        return "n/a (no --server-log)"
    grown = path.stat().st_size - before
    return f"{grown / 2**20:.1f} MiB" if grown >= 2**20 else f"{grown / 2**10:.1f} KiB"


def timed_stream(url: str, max_tokens: int) -> StreamTiming:
    """A greedy streamed completion of exactly `max_tokens` tokens on a new connection."""
    body = {
        "prompt": "Once upon a time",
        "max_tokens": max_tokens,
        "stream": True,
        "temperature": 0,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
    timing = StreamTiming()
    start = time.perf_counter()
    try:
        with (
            httpx.Client(timeout=httpx.Timeout(STREAM_TIMEOUT, connect=PROBE_TIMEOUT)) as http,
            http.stream("POST", f"{url}/v1/completions", json=body) as response,
        ):
            if response.status_code != 200:
                timing.failure = f"status {response.status_code}"
                return timing
            for line in response.iter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line.removeprefix("data: "))
                if "error" in chunk:
                    timing.failure = f"error event: {str(chunk['error'])[:80]}"
                    return timing
                if chunk.get("usage"):
                    timing.tokens = chunk["usage"]["completion_tokens"]
                if any(choice.get("text") for choice in chunk.get("choices", [])):
                    timing.arrivals.append(time.perf_counter() - start)
    except httpx.HTTPError as error:
        timing.failure = type(error).__name__
    return timing


def health_once(url: str) -> float | str:
    """Seconds `/health` took on a new connection, or what went wrong."""
    start = time.perf_counter()
    try:
        response = httpx.get(f"{url}/health", timeout=PROBE_TIMEOUT)
    except httpx.TimeoutException:
        return "timeout"
    except httpx.HTTPError as error:
        return type(error).__name__
    return time.perf_counter() - start if response.status_code == 200 else f"status {response.status_code}"


@dataclass
class AttackRun:
    """An attack in progress: its tally (read it only once the attack is over) and whether it has stopped."""

    tally: Counter[str]
    stopped: threading.Event


@contextmanager
def attack_running(attack: Attack, seconds: float, ready: threading.Event | None = None) -> Iterator[AttackRun]:
    """Run `attack` on its own event loop in a thread until the block ends or `seconds` pass."""
    run = AttackRun(Counter(), threading.Event())
    thread = threading.Thread(target=lambda: asyncio.run(attack(run.stopped, run.tally)), daemon=True)
    timer = threading.Timer(seconds, run.stopped.set)
    thread.start()
    timer.start()
    try:
        if ready is not None and not ready.wait(seconds):
            sys.exit("the attack did not get ready")
        yield run
    finally:
        run.stopped.set()
        timer.cancel()
        thread.join()


async def until_set(stop: threading.Event) -> None:
    while not stop.is_set():
        await asyncio.sleep(0.1)


def posting_clients(url: str, path: str, body: bytes, clients: int) -> Attack:
    """`clients` clients that post `body` one request after another; the tally counts the answers."""

    async def client(http: httpx.AsyncClient, tally: Counter[str]) -> None:
        while True:
            try:
                response = await http.post(path, content=body, headers={"Content-Type": "application/json"})
                tally[f"status {response.status_code}"] += 1
            except httpx.HTTPError as error:
                tally[type(error).__name__] += 1

    async def attack(stop: threading.Event, tally: Counter[str]) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            tasks = [asyncio.create_task(client(http, tally)) for _ in range(clients)]
            await until_set(stop)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    return attack


def held_connections(host: str, port: int, idle: int, trickle: int, ready: threading.Event) -> Attack:
    """`idle` silent connections and `trickle` ones sending a request head a byte a second; held until stopped."""

    async def open_one(tally: Counter[str]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            return await asyncio.wait_for(asyncio.open_connection(host, port), PROBE_TIMEOUT)
        except (OSError, TimeoutError) as error:
            tally[f"connect failed: {type(error).__name__}"] += 1
            return None

    async def watch(reader: asyncio.StreamReader, tally: Counter[str]) -> None:
        with suppress(OSError):
            await reader.read(1)
        tally["closed by the server"] += 1

    async def drip(writers: list[asyncio.StreamWriter]) -> None:
        for sent in range(sys.maxsize):
            byte = TRICKLE_HEAD[sent : sent + 1] or b"a"  # a header value that never ends
            for writer in writers:
                if not writer.is_closing():
                    with suppress(OSError):
                        writer.write(byte)
            await asyncio.sleep(1)

    async def attack(stop: threading.Event, tally: Counter[str]) -> None:
        opened = await asyncio.gather(*(open_one(tally) for _ in range(idle + trickle)))
        connections = [connection for connection in opened if connection is not None]
        tally["opened"] = len(connections)
        watchers = [asyncio.create_task(watch(reader, tally)) for reader, _ in connections]
        writers = [writer for _, writer in connections]
        dripping = asyncio.create_task(drip(writers[idle:]))
        ready.set()
        await until_set(stop)
        dripping.cancel()
        for watcher in watchers:
            watcher.cancel()
        for writer in writers:
            writer.close()
        await asyncio.gather(dripping, *watchers, return_exceptions=True)

    return attack


def seconds_summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} / {max(values):.3f}"


def idle_scenario(url: str, args: argparse.Namespace, table: Table) -> None:
    name = "idle"
    address = httpx.URL(url)
    ready = threading.Event()
    attack = held_connections(address.host, address.port or 80, args.idle, args.trickle, ready)
    size = log_size(args.server_log)
    probes: list[float | str] = []
    with attack_running(attack, args.seconds, ready) as run:
        table.add(name, "connections opened (idle + trickling)", f"{run.tally['opened']} of {args.idle + args.trickle}")
        time.sleep(2)  # the trickle has begun
        while len(probes) < args.probes and not run.stopped.is_set():
            probes.append(health_once(url))
        stream = timed_stream(url, 32)
        cut_short = run.stopped.is_set()
    answered = [probe for probe in probes if isinstance(probe, float)]
    failed = Counter(probe for probe in probes if isinstance(probe, str))
    timed = answered + [PROBE_TIMEOUT] * failed["timeout"]
    table.add(name, f"/health median / worst (s), {len(probes)} probes", seconds_summary(timed) if timed else "n/a")
    table.add(name, f"/health timeouts ({PROBE_TIMEOUT:g} s)", str(failed.pop("timeout", 0)))
    if failed:
        table.add(name, "/health other failures", str(dict(failed)))
    table.add(name, "stream of 32 tokens", stream.summary())
    if cut_short:
        table.add(name, "note", f"the connections were released after {args.seconds:g} s, before the stream ended")
    for key, count in sorted(run.tally.items()):
        if key != "opened":
            table.add(name, f"connections {key}", str(count))
    released = time.monotonic()
    while not isinstance(health_once(url), float) and time.monotonic() - released < 60:
        time.sleep(0.5)
    table.add(name, "/health answers again after release (s)", f"{time.monotonic() - released:.1f}")
    table.add(name, "server log growth", growth(args.server_log, size))


def stream_under_attack(
    name: str, url: str, max_tokens: int, attack: Attack, args: argparse.Namespace, table: Table
) -> tuple[StreamTiming, StreamTiming]:
    """The stream alone, then under `attack` (from a second after its start); reports both and the attack's effects."""
    alone = timed_stream(url, max_tokens)
    size = log_size(args.server_log)
    with attack_running(attack, args.seconds) as run:
        time.sleep(1)
        attacked = timed_stream(url, max_tokens)
        cut_short = run.stopped.is_set()
    table.add(name, "attackers' answers", str(dict(run.tally)))
    for label, timing in (("alone", alone), ("attacked", attacked)):
        table.add(name, f"stream of {max_tokens} tokens, {label}", timing.summary())
        if timing.gaps:
            table.add(name, f"stream {label}: inter-token gap median / worst (s)", seconds_summary(timing.gaps))
    if cut_short:
        table.add(name, "note", f"the attack stopped after {args.seconds:g} s, before the stream ended")
    table.add(name, "server log growth", growth(args.server_log, size))
    return alone, attacked


def nested_json_scenario(url: str, args: argparse.Namespace, table: Table) -> None:
    name = "nested-json"
    nested = '{"a":' * (NESTING - 1) + "{}" + "}" * (NESTING - 1)
    body = f'{{"messages":[{{"role":"user","content":"hi"}}],"max_tokens":1,"chat_template_kwargs":{nested}}}'
    table.add(name, "attackers", f"{args.clients} clients, {NESTING} levels, bodies of {len(body):,} bytes")
    attack = posting_clients(url, "/v1/chat/completions", body.encode(), args.clients)
    alone, attacked = stream_under_attack(name, url, 200, attack, args, table)
    if alone.gaps and attacked.gaps:
        median = statistics.median(attacked.gaps) / statistics.median(alone.gaps)
        worst = max(attacked.gaps) / max(alone.gaps)
        table.add(name, "attacked / alone: gap median, worst", f"{median:.2f}x, {worst:.2f}x")


def big_prompts_scenario(url: str, args: argparse.Namespace, table: Table) -> None:
    name = "big-prompts"
    prompt = ("Once upon a time, in a land far away, " * (BIG_PROMPT_CHARS // 20))[:BIG_PROMPT_CHARS]
    body = json.dumps({"prompt": prompt, "max_tokens": 1}).encode()
    table.add(name, "attackers", f"{BIG_PROMPT_CLIENTS} clients, prompts of {BIG_PROMPT_CHARS:,} characters")
    attack = posting_clients(url, "/v1/completions", body, BIG_PROMPT_CLIENTS)
    alone, attacked = stream_under_attack(name, url, 100, attack, args, table)
    if alone.arrivals and attacked.arrivals and attacked.failure is None:
        table.add(name, "attacked / alone: total time", f"{attacked.arrivals[-1] / alone.arrivals[-1]:.2f}x")


SCENARIOS = {"nested-json": nested_json_scenario, "big-prompts": big_prompts_scenario, "idle": idle_scenario}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8000 (loopback only)")
    parser.add_argument("--scenario", action="append", choices=[*SCENARIOS, "all"], help="default: all")
    parser.add_argument("--seconds", type=float, default=120, help="longest any one attack runs")
    parser.add_argument("--server-log", type=Path, help="the server's log file, to report its growth")
    parser.add_argument("--idle", type=int, default=2000, help="idle connections (idle scenario)")
    parser.add_argument("--trickle", type=int, default=200, help="trickling connections (idle scenario)")
    parser.add_argument("--probes", type=int, default=20, help="/health requests (idle scenario)")
    parser.add_argument("--clients", type=int, default=4, help="attacking clients (nested-json scenario)")
    args = parser.parse_args()
    url = args.url.rstrip("/")
    if not ipaddress.ip_address(httpx.URL(url).host).is_loopback:
        sys.exit("attack.py attacks loopback servers only")
    chosen = [*SCENARIOS] if not args.scenario or "all" in args.scenario else args.scenario

    limit = raise_open_file_limit()
    print(f"open-file limit of this process: {limit}; warming up", file=sys.stderr)
    timed_stream(url, 8)
    table = Table()
    for scenario in chosen:
        SCENARIOS[scenario](url, args, table)
    print(table.render())


if __name__ == "__main__":
    main()
