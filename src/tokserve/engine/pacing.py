"""How much prompt a step reads: measured in time, so that decoding requests keep an even pace while prompts are read.

The policy: while some requests decode, a step's prompt reading may take at most as long as a plain decode step
(so their gaps stay within about twice the usual); with nobody decoding, a step reads up to `--prefill-tokens`.
Prompt tokens are counted in cost units (`scheduler.token_cost`: a token costs more the longer its context), and
the seconds per unit and per plain decode step are learnt from the steps as they run, so the same policy holds on a
2-core CPU and on a GPU. Among the prompts being read, the scheduler shares the units out equally.
"""

from collections.abc import Sequence

from tokserve.engine.scheduler import Chunk, token_cost

_SMOOTHING = 0.5  # weight of the newest step in the running averages: contexts change from step to step
_FIRST_UNITS = 32.0  # while decoding, before a step of prompt reading beside decoding was measured
_LEAST_UNITS = 16.0  # a step always reads some prompt, so a prompt is never stalled
_EXTRA = 1.0  # a step with prompt reading may take (1 + _EXTRA) x a plain decode step


class Pacer:
    """Learns step costs; says how many prompt units the next step may read."""

    def __init__(self, prefill_tokens: int, scale: float) -> None:
        self.scale = scale
        self._cap = float(prefill_tokens)
        self._decode_seconds: float | None = None  # a step that reads no prompt
        self._unit_seconds: float | None = None  # one unit of prompt reading beside decoding rows

    def prefill_units(self, decoding: int) -> float:
        """The units the next step's prompts may take, `decoding` rows decoding beside them."""
        if not decoding:
            return self._cap
        if self._decode_seconds is None or self._unit_seconds is None:
            return min(self._cap, _FIRST_UNITS)
        return min(self._cap, max(_LEAST_UNITS, _EXTRA * self._decode_seconds / self._unit_seconds))

    def record(self, seconds: float, chunks: Sequence[Chunk]) -> None:
        """A step took `seconds` for these chunks."""
        units = sum(
            token_cost(chunk.start, chunk.end - chunk.start, self.scale)
            for chunk in chunks
            if chunk.end - chunk.start > 1
        )
        decoding = any(chunk.end - chunk.start == 1 for chunk in chunks)
        if not units:
            self._decode_seconds = _average(self._decode_seconds, seconds)
            return
        # Learnt only from steps that also decode: a big chunk read alone costs less per unit than the small ones
        # read beside decoding rows, and would make the next of those too big.
        if decoding and self._decode_seconds is not None and seconds > self._decode_seconds:
            self._unit_seconds = _average(self._unit_seconds, (seconds - self._decode_seconds) / units)


def _average(mean: float | None, value: float) -> float:
    return value if mean is None else (1 - _SMOOTHING) * mean + _SMOOTHING * value


def attention_scale(parameters: int, layers: int, query_width: int) -> float:
    """The context length at which a token's attention costs as much as the rest of its forward pass: the weights
    take 2 flops per parameter, attention 4 per context token and query channel in every layer."""
    return max(1.0, parameters / (2 * layers * query_width))
