import sys

try:
    from dsbackup.cli._entry import run
except KeyboardInterrupt:  # Ctrl-C at start-up: no traceback (dsbackup.cli.main does the rest)
    print("dsbackup: interrupted", file=sys.stderr)
    raise SystemExit(130) from None

raise SystemExit(run())
