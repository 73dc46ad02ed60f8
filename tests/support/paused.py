"""A real backup or restore in another process, held mid-way (for lock tests)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

_HEAD = textwrap.dedent("""
    import sys
    from dsbackup.engine.backup import BackupManager
    from dsbackup.engine.config import BackupConfig
    paused = []
    def pause(p):
        if not paused:
            paused.append(1)
            print("paused", flush=True)
            sys.stdin.read()
""")


def paused(cli_env: dict[str, str], code: str) -> subprocess.Popen:
    """Run `code` (which calls a backup or restore with ``progress=pause``) in a new
    process; returns once it is paused inside its run, until its stdin closes."""
    p = subprocess.Popen([sys.executable, "-c", _HEAD + textwrap.dedent(code)], env=cli_env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "paused"
    return p


def backing_up(cli_env: dict[str, str], uri: str, archive: str) -> subprocess.Popen:
    """A backup of `uri` held after its first chunk."""
    return paused(cli_env, f"""
        BackupManager(BackupConfig(workers=1, chunk_size=16)).create_backup(
            {uri!r}, {archive!r}, progress=pause)
    """)


def restoring(cli_env: dict[str, str], archive: str, uri: str, *,
              overwrite: bool = False) -> subprocess.Popen:
    """A restore of `archive` into `uri` held after its first batch."""
    mode = ', mode="overwrite"' if overwrite else ""
    return paused(cli_env, f"""
        BackupManager(BackupConfig(workers=1)).restore_backup(
            {archive!r}, {uri!r}, progress=pause{mode})
    """)


def finish(p: subprocess.Popen, timeout: float = 120) -> int:
    p.stdin.close()
    return p.wait(timeout=timeout)
