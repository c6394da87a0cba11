"""The SQLite activity store (store.path) and its API: GET /api/metrics/activity and
/api/metrics/stats. Real SQLite files, real proxies on real sockets, real demo backends."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import urllib.request
from datetime import datetime, timezone

import pytest

from httpkit import Proxy, config, model
from llamaswap.ops.activity import ActivityEntry, ActivityLog, TokenMetrics
from llamaswap.ops.activity.query import QueryError, histogram, parse_query
from llamaswap.ops.activity.store import SqliteStore

CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hello there"}]}


class Warnings:
    def __init__(self):
        self.lines: list[str] = []

    def warn(self, msg):
        self.lines.append(msg)

    def debug(self, msg):
        pass


def entry(model="m1", when=None, status=200, pps=0.0, tps=0.0, inp=1, out=2, cached=0,
          error="", metadata=None) -> ActivityEntry:
    return ActivityEntry(0, when or datetime.now().astimezone(), model, "/v1/chat/completions",
                         "application/json", status,
                         TokenMetrics(cached, inp, out, pps, tps, -1, -1), 7, False, error,
                         metadata)


# upstream's migration 00001 (internal/store/migrations/00001_create_activity.sql)
UPSTREAM_TABLE = """
CREATE TABLE activity (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts_created INTEGER NOT NULL, model_id TEXT NOT NULL,
    req_path TEXT NOT NULL DEFAULT '', resp_content_type TEXT NOT NULL DEFAULT '',
    resp_status_code INTEGER NOT NULL DEFAULT 0, cache_tokens INTEGER NOT NULL DEFAULT 0,
    draft_tokens INTEGER NOT NULL DEFAULT 0, draft_acc_tokens INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
    prompt_per_second REAL NOT NULL DEFAULT 0, tokens_per_second REAL NOT NULL DEFAULT 0,
    duration_ms INTEGER NOT NULL DEFAULT 0, error_msg TEXT NOT NULL DEFAULT '',
    metadata_json TEXT NOT NULL DEFAULT '');
CREATE INDEX idx_activity_created_id ON activity (ts_created DESC, id DESC);
CREATE INDEX idx_activity_model_created_id ON activity (model_id, ts_created DESC, id DESC);
"""


def rows_in(path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT COUNT(*) FROM activity").fetchone()[0]


# ---- the store itself --------------------------------------------------------------------------

def test_file_history_survives_reopen_ids_go_on_and_wal(tmp_path):
    path = str(tmp_path / "activity.db")
    log = ActivityLog(10, store_path=path)
    first = [log.add(entry(metadata={"fifo_priority": "0"})).id for _ in range(3)]
    log.close()
    assert first == [0, 1, 2] and rows_in(path) == 3
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    log = ActivityLog(2, store_path=path)
    assert log.add(entry()).id == 3
    page = log.page(parse_query({}))
    assert page["total"] == 4 and [r["id"] for r in page["data"]] == [3, 2, 1, 0]
    assert page["data"][3]["metadata"] == {"fifo_priority": "0"}
    assert [e.id for e in log.entries()] == [2, 3]  # /api/metrics: the newest metricsMaxInMemory
    log.close()
    assert rows_in(path) == 4  # a file is never pruned


def test_memory_store_keeps_the_newest_rows_within_the_cap():
    log = ActivityLog(100)
    for _ in range(10_000):
        log.add(entry())
    log.store.flush()
    count = log.store._db.execute("SELECT COUNT(*), MIN(id), MAX(id) FROM activity").fetchone()
    assert count == (100, 9900, 9999)
    assert [e.id for e in log.entries()] == list(range(9900, 10_000))
    assert log.page(parse_query({}))["total"] == 100
    log.close()


def test_rows_are_written_in_batches_off_the_recording_thread(tmp_path):
    path = str(tmp_path / "a.db")
    log = ActivityLog(10, store_path=path)
    log.add(entry())
    assert log.store._pending  # recording only queued the row
    log.store.flush()
    assert not log.store._pending and rows_in(path) == 1
    log.close()


def test_a_file_written_by_upstream_opens_and_keeps_its_rows(tmp_path):
    path = str(tmp_path / "upstream.db")
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(UPSTREAM_TABLE)
        db.execute("CREATE TABLE goose_db_version (id INTEGER PRIMARY KEY, version_id INTEGER)")
        db.execute("INSERT INTO activity (ts_created, model_id, req_path, input_tokens) "
                   "VALUES (1700000000, 'old', '/v1/completions', 5)")
        db.commit()
    log = ActivityLog(10, store_path=path)
    rows = log.page(parse_query({}))["data"]
    assert [(r["id"], r["model"], r["tokens"]["input_tokens"]) for r in rows] == [(1, "old", 5)]
    assert rows[0]["timestamp"] == datetime.fromtimestamp(1700000000).astimezone()
    assert log.add(entry()).id == 2
    log.close()


def test_corrupt_file_falls_back_to_memory_with_one_warning(tmp_path):
    path = tmp_path / "activity.db"
    path.write_bytes(b"this is not a database, " * 100)
    w = Warnings()
    log = ActivityLog(10, log=w, store_path=str(path))
    assert log.store.in_memory
    for _ in range(3):
        log.add(entry())
    assert [e.id for e in log.entries()] == [0, 1, 2]
    assert len(w.lines) == 1 and f"activity store {path} unavailable" in w.lines[0]
    assert "keeping activity in memory" in w.lines[0]
    log.close()
    assert path.read_bytes().startswith(b"this is not a database")  # left as it was


def test_locked_file_falls_back_to_memory(tmp_path):
    path = str(tmp_path / "activity.db")
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as holder:
        holder.execute("CREATE TABLE x (y)")
        holder.execute("BEGIN EXCLUSIVE")
        w = Warnings()
        store = SqliteStore(path, 10, warn=w.warn, busy_timeout=0.2)
        assert store.in_memory and len(w.lines) == 1 and "database is locked" in w.lines[0]
        store.close()


@contextlib.contextmanager
def read_only_dir(tmp_path):
    """A directory nothing can be created in: a read-only tmpfs mount where we may mount
    (root), else a directory without write permission."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        try:
            yield d
        finally:
            d.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d)],
                      capture_output=True).returncode != 0:
        pytest.skip("running as root and cannot mount a read-only filesystem here")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=True)


