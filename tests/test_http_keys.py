"""Scoped API keys end to end: a real proxy on a real socket in front of real demo backends.

Scopes (403 before anything loads), the filtered model list, maxInFlight (429 with
Retry-After, released however a request ends), non-admin keys on the operations routes, the
three ways to send a key, and reloads that change keys while requests run."""

from __future__ import annotations

import base64
import http.client
import io
import json
import sys

import pytest

from helpers import free_port, wait_until
from httpkit import Proxy, config, model

from llamaswap.config.model import ApiKey
from llamaswap.http import auth

ADMIN = "sk-admin-plain-0001"
TEAM_A = "sk-team-a-0002"
ALIAS_ONLY = "sk-alias-only-0003"
OPS = "sk-ops-admin-0004"
LIMITED = "sk-limited-0005"
SCOPED = (
    ApiKey(TEAM_A, "team-a", ("m1",), admin=False),
    ApiKey(ALIAS_ONLY, "alias-only", ("gpt",), admin=False),
    ApiKey(OPS, "ops", ("*",), admin=True),
    ApiKey(LIMITED, "limited", ("*",), max_in_flight=2, admin=False),
)
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def keyed_config(*models, scoped=SCOPED, **kw):
    return config(*models, api_keys=(ADMIN,) + tuple(k.key for k in scoped), scoped_keys=scoped, **kw)


@pytest.fixture
def proxy():
    p = Proxy(keyed_config(model("m1", aliases=("gpt",)), model("m2", send_loading_state=True),
                           model("n3")))
    try:
        yield p
    finally:
        p.close()


def chat(p, key, mid, **extra):
    status, headers, body = p.post("/v1/chat/completions", {"model": mid, **CHAT, **extra},
                                   headers=bearer(key))
    return status, headers, json.loads(body) if body.startswith(b"{") else body


def test_a_model_outside_the_scope_is_refused_with_403_and_never_loads(proxy):
    for body in ({}, {"stream": True}):  # m2 would send loading-state bytes first
        status, headers, err = chat(proxy, TEAM_A, "m2", **body)
        assert status == 403
        assert headers["content-type"] == "application/json"
        assert err["error"]["message"] == "API key team-a may not use model m2"
        assert err["error"]["type"] == "authentication_error"
    m2 = proxy.app.processes["m2"]
    assert m2.pid is None and m2.state.value == "stopped"  # the backend never started
    assert m2.log.history() == b""
    assert chat(proxy, TEAM_A, "m1")[0] == 200
    assert chat(proxy, ADMIN, "m2")[0] == 200  # a plain key: every model, as before


def test_scope_by_alias_and_by_the_model_id_an_alias_resolves_to(proxy):
    assert chat(proxy, ALIAS_ONLY, "gpt")[0] == 200  # the name it sends
    status, _, err = chat(proxy, ALIAS_ONLY, "m1")
    assert status == 403 and err["error"]["message"] == "API key alias-only may not use model m1"
    assert chat(proxy, TEAM_A, "gpt")[0] == 200  # resolves to m1, which team-a may use


def test_an_unknown_name_is_403_outside_the_scope_and_404_inside():
    key = ApiKey(TEAM_A, "team-a", ("m*",))
    with Proxy(keyed_config(model("m1"), scoped=(key,))) as p:
        status, _, err = chat(p, TEAM_A, "other")
        assert status == 403 and "team-a" in err["error"]["message"]
        assert chat(p, TEAM_A, "m-typo")[0] == 404  # in scope: the usual answer


def test_upstream_paths_are_scoped_by_the_name_in_the_path(proxy):
    def get(key, path):
        return proxy.request("GET", path, headers=bearer(key))[0]
    assert get(TEAM_A, "/upstream/m2/echo") == 403
    assert get(TEAM_A, "/upstream/m2") == 403  # before the redirect too
    assert get(ALIAS_ONLY, "/upstream/gpt/echo") == 200
    assert get(ALIAS_ONLY, "/upstream/m1/echo") == 403
    assert get(TEAM_A, "/upstream/m1/echo") == 200
    assert proxy.app.processes["m2"].pid is None


