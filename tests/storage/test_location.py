"""Archive locations: local paths stay Paths, s3:// parses strictly, '-' is the stream."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsbackup.errors import ConfigError
from dsbackup.storage import STREAM, S3Location, as_location, display, identity, relative_hint
from dsbackup.storage.s3config import check_endpoint


def test_local_paths_stay_paths():
    assert as_location("a/b.tar.gz") == Path("a/b.tar.gz")
    assert as_location(Path("/x")) == Path("/x")
    assert as_location("-") == STREAM and display("-") == "-"


def test_s3_locations():
    loc = as_location("s3://my-bucket/node1/full.dsb")
    assert loc == S3Location("my-bucket", "node1/full.dsb")
    assert str(loc) == "s3://my-bucket/node1/full.dsb" and loc.name == "full.dsb"
    assert loc.parent == S3Location("my-bucket", "node1/") and loc.parent.is_prefix
    assert loc.parent / "inc.dsb" == S3Location("my-bucket", "node1/inc.dsb")
    assert loc.parent / "../other/a.dsb" == S3Location("my-bucket", "other/a.dsb")
    assert S3Location("my-bucket", "top.dsb").parent == S3Location("my-bucket", "")
    assert identity(loc) == "s3://my-bucket/node1/full.dsb"
    assert relative_hint(loc, S3Location("my-bucket", "node1/inc.dsb")) == "full.dsb"
    assert relative_hint(loc, S3Location("other-bucket", "x.dsb")) is None
    assert relative_hint(loc, Path("/tmp/x.dsb")) is None
    with pytest.raises(TypeError):
        Path(loc)  # no __fspath__: never a local file named "s3:"


@pytest.mark.parametrize("bad", ["s3://", "s3:///key", "s3://AB/key", "s3://b_c_d/key",
                                 "s3://bucket//key"])
def test_bad_s3_locations_are_config_errors(bad):
    with pytest.raises(ConfigError):
        as_location(bad)


def test_endpoints():
    assert check_endpoint("https://s3.example.org")
    for ok in ("http://127.0.0.1:9000", "http://localhost:9000", "http://[::1]:9000"):
        assert check_endpoint(ok)
    for bad in ("http://10.0.0.5:9000", "ftp://x", "s3.example.org"):
        with pytest.raises(ConfigError):
            check_endpoint(bad)


def test_s3_locations_sort_like_paths():
    """lineage sorts tied parents (byte-identical twins under other names)."""
    from dsbackup.storage import S3Location

    got = sorted([S3Location("b", "n/z.dsb"), S3Location("a", "z"), S3Location("b", "n/a.dsb")])
    assert [str(x) for x in got] == ["s3://a/z", "s3://b/n/a.dsb", "s3://b/n/z.dsb"]
