"""`dsbackup schedule run|list|run-once --config FILE`: the backup scheduler daemon."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from dsbackup.cli._common import _stop_signals, add_json_flag, emit_json, port
from dsbackup.errors import EXIT_OK
from dsbackup.scheduler import (
    CronSchedule,
    DaemonLock,
    LoadedConfig,
    Redactor,
    StateStore,
    get_zone,
    load_config,
    pid_alive,
)

COMMAND = "schedule"
HELP = "scheduled backups: run the daemon, list schedules, run one schedule now"

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    run = sub.add_parser("run", help="run the scheduler in the foreground (SIGTERM/SIGINT/SIGHUP "
                                     "stop it gracefully; a second signal cancels running "
                                     "backups)")
    run.add_argument("--config", required=True, type=Path, help="TOML configuration file")
    run.add_argument("--metrics-port", type=port, default=None,
                     help="serve Prometheus metrics on 127.0.0.1:PORT/metrics (0: any port)")
    run.add_argument("--metrics-textfile", type=Path, default=None,
                     help="write Prometheus metrics to this file (node_exporter textfile)")
    lst = sub.add_parser("list", help="show schedules with their next and last runs")
    lst.add_argument("--config", required=True, type=Path, help="TOML configuration file")
    add_json_flag(lst)
    once = sub.add_parser("run-once", help="run one schedule now (refused while a daemon "
                                           "serves the same state directory: exit code 4)")
    once.add_argument("id", help="schedule id")
    once.add_argument("--config", required=True, type=Path, help="TOML configuration file")
    add_json_flag(once)


def run(args: argparse.Namespace) -> int:
    loaded = load_config(args.config)
    if args.action == "run":
        return _run_daemon(args, loaded)
    if args.action == "list":
        return _list(args, loaded)
    return _run_once(args, loaded)


def _iso(t: datetime | None, tz: Any) -> str | None:
    return t.astimezone(tz).isoformat() if t else None


def _run_daemon(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    from dsbackup.scheduler import BackupScheduler

    cfg = loaded.scheduler
    if args.metrics_port is not None:
        cfg.metrics_port = args.metrics_port
    if args.metrics_textfile is not None:
        cfg.metrics_textfile = args.metrics_textfile
    scheduler = BackupScheduler(cfg)  # LockedError (exit 4) if another daemon serves the dir
    stop = threading.Event()
    signals = {"count": 0}

    def on_signal(signum: int, frame: Any) -> None:
        signals["count"] += 1
        if signals["count"] == 1:
            print(f"dsbackup: {signal.Signals(signum).name}: stopping; running backups finish "
                  "their archive (send again to cancel them)", file=sys.stderr, flush=True)
            stop.set()
        else:
            n = scheduler.cancel_running()
            print(f"dsbackup: cancelling {n} running backup(s)", file=sys.stderr, flush=True)

    # SIGHUP (a closed terminal) as SIGTERM, unless ignored (nohup): it raised
    # KeyboardInterrupt, so a second one left the running backups where they stood
    old = {s: signal.signal(s, on_signal)
           for s in {signal.SIGTERM, signal.SIGINT, *_stop_signals()}}
    try:
        for sched in loaded.schedules:
            scheduler.add_schedule(sched)
        scheduler.start()
        where = (f", metrics on http://127.0.0.1:{scheduler.metrics_port}/metrics"
                 if scheduler.metrics_port is not None else "")
        print(f"dsbackup: scheduler running: {len(loaded.schedules)} schedule(s), state "
              f"{cfg.state_path}{where}", file=sys.stderr, flush=True)
        if not any(s.enabled for s in loaded.schedules):
            print(f"dsbackup: warning: {args.config}: every schedule is disabled (enabled = "
                  "false): no backup will run", file=sys.stderr, flush=True)
        while not stop.wait(1.0):
            pass
        scheduler.stop(wait=True)
    finally:
        scheduler.close()
        for s, h in old.items():
            signal.signal(s, h)
    print("dsbackup: scheduler stopped", file=sys.stderr, flush=True)
    return EXIT_OK


def _daemon_pid(state_dir: Path) -> int | None:
    lock = DaemonLock(state_dir)
    try:
        pid = int(lock.path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid_alive(pid) else None


def schedule_rows(loaded: LoadedConfig, daemon_alive: bool) -> list[dict[str, Any]]:
    """The schedules of a configuration merged with their persisted state (no lock taken)."""
    cfg = loaded.scheduler
    tz = get_zone(cfg.time_zone)
    state = StateStore(cfg.state_path).load()
    now = datetime.now(tz)
    redact = Redactor(cfg.notification_config.secrets())
    rows = []
    for s in loaded.schedules:
        st = state.get(s.id)
        stats = st.statistics if st and st.statistics else s.statistics
        # the expression or zone edited since next_run was computed: the daemon recomputes it
        # when it starts (a daemon running now keeps the old one until restarted)
        changed = bool(st and st.timing and st.timing != f"{s.schedule} {cfg.time_zone}")
        if st and st.next_run and (daemon_alive or not changed):
            nxt = st.next_run
        else:
            last_run = st.last_run if st and st.last_run else now
            nxt = CronSchedule(s.schedule, tz).next_after(max(now, last_run))
        last = st.last_result if st else None
        rows.append({
            "id": s.id, "name": s.name, "cron": s.schedule, "time_zone": cfg.time_zone,
            "source": redact(s.source_label()), "enabled": s.enabled,
            "backup_dir": str(s.backup_dir or cfg.default_backup_dir),
            "next_run": _iso(nxt, tz) if s.enabled else None,
            "restart_needed": changed and daemon_alive,  # it serves the previous expression
            "last_run": _iso(st.last_run if st else None, tz),
            "last_result": None if last is None else {
                "ok": last.ok, "trigger": last.trigger, "archive": last.archive,
                "parent": last.parent, "fallback": last.fallback,
                "error": redact(last.error) if last.error else None,
                "duration_s": round(last.duration, 3), "notified": last.notified},
            # a run marker left by a killed daemon is not a running backup
            "running": bool(st and st.running and daemon_alive),
            "archives": len(st.archives or []) if st else 0,
            "statistics": {"runs": stats.runs, "successes": stats.successes,
                           "failures": stats.failures, "skipped": stats.skipped,
                           "success_rate": stats.success_rate,
                           "average_duration_s": stats.average_duration,
                           "last_success": _iso(stats.last_success, tz),
                           "last_failure": _iso(stats.last_failure, tz)},
        })
    return rows


def _list(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    pid = _daemon_pid(loaded.scheduler.state_path)
    rows = schedule_rows(loaded, pid is not None)
    if args.json:
        emit_json("schedule list", {"ok": True, "daemon": {"running": pid is not None,
                                                           "pid": pid}, "schedules": rows})
        return EXIT_OK
    print(f"daemon: {f'running (pid {pid})' if pid else 'not running'}")
    for r in rows:
        st = r["statistics"]
        last = r["last_result"]
        outcome = "never run" if last is None else ("ok" if last["ok"] else
                                                    f"FAILED: {last['error']}")
        if last is not None and last["fallback"]:
            outcome = f"ok, full backup instead of incremental: {last['fallback']}"
        rate = f"{st['success_rate']:.0%}" if st["success_rate"] is not None else "-"
        if r["restart_needed"]:
            outcome += "; the daemon runs the previous cron expression until restarted"
        print(f"{r['id']}  [{r['cron']}]{'' if r['enabled'] else ' (disabled)'}  "
              f"next {r['next_run'] or '-'}  last {r['last_run'] or '-'} ({outcome})  "
              f"runs {st['runs']}, success {rate}, archives {r['archives']}")
    return EXIT_OK


def _run_once(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    from dsbackup.errors import ConfigError
    from dsbackup.scheduler import BackupScheduler

    if args.id not in {s.id for s in loaded.schedules}:
        raise ConfigError(f"{args.config}: no schedule with id {args.id!r}")
    with BackupScheduler(loaded.scheduler) as scheduler:
        for sched in loaded.schedules:
            scheduler.add_schedule(sched)
        rec = scheduler.execute_backup(args.id)
    if args.json:
        emit_json("schedule run-once", {
            "ok": rec.ok, "id": args.id, "archive": rec.archive, "fingerprint": rec.fingerprint,
            "size": rec.size, "keys": rec.keys, "verified": rec.verified, "parent": rec.parent,
            "fallback": rec.fallback, "pruned": rec.pruned,
            "duration_s": round(rec.duration, 3), "error": rec.error,
            "error_type": rec.error_type, "exit_code": rec.exit_code})
    elif rec.ok:
        print(f"{args.id}: {rec.archive} ({rec.keys} keys, {rec.size} bytes, "
              f"{rec.duration:.2f} s); pruned {len(rec.pruned)}")
    else:
        print(f"dsbackup: error: {args.id}: {rec.error}", file=sys.stderr)
    return rec.exit_code
