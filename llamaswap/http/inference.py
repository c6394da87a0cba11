"""The model-dispatched routes (behaviour.md 3.2) and the listing/health routes.

Adding an inference path is one line in the tables below.
"""

from __future__ import annotations

from llamaswap.http.routes import RequestContext, RouteTable

# POST, model from the JSON body
JSON_PATHS = (
    "/v1/chat/completions", "/v1/responses", "/v1/completions", "/v1/messages",
    "/v1/messages/count_tokens", "/v1/embeddings", "/reranking", "/rerank", "/v1/rerank",
    "/v1/reranking", "/infill", "/completion", "/v1/audio/speech", "/v1/audio/voices",
    "/v1/images/generations", "/sdapi/v1/txt2img", "/sdapi/v1/img2img",
)
# POST, versionless: the leading /v is stripped before forwarding
VERSIONLESS_PATHS = (
    "/v/chat/completions", "/v/responses", "/v/completions", "/v/messages",
    "/v/messages/count_tokens", "/v/embeddings", "/v/rerank", "/v/reranking",
)
# POST, model from the multipart field
MULTIPART_PATHS = ("/v1/audio/transcriptions", "/v1/images/edits")
# GET, model from ?model=
QUERY_PATHS = ("/v1/audio/voices", "/sdapi/v1/loras", "/props")


def handle_health(ctx: RequestContext) -> None:
    ctx.send(200, b"OK", "text/plain; charset=utf-8")


def register(table: RouteTable) -> None:
    table.add("GET", "/health", handle_health, auth=False)
    table.add("GET", "/wol-health", handle_health, auth=False, log=False)
