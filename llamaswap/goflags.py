"""Command-line parsing with the rules of Go's ``flag`` package, so upstream's flags keep working.

Go accepts ``-flag``, ``--flag``, ``-flag=value`` and ``-flag value`` (not for booleans, which
take ``-flag`` or ``-flag=<bool>``); parsing stops at the first non-flag argument or at
``--``; a repeated flag keeps its last value. Errors carry Go's exact texts.
"""

from __future__ import annotations

from dataclasses import dataclass


class FlagError(Exception):
    """A command line Go would reject: print the message and the usage, exit 2."""


class HelpRequested(Exception):
    """``-h`` / ``-help``: print the usage, exit 0."""


@dataclass(frozen=True)
class Flag:
    name: str
    usage: str
    is_bool: bool = False
    default: str | bool = ""


_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def parse(flags: list[Flag], args: list[str]) -> tuple[dict[str, str | bool], list[str]]:
    """Values for every flag (defaults filled in) and the positional arguments left over."""
    known = {f.name: f for f in flags}
    values: dict[str, str | bool] = {f.name: (bool(f.default) if f.is_bool else f.default)
                                     for f in flags}
    rest = list(args)
    while rest:
        arg = rest[0]
        if len(arg) < 2 or arg[0] != "-":
            break
        dashes = 2 if arg[1] == "-" else 1
        if arg == "--":
            rest.pop(0)
            break
        name = arg[dashes:]
        if not name or name[0] in "-=":
            raise FlagError(f"bad flag syntax: {arg}")
        rest.pop(0)
        value, has_value = "", False
        if "=" in name[1:]:
            cut = name.index("=", 1)
            name, value, has_value = name[:cut], name[cut + 1:], True
        flag = known.get(name)
        if flag is None:
            if name in ("h", "help"):
                raise HelpRequested()
            raise FlagError(f"flag provided but not defined: -{name}")
        if flag.is_bool:
            if not has_value:
                values[name] = True
            elif value in _TRUE:
                values[name] = True
            elif value in _FALSE:
                values[name] = False
            else:
                raise FlagError(f'invalid boolean value "{value}" for -{name}: parse error')
            continue
        if not has_value:
            if not rest:
                raise FlagError(f"flag needs an argument: -{name}")
            value = rest.pop(0)
        values[name] = value
    return values, rest


def usage(program: str, flags: list[Flag]) -> str:
    """Go's ``Usage of <program>:`` text with PrintDefaults' layout."""
    lines = [f"Usage of {program}:"]
    for flag in sorted(flags, key=lambda f: f.name):
        head = f"  -{flag.name}" + ("" if flag.is_bool else " string")
        text = flag.usage.replace("\n", "\n    \t")
        if not flag.is_bool and flag.default:
            text += f' (default "{flag.default}")'
        lines.append(head)
        lines.append(f"    \t{text}")
    return "\n".join(lines) + "\n"
