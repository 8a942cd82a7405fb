"""`mfu dev up|down|status|logs|env`: local Kafka + InfluxDB without Docker.

`mfu dev up` prints its progress on stderr and one ``export MFU_...`` line on stdout, so
``eval "$(mfu dev up)"`` configures a shell; `mfu dev env` prints that line again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from mfucli.main import CLIError

SERVICE_NAMES = ("kafka", "influxdb")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dev",
        help="run Kafka and InfluxDB locally (no Docker)",
        description="Provision (into $MFU_CACHE_DIR, default ~/.cache/mfu-pipeline) and run "
        "a local Kafka broker and InfluxDB for the demo and the tests.",
    )
    parser.set_defaults(func=lambda _args: parser.print_help() or 2)
    sub = parser.add_subparsers(dest="dev_command", metavar="ACTION")

    up = sub.add_parser("up", help="provision and start the services (idempotent)")
    up.add_argument(
        "services", nargs="*", metavar="SERVICE", help="kafka and/or influxdb (default: both)"
    )
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="stop the services")
    down.add_argument("--purge", action="store_true", help="also delete their data and logs")
    down.set_defaults(func=cmd_down)

    status = sub.add_parser("status", help="show what runs where (exit 1 if something is down)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)

    logs = sub.add_parser("logs", help="show the end of a service's log")
    logs.add_argument("service", choices=SERVICE_NAMES)
    logs.add_argument("-n", "--lines", type=int, default=50, help="how many lines (default 50)")
    logs.set_defaults(func=cmd_logs)

    env = sub.add_parser("env", help="print the export line for the running services")
    env.set_defaults(func=cmd_env)


def _progress(started: float):  # type: ignore[no-untyped-def]
    def report(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    return report


def cmd_up(args: argparse.Namespace) -> int:
    from devenv import services

    unknown = sorted(set(args.services) - set(SERVICE_NAMES))
    if unknown:
        raise CLIError(
            f"unknown service(s) {', '.join(unknown)}; choose from {', '.join(SERVICE_NAMES)}"
        )
    started = time.monotonic()
    progress = _progress(started)
    try:
        state = services.up(progress, services=args.services or services.SERVICES)
    except services.ServiceError as exc:
        raise CLIError(
            f"{exc}\n(see 'mfu dev logs kafka|influxdb'; stop with 'mfu dev down')"
        ) from exc
    progress(f"services up in {time.monotonic() - started:.1f} s; connection settings:")
    print(services.env_exports(state), flush=True)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from devenv import services

    stopped = services.down(_progress(time.monotonic()), purge=args.purge)
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from devenv import services

    report = services.status()
    recorded = {name: entry for name, entry in report.items() if len(entry) > 1}
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    elif not recorded:
        print("no services recorded; start them with 'mfu dev up'")
    else:
        for name, entry in report.items():
            if not entry["running"]:
                print(f"{name:9} down")
                continue
            where = entry.get("bootstrap") or entry.get("url")
            rss = entry.get("rss_bytes")
            memory = f", RSS {rss / 2**20:.0f} MiB" if rss else ""
            print(f"{name:9} up    {where}  pid {entry['pid']}{memory}  log {entry['log_path']}")
        exports = services.env_exports({k: v for k, v in report.items() if v["running"]})
        if exports:
            print(exports)
    return 0 if recorded and all(entry["running"] for entry in recorded.values()) else 1


def cmd_logs(args: argparse.Namespace) -> int:
    from devenv import services

    path = services.log_path(args.service)
    if not path.exists():
        raise CLIError(f"{args.service} has no log yet ({path}); start it with 'mfu dev up'")
    print(services.logs(args.service, args.lines))
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    from devenv import services

    running = {name: entry for name, entry in services.status().items() if entry["running"]}
    if not running:
        raise CLIError("no service is running; start them with 'mfu dev up'")
    print(services.env_exports(running))
    return 0
