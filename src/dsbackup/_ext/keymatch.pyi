"""Key glob matching (docs/PATTERNS.md). See ext/keymatch.pyx."""

from collections.abc import Sequence

from typing_extensions import Buffer

class KeyMatcher:
    patterns: tuple[bytes, ...]
    def __init__(self, patterns: Sequence[str | bytes]) -> None: ...
    def match(self, key: Buffer) -> bool: ...
