"""StreamBuffer against tokflow 1.3.1 (TokFlow), the library it replaces: throughput, per-put latency, growth.

Run by hand, never in the test suite (it needs tokflow, which is not a dependency):

    .venv/bin/pip install tokflow==1.3.1
    .venv/bin/python benchmarks/bench_buffer.py            # ~3 minutes; prints Markdown tables

Every input is cut into fragments of 1-4 characters with a fixed seed. Throughput is characters per CPU-second
(time.process_time, best of --repeat runs, with the compared runs taking turns), so a busy machine shifts both; read the
ratios, which come from the same run. Per-put latency is timed around each call with perf_counter_ns, minus the
timer's own cost. "correct" compares the whole output with a non-streaming re.sub of the whole text.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from tokserve.buffer import StreamBuffer

SEED_SENTENCE = "Hello there!<NL>my name is tokflow.<NL>Nice to meet you."
WORDS = ["Hello", "there!", "my", "name", "is", "tokflow.", "Nice", "to", "meet", "you."]
EIGHT = {
    "<NL>": "\n",
    "<TAB>": "\t",
    "<EOS>": "",
    "<|im_end|>": "",
    "<br>": "\n",
    "&amp;": "&",
    "&lt;": "<",
    "&gt;": ">",
}
SIXTY_FOUR = {"<NL>": "\n"} | {f"<T{number}>": f"[{number}]" for number in range(63)}


class Buffer(Protocol):
    def put(self, fragment: str) -> str: ...
    def flush(self) -> str: ...


def ours(replacements: dict[str, str]) -> Callable[[], Buffer]:
    return lambda: StreamBuffer(replacements=replacements)


def tokflow(replacements: dict[str, str]) -> Callable[[], Buffer]:
    from tokflow import TokFlow  # type: ignore[import-untyped]

    return lambda: TokFlow(list(replacements.items()))  # type: ignore[no-any-return]


def fragments_of(text: str, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    pieces, position = [], 0
    while position < len(text):
        size = rng.randint(1, 4)
        pieces.append(text[position : position + size])
        position += size
    return pieces


def tagged_text(tags: Sequence[str], size: int, seed: int = 1) -> str:
    """The seed's words with a tag instead of a space between one pair of words in three: every tag occurs."""
    rng = random.Random(seed)
    pieces, length = [], 0
    while length < size:
        piece = rng.choice(WORDS) + (rng.choice(tags) if rng.random() < 1 / 3 else " ")
        pieces.append(piece)
        length += len(piece)
    return "".join(pieces)[:size]


