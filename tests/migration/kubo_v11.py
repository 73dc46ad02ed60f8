"""A Kubo repository in the layout Kubo 0.8-0.11 writes (repo version 11), written by the
tests themselves (hashlib, base64, plyvel, plain files), never by the code under test.

Layout (as the committed Kubo v16 fixture and fs-repo-migrations' 11-to-12 ``repotest``):
``config``, ``datastore_spec``, ``version`` (``11\\n``), ``blocks/`` (go-ds-flatfs,
next-to-last/2: ``SHARDING``, ``_README``, ``diskUsage.cache``, ``XY/<NAME>.data`` with
NAME = base32 of the CID's bytes for CIDv1, of the multihash for CIDv0) and ``datastore/``
(a LevelDB with records at ``/``, its last writes still in the log, as a stopped daemon
leaves it).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

SPEC = {"mounts": [{"mountpoint": "/blocks", "path": "blocks",
                    "shardFunc": "/repo/flatfs/shard/v1/next-to-last/2", "type": "flatfs"},
                   {"mountpoint": "/", "path": "datastore", "type": "levelds"}],
        "type": "mount"}
DAG_PB, RAW = 0x70, 0x55


def b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=")


def b32dec(name: str) -> bytes:
    return base64.b32decode(name + "=" * (-len(name) % 8))


def sha256_mh(data: bytes) -> bytes:
    return b"\x12\x20" + hashlib.sha256(data).digest()


def dag_pb(data: bytes) -> bytes:
    """A dag-pb node holding ``data`` in its Data field (PBNode field 1)."""
    n, out = len(data), bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            break
    return b"\x0a" + bytes(out) + data


@dataclass
class V11Repo:
    path: Path
    blocks: dict[str, bytes] = field(default_factory=dict)   # flatfs NAME -> bytes
    rekeyed: dict[str, str] = field(default_factory=dict)    # CIDv1 NAME -> multihash NAME
    collision: str = ""           # the CIDv1 NAME whose multihash is also a CIDv0 block
    records: dict[bytes, bytes] = field(default_factory=dict)  # LevelDB records

    @property
    def after(self) -> dict[str, bytes]:
        """Block NAMEs and bytes after 11-to-12: every key base32(multihash)."""
        return {self.rekeyed.get(n, n): v for n, v in self.blocks.items()}

    def block_file(self, name: str) -> Path:
        return self.path / "blocks" / name[-3:-1] / f"{name}.data"


def _put_block(repo: V11Repo, name: str, data: bytes) -> None:
    f = repo.block_file(name)
    f.parent.mkdir(mode=0o755, exist_ok=True)
    f.write_bytes(data)
    os.chmod(f, 0o644)
    repo.blocks[name] = data


def make_v11_repo(path: Path, n: int = 40, seed: int = 11) -> V11Repo:
    import plyvel

    rnd = random.Random(seed)
    repo = V11Repo(path)
    path.mkdir(parents=True)
    (path / "version").write_text("11\n")
    (path / "datastore_spec").write_text(json.dumps(SPEC, separators=(",", ":")))
    cfg = {"Identity": {"PeerID": "12D3KooWTestTestTestTestTestTestTestTestTestTestTest",
                        "PrivKey": "CAESQ" + "A" * 80},
           "Datastore": {"StorageMax": "10GB", "Spec": SPEC}}
    (path / "config").write_text(json.dumps(cfg, indent=2))
    os.chmod(path / "config", 0o600)
    blocks = path / "blocks"
    blocks.mkdir(mode=0o755)
    (blocks / "SHARDING").write_text("/repo/flatfs/shard/v1/next-to-last/2\n")
    (blocks / "_README").write_text("This is a repository of IPLD objects.\n")
    for i in range(n):
        payload = rnd.randbytes(rnd.randint(1, 700))
        kind = i % 3
        data = dag_pb(payload) if kind != 2 else payload
        mh = sha256_mh(data)
        if kind == 0:
            name = b32(mh)                                           # CIDv0 (dag-pb)
        else:
            name = b32(bytes([1, DAG_PB if kind == 1 else RAW]) + mh)  # CIDv1 dag-pb / raw
            repo.rekeyed[name] = b32(mh)
        _put_block(repo, name, data)
    # the same bytes stored as a CIDv0 block and as a CIDv1 block: one multihash, two keys
    shared = dag_pb(b"added twice, once as CIDv0 and once as CIDv1")
    mh = sha256_mh(shared)
    _put_block(repo, b32(mh), shared)
    v1 = b32(b"\x01\x70" + mh)
    _put_block(repo, v1, shared)
    repo.rekeyed[v1] = b32(mh)
    repo.collision = v1
    size = sum(len(v) for v in repo.blocks.values())
    (blocks / "diskUsage.cache").write_text(
        json.dumps({"diskUsage": size, "accuracy": "initial-exact"}))
    root_cid = b"\x01\x70" + sha256_mh(b"mfs root")
    first = {b"/local/filesroot": root_cid,
             b"/pins/pin/CIQA": json.dumps({"cid": b32(mh)}).encode(),
             b"/filestore/" + b32(sha256_mh(b"filestore")).encode(): b"\x0a\x04/tmp",
             b"/ipns/keyname": rnd.randbytes(90)}
    second = {b"/local/pins": b"\x01\x71" + sha256_mh(b"pinset"),
              b"/peers/addrs/QmPeer": rnd.randbytes(40)}
    db = plyvel.DB(str(path / "datastore"), create_if_missing=True)
    for k, v in first.items():
        db.put(k, v)
    db.close()
    db = plyvel.DB(str(path / "datastore"))
    db.compact_range()  # the first records in a table file, the later ones in the log
    for k, v in second.items():
        db.put(k, v)
    db.close()
    repo.records = {**first, **second}
    return repo


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its mode, size, mtime and (files) SHA-256."""
    out: dict[str, tuple] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath, name)
            st = p.lstat()
            digest = (hashlib.sha256(p.read_bytes()).hexdigest()
                      if p.is_file() and not p.is_symlink() else None)
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size if digest else None,
                                             st.st_mtime_ns, digest)
    st = root.lstat()
    out["."] = (st.st_mode, None, st.st_mtime_ns, None)
    return out


def block_files(repo: Path) -> dict[str, bytes]:
    """Every ``*.data`` file under ``blocks/`` (relative path -> bytes)."""
    return {str(p.relative_to(repo / "blocks")): p.read_bytes()
            for p in (repo / "blocks").rglob("*.data")}


def leveldb_records(path: Path) -> dict[bytes, bytes]:
    """The LevelDB's records, read with plyvel from a throw-away copy of the directory."""
    import shutil
    import tempfile

    import plyvel

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "db"
        shutil.copytree(path, copy)
        (copy / "LOCK").unlink(missing_ok=True)
        db = plyvel.DB(str(copy))
        try:
            return dict(db.iterator())
        finally:
            db.close()


def expected_files(blocks: dict[str, bytes]) -> dict[str, bytes]:
    return {f"{n[-3:-1]}/{n}.data": v for n, v in blocks.items()}
