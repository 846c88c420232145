"""Engine v2 on one GPU: decode speed through `Engine.submit_all`, with CUDA graphs and without, on random weights.

By hand, never in the test suite. Built to run once in a few minutes on an H100 or H200 with no network: the models
are full-size configs embedded here with random bfloat16 weights (greedy decoding with `ignore_eos` makes the token
count fixed all the same), the tokenizer is a word-level one made in memory, and prompts are random token ids. Only
torch, transformers and tokenizers are needed besides `src/` (no fastapi, nothing of `tokserve.server`).

What it measures (each timed run follows one warm-up run of the same batch and length, with other prompts, so the
CUDA graphs of its buckets are captured and no prefix is cached; prompts of 128 tokens, 256 tokens generated):

1. `smollm2-135m`: tokens/s at batch 1 and aggregate at batch 32, CUDA graphs (default) and eager
   (`no_cuda_graphs=True`). Targets: >= 250 tok/s at batch 1, >= 6000 tok/s at batch 32.
2. `qwen2.5-0.5b`: step time (wall time / tokens per stream) at batch 1, 8 and 32, graphs and eager, and the ratio
   eager/graphs; beside vLLM's ~1.7 ms/step for a 0.5B model at batch 1-8 on an H100 (cited from
   vllm-project/vllm PR #53060, unverified).
3. `llama3-8b`: a Llama-3-8B-sized model at batch 1 with graphs: tokens/s, and the share of the memory bandwidth it
   reaches: weight bytes per token (the sum of parameter bytes) x tokens/s, against the device-to-device copy rate
   of a 1 GiB tensor (read + write bytes / seconds, best of 5) measured in the same run. Target >= 50%.

Every batch's prompts are read in one step (`prefill_tokens` is set high enough), so its streams decode in lockstep;
besides the wall-time step, "decode ms/step" is the time from the last stream's first token to the last token,
over the steps between them.

    PYTHONPATH=src python benchmarks/gpu_engine_v2.py --out $OUT/gpu.json

`--only NAME` runs one part; `--seconds-budget S` skips what is left once S seconds have passed (default 280). The
JSON is rewritten after each part, so a run cut short still leaves what it measured. A smoke test on a CPU, tiny
configs and few tokens (graphs do not exist there: both modes run eagerly):

    PYTHONPATH=src .venv/bin/python benchmarks/gpu_engine_v2.py --device cpu --tiny --out /tmp/gpu_smoke.json
"""

import argparse
import asyncio
import gc
import json
import logging
import platform
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tokenizers
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config

from tokserve.engine.crossing import EngineSettings, GenerationRequest, SamplingParams
from tokserve.engine.engine import Engine
from tokserve.engine.kv_cache import ATTENTION
from tokserve.engine.loading import LoadedModel

PROMPT_TOKENS = 128
NEW_TOKENS = 256
MAX_MODEL_LEN = 2048
GREEDY = SamplingParams(temperature=0.0)
EOS_ID = 0

SMOLLM2_TARGETS = {1: 250.0, 32: 6000.0}  # tok/s at batch 1; aggregate tok/s at batch 32
VLLM_STEP_MS = 1.7  # vLLM, 0.5B model, batch 1-8, H100: vllm-project/vllm PR #53060 (unverified)
BANDWIDTH_TARGET = 0.5

CONFIGS: dict[str, tuple[type[LlamaConfig] | type[Qwen2Config], dict[str, Any]]] = {
    "smollm2-135m": (
        LlamaConfig,
        {
            "hidden_size": 576,
            "intermediate_size": 1536,
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "vocab_size": 49152,
            "max_position_embeddings": 8192,
            "rope_theta": 100000.0,
            "tie_word_embeddings": True,
        },
    ),
    "qwen2.5-0.5b": (
        Qwen2Config,
        {
            "hidden_size": 896,
            "intermediate_size": 4864,
            "num_hidden_layers": 24,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "vocab_size": 151936,
            "max_position_embeddings": 32768,
            "rope_theta": 1000000.0,
            "tie_word_embeddings": True,
        },
    ),
    "llama3-8b": (
        LlamaConfig,
        {
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "vocab_size": 128256,
            "max_position_embeddings": 8192,
            "rope_theta": 500000.0,
            "tie_word_embeddings": False,
        },
    ),
}
# --tiny: every config shrunk to this (head counts keep a grouped-query ratio), and far fewer tokens.
TINY_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
}
TINY_PROMPT_TOKENS = 16
TINY_NEW_TOKENS = 8


