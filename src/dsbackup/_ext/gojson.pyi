"""Go's json.Marshal(map[string][]byte) for one chunk, GIL released. See ext/gojson.pyx."""

from collections.abc import Sequence

def go_chunk_json(keys: Sequence[bytes], values: Sequence[bytes]) -> bytes: ...