def test_model_lists_show_only_what_the_key_may_use(proxy):
    def ids(key, path="/v1/models"):
        status, _, body = proxy.request("GET", path, headers=bearer(key))
        assert status == 200
        return [r["id"] for r in json.loads(body)["data"]]
    assert ids(ADMIN) == ["m1", "m2", "n3"]
    assert ids(OPS) == ["m1", "m2", "n3"]
    assert ids(TEAM_A) == ["m1"]
    assert ids(TEAM_A, "/models") == ["m1"]
    assert ids(ALIAS_ONLY) == ["gpt"]  # reachable only through its alias: listed under it


def test_model_list_with_aliases_listed():
    key = ApiKey(TEAM_A, "team-a", ("m1", "x*"))
    cfg = keyed_config(model("m1", aliases=("a1",)), model("m2", aliases=("x2",)), scoped=(key,),
                       include_aliases_in_list=True)
    with Proxy(cfg) as p:
        _, _, body = p.request("GET", "/v1/models", headers=bearer(TEAM_A))
        assert [r["id"] for r in json.loads(body)["data"]] == ["a1", "m1", "x2"]


# ---- maxInFlight ---------------------------------------------------------------------------

class Stream:
    """A streaming chat request held open: admitted once its first bytes arrived."""

    def __init__(self, p, key, mid, chunks=2000, delay=0.02):
        self.conn = p.conn()
        self.conn.request("POST", "/v1/chat/completions", body=json.dumps(
            {"model": mid, "stream": True, **CHAT,
             "demo": {"chunks": chunks, "chunk_delay": delay}}),
            headers={"Content-Type": "application/json", **bearer(key)})
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.first = self.resp.read1(65536) if self.status == 200 else self.resp.read()

    def rest(self) -> bytes:
        return self.first + self.resp.read()

    def abort(self) -> None:
        self.resp.close()
        self.conn.close()


def slots(p, key):
    return p.app.key_slots.in_use(key)


def test_max_in_flight_counts_streams_across_models_and_aborts_give_slots_back(proxy):
    a = Stream(proxy, LIMITED, "m1")
    b = Stream(proxy, LIMITED, "m2")
    assert (a.status, b.status) == (200, 200) and slots(proxy, LIMITED) == 2
    for mid in ("m1", "n3"):  # n3: not loaded, and stays so
        status, headers, err = chat(proxy, LIMITED, mid)
        assert status == 429 and headers["retry-after"] == "1"
        assert err["error"]["message"] == "Too many requests: API key limited is at its " \
                                          "maxInFlight limit of 2"
        assert err["error"]["type"] == "rate_limit_error"
    assert proxy.app.processes["n3"].pid is None
    assert chat(proxy, OPS, "m1")[0] == 200  # other keys are not affected
    a.abort()
    b.abort()
    assert wait_until(lambda: slots(proxy, LIMITED) == 0)
    assert [chat(proxy, LIMITED, "m1")[0] for _ in range(3)] == [200, 200, 200]
    assert wait_until(lambda: slots(proxy, LIMITED) == 0)


def test_max_in_flight_under_concurrent_streams():
    import threading
    key = ApiKey(LIMITED, "limited", max_in_flight=3)
    with Proxy(keyed_config(model("m1", concurrency_limit=50), scoped=(key,))) as p:
        results: list[int] = []
        held: list[Stream] = []
        lock = threading.Lock()

        def one():
            s = Stream(p, LIMITED, "m1")
            with lock:
                results.append(s.status)
                held.append(s)
        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [200] * 3 + [429] * 5
        assert slots(p, LIMITED) == 3
        for s in held:
            s.abort()
        assert wait_until(lambda: slots(p, LIMITED) == 0)


