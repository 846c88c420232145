"""Wire requests to engine requests, one function per endpoint: model check, prompt ids, token budget, sampling,
and one GenerationRequest per choice (`n` per prompt).

They block (chat templates and tokenizers take time in proportion to the request, ~0.5 s for a million
characters), so routes run them in a thread: other requests' streams never wait for them, and the limits are
checked before that work.
"""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from tokserve.config import Settings
from tokserve.engine import Engine, GenerationRequest, SamplingParams
from tokserve.errors import ContextLengthExceeded, InvalidRequest
from tokserve.schemas import CreateChatCompletionRequest, CreateCompletionRequest, GenerationParams
from tokserve.server.deltas import Shape
from tokserve.server.dependencies import check_model
from tokserve.server.limits import (
    check_generation_limits,
    check_max_tokens,
    check_messages,
    check_prompts,
    check_queue_room,
    check_text,
)
from tokserve.server.structure import Structure, chat_structure, generation_structure, message_text

# OpenAI's default for /v1/completions; chat defaults to the rest of the context.
_COMPLETIONS_MAX_TOKENS = 16
# vLLM's threshold too.
_GREEDY_BELOW = 1e-5


@dataclass(frozen=True, slots=True)
class PlannedChoice:
    """One choice of a response: its index, its generation, and the prompt text it shows first (`echo`)."""

    index: int
    request: GenerationRequest
    echo: str | None = None
    prompt: int = 0  # which of the request's prompts (usage counts each prompt once)


@dataclass(frozen=True, slots=True)
class ResponsePlan:
    """A request in engine terms: its choices, and what applies to all of them."""

    response_id: str
    model: str  # the served name the request used
    choices: tuple[PlannedChoice, ...]
    prompt_tokens: int  # each prompt once, however many choices it has (usage)
    stop: tuple[str, ...]
    include_stop_str_in_output: bool
    logprobs: bool
    shape: Shape = field(default_factory=Shape)


@dataclass(frozen=True, slots=True)
class _Prompt:
    ids: list[int]
    echo: str | None
    param: str


def chat_plan(body: CreateChatCompletionRequest, engine: Engine, settings: Settings) -> ResponsePlan:
    """Blocking (the template and the tokenizer): the route runs it in a thread."""
    model = check_model(body.model, settings)
    check_generation_limits(body, settings)
    max_tokens = body.max_completion_tokens or body.max_tokens
    max_tokens_param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    check_max_tokens(max_tokens, settings, max_tokens_param)
    check_messages([message_text(message.content) for message in body.messages], settings)
    continue_final = bool(body.continue_final_message)
    structure = chat_structure(body, engine, settings)
    prompt_ids = engine.encode_chat(
        structure.messages,
        template=settings.chat_template_text,
        add_generation_prompt=not continue_final if body.add_generation_prompt is None else body.add_generation_prompt,
        continue_final_message=continue_final,
        variables=body.chat_template_kwargs,
        tools=structure.tools,
    )
    if structure.shape.reasoning:
        # Some templates open the thinking at the end of the prompt: the output then starts inside it.
        opened = engine.decode(prompt_ids[-4:], skip_special_tokens=False).rstrip().endswith("<think>")
        structure = replace(structure, shape=replace(structure.shape, thinking=opened))
    top = (body.top_logprobs or 0) if body.logprobs else None
    prompt = _Prompt(prompt_ids, None, "messages")
    budget = _Budget(max_tokens, max_tokens_param, settings.max_tokens_cap)
    return _plan("chatcmpl", model, [prompt], body, engine, budget, top, False, structure)


def completion_plan(body: CreateCompletionRequest, engine: Engine, settings: Settings) -> ResponsePlan:
    """Blocking (the tokenizer): the route runs it in a thread."""
    model = check_model(body.model, settings)
    check_generation_limits(body, settings)
    check_max_tokens(body.max_tokens, settings, "max_tokens")
    if body.suffix:
        check_text(body.suffix, settings, "suffix")
    prompts = body.prompts
    check_prompts(len(prompts), settings)
    plans = []
    for number, prompt in enumerate(prompts):
        param = "prompt" if len(prompts) == 1 else f"prompt.{number}"
        if isinstance(prompt, str):
            check_text(prompt, settings, param)
            # A fill-in-the-middle prompt brings its own special tokens.
            ids = engine.encode_text(prompt, add_special_tokens=not body.suffix)
        else:
            ids = _check_token_ids(prompt, engine, param)
        if not ids:
            raise InvalidRequest("The prompt is empty.", param=param)
        echo = None
        if body.echo:
            echo = prompt if isinstance(prompt, str) else engine.decode(ids, body.skip_special_tokens is not False)
        if body.suffix:
            ids = engine.encode_fill_in_the_middle(ids, body.suffix)
        plans.append(_Prompt(ids, echo, param))
    cap = settings.max_tokens_cap
    max_tokens = body.max_tokens or min(_COMPLETIONS_MAX_TOKENS, cap or _COMPLETIONS_MAX_TOKENS)
    budget = _Budget(max_tokens, "max_tokens", cap)
    structure = generation_structure(body, engine)
    return _plan("cmpl", model, plans, body, engine, budget, body.logprobs, bool(body.echo), structure)