def test_read_only_directory_falls_back_to_memory(tmp_path):
    with read_only_dir(tmp_path) as d:
        w = Warnings()
        log = ActivityLog(10, log=w, store_path=str(d / "activity.db"))
        assert log.store.in_memory and len(w.lines) == 1
        assert log.add(entry()).id == 0 and len(log.entries()) == 1
        log.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a small tmpfs mount (root)")
def test_full_disk_while_running_falls_back_and_keeps_the_history(tmp_path):
    d = tmp_path / "small"
    d.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(d)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        w = Warnings()
        log = ActivityLog(50, log=w, store_path=str(d / "activity.db"))
        for _ in range(5):
            log.add(entry())
        log.store.flush()
        assert not log.store.in_memory
        with open(d / "filler", "wb") as f:  # fill the disk
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
        big = "x" * 200_000
        for _ in range(20):  # rows too large for what is left
            log.add(entry(error=big))
        log.store.flush()
        assert log.store.in_memory and len(w.lines) == 1
        assert "database or disk is full" in w.lines[0]
        ids = [e.id for e in log.entries()]
        assert ids == list(range(25))  # the file's rows were carried over, nothing lost
        log.close()
    finally:
        subprocess.run(["umount", str(d)], check=True)


# ---- the query ---------------------------------------------------------------------------------

