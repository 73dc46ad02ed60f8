"""Nonce reuse under an encrypted archive's data key, checked from the files its runs left
(docs/FORMAT.md §11.4): every sealed member of each file, with the epoch it opens under."""

from __future__ import annotations

from dsbackup.archive import format as fmt
from dsbackup.archive.crypto import KeyMaterial, open_archive_key, parse_key_header
from dsbackup.archive.member import decode_member, member_end
from dsbackup.errors import IntegrityError

_TRAILER_END = bytes(1024) + fmt.member_tail(fmt.TRAILER_CRC, 1024)


def sealed_members(data: bytes, run_epoch: int, key: KeyMaterial) -> dict[tuple[int, int, int], bytes]:
    """Every sealed member of a file (a finished archive or a dead writer's prefix, written
    last by the run of `run_epoch`): (type, epoch, seq) -> its member bytes. A whole member's
    epoch is the one its tag opens under; a torn tail member is the last run's."""
    mv = memoryview(data)
    sub, pos = member_end(mv, 0)
    _, kdata = decode_member(mv[:pos], "key", expected_type=fmt.TYPE_KEY,
                             expected_name=fmt.KEY_NAME)
    cipher = open_archive_key(parse_key_header(kdata, "key"), key, sub.version, "key")
    out: dict[tuple[int, int, int], bytes] = {}
    if data.endswith(_TRAILER_END):  # a finished archive: up to its trailer
        mv = mv[:len(mv) - fmt.TRAILER_SIZE]
    while pos < len(mv):
        try:
            sub, end = member_end(mv, pos)
        except IntegrityError:  # the torn tail: its nonce is the last run's
            try:
                sub = fmt.parse_member_head(mv[pos:], "torn")
            except IntegrityError:
                break  # not even its header: none of its ciphertext was written
            seq = sub.seq if sub.member_type == fmt.TYPE_CHUNK else _name_seq(mv[pos:])
            out[(sub.member_type, run_epoch, seq)] = bytes(mv[pos:])
            break
        _, sealed = decode_member(mv[pos:end], "m", expected_type=sub.member_type,
                                  expected_name=None)
        seq = sub.seq if sub.member_type == fmt.TYPE_CHUNK else _name_seq(mv[pos:end])
        for e in range(run_epoch + 1):
            try:
                cipher.open(sub.member_type, seq, sealed, "m", epoch=e)
            except IntegrityError:
                continue
            out[(sub.member_type, e, seq)] = bytes(mv[pos:end])
            break
        else:
            raise AssertionError(f"member at {pos} opens under no epoch")
        pos = end
    cipher.close()
    return out


def _name_seq(member: memoryview) -> int:
    """The seq in a catalog's or page's tar entry name (0 for the single members)."""
    head = bytes(member[:2048])
    for prefix in (b"dsbackup/catalog/", b"dsbackup/pages/"):
        if prefix in head:
            digits = head.split(prefix, 1)[1][:20].split(b"\0")[0]
            return int(digits)
    return 0


def no_nonce_reuse(files: list[tuple[bytes, int]], key: KeyMaterial) -> set[int]:
    """Across the files a backup's runs left, no (type, epoch, seq) names two different
    member byte strings (a torn one: its bytes so far); the epochs seen."""
    seen: dict[tuple[int, int, int], bytes] = {}
    for data, run_epoch in files:
        for k, v in sealed_members(data, run_epoch, key).items():
            old = seen.setdefault(k, v)
            n = min(len(old), len(v))
            assert old[:n] == v[:n], f"nonce {k} sealed two different members"
    return {e for (_t, e, _s) in seen}
