"""Where activity records are kept: SQLite (the standard library's ``sqlite3``), in a file
(``store.path``: WAL mode, never pruned, history survives restarts and reloads) or in memory
(the default: the newest ``metricsMaxInMemory`` rows). The table is upstream's (``activity``,
its migration 00001), so a file written by upstream opens here and the other way round; the
columns we add (``_EXTRA_COLUMNS``) are added to an older file when it opens.

The interface, used only by ActivityLog (log.py):

    reserve_id() -> int          the id of the next record (ids only grow); called one record
                                 at a time, under the log's lock, with append()
    append(entry)                keep a record; never blocks on I/O. A file's rows are written
                                 with others in one transaction by the writer thread, about
                                 BATCH_DELAY later; in memory, rows wait (the newest
                                 max_entries of them) until something reads the store, so a
                                 proxy nobody asks about its activity never spends on SQLite.
                                 Every read writes what is pending first.
    recent(n) -> [entry]         the newest n records, oldest first
    page(query) -> ([entry], total)   a page of an ActivityQuery (query.py), and the count
    stats(model) -> dict         totals and speed lists for GET /api/metrics/stats
    speed(query, buckets) -> dict     generation speed per model and time bucket, for
                                 GET /api/activity/speed (ops/timeline_api.py, the UI's chart)
    set_max_entries(n)           a new metricsMaxInMemory (a reload)
    close()                      write what is pending, close the file
    path, in_memory              what it is using now

When the file cannot be used (corrupt, locked, read-only, full disk), at open or on any later
read or write, the store logs one warning and goes on in memory (capped, seeded with the
file's newest rows when they can still be read); no request ever sees the error.

A new field of ActivityEntry: one more ``_EXTRA_COLUMNS`` entry, and its place in ``_row`` and
``_entry``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import deque
from datetime import datetime
from typing import Any, Callable

from llamaswap.ops.activity.query import SORT_COLUMNS, ActivityQuery
from llamaswap.ops.activity.record import ActivityEntry, TokenMetrics

DEFAULT_MAX_ENTRIES = 1000  # upstream's metricsMaxInMemory default
BATCH_DELAY = 0.1  # seconds the writer gathers rows before one transaction writes them all
BUSY_TIMEOUT = 5.0  # upstream's busy_timeout: how long a write waits for another process

_TABLE = """
CREATE TABLE IF NOT EXISTS activity (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_created INTEGER NOT NULL,
    model_id TEXT NOT NULL,
    req_path TEXT NOT NULL DEFAULT '',
    resp_content_type TEXT NOT NULL DEFAULT '',
    resp_status_code INTEGER NOT NULL DEFAULT 0,
    cache_tokens INTEGER NOT NULL DEFAULT 0,
    draft_tokens INTEGER NOT NULL DEFAULT 0,
    draft_acc_tokens INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    prompt_per_second REAL NOT NULL DEFAULT 0,
    tokens_per_second REAL NOT NULL DEFAULT 0,
    duration_ms INTEGER NOT NULL DEFAULT 0,
    error_msg TEXT NOT NULL DEFAULT '',
    metadata_json TEXT NOT NULL DEFAULT ''
);
"""
# a file's history grows without bound: upstream's indexes; memory holds metricsMaxInMemory
# rows, where a scan is cheap and each index would double the cost of every write
_INDEXES = """
CREATE INDEX IF NOT EXISTS idx_activity_created_id ON activity (ts_created DESC, id DESC);
CREATE INDEX IF NOT EXISTS idx_activity_model_created_id
    ON activity (model_id, ts_created DESC, id DESC);
