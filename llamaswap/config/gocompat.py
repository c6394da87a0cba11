"""Go formatting and parsing rules that leak into upstream's config values and error texts.

Upstream builds strings with ``fmt`` verbs (``%v``, ``%q``, ``%T``) and parses durations and
URLs with the Go standard library; matching those keeps our values and messages identical.
"""

from __future__ import annotations

import math
import re
from typing import Any

# unicode.IsSpace: Latin-1 spaces plus the Unicode White_Space property (not \x1c-\x1f,
# which Python's str.isspace() also accepts).
GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


def go_is_space(ch: str) -> bool:
    return ch in GO_SPACE


def go_trim_space(s: str) -> str:
    """strings.TrimSpace."""
    return s.strip(GO_SPACE)


def go_quote(s: str) -> str:
    """fmt %q of a string: double-quoted with Go escapes."""
    out = ['"']
    for ch in s:
        code = ord(ch)
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif ch in "\a\b\f\n\r\t\v":
            out.append("\\" + "abfnrtv"["\a\b\f\n\r\t\v".index(ch)])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif not ch.isprintable() and code > 0x7F:
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def go_quote_rune(ch: str) -> str:
    """fmt %q of a rune: single-quoted."""
    if ch == "'":
        return "'\\''"
    inner = go_quote(ch)[1:-1]
    return "'" + inner.replace('\\"', '"') + "'"


def go_format_float(f: float) -> str:
    """fmt %v of a float64: shortest repr, exponent form below 1e-4 or from 1e21."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if f == 0:
        return "-0" if math.copysign(1, f) < 0 else "0"
    digits = repr(f)  # Python's repr is also the shortest round-trip representation
    mantissa, _, exp = digits.partition("e")
    sign = "-" if mantissa.startswith("-") else ""
    mantissa = mantissa.lstrip("-")
    whole, _, frac = mantissa.partition(".")
    # normalise to digit string + decimal exponent
    all_digits = (whole + frac).lstrip("0")
    point = len(whole) + (int(exp) if exp else 0)
    leading_zeros = len(whole + frac) - len((whole + frac).lstrip("0"))
    point -= leading_zeros
    all_digits = all_digits.rstrip("0") or "0"
    x = point - 1  # scientific exponent
    if x < -4 or x >= 21:
        m = all_digits[0] + ("." + all_digits[1:] if len(all_digits) > 1 else "")
        return f"{sign}{m}e{'-' if x < 0 else '+'}{abs(x):02d}"
    if point <= 0:
        return f"{sign}0.{'0' * -point}{all_digits}"
    if point >= len(all_digits):
        return sign + all_digits + "0" * (point - len(all_digits))
    return f"{sign}{all_digits[:point]}.{all_digits[point:]}"


def go_value_str(value: Any) -> str:
    """fmt %v of a decoded YAML value."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return go_format_float(value)
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(go_value_str(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_value_str(v)}" for k, v in sorted(value.items())) + "]"
    return str(value)


