"""A GGUF file's own 4-bit weights (Q4_0, Q4_1) computed with on a CPU, instead of their float32 dequantization.

`load_llama` builds a Llama file's model on the meta device and fills it straight from the file: its 4-bit linears
become `QuantizedLinear`s, every other tensor is dequantized once into the model's dtype, and no float32 copy of the
whole model is ever made. For other architectures, `quantize_in_place` swaps the linears of a model transformers
loaded (dequantized) for `QuantizedLinear`s built from the file's blocks. Few rows
(decoding) in bfloat16 go through torch's CPU int4 kernel, whose scales are bfloat16; more rows (a prompt chunk), or
other dtypes, get the layer's weights dequantized on the fly, exactly as transformers dequantizes them, and a dense
product. CPU only; other block types (Q8_0, the K-quants) stay as transformers loaded them.
"""

import functools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
import torch.nn.functional as F
from accelerate import init_empty_weights  # type: ignore[import-untyped]
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from tokserve.errors import StartupError

GROUP = 32  # weights per block, in Q4_0 and Q4_1 alike: the kernel's group size
# At most this many bfloat16 rows use the int4 kernel: per layer it beats dequantizing then a dense product up to
# 64 rows (at 64, gate_proj 0.8 ms against 1.2, 2 cores with AVX512-BF16) and is even with it near 128.
KERNEL_ROWS = 64
_KERNEL_BLOCK_ROWS = 64  # the kernel packs output rows by 64: `_unpack` reads that layout
_Q4 = gguf.GGMLQuantizationType
_BLOCK_BYTES = {_Q4.Q4_0: 18, _Q4.Q4_1: 20}  # float16 d (and float16 m), then 16 bytes of nibbles
_LINEARS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_NORMS = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
_MODEL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_TENSOR_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.weight")
# The overload itself: calling the packet resolves it again on every call, a few microseconds of 120 a token.
_INT4_PRODUCT = torch.ops.aten._weight_int4pack_mm_for_cpu.default


@dataclass(frozen=True, slots=True)
class Q4Blocks:
    """One Q4_0 or Q4_1 matrix, unpacked: `q` (out, in) in 0..15, `d` and `m` (out, in / 32) float16; each weight
    is d·q + m (Q4_1) or d·(q - 8) (Q4_0, where `m` is None)."""

    q: torch.Tensor
    d: torch.Tensor
    m: torch.Tensor | None

    @property
    def offset(self) -> int:
        return 8 if self.m is None else 0

    def dequantize(self) -> torch.Tensor:
        """float32 (out, in), rounded as gguf (and so transformers) dequantizes: one product, then one sum."""
        return _dequantize(self.q, self.d, self.m, self.offset)

    def rows(self, index: torch.Tensor) -> "Q4Blocks":
        """These blocks with their rows reordered; blocks run along a row, so each stays whole."""
        return Q4Blocks(self.q[index], self.d[index], None if self.m is None else self.m[index])


def decode_blocks(data: np.ndarray, kind: gguf.GGMLQuantizationType) -> Q4Blocks:
    """A GGUF tensor's raw bytes, (out, in / 32 · block bytes) uint8, as Q4Blocks."""
    rows = data.shape[0]
    blocks = np.asarray(data, dtype=np.uint8).reshape(rows, -1, _BLOCK_BYTES[kind])  # numpy: fast on strided bytes
    d = torch.from_numpy(blocks[..., 0:2].copy().view(np.float16)[..., 0])
    m = torch.from_numpy(blocks[..., 2:4].copy().view(np.float16)[..., 0]) if kind == _Q4.Q4_1 else None
    nibbles = blocks[..., -16:]
    q = torch.from_numpy(np.concatenate((nibbles & 15, nibbles >> 4), axis=-1))  # weights 0..15 low, 16..31 high
    return Q4Blocks(q.reshape(rows, -1), d, m)


