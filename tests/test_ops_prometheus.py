"""/metrics text, checked by a strict parser of the Prometheus text format (0.0.4)."""

from __future__ import annotations

import math
import os
import re
from datetime import datetime
from types import SimpleNamespace

import pytest

from llamaswap.ops.activity import ActivityEntry, TokenMetrics
from llamaswap.ops.events import ActivityRecorded, EventBus, SwapFinished
from llamaswap.ops.inflight import InFlightTable
from llamaswap.ops.prometheus import (RequestMetrics, SystemSampler, escape_label, render)

from helpers import wait_until

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


class ParseError(AssertionError):
    pass


def parse_value(text: str) -> float:
    if text in ("+Inf", "Inf"):
        return math.inf
    if text == "-Inf":
        return -math.inf
    if text == "NaN":
        return math.nan
    if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", text):
        raise ParseError(f"bad value {text!r}")
    return float(text)


def parse_labels(s: str, i: int) -> tuple[dict[str, str], int]:
    """s[i] == '{'; returns labels and the index after '}'."""
    labels: dict[str, str] = {}
    i += 1
    while True:
        if s[i] == "}":
            return labels, i + 1
        m = LABEL_NAME.match(s, i)
        if not m:
            raise ParseError(f"bad label name at {s[i:]!r}")
        name = m.group()
        i = m.end()
        if s[i:i + 2] != '="':
            raise ParseError(f"expected =\" after {name}")
        i += 2
        value = []
        while True:
            c = s[i]
            if c == "\\":
                nxt = s[i + 1]
                if nxt not in ('\\', '"', 'n'):
                    raise ParseError(f"bad escape \\{nxt}")
                value.append("\n" if nxt == "n" else nxt)
                i += 2
            elif c == '"':
                i += 1
                break
            elif c == "\n":
                raise ParseError("raw newline in label value")
            else:
                value.append(c)
                i += 1
        if name in labels:
            raise ParseError(f"duplicate label {name}")
        labels[name] = "".join(value)
        if s[i] == ",":
            i += 1
        elif s[i] != "}":
            raise ParseError(f"expected , or }} at {s[i:]!r}")


def strict_parse(text: str) -> dict[str, dict]:
    """{family: {"type", "help", "samples": [(name, labels, value)]}}; raises on anything a
    strict scraper would reject, and on our own conventions (prefix, _total, contiguity)."""
    if text and not text.endswith("\n"):
        raise ParseError("body must end with a newline")
    families: dict[str, dict] = {}
    current = None
    seen_series = set()
    finished = set()
    for line in text.split("\n")[:-1]:
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            if not NAME.fullmatch(name) or not help_text:
                raise ParseError(f"bad HELP line {line!r}")
            fam = families.setdefault(name, {"samples": []})
            if "help" in fam:
                raise ParseError(f"second HELP for {name}")
            fam["help"] = help_text
            continue
        if line.startswith("# TYPE "):
            parts = line[7:].split(" ")
            if len(parts) != 2 or parts[1] not in TYPES or not NAME.fullmatch(parts[0]):
                raise ParseError(f"bad TYPE line {line!r}")
            fam = families.setdefault(parts[0], {"samples": []})
            if "type" in fam or fam["samples"]:
                raise ParseError(f"TYPE for {parts[0]} repeated or after its samples")
            fam["type"] = parts[1]
            if current is not None:
                finished.add(current)
            current = parts[0]
            continue
        if line.startswith("#") or not line.strip():
            raise ParseError(f"unexpected line {line!r}")
        m = NAME.match(line)
        if not m:
            raise ParseError(f"bad sample line {line!r}")
        name = m.group()
        i = m.end()
        labels: dict[str, str] = {}
        if i < len(line) and line[i] == "{":
            labels, i = parse_labels(line, i)
        if line[i:i + 1] != " ":
            raise ParseError(f"expected a space before the value in {line!r}")
        value = parse_value(line[i + 1:].split(" ")[0])
        fam_name = name
        if current and name != current and name.startswith(current) and \
                families[current].get("type") == "histogram":
            fam_name = current
            if name[len(current):] not in ("_bucket", "_sum", "_count"):
                raise ParseError(f"bad histogram sample {name}")
        if fam_name != current:
            raise ParseError(f"sample {name} outside its family block (current {current})")
        if fam_name in finished:
            raise ParseError(f"family {fam_name} is not contiguous")
        key = (name, tuple(sorted(labels.items())))
        if key in seen_series:
            raise ParseError(f"duplicate series {key}")
        seen_series.add(key)
        families[fam_name]["samples"].append((name, labels, value))
    for name, fam in families.items():
        if "type" not in fam or "help" not in fam:
            raise ParseError(f"{name} lacks HELP or TYPE")
        if not name.startswith("llamaswap_"):
            raise ParseError(f"{name} lacks the llamaswap_ prefix")
        if fam["type"] == "counter" and not name.endswith("_total"):
            raise ParseError(f"counter {name} must end in _total")
        if "duration" in name and not name.endswith("_seconds"):
            raise ParseError(f"duration {name} must be in seconds")
        if fam["type"] == "histogram":
            check_histogram(name, fam["samples"])
    return families


