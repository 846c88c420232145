"""The test fault hook: makes generation raise for chosen requests, so the 500 and mid-stream error paths are
exercised for real. Enabled only by `TOKSERVE_FAULT_MARKER`, read at start-up; a request can never turn it on."""

import re
from collections.abc import Sequence

from tokenizers import Tokenizer


class InjectedFault(RuntimeError):
    """Raised inside generation by the fault hook."""


class FaultHook:
    """A prompt containing MARKER fails before its first token; MARKER<N>, after N generated tokens."""

    def __init__(self, marker: str, tokenizer: Tokenizer) -> None:
        self._pattern = re.compile(re.escape(marker) + r"(\d*)")
        self._tokenizer = tokenizer

    def failing_step(self, prompt_ids: Sequence[int]) -> int | None:
        """The step (0: prefill) at which this request's generation raises, or None."""
        match = self._pattern.search(self._tokenizer.decode(list(prompt_ids)))
        if match is None:
            return None
        return int(match.group(1) or 0)
