"""The activity record: one entry per metered request, in upstream's JSON shape."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping

from llamaswap.config.model import PLAIN_KEY_NAME
from llamaswap.ops import gojson


@dataclass(frozen=True)
class TokenMetrics:
    cache_tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    prompt_per_second: float = 0.0
    tokens_per_second: float = 0.0
    # speculative decoding (llama.cpp timings draft_n/draft_n_accepted, vLLM metrics): -1 when
    # the backend did not report them, 0 for a response with no numbers at all
    draft_tokens: int = 0
    draft_acc_tokens: int = 0

    def to_json(self) -> dict:
        """The reference revision's shape (``GET /api/metrics``, the SSE ``metrics`` message)."""
        return {"cache_tokens": self.cache_tokens, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens,
                "prompt_per_second": float(self.prompt_per_second),
                "tokens_per_second": float(self.tokens_per_second)}

    def to_row(self) -> dict:
        """Today's upstream shape (``GET /api/metrics/activity``)."""
        return {"cache_tokens": self.cache_tokens, "draft_tokens": self.draft_tokens,
                "draft_acc_tokens": self.draft_acc_tokens, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens,
                "prompt_per_second": float(self.prompt_per_second),
                "tokens_per_second": float(self.tokens_per_second)}


@dataclass(frozen=True)
class ActivityEntry:
    id: int
    timestamp: datetime
    model: str
    req_path: str
    resp_content_type: str
    resp_status_code: int
    tokens: TokenMetrics = field(default_factory=TokenMetrics)
    duration_ms: int = 0
    has_capture: bool = False
    error_msg: str = ""  # why a non-200 response failed (from its body, else the status)
    metadata: Mapping[str, str] | None = None  # request metadata (fifo_priority, selector, ...)
    key: str = PLAIN_KEY_NAME  # the API key's name ("-": a plain key, or no apiKeys); ours


    def to_json(self) -> dict:
        """The reference revision's ActivityLogEntry, fields in struct order."""
        return {"id": self.id, "timestamp": self.timestamp, "model": self.model,
                "req_path": self.req_path, "resp_content_type": self.resp_content_type,
                "resp_status_code": self.resp_status_code, "tokens": self.tokens.to_json(),
                "duration_ms": self.duration_ms, "has_capture": self.has_capture,
                "key": self.key}

    def dumps(self) -> str:
        return gojson.dumps(self.to_json())

    def to_row(self) -> dict:
        """Today's upstream ActivityLogEntry: the row of ``GET /api/metrics/activity``
        (``error_msg`` and ``metadata`` omitted when empty; metadata keys sorted, as Go)."""
        row = {"id": self.id, "timestamp": self.timestamp, "model": self.model,
               "req_path": self.req_path, "resp_content_type": self.resp_content_type,
               "resp_status_code": self.resp_status_code, "tokens": self.tokens.to_row(),
               "duration_ms": self.duration_ms, "has_capture": self.has_capture}
        if self.error_msg:
            row["error_msg"] = self.error_msg
        if self.metadata:
            row["metadata"] = dict(sorted(self.metadata.items()))
        row["key"] = self.key  # ours, after upstream's fields
        return row


NO_TOKENS = TokenMetrics()  # frozen: one shared instance for "no numbers"

_local_tz: tuple[int, Any] = (-1, None)  # (second, its local timezone)


def local_now() -> datetime:
    """datetime.now().astimezone(), with the local offset looked up once a second (the
    lookup is most of the cost; offsets only change on whole seconds)."""
    global _local_tz
    now = time.time()
    second = int(now)
    cached = _local_tz
    if cached[0] != second:
        cached = _local_tz = (second, datetime.fromtimestamp(second).astimezone().tzinfo)
    return datetime.fromtimestamp(now, cached[1])
