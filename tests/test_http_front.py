"""End to end through real sockets: proxy (this process) -> demo backends (subprocesses)."""

import base64
import contextlib
import http.client
import json
import os
import socket
import threading

import pytest
from helpers import free_port, wait_until
from httpkit import Filters, PeerConfig, Proxy, config, freeze, model, raw_socket

CHAT = {"messages": [{"role": "user", "content": "hello there"}]}


def chat(model_id, **kw):
    return {"model": model_id, **CHAT, **kw}


@pytest.fixture
def two():
    with Proxy(config(model("m1"), model("m2", aliases=("m2-alias",)))) as p:
        yield p


def test_route_families(two):
    p = two
    s, h, b = p.post("/v1/chat/completions", chat("m1"))
    assert s == 200 and json.loads(b)["model"] == "m1"
    s, h, b = p.post("/v1/completions", {"model": "m1", "prompt": "x"})
    assert s == 200 and json.loads(b)["object"] == "text_completion"
    s, h, b = p.post("/v1/embeddings", {"model": "m1", "input": "x"})
    assert s == 200 and json.loads(b)["object"] == "list"
    s, h, b = p.post("/v1/messages", chat("m1", max_tokens=5))
    assert s == 200 and json.loads(b)["type"] == "message"
    # versionless: /v is stripped before forwarding
    s, h, b = p.post("/v/rerank?x=1", {"model": "m1", "query": "q"})
    echo = json.loads(b)
    assert s == 200 and echo["path"] == "/rerank" and echo["query"] == "x=1"
    for path in ("/infill", "/completion", "/v1/responses", "/sdapi/v1/txt2img", "/reranking",
                 "/v1/audio/speech", "/v1/images/generations", "/v1/messages/count_tokens"):
        s, h, b = p.post(path, {"model": "m1", "input": "x"})
        assert s == 200, path
    # GET with ?model=
    s, h, b = p.request("GET", "/v1/audio/voices?model=m1&x=y")
    echo = json.loads(b)
    assert s == 200 and echo["path"] == "/v1/audio/voices" and echo["query"] == "model=m1&x=y"
    s, h, b = p.request("GET", "/sdapi/v1/loras?model=m1")
    assert s == 200 and json.loads(b)["path"] == "/sdapi/v1/loras"
    s, h, b = p.request("GET", "/props?model=m2-alias")
    assert s == 200 and json.loads(b)["model"] == "m2"
    # alias routes to the real model; the backend still sees the requested name
    s, h, b = p.post("/infill", {"model": "m2-alias"})
    echo = json.loads(b)
    assert echo["model"] == "m2" and json.loads(echo["body"])["model"] == "m2-alias"


def test_model_errors_are_openai_shaped(two):
    s, h, b = two.post("/v1/chat/completions", chat("nope"))
    assert s == 404 and h["content-type"] == "application/json"
    body = json.loads(b)
    err = body["error"]
    assert body["src"] == "llama-swap" and "nope" in err["message"]
    assert (err["type"], err["param"], err["code"]) == ("invalid_request_error", None, "not_found")
    s, h, b = two.post("/v1/chat/completions", {"messages": []})
    assert s == 404 and json.loads(b)["error"]["message"] == (
        "no model id could be identified: the JSON body has no 'model' field")
    s, h, b = two.post("/v1/chat/completions", b'{"model": "m1", "messages": [',
                       headers={"Content-Type": "application/json"})
    assert s == 400 and json.loads(b)["error"]["message"].startswith(
        "no model id could be identified: the request body is not valid JSON (Expecting value: "
        "line 1 column 30")
    s, h, b = two.post("/v1/chat/completions", {"model": 7})
    assert json.loads(b)["error"]["message"] == ("no model id could be identified: 'model' in "
                                                 "the JSON body must be a non-empty string, got 7")
    s, h, b = two.request("GET", "/v1/audio/voices")
    assert json.loads(b)["error"]["message"] == (
        "no model id could be identified: missing 'model' query parameter")
    s, h, b = two.request("GET", "/props")
    assert s == 404
    s, h, b = two.post("/v1/chat/completions", chat("nope"), headers={"Accept": "text/plain"})
    assert b.startswith(b"llama-swap: ") and h["content-type"].startswith("text/plain")
    s, h, b = two.request("GET", "/no/such/path")
    assert s == 404 and b == b"404 page not found\n"
    s, h, b = two.request("GET", "/v1/chat/completions")
    assert s == 405 and "POST" in h["allow"]


