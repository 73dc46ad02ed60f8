"""dsbackup.cli._common: the reversible escape of untrusted keys and text (issue 20, item 13)."""

from __future__ import annotations

import random

import pytest

from dsbackup.cli._common import escape_key, escape_text, fraction, unescape_key


@pytest.mark.parametrize("key, shown", [
    (b"/blocks/CIQA", "/blocks/CIQA"),
    (b"/a\x1b]0;pwned\x07", "/a\\x1b]0;pwned\\x07"),  # would retitle the terminal
    (b"/b\rforged line", "/b\\x0dforged line"),
    (b"/nl\nx", "/nl\\x0ax"),
    (b"/del\x7f", "/del\\x7f"),
    (b"/back\\slash", "/back\\\\slash"),  # the escape character itself
    (b"/\\x41", "/\\\\x41"),  # a literal \x41 is not the byte A
    (b"/\xff\xfe", "/\\xff\\xfe"),  # not UTF-8
    ("/c1\u009b31m".encode(), "/c1\\u009b31m"),  # C1 CSI
    ("/bidi\u202eevil".encode(), "/bidi\\u202eevil"),
    ("/caf\u00e9".encode(), "/caf\u00e9"),  # printable Unicode is shown as is
])
def test_escape_key(key, shown):
    assert escape_key(key) == shown
    assert unescape_key(shown) == key


def test_escape_is_reversible_and_leaves_no_control_character():
    rng = random.Random(20)
    for _ in range(20000):
        key = bytes(rng.randrange(256) for _ in range(rng.randrange(12)))
        shown = escape_key(key)
        assert unescape_key(shown) == key
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in shown), shown


def test_escape_text_for_manifest_strings():
    assert escape_text("lmdb:/x\x1b[2J") == "lmdb:/x\\x1b[2J"
    assert escape_text(42) == "42"


@pytest.mark.parametrize("text, ok", [("0", True), ("1", True), ("0.05", True), ("1.5", False),
                                      ("-0.1", False), ("nan", False), ("half", False)])
def test_fraction(text, ok):
    import argparse
    if ok:
        assert fraction(text) == float(text)
    else:
        with pytest.raises(argparse.ArgumentTypeError, match=text):
            fraction(text)


def test_messages_keep_backslashes_but_lose_control_characters():
    assert escape_text("key b'/\\xff\x1b[2J'", backslash=False) == "key b'/\\xff\\x1b[2J'"
