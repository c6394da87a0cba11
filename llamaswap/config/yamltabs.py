"""Tabs where yaml.v3 allows them, for PyYAML's pure-Python scanner.

Upstream's yaml.v3 scans like libyaml: a tab is separation whitespace inside a line (after
``key:``, between words of a plain scalar such as ``cmd: python3<TAB>-m x``, before a
comment, in flow collections, after a block scalar's header), and only indentation may not
use tabs. PyYAML's C loader (libyaml) agrees; its pure-Python scanner, which the zipapp
uses, refuses every such tab with ``found character '\\t' that cannot start any token``.
These overrides give the pure scanner libyaml's rules and keep its errors for tabs used as
indentation. ``tests/test_config_yaml_tabs.py`` checks the two scanners against each other.
"""

from __future__ import annotations

from yaml.scanner import ScannerError

_BREAKS = "\r\n\x85\u2028\u2029"
_END = "\0" + _BREAKS


class GoTabsScanner:
    """Mix in before ``yaml.SafeLoader``; the C loaders never call these methods."""

    def scan_to_next_token(self) -> None:
        # libyaml eats a tab where no simple key may start (after a scalar, after a simple
        # key's ':') and everywhere in flow context; elsewhere a tab would be indentation
        if self.index == 0 and self.peek() == "\uFEFF":
            self.forward()
        while True:
            while self.peek() == " " or (self.peek() == "\t"
                                         and (self.flow_level or not self.allow_simple_key)):
                self.forward()
            if self.peek() == "#":
                while self.peek() not in _END:
                    self.forward()
            if not self.scan_line_break():
                return
            if not self.flow_level:
                self.allow_simple_key = True

    def scan_plain_spaces(self, indent, start_mark):
        chunks = []
        length = 0
        while self.peek(length) in " \t":
            length += 1
        whitespaces = self.prefix(length)
        self.forward(length)
        if self.peek() not in _BREAKS:
            if whitespaces:
                chunks.append(whitespaces)
            return chunks
        line_break = self.scan_line_break()
        self.allow_simple_key = True
        if self._at_document_marker():
            return None
        breaks = []
        while self.peek() in " \t" + _BREAKS:
            ch = self.peek()
            if ch == " ":
                self.forward()
            elif ch == "\t":
                if self.column < indent:
                    raise ScannerError("while scanning a plain scalar", start_mark,
                                       "found a tab character that violates indentation",
                                       self.get_mark())
                self.forward()
            else:
                breaks.append(self.scan_line_break())
                if self._at_document_marker():
                    return None
        if line_break != "\n":
            chunks.append(line_break)
        elif not breaks:
            chunks.append(" ")
        chunks.extend(breaks)
        return chunks

    def _at_document_marker(self) -> bool:
        return self.prefix(3) in ("---", "...") and self.peek(3) in "\0 \t" + _BREAKS

    def scan_block_scalar_indicators(self, start_mark):
        # PyYAML's, except that a tab or a comment may follow the header at once ("|<TAB>", "|#")
        chomping = increment = None
        while True:
            ch = self.peek()
            if ch in "+-" and chomping is None:
                chomping = ch == "+"
            elif ch in "0123456789" and increment is None:
                if ch == "0":
                    raise ScannerError("while scanning a block scalar", start_mark,
                                       "expected indentation indicator in the range 1-9, but found 0",
                                       self.get_mark())
                increment = int(ch)
            else:
                break
            self.forward()
        if ch not in " \t#" + _END:
            raise ScannerError("while scanning a block scalar", start_mark,
                               f"expected chomping or indentation indicators, but found {ch!r}",
                               self.get_mark())
        return chomping, increment

    # yaml.v3 refuses a tab where a block scalar's indentation is still being read (PyYAML
    # would take it as content): keep the two loaders' answers the same
    def scan_block_scalar_indentation(self):
        found = super().scan_block_scalar_indentation()
        self._no_indent_tab(None)
        return found

    def scan_block_scalar_breaks(self, indent):
        found = super().scan_block_scalar_breaks(indent)
        self._no_indent_tab(indent)
        return found

    def _no_indent_tab(self, indent) -> None:
        if self.peek() == "\t" and (indent is None or self.column < indent):
            raise ScannerError("while scanning a block scalar", None,
                               "found a tab character where an indentation space is expected",
                               self.get_mark())

    def scan_block_scalar_ignored_line(self, start_mark):
        self._skip_tabs()
        return super().scan_block_scalar_ignored_line(start_mark)

    def scan_directive_ignored_line(self, start_mark):
        self._skip_tabs()
        return super().scan_directive_ignored_line(start_mark)

    def _skip_tabs(self) -> None:
        while self.peek() in " \t":
            self.forward()