def test_slots_come_back_after_a_backend_crash_and_after_refusals(proxy):
    s = Stream(proxy, LIMITED, "m1", chunks=50, delay=0.01)
    assert s.status == 200
    s.abort()
    c = proxy.conn()
    c.request("POST", "/v1/chat/completions", body=json.dumps(
        {"model": "m2", **CHAT, "stream": True, "demo": {"die_after_chunks": 2}}),
        headers={"Content-Type": "application/json", **bearer(LIMITED)})
    r = c.getresponse()
    assert r.status == 200
    with pytest.raises(http.client.IncompleteRead):  # the backend died mid-stream
        r.read()
    c.close()
    assert chat(proxy, LIMITED, "nope")[0] == 404
    status, _, _ = proxy.post("/v1/chat/completions", b"{not json", headers=bearer(LIMITED))
    assert status == 400
    assert wait_until(lambda: slots(proxy, LIMITED) == 0)
    assert [chat(proxy, LIMITED, "m1")[0] for _ in range(2)] == [200, 200]


def test_in_flight_table_names_the_key_and_a_cancel_gives_the_slot_back(proxy):
    s = Stream(proxy, LIMITED, "m1")
    assert s.status == 200
    requests = proxy.app.inflight.snapshot()["requests"]
    assert [(r["model"], r["key"]) for r in requests] == [("m1", "limited")]
    assert LIMITED not in json.dumps(requests, default=str)
    target = f"/api/inflight/{requests[0]['id']}/cancel"
    assert proxy.request("POST", target, headers=bearer(LIMITED))[0] == 403  # not an admin key
    assert proxy.request("POST", target, headers=bearer(OPS))[0] == 200
    assert wait_until(lambda: slots(proxy, LIMITED) == 0)
    s.abort()


def test_model_concurrency_limit_refusal_gives_the_key_slot_back():
    key = ApiKey(LIMITED, "limited", max_in_flight=5)
    with Proxy(keyed_config(model("m1", concurrency_limit=1), scoped=(key,))) as p:
        s = Stream(p, LIMITED, "m1")
        assert s.status == 200
        status, _, err = chat(p, LIMITED, "m1")
        assert status == 429 and "concurrency limit" in json.dumps(err)
        assert wait_until(lambda: slots(p, LIMITED) == 1)
        s.abort()
        assert wait_until(lambda: slots(p, LIMITED) == 0)


def test_peer_models_are_scoped_by_the_name_sent():
    from httpkit import PeerConfig, freeze
    remote = Proxy(config(model("remote-m"), model("other-m")))
    try:
        peer = PeerConfig(id="p1", proxy=f"http://127.0.0.1:{remote.port}",
                          models=("remote-m", "other-m"))
        key = ApiKey(TEAM_A, "team-a", ("remote-*", "local"), admin=False)
        with Proxy(keyed_config(model("local"), scoped=(key,), peers=freeze({"p1": peer}))) as p:
            assert chat(p, TEAM_A, "remote-m")[0] == 200
            status, _, err = chat(p, TEAM_A, "other-m")
            assert status == 403 and err["error"]["message"] == "API key team-a may not use model other-m"
            assert p.request("GET", "/upstream/other-m/x", headers=bearer(TEAM_A))[0] == 403
            assert p.request("GET", "/upstream/remote-m/upstream/remote-m/x",
                             headers=bearer(TEAM_A))[0] == 200
            assert chat(p, TEAM_A, "p1/remote-m")[0] == 200  # the id the peer knows matches
            assert chat(p, TEAM_A, "p1/other-m")[0] == 403
            _, _, body = p.request("GET", "/v1/models", headers=bearer(TEAM_A))
            assert [r["id"] for r in json.loads(body)["data"]] == ["local", "p1/remote-m"]
        by_peer = ApiKey(TEAM_A, "team-a", ("p1/*",), admin=False)
        with Proxy(keyed_config(model("local"), scoped=(by_peer,), peers=freeze({"p1": peer}))) as p:
            assert chat(p, TEAM_A, "remote-m")[0] == 200  # resolves to p1/remote-m
            assert chat(p, TEAM_A, "local")[0] == 403
            _, _, body = p.request("GET", "/v1/models", headers=bearer(TEAM_A))
            assert [r["id"] for r in json.loads(body)["data"]] == ["p1/other-m", "p1/remote-m"]
        assert remote.app.processes["other-m"].pid is None
    finally:
        remote.close()


