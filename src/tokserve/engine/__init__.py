"""The engine: model loading, prompts, detokenizer, and the worker thread that owns the model.

torch and transformers live here only; route code uses the names below.
"""

from tokserve.engine.crossing import (
    EndReason,
    EngineSettings,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
    TokenLogprobs,
)
from tokserve.engine.detokenizer import Decoder
from tokserve.engine.engine import Engine
from tokserve.engine.loading import LoadedModel, check_quantization, embedded_model_file, load_model
from tokserve.engine.scheduler import Counters
from tokserve.engine.token_stream import TokenStream
from tokserve.engine.vocabulary import Vocabulary

__all__ = [
    "Counters",
    "Decoder",
    "EndReason",
    "Engine",
    "EngineSettings",
    "GenerationRequest",
    "LoadedModel",
    "SamplingParams",
    "TokenEvent",
    "TokenLogprobs",
    "TokenStream",
    "Vocabulary",
    "check_quantization",
    "embedded_model_file",
    "load_model",
]