class QuantizedLinear(nn.Module):
    """`y = x @ W.T + bias` with W kept in 4 bits (0.75 byte a weight with its scales).

    bfloat16 inputs of at most `kernel_rows` rows use torch's int4 kernel (w = (q - 8)·s + z per group, s and z in
    bfloat16: relative error ~4e-3); any other input gets W dequantized exactly into its dtype and a dense product,
    which is faster for a prompt chunk and exact in float32.
    """

    def __init__(
        self,
        packed: torch.Tensor,
        d: torch.Tensor,
        m: torch.Tensor | None,
        scales_and_zeros: torch.Tensor,
        bias: torch.Tensor | None = None,
        kernel_rows: int = KERNEL_ROWS,
    ) -> None:
        """From the kernel's packed weights (out, in / 2), the blocks' float16 `d` and `m` (for exact
        dequantization) and the kernel's bfloat16 scales and zeros (in / 32, out, 2); `of` makes them from blocks."""
        super().__init__()
        self.out_features, self.in_features = packed.shape[0], 2 * packed.shape[1]
        self.kernel_rows = kernel_rows
        # Plain attributes, not buffers: Module.to(dtype) would round the float16 scales and the kernel's bfloat16
        # ones along with the model's floating point weights. This module stays on the CPU in these dtypes.
        self.packed, self.d, self.m, self.offset = packed, d, m, 8 if m is None else 0
        self.scales_and_zeros = scales_and_zeros
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    @classmethod
    def of(cls, blocks: Q4Blocks, bias: torch.Tensor | None = None) -> "QuantizedLinear":
        """The linear of these blocks, packed for the kernel."""
        d = blocks.d.float().T
        zeros = torch.zeros_like(d) if blocks.m is None else blocks.m.float().T + 8 * d  # d·q + m = d·(q - 8) + z
        return cls(
            torch.ops.aten._convert_weight_to_int4pack_for_cpu(blocks.q.to(torch.int32), 2),
            blocks.d,
            blocks.m,
            torch.stack((d, zeros), dim=-1).to(torch.bfloat16).contiguous(),
            bias,
        )

    @classmethod
    def joined(cls, parts: Sequence["QuantizedLinear"]) -> "QuantizedLinear | None":
        """One linear whose output is the `parts`' outputs side by side (q, k and v; gate and up), or None where they
        differ in inputs, kind or bias. The kernel packs rows by 64, so the joined weights are the parts' concatenated
        and the parts' become views of them (shared memory); only the kernel's scales are kept twice (an eighth of a
        byte a weight)."""
        first = parts[0]
        if any(
            (part.in_features, part.offset, part.bias is None) != (first.in_features, first.offset, True)
            or part.out_features % _KERNEL_BLOCK_ROWS
            for part in parts
        ):
            return None
        joined = cls(
            torch.cat([part.packed for part in parts]),
            torch.cat([part.d for part in parts]),
            None if first.m is None else torch.cat([part.m for part in parts if part.m is not None]),
            torch.cat([part.scales_and_zeros for part in parts], dim=1),
            kernel_rows=first.kernel_rows,
        )
        start = 0
        for part in parts:  # the same values, now stored once
            rows = slice(start, start + part.out_features)
            part.packed, part.d = joined.packed[rows], joined.d[rows]
            part.m = None if joined.m is None else joined.m[rows]
            start = rows.stop
        return joined

    def weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """W, (out, in), dequantized in float32 and then rounded to `dtype`."""
        return _dequantize(_unpack(self.packed, self.in_features), self.d, self.m, self.offset).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if x.dtype == torch.bfloat16 and flat.shape[0] <= self.kernel_rows:
            y: torch.Tensor = _INT4_PRODUCT(flat.contiguous(), self.packed, GROUP, self.scales_and_zeros)
            if bias is not None:
                y = y + bias
        else:
            y = F.linear(flat, self.weight(x.dtype), bias)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        kind = "Q4_0" if self.m is None else "Q4_1"
        return f"in_features={self.in_features}, out_features={self.out_features}, {kind}, bias={self.bias is not None}"


def load_llama(path: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, list[str]] | None:
    """A Llama GGUF file's model in eval mode on the CPU, its Q4_0/Q4_1 linears as QuantizedLinears and its other
    tensors dequantized into `dtype` (a tied lm_head shares the embedding), with the names of the tensors
    dequantized and their GGUF types. None for another architecture, or a file with tensors this does not place."""
    reader = gguf.GGUFReader(path)
    if _field(reader, "general.architecture") != "llama":
        return None
    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    with init_empty_weights(include_buffers=False):  # parameters on the meta device, the rotary tables computed
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)  # type: ignore[no-untyped-call]
    model.tie_weights()
    expected = {name for name, _ in model.named_parameters()}  # a tied lm_head once, as the embedding
    tensors = {_parameter_name(tensor.name): tensor for tensor in reader.tensors}
    if tensors.keys() != expected:
        return None
    heads = int(_field(reader, "llama.attention.head_count"))
    kv_heads = int(_field(reader, "llama.attention.head_count_kv") or heads)
    dequantized = []
    for name, tensor in tensors.items():
        module_name, _, attribute = name.rpartition(".")
        module = model.get_submodule(module_name)
        rows = None
        if module_name.endswith(("q_proj", "k_proj")):  # the rotary interleaving llama.cpp's converter adds
            rows = _rotary_rows(int(tensor.shape[-1]), heads if module_name.endswith("q_proj") else kv_heads)
        if tensor.tensor_type in _BLOCK_BYTES and isinstance(module, nn.Linear) and module.bias is None:
            blocks = decode_blocks(tensor.data, tensor.tensor_type)
            blocks = blocks if rows is None else blocks.rows(rows)
            if blocks.q.shape[0] % _KERNEL_BLOCK_ROWS == 0:
                parent, _, child = module_name.rpartition(".")
                setattr(model.get_submodule(parent), child, QuantizedLinear.of(blocks))
                continue
            values = blocks.dequantize()
        else:
            shape = [int(size) for size in reversed(tensor.shape)]
            array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)  # float32 tensors: the file's pages
            values = torch.from_numpy(np.require(array, requirements="W")).reshape(shape)
            values = values if rows is None else values[rows]
        dequantized.append(f"{name} ({tensor.tensor_type.name})")
        module._parameters[attribute] = nn.Parameter(values.to(dtype), requires_grad=False)
    model.tie_weights()  # the lm_head back onto the embedding now filled
    model.eval()
    return model, dequantized