# ---- operations routes -----------------------------------------------------------------------

def concrete(pattern: str) -> str:
    out = []
    for seg in pattern.split("/"):
        if seg.endswith("...}"):
            out.append("m1")
        elif seg.startswith("{"):
            out.append("0")
        else:
            out.append(seg)
    return "/".join(out) or "/"


def status_only(p, method, path, key):
    c = p.conn(timeout=10)
    try:
        c.request(method, path, headers=bearer(key))
        return c.getresponse().status  # streams (/api/events, /logs/stream) stop here
    finally:
        c.close()


def test_non_admin_keys_get_403_on_every_operations_route(proxy):
    routes = [r for r in proxy.server.routes.routes() if r.auth and auth.is_operations(r.pattern)]
    patterns = {r.pattern for r in routes}
    # the list, as registered
    for expected in ("/running", "/unload", "/api/models/unload", "/api/models/unload/{model...}",
                     "/api/events", "/api/metrics", "/api/captures/{id}", "/api/performance",
                     "/logs", "/logs/stream", "/logs/stream/{id...}", "/ui", "/ui/{path...}",
                     "/metrics"):
        assert expected in patterns, expected
    for route in routes:
        method = sorted(route.methods - {"HEAD"})[0].replace("*", "GET")
        path = concrete(route.pattern)
        for key in (TEAM_A, LIMITED):
            c = proxy.conn()
            c.request(method, path, headers=bearer(key))
            r = c.getresponse()
            body = json.loads(r.read())
            c.close()
            assert r.status == 403, (method, path)
            name = "team-a" if key == TEAM_A else "limited"
            assert body["error"]["message"] == (f"API key {name} is not an admin key: {method} {path} "
                                                "is an operations route")
        for key in (ADMIN, OPS):
            assert status_only(proxy, method, path, key) not in (401, 403), (method, path, key)
    assert proxy.app.processes["m1"].pid is None  # nothing a refused request asked for ran


def test_what_a_non_admin_client_still_gets(proxy):
    for path in ("/v1/models", "/models", "/api/version", "/health", "/upstream/m1/x"):
        assert status_only(proxy, "GET", path, TEAM_A) == 200, path
    assert proxy.request("GET", "/")[0] == 302
    assert not auth.is_operations("/v1/chat/completions")
    assert not auth.is_operations("/upstream/{path...}")
    assert auth.is_operations("/api/inflight/{id}/cancel")  # a future /api route is covered
    assert not auth.is_operations("/unloadx") and not auth.is_operations("/metricsx")


# ---- how a key is sent -----------------------------------------------------------------------

@pytest.mark.parametrize("form", ["basic", "bearer", "x-api-key"])
def test_object_keys_in_every_form(proxy, form):
    def headers(key):
        if form == "basic":
            return {"Authorization": "Basic " + base64.b64encode(f"anyone:{key}".encode()).decode()}
        if form == "bearer":
            return bearer(key)
        return {"x-api-key": key}

    def post(key, mid):
        return proxy.post("/v1/chat/completions", {"model": mid, **CHAT}, headers=headers(key))[0]
    assert post(TEAM_A, "m1") == 200
    assert post(TEAM_A, "m2") == 403
    assert post(TEAM_A + "x", "m1") == 401
    assert post(TEAM_A[:-1], "m1") == 401
    # the backend never sees the key
    status, _, body = proxy.request("GET", "/upstream/m1/echo", headers=headers(TEAM_A))
    assert status == 200
    seen = {k.lower(): v for k, v in json.loads(body)["headers"]}
    assert "authorization" not in seen and "x-api-key" not in seen
    assert TEAM_A not in body.decode()