def check_histogram(name: str, samples) -> None:
    series: dict[tuple, dict] = {}
    for sname, labels, value in samples:
        base = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        s = series.setdefault(base, {"buckets": []})
        if sname.endswith("_bucket"):
            if "le" not in labels:
                raise ParseError(f"{sname} without le")
            s["buckets"].append((parse_value(labels["le"]), value))
        else:
            s[sname[len(name):]] = value
    for base, s in series.items():
        bounds = [b for b, _ in s["buckets"]]
        counts = [c for _, c in s["buckets"]]
        if bounds != sorted(bounds) or bounds[-1] != math.inf:
            raise ParseError(f"{name}{base}: buckets out of order or no +Inf")
        if counts != sorted(counts):
            raise ParseError(f"{name}{base}: buckets not cumulative")
        if counts[-1] != s.get("_count"):
            raise ParseError(f"{name}{base}: +Inf bucket != _count")
        if "_sum" not in s:
            raise ParseError(f"{name}{base}: no _sum")


def value_of(fams, name, **labels):
    family = name if name in fams else re.sub(r"_(bucket|sum|count)$", "", name)
    for sname, l, v in fams[family]["samples"]:
        if sname == name and l == labels:
            return v
    raise KeyError((name, labels))


# ---- the parser itself must reject what Prometheus rejects ------------------------------------

@pytest.mark.parametrize("bad", [
    'llamaswap_x_total 1\n',  # no TYPE/HELP
    '# HELP llamaswap_x a\n# TYPE llamaswap_x gauge\nllamaswap_x{m="a\\q"} 1\n',  # bad escape
    '# HELP llamaswap_x a\n# TYPE llamaswap_x gauge\nllamaswap_x{m="a"} 1\nllamaswap_x{m="a"} 2\n',
    '# HELP llamaswap_x a\n# TYPE llamaswap_x counter\nllamaswap_x 1\n',  # counter w/o _total
    '# HELP llamaswap_x a\n# TYPE llamaswap_x gauge\nllamaswap_x one\n',
    '# HELP x a\n# TYPE x gauge\nx 1\n',  # prefix
    '# HELP llamaswap_x a\n# TYPE llamaswap_x gauge\nllamaswap_x 1',  # no final newline
])
def test_strict_parser_rejects(bad):
    with pytest.raises(ParseError):
        strict_parse(bad)


# ---- our output ------------------------------------------------------------------------------

WEIRD = 'we"ird\\model\nid'


class FakeProcess:
    def __init__(self, state, pid=None):
        self.state = SimpleNamespace(value=state)
        self.pid = pid


def entry(model, status=200, inp=10, out=5, cached=-1, ms=1500):
    return ActivityEntry(id=0, timestamp=datetime.now().astimezone(), model=model,
                         req_path="/v1/chat/completions", resp_content_type="application/json",
                         resp_status_code=status,
                         tokens=TokenMetrics(cached, inp, out, -1, -1), duration_ms=ms)


def make_app():
    inflight = InFlightTable()
    inflight.enter("m1")
    inflight.enter("m1")
    return SimpleNamespace(
        processes={"m1": FakeProcess("ready", os.getpid()), "m2": FakeProcess("stopped"),
                   WEIRD: FakeProcess("starting")},
        inflight=inflight,
        router=SimpleNamespace(queue_length=lambda: 3))


