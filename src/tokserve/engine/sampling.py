"""One sampler for the whole batch: a step's rows share each kernel instead of running their own.

What depends on a request (its tokens so far, its seeded `torch.Generator`) lives in its `SamplingState`, which the
worker keeps across steps and preemption; the sampler turns the rows' parameters into tensors at each call. Draws
race exponentials (argmax of probs / E, the Gumbel-max trick), so a batch draws with one kernel, and a seeded row
takes its E from its own generator: its tokens do not depend on what shares the batch. The global RNG is never used.
"""

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

from tokserve.engine.crossing import SamplingParams, TokenLogprobs


class SamplingState:
    """One request's sampling state across steps (and across preemption: the worker keeps this object)."""

    __slots__ = ("_end_ids", "_prompt", "generated", "generator", "params")

    def __init__(
        self,
        params: SamplingParams,
        device: torch.device,
        prompt_ids: Sequence[int] = (),
        end_ids: Collection[int] = (),
    ) -> None:
        self.params = params
        self.generated: list[int] = []  # token ids sampled so far, in order (the sampler appends)
        self.generator: torch.Generator | None = None
        if params.seed is not None:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(params.seed % 2**64)  # OpenAI seeds are signed 64-bit
        self._end_ids = sorted(end_ids)
        # The repetition penalty reads the prompt at every step: on the device once, not from a list each time.
        self._prompt: torch.Tensor | None = None
        if params.repetition_penalty != 1.0:
            self._prompt = torch.tensor(list(prompt_ids), dtype=torch.long, device=device)


@dataclass(frozen=True, slots=True)
class Sampled:
    """A row's sampled token, and its logprobs when the row asked for them."""

    token_id: int
    logprobs: TokenLogprobs | None


class BatchSampler:
    """Logit processors, then greedy at temperature 0; otherwise temperature, top-k, top-p, min-p and a draw.

    The processors, in vLLM's order: `logit_bias`; end ids masked until `min_tokens`; repetition penalty
    (prompt and output tokens); frequency and presence penalties (output tokens, additive as OpenAI defines them).
    Work that no row of the call needs is skipped. Logprobs are of the model's logits (after `allowed` only).
    """

    def __init__(self, device: torch.device) -> None:
        self._generator = torch.Generator(device=device)
        self._generator.seed()  # from the OS, for the unseeded rows

    def sample(
        self,
        logits: torch.Tensor,
        rows: Sequence[SamplingState],
        logprobs: Sequence[int | None],
        allowed: torch.Tensor | None = None,
    ) -> list[Sampled]:
        """One token for each row of `logits` (batch x vocabulary); each row's state remembers it.

        `logprobs[i]`: None, or how many top alternatives row i reports beside its token's logprob. `allowed`: False
        forbids a token in that row, before anything else.
        """
        if not (logits.dim() == 2 and logits.shape[0] == len(rows) == len(logprobs)):
            raise ValueError(f"logits {tuple(logits.shape)} for {len(rows)} rows and {len(logprobs)} logprobs")
        x = logits.float()
        if allowed is not None:
            x = torch.where(allowed, x, -torch.inf)
        reported = [index for index, top in enumerate(logprobs) if top is not None]
        # log_softmax before the processors change x; the chosen tokens' entries are taken once they are known.
        log_probs = torch.log_softmax(_select(x, reported), dim=-1) if reported else None
        processed = _process(x, rows)
        # Only a processor can hide every token a grammar allows (a pass over the batch's logits otherwise saved).
        x = processed if allowed is None or processed is x else _never_empty(processed, x)

        greedy = [index for index, row in enumerate(rows) if row.params.greedy]
        drawn = [index for index, row in enumerate(rows) if not row.params.greedy]
        if not drawn:
            tokens = x.argmax(dim=-1)
        elif not greedy:
            tokens = self._draw(x, rows)
        else:
            tokens = _merge(
                len(rows),
                (greedy, _select(x, greedy).argmax(dim=-1)),
                (drawn, self._draw(_select(x, drawn), [rows[index] for index in drawn])),
            )

        # Everything the host needs, in one transfer: tokens, then the chosen logprobs, top values and top ids.
        parts = [tokens.double()]
        most = 0
        if log_probs is not None:
            chosen = log_probs.gather(-1, _select(tokens, reported)[:, None])
            parts.append(chosen.double().flatten())
            most = min(max(logprobs[index] or 0 for index in reported), log_probs.shape[-1])
            if most:
                values, ids = torch.topk(log_probs, most, dim=-1)
                parts += [values.double().flatten(), ids.double().flatten()]
        host = torch.cat(parts).tolist()

        batch = len(rows)
        token_ids = [int(value) for value in host[:batch]]
        result = [Sampled(token_id, None) for token_id in token_ids]
        values_at, ids_at = batch + len(reported), batch + len(reported) * (1 + most)
        for position, index in enumerate(reported):
            top = min(logprobs[index] or 0, most)
            first = position * most
            alternatives = tuple(
                (int(host[ids_at + first + rank]), host[values_at + first + rank]) for rank in range(top)
            )
            result[index] = Sampled(token_ids[index], TokenLogprobs(host[batch + position], alternatives))
        for row, token_id in zip(rows, token_ids, strict=True):
            row.generated.append(token_id)
        return result

    def _draw(self, x: torch.Tensor, rows: Sequence[SamplingState]) -> torch.Tensor:
        """One token per row of processed logits, all rows drawing: temperature, top-k, top-p, min-p, the race."""
        params = [row.params for row in rows]
        x = x / _column([p.temperature for p in params], torch.float32, x.device)
        # E ~ Exponential(1) as -log U, U uniform in [0, 1): E > 0, so probs / E is never 0 / 0 (and on CPU this is
        # several times faster than exponential_). One call for the unseeded rows; a seeded row's U from its own.
        races = torch.empty_like(x)
        if any(row.generator is None for row in rows):
            races.uniform_(generator=self._generator)
        for index, row in enumerate(rows):
            if row.generator is not None:
                races[index].uniform_(generator=row.generator)
        races = races.log_().neg_()
        # Only the rows with a nucleus are sorted.
        nucleus = [index for index, p in enumerate(params) if p.top_p < 1.0]
        if not nucleus:
            return _race(x, races, params)
        if len(nucleus) == len(params):
            return _race_sorted(x, races, params)
        rest = [index for index, p in enumerate(params) if p.top_p >= 1.0]
        return _merge(
            len(rows),
            (nucleus, _race_sorted(_select(x, nucleus), _select(races, nucleus), [params[i] for i in nucleus])),
            (rest, _race(_select(x, rest), _select(races, rest), [params[i] for i in rest])),
        )


