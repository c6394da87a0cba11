"""Log plumbing that the request path writes through: it must never block a writer."""

from __future__ import annotations

import io
import threading

from helpers import wait_until

from llamaswap.ops.logs import LogMonitor, StdoutWriter


def test_stdout_writer_keeps_order_and_every_line():
    out = io.BytesIO()
    writer = StdoutWriter(out)
    for i in range(2000):
        writer.write(b"line %d\n" % i)
    writer.drain(timeout=10)
    assert out.getvalue().splitlines() == [b"line %d" % i for i in range(2000)]
    assert writer.dropped == 0


class StuckStream:
    """A stdout whose reader never reads: write() blocks until released."""

    def __init__(self):
        self.entered = threading.Event()
        self.release = threading.Event()
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.entered.set()
        self.release.wait()
        self.data += data

    def flush(self) -> None:
        pass


def test_a_stuck_stdout_drops_lines_instead_of_blocking_the_writer():
    stream = StuckStream()
    writer = StdoutWriter(stream, maxsize=100)
    monitor = LogMonitor("mux", sink=writer)
    monitor.write(b"first\n")
    assert stream.entered.wait(10)  # the writer thread is now stuck inside write()
    for i in range(1000):  # returns at once although nothing can be written
        monitor.write(b"more %d\n" % i)
    assert writer.dropped == 900
    assert monitor.history().endswith(b"more 999\n")  # the monitor's own history is complete
    stream.release.set()
    writer.drain(timeout=10)
    assert wait_until(lambda: bytes(stream.data).count(b"\n") == 101)
