"""The config watcher against real files: each poll is driven by the test, no sleeping."""

from __future__ import annotations

import os
import threading

from llamaswap.ops.watcher import ConfigWatcher


class Counter:
    def __init__(self):
        self.n = 0
        self.event = threading.Event()

    def __call__(self):
        self.n += 1
        self.event.set()


def set_mtime(path, ns):
    os.utime(path, ns=(ns, ns))


T0 = 1_000_000_000_000_000_000  # a fixed mtime, so only the change under test differs


def watching(path, text="a: 1\n", mtime=T0):
    """`path` written with `text` at `mtime`, and a watcher that has taken its baseline."""
    path.write_text(text)
    set_mtime(path, mtime)
    hits = Counter()
    w = ConfigWatcher(str(path), hits)
    w.poll()
    return w, hits


def test_baseline_never_fires_and_unchanged_file_stays_quiet(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("models: {}\n")
    hits = Counter()
    w = ConfigWatcher(str(cfg), hits)
    assert w.poll() is False  # baseline
    assert w.poll() is False
    assert hits.n == 0


def test_mtime_change_fires_once(tmp_path):
    cfg = tmp_path / "config.yaml"
    w, hits = watching(cfg)
    set_mtime(cfg, T0 + 2_000_000_000)
    assert w.poll() is True
    assert w.poll() is False
    assert hits.n == 1


def test_size_change_with_same_mtime_fires(tmp_path):
    cfg = tmp_path / "config.yaml"
    w, hits = watching(cfg)
    cfg.write_text("a: 12\n")
    set_mtime(cfg, T0)
    assert w.poll() is True and hits.n == 1


def test_symlink_target_swap_fires_even_with_same_size_and_mtime(tmp_path):
    # the Kubernetes ConfigMap layout: config.yaml -> ..data/config.yaml, ..data -> ..v1
    for v in ("..v1", "..v2"):
        (tmp_path / v).mkdir()
        (tmp_path / v / "config.yaml").write_text("a: 1\n")  # same size
        set_mtime(tmp_path / v / "config.yaml", T0)  # same mtime
    os.symlink("..v1", tmp_path / "..data")
    os.symlink("..data/config.yaml", tmp_path / "config.yaml")
    hits = Counter()
    w = ConfigWatcher(str(tmp_path / "config.yaml"), hits)
    w.poll()
    os.symlink("..v2", tmp_path / "..data_tmp")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")  # atomic swap
    assert w.poll() is True and hits.n == 1
    assert w.poll() is False


def test_missing_then_back_fires_on_reappearance_only(tmp_path):
    cfg = tmp_path / "config.yaml"
    w, hits = watching(cfg)
    cfg.unlink()
    assert w.poll() is False  # vanishing is silent
    assert w.poll() is False
    cfg.write_text("a: 1\n")
    assert w.poll() is True and hits.n == 1


def test_missing_at_start_fires_when_it_appears(tmp_path):
    cfg = tmp_path / "config.yaml"
    hits = Counter()
    w = ConfigWatcher(str(cfg), hits)
    assert w.poll() is False
    cfg.write_text("a: 1\n")
    assert w.poll() is True


def test_atomic_rename_save_fires(tmp_path):
    cfg = tmp_path / "config.yaml"
    w, hits = watching(cfg)
    tmp = tmp_path / ".config.yaml.swp"
    tmp.write_text("a: 2\n")
    set_mtime(tmp, T0)
    os.replace(tmp, cfg)  # new inode, same size and mtime
    assert w.poll() is True


def test_relative_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text("x")
    w = ConfigWatcher("c.yaml", Counter())
    assert w.path == str(tmp_path / "c.yaml")


def test_a_failing_callback_does_not_stop_watching(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("a: 1\n")
    calls = []

    def boom():
        calls.append(1)
        raise RuntimeError("bad")

    class Log:
        def __init__(self):
            self.errors = []

        def error(self, m):
            self.errors.append(m)

        def warn(self, m):
            pass

    log = Log()
    w = ConfigWatcher(str(cfg), boom, log=log)
    w.poll()
    cfg.write_text("a: 22\n")
    assert w.poll() is True
    cfg.write_text("a: 333\n")
    assert w.poll() is True
    assert len(calls) == 2 and "reload failed" in log.errors[0]


def test_thread_notices_a_change(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("a: 1\n")
    hits = Counter()
    w = ConfigWatcher(str(cfg), hits, interval=0.02).start()
    try:
        cfg.write_text("a: 12345\n")
        assert hits.event.wait(10)
    finally:
        w.stop()


def test_also_watches_what_the_callable_returns_with_or_without_a_file(tmp_path):
    """-models-dir: the folder's listing is polled beside the config file, or alone."""
    listing = ["a.gguf"]
    for path in (None, tmp_path / "config.yaml"):
        if path is not None:
            path.write_text("models: {}\n")
        hits = Counter()
        w = ConfigWatcher(path and str(path), hits, also=lambda: tuple(listing))
        assert w.poll() is False  # baseline
        assert w.poll() is False
        listing.append("b.gguf")
        assert w.poll() is True and hits.n == 1
        assert w.poll() is False