@dataclass(frozen=True, slots=True)
class Scale:
    """Sizes of one invocation: full on a GPU, tiny for the CPU smoke test."""

    tiny: bool
    prompt_tokens: int
    new_tokens: int
    small_batches: tuple[int, ...]  # part 1
    step_batches: tuple[int, ...]  # part 2
    small_kv_gib: float
    big_kv_gib: float
    copy_bytes: int

    @classmethod
    def of(cls, tiny: bool) -> "Scale":
        if tiny:
            return cls(True, TINY_PROMPT_TOKENS, TINY_NEW_TOKENS, (1, 4), (1, 2, 4), 0.02, 0.02, 16 * 2**20)
        return cls(False, PROMPT_TOKENS, NEW_TOKENS, (1, 32), (1, 8, 32), 4.0, 8.0, 2**30)


@dataclass(frozen=True, slots=True)
class BenchModel(LoadedModel):
    """A LoadedModel whose fingerprint does not ask for tokserve's installed version (it runs from `src/` here)."""

    def system_fingerprint(self, prefix_caching: bool) -> str:
        return "fp_benchmark"


@dataclass(slots=True)
class Timing:
    """One timed run: `batch` streams of `new_tokens` each, submitted together."""

    part: str
    mode: str  # "graphs" or "eager"
    batch: int
    new_tokens: int
    tokens: int
    wall_s: float
    tokens_per_s: float  # aggregate: all streams' tokens / wall time
    step_ms: float  # wall time / tokens per stream
    decode_step_ms: float  # last stream's first token -> last token, over the steps between
    ttft_ms: float  # submission -> the last stream's first token
    first_token_spread_ms: float  # first to last stream's first token (about 0: one prefill step)
    preempted: int
    prefix_cache_hits: int
    note: str = ""

    def add_note(self, text: str) -> None:
        """Put `text` before what the note already says."""
        self.note = text + (f"; {self.note}" if self.note else "")


@dataclass(slots=True)
class Report:
    """Everything the run writes as JSON."""

    environment: dict[str, Any]
    parts: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: list[Timing] = field(default_factory=list)
    elapsed_s: float = 0.0
    complete: bool = False


# A part's timed runs and its summary for the JSON.
PartResult = tuple[list[Timing], dict[str, Any]]


class CaptureWarnings(logging.Handler):
    """Collects the runner's warnings: a failed CUDA graph capture turns graphs off with nothing but a warning."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def make_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer of `vocab_size` tokens `t0`.. made in memory; `t0` is the end of sequence. The engine
    only reads its backend (Vocabulary, FillInTheMiddle); prompts are token ids, never encoded."""
    backend = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t1"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=f"t{EOS_ID}", unk_token="t1")