@dataclass(frozen=True, slots=True)
class _Budget:
    """What the request asks to generate, under which name, and --max-tokens-cap."""

    max_tokens: int | None
    param: str
    cap: int | None


def _plan(
    prefix: str,
    model: str,
    prompts: Sequence[_Prompt],
    body: GenerationParams,
    engine: Engine,
    budget: _Budget,
    logprobs: int | None,
    echo_logprobs: bool,
    structure: Structure,
) -> ResponsePlan:
    """n choices per prompt, indexed prompt by prompt; with a seed, choice j of each prompt samples with seed + j."""
    # Every choice waits in the queue at first: more than it holds could never be admitted, however long one waits.
    check_queue_room(len(prompts) * body.choices, engine.max_queue, "n" if len(prompts) == 1 else "prompt")
    response_id = f"{prefix}-{uuid.uuid4().hex}"
    sampling = _sampling(body, engine)
    stop_token_ids = frozenset(_check_token_ids(body.stop_token_ids or [], engine, "stop_token_ids"))
    choices: list[PlannedChoice] = []
    for prompt_number, prompt in enumerate(prompts):
        tokens = _tokens(prompt, budget, engine.max_model_len)
        if sampling.min_tokens > tokens:
            raise InvalidRequest(f"min_tokens may be at most {budget.param} ({tokens}).", param="min_tokens")
        for choice in range(body.choices):
            index = len(choices)
            request = GenerationRequest(
                f"{response_id}-{index}",
                tuple(prompt.ids),
                tokens,
                sampling if body.seed is None else replace(sampling, seed=body.seed + choice),
                stop_token_ids=stop_token_ids,
                ignore_eos=bool(body.ignore_eos),
                logprobs=logprobs,
                prompt_logprobs=logprobs if echo_logprobs else None,
                skip_special_tokens=structure.skip_special_tokens,
                grammar=structure.grammar,
            )
            choices.append(PlannedChoice(index, request, prompt.echo, prompt_number))
    return ResponsePlan(
        response_id,
        model,
        tuple(choices),
        prompt_tokens=sum(len(prompt.ids) for prompt in prompts),
        stop=tuple(body.stop_strings),
        include_stop_str_in_output=bool(body.include_stop_str_in_output),
        logprobs=logprobs is not None,
        shape=structure.shape,
    )


def _tokens(prompt: _Prompt, budget: _Budget, max_model_len: int) -> int:
    """The tokens this prompt may generate: max_tokens, or the rest of the context within --max-tokens-cap; never
    past the context."""
    max_tokens, cap = budget.max_tokens, budget.cap
    room = max_model_len - len(prompt.ids)
    if max_tokens is None and room >= 1:
        return room if cap is None else min(room, cap)
    if max_tokens is None or max_tokens > room:
        asked = f"{len(prompt.ids)} in the {prompt.param}" + (f" plus {max_tokens} to generate" if max_tokens else "")
        raise ContextLengthExceeded(
            f"This model's maximum context length is {max_model_len} tokens; the request needs more ({asked}). "
            f"Shorten the {prompt.param} or lower {budget.param}.",
            param=prompt.param if max_tokens is None or len(prompt.ids) >= max_model_len else budget.param,
        )
    return max_tokens


def _sampling(body: GenerationParams, engine: Engine) -> SamplingParams:
    bias = body.logit_bias or {}
    for key in bias:
        _check_token_id(int(key), engine, f"logit_bias.{key}")
    temperature = 1.0 if body.temperature is None else body.temperature
    return SamplingParams(
        # Below it, dividing the logits overflows to inf (found by fuzzing); such a temperature is greedy anyway.
        temperature=0.0 if temperature < _GREEDY_BELOW else temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=max(body.top_k or 0, 0),  # vLLM's -1 and 0 both mean "all tokens"
        min_p=body.min_p or 0.0,
        seed=body.seed,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        repetition_penalty=body.repetition_penalty or 1.0,
        logit_bias=tuple((int(key), value) for key, value in bias.items()),
        min_tokens=body.min_tokens or 0,
    )


def _check_token_ids(token_ids: Sequence[int], engine: Engine, param: str) -> list[int]:
    """The ids, if each is in the model's vocabulary."""
    for position, token_id in enumerate(token_ids):
        _check_token_id(token_id, engine, f"{param}.{position}")
    return list(token_ids)


def _check_token_id(token_id: int, engine: Engine, param: str) -> None:
    # Never negative: the schemas say so.
    if token_id >= engine.vocabulary.size:
        raise InvalidRequest(
            f"Token id {token_id} is not in the vocabulary (0 to {engine.vocabulary.size - 1}).", param=param
        )