def test_full_exposition_is_strictly_valid():
    rm = RequestMetrics()
    rm.handle(ActivityRecorded(entry("m1")))
    rm.handle(ActivityRecorded(entry("m1", inp=7, out=3, cached=4, ms=40)))
    rm.handle(ActivityRecorded(entry("m1", status=500, inp=0, out=0, ms=2)))
    rm.handle(ActivityRecorded(entry(WEIRD, ms=400_000)))
    rm.handle(SwapFinished("m1", 1.7, True))
    rm.handle(SwapFinished("m1", 0.2, False))
    text = render(make_app(), rm, SystemSampler(), build=("0.1.0", "abc", "unknown"))
    fams = strict_parse(text)

    assert value_of(fams, "llamaswap_requests_total", model="m1", status="200", key="-") == 2
    assert value_of(fams, "llamaswap_requests_total", model="m1", status="500", key="-") == 1
    assert value_of(fams, "llamaswap_input_tokens_total", model="m1") == 17
    assert value_of(fams, "llamaswap_output_tokens_total", model="m1") == 8
    assert value_of(fams, "llamaswap_cached_tokens_total", model="m1") == 4  # -1 is "unknown"
    assert value_of(fams, "llamaswap_request_duration_seconds_count", model="m1") == 3
    assert value_of(fams, "llamaswap_request_duration_seconds_sum", model="m1") == pytest.approx(1.542)
    assert value_of(fams, "llamaswap_request_duration_seconds_bucket", model="m1", le="0.05") == 2
    assert value_of(fams, "llamaswap_request_duration_seconds_bucket", model=WEIRD, le="300") == 0
    assert value_of(fams, "llamaswap_request_duration_seconds_bucket", model=WEIRD, le="+Inf") == 1
    assert value_of(fams, "llamaswap_model_loads_total", model="m1", result="success") == 1
    assert value_of(fams, "llamaswap_model_loads_total", model="m1", result="failure") == 1
    assert value_of(fams, "llamaswap_model_load_duration_seconds_count", model="m1") == 1
    assert value_of(fams, "llamaswap_model_state", model="m1", state="ready") == 1
    assert value_of(fams, "llamaswap_model_state", model="m1", state="stopped") == 0
    assert value_of(fams, "llamaswap_model_state", model=WEIRD, state="starting") == 1
    assert value_of(fams, "llamaswap_inflight_requests") == 2
    assert value_of(fams, "llamaswap_model_inflight_requests", model="m1") == 2
    assert value_of(fams, "llamaswap_queue_length") == 3
    assert value_of(fams, "llamaswap_model_resident_memory_bytes", model="m1") > 0
    assert value_of(fams, "llamaswap_process_resident_memory_bytes") > 0
    assert fams["llamaswap_process_cpu_seconds_total"]["type"] == "counter"
    assert value_of(fams, "llamaswap_build_info", version="0.1.0", commit="abc",
                    build_date="unknown") == 1
    # upstream's system gauges
    for name in ("llamaswap_cpu_util_percent", "llamaswap_memory_total_bytes",
                 "llamaswap_memory_used_bytes", "llamaswap_memory_free_bytes",
                 "llamaswap_swap_total_bytes", "llamaswap_swap_used_bytes",
                 "llamaswap_load_average"):
        assert fams[name]["type"] == "gauge", name
    assert value_of(fams, "llamaswap_memory_total_bytes") % (1024 * 1024) == 0
    assert {l["interval"] for _, l, _ in fams["llamaswap_load_average"]["samples"]} == \
        {"1m", "5m", "15m"}
    assert 'model="we\\"ird\\\\model\\nid"' in text  # the escaping on the wire


def test_label_escaping():
    assert escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'


def test_system_sampler_from_a_fake_proc(tmp_path):
    proc = tmp_path
    (proc / "net").mkdir()

    def write_stat(user0, idle0, user1, idle1):
        (proc / "stat").write_text(
            f"cpu  {user0 + user1} 0 0 {idle0 + idle1} 0 0 0 0 0 0\n"
            f"cpu0 {user0} 0 0 {idle0} 0 0 0 0 0 0\n"
            f"cpu1 {user1} 0 0 {idle1} 0 0 0 0 0 0\nbtime 1700000000\n")

    write_stat(100, 100, 0, 200)
    (proc / "meminfo").write_text(
        "MemTotal:       16384000 kB\nMemFree:         1024000 kB\nBuffers:          102400 kB\n"
        "Cached:          2048000 kB\nSReclaimable:     204800 kB\nSwapTotal:       2048000 kB\n"
        "SwapFree:        1024000 kB\n")
    (proc / "loadavg").write_text("0.50 1.25 2.00 1/100 12345\n")
    (proc / "net" / "dev").write_text(
        "Inter-|   Receive   |  Transmit\n face |bytes packets|bytes packets\n"
        "    lo: 999 1 0 0 0 0 0 0 999 1 0 0 0 0 0 0\n"
        "  eth0: 1000 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0\n")
    sampler = SystemSampler(str(proc))
    write_stat(150, 150, 100, 200)  # core0 50% busy, core1 100% busy since the last sample
    fams = strict_parse(render(None, None, sampler, proc=str(proc)))
    assert value_of(fams, "llamaswap_cpu_util_percent", core="0") == 50
    assert value_of(fams, "llamaswap_cpu_util_percent", core="1") == 100
    mib = 1024 * 1024
    assert value_of(fams, "llamaswap_memory_total_bytes") == 16384000 * 1024 // mib * mib
    used = (16384000 - 1024000 - 102400 - 2048000 - 204800) * 1024
    assert value_of(fams, "llamaswap_memory_used_bytes") == used // mib * mib
    assert value_of(fams, "llamaswap_swap_used_bytes") == 1024000 * 1024 // mib * mib
    assert value_of(fams, "llamaswap_load_average", interval="5m") == 1.25
    assert value_of(fams, "llamaswap_network_bytes_total", interface="eth0", direction="sent") == 2000
    with pytest.raises(KeyError):
        value_of(fams, "llamaswap_network_bytes_total", interface="lo", direction="sent")


def test_no_samples_no_families():
    assert render(None, RequestMetrics(), None, proc="/nonexistent") == ""


def test_request_metrics_follow_the_bus():
    bus = EventBus()
    rm = RequestMetrics()
    rm.attach(bus)
    try:
        bus.publish(ActivityRecorded(entry("m9")))
        assert wait_until(lambda: rm.requests.get(("m9", "200", "-")) == 1)
    finally:
        rm.detach()
    bus.publish(ActivityRecorded(entry("m9")))
    assert rm.requests.get(("m9", "200", "-")) == 1
