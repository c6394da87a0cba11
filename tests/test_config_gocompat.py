"""Go formatting/parsing rules that show up in config values and error texts."""

import pytest

from llamaswap.config.gocompat import (
    format_go_duration,
    go_format_float,
    go_quote,
    go_quote_rune,
    parse_go_duration,
    url_parse_error,
)
from llamaswap.config.yamlio import resolve_plain


@pytest.mark.parametrize("value, text", [
    (0.7, "0.7"), (2.0, "2"), (100000.0, "100000"), (1e20, "100000000000000000000"), (1e21, "1e+21"),
    (1.5e-5, "1.5e-05"), (0.0001, "0.0001"), (-3.25, "-3.25"), (123456789.125, "123456789.125"),
])
def test_float_formatting_matches_go_percent_v(value, text):
    assert go_format_float(value) == text


@pytest.mark.parametrize("text, ns", [
    ("15s", 15 * 10**9), ("1m30s", 90 * 10**9), ("1.5h", 5400 * 10**9), ("300ms", 3 * 10**8),
    ("-5s", -5 * 10**9), ("0", 0), ("2h10s", 7210 * 10**9), ("1us", 1000), ("1µs", 1000),
])
def test_parse_duration(text, ns):
    assert parse_go_duration(text) == ns


@pytest.mark.parametrize("text", ["", "5", "s", "1x", "1.5", "--1s", "1s ", "1 s"])
def test_parse_duration_rejects(text):
    assert parse_go_duration(text) is None


@pytest.mark.parametrize("ns, text", [
    (4 * 10**9, "4s"), (60 * 10**9, "1m0s"), (90 * 10**9, "1m30s"), (3600 * 10**9, "1h0m0s"),
    (500 * 10**6, "500ms"), (1500 * 10**6, "1.5s"), (-60 * 10**9, "-1m0s"), (0, "0s"), (1500, "1.5µs"),
])
def test_format_duration(ns, text):
    assert format_go_duration(ns) == text


def test_quote():
    assert go_quote('a"b\\c\n') == '"a\\"b\\\\c\\n"'
    assert go_quote_rune("!") == "'!'" and go_quote_rune("'") == "'\\''"


@pytest.mark.parametrize("url, error", [
    ("http://localhost:8080", None), ("https://openrouter.ai/api", None), ("http://[::1]:80/x", None),
    ("localhost:8080", None),  # Go parses this as scheme "localhost"
    ("/relative/path", None), ("", None),
    ("://invalid", 'parse "://invalid": missing protocol scheme'),
    ("http://[::1", "parse \"http://[::1\": missing ']' in host"),
    ("http://h:port", 'parse "http://h:port": invalid port ":port" after host'),
    ("http://h/%zz", 'parse "http://h/%zz": invalid URL escape "%zz"'),
    ("http://h/\x01", 'parse "http://h/\\x01": net/url: invalid control character in URL'),
    ("1http:x", 'parse "1http:x": first path segment in URL cannot contain colon'),
])
def test_url_parse_errors(url, error):
    assert url_parse_error(url) == error


@pytest.mark.parametrize("text, tag, value", [
    ("yes", "!!str", "yes"), ("True", "!!bool", True), ("~", "!!null", None), ("12", "!!int", 12),
    ("-0x1F", "!!int", -31), ("0b101", "!!int", 5), ("0o17", "!!int", 15), ("017", "!!int", 15),
    ("08", "!!float", 8.0), ("1e3", "!!float", 1000.0), (".5", "!!float", 0.5), ("1_000", "!!int", 1000),
    ("1:30", "!!str", "1:30"), ("2024-01-02", "!!timestamp", "2024-01-02"), ("-", "!!str", "-"),
    ("+.inf", "!!float", float("inf")), ("0x", "!!str", "0x"),
])
def test_plain_scalars_resolve_like_yaml_v3(text, tag, value):
    assert resolve_plain(text) == (tag, value)