def test_open_access_and_plain_keys_are_unchanged():
    with Proxy(config(model("m1"))) as p:
        assert p.post("/v1/chat/completions", {"model": "m1", **CHAT})[0] == 200
        assert p.request("GET", "/running")[0] == 200
    with Proxy(config(model("m1"), api_keys=("plain",))) as p:
        assert p.request("GET", "/running", headers=bearer("plain"))[0] == 200
        assert p.request("GET", "/running")[0] == 401


def test_key_table_identifies_each_key_whatever_its_position():
    keys = tuple(ApiKey(f"k{i}", f"n{i}", max_in_flight=i) for i in range(1, 6))
    cfg = config(api_keys=("plain",) + tuple(k.key for k in keys), scoped_keys=keys)
    table = auth.KeyTable(cfg)
    assert table.identify("plain") == ApiKey("plain")
    for k in keys:
        assert table.identify(k.key) is k
    assert table.identify("") is None and table.identify("k") is None and table.identify("k10") is None


# ---- reload ----------------------------------------------------------------------------------

PY = sys.executable


def keys_yaml(*entries: str) -> str:
    return "apiKeys:\n" + "".join(entries)


def entry(key, name, models="['*']", limit=0):
    return f"  - key: {key}\n    name: {name}\n    models: {models}\n    maxInFlight: {limit}\n"


def test_reload_adds_removes_and_narrows_keys_while_requests_run(tmp_path):
    from test_ops_reload import Rig, model_yaml
    ports = {m: free_port() for m in ("m1", "m2")}
    models = "models:\n" + model_yaml("m1", ports["m1"]) + model_yaml("m2", ports["m2"]) \
        + "groups:\n  g:\n    swap: false\n    members: [m1, m2]\n"
    path = tmp_path / "config.yaml"
    path.write_text(keys_yaml(entry("sk-old-1", "old", limit=1), entry("sk-keep-2", "keep", limit=5))
                    + models)
    rig = Rig(str(path))

    class P:  # Stream and chat need conn() and post()
        def conn(self, timeout=30):
            return rig.conn()

        def post(self, target, body, headers):
            c = rig.conn()
            c.request("POST", target, body=json.dumps(body),
                      headers={"Content-Type": "application/json", **headers})
            r = c.getresponse()
            out = r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
            c.close()
            return out
    p = P()
    try:
        old = Stream(p, "sk-old-1", "m1", chunks=300, delay=0.01)
        keep = Stream(p, "sk-keep-2", "m1", chunks=300, delay=0.01)
        assert (old.status, keep.status) == (200, 200)
        assert chat(p, "sk-old-1", "m2")[0] == 429  # at its limit of 1
        path.write_text(keys_yaml(entry("sk-keep-2", "keep", "[m2]", limit=1),
                                  entry("sk-new-3", "new", "[m1]")) + models)
        assert rig.reloader.reload() is True
        # both admitted requests are still in flight: the old key's slot is still held
        assert rig.app.key_slots.in_use("sk-old-1") == 1
        assert rig.app.key_slots.in_use("sk-keep-2") == 1
        assert chat(p, "sk-old-1", "m1")[0] == 401  # removed
        assert chat(p, "sk-keep-2", "m1")[0] == 403  # narrowed to m2
        status, _, err = chat(p, "sk-keep-2", "m2")  # its new limit of 1 counts the old request
        assert status == 429 and "limit of 1" in err["error"]["message"]
        assert chat(p, "sk-new-3", "m1")[0] == 200  # added
        assert chat(p, "sk-new-3", "m2")[0] == 403
        for s in (old, keep):  # the admitted requests finish, whole
            body = s.rest()
            assert body.rstrip().endswith(b"data: [DONE]")
        assert wait_until(lambda: rig.app.key_slots.in_use("sk-keep-2") == 0)
        assert chat(p, "sk-keep-2", "m2")[0] == 200
        assert rig.app.key_slots.in_use("sk-old-1") == 0
    finally:
        rig.close()


