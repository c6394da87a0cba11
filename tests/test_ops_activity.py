"""Activity records and captures: the incremental parser, the ring, the capture store."""

from __future__ import annotations

import base64
import gzip
import json
import zlib
from datetime import datetime, timedelta, timezone

import pytest

from llamaswap.ops import gojson
from llamaswap.ops.activity import (ActivityLog, JsonValueTap, ResponseParser,
                                    filter_accept_encoding)
from llamaswap.ops.captures import (ALL, REQ_BODY, REQ_HEADERS, RESP_BODY, RESP_HEADERS,
                                    CaptureStore, canonical_header, fields_for, header_map,
                                    make_capture)
from llamaswap.ops.events import ActivityRecorded, EventBus


def pieces(data: bytes, size: int):
    return [data[i:i + size] for i in range(0, len(data), size)]


def parse(body: bytes, path="/v1/chat/completions", ctype="application/json", enc="",
          chunk=None, wall_ms=5):
    """Run the parser with the body split at every possible chunk size (or one given)."""
    results = set()
    sizes = [chunk] if chunk else sorted({1, 2, 3, 7, 13, len(body) or 1})
    for size in sizes:
        p = ResponseParser(path, ctype, enc)
        for piece in pieces(body, size):
            p.feed(piece)
        tokens, duration, warning = p.finish(wall_ms)
        results.add((tokens, duration, warning))
    assert len(results) == 1, results  # chunking never changes the answer
    return results.pop()


class FakeLog:
    def __init__(self):
        self.lines = []

    def warn(self, msg):
        self.lines.append(("warn", msg))

    def debug(self, msg):
        self.lines.append(("debug", msg))

    def info(self, msg):
        self.lines.append(("info", msg))


# ---- JSON bodies -----------------------------------------------------------------------------

def test_chat_completion_usage_with_cached_tokens():
    body = b'{"id":"x","choices":[{"message":{"content":"hi {\\"usage\\": 1}"}}],' \
           b'"usage":{"prompt_tokens":12,"completion_tokens":7,' \
           b'"prompt_tokens_details":{"cached_tokens":4}}}'
    tokens, duration, warning = parse(body)
    assert warning is None
    assert (tokens.input_tokens, tokens.output_tokens, tokens.cache_tokens) == (12, 7, 4)
    assert (tokens.prompt_per_second, tokens.tokens_per_second) == (-1, -1)
    assert duration == 5


def test_timings_override_usage_and_stretch_duration():
    body = b'{"usage":{"prompt_tokens":1,"completion_tokens":1},"timings":{"prompt_n":20,' \
           b'"predicted_n":50,"prompt_per_second":100.0,"predicted_per_second":40.0,' \
           b'"prompt_ms":200,"predicted_ms":1250,"cache_n":8}}'
    tokens, duration, _ = parse(body)
    assert (tokens.input_tokens, tokens.output_tokens, tokens.cache_tokens) == (20, 50, 8)
    assert (tokens.prompt_per_second, tokens.tokens_per_second) == (100.0, 40.0)
    assert duration == 1450
    _, duration, _ = parse(body, wall_ms=5000)
    assert duration == 5000  # the wall time wins when longer


def test_anthropic_and_responses_usage_names():
    body = b'{"type":"message","usage":{"input_tokens":9,"output_tokens":3,' \
           b'"cache_read_input_tokens":2}}'
    tokens, _, _ = parse(body, path="/v1/messages")
    assert (tokens.input_tokens, tokens.output_tokens, tokens.cache_tokens) == (9, 3, 2)
    body = b'{"usage":{"input_tokens":9,"output_tokens":3,"input_tokens_details":' \
           b'{"cached_tokens":6}}}'
    tokens, _, _ = parse(body, path="/v1/responses")
    assert tokens.cache_tokens == 6


def test_no_usage_and_invalid_json_give_zero_tokens():
    tokens, duration, warning = parse(b'{"object":"list","data":[1,2,3]}')
    assert tokens.to_json() == {"cache_tokens": 0, "input_tokens": 0, "output_tokens": 0,
                                "prompt_per_second": 0.0, "tokens_per_second": 0.0}
    assert warning is None and duration == 5
    tokens, _, warning = parse(b'{"usage":{"prompt_tokens":3}')  # truncated
    assert tokens.input_tokens == 0 and "invalid JSON" in warning
    tokens, _, warning = parse(b'{"usage":{"prompt_tokens":3}}{}')  # trailing document
    assert tokens.input_tokens == 0 and "invalid JSON" in warning