"""
# ours, beyond upstream's table: ts_us keeps the sub-second part of the time (0 in rows
# written by upstream); key_name the API key's name ("-": a plain key, no apiKeys, upstream)
_EXTRA_COLUMNS = (("ts_us", "INTEGER NOT NULL DEFAULT 0"),
                  ("key_name", "TEXT NOT NULL DEFAULT '-'"))
_COLUMNS = ("id", "ts_created", "model_id", "req_path", "resp_content_type", "resp_status_code",
            "cache_tokens", "draft_tokens", "draft_acc_tokens", "input_tokens", "output_tokens",
            "prompt_per_second", "tokens_per_second", "duration_ms", "error_msg",
            "metadata_json") + tuple(name for name, _ in _EXTRA_COLUMNS)
_SELECT = "SELECT " + ", ".join(_COLUMNS) + " FROM activity"
_INSERT = (f"INSERT INTO activity ({', '.join(_COLUMNS)}) "
           f"VALUES ({', '.join('?' * len(_COLUMNS))})")
_metadata_json: dict[tuple, str] = {}  # the few metadata sets a proxy sees, encoded once


def _row(e: ActivityEntry) -> tuple:
    t = e.tokens
    micros = round(e.timestamp.timestamp() * 1e6)
    metadata = ""
    if e.metadata:
        key = tuple(sorted(e.metadata.items()))
        metadata = _metadata_json.get(key)
        if metadata is None:
            metadata = json.dumps(dict(key))
            if len(_metadata_json) < 256:
                _metadata_json[key] = metadata
    return (e.id, micros // 1_000_000, e.model, e.req_path, e.resp_content_type,
            e.resp_status_code, t.cache_tokens, t.draft_tokens, t.draft_acc_tokens,
            t.input_tokens, t.output_tokens, float(t.prompt_per_second),
            float(t.tokens_per_second), e.duration_ms, e.error_msg, metadata, micros, e.key)


def _entry(r: tuple) -> ActivityEntry:
    micros = r[16] or r[1] * 1_000_000
    metadata = None
    if r[15]:
        try:
            metadata = {str(k): str(v) for k, v in json.loads(r[15]).items()}
        except (ValueError, AttributeError):
            metadata = None
    tokens = TokenMetrics(cache_tokens=r[6], input_tokens=r[9], output_tokens=r[10],
                          prompt_per_second=r[11], tokens_per_second=r[12],
                          draft_tokens=r[7], draft_acc_tokens=r[8])
    when = datetime.fromtimestamp(micros / 1e6).astimezone()
    return ActivityEntry(r[0], when, r[2], r[3], r[4], r[5], tokens, r[13], False, r[14],
                         metadata, r[17])


class StoreUnavailable(Exception):
    pass


def _connect(path: str | None, busy_timeout: float) -> sqlite3.Connection:
    """An open, migrated database; raises StoreUnavailable naming what failed."""
    try:
        db = sqlite3.connect(path or ":memory:", timeout=busy_timeout, isolation_level=None,
                             check_same_thread=False)
    except (sqlite3.Error, OSError) as e:
        raise StoreUnavailable(str(e)) from None
    try:
        if path:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreUnavailable(f"enable WAL mode: got {mode!r}")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, no fsync per batch
        db.executescript(_TABLE + (_INDEXES if path else ""))
        have = {row[1] for row in db.execute("PRAGMA table_info(activity)")}
        for name, decl in _EXTRA_COLUMNS:
            if name not in have:
                db.execute(f"ALTER TABLE activity ADD COLUMN {name} {decl}")
        return db
    except StoreUnavailable:
        db.close()
        raise
    except (sqlite3.Error, OSError) as e:
        db.close()
        raise StoreUnavailable(str(e)) from None


class SqliteStore:
    def __init__(self, path: str | None = None, max_entries: int = DEFAULT_MAX_ENTRIES, *,
                 warn: Callable[[str], None] | None = None, busy_timeout: float = BUSY_TIMEOUT):
        self.max_entries = max_entries if max_entries > 0 else DEFAULT_MAX_ENTRIES
        self._warn = warn
        self._busy_timeout = busy_timeout
        self._db_lock = threading.Lock()  # the connection; taken before _lock, never after
        self._lock = threading.Lock()  # pending rows
        self._closed = False
        self.path = path or None
        self._pending = self._new_pending()
        self._db: sqlite3.Connection | None = None  # memory: opened with the first row
        self._next_id = 0
        if self.path is not None:
            try:
                self._db = _connect(self.path, busy_timeout)
            except StoreUnavailable as e:
                self._db = self._memory_instead(str(e), None)
            self._next_id = self._first_free_id()

    @property
    def in_memory(self) -> bool:
        return self.path is None

    def _new_pending(self, rows=()) -> deque[ActivityEntry]:
        """Rows not written yet: in memory, only the newest max_entries are worth writing."""
        return deque(rows, maxlen=self.max_entries if self.path is None else None)

    def set_max_entries(self, max_entries: int) -> None:
        with self._lock:
            self.max_entries = max_entries if max_entries > 0 else DEFAULT_MAX_ENTRIES
            self._pending = self._new_pending(self._pending)

    # ---- writing

    def reserve_id(self) -> int:
        entry_id = self._next_id
        self._next_id += 1
        return entry_id

    def append(self, entry: ActivityEntry) -> None:
        with self._lock:
            self._pending.append(entry)
            first = len(self._pending) == 1 and self.path is not None
        if first:
            _WRITER.schedule(self)

    def flush(self) -> None:
        """Write every pending row now (the writer thread, and every read, call this)."""
        with self._db_lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        with self._lock:
            batch = list(self._pending)
            self._pending.clear()
        if not batch or self._closed:
            return
        try:
            self._write(batch)
        except (sqlite3.Error, OSError) as e:
            if self.path is None:
                raise
            self._fall_back(e)
            self._write(batch)

    def _conn(self) -> sqlite3.Connection:
        """The connection (with _db_lock held); a memory database is made on first use."""
        if self._db is None:
            self._db = _connect(None, self._busy_timeout)
        return self._db

    def _write(self, batch: list[ActivityEntry]) -> None:
        db = self._conn()
        db.execute("BEGIN")
        try:
            db.executemany(_INSERT, [_row(e) for e in batch])
            if self.path is None:  # memory: the newest max_entries rows (ids only grow)
                db.execute("DELETE FROM activity WHERE id <= ?",
                           (batch[-1].id - self.max_entries,))
            db.execute("COMMIT")
        except BaseException:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise

    # ---- reading

    def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._db_lock:
            self._flush_locked()
            try:
                return fn(self._conn())
            except (sqlite3.Error, OSError) as e:
                if self.path is None:
                    raise
                self._fall_back(e)
                return fn(self._conn())

    def recent(self, n: int) -> list[ActivityEntry]:
        rows = self._read(lambda db: db.execute(
            _SELECT + " ORDER BY id DESC LIMIT ?", (max(n, 0),)).fetchall())
        return [_entry(r) for r in reversed(rows)]

    def page(self, q: ActivityQuery) -> tuple[list[ActivityEntry], int]:
        where, args = _where(q.models, q.start, q.end, q.min_id, q.max_id, q.keys)
        column = SORT_COLUMNS.get(q.sort, "id")
        direction = "ASC" if q.order == "asc" else "DESC"
        order = f" ORDER BY id {direction}" if column == "id" else \
            f" ORDER BY {column} {direction}, id {direction}"

        def run(db: sqlite3.Connection) -> tuple[list, int]:
            total = db.execute("SELECT COUNT(*) FROM activity" + where, args).fetchone()[0]
            rows = db.execute(_SELECT + where + order + " LIMIT ? OFFSET ?",
                              args + [q.limit, q.offset]).fetchall()
            return rows, total

        rows, total = self._read(run)
        return [_entry(r) for r in rows], total

    def stats(self, model: str = "") -> dict:
        """total_requests, total_input_tokens, total_output_tokens, total_cache_tokens (only
        positive counts) and the positive speeds (prompt, gen) of the rows of ``model`` (all
        rows when empty)."""
        where, args = _where((model.strip(),) if model.strip() else (), None, None, 0, 0)
        speeds = (where + " AND" if where else " WHERE") + \
            " (prompt_per_second > 0 OR tokens_per_second > 0)"

        def run(db: sqlite3.Connection) -> tuple:
            totals = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0),"
                " COALESCE(SUM(CASE WHEN cache_tokens > 0 THEN cache_tokens ELSE 0 END), 0)"
                " FROM activity" + where, args).fetchone()
            rows = db.execute("SELECT prompt_per_second, tokens_per_second FROM activity"
                              + speeds, args).fetchall()
            return totals, rows

        totals, rows = self._read(run)
        return {"total_requests": totals[0], "total_input_tokens": totals[1],
                "total_output_tokens": totals[2], "total_cache_tokens": totals[3],
                "prompt_speeds": [p for p, _ in rows if p > 0],
                "gen_speeds": [g for _, g in rows if g > 0]}

    def speed(self, q: ActivityQuery, buckets: int) -> dict:
        """The mean generation speed of q's rows (models, keys, start, end; rows without a
        speed left out) per model and time bucket, computed in SQL so any range of any store
        answers in a few points. The window is [q.start, q.end] (unix seconds, as rows are
        matched); an open bound is the oldest / newest matching row. Buckets are whole
        seconds of ``ts_created`` (when a request finished), at most ``buckets`` of them.
        ``{"start", "end", "bucket_s", "count", "series": [{"model", "points": [[t, mean,
        n], ...]}]}`` with ``t`` the middle of its bucket."""
        where, args = _where(q.models, q.start, q.end, 0, 0, q.keys)
        where += (" AND" if where else " WHERE") + " tokens_per_second > 0"

        def run(db: sqlite3.Connection) -> tuple:
            lo, hi, count = db.execute("SELECT MIN(ts_created), MAX(ts_created), COUNT(*)"
                                       " FROM activity" + where, args).fetchone()
            start = q.start if q.start is not None else (lo if lo is not None else q.end)
            end = q.end if q.end is not None else (hi if hi is not None else start)
            if start is None:  # nothing matches and no bound was given
                return 0, 0, 1, 0, []
            size = max(1, -(-(end - start + 1) // max(1, buckets)))
            rows = db.execute(
                "SELECT model_id, (ts_created - ?) / ? AS b, AVG(tokens_per_second), COUNT(*)"
                " FROM activity" + where + " GROUP BY model_id, b ORDER BY model_id, b",
                [start, size] + args).fetchall()
            return start, end, size, count, rows

        start, end, size, count, rows = self._read(run)
        series: dict[str, list] = {}
        for model, b, mean, n in rows:
            series.setdefault(model, []).append([start + (b + 0.5) * size, round(mean, 3), n])
        return {"start": start, "end": end, "bucket_s": size, "count": count,
                "series": [{"model": m, "points": p} for m, p in series.items()]}

    def close(self) -> None:
        _WRITER.forget(self)
        with self._db_lock:
            if self.path is not None:
                self._flush_locked()
            self._closed = True
            try:
                if self._db is not None:
                    self._db.close()
            except sqlite3.Error:
                pass

    # ---- the file failed

    def _first_free_id(self) -> int:
        with self._db_lock:
            try:
                top = self._db.execute("SELECT MAX(id) FROM activity").fetchone()[0]
                seq = self._db.execute(
                    "SELECT seq FROM sqlite_sequence WHERE name = 'activity'").fetchone()
            except (sqlite3.Error, OSError) as e:
                self._db = self._memory_instead(str(e), self._db)
                return 0
        return max(top if top is not None else -1, seq[0] if seq else -1) + 1

    def _fall_back(self, error: Exception) -> None:
        """Called with _db_lock held: go on in memory, after one warning."""
        self._db = self._memory_instead(str(error), self._db)

    def _memory_instead(self, error: str, old: sqlite3.Connection | None) -> sqlite3.Connection:
        path, self.path = self.path, None
        with self._lock:
            self._pending = self._new_pending(self._pending)
        if self._warn is not None:
            self._warn(f"activity store {path} unavailable ({error}); keeping activity in memory "
                       f"(the newest {self.max_entries} requests), nothing more is saved to "
                       f"that file")
        db = _connect(None, self._busy_timeout)
        if old is not None:
            try:  # the newest rows the file can still give, so the history does not go blank
                rows = old.execute(_SELECT + " ORDER BY id DESC LIMIT ?",
                                   (self.max_entries,)).fetchall()
                db.executemany(_INSERT.replace("INSERT", "INSERT OR REPLACE", 1), rows)
            except (sqlite3.Error, OSError):
                pass
            try:
                old.close()
            except sqlite3.Error:
                pass
        return db


def _where(models, start, end, min_id, max_id, keys=()) -> tuple[str, list]:
    conditions: list[str] = []
    args: list[Any] = []
    if models:
        conditions.append(f"model_id IN ({', '.join('?' * len(models))})")
        args.extend(models)
    if keys:
        conditions.append(f"key_name IN ({', '.join('?' * len(keys))})")
        args.extend(keys)
    if start is not None:
        conditions.append("ts_created >= ?")
        args.append(start)
    if end is not None:
        conditions.append("ts_created <= ?")
        args.append(end)
    if min_id > 0:
        conditions.append("id >= ?")
        args.append(min_id)
    if max_id > 0:
        conditions.append("id <= ?")
        args.append(max_id)
    return (" WHERE " + " AND ".join(conditions) if conditions else ""), args


class _Writer:
    """One thread for every store in the process: a store with pending rows schedules itself
    (once per batch, so a request never wakes a thread of its own) and the thread writes them
    BATCH_DELAY later."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dirty: dict[int, SqliteStore] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def schedule(self, store: SqliteStore) -> None:
        with self._lock:
            self._dirty[id(store)] = store
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="activity-writer",
                                                daemon=True)
                self._thread.start()
        self._wake.set()

    def forget(self, store: SqliteStore) -> None:
        with self._lock:
            self._dirty.pop(id(store), None)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(BATCH_DELAY)
            self._wake.clear()
            with self._lock:
                stores, self._dirty = list(self._dirty.values()), {}
            for store in stores:
                try:
                    store.flush()
                except Exception:  # a store that cannot even fall back: drop, never die
                    pass


_WRITER = _Writer()