def test_json_without_json_content_type_and_forms(two):
    body = json.dumps(chat("m1")).encode()
    s, h, b = two.post("/v1/chat/completions", body,
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert s == 200 and json.loads(b)["model"] == "m1"
    s, h, b = two.post("/infill", b"model=m2&prompt=x",
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert s == 200 and json.loads(b)["body"] == "model=m2&prompt=x"


def test_chunked_request_body(two):
    c = two.conn()
    body = json.dumps({"model": "m1", "x": "y" * 100000}).encode()
    c.request("POST", "/infill", body=iter([body[:10], body[10:]]),
              headers={"Content-Type": "application/json"}, encode_chunked=True)
    r = c.getresponse()
    echo = json.loads(r.read())
    assert r.status == 200 and json.loads(echo["body"])["x"] == "y" * 100000
    c.close()


def test_broken_chunked_body_is_a_400_not_a_crash(two):
    for path in ("/v1/chat/completions", "/upstream/m1/v1/chat/completions"):
        sock = raw_socket(two.port)
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     "Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n".encode())
        head = sock.makefile("rb").read()
        sock.close()
        assert head.startswith(b"HTTP/1.1 400 "), (path, head[:200])
        assert b"could not read request body: bad chunk size in request body" in head


def _multipart(fields, boundary="XyZb0und"):
    out = b""
    for name, value, filename in fields:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n".encode()
        if filename:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + value + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize("model_first", [True, False])
def test_multipart_upload_streams_through(model_first):
    audio = os.urandom(3 * 1024 * 1024 + 7)
    fields = [("file", audio, "a.wav"), ("response_format", b"json", None)]
    fields.insert(0 if model_first else 2, ("model", b"whisper-alias", None))
    body, ctype = _multipart(fields)
    m = model("whisper", aliases=("whisper-alias",), use_model_name="whisper-large")
    with Proxy(config(m)) as p:
        s, h, b = p.post("/v1/audio/transcriptions", body, headers={"Content-Type": ctype})
        res = json.loads(b)
        assert s == 200, b
        assert res["file_bytes"] == len(audio)
        # useModelName rewrote the field; Content-Length was recomputed
        assert res["fields"]["model"] == "whisper-large"
        assert res["body_bytes"] == len(body) + len("whisper-large") - len("whisper-alias")


def test_streaming_arrives_incrementally(two):
    c = two.conn()
    c.request("POST", "/v1/chat/completions", body=json.dumps(
        chat("m1", stream=True, demo={"chunks": 8, "chunk_delay": 0.25})),
        headers={"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200 and r.getheader("X-Accel-Buffering") == "no"
    assert r.getheader("Transfer-Encoding") == "chunked"
    first = r.read1(65536)
    # the first event arrived on its own: the backend had not produced the end yet
    assert first.startswith(b"data: ") and b"[DONE]" not in first
    assert first.count(b"data: ") == 1
    rest = r.read()
    assert rest.rstrip().endswith(b"data: [DONE]")
    c.close()


def test_keep_alive_reuses_client_and_backend_connections(two):
    c = two.conn()
    for i in range(5):
        c.request("POST", "/v1/embeddings", body=json.dumps({"model": "m1", "input": str(i)}),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        assert r.status == 200
        r.read()
    c.close()
    from llamaswap.http.pool import pool_for_process
    pool = pool_for_process(two.app.processes["m1"])
    # the handler hands the backend connection back just after the client got its last byte
    assert wait_until(lambda: pool.idle_count == 1 and pool.busy_count == 0), (pool.idle_count, pool.busy_count, pool._generation)


def test_client_disconnect_stops_backend_and_frees_model(two):
    s = raw_socket(two.port)
    body = json.dumps(chat("m1", stream=True, demo={"chunks": 2000, "chunk_delay": 0.05}))
    s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
              f"\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode())
    assert b"200 OK" in s.recv(65536)
    s.close()
    proc = two.app.processes["m1"]
    # the backend saw its connection close and stopped generating
    assert wait_until(lambda: b"generation stopped" in proc.log.history(), 10)
    # and the model is free: a swap to m2 goes through at once, not after 100 s of stream
    st, h, b = two.post("/v1/chat/completions", chat("m2"))
    assert st == 200 and json.loads(b)["model"] == "m2"


def test_client_disconnect_while_waiting_for_load_gives_up():
    with Proxy(config(model("slow", "--load-delay", "1.0"), model("m2"))) as p:
        s = raw_socket(p.port)
        body = json.dumps(chat("slow"))
        s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                  f"application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode())
        s.close()
        st, h, b = p.post("/v1/chat/completions", chat("m2"))
        assert st == 200


def test_backend_dies_mid_stream_cuts_the_client(two):
    c = two.conn()
    c.request("POST", "/v1/chat/completions", body=json.dumps(
        chat("m1", stream=True, demo={"chunks": 10, "chunk_delay": 0.01, "die_after_chunks": 3})),
        headers={"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200
    with pytest.raises(http.client.IncompleteRead):
        r.read()
    c.close()
    # the proxy is fine and the request was reported finished: another model can be swapped in
    st, h, b = two.post("/v1/chat/completions", chat("m2"))
    assert st == 200


def test_filters_applied_to_json_body():
    m = model("m1", use_model_name="served-name", filters=Filters(
        strip_params=("temperature",), set_params=freeze({"top_k": 7, "a.b": True}),
        set_params_by_id=freeze({"m1-hi": {"top_k": 70}})), aliases=("m1-hi",))
    with Proxy(config(m)) as p:
        s, h, b = p.post("/infill", {"model": "m1-hi", "temperature": 1, "keep": "é"})
        sent = json.loads(json.loads(b)["body"])
        assert sent == {"model": "served-name", "keep": "é", "top_k": 70, "a": {"b": True}}
        hs = {k.lower(): v for k, v in json.loads(b)["headers"]}
        assert int(hs["content-length"]) == len(json.loads(b)["body"].encode())


def test_auth_on_protected_routes_and_open_routes():
    cfg = config(model("m1"), api_keys=("sekret",))
    with Proxy(cfg) as p:
        protected = [("POST", "/v1/chat/completions", chat("m1")), ("GET", "/v1/models", None),
                     ("GET", "/models", None), ("GET", "/upstream/m1/", None),
                     ("GET", "/props?model=m1", None), ("POST", "/v/embeddings", None),
                     ("POST", "/v1/audio/transcriptions", None), ("GET", "/metrics", None),
                     ("GET", "/ui/", None), ("GET", "/running", None)]
        for method, path, body in protected:
            s, h, b = p.request(method, path, body)
            assert s == 401, path
            assert h["www-authenticate"] == 'Basic realm="llama-swap"'
            assert json.loads(b)["error"]["message"] == "unauthorized: invalid or missing API key"
        s, _, _ = p.request("GET", "/v1/models", headers={"Authorization": "Bearer wrong"})
        assert s == 401
        for path in ("/health", "/wol-health"):
            assert p.request("GET", path)[0] == 200
        s, h, _ = p.request("OPTIONS", "/v1/chat/completions",
                            headers={"Access-Control-Request-Headers": "x-stainless-os"})
        assert s == 204 and h["access-control-allow-headers"] == "x-stainless-os"
        basic = "Basic " + base64.b64encode(b"anyone:sekret").decode()
        for hs in ({"Authorization": "Bearer sekret"}, {"x-api-key": "sekret"},
                   {"Authorization": basic}):
            s, h, b = p.request("GET", "/upstream/m1/echo", headers=hs)
            assert s == 200
            seen = {k.lower() for k, _ in json.loads(b)["headers"]}
            assert "authorization" not in seen and "x-api-key" not in seen


def test_models_listing_shape_and_origin():
    m1 = model("m1", name=" Model 1 ", description="desc", metadata=freeze({"k": "v"}),
               aliases=("a1",))
    hidden = model("hidden", unlisted=True)
    peer = PeerConfig(id="peer1", proxy="http://127.0.0.1:1", models=("remote-model",))
    cfg = config(m1, hidden, peers=freeze({"peer1": peer}), include_aliases_in_list=True)
    with Proxy(cfg) as p:
        for path in ("/v1/models", "/models"):
            s, h, b = p.request("GET", path, headers={"Origin": "http://app.example"})
            assert s == 200 and h["access-control-allow-origin"] == "http://app.example"
            assert b.endswith(b"\n")
            data = json.loads(b)
            assert list(data) == ["data", "object"] and data["object"] == "list"
            ids = [r["id"] for r in data["data"]]
            assert ids == ["a1", "m1", "peer1/remote-model"]
            alias, rec, remote = data["data"]
            assert list(rec) == ["id", "object", "created", "owned_by", "name", "description",
                                 "meta", "status"]
            assert rec["name"] == "Model 1" and rec["status"] == {"value": "unloaded"}
            assert rec["meta"] == {"llamaswap": {"aliases": ["a1"], "k": "v", "type": "model"}}
            assert alias["meta"] == {"llamaswap": {"k": "v", "modelID": "m1", "type": "alias"}}
            assert remote["name"] == "peer1: remote-model"
            assert remote["status"] == {"value": "unloaded"}
            assert remote["meta"] == {"llamaswap": {"peerID": "peer1", "type": "peer"}}


def test_concurrency_limit_429_before_any_byte():
    with Proxy(config(model("m1", concurrency_limit=1))) as p:
        c = p.conn()
        c.request("POST", "/v1/chat/completions", body=json.dumps(
            chat("m1", stream=True, demo={"chunks": 5, "chunk_delay": 0.2})),
            headers={"Content-Type": "application/json"})
        r = c.getresponse()
        assert r.status == 200 and r.read1(65536)
        s, h, b = p.post("/v1/chat/completions", chat("m1"))
        assert s == 429 and h["retry-after"] == "1" and h["content-type"] == "application/json"
        err = json.loads(b)["error"]
        assert (err["type"], err["code"]) == ("rate_limit_error", "concurrency_limit")
        assert err["message"].startswith("Too many requests") and "m1" in err["message"]
        # upstream sheds this 429 as JSON whatever the client accepts
        s, h, b = p.post("/v1/chat/completions", chat("m1"), headers={"Accept": "text/plain"})
        assert s == 429 and json.loads(b)["error"]["code"] == "concurrency_limit"
        r.read()
        c.close()
        assert p.post("/v1/chat/completions", chat("m1"))[0] == 200


def test_loading_state_stream_then_backend_stream():
    m = model("m1", "--load-delay", "1.6", send_loading_state=True)
    with Proxy(config(m)) as p:
        s, h, b = p.post("/v1/chat/completions", chat("m1", stream=True))
        assert s == 200 and h["content-type"] == "text/event-stream"
        events = [json.loads(line[6:]) for line in b.decode().split("\n\n")
                  if line.startswith("data: {")]
        loading = [e for e in events if "reasoning_content" in e["choices"][0]["delta"]]
        text = "".join(e["choices"][0]["delta"]["reasoning_content"] for e in loading)
        assert text.startswith("━━━━━\nllama-swap loading model: m1\n")
        assert "Done! (" in text and text.endswith("━━━━━\n \n")
        assert all(list(e) == ["choices"] for e in loading)
        content = "".join(e["choices"][0]["delta"].get("content", "") for e in events
                          if e.get("object") == "chat.completion.chunk")
        assert content.startswith("This is a demo answer from m1")
        assert b.rstrip().endswith(b"data: [DONE]")
        # ready now: no loading chunks any more
        s, h, b = p.post("/v1/chat/completions", chat("m1", stream=True))
        assert b"reasoning_content" not in b


def test_upstream_paths_with_slashes_and_encoded_slash():
    with Proxy(config(model("author/model"), model("author"))) as p:
        s, h, b = p.request("GET", "/upstream/author/model/files/a%2Fb?q=1%2F2")
        echo = json.loads(b)
        assert s == 200 and echo["model"] == "author_model"
        assert echo["raw_path"] == "/files/a%2Fb?q=1%2F2"
        s, h, b = p.request("GET", "/upstream/author/model?x=1")
        assert s == 301 and h["location"] == "/upstream/author/model/?x=1"
        s, h, b = p.request("POST", "/upstream/author/model", b"{}")
        assert s == 308
        s, h, b = p.request("DELETE", "/upstream/author/x/y")
        assert s == 200 and json.loads(b)["model"] == "author" and json.loads(b)["path"] == "/x/y"
        s, h, b = p.request("GET", "/upstream/nope/x")
        assert s == 404 and "nope" in json.loads(b)["error"]["message"]
        s, h, b = p.request("GET", "/upstream")
        assert s == 302 and h["location"] == "/ui/models"


def test_websocket_echo_through_upstream(two):
    from websockets.sync.client import connect
    with connect(f"ws://127.0.0.1:{two.port}/upstream/m1/ws", open_timeout=20) as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"
        ws.send(b"\x00\x01" * 40000)
        assert ws.recv(timeout=10) == b"\x00\x01" * 40000


def test_peers_with_api_key_injection():
    remote = Proxy(config(model("remote-m"), api_keys=("peer-key",)))
    try:
        peer = PeerConfig(id="p1", proxy=f"http://127.0.0.1:{remote.port}", api_key="peer-key",
                          models=("remote-m",),
                          filters=Filters(set_params=freeze({"injected": 1})))
        dead = PeerConfig(id="p2", proxy=f"http://127.0.0.1:{free_port()}", models=("gone",))
        with Proxy(config(model("local"), peers=freeze({"p1": peer, "p2": dead}),
                          api_keys=("front-key",))) as front:
            key = {"Authorization": "Bearer front-key"}
            s, h, b = front.post("/v1/chat/completions", chat("remote-m"), headers=key)
            assert s == 200 and json.loads(b)["model"] == "remote-m"
            s, h, b = front.post("/v1/chat/completions", chat("remote-m", stream=True), headers=key)
            assert s == 200 and h["x-accel-buffering"] == "no" and b"[DONE]" in b
            # filters for peers, through the remote proxy's /upstream echo
            s, h, b = front.request("GET", "/upstream/remote-m/upstream/remote-m/x", headers=key)
            assert s == 200 and json.loads(b)["path"] == "/x"
            s, h, b = front.post("/infill", {"model": "remote-m"}, headers=key)
            assert json.loads(json.loads(b)["body"]) == {"model": "remote-m", "injected": 1}
            s, h, b = front.post("/v1/chat/completions", chat("gone"), headers=key)
            assert s == 502 and json.loads(b)["error"]["message"].startswith("peer proxy error: ")
    finally:
        remote.close()


def test_openai_sdk(two):
    import openai
    client = openai.OpenAI(base_url=two.url("/v1"), api_key="none", max_retries=0)
    r = client.chat.completions.create(model="m1", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content.startswith("This is a demo answer from m1")
    chunks = list(client.chat.completions.create(
        model="m2", messages=[{"role": "user", "content": "hi"}], stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("This is a demo answer from m2")
    assert client.completions.create(model="m1", prompt="x").choices[0].text
    assert len(client.embeddings.create(model="m1", input="x").data[0].embedding) == 8
    t = client.audio.transcriptions.create(model="m2-alias", file=("a.wav", b"RIFF" * 1000))
    assert t.text == "demo transcription by m2"
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=[])
    assert "nope" in str(e.value)


def test_anthropic_sdk(two):
    import anthropic
    client = anthropic.Anthropic(base_url=two.url(), api_key="none", max_retries=0)
    msg = client.messages.create(model="m1", max_tokens=20,
                                 messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text.startswith("This is a demo answer from m1")
    with client.messages.stream(model="m1", max_tokens=20,
                                messages=[{"role": "user", "content": "hi"}]) as stream:
        text = "".join(stream.text_stream)
    assert text.startswith("This is a demo answer from m1")


def test_header_read_timeout_and_bad_requests(two, monkeypatch):
    from llamaswap.http import server
    monkeypatch.setattr(server, "HEADER_TIMEOUT", 0.3)
    s = raw_socket(two.port)
    s.sendall(b"GET /health HTTP/1.1\r\n")  # never finishes its headers
    s.settimeout(10)
    assert s.recv(100) == b""  # dropped
    s.close()
    s = raw_socket(two.port)
    s.sendall(b"GET /health HTTP/1.1\r\n" + b"X-Big: " + b"a" * 70000 + b"\r\n\r\n")
    assert b" 431 " in s.recv(1000)
    s.close()
    assert two.request("GET", "/health")[0] == 200


def test_concurrent_clients(two):
    results = []

    def one(i):
        results.append(two.post("/v1/embeddings", {"model": "m1", "input": str(i)})[0])
    threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]  # the default limit
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 10


def test_a_connection_thread_serves_the_next_connection():
    """A handler thread whose connection ended waits for the next connection instead of
    ending (no thread started per connection); shutdown ends the waiting threads."""
    with Proxy(config(model("m1"))) as p:
        name = f"http-conn-{p.port}"

        def conn_threads():
            return [t for t in threading.enumerate() if t.name == name]

        for _ in range(5):
            s, _, b = p.request("GET", "/health")
            assert s == 200 and b == b"OK"
            assert wait_until(lambda: p.server._idle_threads == 1, timeout=10)
        assert len(conn_threads()) == 1
        s, _, _ = p.post("/v1/embeddings", {"model": "m1", "input": "x"})
        assert s == 200
    assert wait_until(lambda: not conn_threads(), timeout=10)


def test_tls(tmp_path):
    import ssl
    import subprocess
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip("openssl not available")
    from httpkit import Holder, make_app
    from llamaswap.http.server import serve
    app = make_app(config(model("m1")))
    srv = serve(Holder(app), f"127.0.0.1:{free_port()}", certfile=str(cert), keyfile=str(key))
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.check_hostname = False
        c = http.client.HTTPSConnection("127.0.0.1", srv.port, context=ctx, timeout=20)
        c.request("GET", "/health")
        assert c.getresponse().read() == b"OK"
        # a client that never handshakes does not block others
        idle = socket.create_connection(("127.0.0.1", srv.port))
        c2 = http.client.HTTPSConnection("127.0.0.1", srv.port, context=ctx, timeout=20)
        c2.request("POST", "/v1/embeddings", body=json.dumps({"model": "m1", "input": "x"}))
        assert c2.getresponse().status == 200
        idle.close()
    finally:
        srv.shutdown(1)
        app.shutdown()


def test_admission_before_loading_stream():
    """A request over the limit gets its 429 instead of a 200 loading stream (differences 10)."""
    m = model("m1", "--load-delay", "1.0", send_loading_state=True, concurrency_limit=1)
    with Proxy(config(m)) as p:
        c = p.conn()
        c.request("POST", "/v1/chat/completions", body=json.dumps(chat("m1", stream=True)),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        assert r.status == 200 and b"reasoning_content" in r.read1(65536)
        s, h, b = p.post("/v1/chat/completions", chat("m1", stream=True))
        assert s == 429 and h["content-type"] == "application/json"
        assert b"[DONE]" in r.read()
        c.close()


def test_unload_cuts_a_running_stream_at_once(two):
    c = two.conn()
    c.request("POST", "/v1/chat/completions", body=json.dumps(
        chat("m1", stream=True, demo={"chunks": 5000, "chunk_delay": 0.02})),
        headers={"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200 and r.read1(65536)
    two.app.router.unload(["m1"])
    assert two.app.processes["m1"].state.value == "stopped"
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        r.read()
    c.close()


def test_graceful_shutdown_finishes_requests_in_flight():
    p = Proxy(config(model("m1")))
    try:
        c = p.conn()
        c.request("POST", "/v1/chat/completions", body=json.dumps(
            chat("m1", stream=True, demo={"chunks": 10, "chunk_delay": 0.1})),
            headers={"Content-Type": "application/json"})
        r = c.getresponse()
        assert r.read1(65536)
        idle = p.conn()
        idle.request("GET", "/health")
        idle.getresponse().read()  # a kept-alive idle connection
        closer = threading.Thread(target=p.server.shutdown, args=(20,))
        closer.start()
        assert r.read().rstrip().endswith(b"data: [DONE]")  # the stream still completes
        closer.join()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", p.port), timeout=2).close()
        idle.close()
        c.close()
    finally:
        p.app.shutdown()


def test_head_and_empty_bodies_through_upstream(two):
    # the demo backend has no HEAD: its 501 comes through, body-less, and the
    # connection stays usable
    c = two.conn()
    c.request("HEAD", "/upstream/m1/some/path")
    r = c.getresponse()
    assert r.status == 501 and r.read() == b""
    c.request("HEAD", "/v1/models")
    r = c.getresponse()
    assert r.status == 200 and r.read() == b"" and int(r.getheader("Content-Length")) > 0
    c.close()
    s, h, b = two.request("PUT", "/upstream/m1/x", b"")
    assert s == 200 and json.loads(b)["method"] == "PUT"


class _RudeServer:
    """Accepts connections and either closes them at once or never answers."""

    def __init__(self, mode):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.mode = mode
        self.held = []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            if self.mode == "close":
                c.recv(65536)
                c.close()
            else:
                self.held.append(c)

    def close(self):
        self.sock.close()
        for c in self.held:
            c.close()


@pytest.mark.parametrize("mode", ["close", "silent"])
def test_backend_failure_before_any_byte_is_a_clear_error(mode):
    from llamaswap.config.model import Timeouts
    rude = _RudeServer(mode)
    try:
        peer = PeerConfig(id="rude", proxy=f"http://127.0.0.1:{rude.port}", models=("r",),
                          timeouts=Timeouts(response_header=0.5))
        with Proxy(config(model("m1"), peers=freeze({"rude": peer}))) as p:
            s, h, b = p.post("/v1/chat/completions", chat("r"))
            err = json.loads(b)["error"]["message"]
            assert err.startswith("peer proxy error: peer rude: ")
            if mode == "close":
                assert s == 502 and "RemoteDisconnected" in err
            else:
                assert s == 504 and "no response headers within 0.5s" in err
    finally:
        rude.close()


def test_no_read_timeout_by_default():
    """The connect timeout is not a read timeout: a slow answer is waited for."""
    from llamaswap.config.model import Timeouts
    with Proxy(config(model("m1", timeouts=Timeouts(connect=0.3)))) as p:
        s, h, b = p.post("/v1/chat/completions", chat("m1", demo={"sleep": 1.0}))
        assert s == 200 and json.loads(b)["model"] == "m1"


@contextlib.contextmanager
def tiny_backend(headers=(), drop_connection=False):
    """A one-route backend: every POST gets 200 {"bytes": <body length>}. ``headers`` are
    added to each answer; ``drop_connection`` closes the connection after each answer
    without saying so."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            got = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = json.dumps({"bytes": len(got)}).encode()
            self.send_response(200)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = drop_connection

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


def test_backend_cors_headers_are_not_duplicated():
    """differences.md point 8: the backend's Access-Control-Allow-Origin stays the only one."""
    with tiny_backend([("Access-Control-Allow-Origin", "https://a.example")]) as port:
        peer = PeerConfig(id="c", proxy=f"http://127.0.0.1:{port}", models=("cors-m",))
        with Proxy(config(model("m1"), peers=freeze({"c": peer}))) as p:
            c = p.conn()
            c.request("POST", "/v1/chat/completions", body=json.dumps(chat("cors-m")),
                      headers={"Origin": "https://a.example", "Content-Type": "application/json"})
            r = c.getresponse()
            assert r.status == 200 and json.loads(r.read())["bytes"] > 0
            values = [v for k, v in r.getheaders() if k.lower() == "access-control-allow-origin"]
            assert values == ["https://a.example"]
            c.close()


def test_backend_that_drops_kept_alive_connections_is_retried_on_a_new_one():
    """A backend that closes every connection after its answer without saying so: the next
    request on the pooled connection fails before any byte comes back. A bytes body is
    sent again on a new connection; a streamed body, which cannot be, always goes on a new
    connection."""
    with tiny_backend(drop_connection=True) as port:
        peer = PeerConfig(id="d", proxy=f"http://127.0.0.1:{port}", models=("drop-m",))
        with Proxy(config(model("m1"), peers=freeze({"d": peer}))) as p:
            for _ in range(10):
                s, _h, b = p.post("/v1/chat/completions", chat("drop-m"))
                assert s == 200, b
            form = (b"--B\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ndrop-m\r\n"
                    b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
                    b"\r\n" + b"x" * 1000 + b"\r\n--B--\r\n")
            for _ in range(5):
                s, _h, b = p.request("POST", "/v1/audio/transcriptions", form, headers={
                    "Content-Type": "multipart/form-data; boundary=B"})
                assert s == 200 and json.loads(b)["bytes"] == len(form), b


def test_loading_stream_shows_queue_position():
    a = model("a", "--load-delay", "1.2", send_loading_state=True)
    b = model("b", "--load-delay", "0.2", send_loading_state=True)
    with Proxy(config(a, b)) as p:
        first = p.conn()
        first.request("POST", "/v1/chat/completions", body=json.dumps(chat("a", stream=True)),
                      headers={"Content-Type": "application/json"})
        r1 = first.getresponse()
        assert r1.status == 200 and r1.read1(65536).startswith(b"data: ")
        # a is loading: b's swap would evict it, so b waits in the queue and says so
        s, h, body = p.post("/v1/chat/completions", chat("b", stream=True))
        text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("reasoning_content", "")
                       for line in body.decode().split("\n\n") if line.startswith("data: {"))
        assert "llama-swap loading model: b" in text and "Queue position: #1" in text
        assert b"[DONE]" in r1.read()
        first.close()


def test_metered_requests_offer_only_gzip_and_deflate(two):
    s, h, b = two.post("/infill", {"model": "m1"},
                       headers={"Accept-Encoding": "br, gzip;q=0.8, zstd"})
    seen = {k.lower(): v for k, v in json.loads(b)["headers"]}
    assert seen["accept-encoding"] == "gzip;q=0.8"
    s, h, b = two.request("GET", "/upstream/m1/x", headers={"Accept-Encoding": "br"})
    seen = {k.lower(): v for k, v in json.loads(b)["headers"]}
    assert seen["accept-encoding"] == "br"  # /upstream is not metered


def test_disconnect_during_a_slow_non_streaming_answer(two):
    s = raw_socket(two.port)
    body = json.dumps(chat("m1", demo={"sleep": 30}))
    s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
              f"\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode())
    router = two.app.router
    assert wait_until(lambda: router.in_flight("m1") == 1, 10)
    s.close()
    # the proxy noticed at once (not after the backend's 30 s) and told the router
    assert wait_until(lambda: router.in_flight("m1") == 0, 5)


def test_a_stream_head_sent_long_before_its_first_chunk_is_relayed_at_once():
    """A backend that sends its head and then thinks (a prompt being processed) before the
    first token: the client gets the status and headers while the backend still thinks, not
    held back until the first chunk (the proxy holds a head back only briefly, to send it
    with a first chunk that is right behind it)."""
    first_chunk = threading.Event()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)

    def serve():
        with contextlib.suppress(OSError):
            conn, _ = srv.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                while len(body) < length:
                    body += conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")
                first_chunk.wait(30)
                event = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n"
                conn.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event))

    threading.Thread(target=serve, daemon=True).start()
    peer = PeerConfig(id="t", proxy=f"http://127.0.0.1:{srv.getsockname()[1]}",
                      models=("think-m",))
    try:
        with Proxy(config(model("m1"), peers=freeze({"t": peer}))) as p:
            c = p.conn(timeout=20)
            c.request("POST", "/v1/chat/completions", body=json.dumps(chat("think-m", stream=True)),
                      headers={"Content-Type": "application/json"})
            r = c.getresponse()  # the head, while the backend still waits to send a chunk
            assert r.status == 200 and r.getheader("Content-Type") == "text/event-stream"
            assert not first_chunk.is_set()
            first_chunk.set()
            assert r.read().startswith(b"data: ")
            c.close()
    finally:
        first_chunk.set()
        srv.close()
