"""Fixtures for the datastore tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ds_backends import BACKENDS, Store, make_store


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path) -> Iterator[Store]:
    s = make_store(request.param, tmp_path)
    try:
        yield s
    finally:
        s.ds.close()
