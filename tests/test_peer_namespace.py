"""Peer namespaces end to end (upstream-head.md section 8): a front proxy with two peers, each
a real proxy of ours in front of demo backends. ``peerID/modelID`` reaches that peer as the
model id it knows (JSON body, form, multipart, query); a bare id works when one peer offers
it; listings show qualified names."""

from __future__ import annotations

import json
import uuid

from httpkit import Proxy, config, model

from llamaswap.config.model import PeerConfig, freeze
from test_ops_api import SseReader


def _multipart(fields: dict[str, str]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = b""
    for name, value in fields.items():
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n"
                f"{value}\r\n").encode()
    out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            f"Content-Type: audio/wav\r\n\r\nRIFF....\r\n--{boundary}--\r\n").encode()
    return out, f"multipart/form-data; boundary={boundary}"


def test_two_peers_qualified_and_bare_names():
    with Proxy(config(model("m1"), model("shared"))) as one, \
            Proxy(config(model("shared"))) as two:
        peers = {"p1": PeerConfig("p1", f"http://127.0.0.1:{one.port}", models=("m1", "shared")),
                 "p2": PeerConfig("p2", f"http://127.0.0.1:{two.port}", models=("shared",))}
        with Proxy(config(model("local"), peers=freeze(peers))) as front:
            # qualified: the peer sees its own id, in every place a model can be named
            s, _, b = front.post("/v1/chat/completions",
                                 {"model": "p1/m1", "messages": [{"role": "user", "content": "x"}]})
            assert s == 200 and json.loads(b)["model"] == "m1"
            s, _, b = front.post("/v1/rerank", {"model": "p1/m1", "input": "hi"})
            assert s == 200 and json.loads(json.loads(b)["body"]) == {"model": "m1", "input": "hi"}
            # only the name changes: the rest of the body reaches the peer byte for byte
            raw = b'{"input": "caf\\u00e9 \\"model\\"",  "model" : "p1/m1"}'
            s, _, b = front.request("POST", "/v1/rerank", raw, headers={"Content-Type": "application/json"})
            assert s == 200 and json.loads(b)["body"] == raw.decode().replace("p1/m1", "m1")
            s, _, b = front.request("POST", "/v1/rerank", b"x=1&model=p1%2Fm1",
                                    headers={"Content-Type": "application/x-www-form-urlencoded"})
            assert s == 200 and json.loads(b)["body"] == "model=m1&x=1"
            body, ctype = _multipart({"model": "p1/m1", "language": "en"})
            s, _, b = front.request("POST", "/v1/audio/transcriptions", body,
                                    headers={"Content-Type": ctype})
            assert s == 200 and json.loads(b)["fields"] == {"model": "m1", "language": "en"}
            s, _, b = front.request("GET", "/sdapi/v1/loras?model=p1/m1&x=y")
            assert s == 200 and json.loads(b)["query_params"] == {"model": ["m1"], "x": ["y"]}
            # /upstream/<peer model>/<path> sends <path> to the peer itself, as upstream
            s, _, b = front.request("GET", "/upstream/p1/m1/v1/models")
            assert s == 200 and [r["id"] for r in json.loads(b)["data"]] == ["m1", "shared"]

            # the same id on two peers: only the qualified names route
            s, _, b = front.post("/v1/chat/completions", {"model": "p2/shared", "messages": []})
            assert s == 200 and json.loads(b)["model"] == "shared"
            assert two.app.processes["shared"].state.value == "ready"
            assert one.app.processes["shared"].state.value == "stopped"
            s, _, b = front.post("/v1/chat/completions", {"model": "shared", "messages": []})
            assert s == 404
            assert json.loads(b)["error"]["message"].startswith("no router for requested model")
            # a bare id one peer offers still routes (differences.md 13), a local id wins
            s, _, b = front.post("/v1/chat/completions", {"model": "m1", "messages": []})
            assert s == 200 and json.loads(b)["model"] == "m1"

            listed = json.loads(front.request("GET", "/v1/models")[2])["data"]
            assert [r["id"] for r in listed] == ["local", "p1/m1", "p1/shared", "p2/shared"]
            assert listed[1] == {"id": "p1/m1", "object": "model", "created": listed[1]["created"],
                                 "owned_by": "llama-swap", "name": "p1: m1",
                                 "meta": {"llamaswap": {"peerID": "p1", "type": "peer"}},
                                 "status": {"value": "unloaded"}}
            sse = SseReader(front)
            try:
                _, models = sse.until(lambda t, d: t == "modelStatus")
            finally:
                sse.close()
            assert [(m["id"], m["peerID"]) for m in models] == [
                ("local", ""), ("p1/m1", "p1"), ("p1/shared", "p1"), ("p2/shared", "p2")]
        one.app.router.unload()
        two.app.router.unload()