@pytest.mark.parametrize("query, message", [
    ({"limit": ["x"]}, "invalid limit"),
    ({"limit": ["1.5"]}, "invalid limit"),
    ({"limit": ["0"]}, "limit must be between 1 and 999"),
    ({"limit": ["1000"]}, "limit must be between 1 and 999"),
    ({"page": ["0"]}, "page must be >= 1"),
    ({"page": ["two"]}, "page must be >= 1"),
    ({"start": ["yesterday"]}, "invalid 'start' timestamp, use RFC3339 format"),
    ({"end": ["2024-01-01"]}, "invalid 'end' timestamp, use RFC3339 format"),
    ({"start": ["2024-01-02T00:00:00Z"], "end": ["2024-01-01T00:00:00Z"]},
     "start must be before end"),
    ({"min_id": ["0"]}, "min_id must be >= 1"),
    ({"max_id": ["-3"]}, "max_id must be >= 1"),
    ({"min_id": ["5"], "max_id": ["4"]}, "min_id must be <= max_id"),
    ({"sort": ["tokens"]}, "invalid sort column"),
    ({"order": ["up"]}, "order must be asc or desc"),
    # upstream's order of checks: start/end before ids before limit before page ...
    ({"start": ["bad"], "limit": ["0"]}, "invalid 'start' timestamp, use RFC3339 format"),
    ({"min_id": ["0"], "limit": ["x"]}, "min_id must be >= 1"),
    ({"limit": ["0"], "page": ["0"]}, "limit must be between 1 and 999"),
])
def test_every_bad_query_is_refused_with_upstreams_message(query, message):
    with pytest.raises(QueryError) as e:
        parse_query(query)
    assert str(e.value) == message


def test_query_defaults_trimming_and_case():
    q = parse_query({"limit": [" 10 "], "page": ["+2"], "order": ["ASC"], "sort": ["gen_speed"],
                     "model": ["a", " ", "b "]})
    assert (q.limit, q.page, q.order, q.sort, q.models, q.offset) == (10, 2, "asc",
                                                                      "gen_speed", ("a", "b"), 10)
    q = parse_query({})
    assert (q.limit, q.page, q.order, q.sort, q.models) == (25, 1, "desc", "id", ())


def test_pages_filters_and_sorting(tmp_path):
    log = ActivityLog(100, store_path=str(tmp_path / "a.db"))
    base = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
    for i in range(30):
        log.add(entry(model="a" if i % 3 else "b", when=base.replace(minute=i),
                      tps=float(i % 7), inp=i))
    page = log.page(parse_query({"limit": ["7"], "page": ["5"]}))
    assert (page["total"], page["total_pages"], page["page"], page["limit"]) == (30, 5, 5, 7)
    assert [r["id"] for r in page["data"]] == [1, 0]
    assert log.page(parse_query({"page": ["9"]}))["data"] == []
    b = log.page(parse_query({"model": ["b"], "order": ["asc"], "limit": ["3"]}))
    assert b["total"] == 10 and [r["id"] for r in b["data"]] == [0, 3, 6]
    both = log.page(parse_query({"model": ["a", "b"]}))
    assert both["total"] == 30
    window = log.page(parse_query({"start": ["2024-05-01T12:05:00Z"],
                                   "end": ["2024-05-01T14:09:59+02:00"]}))  # inclusive
    assert [r["id"] for r in window["data"]] == [9, 8, 7, 6, 5]
    ids = log.page(parse_query({"min_id": ["3"], "max_id": ["5"]}))
    assert [r["id"] for r in ids["data"]] == [5, 4, 3]
    by_speed = log.page(parse_query({"sort": ["gen_speed"], "limit": ["5"]}))
    # ties on the sort column are broken by id in the same direction
    assert [(r["tokens"]["tokens_per_second"], r["id"]) for r in by_speed["data"]] == [
        (6.0, 27), (6.0, 20), (6.0, 13), (6.0, 6), (5.0, 26)]
    assert log.page(parse_query({"sort": ["prompt"], "order": ["asc"], "limit": ["1"]})
                    )["data"][0]["tokens"]["input_tokens"] == 0
    empty = log.page(parse_query({"model": ["nope"]}))
    assert (empty["total"], empty["total_pages"], empty["data"]) == (0, 0, [])
    log.close()


def test_stats_and_histograms():
    log = ActivityLog(100)
    for i in range(1, 11):
        log.add(entry(model="a", pps=float(i), tps=0.0 if i == 1 else 2.0, inp=i, out=1,
                      cached=-1 if i == 2 else i))
    log.add(entry(model="b", pps=-1.0, tps=-1.0, inp=100, out=100, cached=5))
    s = log.stats("a")
    assert (s["total_requests"], s["total_input_tokens"], s["total_output_tokens"],
            s["total_cache_tokens"]) == (10, 55, 10, 53)  # only positive cache counts
    assert s["prompt_histogram"] == {"bins": [2, 2, 2, 2, 2], "min": 1.0, "max": 10.0,
                                     "binSize": 1.8, "p50": 5.5, "p95": pytest.approx(9.55),
                                     "p99": pytest.approx(9.91)}
    assert s["gen_histogram"] == {"bins": [9], "min": 2.0, "max": 2.0, "binSize": 0.0,
                                  "p50": 2.0, "p95": 2.0, "p99": 2.0}
    b = log.stats("b")
    assert b["total_requests"] == 1 and b["prompt_histogram"] is None
    assert b["gen_histogram"] is None
    assert log.stats()["total_requests"] == 11
    log.close()


