"""Random operation sequences on every backend agree with a plain dict model."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from ds_backends import BACKENDS, make_store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsbackup.keys import Key

# the root key "/" is excluded: no mount is a strict ancestor of it (go semantics)
_names = st.text(alphabet="AB0/", min_size=1, max_size=6).filter(lambda s: s.strip("/"))
_values = st.binary(max_size=40)
_ops = st.lists(st.one_of(
    st.tuples(st.just("put"), _names, _values),
    st.tuples(st.just("delete"), _names, st.none()),
    st.tuples(st.just("batch"), st.lists(st.tuples(_names, st.one_of(st.none(), _values)),
                                         max_size=6), st.none()),
    st.tuples(st.just("put_many"), st.lists(st.tuples(_names, _values), max_size=6),
              st.none()),
), max_size=25)


@pytest.mark.parametrize("kind", BACKENDS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops, probe=_names)
def test_matches_dict_model(kind, ops, probe):
    with tempfile.TemporaryDirectory() as tmp:
        store = make_store(kind, Path(tmp))
        ds = store.ds

        def k(name: str) -> bytes:
            return Key(store.key("/" + name)).raw

        model: dict[bytes, bytes] = {}
        try:
            for op, a, b in ops:
                if op == "put":
                    ds.put(k(a), b)
                    model[k(a)] = b
                elif op == "delete":
                    ds.delete(k(a))
                    model.pop(k(a), None)
                elif op == "batch":
                    batch = ds.batch()
                    for name, v in a:
                        if v is None:
                            batch.delete(k(name))
                            model.pop(k(name), None)
                        else:
                            batch.put(k(name), v)
                            model[k(name)] = v
                    batch.commit()
                else:
                    last = {k(name): v for name, v in a}  # put_many: last write wins
                    ds.put_many(list(last), list(last.values()))
                    model.update(last)
            want = sorted(model.items())
            got = [(x, v) for ks, vs in ds.scan_batches(max_records=4) for x, v in zip(ks, vs)]
            assert got == want
            assert ds.first_key() == (want[0][0] if want else None)
            assert ds.last_key() == (want[-1][0] if want else None)
            p = k(probe)
            assert ds.seek_key(p) == next((x for x, _ in want if x >= p), None)
            assert [x for ks, _ in ds.scan_key_sizes(p) for x in ks] == [
                x for x, _ in want if x >= p]
            assert ds.is_empty() == (not want)
        finally:
            ds.close()
