"""Fault suite, JSON shapes: any JSON a backend would take is routed and forwarded intact
(deep nesting, huge strings, repeated keys, odd escapes); what is not JSON gets a 400 that
says why; nothing gets a 500 or a closed connection.

Seeded: a failure names the seed and the case.
"""

from __future__ import annotations

import json
import math
import random

import pytest
from httpkit import Filters, Proxy, config, freeze, model

from llamaswap.http import deepjson

SEED = 18


# --- the iterative parser and encoder against json ----------------------------------------

def _random_doc(rng: random.Random, depth: int = 0):
    r = rng.random()
    if depth > 4 or r < 0.4:
        return rng.choice([None, True, False, 0, -3, 12345678901234567890, 1.5, -2e-7, 1e300,
                           "", 'a"b\\c\n\u00e9\U0001f600\x00', "\ud800x", "model"])
    if r < 0.7:
        return [_random_doc(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(["a", "b", "model", "\u00e9", "x y"]): _random_doc(rng, depth + 1)
            for _ in range(rng.randint(0, 4))}


def test_iterative_parser_and_encoder_match_json():
    rng = random.Random(SEED)
    for case in range(1500):
        doc = _random_doc(rng)
        for ensure_ascii in (True, False):
            for separators in ((", ", ": "), (",", ":")):
                text = json.dumps(doc, ensure_ascii=ensure_ascii, separators=separators)
                where = f"seed {SEED} case {case}: {text[:200]!r}"
                assert deepjson.encode(doc, ensure_ascii=ensure_ascii,
                                       separators=separators) == text, where
                assert deepjson.parse(text) == json.loads(text), where


def test_iterative_parser_refuses_what_json_refuses_with_the_same_message():
    rng = random.Random(SEED)
    texts = ["", "{", "[1,", '{"a"}', '{"a":1,}', "[1 2]", "nul", '{"a":1}x', '"\\x"', "[1,]",
             "{1:2}", "-", "01", "1.", ".5", '"\x01"', "[NaN, -Infinity]", "tru"]
    for case in range(1500):
        text = json.dumps(_random_doc(rng))
        cut = rng.randrange(len(text) + 1)
        texts.append(text[:cut] + rng.choice(["", "]", "}", ",", ":", '"', "x"]) + text[cut + 1:])
    for case, text in enumerate(texts):
        where = f"seed {SEED} case {case}: {text!r}"
        try:
            expected = json.loads(text)
        except ValueError as e:
            with pytest.raises(ValueError) as got:
                deepjson.parse(text)
            assert str(got.value) == str(e), where
        else:
            parsed = deepjson.parse(text)
            assert parsed == expected or "NaN" in text, where


def test_any_depth_parses_and_encodes_back_to_the_same_text():
    for depth in (999, 5000, 100_000):
        text = '{"model":"m","x":' + "[" * depth + '{"k":[1,2.5,"s",null]}' + "]" * depth + "}"
        doc = deepjson.loads(text.encode())
        assert doc["model"] == "m"
        assert deepjson.dumps(doc, separators=(",", ":")) == text
    repeated = '{"model":"a","x":' + "[" * 3000 + "]" * 3000 + ',"model":"b"}'
    assert deepjson.loads(repeated, first_key_wins=True)["model"] == "a"
    assert deepjson.loads(repeated)["model"] == "b"  # json's own rule, when not asked
    nan = deepjson.loads("[" * 2000 + "NaN" + "]" * 2000)
    for _ in range(2000):
        nan = nan[0]
    assert math.isnan(nan)


# --- through the proxy ---------------------------------------------------------------------

def _nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


@pytest.fixture
def proxy():
    renamed = model("renamed", use_model_name="served-name",
                    filters=Filters(strip_params=("drop",),
                                    set_params=freeze({"temperature": 0.5, "extra.deep": True})))
    with Proxy(config(model("m1"), model("m2"), renamed)) as p:
        yield p


def _echoed(b: bytes) -> tuple[str, bytes]:
    """(the model that answered, the body it received) from the demo backend's echo."""
    echo = json.loads(b)
    assert echo["body_encoding"] == "text"
    return echo["model"], echo["body"].encode()


def test_json_shapes_through_the_proxy(proxy):
    cases: list[tuple[str, bytes, int, str | None]] = [
        # (name, body, expected status, expected model or message fragment)
        ("nested 5000", f'{{"model":"m1","x":{_nested(5000)}}}'.encode(), 200, "m1"),
        ("nested 200000", f'{{"x":{_nested(200_000)},"model":"m2"}}'.encode(), 200, "m2"),
        ("deep object", ('{"model":"m1","x":' + '{"a":' * 4000 + "1" + "}" * 4000 + "}").encode(),
         200, "m1"),
        ("repeated model", b'{"model":"m1","x":1,"model":"m2"}', 200, "m1"),
        ("repeated model, deep", f'{{"model":"m2","x":{_nested(3000)},"model":"m1"}}'.encode(),
         200, "m2"),
        ("model repeated inside", b'{"x":{"model":"m2"},"model":"m1","y":["model"]}', 200, "m1"),
        ("huge string", json.dumps({"model": "m1", "prompt": "x\u00e9" * 500_000}).encode(),
         200, "m1"),
        ("many keys", json.dumps({"model": "m2", **{f"k{i}": i for i in range(50_000)}}).encode(),
         200, "m2"),
        ("escaped model", b'{"mod\\u0065l":"\\u006d1"}', 200, "m1"),
        ("lone surrogate", b'{"model":"m1","p":"\\ud800"}', 200, "m1"),
        ("BOM-less UTF-16", json.dumps({"model": "m2"}).encode("utf-16-le"), 200, "m2"),
        ("not UTF-8", b'{"model":"m1","p":"\xff\xfe"}', 400, "not UTF-8 JSON"),
        ("truncated", b'{"model":"m1","messages":[', 400, "not valid JSON (Expecting value"),
        ("trailing garbage", b'{"model":"m1"} x', 400, "not valid JSON (Extra data"),
        ("too deep and broken", f'{{"model":"m1","x":{_nested(5000)[:-1]}}}'.encode(), 400,
         "not valid JSON (Expecting ',' delimiter"),
        ("array", b"[1,2]", 404, "must be an object with a 'model' field, got list"),
        ("deep array", _nested(10_000).encode(), 404, "got list"),
        ("string", b'"m1"', 404, "got str"),
        ("number", b"5", 404, "got int"),
        ("null", b"null", 404, "got NoneType"),
        ("empty", b"", 404, "the request body is empty"),
        ("model deep", f'{{"model":{_nested(5000)}}}'.encode(), 404, "must be a non-empty string"),
        ("model null", b'{"model":null}', 404, "must be a non-empty string, got null"),
        ("no model", b'{"x":1}', 404, "has no 'model' field"),
    ]
    for case, (name, body, status, expect) in enumerate(cases):
        where = f"case {case} ({name})"
        s, h, b = proxy.post("/infill", body, headers={"Content-Type": "application/json"})
        assert s == status, f"{where}: {s} {b[:300]!r}"
        if status == 200:
            served, received = _echoed(b)
            assert served == expect, where
            assert received == body, where  # forwarded unchanged
        else:
            assert h["content-type"] == "application/json", where
            message = json.loads(b)["error"]["message"]
            assert message.startswith("no model id could be identified: "), where
            assert expect in message, f"{where}: {message[:300]}"
            assert len(message) < 400, where


def test_filters_rewrite_any_depth(proxy):
    body = f'{{"model":"renamed","drop":1,"x":{_nested(20_000, "{}")},"p":"\\ud800\\u00e9"}}'
    s, h, b = proxy.post("/infill", body.encode(), headers={"Content-Type": "application/json"})
    assert s == 200, b[:300]
    served, received = _echoed(b)
    assert served == "renamed"
    sent = deepjson.loads(received)
    assert sent["model"] == "served-name" and "drop" not in sent
    assert sent["temperature"] == 0.5 and sent["extra"] == {"deep": True}
    assert sent["p"] == "\ud800\u00e9"  # the lone surrogate stays escaped, the rest intact
    assert received.count(b"[") == 20_000


def test_truncated_and_garbled_bodies_never_fail_the_proxy(proxy):
    """Seeded: a valid request cut or garbled at a random place gets 200, 400 or 404."""
    rng = random.Random(SEED)
    good = json.dumps({"model": "m1", "messages": [{"role": "user", "content": "hi \u00e9"}],
                       "stream": False, "x": [[1, {"y": None}]]}).encode()
    for case in range(120):
        cut = rng.randrange(len(good))
        body = good[:cut] + rng.choice([b"", b"\xff", b"}", b"]", b"\x00", b'"', b"\\"])
        body += good[cut + rng.choice([0, 1, 5]):] if rng.random() < 0.5 else b""
        s, h, b = proxy.post("/infill", body, headers={"Content-Type": "application/json"})
        where = f"seed {SEED} case {case}: {body!r}"
        assert s in (200, 400, 404), f"{where}: {s} {b[:200]!r}"
        if s != 200:
            message = json.loads(b)["error"]["message"]
            assert message.startswith(("no model id could be identified: ",
                                       "no router for requested model: ")), where
    s, h, b = proxy.post("/infill", good, headers={"Content-Type": "application/json"})
    assert s == 200  # and the proxy still serves


def test_activity_reads_token_numbers_next_to_any_depth():
    """The activity parser takes a response (JSON or SSE) with deep nesting anywhere, usage
    included, without an error, and still finds the numbers."""
    from llamaswap.ops.activity.parse import ResponseParser

    deep = _nested(5000, "{}")
    usage = f'{{"prompt_tokens":3,"completion_tokens":4,"x":{deep}}}'
    bodies = [
        ("application/json", f'{{"x":{deep},"usage":{usage}}}'),
        ("application/json", f'{{"usage":{usage},"choices":[{{"message":{{"x":{deep}}}}}]}}'),
        ("text/event-stream", f'data: {{"choices":[],"x":{deep}}}\n\ndata: {{"usage":{usage}}}\n\n'
                              "data: [DONE]\n\n"),
    ]
    for case, (ctype, body) in enumerate(bodies):
        for keep in (0, 1 << 20):  # streamed through the tap, or kept whole for a capture
            parser = ResponseParser("/v1/chat/completions", ctype, "", keep_body_limit=keep)
            data = body.encode()
            for i in range(0, len(data), 4096):
                parser.feed(data[i:i + 4096])
            tokens, _, warning = parser.finish(5)
            where = f"case {case} keep {keep}: {warning}"
            assert (tokens.input_tokens, tokens.output_tokens) == (3, 4), where
