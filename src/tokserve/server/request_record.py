"""One generation request's timings and counts as it streams: they feed the app's metrics, and make the one log
line written when the request ends. Prompts, outputs and keys never reach the log."""

import logging
import time
from dataclasses import dataclass, field

from tokserve.server.metrics import Metrics

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class RequestRecord:
    """Created when the request is submitted; `end()` once, however the request ends."""

    request_id: str
    model: str
    prompt_tokens: int
    metrics: Metrics
    submitted: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    completion_tokens: int = 0
    finish_reasons: list[str] = field(default_factory=list)
    ended: bool = False

    def first_token(self) -> None:
        """A choice got its first token; the request's time to first token is its first choice's."""
        self.completion_tokens += 1
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
            self.metrics.time_to_first_token.observe(self.first_token_at - self.submitted)

    def next_token(self, gap: float) -> None:
        """A choice got another token, `gap` seconds after its previous one."""
        self.completion_tokens += 1
        self.metrics.inter_token_latency.observe(gap)

    def finished(self, reason: str) -> None:
        """A choice ended with `reason`: stop or length."""
        self.finish_reasons.append(reason)
        self.metrics.finished.labels(reason).inc()

    def end(self, failure: str | None = None) -> None:
        """The answer is complete, or ended by `failure` (error, cancelled); idempotent."""
        if self.ended:
            return
        self.ended = True
        now = time.monotonic()
        if failure is not None:
            self.metrics.finished.labels(failure).inc()
        self.metrics.request_latency.observe(now - self.submitted)
        self.metrics.prompt_tokens.inc(self.prompt_tokens)
        self.metrics.generation_tokens.inc(self.completion_tokens)
        ttft = None if self.first_token_at is None else round(self.first_token_at - self.submitted, 4)
        fields = {
            "request_id": self.request_id,
            "model": self.model,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "ttft_s": ttft,
            "duration_s": round(now - self.submitted, 4),
            "finish_reason": failure or ",".join(self.finish_reasons),
        }
        logger.info(" ".join(f"{name}=%s" for name in fields), *fields.values(), extra={"request": fields})