def build_model(name: str, device: torch.device, tiny: bool) -> BenchModel:
    """The named config with random bfloat16 weights, made on `device`, with the engine's paged attention."""
    config_class, values = CONFIGS[name]
    values = {**values, **TINY_CONFIG, "max_position_embeddings": MAX_MODEL_LEN} if tiny else values
    config = config_class(**values)
    torch.manual_seed(0)
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model = model.to(device).eval()  # a no-op where it was made on the device
    model.set_attn_implementation(ATTENTION)
    return BenchModel(
        model=model,
        tokenizer=make_tokenizer(config.vocab_size),
        device=device,
        max_model_len=int(config.max_position_embeddings),
        eos_ids=frozenset({EOS_ID}),
    )


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter, a tied embedding once."""
    return sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def copy_rate(device: torch.device, size: int, tries: int = 5, copies: int = 10) -> float:
    """Bytes/s of device-to-device copies of a `size`-byte tensor, read + write counted: best of `tries`."""
    source = torch.ones(size, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    best = float("inf")
    for _ in range(tries):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(copies):
            target.copy_(source)
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / copies)
    del source, target
    free_memory(device)
    return 2 * size / best


def random_prompts(rng: random.Random, count: int, length: int, vocab_size: int) -> list[tuple[int, ...]]:
    """Random ids, never the end-of-sequence id 0."""
    return [tuple(rng.randrange(1, vocab_size) for _ in range(length)) for _ in range(count)]


async def generate(engine: Engine, prompts: list[tuple[int, ...]], new_tokens: int) -> tuple[float, list[tuple]]:
    """Submit all prompts at once; (submission time, per stream (tokens, first token time, last token time))."""
    requests = [
        GenerationRequest(f"bench-{i}", prompt, new_tokens, GREEDY, ignore_eos=True) for i, prompt in enumerate(prompts)
    ]

    async def read(stream: Any) -> tuple[int, float, float]:
        count, first, last = 0, 0.0, 0.0
        async for event in stream.events():
            if event.error is not None:
                raise RuntimeError(f"generation failed: {event.error.message}")
            if event.token_id is not None:
                last = time.perf_counter()
                first = first or last
                count += 1
        return count, first, last

    start = time.perf_counter()
    results = await asyncio.gather(*(read(stream) for stream in engine.submit_all(requests)))
    return start, list(results)


def timed_run(
    engine: Engine, part: str, mode: str, batch: int, scale: Scale, rng: random.Random, vocab_size: int
) -> Timing:
    """One warm-up run, then the timed one, both `batch` streams of `scale.new_tokens` on fresh prompts."""
    warm_up = random_prompts(rng, batch, scale.prompt_tokens, vocab_size)
    asyncio.run(generate(engine, warm_up, scale.new_tokens))
    before = engine.counters
    prompts = random_prompts(rng, batch, scale.prompt_tokens, vocab_size)
    start, streams = asyncio.run(generate(engine, prompts, scale.new_tokens))
    after = engine.counters
    tokens = sum(count for count, _, _ in streams)
    if tokens != batch * scale.new_tokens:
        raise RuntimeError(f"{part} {mode} batch {batch}: {tokens} tokens, expected {batch * scale.new_tokens}")
    firsts = [first for _, first, _ in streams]
    end = max(last for _, _, last in streams)
    wall = end - start
    return Timing(
        part=part,
        mode=mode,
        batch=batch,
        new_tokens=scale.new_tokens,
        tokens=tokens,
        wall_s=wall,
        tokens_per_s=tokens / wall,
        step_ms=1000 * wall / scale.new_tokens,
        decode_step_ms=1000 * (end - max(firsts)) / max(1, scale.new_tokens - 1),
        ttft_ms=1000 * (max(firsts) - start),
        first_token_spread_ms=1000 * (max(firsts) - min(firsts)),
        preempted=after.preempted - before.preempted,
        prefix_cache_hits=after.prefix_cache_hits - before.prefix_cache_hits,
    )


def engine_settings(device: torch.device, graphs: bool, kv_gib: float, batch: int, scale: Scale) -> EngineSettings:
    """max_running 32; `prefill_tokens` holds every prompt of the largest batch (in cost units, with room to spare)
    so that a batch's prompts are read in one step."""
    return EngineSettings(
        device=str(device),
        dtype="bfloat16",
        threads=None,
        max_model_len=MAX_MODEL_LEN,
        max_queue=64,
        max_running=max(32, batch),
        kv_cache_memory=kv_gib,
        prefill_tokens=max(512, 2 * batch * scale.prompt_tokens),
        no_cuda_graphs=not graphs,
    )


def run_modes(
    loaded: BenchModel,
    part: str,
    modes: tuple[str, ...],
    batches: tuple[int, ...],
    kv_gib: float,
    scale: Scale,
    over_budget: Callable[[], bool],
    warnings: CaptureWarnings,
) -> tuple[list[Timing], list[str]]:
    """Timed runs per mode (one engine each, closed after) and batch; what was skipped for the budget."""
    timings: list[Timing] = []
    skipped: list[str] = []
    vocab_size = int(loaded.model.config.vocab_size)
    rng = random.Random(f"{part}")
    for mode in modes:
        if over_budget():
            skipped.append(f"{mode}: all batches")
            continue
        graphs = mode == "graphs"
        settings = engine_settings(loaded.device, graphs, kv_gib, max(batches), scale)
        seen = len(warnings.messages)
        engine = Engine(loaded, settings)
        try:
            for batch in batches:
                if over_budget():
                    skipped.append(f"{mode}: batch {batch}")
                    continue
                timing = timed_run(engine, part, mode, batch, scale, rng, vocab_size)
                if graphs and loaded.device.type != "cuda":
                    timing.note = "no graphs on CPU: eager"
                if any("CUDA graph" in message for message in warnings.messages[seen:]):
                    timing.note = "graph capture FAILED: ran eagerly (see log)"
                timings.append(timing)
                print(
                    f"  {part} {mode:6} batch {batch:2}: {timing.tokens_per_s:9.1f} tok/s, "
                    f"{timing.step_ms:7.2f} ms/step wall, {timing.decode_step_ms:7.2f} ms/step decode, "
                    f"ttft {timing.ttft_ms:7.1f} ms {timing.note}",
                    flush=True,
                )
        finally:
            engine.close()
            del engine
            free_memory(loaded.device)
    return timings, skipped


