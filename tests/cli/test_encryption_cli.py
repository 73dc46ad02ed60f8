"""The CLI with encrypted archives (docs/ENCRYPTION.md): key options, exit codes, no secret in
any output."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess

import pytest

from dsbackup import datasets
from dsbackup.archive import crypto
from dsbackup.archive.reader import ArchiveReader

PASS = "s3cret-Passphrase-7f1e"


@pytest.fixture
def env(cli_env):
    cli_env[crypto.TEST_LOG2_N_ENV] = "14"
    cli_env.pop(crypto.PASSPHRASE_ENV, None)
    return cli_env


@pytest.fixture
def setup(tmp_path, env, run_cli):
    datasets.write_lmdb(str(tmp_path / "src"),
                        iter([(b"/k/%04d" % i, b"value-%d" % i) for i in range(500)]))
    pf = tmp_path / "pass"
    pf.write_text(PASS + "\n")
    arc = tmp_path / "a.tar.gz"
    r = run_cli("backup", f"lmdb:{tmp_path / 'src'}", arc, "--encrypt", "--passphrase-file", pf,
                "--chunk-size", "50", "--json", stdin=-3)
    assert r.returncode == 0, r.stderr
    assert PASS not in r.stdout + r.stderr
    assert json.loads(r.stdout)["backup"]["config"]["encryption"] == "scrypt"
    return tmp_path, arc, pf


def test_encrypt_without_key_and_no_terminal_is_refused(tmp_path, env, run_cli):
    datasets.write_lmdb(str(tmp_path / "src"), iter([(b"/a", b"1")]))
    r = run_cli("backup", f"lmdb:{tmp_path / 'src'}", tmp_path / "a.tar.gz", "--encrypt", stdin=-3)
    assert r.returncode == 2
    assert "--encrypt needs a key" in r.stderr
    assert not (tmp_path / "a.tar.gz").exists()


def test_commands_without_key(setup, env, run_cli):
    tmp_path, arc, pf = setup
    for args in (["restore", arc, f"lmdb:{tmp_path / 'dst'}"], ["verify", arc], ["ls", arc]):
        r = run_cli(*args, stdin=-3)
        assert r.returncode == 2, (args, r.stderr)
        assert ("archive is encrypted: give --passphrase-file, DSBACKUP_PASSPHRASE or "
                "--key-file") in r.stderr
    assert not (tmp_path / "dst").exists()
    r = run_cli("inspect", arc, stdin=-3)
    assert r.returncode == 0 and "encrypted" in r.stdout and "scrypt" in r.stdout
    r = run_cli("inspect", arc, "--json", stdin=-3)
    out = json.loads(r.stdout)
    assert out["locked"] and out["header"]["kdf"]["n"] == 1 << 14
    r = run_cli("verify", "--quick", arc, stdin=-3)
    assert r.returncode == 0, r.stderr


def test_wrong_passphrase_exit_2_and_nothing_written(setup, env, run_cli):
    tmp_path, arc, pf = setup
    bad = tmp_path / "bad"
    bad.write_text("not it\n")
    r = run_cli("restore", arc, f"lmdb:{tmp_path / 'dst'}", "--passphrase-file", bad)
    assert r.returncode == 2 and "wrong passphrase or key" in r.stderr
    assert not (tmp_path / "dst").exists()
    kf = tmp_path / "k"
    assert run_cli("keygen", kf).returncode == 0
    assert kf.stat().st_mode & 0o777 == 0o600
    r = run_cli("verify", arc, "--key-file", kf)
    assert r.returncode == 2 and "wrong passphrase or key" in r.stderr


def test_key_sources_and_damage(setup, env, run_cli):
    tmp_path, arc, pf = setup
    env[crypto.PASSPHRASE_ENV] = PASS  # the dict run_cli passes
    r = run_cli("restore", arc, f"lmdb:{tmp_path / 'dst'}")
    del env[crypto.PASSPHRASE_ENV]
    assert r.returncode == 0, r.stderr
    r = run_cli("inspect", arc, "--passphrase-file", pf, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["encrypted"] is True
    r = run_cli("ls", arc, "--passphrase-file", pf)
    assert r.returncode == 0 and "/k/0499" in r.stdout
    r = run_cli("verify", arc, "--passphrase-file", pf, "--json", "-v")
    assert r.returncode == 0 and PASS not in r.stdout + r.stderr
    with ArchiveReader(arc, key=crypto.load_passphrase_file(pf)) as rd:
        e = rd.entry(4)
    buf = bytearray(arc.read_bytes())
    buf[e.offset + e.length - 30] ^= 0x01  # inside the ciphertext/tag
    arc.write_bytes(bytes(buf))
    r = run_cli("verify", arc, "--passphrase-file", pf, "--json")
    assert r.returncode == 3
    assert json.loads(r.stdout)["bad_chunks"] == [4]
    r = run_cli("verify", "--quick", arc)
    assert r.returncode == 3


def test_key_file_backup(tmp_path, env, run_cli):
    datasets.write_lmdb(str(tmp_path / "src"), iter([(b"/a", b"1"), (b"/b", b"2")]))
    kf = tmp_path / "k"
    assert run_cli("keygen", kf).returncode == 0
    assert run_cli("keygen", kf).returncode == 2  # never replaced
    arc = tmp_path / "a.tar.gz"
    r = run_cli("backup", f"lmdb:{tmp_path / 'src'}", arc, "--encrypt", "--key-file", kf)
    assert r.returncode == 0, r.stderr
    assert kf.read_text().strip() not in arc.read_bytes().hex()
    r = run_cli("restore", arc, f"lmdb:{tmp_path / 'dst'}", "--key-file", kf)
    assert r.returncode == 0, r.stderr


def test_prompt_on_a_terminal(tmp_path, env):
    """No key option and no DSBACKUP_PASSPHRASE on a terminal: a no-echo prompt, asked twice
    for a backup; the passphrase never shows on the terminal."""
    import os
    import pty
    import select
    import sys
    import time

    datasets.write_lmdb(str(tmp_path / "src"), iter([(b"/a", b"1")]))
    arc = tmp_path / "a.tar.gz"

    def run(*args: str, answers: list[bytes]) -> tuple[int, bytes]:
        pid, fd = pty.fork()
        if pid == 0:
            os.execve(sys.executable, [sys.executable, "-m", "dsbackup", *args], env)
        out = b""
        deadline = time.monotonic() + 60
        for a in answers:
            while b"passphrase" not in out.split(b"\n")[-1]:
                assert time.monotonic() < deadline, out  # no prompt came
                if select.select([fd], [], [], 1)[0]:
                    out += os.read(fd, 1024)
            os.write(fd, a + b"\n")
            time.sleep(0.2)
            out += b"\n"
        while True:
            try:
                chunk = os.read(fd, 1024)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), out

    rc, out = run("backup", f"lmdb:{tmp_path / 'src'}", str(arc), "--encrypt",
                  answers=[PASS.encode(), PASS.encode()])
    assert rc == 0, out
    assert PASS.encode() not in out
    rc, out = run("verify", str(arc), answers=[PASS.encode()])
    assert rc == 0, out
    rc, out = run("verify", str(arc), answers=[b"wrong"])
    assert rc == 2 and b"wrong passphrase or key" in out


def test_no_secret_in_logs_json_or_errors(tmp_path, env, run_cli):
    """Verbose logs, --json and every error message of a backup, a restore, a wrong
    passphrase and a malformed key file name no secret."""
    datasets.write_lmdb(str(tmp_path / "src"), iter([(b"/k/%d" % i, b"v") for i in range(50)]))
    pf = tmp_path / "pass"
    pf.write_text(PASS + "\n")
    arc = tmp_path / "a.tar.gz"
    outputs = []
    r = run_cli("-v", "backup", f"lmdb:{tmp_path / 'src'}", arc, "--encrypt",
                "--passphrase-file", pf, "--json")
    assert r.returncode == 0, r.stderr
    outputs.append(r.stdout + r.stderr)
    r = run_cli("-v", "restore", arc, f"lmdb:{tmp_path / 'dst'}", "--passphrase-file", pf,
                "--json")
    assert r.returncode == 0, r.stderr
    outputs.append(r.stdout + r.stderr)
    wrong = "wrong-" + PASS[::-1]
    (tmp_path / "bad").write_text(wrong)
    r = run_cli("-v", "verify", arc, "--passphrase-file", tmp_path / "bad", "--json")
    assert r.returncode == 2 and "wrong passphrase or key" in r.stderr
    assert wrong not in r.stdout + r.stderr
    outputs.append(r.stdout + r.stderr)
    hexkey = "ab" * 31 + "a"  # 63 hex digits: malformed
    (tmp_path / "k").write_text(hexkey)
    r = run_cli("-v", "restore", arc, f"lmdb:{tmp_path / 'dst2'}", "--key-file", tmp_path / "k")
    assert r.returncode == 2 and "key file" in r.stderr and "Traceback" not in r.stderr
    assert hexkey not in r.stdout + r.stderr
    for out in outputs:
        assert PASS not in out and "Traceback" not in out



def test_keygen_on_a_full_disk_leaves_no_empty_key_file(tmp_path, run_cli):
    full = tmp_path / "full"
    full.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)]).returncode:
        pytest.skip("needs a tmpfs mount (root and mount(8))")
    try:
        fd = os.open(full / "fill", os.O_WRONLY | os.O_CREAT)
        with contextlib.suppress(OSError):  # fill it up
            while os.write(fd, b"\0" * 4096):
                pass
        os.close(fd)
        kf = full / "k"
        r = run_cli("keygen", kf)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert "No space left on device" in r.stderr
        assert not kf.exists()  # was an empty file: a later keygen refused, a backup failed
        (full / "fill").unlink()
        assert run_cli("keygen", kf).returncode == 0 and len(kf.read_bytes()) == 65
    finally:
        subprocess.run(["umount", "-l", str(full)])


def test_keygen_dash_is_refused_not_a_file_named_dash(tmp_path, run_cli):
    # '-' is standard output for every other command; keygen made a key file named '-' in
    # the working directory and said "-: new key file"
    r = run_cli("keygen", "-", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("dsbackup: error: keygen writes a key "
                                                        "file (mode 0600), not standard output")
    assert r.stdout == "" and list(tmp_path.iterdir()) == []
    assert run_cli("keygen", "./-", cwd=tmp_path).returncode == 0
    assert len((tmp_path / "-").read_bytes()) == 65


@pytest.mark.parametrize(("kind", "mode", "who"), [
    ("--key-file", 0o644, "group and others"), ("--key-file", 0o604, "others"),
    ("--passphrase-file", 0o640, "its group"), ("--key-file", 0o600, None),
    ("--passphrase-file", 0o400, None)])
def test_a_secret_file_others_can_read_is_used_with_one_warning(tmp_path, env, run_cli,
                                                                kind, mode, who):
    """As ssh and gpg: a key or passphrase file that group or others may read gets one line
    on stderr naming it, its mode and the fix; the backup is made (exit 0: a nightly backup
    that stopped on a file mode would leave none). An owner-only file: no warning."""
    datasets.write_lmdb(str(tmp_path / "src"), iter([(b"/a", b"1")]))
    secret = tmp_path / "secret"
    if kind == "--key-file":
        assert run_cli("keygen", secret).returncode == 0
    else:
        secret.write_text(PASS + "\n")
    secret.chmod(mode)
    r = run_cli("backup", f"lmdb:{tmp_path / 'src'}", tmp_path / "a.tar.gz", "--encrypt", kind,
                secret, "--json", stdin=-3)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ok"]  # stdout stays the JSON alone
    lines = [x for x in r.stderr.splitlines() if "accessible" in x]
    if who is None:
        assert lines == [], r.stderr
    else:
        assert lines == [f"dsbackup: {kind[2:].replace('-', ' ')} {secret} is accessible by "
                         f"{who} (mode {mode:04o}): anyone who can read it can decrypt the "
                         f"archives; chmod 600 it"], r.stderr
    assert PASS not in r.stdout + r.stderr


@pytest.mark.parametrize("kind", ["--passphrase-file", "--key-file"])
def test_a_key_option_without_encrypt_is_refused_not_a_plain_archive(tmp_path, env, run_cli,
                                                                     kind):
    """`backup --passphrase-file P` (or --key-file) without --encrypt wrote a plain archive,
    exit 0: the user believed it encrypted. Now exit 2 naming the fix, nothing written; the
    environment variable (often set for every command) only warns."""
    datasets.write_lmdb(str(tmp_path / "src"), iter([(b"/secret", b"the-value")]))
    secret = tmp_path / "secret"
    if kind == "--key-file":
        assert run_cli("keygen", secret).returncode == 0
    else:
        secret.write_text(PASS + "\n")
        secret.chmod(0o600)
    arc = tmp_path / "a.tar.gz"
    r = run_cli("backup", f"lmdb:{tmp_path / 'src'}", arc, kind, secret, stdin=-3)
    assert r.returncode == 2, r.stderr
    assert f"{kind} without --encrypt: the archive would not be encrypted" in r.stderr
    assert not arc.exists()
    env[crypto.PASSPHRASE_ENV] = PASS
    r = run_cli("backup", f"lmdb:{tmp_path / 'src'}", arc, stdin=-3)
    assert r.returncode == 0, r.stderr
    assert (f"{crypto.PASSPHRASE_ENV} is set, but --encrypt is not given: {arc} is not "
            "encrypted") in r.stderr


def test_a_plain_archive_given_a_key_option_is_refused(tmp_path, env, monkeypatch,
                                                      run_cli_inprocess):
    """An attacker who can write where the archives lie replaces an encrypted archive by a
    plain one of their making (a dsbackup or a Go-tool archive): restore, verify, ls,
    inspect and consolidate with --passphrase-file/--key-file read it and said OK, exit 0.
    Now exit 2 naming the option, nothing restored; a plain parent of an encrypted
    incremental is still read, and DSBACKUP_PASSPHRASE alone (set for every command)
    reads a plain archive as before."""
    monkeypatch.setenv(crypto.TEST_LOG2_N_ENV, "14")
    monkeypatch.delenv(crypto.PASSPHRASE_ENV, raising=False)
    run = run_cli_inprocess
    datasets.write_lmdb(str(tmp_path / "src"), iter([(b"/k/%03d" % i, b"v%d" % i)
                                                      for i in range(200)]))
    pf = tmp_path / "pass"
    pf.write_text(PASS + "\n")
    pf.chmod(0o600)
    kf = tmp_path / "key"
    assert run("keygen", kf).returncode == 0
    plain, go = tmp_path / "plain.tar.gz", tmp_path / "go.tar.gz"
    assert run("backup", f"lmdb:{tmp_path / 'src'}", plain).returncode == 0
    assert run("backup", f"lmdb:{tmp_path / 'src'}", go, "--format", "go").returncode == 0
    for arc in (plain, go):
        for option, secret in (("--passphrase-file", pf), ("--key-file", kf)):
            for args in (["restore", arc, f"lmdb:{tmp_path / 'dst'}"], ["verify", arc],
                         ["verify", "--quick", arc], ["ls", arc], ["inspect", arc],
                         ["consolidate", arc, tmp_path / "out.tar.gz"]):
                if arc == go and args[0] == "consolidate":
                    continue
                r = run(*args, option, secret)
                assert r.returncode == 2, (args, option, r.stdout, r.stderr)
                assert (f"{arc}: archive is not encrypted, but {option} was given"
                        in r.stderr), r.stderr
    assert not (tmp_path / "dst").exists() and not (tmp_path / "out.tar.gz").exists()
    monkeypatch.setenv(crypto.PASSPHRASE_ENV, PASS)
    assert run("verify", plain).returncode == 0
    monkeypatch.delenv(crypto.PASSPHRASE_ENV)
    child = tmp_path / "child.tar.gz"
    r = run("backup", f"lmdb:{tmp_path / 'src'}", child, "--encrypt", "--passphrase-file", pf,
            "--parent", plain)
    assert r.returncode == 0, r.stderr
    r = run("restore", child, f"lmdb:{tmp_path / 'dst'}", "--passphrase-file", pf)
    assert r.returncode == 0, r.stderr


def test_a_passphrase_not_utf8_is_the_same_from_the_environment(tmp_path, env, run_cli):
    """A passphrase file holding bytes that are not UTF-8 made an archive that the same bytes
    in DSBACKUP_PASSPHRASE could not open: 'internal error ... surrogates not allowed'.
    Both are the same bytes now."""
    datasets.write_lmdb(str(tmp_path / "src"), iter([(b"/a", b"1")]))
    raw = b"p\xe4ss-\xff-word"
    pf = tmp_path / "pass"
    pf.write_bytes(raw + b"\n")
    pf.chmod(0o600)
    arc = tmp_path / "a.tar.gz"
    r = run_cli("backup", f"lmdb:{tmp_path / 'src'}", arc, "--encrypt", "--passphrase-file", pf)
    assert r.returncode == 0, r.stderr
    env[crypto.PASSPHRASE_ENV] = os.fsdecode(raw)  # as a shell passes those bytes
    r = run_cli("verify", arc, stdin=-3)
    assert r.returncode == 0, r.stderr