def _race(x: torch.Tensor, races: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """Draws for rows without top-p: top-k from `topk` (no sort), min-p, then argmax(probs / E)."""
    vocabulary = x.shape[-1]
    top_k = [p.top_k if 0 < p.top_k < vocabulary else 0 for p in params]
    if any(top_k):
        values = torch.topk(x, max(top_k), dim=-1).values
        kth = values.gather(-1, _column([max(k, 1) for k in top_k], torch.long, x.device) - 1)
        kth = kth.masked_fill_(_column([k == 0 for k in top_k], torch.bool, x.device), -torch.inf)
        x = x.masked_fill_(x < kth, -torch.inf)
    probs = torch.softmax(x, dim=-1)
    probs = _min_p(probs, probs.amax(dim=-1, keepdim=True), params)
    return probs.div_(races).argmax(dim=-1)


def _race_sorted(x: torch.Tensor, races: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """Draws for rows with top-p, sorted: top-k is a cut of the sorted row, then the nucleus, min-p, and the race.

    The race runs in sorted order (E is as random there): a row takes this path for its own parameters, whatever
    shares the batch, and the stable sort orders ties the same way every time, so a seeded row still reproduces.
    """
    vocabulary, device = x.shape[-1], x.device
    ordered, order = torch.sort(x, dim=-1, descending=True, stable=True)
    top_k = [p.top_k if 0 < p.top_k < vocabulary else 0 for p in params]
    if any(top_k):
        kth = ordered.gather(-1, _column([k or vocabulary for k in top_k], torch.long, device) - 1)
        ordered = ordered.masked_fill_(ordered < kth, -torch.inf)
    probs = torch.softmax(ordered, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1).sub_(probs)
    cut = mass_before >= _column([p.top_p for p in params], torch.float32, device)
    cut[:, 0] = False  # the best token always stays
    probs = _min_p(probs.masked_fill_(cut, 0.0), probs[:, :1], params)
    winners = probs.div_(races).argmax(dim=-1, keepdim=True)
    return order.gather(-1, winners)[:, 0]


def _min_p(probs: torch.Tensor, best: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """Zero what is under min_p times the best token's probability (relative: no renormalisation needed)."""
    if all(p.min_p <= 0.0 for p in params):
        return probs
    return probs.masked_fill_(probs < _column([p.min_p for p in params], torch.float32, probs.device) * best, 0.0)


def _process(x: torch.Tensor, rows: Sequence[SamplingState]) -> torch.Tensor:
    """The logit processors of every row that uses one; x is not changed in place (it may be the caller's)."""
    batch, vocabulary = x.shape
    device = x.device
    biased = [(index, token, bias) for index, row in enumerate(rows) for token, bias in row.params.logit_bias]
    if biased:
        at, tokens, biases = zip(*biased, strict=True)
        where = (_tensor(at, torch.long, device), _tensor(tokens, torch.long, device))
        x = x.index_put(where, x[where] + _tensor(biases, x.dtype, device))
    ending = [
        (index, end)
        for index, row in enumerate(rows)
        if len(row.generated) < row.params.min_tokens
        for end in row._end_ids
    ]
    if ending:
        at, ends = zip(*ending, strict=True)
        where = (_tensor(at, torch.long, device), _tensor(ends, torch.long, device))
        x = x.index_put(where, _tensor([-torch.inf], x.dtype, device))
    repeating = [index for index, row in enumerate(rows) if row.params.repetition_penalty != 1.0]
    if repeating:
        positions = _positions(rows, repeating, vocabulary, device, prompts=True)
        seen = torch.zeros(batch * vocabulary, dtype=torch.bool, device=device)
        seen = seen.scatter_(0, positions, torch.ones_like(positions, dtype=torch.bool)).view(batch, vocabulary)
        penalty = _column([row.params.repetition_penalty for row in rows], x.dtype, device)
        x = torch.where(seen, torch.where(x > 0, x / penalty, x * penalty), x)
    counting = [index for index, row in enumerate(rows) if row.params.frequency_penalty or row.params.presence_penalty]
    if counting:
        positions = _positions(rows, counting, vocabulary, device, prompts=False)
        counts = torch.zeros(batch * vocabulary, dtype=x.dtype, device=device)
        counts = counts.scatter_add_(0, positions, torch.ones_like(positions, dtype=x.dtype)).view(batch, vocabulary)
        frequency = _column([row.params.frequency_penalty for row in rows], x.dtype, device)
        presence = _column([row.params.presence_penalty for row in rows], x.dtype, device)
        x = x - frequency * counts - presence * (counts > 0).to(x.dtype)
    return x


def _never_empty(processed: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """A constrained row the processors left with no token (`min_tokens` or a stop id hiding the only end its grammar
    allows, a bias of -inf) falls back to what its grammar allows: never a draw from nothing (NaN)."""
    return torch.where(torch.isneginf(processed).all(dim=-1, keepdim=True), allowed, processed)


def _positions(
    rows: Sequence[SamplingState], indices: Sequence[int], vocabulary: int, device: torch.device, prompts: bool
) -> torch.Tensor:
    """Positions (row * vocabulary + token) of these rows' generated tokens, and of their prompts' with `prompts`."""
    tokens: list[int] = []
    lengths: list[int] = []
    for index in indices:
        tokens += rows[index].generated
        lengths.append(len(rows[index].generated))
    ids = [_tensor(tokens, torch.long, device)]
    at = list(indices)
    if prompts:
        for index in indices:
            prompt = rows[index]._prompt
            if prompt is not None:
                ids.append(prompt)
                lengths.append(len(prompt))
                at.append(index)
    offsets = torch.repeat_interleave(
        _tensor(at, torch.long, device) * vocabulary,
        _tensor(lengths, torch.long, device),
        output_size=sum(lengths),  # known here: no device-to-host copy to learn it
    )
    return torch.cat(ids) + offsets


def _select(x: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
    """These rows of x (rising indices): x itself when they are all of them."""
    if len(indices) == len(x):
        return x
    return x.index_select(0, _tensor(indices, torch.long, x.device))


def _merge(size: int, *parts: tuple[Sequence[int], torch.Tensor]) -> torch.Tensor:
    """One tensor of `size` rows from parts that each hold some of them: (their indices, their values)."""
    first = parts[0][1]
    merged = first.new_empty((size, *first.shape[1:]))
    for indices, values in parts:
        merged.index_copy_(0, _tensor(indices, torch.long, first.device), values)
    return merged


def _tensor(values: Sequence[float], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small tensor of per-row values, sent without waiting for the device (a blocking copy would sync it)."""
    return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)


def _column(values: Sequence[float], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return _tensor(values, dtype, device)[:, None]
