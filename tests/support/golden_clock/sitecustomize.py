"""A frozen clock for building the golden archives (tests/support/golden.py).

Python imports this module at start-up when its directory is on PYTHONPATH; it does nothing
unless DSBACKUP_GOLDEN_CLOCK=1. The generator's process and the parallel scan's fork server
(started with the same environment) then see the same fixed values for what an archive records
of time and of the process: `datetime.now()` (manifest `created`, tar mtimes),
`time.perf_counter()` (summary `duration_s`) and `resource.getrusage()` (`cpu_s`,
`peak_rss_bytes`, the workers' `worker_peak_rss_bytes`). Installed before dsbackup is imported,
so every `from datetime import datetime` in it gets the frozen class, wherever the code lives.
"""

import os

if os.environ.get("DSBACKUP_GOLDEN_CLOCK") == "1":
    import datetime as _dt
    import resource as _resource
    import time as _time

    _FIXED = (2026, 1, 2, 3, 4, 5, 678901)

    class _FrozenDateTime(_dt.datetime):
        @classmethod
        def now(cls, tz=None):
            t = cls(*_FIXED, tzinfo=_dt.timezone.utc)
            return t if tz is None or tz is _dt.timezone.utc else t.astimezone(tz)

        @classmethod
        def utcnow(cls):
            return cls(*_FIXED)

    _dt.datetime = _FrozenDateTime
    _time.perf_counter = lambda: 1000.0
    _RUSAGE = _resource.struct_rusage((0.0, 0.0, 4096) + (0,) * 13)
    _resource.getrusage = lambda who: _RUSAGE