def go_type_name(value: Any) -> str:
    """fmt %T of a value decoded by yaml.v3 into an interface{}."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "[]interface {}"
    if isinstance(value, dict):
        return "map[string]interface {}"
    return type(value).__name__


# --- time.Duration ---------------------------------------------------------------------

_UNITS_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000,
             "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}
_DURATION_PART = re.compile(r"(\d*)(?:\.(\d*))?(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> int | None:
    """time.ParseDuration, in nanoseconds; None when Go would reject it."""
    s = text
    sign = 1
    if s[:1] in "+-" and s:
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        return None
    total = 0
    pos = 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if not m or (not m.group(1) and not m.group(2)):
            return None
        whole, frac, unit = m.group(1) or "0", m.group(2) or "", m.group(3)
        scale = _UNITS_NS[unit]
        total += int(whole) * scale
        if frac:
            total += int(int(frac) * scale / (10 ** len(frac)))
        pos = m.end()
    return sign * total


def format_go_duration(ns: int) -> str:
    """time.Duration.String()."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    u = abs(ns)
    if u < 1_000_000_000:
        for unit, scale in (("ns", 1), ("µs", 1_000), ("ms", 1_000_000)):
            if u < scale * 1000:
                return sign + _frac(u, scale) + unit
    hours, rest = divmod(u, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    out = _frac(rest, 1_000_000_000) + "s"
    if hours or minutes:
        out = f"{minutes}m" + out
    if hours:
        out = f"{hours}h" + out
    return sign + out


def go_duration(seconds: float) -> str:
    """Seconds as Go's time.Duration.String(): 5s, 2m0s, 147.909µs."""
    return format_go_duration(round(seconds * 1e9))


def _frac(value: int, scale: int) -> str:
    whole, rest = divmod(value, scale)
    if not rest:
        return str(whole)
    digits = str(rest).rjust(len(str(scale)) - 1, "0").rstrip("0")
    return f"{whole}.{digits}"


# --- net/url.Parse ---------------------------------------------------------------------

_SCHEME_CHAR = re.compile(r"[A-Za-z0-9+\-.]")


def url_parse_error(raw: str) -> str | None:
    """The error net/url.Parse gives for ``raw``, or None when it parses.

    Covers the failures a config can realistically contain: control characters, a missing
    scheme before ':', a colon in the first path segment, bad percent escapes, an unclosed
    IPv6 bracket and a non-numeric port.
    """
    def fail(msg: str) -> str:
        return f"parse {go_quote(raw)}: {msg}"

    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        return fail("net/url: invalid control character in URL")
    rest = raw.split("#", 1)[0]
    for m in re.finditer(r"%(.{0,2})", rest):
        if not re.fullmatch(r"[0-9A-Fa-f]{2}", m.group(1)):
            return fail(f"invalid URL escape {go_quote(rest[m.start():m.start() + 3])}")
    scheme = ""
    for i, c in enumerate(rest):
        if c == ":":
            if i == 0:
                return fail("missing protocol scheme")
            scheme, rest = rest[:i], rest[i + 1:]
            break
        if not _SCHEME_CHAR.match(c) or (i == 0 and not c.isalpha()):
            break
    rest = rest.split("?", 1)[0]
    if not scheme:
        first = rest.split("/", 1)[0]
        if ":" in first and not rest.startswith("/"):
            return fail("first path segment in URL cannot contain colon")
    if rest.startswith("//"):
        authority = rest[2:].split("/", 1)[0]
        host = authority.rsplit("@", 1)[-1]
        if host.startswith("["):
            end = host.find("]")
            if end < 0:
                return fail("missing ']' in host")
            port = host[end + 1:]
            if port and not port.startswith(":"):
                return fail(f"invalid port {go_quote(port)} after host")
        else:
            port = host[host.rfind(":"):] if ":" in host else ""
        if port and not port[1:].isdigit() and port != ":":
            return fail(f"invalid port {go_quote(port)} after host")
    return None


# Go's RE2 spellings that Python's re lacks or reads differently
_POSIX_CLASSES = {"alnum": "0-9A-Za-z", "alpha": "A-Za-z", "ascii": "\\x00-\\x7F", "blank": "\\t ",
                  "cntrl": "\\x00-\\x1F\\x7F", "digit": "0-9", "lower": "a-z", "space": "\\t\\n\\v\\f\\r ",
                  "upper": "A-Z", "word": "0-9A-Za-z_", "xdigit": "0-9A-Fa-f",
                  "graph": "!-~", "print": " -~", "punct": "!-/:-@\\[-`{-~"}
_POSIX_CLASS = re.compile(r"\[:(\^?)([a-z]+):\]")


def go_regexp(pattern: str) -> "re.Pattern[str]":
    """Compile a Go regexp (RE2 syntax) with Python's re: ``\\z`` and the ``[[:alpha:]]``
    classes are translated; raises re.error for a pattern neither accepts."""
    def posix(m: "re.Match[str]") -> str:
        chars = _POSIX_CLASSES.get(m.group(2))
        if chars is None or m.group(1):  # unknown, or negated (Python has no way to say it)
            raise re.error(f"invalid character class range: `{m.group(0)}`")
        return chars
    translated = re.sub(r"(?<!\\)((?:\\\\)*)\\z", r"\1\\Z", pattern)
    translated = _POSIX_CLASS.sub(posix, translated)
    return re.compile(translated)
