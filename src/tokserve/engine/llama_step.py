"""An engine step through a Llama model with 4-bit linears (`gguf_native.load_llama`), without transformers' module
plumbing.

On a CPU at one decoding row, a step of the embedded model is some 1,500 small operations, and the Python around
them in transformers' modules (keyword forwarding, the attention interface's lookup, per-module calls) cost about a
fifth of the step: 20 ms without it against 25 with, measured. `LlamaStep` does the same arithmetic through the same
functions (the modules' own norms, rotary embedding and activation, the engine's paged attention), so its logits
are the model's bit for bit; it joins q, k and v, and gate and up, into one int4 product each
(`QuantizedLinear.joined`, sharing their memory), and rotates queries and keys in one pass. transformers' forward
stays what `model.generate` and the CUDA path run.
"""

from typing import Any

import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaForCausalLM, rotate_half

from tokserve.engine.gguf_native import QuantizedLinear
from tokserve.engine.kv_cache import STEP_KEYWORD, StepLayout, paged_attention


class _Layer:
    """One decoder layer's modules, q/k/v and gate/up joined."""

    def __init__(self, layer: Any, qkv: QuantizedLinear, gate_up: QuantizedLinear) -> None:
        attention, mlp = layer.self_attn, layer.mlp
        self.attention = attention
        self.input_norm, self.post_attention_norm = layer.input_layernorm, layer.post_attention_layernorm
        self.qkv, self.o_proj = qkv, attention.o_proj
        self.head_dim, self.scaling = attention.head_dim, attention.scaling
        self.heads = attention.q_proj.out_features // self.head_dim
        # The joined output: queries and keys (rotated together), then values.
        self.split = (attention.q_proj.out_features + attention.k_proj.out_features, attention.v_proj.out_features)
        self.gate_up, self.down_proj, self.act = gate_up, mlp.down_proj, mlp.act_fn


class LlamaStep:
    """`step(input_ids, position_ids, logits_to_keep, layout)`: the logits (kept positions x vocabulary) of one
    packed engine step, as `model(..., tokserve_step=layout).logits[0]` computes them."""

    def __init__(self, model: LlamaForCausalLM, layers: list[_Layer]) -> None:
        self._model = model
        self._layers = layers

    @classmethod
    def of(cls, model: nn.Module) -> "LlamaStep | None":
        """The step for `model`, or None unless it is a Llama whose projections are all joinable QuantizedLinears."""
        if type(model) is not LlamaForCausalLM or model.config.mlp_bias or model.config.attention_bias:
            return None
        layers = []
        for layer in model.model.layers:
            attention, mlp = layer.self_attn, layer.mlp
            parts = (attention.q_proj, attention.k_proj, attention.v_proj), (mlp.gate_proj, mlp.up_proj)
            if not all(isinstance(part, QuantizedLinear) for group in parts for part in group):
                return None
            qkv, gate_up = QuantizedLinear.joined(parts[0]), QuantizedLinear.joined(parts[1])
            if qkv is None or gate_up is None:
                return None
            layers.append(_Layer(layer, qkv, gate_up))
        return cls(model, layers)

    def __call__(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, logits_to_keep: torch.Tensor, layout: StepLayout
    ) -> torch.Tensor:
        decoder = self._model.model
        hidden = decoder.embed_tokens(input_ids)
        cos, sin = decoder.rotary_emb(hidden, position_ids=position_ids)
        step: dict[str, Any] = {STEP_KEYWORD: layout}  # by keyword, as transformers' attention calls pass it
        for layer in self._layers:
            hidden = hidden + self._attend(layer, layer.input_norm(hidden), cos, sin, step)
            gate, up = layer.gate_up(layer.post_attention_norm(hidden)).chunk(2, dim=-1)
            hidden = hidden + layer.down_proj(layer.act(gate) * up)
        # Normed before the kept positions are picked, as transformers does: torch's row means are not bit for bit
        # the same over 2 rows as over 75.
        logits: torch.Tensor = self._model.lm_head(decoder.norm(hidden)[:, logits_to_keep])
        return logits[0]

    @staticmethod
    def _attend(
        layer: _Layer, normed: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, step: dict[str, Any]
    ) -> torch.Tensor:
        shape = (*normed.shape[:-1], -1, layer.head_dim)  # (1, tokens, heads, head dim)
        queries_and_keys, value = layer.qkv(normed).split(layer.split, dim=-1)
        # Rotated together: apply_rotary_pos_emb's products and sums, in half the operations.
        rotated = queries_and_keys.view(shape)
        rotated = rotated * cos[:, :, None] + rotate_half(rotated) * sin[:, :, None]  # type: ignore[no-untyped-call]
        query, key = rotated[:, :, : layer.heads].transpose(1, 2), rotated[:, :, layer.heads :].transpose(1, 2)
        value = value.view(shape).transpose(1, 2)
        attended, _ = paged_attention(layer.attention, query, key, value, None, scaling=layer.scaling, **step)
        return layer.o_proj(attended.reshape(*normed.shape[:-1], -1))  # type: ignore[no-any-return]