# ---- no key value anywhere -------------------------------------------------------------------

class EventTap:
    """Every byte of /api/events from connect to close, read in its own thread."""

    def __init__(self, p, key):
        import threading
        self.conn = p.conn()
        self.conn.request("GET", "/api/events", headers=bearer(key))
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200
        self.data = bytearray()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            while True:
                chunk = self.resp.read1(65536)
                if not chunk:
                    return
                self.data += chunk
        except (OSError, ValueError, http.client.HTTPException):
            return

    def close(self) -> bytes:
        import socket
        try:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.thread.join(10)
        self.conn.close()
        return bytes(self.data)


def test_no_key_value_appears_in_any_log_capture_record_or_event():
    from httpkit import Holder
    from llamaswap.app import App
    from llamaswap.http.server import serve
    from llamaswap.ops.events import EventBus
    from llamaswap.ops.logs import build_loggers

    from dataclasses import replace
    from llamaswap.config.model import GroupConfig, freeze
    cfg = keyed_config(model("m1", aliases=("gpt",)), model("m2"))
    cfg = replace(cfg, groups=freeze({"g": GroupConfig("g", swap=False, members=("m1", "m2"))}))
    loggers = build_loggers("both", stdout=io.BytesIO(), level="debug")
    app = App.build(cfg, loggers, EventBus())
    server = serve(Holder(app), f"127.0.0.1:{free_port()}")

    class P:
        conn = Proxy.conn
        request = Proxy.request
        post = Proxy.post
        port = server.port
    p = P()
    p.app = app
    tap = EventTap(p, OPS)
    values = [ADMIN] + [k.key for k in SCOPED]
    texts: dict[str, bytes] = {}
    try:
        basic = "Basic " + base64.b64encode(f"me:{TEAM_A}".encode()).decode()
        for key in values:
            assert chat(p, key, "m1")[0] in (200, 403)
            chat(p, key, "m2", stream=True)
            p.request("GET", "/v1/models", headers={"x-api-key": key})
            p.request("GET", "/upstream/m1/echo", headers=bearer(key))
            p.request("GET", "/running", headers=bearer(key))
        assert p.post("/v1/chat/completions", {"model": "m1", **CHAT},
                      headers={"Authorization": basic})[0] == 200
        assert chat(p, TEAM_A + "-wrong", "m1")[0] == 401  # contains a real key
        assert chat(p, ALIAS_ONLY, "m2")[0] == 403
        assert chat(p, ALIAS_ONLY, "gpt")[0] == 200
        held = [Stream(p, LIMITED, "m1"), Stream(p, LIMITED, "m2")]
        assert chat(p, LIMITED, "m1")[0] == 429
        for s in held:
            s.abort()
        assert wait_until(lambda: slots(p, LIMITED) == 0)
        assert wait_until(lambda: app.inflight.total == 0)
        entries = app.activity.entries()
        texts.update({
            "proxy and upstream logs": loggers.mux.history(),
            "backend logs": b"".join(proc.log.history() for proc in app.processes.values()),
            "activity": app.activity.dumps().encode(),
            "captures": "".join(app.captures.get_json(e.id) or "" for e in entries).encode(),
        })
        for path in ("/api/metrics", "/api/metrics/activity?limit=999", "/metrics", "/logs",
                     "/running"):
            status, _, body = p.request("GET", path, headers=bearer(OPS))
            assert status == 200, path
            texts[path] = body
        assert any(e.has_capture for e in entries)
        _, _, body = p.request("GET", "/api/metrics/activity?key=team-a&key=ops&sort=key&order=asc",
                               headers=bearer(OPS))
        assert [r["key"] for r in json.loads(body)["data"]] == ["ops"] * 2 + ["team-a"] * 2
    finally:
        texts["/api/events"] = tap.close()
        server.shutdown(2)
        app.shutdown()
    forms = values + [base64.b64encode(f"me:{TEAM_A}".encode()).decode()]
    for where, text in texts.items():
        assert text, where
        for v in forms:
            assert v.encode() not in text, (where, v)
    # the names are there instead
    rows = json.loads(texts["/api/metrics"])
    assert {r["key"] for r in rows} >= {"-", "team-a", "alias-only", "ops", "limited"}
    assert {(r["model"], r["key"]) for r in rows if r["resp_status_code"] == 200} >= {
        ("m1", "team-a"), ("m1", "-"), ("m2", "ops"), ("m1", "alias-only")}
    assert all(r["key"] for r in json.loads(texts["/api/metrics/activity?limit=999"])["data"])
    assert b'llamaswap_requests_total{model="m1",status="200",key="team-a"}' in texts["/metrics"]
    assert b'llamaswap_key_inflight_requests{key="limited"} 0' in texts["/metrics"]
    assert b'\\"key\\":\\"team-a\\"' in texts["/api/events"]  # a metrics message's row
    assert b" key=team-a" in texts["proxy and upstream logs"]


