"""dsbackup.cli.main: command dispatch imports only the command that runs."""

from __future__ import annotations

import argparse
import errno
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dsbackup import datasets
from dsbackup.cli import main
from dsbackup.engine.backup import BackupManager


def test_command_is_found_after_global_options():
    assert main._command_in(["backup", "src", "dst"]) == "backup"
    assert main._command_in(["-v", "-v", "restore", "a", "b"]) == "restore"
    assert main._command_in(["--verbose", "verify", "a"]) == "verify"
    assert main._command_in(["--umask", "077", "ls", "a"]) == "ls"
    assert main._command_in(["--s3-profile", "backup", "ls", "a"]) == "ls"  # (its value)
    assert main._command_in(["--help"]) is None
    assert main._command_in(["nosuchcommand"]) is None
    assert main._command_in([]) is None


def test_full_parser_still_lists_every_command(capsys):
    parser = main.build_parser()
    parser.print_help()
    out = capsys.readouterr().out
    for name in ("backup", "restore", "verify", "inspect", "ls", "schedule", "migrate", "tune"):
        assert name in out


def test_running_one_command_does_not_import_the_others(tmp_path):
    code = (
        "import sys\n"
        "from dsbackup.cli.main import main\n"
        f"rc = main(['inspect', {str(tmp_path / 'missing.tar.gz')!r}])\n"
        "print(rc, 'dsbackup.scheduler' in sys.modules, 'dsbackup.migration' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.split() == ["2", "False", "False"], r.stdout + r.stderr
    assert "missing.tar.gz" in r.stderr


@pytest.mark.parametrize("given, expected", [(None, "1"), ("3", "3")])
def test_the_cli_limits_openblas_to_one_thread_before_numpy_loads(cli_env, given, expected):
    env = {k: v for k, v in cli_env.items() if k != "OPENBLAS_NUM_THREADS"}
    if given is not None:
        env["OPENBLAS_NUM_THREADS"] = given  # the user's own setting wins
    code = ("import os, sys\n"
            "import dsbackup.cli.main\n"
            "print('numpy' in sys.modules, os.environ['OPENBLAS_NUM_THREADS'])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       check=True)
    assert r.stdout.split() == ["False", expected], r.stdout + r.stderr


def test_unknown_command_gets_the_usage_error():
    r = subprocess.run([sys.executable, "-m", "dsbackup", "frobnicate"], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "invalid choice" in r.stderr


# -- the error path (issue 20, items 10 and 14) ------------------------------------------------


@pytest.fixture(scope="module")
def big_archive(tmp_path_factory):
    """An archive whose `ls` output (~300 KB) is far larger than a pipe's buffer."""
    d = tmp_path_factory.mktemp("big")
    datasets.write_lmdb(str(d / "s"), iter(
        (b"/blocks/K%08d" % i + b"x" * 8, b"v") for i in range(12000)))
    archive = d / "big.tar.gz"
    BackupManager().create_backup(f"lmdb:{d / 's'}", archive)
    return archive


@pytest.mark.parametrize("extra", [[], ["--json"], ["-l"]])
def test_a_closed_pipe_ends_ls_quietly_with_exit_0(big_archive, cli_env, extra):
    # `dsbackup ls A | head -1`: the reader goes away after one line
    p = subprocess.Popen([sys.executable, "-m", "dsbackup", "ls", str(big_archive), *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env)
    first = p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 0, err
    assert first and err == ""


def test_verbose_is_accepted_after_the_command(tmp_path, run_cli):
    r = run_cli("inspect", tmp_path / "missing.tar.gz", "-v")
    assert r.returncode == 2 and "no such archive" in r.stderr
    assert "unrecognized arguments" not in r.stderr
    args = main.build_parser().parse_args(["-v", "ls", "a", "-v"])
    assert args.verbose == 1 and args.archive == "a"
    assert main.build_parser().parse_args(["-v", "-v", "ls", "a"]).verbose == 2


def test_json_errors_carry_schema_and_command(tmp_path, run_cli):
    r = run_cli("inspect", tmp_path / "missing.tar.gz", "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 2 == out["exit_code"]
    assert out["schema"] == 1 and out["command"] == "inspect" and not out["ok"]
    assert "missing.tar.gz" in out["message"]
    r = run_cli("verify", tmp_path, "--json")  # a directory: an OSError-class problem
    out = json.loads(r.stdout)
    assert out["command"] == "verify" and out["exit_code"] == 2 and r.returncode == 2


def test_verify_of_a_missing_archive_is_exit_2_not_damaged(tmp_path, run_cli):
    r = run_cli("verify", tmp_path / "missing.tar.gz")
    assert r.returncode == 2
    assert "DAMAGED" not in r.stderr and "no such archive" in r.stderr


def test_os_and_value_errors_become_one_line_with_exit_2():
    args = main.build_parser().parse_args(["restore", "a.tar.gz", "flatfs:/t"])
    msg, code = main.describe_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), args)
    assert code == 2 and msg == "restore a.tar.gz flatfs:/t: no space left on device"
    msg, code = main.describe_error(
        OSError(errno.EROFS, os.strerror(errno.EROFS), "/mnt/ro/t"), args)
    assert code == 2 and msg == "/mnt/ro/t: Read-only file system"
    # EACCES cannot be provoked as root (tests run as root here), so the mapping is shown
    msg, code = main.describe_error(PermissionError(errno.EACCES, "Permission denied", "/t"),
                                    args)
    assert code == 2 and msg == "/t: Permission denied"
    msg, code = main.describe_error(ValueError("sample must be a fraction"), args)
    assert code == 2 and msg.endswith("sample must be a fraction")
    msg, code = main.describe_error(KeyError("x"), args)  # a bug: still one line, exit 2
    assert code == 2 and msg.startswith("internal error: KeyError") and "\n" not in msg


def test_out_of_memory_is_an_error_of_the_environment():
    """A MemoryError (a ulimit, a small machine: an archive of the Go tool parses each chunk
    member, up to 1 GiB, in memory; benchmarks/fuzz_archives.py ran readers under 1.5 GiB)
    is exit 2 naming the command, not an "internal error" asking for a bug report."""
    args = main.build_parser().parse_args(["verify", "a.tar.gz"])
    msg, code = main.describe_error(MemoryError(), args)
    assert code == 2 and msg == "verify a.tar.gz: not enough memory"
    msg, code = main.describe_error(MemoryError("Not enough memory to derive key."), args)
    assert msg == "verify a.tar.gz: not enough memory (Not enough memory to derive key.)"


class _Panic(BaseException):
    """What pyo3 raises for a panic in a Rust extension (obstore): no Exception subclass."""


def test_a_base_exception_from_an_extension_is_one_line_exit_2(monkeypatch, capsys):
    def run(args):
        raise _Panic("called `Result::unwrap()` on an `Err` value: InvalidPort")

    monkeypatch.setattr("dsbackup.cli.keygen.run", run)
    assert main.main(["keygen", "/nonexistent/k"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dsbackup: error: internal error: _Panic: ") and err.count("\n") == 1


def test_ctrl_c_while_the_command_is_imported_is_exit_130_without_a_traceback(monkeypatch,
                                                                             capsys):
    # the command's module (numpy and the rest) is imported before the command runs: a
    # Ctrl-C there was a KeyboardInterrupt traceback
    def slow_import(only=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(main, "build_parser", slow_import)
    assert main.main(["ls", "a.tar.gz"]) == 130
    assert capsys.readouterr().err == "dsbackup: interrupted\n"


@pytest.mark.parametrize("endpoint", ["http://[::1", "http://127.0.0.1:99999"])
def test_an_unparsable_s3_endpoint_is_a_usage_error(run_cli, endpoint):
    # the port was a panic in the S3 client (a traceback, exit 1), the IPv6 a ValueError
    r = run_cli("--s3-endpoint", endpoint, "verify", "s3://bucket/a.tar.gz")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"dsbackup: error: S3 endpoint {endpoint!r} is not a valid URL: "
        + ("Invalid IPv6 URL" if "[" in endpoint else "Port out of range 0-65535")
        + " (see dsbackup --help)"]


def test_the_restore_journal_on_a_full_disk_is_an_error_not_a_crash(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs",
                                            str(full)], capture_output=True).returncode:
        pytest.skip("needs root and mount(8) for a small tmpfs")
    try:
        fd = os.open(full / "fill", os.O_WRONLY | os.O_CREAT)
        try:  # fill it up
            while os.write(fd, b"x" * 4096):
                pass
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
        from dsbackup.engine.restore_journal import write_journal
        from dsbackup.errors import DatastoreError

        with pytest.raises(DatastoreError) as info:  # the journal names the full filesystem
            write_journal(full / "t.dsbackup-restore.json", {"next_chunk": 3, "pad": "x" * 9000})
        args = main.build_parser().parse_args(["restore", "a.tar.gz", f"flatfs:{full}/t"])
        msg, code = main.describe_error(info.value, args)
        assert code == 2 and f"no space left on {full}" in msg and "\n" not in msg
    finally:
        subprocess.run(["umount", "-l", str(full)], capture_output=True)


def test_restore_help_matches_what_a_bare_path_does(tmp_path, run_cli):
    r = run_cli("restore", "--help")
    assert "existing store" in " ".join(r.stdout.split())
    datasets.write_lmdb(str(tmp_path / "s"), iter([(b"/k", b"v")]))
    BackupManager().create_backup(f"lmdb:{tmp_path / 's'}", tmp_path / "a.tar.gz")
    r = run_cli("restore", tmp_path / "a.tar.gz", tmp_path / "new")
    assert r.returncode == 2 and "give a scheme to create a store" in r.stderr
    r = run_cli("restore", tmp_path / "a.tar.gz", f"lmdb:{tmp_path / 'new'}")
    assert r.returncode == 0, r.stderr


def test_tilde_is_expanded_in_archive_paths(tmp_path, run_cli, cli_env):
    # issue 20, item 9: a quoted "~/..." or --parent=~/... reaches us unexpanded
    home = tmp_path / "home"
    home.mkdir()
    cli_env["HOME"] = str(home)
    datasets.write_lmdb(str(tmp_path / "s"), iter([(b"/k", b"v")]))
    r = run_cli("backup", f"lmdb:{tmp_path / 's'}", "~/a.tar.gz", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (home / "a.tar.gz").is_file() and not (tmp_path / "~").exists()
    r = run_cli("backup", f"lmdb:{tmp_path / 's'}", "~/b.tar.gz", "--parent=~/a.tar.gz",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_cli("inspect", "~/b.tar.gz", "--json", cwd=tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout)["backup"]["parent"], r.stderr


def test_every_command_and_option_is_in_cli_md():
    """docs/CLI.md has a row for every command and names each of its long options."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "CLI.md").read_text()
    mods = main._command_modules()
    assert len(mods) >= 10
    for mod in mods:
        assert re.search(r"^\| `" + re.escape(mod.COMMAND) + "[ `]", doc, re.M), mod.COMMAND
        p = argparse.ArgumentParser()
        mod.add_arguments(p)
        opts = {o for a in p._actions for o in a.option_strings if o.startswith("--")}
        missing = sorted(o for o in opts - {"--help", "--json"} if f"`{o}" not in doc)
        assert not missing, f"{mod.COMMAND}: {missing} not in docs/CLI.md"


def test_the_command_freezes_its_start_up_objects_and_collects_after(tmp_path):
    """cli/_entry.py loads the modules with garbage collection off; main() then freezes them
    (gc.freeze: no collection walks them again, nor the one at exit) and turns collection back
    on, also when the arguments are wrong. main() called in-process freezes nothing."""
    code = (
        "import gc, sys\n"
        "from dsbackup.cli import _entry\n"
        "sys.argv = ['dsbackup'] + sys.argv[1:]\n"
        "try:\n"
        "    _entry.run()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(gc.isenabled(), gc.get_freeze_count())\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    for args in (["verify", "--quick", str(tmp_path / "missing.tar.gz")], ["--nosuchflag"]):
        r = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                           text=True, check=True)
        enabled, frozen = r.stdout.split()
        assert enabled == "True"
        assert int(frozen) > 10_000, r.stdout
    before = __import__("gc").get_freeze_count()
    assert main.main(["verify", "--quick", str(tmp_path / "missing.tar.gz")]) != 0
    assert __import__("gc").get_freeze_count() == before
    assert __import__("gc").isenabled()


def test_a_verify_imports_neither_the_go_reader_nor_hashlib(tmp_path):
    """Start-up of `verify` (docs/PERFORMANCE.md, small records at scale 0.5): a dsbackup
    archive is told from the Go tool's by its head (compat/gohead.py), and nothing on the
    reading path loads hashlib (OpenSSL): archive/node.py writes its uvarints itself,
    storage/tempfiles.py names temporary files with os.urandom."""
    store = tmp_path / "src"
    datasets.write_lmdb(str(store), datasets.iter_small(500))
    arc = tmp_path / "a.tar.gz"
    assert main.main(["backup", f"lmdb:{store}", str(arc)]) == 0
    code = ("import sys\nfrom dsbackup.cli.main import main\n"
            "rc = main(['verify', sys.argv[1]])\n"
            "print(rc, *(m in sys.modules for m in ('dsbackup.compat.goformat', 'hashlib',"
            " 'tarfile', 'sqlite3')))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-c", code, str(arc)], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-5:] == ["0", "False", "False", "False", "False"], r.stdout


# modules the reading commands do without (start-up, docs/PERFORMANCE.md "Start-up of verify
# and restore"): S3's settings, the progress dataclasses, tempfile/secrets (random, hashlib),
# shutil (argparse's formatter), getpass (asked only for a passphrase)
NOT_ON_THE_READING_PATH = ("configparser", "dsbackup.storage.s3config", "shutil", "tempfile",
                           "secrets", "hashlib", "getpass", "dsbackup.compat.goformat",
                           # the backup settings (a worker count is all they need of them)
                           "dsbackup.engine.config",
                           # the structures and result objects are dsbackup._plain classes:
                           # dataclasses with its inspect, ast and dis cost ~5 ms to import
                           # and ~10 ms to create the classes (docs/PERFORMANCE.md "Start-up
                           # without dataclasses")
                           "dataclasses", "inspect", "ast", "dis")
# and per command (docs/PERFORMANCE.md "Restore and deep verify at quarter scale, fresh
# profile"): verify reads no time of day; the native restore into LMDB needs neither py-lmdb
# nor its backend, only the registry of open environments (datastores/lmdbclaims.py); nor
# the Kubo datastore with its mounts and flatfs checks, only the daemon's lock
# (datastores/kubolock.py: docs/PERFORMANCE.md "Small records: restore and backup bounds")
NOT_ON_THE_READING_PATH_OF = {"verify": ("datetime",), "verify --quick": ("datetime",),
                              "restore": ("lmdb", "dsbackup.datastores.lmdb",
                                          "dsbackup.datastores.kubo",
                                          "dsbackup.datastores.mount")}


@pytest.mark.parametrize("command", ["verify", "verify --quick", "restore"])
def test_the_reading_commands_import_only_what_they_use(tmp_path, command):
    store = tmp_path / "src"
    datasets.write_lmdb(str(store), datasets.iter_small(500))
    arc = tmp_path / "a.tar.gz"
    assert main.main(["backup", f"lmdb:{store}", str(arc)]) == 0
    argv = [*command.split(), str(arc)]
    if command == "restore":
        argv.append(f"lmdb:{tmp_path / 'out'}")
    unwanted = NOT_ON_THE_READING_PATH + NOT_ON_THE_READING_PATH_OF[command]
    code = ("import json, sys\nfrom dsbackup.cli.main import main\n"
            "rc = main(sys.argv[1:])\n"
            f"print(rc, json.dumps([m for m in {unwanted!r} if m in sys.modules]))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rc, loaded = r.stdout.strip().splitlines()[-1].split(" ", 1)
    assert (rc, json.loads(loaded)) == ("0", []), r.stdout
    if command == "verify":  # the sampled verify still draws its chunks
        code = code.replace("main(sys.argv[1:])", "main(['verify', '--sample', '0.5', "
                            "sys.argv[-1]])")
        r = subprocess.run([sys.executable, "-c", code, str(arc)], env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.stdout.strip().splitlines()[-1].startswith("0 "), r.stdout + r.stderr


def test_version_before_a_command_imports_no_command_module():
    code = ("import sys\nfrom dsbackup.cli.main import main\n"
            "try:\n    main(['--version'])\nexcept SystemExit as e:\n"
            "    print('exit', e.code)\n"
            "print(sorted(m for m in sys.modules if m.startswith('dsbackup.cli.')))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120)
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("dsbackup ") and lines[1] == "exit 0", r.stdout + r.stderr
    assert lines[2] == "['dsbackup.cli._common', 'dsbackup.cli.main']", lines[2]


def test_command_names_are_the_modules_pkgutil_lists():
    """main._command_names reads the package directory itself (no pkgutil at start-up)."""
    import pkgutil

    from dsbackup import cli

    listed = sorted(i.name for i in pkgutil.iter_modules(cli.__path__)
                    if not i.name.startswith("_") and i.name != "main")
    assert main._command_names() == listed and "verify" in listed and "restore" in listed


def test_help_is_as_wide_as_argparse_makes_it(monkeypatch):
    """argparse's formatter finds the width as shutil.get_terminal_size does (COLUMNS, else
    the terminal, else 80) without importing shutil."""
    for cols in ("50", "120", "0", "bogus", None):
        if cols is None:
            monkeypatch.delenv("COLUMNS", raising=False)
        else:
            monkeypatch.setenv("COLUMNS", cols)
        ours = main._Formatter("dsbackup")
        assert ours._width == argparse.HelpFormatter("dsbackup")._width, cols
    p = main.build_parser("verify")
    assert p.formatter_class is main._Formatter


def test_a_successful_verify_restore_or_backup_ends_without_teardown_but_runs_exit_handlers(
        tmp_path):
    """The process entry (freeze_imports=True) ends a successful verify or restore with
    os._exit after the exit handlers and flushes (cli/main.py, _exit_without_teardown): the
    JSON report is whole, an atexit handler ran, and nothing after main() runs. A failed
    verify (exit 3) returns as before."""
    store = tmp_path / "src"
    datasets.write_lmdb(str(store), datasets.iter_small(500))
    arc = tmp_path / "a.tar.gz"
    assert main.main(["backup", f"lmdb:{store}", str(arc)]) == 0
    bad = tmp_path / "bad.tar.gz"
    data = bytearray(arc.read_bytes())
    data[len(data) // 3] ^= 0xFF
    bad.write_bytes(bytes(data))
    code = ("import atexit, sys\nfrom dsbackup.cli.main import main\n"
            "atexit.register(lambda: print('atexit ran', flush=True))\n"
            "rc = main(sys.argv[1:], freeze_imports=True)\n"
            "print('after main', rc, flush=True)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code, *argv], env=env,
                              capture_output=True, text=True, timeout=120)

    r = run("verify", "--json", str(arc))
    assert r.returncode == 0, r.stderr
    report, tail = r.stdout.rsplit("\n", 2)[0], r.stdout.strip().splitlines()[-1]
    assert json.loads(report)["ok"] is True and tail == "atexit ran", r.stdout
    assert "after main" not in r.stdout
    r = run("restore", str(arc), f"lmdb:{tmp_path / 'out'}")
    assert r.returncode == 0 and r.stdout == "atexit ran\n", (r.stdout, r.stderr)
    assert main.main(["verify", "--quick", str(arc)]) == 0
    r = run("backup", "--json", f"lmdb:{store}", str(tmp_path / "b.tar.gz"))
    assert r.returncode == 0, r.stderr
    report, tail = r.stdout.rsplit("\n", 2)[0], r.stdout.strip().splitlines()[-1]
    assert json.loads(report)["backup"]["total_keys"] == 500 and tail == "atexit ran", r.stdout
    assert main.main(["verify", str(tmp_path / "b.tar.gz")]) == 0
    r = run("verify", str(bad))
    assert r.returncode == 0 and r.stdout == "after main 3\natexit ran\n", (r.stdout,
                                                                           r.stderr)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_json_output_to_a_full_disk_is_one_line_exit_2(tmp_path, cli_env):
    # `inspect --json A > /dev/full`: the error path wrote its JSON error object to the same
    # full stdout and crashed with two tracebacks (exit 1)
    datasets.write_lmdb(str(tmp_path / "s"), iter([(b"/k", b"v")]))
    BackupManager().create_backup(f"lmdb:{tmp_path / 's'}", tmp_path / "a.tar.gz")
    for argv in (["inspect", "--json", tmp_path / "a.tar.gz"],
                 ["verify", "--json", tmp_path / "a.tar.gz"],
                 ["inspect", "--json", tmp_path / "nosuch.tar.gz"]):
        with open("/dev/full", "w") as full:
            r = subprocess.run([sys.executable, "-m", "dsbackup", *map(str, argv)], env=cli_env,
                               stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("dsbackup: error: "), r.stderr
        if "nosuch" not in str(argv[-1]):
            assert lines[0] == "dsbackup: error: standard output: no space left on device"


def _run_with_closed(cli_env, argv: list[str], closed: tuple[int, ...],
                     stderr=subprocess.DEVNULL) -> subprocess.CompletedProcess:
    def close() -> None:
        for fd in closed:
            os.close(fd)

    return subprocess.run([sys.executable, "-m", "dsbackup", *map(str, argv)], env=cli_env,
                          preexec_fn=close, stderr=stderr, timeout=120)


def test_closed_standard_streams(tmp_path, cli_env):
    # `backup ... 2>&-` (a cron line, a daemon's closed descriptors) failed with an internal
    # AttributeError ('NoneType' has no attribute 'isatty') and wrote no archive; `ls >&-`
    # and `inspect --json >&-` were internal errors too (the latter two tracebacks); `backup -`
    # with standard output closed must not throw the archive away and say done
    datasets.write_lmdb(str(tmp_path / "s"), iter([(b"/k%02d" % i, b"v") for i in range(20)]))
    src = f"lmdb:{tmp_path / 's'}"
    assert _run_with_closed(cli_env, ["backup", src, tmp_path / "a.tar.gz"], (2,)).returncode == 0
    assert (tmp_path / "a.tar.gz").is_file()
    assert _run_with_closed(cli_env, ["backup", src, tmp_path / "b.tar.gz"],
                            (0, 1, 2)).returncode == 0
    assert (tmp_path / "b.tar.gz").is_file()
    r = _run_with_closed(cli_env, ["verify", tmp_path / "b.tar.gz"], (2,))
    assert r.returncode == 0
    assert _run_with_closed(cli_env, ["ls", tmp_path / "a.tar.gz"], (1,)).returncode == 0
    assert _run_with_closed(cli_env, ["inspect", "--json", tmp_path / "a.tar.gz"],
                            (1,)).returncode == 0
    assert _run_with_closed(cli_env, ["backup", src, tmp_path / "c.tar.gz"], (2,)).returncode == 0
    for argv, fd, says in ((["backup", src, "-"], 1, "-: standard output is closed"),
                           (["consolidate", tmp_path / "a.tar.gz", "-"], 1,
                            "-: standard output is closed"),
                           (["restore", "-", f"lmdb:{tmp_path / 'r'}"], 0,
                            "-: standard input is closed")):
        r = _run_with_closed(cli_env, argv, (fd,), stderr=subprocess.PIPE)
        assert r.returncode == 2, r.stderr
        assert r.stderr.decode().strip() == f"dsbackup: error: {says}" + (
            "; redirect it to a file or a pipe" if fd == 1 else "; pipe an archive into it")
    assert not (tmp_path / "r").exists()
    r = _run_with_closed(cli_env, ["backup", f"lmdb:{tmp_path / 'nosuch'}",
                                   tmp_path / "d.tar.gz"], (2,))
    assert r.returncode == 2


# modules a full backup of a local store does without (start-up, docs/PERFORMANCE.md "Start-up
# of a backup"): multiprocessing (the zygote's workers talk over pipeline/channel.py), the
# fork server, flatfs's audit and incremental code, the query types, --resume's rescan, the
# hint of an unknown URI parameter
NOT_ON_THE_BACKUP_PATH = ("multiprocessing", "multiprocessing.connection", "subprocess",
                          "dsbackup.pipeline.forkserver", "dsbackup.engine.flatfs_incremental",
                          "dsbackup.datastores.flatfs_audit", "dsbackup.datastores.query",
                          "dsbackup.archive.resume", "difflib")
# and, without the check before the rename (--no-verify), no archive reading code at all
NOT_WITHOUT_THE_CHECK = ("dsbackup.archive.reader", "dsbackup.archive.verify")


@pytest.mark.parametrize("no_verify", [False, True])
def test_a_backup_imports_only_what_it_uses(tmp_path, no_verify):
    """The CLI's backup of an LMDB store large enough for the parallel scan (>= 32 MiB: the
    zygote forks its workers), run as the command runs."""
    store = tmp_path / "src"
    datasets.write_lmdb(str(store), datasets.iter_blocks(136))  # 34 MiB of values
    argv = ["-vv", "backup", f"lmdb:{store}", str(tmp_path / "a.tar.gz")]
    unwanted = NOT_ON_THE_BACKUP_PATH
    if no_verify:
        argv.append("--no-verify")
        unwanted += NOT_WITHOUT_THE_CHECK
    code = ("import json, sys\nfrom dsbackup.cli.main import main\n"
            "rc = main(sys.argv[1:])\n"
            f"print(rc, json.dumps([m for m in {unwanted!r} if m in sys.modules]))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    env.pop("DSBACKUP_ZYGOTE", None)
    r = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "processes forked from zygote" in r.stderr, r.stderr  # the parallel scan ran
    rc, loaded = r.stdout.strip().splitlines()[-1].split(" ", 1)
    assert (rc, json.loads(loaded)) == ("0", []), r.stdout


_THREAD_HEAPS = r"""
import sys
from dsbackup.cli.main import main
rc = main(sys.argv[1:])
# glibc's per-thread heaps: a 64 MiB (HEAP_MAX_SIZE) aligned anonymous reservation whose
# used part is rw-p and whose rest is ---p. Other anonymous maps (the readers' buffers) may
# start at a 64 MiB boundary by chance, so the shape is checked, not the address alone.
H = 64 << 20
maps = []
for line in open("/proc/self/maps"):
    f = line.split()
    if len(f) == 5:
        lo, hi = (int(x, 16) for x in f[0].split("-"))
        maps.append((lo, hi, f[1]))
n = 0
for i, (lo, hi, perm) in enumerate(maps):
    if lo % H or perm != "rw-p":
        continue
    nxt = maps[i + 1] if i + 1 < len(maps) else None
    if hi - lo == H or (nxt and nxt[0] == hi and nxt[2] == "---p" and nxt[1] == lo + H):
        n += 1
print(rc, n)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's arenas")
@pytest.mark.parametrize("command", ["backup", "restore", "verify", "schedule"])
def test_backup_restore_and_verify_threads_allocate_in_the_main_arena(tmp_path, cli_env,
                                                                      run_cli, command):
    """Backup, restore and deep verify allocate and free chunk buffers in threads: in
    per-thread arenas (with the CLI's trim threshold) each arena's resident high-water mark
    crept up, so a 32 GiB store's verify took 14 MiB more than a 4 GiB one's, its backup
    18 MiB (docs/PERFORMANCE.md, "Memory flat in store size"). The CLI sets one arena; for
    `schedule` too, whose daemon runs them for months."""
    datasets.write_lmdb(str(tmp_path / "src"), datasets.iter_blocks(48, seed=5))
    arc = tmp_path / "a.tar.gz"
    assert run_cli("backup", f"lmdb:{tmp_path / 'src'}", arc, "--workers", "1").returncode == 0
    args = {"verify": ["verify", str(arc), "--workers", "4"],
            "restore": ["restore", str(arc), f"lmdb:{tmp_path / 'dst'}"],
            "backup": ["backup", f"lmdb:{tmp_path / 'src'}", str(tmp_path / "b.tar.gz"),
                       "--workers", "2"],
            # the daemon's job (backup, then its verify) as `schedule run` runs it, in a
            # thread: months of them in one process (PERFORMANCE.md, "Memory over rounds")
            "schedule": ["schedule", "run-once", "s", "--config", str(tmp_path / "s.toml")]
            }[command]
    (tmp_path / "s.toml").write_text(
        f'[scheduler]\nbackup_dir = "{tmp_path / "sb"}"\nstate_dir = "{tmp_path / "st"}"\n'
        f'health_check_interval = "off"\n\n[[schedule]]\nid = "s"\nname = "s"\n'
        f'cron = "@daily"\nsource = "lmdb:{tmp_path / "src"}"\n[schedule.backup]\n'
        f'workers = 2\n')
    env = {k: v for k, v in cli_env.items() if k not in ("DSBACKUP_NO_MALLOPT",
                                                         "MALLOC_ARENA_MAX")}
    r = subprocess.run([sys.executable, "-c", _THREAD_HEAPS, *args], env=env,
                       capture_output=True, text=True, check=True)
    assert r.stdout.split()[-2:] == ["0", "0"], r.stdout + r.stderr