def graphs_and_eager(
    part: str,
    batches: tuple[int, ...],
    device: torch.device,
    scale: Scale,
    over_budget: Callable[[], bool],
    warnings: CaptureWarnings,
) -> tuple[BenchModel, list[Timing], list[str]]:
    """A small model built, then timed with CUDA graphs and eagerly at each batch size."""
    loaded = build_model(part, device, scale.tiny)
    timings, skipped = run_modes(
        loaded, part, ("graphs", "eager"), batches, scale.small_kv_gib, scale, over_budget, warnings
    )
    return loaded, timings, skipped


def part_smollm2(
    device: torch.device, scale: Scale, over_budget: Callable[[], bool], warnings: CaptureWarnings
) -> PartResult:
    loaded, timings, skipped = graphs_and_eager(
        "smollm2-135m", scale.small_batches, device, scale, over_budget, warnings
    )
    targets = dict(zip(scale.small_batches, SMOLLM2_TARGETS.values(), strict=True))
    for timing in timings:
        target = targets[timing.batch]
        met = "met" if timing.tokens_per_s >= target else "MISSED"
        timing.add_note(f"target >= {target:.0f} tok/s: {met}")
    summary = {
        "targets_tok_s": {str(batch): target for batch, target in targets.items()},
        "skipped": skipped,
        "weight_bytes": weight_bytes(loaded.model),
    }
    return timings, summary


def part_qwen(
    device: torch.device, scale: Scale, over_budget: Callable[[], bool], warnings: CaptureWarnings
) -> PartResult:
    loaded, timings, skipped = graphs_and_eager(
        "qwen2.5-0.5b", scale.step_batches, device, scale, over_budget, warnings
    )
    ratios: dict[str, dict[str, float]] = {}
    by_key = {(timing.mode, timing.batch): timing for timing in timings}
    for timing in timings:
        graphs = by_key.get(("graphs", timing.batch))
        if timing.mode == "eager" and graphs is not None:
            ratio = timing.step_ms / graphs.step_ms
            decode_ratio = timing.decode_step_ms / graphs.decode_step_ms
            ratios[str(timing.batch)] = {"step": ratio, "decode_step": decode_ratio}
            timing.add_note(f"eager/graphs {ratio:.2f}x")
        elif timing.mode == "graphs":
            vs = timing.step_ms / VLLM_STEP_MS
            timing.add_note(f"{vs:.2f}x vLLM's ~{VLLM_STEP_MS} ms")
    summary = {
        "eager_over_graphs": ratios,
        "vllm_reference_step_ms": VLLM_STEP_MS,
        "vllm_reference": "0.5B model, batch 1-8, H100; vllm-project/vllm PR #53060, unverified",
        "skipped": skipped,
        "weight_bytes": weight_bytes(loaded.model),
    }
    return timings, summary


