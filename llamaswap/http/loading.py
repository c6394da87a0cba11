"""The loading-state stream (behaviour.md 4.9): ``reasoning_content`` deltas while a model
loads, then the backend's own stream on the same response.

Only started after admission (auth, model, concurrency) has been decided (differences.md
point 10). Runs in the handler thread: it writes, then waits on the ticket for the next tick,
so the swap finishing ends the loop at once.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

from llamaswap.http.context import RequestContext

RULE = "━━━━━"
TICK = 0.75
INLINE_RUNES = 5  # max(3, 75 / 15)
RUNES_PER_SECOND = 75.0
LOADING_PATH = "/v1/chat/completions"

REMARKS = (
    "Warming up the tensors...",
    "Counting all the parameters, twice.",
    "Convincing the GPU this is a good idea.",
    "Unpacking the weights, carefully.",
    "Reticulating attention heads...",
    "Asking the model to please wake up.",
    "Loading layers one floor at a time.",
    "Politely evicting the previous tenant.",
    "Defragmenting the latent space.",
    "Brewing a fresh KV cache.",
    "Aligning the embeddings with the stars.",
    "Teaching the tokenizer new words.",
    "Feeding the hamsters that power the matrix multiplications.",
    "Quantizing expectations.",
    "Checking the model read the whole internet.",
    "Spinning up the context window.",
    "Untangling the transformer blocks.",
    "Almost there. Probably.",
    "Mapping gigabytes into memory.",
    "Reminding the model what a prompt is.",
)


def is_loading_path(path: str) -> bool:
    return path.startswith(LOADING_PATH)


def sse_chunk(text: str) -> bytes:
    payload = json.dumps({"choices": [{"delta": {"reasoning_content": text}}]},
                         ensure_ascii=False, separators=(",", ":"))
    payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return b"data: " + payload.encode("utf-8") + b"\n\n"


class LoadingStream:
    """Writes the loading chunks for one request until ``ticket.wait`` says it is decided."""

    def __init__(self, ctx: RequestContext, ticket: Any, model_id: str,
                 rng: random.Random | None = None, tick: float = TICK):
        self.ctx = ctx
        self.ticket = ticket
        self.model_id = model_id
        self.rng = rng or random.Random()
        self.tick = tick
        self.remarks = list(REMARKS)
        self.rng.shuffle(self.remarks)
        self._remark_i = 0
        self.started_at = time.monotonic()

    def start(self) -> None:
        self.ctx.start(200, [("Content-Type", "text/event-stream"),
                             ("Cache-Control", "no-cache"),
                             ("Connection", "keep-alive"),
                             ("X-Accel-Buffering", "no")])

    def send(self, text: str) -> None:
        self.ctx.write(sse_chunk(text))

    def send_inline(self, text: str) -> bool:
        """Send in 5-rune pieces at 75 runes/s (unpaced once the ticket is decided); False
        if the ticket was decided."""
        decided = False
        for i in range(0, len(text), INLINE_RUNES):
            piece = text[i:i + INLINE_RUNES]
            self.send(piece)
            if not decided and self.ticket.wait(len(piece) / RUNES_PER_SECOND):
                decided = True
        return not decided

    def send_line(self, text: str) -> bool:
        ok = self.send_inline(text)
        self.send("\n")
        return ok

    def run(self) -> None:
        """Stream until the ticket is decided (granted or failed). Raises ClientGone."""
        if self.send_line(RULE) and self.send_line(f"llama-swap loading model: {self.model_id}"):
            self._ticks()
        self._epilogue()

    def _ticks(self) -> None:
        last_remark = None
        next_in = 0.0
        last_pos = 0
        while not self.ticket.wait(self.tick):
            now = time.monotonic()
            pos = getattr(self.ticket, "position", 0) or 0
            if pos and pos != last_pos:
                last_pos = pos
                self.send("\n")
                self.send_inline(f"Queue position: #{pos}")
                self.send(" ")
                last_remark, next_in = now, self.rng.uniform(5, 9)
            elif last_remark is None or now - last_remark >= next_in:
                self.send("\n")
                self.send_inline(self._next_remark())
                self.send(" ")
                last_remark, next_in = time.monotonic(), self.rng.uniform(5, 9)
            else:
                self.send(".")

    def _next_remark(self) -> str:
        r = self.remarks[self._remark_i % len(self.remarks)]
        self._remark_i += 1
        return r

    def _epilogue(self) -> None:
        # the swap is decided: print the rest without pacing
        secs = time.monotonic() - self.started_at
        self.send("\n")
        for line in (f"Done! ({secs:.2f}s)", RULE, " "):
            for i in range(0, len(line), INLINE_RUNES):
                self.send(line[i:i + INLINE_RUNES])
            self.send("\n")