# ---- selectors and profile pins ------------------------------------------------------------

def test_scope_by_selector_and_by_profile_pin():
    import textwrap
    from test_routing_e2e import models_yaml
    from llamaswap.config import load_config_text
    text = textwrap.dedent("""\
        apiKeys:
          - sk-admin-1
          - {key: sk-sel-2, name: by-selector, models: [smart]}
          - {key: sk-target-3, name: by-target, models: [b]}
          - {key: sk-pin-4, name: by-pin, models: [llm]}
        routing:
          router:
            settings:
              groups:
                all: {swap: false, exclusive: false, members: [a, b, c]}
        selectors:
          smart: {strategy: pin, targets: [b]}
          other: {strategy: pin, targets: [c]}
        profiles:
          coding:
            pins: {llm: a}
        """) + models_yaml("a", "b", "c")
    with Proxy(load_config_text(text, "keys.yaml", environ={})) as p:
        def served(key, mid):
            status, _, body = chat(p, key, mid)
            return status, body["model"] if status == 200 else body["error"]["message"]

        def ids(key):
            _, _, body = p.request("GET", "/v1/models", headers=bearer(key))
            return [r["id"] for r in json.loads(body)["data"]]

        assert served("sk-sel-2", "smart") == (200, "b")  # the selector's name was sent
        assert served("sk-sel-2", "b") == (403, "API key by-selector may not use model b")
        assert served("sk-sel-2", "other") == (403, "API key by-selector may not use model other")
        assert served("sk-target-3", "smart") == (200, "b")  # the model it resolves to
        assert served("sk-target-3", "other") == (403, "API key by-target may not use model other")
        assert p.app.processes["c"].pid is None
        assert ids("sk-sel-2") == ["smart"] and ids("sk-target-3") == ["b"]

        assert served("sk-pin-4", "llm")[0] == 404  # no profile active: not a model
        status, _, _ = p.request("PUT", "/api/profiles/active", b'{"name": "coding"}',
                                 {"Content-Type": "application/json", **bearer("sk-pin-4")})
        assert status == 403  # an operations route
        status, _, _ = p.request("PUT", "/api/profiles/active", b'{"name": "coding"}',
                                 {"Content-Type": "application/json", **bearer("sk-admin-1")})
        assert status == 200
        assert served("sk-pin-4", "llm") == (200, "a")  # the pin's name was sent
        assert ids("sk-pin-4") == ["llm"]
        assert served("sk-pin-4", "a") == (403, "API key by-pin may not use model a")
        assert p.request("GET", "/upstream/llm/echo", headers=bearer("sk-pin-4"))[0] == 200
        assert p.request("GET", "/upstream/a/echo", headers=bearer("sk-pin-4"))[0] == 403
        assert p.request("GET", "/upstream/llm/echo", headers=bearer("sk-target-3"))[0] == 403