def part_llama8b(
    device: torch.device, scale: Scale, over_budget: Callable[[], bool], warnings: CaptureWarnings
) -> PartResult:
    copy = copy_rate(device, scale.copy_bytes)  # before the model, so its 2 GiB never sit beside the weights
    print(f"  device-to-device copy: {copy / 1e9:.1f} GB/s (read + write, {scale.copy_bytes / 2**30:.2f} GiB)")
    loaded = build_model("llama3-8b", device, scale.tiny)
    timings, skipped = run_modes(loaded, "llama3-8b", ("graphs",), (1,), scale.big_kv_gib, scale, over_budget, warnings)
    model_bytes = weight_bytes(loaded.model)
    embedding_bytes = weight_bytes(loaded.model.get_input_embeddings())
    summary: dict[str, Any] = {
        "copy_bytes_per_s": copy,
        "copy_tensor_bytes": scale.copy_bytes,
        "weight_bytes": model_bytes,
        "input_embedding_bytes": embedding_bytes,
        "target_fraction": BANDWIDTH_TARGET,
        "skipped": skipped,
    }
    for timing in timings:
        fraction = model_bytes * timing.tokens_per_s / copy
        # A token reads one row of the input embedding, not all of it (untied here): the bound without it.
        read_fraction = (model_bytes - embedding_bytes) * timing.tokens_per_s / copy
        summary |= {"fraction_of_copy_rate": fraction, "fraction_without_input_embedding": read_fraction}
        met = "met" if fraction >= BANDWIDTH_TARGET else "MISSED"
        timing.add_note(f"{100 * fraction:.0f}% of copy rate {copy / 1e12:.2f} TB/s (target >= 50%: {met})")
    return timings, summary


PARTS = {"smollm2-135m": part_smollm2, "qwen2.5-0.5b": part_qwen, "llama3-8b": part_llama8b}


def environment(device: torch.device, scale: Scale) -> dict[str, Any]:
    info: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),  # not datetime.UTC: 3.11 only
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "device": str(device),
        "dtype": "bfloat16",
        "tiny": scale.tiny,
        "prompt_tokens": scale.prompt_tokens,
        "new_tokens": scale.new_tokens,
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info |= {
            "device_name": torch.cuda.get_device_name(device),
            "device_memory_gib": properties.total_memory / 2**30,
            "cuda": torch.version.cuda,
        }
    else:
        info |= {"device_name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    return info


def markdown(report: Report) -> str:
    lines = [
        "| part | mode | batch | tok/s (all streams) | ms/step (wall / tokens) | ms/step (decode) | TTFT ms | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in report.timings:
        lines.append(
            f"| {t.part} | {t.mode} | {t.batch} | {t.tokens_per_s:,.0f} | {t.step_ms:.2f} | {t.decode_step_ms:.2f} "
            f"| {t.ttft_ms:.1f} | {t.note} |"
        )
    for name, part in report.parts.items():
        if part.get("skipped"):
            lines.append(f"| {name} | skipped | | | | | | {', '.join(part['skipped'])} |")
    return "\n".join(lines)


def write(report: Report, out: Path | None) -> None:
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(asdict(report), indent=2, default=str) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="where to write the JSON (rewritten after each part)")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a smoke test")
    parser.add_argument("--tiny", action="store_true", help="tiny configs and few tokens (smoke test)")
    parser.add_argument("--only", choices=sorted(PARTS), help="run this part only")
    parser.add_argument("--seconds-budget", type=float, default=280.0, help="skip what is left past this")
    args = parser.parse_args()

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings = CaptureWarnings()
    logging.getLogger("tokserve.engine.runner").addHandler(warnings)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("CUDA is not available here; use --device cpu --tiny for a smoke test.")
    scale = Scale.of(args.tiny)
    began = time.perf_counter()

    def over_budget() -> bool:
        return time.perf_counter() - began > args.seconds_budget

    report = Report(environment(device, scale))
    print(
        f"{report.environment.get('device_name')}: torch {torch.__version__}, transformers {transformers.__version__}"
    )
    for name, part in PARTS.items():
        if args.only and name != args.only:
            continue
        if over_budget():
            report.parts[name] = {"skipped": [f"over the {args.seconds_budget:.0f} s budget"]}
            continue
        print(f"{name}:", flush=True)
        started = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seen = len(warnings.messages)
        timings, summary = part(device, scale, over_budget, warnings)
        summary["seconds"] = time.perf_counter() - started
        if device.type == "cuda":
            summary["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        summary["runner_warnings"] = warnings.messages[seen:]
        report.parts[name] = summary
        report.timings += timings
        free_memory(device)
        report.elapsed_s = time.perf_counter() - began
        write(report, args.out)
    report.elapsed_s = time.perf_counter() - began
    report.complete = True
    write(report, args.out)
    print()
    print(markdown(report))
    print(f"\n{report.elapsed_s:.0f} s" + (f"; JSON in {args.out}" if args.out else ""))


if __name__ == "__main__":
    main()