def test_histogram_bins_follow_sturges_clamped():
    assert len(histogram([float(i) for i in range(3)])["bins"]) == 5
    assert len(histogram([float(i) for i in range(100)])["bins"]) == 8  # ceil(log2 100)+1
    assert len(histogram([float(i) for i in range(10 ** 6 // 1000 * 1000)])["bins"]) == 20
    assert histogram([]) is None


# ---- through the proxy -------------------------------------------------------------------------

def test_api_over_http_survives_a_restart(tmp_path):
    cfg = config(model("m1"), store_path=str(tmp_path / "activity.db"))
    with Proxy(cfg) as p:
        for _ in range(3):
            assert p.post("/v1/chat/completions", CHAT)[0] == 200
        status, headers, body = p.request("GET", "/api/metrics/activity?limit=2")
        assert status == 200 and headers["content-type"] == "application/json"
        assert body.endswith(b"}\n")
        page = json.loads(body)
        assert list(page) == ["data", "page", "limit", "total", "total_pages"]
        assert (page["total"], page["total_pages"], [r["id"] for r in page["data"]]) == (
            3, 2, [2, 1])
        row = page["data"][0]
        assert list(row) == ["id", "timestamp", "model", "req_path", "resp_content_type",
                             "resp_status_code", "tokens", "duration_ms", "has_capture",
                             "metadata", "key"]
        assert list(row["tokens"]) == ["cache_tokens", "draft_tokens", "draft_acc_tokens",
                                       "input_tokens", "output_tokens", "prompt_per_second",
                                       "tokens_per_second"]
        assert row["has_capture"] is True and row["tokens"]["input_tokens"] == 2
        status, _, body = p.request("GET", "/api/metrics/activity?limit=1000")
        assert status == 400
        assert json.loads(body)["error"]["message"] == "limit must be between 1 and 999"
        stats = json.loads(p.request("GET", "/api/metrics/stats?model=m1")[2])
        assert stats["total_requests"] == 3 and stats["prompt_histogram"]["bins"] == [3]
        assert json.loads(p.request("GET", "/api/metrics/stats?model=zz")[2]) == {
            "total_requests": 0, "total_input_tokens": 0, "total_output_tokens": 0,
            "total_cache_tokens": 0, "prompt_histogram": None, "gen_histogram": None}
    with Proxy(cfg) as p:  # a new proxy on the same file
        assert p.post("/v1/chat/completions", CHAT)[0] == 200
        page = json.loads(p.request("GET", "/api/metrics/activity")[2])
        assert page["total"] == 4 and [r["id"] for r in page["data"]] == [3, 2, 1, 0]
        # captures live in memory: the old rows have none now
        assert [r["has_capture"] for r in page["data"]] == [True, False, False, False]
        assert [e["id"] for e in json.loads(p.request("GET", "/api/metrics")[2])] == [0, 1, 2, 3]


def test_failed_requests_are_recorded_with_their_error_and_a_capture(tmp_path):
    with Proxy(config(model("m1"))) as p:
        assert p.post("/v1/chat/completions", dict(CHAT, demo={"status": 418}))[0] == 418
        rows = json.loads(p.request("GET", "/api/metrics/activity?order=asc")[2])["data"]
        row = rows[0]
        assert (row["resp_status_code"], row["error_msg"]) == (418, "demo error")
        assert row["tokens"] == {"cache_tokens": 0, "draft_tokens": 0, "draft_acc_tokens": 0,
                                 "input_tokens": 0, "output_tokens": 0,
                                 "prompt_per_second": 0, "tokens_per_second": 0}
        cap = json.loads(p.request("GET", f"/api/captures/{row['id']}")[2])
        assert cap["resp_body"] is None
        assert json.loads(base64.b64decode(cap["req_body"]))["demo"] == {"status": 418}
        assert cap["resp_headers"]["Content-Type"] == "application/json"


def test_corrupt_store_file_the_proxy_warns_and_serves(tmp_path):
    path = tmp_path / "activity.db"
    path.write_bytes(b"\x00garbage" * 512)
    with Proxy(config(model("m1"), store_path=str(path))) as p:
        assert p.post("/v1/chat/completions", CHAT)[0] == 200
        page = json.loads(p.request("GET", "/api/metrics/activity")[2])
        assert page["total"] == 1
        log = p.app.loggers.proxy.history().decode()
        assert log.count("activity store") == 1 and "keeping activity in memory" in log


def test_read_only_store_directory_the_proxy_warns_and_serves(tmp_path):
    with read_only_dir(tmp_path) as d:
        with Proxy(config(model("m1"), store_path=str(d / "activity.db"))) as p:
            for _ in range(2):
                assert p.post("/v1/chat/completions", CHAT)[0] == 200
            assert json.loads(p.request("GET", "/api/metrics/activity")[2])["total"] == 2
            assert "activity store" in p.app.loggers.proxy.history().decode()


def test_the_cli_keeps_history_across_sigterm_and_a_reload(tmp_path):
    """A real llama-swap process: SIGTERM writes what is pending, a restart goes on with the
    next id, SIGHUP's reload keeps the store."""
    from test_cli import _post_json, _start_proxy

    from helpers import demo_backend_argv, free_port, wait_until
    db = tmp_path / "history" / "activity.db"
    db.parent.mkdir()
    cfg = tmp_path / "config.yaml"
    argv = " ".join(demo_backend_argv("m1", "${PORT}", "--quiet"))
    cfg.write_text(f"store:\n  path: {db}\nmodels:\n  m1:\n    cmd: {argv}\n")
    for round_ in range(2):
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = _start_proxy("-config", str(cfg), "-listen", f"127.0.0.1:{port}")
        try:
            _post_json(base + "/v1/chat/completions", CHAT)
            if round_ == 1:
                proc.proc.send_signal(signal.SIGHUP)
                assert proc.wait_for("configuration reloaded")
                _post_json(base + "/v1/chat/completions", CHAT)
            # a record is written once its response has ended, which the client can see first
            want = 1 if round_ == 0 else 3

            def listed():
                nonlocal page
                with urllib.request.urlopen(base + "/api/metrics/activity") as r:
                    page = json.loads(r.read())
                return len(page["data"]) >= want

            page = None
            assert wait_until(listed)
        finally:
            proc.stop()
        assert proc.returncode == 0
        ids = [row["id"] for row in page["data"]]
        assert ids == ([0] if round_ == 0 else [2, 1, 0])
    assert rows_in(str(db)) == 3


# ---- config -----------------------------------------------------------------------------------

def test_store_path_config(tmp_path):
    from llamaswap.config import ConfigError, load_config_text
    assert load_config_text("models: {}\n").store_path is None
    assert load_config_text("store:\nmodels: {}\n").store_path is None  # null: no block
    path = tmp_path / "a.db"
    assert load_config_text(f"store:\n  path: ' {path} '\n").store_path == str(path)
    for text, message in [("store: {}\n", "store.path must not be empty"),
                          ("store:\n  path: '  '\n", "store.path must not be empty"),
                          (f"store:\n  path: {tmp_path}\n",
                           f"store.path: {tmp_path} is a directory, not a file")]:
        with pytest.raises(ConfigError) as e:
            load_config_text(text)
        assert str(e.value).endswith(message)


def test_metadata_and_the_sse_activity_message(tmp_path):
    from test_ops_api import SseReader
    with Proxy(config(model("m1"))) as p:
        s = SseReader(p)
        try:
            assert p.post("/v1/chat/completions", CHAT)[0] == 200
            s.until(lambda t, d: t == "activity" and d == {"id": 0})
        finally:
            s.close()
        row = json.loads(p.request("GET", "/api/metrics/activity")[2])["data"][0]
        assert row["metadata"] == {"fifo_priority": "0"}