def _parameter_name(tensor: str) -> str:
    """transformers' Llama parameter name for a GGUF tensor name ("" for one it has none for)."""
    match = _TENSOR_NAME.fullmatch(tensor)
    if match is None:
        module = _MODEL_TENSORS.get(tensor.removesuffix(".weight"))
        return f"{module}.weight" if module and tensor.endswith(".weight") else ""
    module = _LINEARS.get(match[2]) or _LAYER_NORMS.get(match[2])
    return f"model.layers.{match[1]}.{module}.weight" if module else ""


def read_linears(path: str | Path) -> dict[str, Q4Blocks]:
    """Every Q4_0/Q4_1 linear of a Llama GGUF file, by transformers' module name, rows in transformers' order."""
    return dict(_read_linears(gguf.GGUFReader(path)))


def quantize_in_place(model: nn.Module, path: str | Path) -> list[str]:
    """Replace each linear of `model` (a Llama loaded from the GGUF file at `path`, on the CPU) whose tensor in the
    file is Q4_0 or Q4_1 by a QuantizedLinear of those blocks; returns the names of the linears left dense."""
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("quantize_in_place computes on the CPU: load the model there")
    if not _layout_is_known():
        raise StartupError(
            f"torch {torch.__version__} packs int4 weights in a layout tokserve does not know; load the weights "
            "dequantized instead."
        )
    modules = dict(model.named_modules())
    replaced = set()
    for name, blocks in _read_linears(gguf.GGUFReader(path)):  # one tensor at a time: the float32 weight goes first
        linear = modules.get(name)
        if not isinstance(linear, nn.Linear) or blocks.q.shape[0] % _KERNEL_BLOCK_ROWS:
            continue
        if tuple(linear.weight.shape) != tuple(blocks.q.shape):
            raise ValueError(
                f"{name} is {tuple(linear.weight.shape)} in the model and {tuple(blocks.q.shape)} in {path}"
            )
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, QuantizedLinear.of(blocks, linear.bias))
        replaced.add(name)
    return [name for name, module in modules.items() if isinstance(module, nn.Linear) and name not in replaced]


def _read_linears(reader: gguf.GGUFReader) -> Iterator[tuple[str, Q4Blocks]]:
    architecture = _field(reader, "general.architecture")
    heads = kv_heads = 0
    if architecture == "llama":
        heads = int(_field(reader, "llama.attention.head_count"))
        kv_heads = int(_field(reader, "llama.attention.head_count_kv") or heads)
    for tensor in reader.tensors:
        match = _TENSOR_NAME.fullmatch(tensor.name)
        if match is None or match[2] not in _LINEARS or tensor.tensor_type not in _BLOCK_BYTES:
            continue
        blocks = decode_blocks(tensor.data, tensor.tensor_type)
        # llama.cpp's converter interleaves attn_q's and attn_k's rows for its rotary layout; transformers' GGUF
        # loader undoes it (LlamaTensorProcessor), and so must we, on the rows.
        if match[2] in ("attn_q", "attn_k") and heads:
            blocks = blocks.rows(_rotary_rows(blocks.q.shape[0], heads if match[2] == "attn_q" else kv_heads))
        yield f"model.layers.{match[1]}.{_LINEARS[match[2]]}", blocks


def _field(reader: gguf.GGUFReader, key: str) -> Any:  # gguf's values are untyped
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def _rotary_rows(rows: int, heads: int) -> torch.Tensor:
    """The row order transformers gives attn_q/attn_k: per head, (half, 2) read as (2, half)."""
    return torch.arange(rows).view(heads, rows // heads // 2, 2).transpose(1, 2).reshape(-1)


def _dequantize(q: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None, offset: int) -> torch.Tensor:
    rows, columns = q.shape
    weights = q.view(rows, -1, GROUP).float()
    if offset:
        weights -= offset
    weights *= d.float()[..., None]
    if m is not None:
        weights += m.float()[..., None]
    return weights.view(rows, columns)


def _unpack(packed: torch.Tensor, columns: int) -> torch.Tensor:
    """The kernel's packed weights back to (out, in) nibbles: per 64 output rows, one byte per input column and row
    pair (r, r + 32), row r in the low nibble."""
    rows = packed.shape[0]
    pairs = packed.view(rows // _KERNEL_BLOCK_ROWS, columns, _KERNEL_BLOCK_ROWS // 2)
    halves = torch.stack((pairs & 15, pairs >> 4), dim=1)  # (row blocks, 2, in, 32)
    return halves.transpose(2, 3).reshape(rows, columns)


@functools.cache
def _layout_is_known() -> bool:
    """Whether this torch packs int4 weights as `_unpack` reads them (an internal layout, checked once)."""
    q = torch.randint(
        0, 16, (2 * _KERNEL_BLOCK_ROWS, 2 * GROUP), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 2)
    return packed.shape == (q.shape[0], q.shape[1] // 2) and bool(torch.equal(_unpack(packed, q.shape[1]), q))
