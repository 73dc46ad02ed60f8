"""cli/_entry.py's console(): the process ends as a normal exit would (exit code, output,
atexit handlers, non-daemon threads), less the interpreter's teardown."""

import os
import subprocess
import sys


def _console(tmp_path, *args):
    code = (
        "import atexit, sys, threading, time\n"
        "marker = sys.argv.pop(1)\n"
        "def late():\n"
        "    time.sleep(0.2)\n"
        "    open(marker, 'w').write('thread')\n"
        "threading.Thread(target=late).start()\n"  # non-daemon: joined before the exit
        "atexit.register(lambda: print('atexit ran', flush=True))\n"
        "sys.argv = ['dsbackup'] + sys.argv[1:]\n"
        "from dsbackup.cli._entry import console\n"
        "console()\n"
        "print('not reached')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    marker = tmp_path / "marker"
    r = subprocess.run([sys.executable, "-c", code, str(marker), *args], env=env,
                       capture_output=True, text=True, timeout=120)
    return r, marker.read_text()


def test_console_exits_with_the_commands_code_output_and_handlers(tmp_path):
    r, marker = _console(tmp_path, "--version")
    assert r.returncode == 0
    assert r.stdout.splitlines()[0].startswith("dsbackup ")
    assert "atexit ran" in r.stdout and "not reached" not in r.stdout
    assert marker == "thread"
    r, marker = _console(tmp_path, "verify", "--json", str(tmp_path / "missing.tar.gz"))
    assert r.returncode == 2, r.stderr
    assert '"ok": false' in r.stdout and r.stdout.rstrip().endswith("atexit ran")
    assert marker == "thread"