def test_nested_usage_keys_are_not_top_level():
    body = b'{"choices":[{"usage":{"prompt_tokens":99}}],"meta":{"usage":{"prompt_tokens":5}}}'
    tokens, _, _ = parse(body)
    assert tokens.input_tokens == 0


def test_usage_null_counts_as_present():
    # gjson: a null usage "exists", so rates and cache become -1 with zero counts
    tokens, _, _ = parse(b'{"usage":null}')
    assert tokens.to_json() == {"cache_tokens": -1, "input_tokens": 0, "output_tokens": 0,
                                "prompt_per_second": -1.0, "tokens_per_second": -1.0}


def test_infill_array_takes_last_element_timings():
    body = b'[{"content":"a","timings":{"prompt_n":1,"predicted_n":1}},' \
           b'{"content":"b","timings":{"prompt_n":5,"predicted_n":9,"prompt_ms":10,' \
           b'"predicted_ms":20}}]'
    tokens, duration, _ = parse(body, path="/infill")
    assert (tokens.input_tokens, tokens.output_tokens) == (5, 9)
    assert duration == 30
    # the last element has no timings: nothing, even though an earlier one had
    tokens, _, _ = parse(b'[{"timings":{"prompt_n":5}},{"content":"b"}]', path="/infill")
    assert tokens.input_tokens == 0
    # arrays on other paths are not looked into
    tokens, _, _ = parse(body, path="/v1/completions")
    assert tokens.input_tokens == 0


def test_big_json_body_is_not_kept():
    blob = base64.b64encode(b"\x00" * 3_000_000).decode()
    body = json.dumps({"data": [{"b64_json": blob, "esc": "a\\\"b"}],
                       "usage": {"prompt_tokens": 4, "completion_tokens": 0}}).encode()
    p = ResponseParser("/v1/images/generations", "application/json")
    for piece in pieces(body, 65536):
        p.feed(piece)
    assert p.body is None  # no capture wanted: nothing retained
    tokens, _, _ = p.finish(1)
    assert tokens.input_tokens == 4


def test_json_value_tap_escapes_and_split_keys():
    tap = JsonValueTap([("usage",)])
    doc = b'{"us\\"age":{"prompt_tokens":1},"usage" : {"prompt_tokens" : 2, "s": "}\\\\"} }'
    for b in doc:
        tap.feed(bytes([b]))
    assert tap.valid
    assert tap.values == {(b"usage",): {"prompt_tokens": 2, "s": "}\\"}}


# ---- event streams ---------------------------------------------------------------------------

SSE_OPENAI = (b"data: {\"choices\":[{\"delta\":{\"content\":\"data: x\"}}]}\n\n"
              b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":15,\"completion_tokens\":33}}\n\n"
              b"data: [DONE]\n\n")


def test_sse_usage_last_chunk():
    tokens, _, warning = parse(SSE_OPENAI, ctype="text/event-stream")
    assert warning is None
    assert (tokens.input_tokens, tokens.output_tokens, tokens.cache_tokens) == (15, 33, -1)
    assert tokens.tokens_per_second == -1


def test_sse_crlf_and_no_space_after_colon():
    body = SSE_OPENAI.replace(b"\n", b"\r\n").replace(b"data: ", b"data:")
    tokens, _, _ = parse(body, ctype="text/event-stream; charset=utf-8")
    assert (tokens.input_tokens, tokens.output_tokens) == (15, 33)


def test_sse_llamacpp_timings_win():
    body = (b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n"
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4},"
            b"\"timings\":{\"prompt_n\":3,\"predicted_n\":4,\"cache_n\":1,"
            b"\"prompt_per_second\":250.5,\"predicted_per_second\":31.25,"
            b"\"prompt_ms\":12,\"predicted_ms\":128}}\n\n"
            b"data: [DONE]\n\n")
    tokens, duration, _ = parse(body, ctype="text/event-stream", wall_ms=1)
    assert tokens.to_json() == {"cache_tokens": 1, "input_tokens": 3, "output_tokens": 4,
                                "prompt_per_second": 250.5, "tokens_per_second": 31.25}
    assert duration == 140


