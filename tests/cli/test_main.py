"""dsbackup.cli.main: command dispatch imports only the command that runs."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

from dsbackup.cli import main


def test_command_is_found_after_global_options():
    assert main._command_in(["backup", "src", "dst"]) == "backup"
    assert main._command_in(["-v", "-v", "restore", "a", "b"]) == "restore"
    assert main._command_in(["--verbose", "verify", "a"]) == "verify"
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


def test_unknown_command_gets_the_usage_error():
    r = subprocess.run([sys.executable, "-m", "dsbackup", "frobnicate"], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "invalid choice" in r.stderr


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
