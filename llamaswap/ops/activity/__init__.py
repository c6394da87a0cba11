"""Activity records: one entry per inference request, with token counts read from the
response as it passes through the proxy (upstream's ``/api/metrics``, behaviour.md 5.8).

The package follows the path of one request:
  meter.py    RequestMeter, the forwarding observer: sees the request and response as they
              pass (docs/architecture.md, "Forwarding observer"), then records the entry
  parse.py    ResponseParser: token numbers from a JSON, SSE, gzip or deflate body, fed in
              chunks (jsontap.py: the streaming JSON value tap it uses)
  record.py   ActivityEntry and TokenMetrics, upstream's JSON shape
  log.py      ActivityLog: hands out meters, assigns ids, links captures, publishes
              ActivityRecorded, keeps the entries in the store, answers the API
  store.py    SqliteStore: the records in SQLite, a file (store.path) or memory
              (metricsMaxInMemory), written in batches off the request's thread
  query.py    ActivityQuery (the URL of /api/metrics/activity, upstream's 400s), histograms
"""

from llamaswap.ops.activity.jsontap import ANY, JsonValueTap
from llamaswap.ops.activity.log import ActivityLog
from llamaswap.ops.activity.meter import RequestMeter, filter_accept_encoding
from llamaswap.ops.activity.parse import ResponseParser, build_tokens, usage_tokens
from llamaswap.ops.activity.record import ActivityEntry, TokenMetrics
from llamaswap.ops.activity.query import ActivityQuery, QueryError, parse_query
from llamaswap.ops.activity.store import SqliteStore

__all__ = ["ANY", "ActivityEntry", "ActivityLog", "ActivityQuery", "JsonValueTap", "QueryError",
           "RequestMeter", "ResponseParser", "SqliteStore", "TokenMetrics", "build_tokens",
           "filter_accept_encoding", "parse_query", "usage_tokens"]