def plain_text(size: int) -> str:
    sentence = SEED_SENTENCE.replace("<NL>", " ") + " "
    return (sentence * (size // len(sentence) + 1))[:size]


def expected_output(text: str, replacements: dict[str, str]) -> str:
    pattern = "|".join(re.escape(key) for key in sorted(replacements, key=len, reverse=True))
    return re.sub(pattern, lambda match: replacements[match.group()], text)


def cpu_seconds(make: Callable[[], Buffer], fragments: list[str]) -> tuple[float, str]:
    buffer = make()
    put = buffer.put
    started = time.process_time()
    pieces = [put(fragment) for fragment in fragments]
    pieces.append(buffer.flush())
    return time.process_time() - started, "".join(pieces)


def best_cpu_seconds(jobs: list[tuple[Callable[[], Buffer], list[str]]], repeat: int) -> list[tuple[float, str]]:
    """Each job's fastest run; the jobs take turns, round after round, so a burst of load hits them alike."""
    best: list[tuple[float, str]] = [(float("inf"), "")] * len(jobs)
    for _ in range(repeat):
        for index, (make, fragments) in enumerate(jobs):
            best[index] = min(best[index], cpu_seconds(make, fragments))
    return best


def timer_cost_ns() -> float:
    clock = time.perf_counter_ns
    return statistics.median(-clock() + clock() for _ in range(100_000))


def put_latencies_us(make: Callable[[], Buffer], fragments: list[str], timer_ns: float) -> tuple[float, float]:
    buffer = make()
    put, clock = buffer.put, time.perf_counter_ns
    samples = []
    for fragment in fragments:
        started = clock()
        put(fragment)
        samples.append(clock() - started - timer_ns)
    samples.sort()
    return statistics.fmean(samples) / 1000, samples[int(len(samples) * 0.99)] / 1000


@dataclass
class Result:
    chars_per_cpu_s: float
    mean_us: float
    p99_us: float
    correct: bool


def measure(
    makes: list[Callable[[], Buffer]], texts: list[str], replacements: dict[str, str], repeat: int, timer_ns: float
) -> list[Result]:
    jobs = [(make, fragments_of(text)) for make, text in zip(makes, texts, strict=True)]
    results = []
    for (seconds, output), (make, fragments), text in zip(best_cpu_seconds(jobs, repeat), jobs, texts, strict=True):
        mean_us, p99_us = put_latencies_us(make, fragments, timer_ns)
        results.append(Result(len(text) / seconds, mean_us, p99_us, output == expected_output(text, replacements)))
    return results


def row(name: str, result: Result, size: int) -> str:
    return (
        f"| {name} | {size:,} | {result.chars_per_cpu_s / 1e6:.2f} M | {result.mean_us:.2f} | "
        f"{result.p99_us:.2f} | {'yes' if result.correct else 'NO'} |"
    )


def compare(size: int, tokflow_size: int, repeat: int, timer_ns: float) -> None:
    cases = [
        ("(a) seed sentence, 1 pattern", SEED_SENTENCE * (size // len(SEED_SENTENCE) + 1), {"<NL>": "\n"}),
        ("(b) 8 patterns, all occurring", tagged_text(list(EIGHT), size), EIGHT),
        ("(c) 64 patterns, all occurring", tagged_text(list(SIXTY_FOUR), size), SIXTY_FOUR),
        ("(d) nothing matches, 1 pattern", plain_text(size), {"<NL>": "\n"}),
        ("(d) nothing matches, 64 patterns", plain_text(size), SIXTY_FOUR),
    ]
    print("| case | impl | chars | chars per CPU-s | put mean µs | put p99 µs | correct | ours / tokflow |")
    print("|---|---|---|---|---|---|---|---|")
    for name, text, replacements in cases:
        text = text[:size]
        # tokflow runs every pattern's worker on every put: on many patterns it gets a shorter prefix.
        short = text[: tokflow_size if len(replacements) > 8 else size]
        mine, theirs = measure(
            [ours(replacements), tokflow(replacements)], [text, short], replacements, repeat, timer_ns
        )
        ratio = mine.chars_per_cpu_s / theirs.chars_per_cpu_s
        print(row(f"{name} | StreamBuffer", mine, len(text)) + f" **{ratio:.1f}x** |")
        print(row(f"{name} | tokflow 1.3.1", theirs, len(short)) + " |")


def growth_with_length(size: int, repeat: int) -> None:
    """One long stream (case a) through one buffer, a tenth at a time, each tenth also through a fresh buffer
    right after: if a put cost more late in a stream, the long-lived buffer would fall behind the fresh one."""
    slices = 10
    fragments = fragments_of((SEED_SENTENCE * (size // len(SEED_SENTENCE) + 1))[:size])
    part_size = len(fragments) // slices
    parts = [fragments[index * part_size : (index + 1) * part_size] for index in range(slices)]
    print(f"\n| one stream of {size:,} chars (case a) | ns/char, first tenth | middle tenth | last tenth |")
    print("|---|---|---|---|")
    for name, make in (("StreamBuffer", ours({"<NL>": "\n"})), ("tokflow 1.3.1", tokflow({"<NL>": "\n"}))):
        long_lived = [float("inf")] * slices
        fresh = [float("inf")] * slices
        for _ in range(repeat):
            put = make().put
            for index, part in enumerate(parts):
                long_lived[index] = min(long_lived[index], _cpu_seconds_of(put, part))
                fresh[index] = min(fresh[index], _cpu_seconds_of(make().put, part))
        cells = [
            f"{long_lived[index] / sum(map(len, parts[index])) * 1e9:.0f} "
            f"({long_lived[index] / fresh[index]:.2f}x a fresh buffer)"
            for index in (0, slices // 2, slices - 1)
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")


def _cpu_seconds_of(put: Callable[[str], str], fragments: list[str]) -> float:
    started = time.process_time()
    for fragment in fragments:
        put(fragment)
    return time.process_time() - started


def growth_with_patterns(size: int, repeat: int) -> None:
    print("\n| patterns | text | StreamBuffer chars per CPU-s | vs 1 pattern |")
    print("|---|---|---|---|")
    tag_names = list(SIXTY_FOUR)
    texts = [
        ("only `<NL>` occurs (case a)", (SEED_SENTENCE * (size // len(SEED_SENTENCE) + 1))[:size]),
        ("all 64 tags occur (case c)", tagged_text(tag_names, size)),
    ]
    counts = (1, 8, 64)
    for label, text in texts:
        fragments = fragments_of(text)
        jobs = [(ours({tag: SIXTY_FOUR[tag] for tag in tag_names[:count]}), fragments) for count in counts]
        seconds = [best for best, _ in best_cpu_seconds(jobs, repeat)]
        for count, taken in zip(counts, seconds, strict=True):
            print(f"| {count} | {label} | {size / taken / 1e6:.2f} M | {taken / seconds[0]:.2f}x |")


def self_similar_text(size: int, repeat: int) -> None:
    """The regex walks as deep as the text follows a pattern: a run of "a" against "aa...ab" is the worst case."""
    print("\n| pattern (never matches) | text | StreamBuffer ns per char | vs length 4 |")
    print("|---|---|---|---|")
    lengths = (4, 16, 64)
    fragments = fragments_of("a" * size)
    jobs = [(ours({"a" * (length - 1) + "b": "!"}), fragments) for length in lengths]
    seconds = [best for best, _ in best_cpu_seconds(jobs, repeat)]
    for length, taken in zip(lengths, seconds, strict=True):
        print(
            f"| `{'a' * 3}...ab`, length {length} | `aaaa...` | {taken / size * 1e9:.0f} | {taken / seconds[0]:.2f}x |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000, help="characters per case")
    parser.add_argument("--tokflow-size", type=int, default=100_000, help="characters for tokflow on 64 patterns")
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement; the best counts")
    args = parser.parse_args()
    timer_ns = timer_cost_ns()
    print(f"perf_counter_ns pair costs {timer_ns:.0f} ns, subtracted from each put's latency\n")
    compare(args.size, args.tokflow_size, args.repeat, timer_ns)
    growth_with_length(args.size * 4, args.repeat)
    growth_with_patterns(args.size, args.repeat)
    self_similar_text(args.size // 4, args.repeat)


if __name__ == "__main__":
    main()