def test_sse_anthropic_last_nonzero_value_wins():
    body = (b"event: message_start\n"
            b"data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,"
            b"\"output_tokens\":1,\"cache_read_input_tokens\":5}}}\n\n"
            b"event: message_delta\n"
            b"data: {\"type\":\"message_delta\",\"usage\":{\"input_tokens\":0,\"output_tokens\":15}}\n\n"
            b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
    tokens, _, _ = parse(body, path="/v1/messages", ctype="text/event-stream")
    assert (tokens.input_tokens, tokens.output_tokens, tokens.cache_tokens) == (25, 15, 5)


def test_sse_responses_api_usage():
    body = (b"event: response.completed\n"
            b"data: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":8,"
            b"\"output_tokens\":2,\"input_tokens_details\":{\"cached_tokens\":0}}}}\n\n")
    tokens, _, _ = parse(body, path="/v1/responses", ctype="text/event-stream")
    assert (tokens.input_tokens, tokens.output_tokens, tokens.cache_tokens) == (8, 2, 0)


def test_sse_without_data_warns():
    tokens, duration, warning = parse(b"data: [DONE]\n\n", ctype="text/event-stream")
    assert tokens.input_tokens == 0 and tokens.tokens_per_second == 0
    assert "no valid JSON data found in stream" in warning


def test_sse_keeps_only_the_current_line():
    # 40 MB of stream in 64 KiB chunks: the parser's state stays tiny
    delta = b"data: " + json.dumps({"choices": [{"delta": {"content": "x" * 200}}]}).encode() + b"\n\n"
    p = ResponseParser("/v1/chat/completions", "text/event-stream")
    chunk = delta * (65536 // len(delta))
    for _ in range(40_000_000 // len(chunk)):
        p.feed(chunk)
        assert len(p._sse._line) <= len(delta)
    p.feed(b"data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n")
    tokens, _, _ = p.finish(1)
    assert tokens.output_tokens == 2


def test_sse_huge_data_line_goes_through_the_tap():
    huge = b"data: {\"image\":\"" + b"A" * 3_000_000 + b"\",\"usage\":{\"prompt_tokens\":7}}\n\n"
    p = ResponseParser("/v1/chat/completions", "text/event-stream")
    for piece in pieces(huge, 100_000):
        p.feed(piece)
        assert len(p._sse._line) <= 1024 * 1024 + 100_000
    tokens, _, _ = p.finish(1)
    assert tokens.input_tokens == 7


# ---- compression -----------------------------------------------------------------------------

USAGE_BODY = b'{"usage":{"prompt_tokens":11,"completion_tokens":22}}'


@pytest.mark.parametrize("encode,enc", [
    (gzip.compress, "gzip"),
    (lambda b: gzip.compress(b[:10]) + gzip.compress(b[10:]), "gzip"),  # two members
    (zlib.compress, "deflate"),
    (lambda b: zlib.compress(b)[2:-4], "deflate"),  # raw deflate, as Go's flate reader
])
def test_compressed_bodies(encode, enc):
    tokens, _, warning = parse(encode(USAGE_BODY), enc=enc)
    assert warning is None and (tokens.input_tokens, tokens.output_tokens) == (11, 22)


def test_compressed_sse_stream():
    tokens, _, _ = parse(gzip.compress(SSE_OPENAI), ctype="text/event-stream", enc="gzip")
    assert tokens.output_tokens == 33


def test_corrupt_gzip_gives_minimal_entry():
    tokens, _, warning = parse(b"\x1f\x8b\x08\x00garbage-garbage", enc="gzip")
    assert tokens.input_tokens == 0 and "decompression failed" in warning


def test_filter_accept_encoding():
    assert filter_accept_encoding("") == ""
    assert filter_accept_encoding("br, gzip;q=0.8, zstd, Deflate") == "gzip;q=0.8, Deflate"
    assert filter_accept_encoding("br") == ""


# ---- the ring and the meter ------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def meter_run(log, clock, status=200, headers=(("Content-Type", "application/json"),),
              body=USAGE_BODY, path="/v1/chat/completions", elapsed=0.25, req_headers=None,
              req_body=b""):
    m = log.meter("m1", path, "POST", req_headers or [("Content-Type", "application/json")])
    if req_body:
        m.on_request_chunk(req_body)
    clock.t += elapsed
    m.on_response(status, list(headers))
    for piece in pieces(body, 5):
        m.on_chunk(piece)
    return m.on_end()


def test_ring_ids_events_and_exact_json():
    bus = EventBus()
    sub = bus.subscribe()
    clock = Clock()
    log = ActivityLog(2, events=bus, log=FakeLog(), clock=clock)
    assert log.meter("m1", "/v1/models", "GET") is None  # only POST is metered
    for _ in range(3):
        meter_run(log, clock)
    entries = log.entries()
    assert [e.id for e in entries] == [1, 2]
    events = [sub.get(0) for _ in range(3)]
    assert all(isinstance(e, ActivityRecorded) for e in events)
    assert [e.entry.id for e in events] == [0, 1, 2]
    data = json.loads(log.dumps())
    assert list(data[0]) == ["id", "timestamp", "model", "req_path", "resp_content_type",
                             "resp_status_code", "tokens", "duration_ms", "has_capture",
                             "key"]  # upstream's fields, then the API key's name (ours)
    assert data[0]["key"] == "-"
    assert data[0]["tokens"] == {"cache_tokens": -1, "input_tokens": 11, "output_tokens": 22,
                                 "prompt_per_second": -1, "tokens_per_second": -1}
    assert data[0]["duration_ms"] == 250 and data[0]["has_capture"] is False
    text = entries[0].dumps()
    assert '"prompt_per_second":-1,' in text and '"resp_status_code":200,' in text


def test_non_200_and_empty_body_entries():
    clock = Clock()
    flog = FakeLog()
    log = ActivityLog(10, log=flog, clock=clock)
    e = meter_run(log, clock, status=500, body=b'{"usage":{"prompt_tokens":3}}')
    assert e.resp_status_code == 500 and e.tokens.input_tokens == 0
    assert e.tokens.prompt_per_second == 0
    e = meter_run(log, clock, body=b"")
    assert e.tokens.input_tokens == 0
    assert any("non-200 response, recording partial metrics: status=500" in m for _, m in flog.lines)
    assert any("empty body" in m for _, m in flog.lines)


def test_on_end_twice_records_once():
    clock = Clock()
    log = ActivityLog(10, clock=clock)
    m = log.meter("m1", "/v1/chat/completions")
    m.on_response(200, {"Content-Type": "application/json"})
    m.on_chunk(USAGE_BODY)
    assert m.on_end() is not None
    assert m.on_end() is None
    assert len(log.entries()) == 1


def test_go_json_formatting():
    assert gojson.go_float(-1.0) == "-1"
    assert gojson.go_float(12.5) == "12.5"
    assert gojson.go_float(0.00001) == "0.00001"
    assert gojson.go_float(1e-7) == "1e-7"
    assert gojson.go_float(1e21) == "1e+21"
    assert gojson.go_string("<a&b>") == '"\\u003ca\\u0026b\\u003e"'
    t = datetime(2026, 5, 28, 10, 0, 0, 123450, tzinfo=timezone(timedelta(hours=2)))
    assert gojson.go_time(t) == "2026-05-28T10:00:00.12345+02:00"
    assert gojson.go_time(t.replace(microsecond=0, tzinfo=timezone.utc)) == "2026-05-28T10:00:00Z"


# ---- captures --------------------------------------------------------------------------------

def test_capture_fields_per_path():
    assert fields_for("/v1/chat/completions") == ALL
    assert fields_for("/v1/audio/speech") == REQ_HEADERS | REQ_BODY | RESP_HEADERS
    assert fields_for("/v1/audio/voices") == REQ_HEADERS | RESP_HEADERS | RESP_BODY
    assert fields_for("/v1/audio/transcriptions") == REQ_HEADERS | RESP_HEADERS | RESP_BODY
    assert fields_for("/v1/images/generations") == REQ_HEADERS | REQ_BODY | RESP_HEADERS
    assert fields_for("/v1/images/edits") == REQ_HEADERS | RESP_HEADERS
    assert fields_for("/sdapi/v1/txt2img") == REQ_HEADERS | REQ_BODY | RESP_HEADERS
    assert fields_for("/sdapi/v1/img2img") == REQ_HEADERS | RESP_HEADERS


def test_header_map_redacts_and_canonicalises():
    h = header_map([("authorization", "Bearer s3cret"), ("X-API-KEY", "k"), ("cookie", "c"),
                    ("Proxy-Authorization", "p"), ("set-cookie", "s"), ("content-type", "a/b"),
                    ("Content-Type", "second")])
    assert h == {"Authorization": "[REDACTED]", "X-Api-Key": "[REDACTED]",
                 "Cookie": "[REDACTED]", "Proxy-Authorization": "[REDACTED]",
                 "Set-Cookie": "[REDACTED]", "Content-Type": "a/b"}
    assert canonical_header("x-forwarded-for") == "X-Forwarded-For"


def test_capture_recorded_with_redaction_and_decoded_body():
    clock = Clock()
    store = CaptureStore(1)
    log = ActivityLog(10, captures=store, clock=clock)
    e = meter_run(log, clock, headers=[("Content-Type", "application/json"),
                                       ("Content-Encoding", "gzip"), ("Set-Cookie", "x=1")],
                  body=gzip.compress(USAGE_BODY),
                  req_headers=[("Authorization", "Bearer s3cret"), ("Content-Type", "application/json")],
                  req_body=b'{"model":"m1"}')
    assert e.has_capture and e.tokens.input_tokens == 11
    text = store.get_json(e.id)
    cap = json.loads(text)
    assert list(cap) == ["id", "req_path", "req_headers", "req_body", "resp_headers", "resp_body"]
    assert cap["id"] == e.id and cap["req_path"] == "/v1/chat/completions"
    assert cap["req_headers"] == {"Authorization": "[REDACTED]", "Content-Type": "application/json"}
    assert base64.b64decode(cap["req_body"]) == b'{"model":"m1"}'
    assert cap["resp_headers"] == {"Content-Type": "application/json", "Set-Cookie": "[REDACTED]"}
    assert base64.b64decode(cap["resp_body"]) == USAGE_BODY
    assert "s3cret" not in text


def test_capture_masks_and_null_fields():
    clock = Clock()
    store = CaptureStore(1)
    log = ActivityLog(10, captures=store, clock=clock)
    e = meter_run(log, clock, path="/v1/images/edits", req_body=b"multipart...")
    cap = json.loads(store.get_json(e.id))
    assert cap["req_body"] is None and cap["resp_body"] is None
    assert cap["req_headers"] is not None and cap["resp_headers"] is not None
    e = meter_run(log, clock, path="/v1/audio/speech", req_body=b'{"input":"hi"}',
                  headers=[("Content-Type", "audio/mpeg")], body=b"\xff\xfbMP3")
    cap = json.loads(store.get_json(e.id))
    assert base64.b64decode(cap["req_body"]) == b'{"input":"hi"}' and cap["resp_body"] is None


def test_capture_for_200_with_body_and_for_failures_without_their_body():
    clock = Clock()
    store = CaptureStore(1)
    log = ActivityLog(10, captures=store, clock=clock)
    failed = meter_run(log, clock, status=400, body=b'{"error":{"message":"bad things"}}',
                       req_body=b'{"model":"m1"}')
    assert failed.has_capture and failed.error_msg == "bad things"
    cap = json.loads(store.get_json(failed.id))  # upstream: the request, no response body
    assert base64.b64decode(cap["req_body"]) == b'{"model":"m1"}' and cap["resp_body"] is None
    assert cap["resp_headers"] == {"Content-Type": "application/json"}
    assert not meter_run(log, clock, body=b"").has_capture
    off = ActivityLog(10, captures=CaptureStore(0), clock=clock)
    assert not meter_run(off, clock).has_capture


def test_capture_store_fifo_byte_cap_and_has_capture_recomputed():
    clock = Clock()
    store = CaptureStore(max_bytes=3000)
    log = ActivityLog(10, captures=store, clock=clock)
    noise = lambda i: bytes((i * 7919 + j * 104729) % 251 for j in range(900))  # incompressible-ish
    ids = []
    for i in range(6):
        body = b'{"x":"' + base64.b64encode(noise(i)) + b'"}'
        ids.append(meter_run(log, clock, body=body).id)
    assert store.size <= 3000
    assert not store.has(ids[0]) and store.has(ids[-1])
    flags = [e.has_capture for e in log.entries()]
    assert flags[0] is False and flags[-1] is True
    # an item bigger than the whole cache is skipped, the rest stays
    big = b'{"x":"' + base64.b64encode(bytes(range(256)) * 40) + b'"}'
    assert not meter_run(log, clock, body=big).has_capture
    assert store.has(ids[-1])


def test_capture_too_large_body_is_dropped_without_buffering():
    clock = Clock()
    store = CaptureStore(max_bytes=1000)
    log = ActivityLog(10, captures=store, clock=clock)
    m = log.meter("m1", "/v1/chat/completions")
    m.on_response(200, [("Content-Type", "application/json")])
    m.on_chunk(b'{"pad":"' + b"x" * 5000)
    assert m._parser.body is None  # stopped keeping the body once it exceeded the cache
    m.on_chunk(b'","usage":{"prompt_tokens":2}}')
    e = m.on_end()
    assert e.tokens.input_tokens == 2 and not e.has_capture


def test_arrays_nested_with_objects_do_not_confuse_keys():
    body = (b'{"data":[[1,2,{"a":1,"usage":{"prompt_tokens":99}}],[3,[4,5]],{"b":[6]}],'
            b'"usage":{"prompt_tokens":9,"completion_tokens":1}}')
    tokens, _, _ = parse(body, path="/v1/embeddings")
    assert (tokens.input_tokens, tokens.output_tokens) == (9, 1)
    tokens, _, _ = parse(b'[[1,{"timings":{"prompt_n":4}}],{"timings":{"prompt_n":6}}]',
                         path="/infill")
    assert tokens.input_tokens == 6


def test_small_captures_kept_unencoded_read_back_as_the_same_json(monkeypatch):
    """A small capture is stored as it came and encoded when read: the JSON must be the
    same as for a capture compressed at once (redaction, escapes, no Content-Encoding)."""
    def record(store):
        clock = Clock()
        log = ActivityLog(10, captures=store, clock=clock)
        e = meter_run(log, clock, headers=[("Content-Type", "application/json"),
                                             ("Content-Encoding", "gzip"), ("Set-Cookie", "x")],
                      body=gzip.compress(b'{"a":"<b> & \\u2028 caf\xc3\xa9"}'),
                      req_headers=[("authorization", "Bearer s3cret"), ("x-trace", "<&>")],
                      req_body=b'{"model":"m1","q":"<tag>"}')
        return store.get_json(e.id), store.size

    lazy, lazy_size = record(CaptureStore(1))
    monkeypatch.setattr(CaptureStore, "KEEP_UNENCODED", 0)
    packed, packed_size = record(CaptureStore(1))
    assert lazy == packed
    cap = json.loads(lazy)
    assert cap["req_headers"] == {"Authorization": "[REDACTED]", "X-Trace": "<&>"}
    assert "Content-Encoding" not in cap["resp_headers"] and "\\u003c" in lazy
    # counted: about its JSON size plus what its Python objects cost
    overhead = CaptureStore.UNENCODED_OVERHEAD
    assert 0 < packed_size and len(lazy) <= lazy_size - overhead < 2 * len(lazy)


def test_captures_kept_unencoded_cost_about_what_they_count():
    """captureBuffer bounds memory: what a small capture counts against it must cover the
    Python objects that hold it (a list of header tuples would cost several times more)."""
    import tracemalloc

    def fresh(text: str) -> str:
        return (text + " ")[:-1]  # a new string object, as parsing a request makes

    headers = [("Host", "127.0.0.1:8080"), ("User-Agent", "OpenAI/Python 1.40.0"),
               ("Content-Type", "application/json"), ("Authorization", "Bearer sk-0123"),
               ("Accept", "application/json"), ("X-Stainless-Lang", "python")]
    store = CaptureStore(max_bytes=50 << 20)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(500):
            capture = make_capture("/v1/chat/completions",
                                   [(fresh(k), fresh(v)) for k, v in headers],
                                   b'{"model":"m1","messages":[%d]}' % i,
                                   [(fresh("Content-Type"), fresh("application/json"))],
                                   b'{"choices":[{"message":{"content":"hi"}}]}')
            capture["id"] = i
            assert store.add(i, capture)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(store) == 500
    assert grown <= 1.2 * store.size, (grown, store.size)


# ---- richer records: drafted tokens, vLLM metrics, error messages --------------------------------

def test_llama_cpp_draft_counts_need_both_fields():
    body = b'{"usage":{"prompt_tokens":3},"timings":{"prompt_n":4,"predicted_n":9,' \
           b'"draft_n":12,"draft_n_accepted":7}}'
    tokens, _, _ = parse(body)
    assert (tokens.draft_tokens, tokens.draft_acc_tokens, tokens.input_tokens) == (12, 7, 4)
    tokens, _, _ = parse(b'{"timings":{"prompt_n":4,"draft_n":12}}')
    assert (tokens.draft_tokens, tokens.draft_acc_tokens) == (-1, -1)  # not reported
    tokens, _, _ = parse(b'{"object":"list"}')
    assert (tokens.draft_tokens, tokens.draft_acc_tokens) == (0, 0)  # no numbers at all


def test_vllm_metrics_give_rates_and_speculative_counts():
    body = b'{"usage":{"prompt_tokens":110,"completion_tokens":20,' \
           b'"prompt_tokens_details":{"cached_tokens":10}},' \
           b'"metrics":{"time_to_first_token_ms":250,"mean_itl_ms":20,' \
           b'"speculative_decoding":{"num_draft_tokens":30,"num_accepted_draft_tokens":18}}}'
    tokens, _, _ = parse(body)
    assert tokens.prompt_per_second == 400.0  # (110 - 10 cached) / 0.25 s
    assert tokens.tokens_per_second == 50.0 and tokens.cache_tokens == 10
    assert (tokens.draft_tokens, tokens.draft_acc_tokens) == (30, 18)
    tokens, _, _ = parse(b'{"metrics":{"time_to_first_token_ms":0,"mean_itl_ms":-1,'
                         b'"speculative_decoding":{"num_draft_tokens":5}}}')
    assert (tokens.prompt_per_second, tokens.tokens_per_second) == (-1, -1)
    assert tokens.draft_tokens == -1


def test_vllm_metrics_in_a_stream_last_one_wins():
    body = (b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
            b'data: {"usage":{"prompt_tokens":8,"completion_tokens":4},'
            b'"metrics":{"mean_itl_ms":10}}\n\n'
            b'data: {"metrics":{"mean_itl_ms":25,"speculative_decoding":'
            b'{"num_draft_tokens":6,"num_accepted_draft_tokens":2}}}\n\ndata: [DONE]\n\n')
    tokens, _, warning = parse(body, ctype="text/event-stream")
    assert warning is None and tokens.tokens_per_second == 40.0
    assert (tokens.input_tokens, tokens.output_tokens) == (8, 4)
    assert (tokens.draft_tokens, tokens.draft_acc_tokens) == (6, 2)


def test_error_messages_of_failed_responses():
    clock = Clock()
    log = ActivityLog(10, log=FakeLog(), clock=clock)
    cases = [
        (b'{"error":{"message":"  context too long  ","code":400}}', 400, "context too long"),
        (b'{"error":"plain error"}', 500, "plain error"),
        (b'{"message":"from message"}', 500, "from message"),
        (b'{"detail":"from detail"}', 422, "from detail"),
        (b'{"error":{"message":""},"detail":"second choice"}', 400, "second choice"),
        (b'not json at all', 503, "503 Service Unavailable"),
        (b'', 404, "404 Not Found"),
        (b'{"error":"' + b"x" * 600 + b'"}', 400, "x" * 500 + "..."),
    ]
    for body, status, message in cases:
        e = meter_run(log, clock, status=status, body=body)
        assert (e.resp_status_code, e.error_msg) == (status, message)
        assert e.tokens.input_tokens == 0
    gz = gzip.compress(b'{"error":{"message":"zipped"}}')
    e = meter_run(log, clock, status=500, body=gz,
                  headers=(("Content-Type", "application/json"), ("Content-Encoding", "gzip")))
    assert e.error_msg == "zipped"
    e = meter_run(log, clock, status=500, body=b"\x1f\x8b broken",
                  headers=(("Content-Encoding", "gzip"),))
    assert e.error_msg.startswith("response decode failed: ")
    e = meter_run(log, clock, status=200, body=b"\x1f\x8b broken",
                  headers=(("Content-Encoding", "gzip"),))
    assert e.error_msg.startswith("response decompression failed: ")
    row = e.to_row()
    assert row["error_msg"] == e.error_msg and "metadata" not in row
    assert "error_msg" not in meter_run(log, clock).to_row()


def test_an_error_answered_by_the_proxy_keeps_its_message():
    clock = Clock()
    log = ActivityLog(10, log=FakeLog(), clock=clock)
    m = log.meter("m1", "/v1/chat/completions", "POST", [])
    e = m.on_end("model m1 failed to start: exit status 1")
    assert (e.resp_status_code, e.error_msg) == (502, "model m1 failed to start: exit status 1")
