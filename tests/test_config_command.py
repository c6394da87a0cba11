"""cmd parsing: upstream's SanitizeCommand + Go shlex (POSIX) rules, never a shell."""

import pytest

from llamaswap.config import ConfigError
from llamaswap.config.command import split_command, strip_comments


def test_multiline_command_with_continuations_comments_and_quotes():
    # upstream config_posix_test.go :: TestConfig_SanitizeCommand
    cmd = """python model1.py \\
		-a "double quotes" \\
		--arg2 'single quotes'
		-s
		# comment 1
		--arg3 123 \\

		  # comment 2
		--arg4 '"string in string"'


		# this will get stripped out as well as the white space above
		-c "'single quoted'"
		"""
    assert split_command(cmd) == [
        "python", "model1.py", "-a", "double quotes", "--arg2", "single quotes", "-s",
        "--arg3", "123", "--arg4", '"string in string"', "-c", "'single quoted'",
    ]


@pytest.mark.parametrize("cmd, argv", [
    ('a "" b', ["a", "", "b"]),                       # "" is an empty argument
    ("a ''", ["a", ""]),
    (r'"x\$y\`z\"w\\v\n"', ['x$y`z"w\\v\\n']),        # in "...", only $ ` " \ are escapable
    (r"'a\b'", ["a\\b"]),                             # no escapes in '...'
    (r"a\ b c\"d", ['a b', 'c"d']),                   # backslash escapes outside quotes
    ("a\\\nb", ["a", "b"]),                          # a trailing backslash becomes a space
    ('"multi\\\nline"', ["multi \nline"]),           # ... even inside quotes, as upstream
    ("a\tb\nc", ["a", "b", "c"]),                     # space, tab and newline separate
    ("a\rb", ["a\rb"]),                               # \r is not whitespace (Go shlex)
    ("a # not a comment", ["a", "#", "not", "a", "comment"]),
    ("echo $HOME ~ *.gguf", ["echo", "$HOME", "~", "*.gguf"]),  # no expansion, no globbing
    ('pre"mid dle"post', ["premid dlepost"]),
    ("", []),
    ("  # only a comment\n\n", []),
])
def test_split_like_go_shlex(cmd, argv):
    assert split_command(cmd) == argv


@pytest.mark.parametrize("cmd, kind", [('a "open', "double"), ("a 'open", "single")])
def test_unclosed_quote_is_an_error(cmd, kind):
    # DIFFERENCE: upstream lets the token run to the end of the command
    with pytest.raises(ConfigError, match=f"unclosed {kind} quote"):
        split_command(cmd)


def test_strip_comments_keeps_inline_hash_and_other_lines():
    assert strip_comments("a\n  # c\nb # d\n#e") == "a\nb # d"
