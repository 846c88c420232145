"""The test fault hook: makes generation raise for chosen requests, so the 500 and mid-stream error paths are
exercised for real. Enabled only by `TOKSERVE_FAULT_MARKER`, read at start-up; a request can never turn it on."""

import re
from collections.abc import Sequence

from tokenizers import Tokenizer


class InjectedFault(RuntimeError):
    """Raised inside generation by the fault hook."""


class WorkerFault(BaseException):
    """Raised by the fault hook where no per-request handling catches it: it ends the worker thread.

    A BaseException, like the MemoryError-style failures it stands for, so `except Exception` lets it through.
    """


class FaultHook:
    """A prompt containing MARKER fails before its first token; MARKER<N>, after N generated tokens; MARKER!
    kills the worker thread when its generation starts."""

    def __init__(self, marker: str, tokenizer: Tokenizer) -> None:
        self._pattern = re.compile(re.escape(marker) + r"(!|\d*)")
        self._tokenizer = tokenizer

    def failing_step(self, prompt_ids: Sequence[int]) -> int | None:
        """The step (0: prefill) at which this request's generation raises, or None."""
        match = self._match(prompt_ids)
        if match is None or match == "!":
            return None
        return int(match or 0)

    def check_worker(self, prompt_ids: Sequence[int]) -> None:
        """Raise WorkerFault for a prompt containing MARKER!; call it as a request's generation starts."""
        if self._match(prompt_ids) == "!":
            raise WorkerFault("fault hook: the worker thread dies")

    def _match(self, prompt_ids: Sequence[int]) -> str | None:
        match = self._pattern.search(self._tokenizer.decode(list(prompt_ids)))
        return None if match is None else match.group(1)
