"""`mfu policies`: run the rules stage, validate rules files, read policy events.

    mfu policies [run] [--rules FILE] [--app-id ID]   the Faust worker (default)
    mfu policies check FILE [FILE ...]                 validate rules files
    mfu policies tail [--from-beginning] [--max N]    print policy events, one a line
    mfu policies scaler [--apply] ...                 example autoscaler on io.mfu.scale.v1

Settings come from ``MFU_POLICIES_*`` and ``MFU_KAFKA_*``; flags override them.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

from mfu.events import CloudEvent


def register(sub: Any) -> None:
    p = sub.add_parser("policies", help="rules stage: MFU windows -> CloudEvents")
    _run_options(p, argparse.SUPPRESS)
    p.set_defaults(func=_run)
    psub = p.add_subparsers(dest="policies_command", metavar="SUBCOMMAND")

    run = psub.add_parser("run", help="run the Faust policies worker (the default)")
    _run_options(run, argparse.SUPPRESS)
    run.set_defaults(func=_run)

    check = psub.add_parser("check", help="validate rules files (exit 1 if any is refused)")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(func=_check)

    tail = psub.add_parser("tail", help="print policy events readably, one per line")
    tail.add_argument("--topic", help="policy topic (default: MFU_POLICIES_POLICY_TOPIC)")
    tail.add_argument("--from-beginning", action="store_true", help="start at the oldest event")
    tail.add_argument("--max", type=int, default=0, help="stop after N events (0 = follow)")
    tail.add_argument(
        "--idle-timeout",
        type=float,
        default=0.0,
        help="stop after S seconds without events (0 = never)",
    )
    tail.add_argument(
        "--type",
        dest="types",
        action="append",
        default=[],
        help="only this CloudEvent type (repeatable), e.g. io.mfu.drift.v1",
    )
    tail.add_argument("--json", action="store_true", help="print the raw CloudEvent JSON")
    tail.set_defaults(func=_tail)

    sc = psub.add_parser("scaler", help="example autoscaler: io.mfu.scale.v1 -> kubectl scale")
    sc.add_argument("--topic", help="policy topic (default: MFU_POLICIES_POLICY_TOPIC)")
    sc.add_argument("--from-beginning", action="store_true")
    sc.add_argument("--initial", type=int, default=1, help="replicas assumed before advice")
    sc.add_argument("--min", dest="min_replicas", type=int, default=1)
    sc.add_argument("--max", dest="max_replicas", type=int, default=64)
    sc.add_argument("--namespace", default="default")
    sc.add_argument(
        "--target-template", default="deployment/{key}", help="kubectl target for a workload key"
    )
    sc.add_argument(
        "--apply",
        action="store_true",
        help="run kubectl for real (default: print and --dry-run=client)",
    )
    sc.add_argument("--no-kubectl", action="store_true", help="only print the decisions")
    sc.add_argument("--max-events", type=int, default=0, help="stop after N decisions")
    sc.add_argument("--idle-timeout", type=float, default=0.0)
    sc.set_defaults(func=_scaler)


def _run_options(p: argparse.ArgumentParser, default: Any) -> None:
    p.add_argument("--rules", default=default, help="rules file (MFU_POLICIES_RULES_FILE)")
    p.add_argument("--app-id", default=default, help="Faust app id (MFU_POLICIES_APP_ID)")
    p.add_argument("--loglevel", default=default, choices=["debug", "info", "warning", "error"])


def _settings(args: argparse.Namespace) -> Any:
    from policies.settings import PolicySettings

    overrides = {
        name: getattr(args, attr)
        for attr, name in (("rules", "rules_file"), ("app_id", "app_id"), ("loglevel", "loglevel"))
        if getattr(args, attr, None) is not None
    }
    return PolicySettings(**overrides)


def _run(args: argparse.Namespace) -> int:
    from mfu.config import KafkaSettings
    from mfucli.main import CLIError
    from policies.app import run_worker
    from policies.rules import RulesError

    settings = _settings(args)
    try:
        run_worker(settings, KafkaSettings())
    except RulesError as exc:
        raise CLIError(f"rules refused, not starting:\n{exc.describe()}") from None
    return 0


def _check(args: argparse.Namespace) -> int:
    from policies.rules import RulesError, load_rules

    status = 0
    for path in args.files:
        try:
            config = load_rules(path)
        except RulesError as exc:
            print(exc.describe(), file=sys.stderr)
            status = 1
            continue
        kinds = sorted({r.kind for r in config.rules})
        print(f"{path}: ok, {len(config.rules)} rules ({', '.join(kinds) or 'none'})")
    return status


def _consume(topic: str, from_beginning: bool, idle_timeout: float) -> Iterator[CloudEvent | None]:
    """CloudEvents from ``topic`` (None for a value that is not one); stops after
    ``idle_timeout`` seconds without messages (0 = never)."""
    from confluent_kafka import Consumer

    from mfu.config import KafkaSettings
    from policies.cloudevents import parse_event

    conf = KafkaSettings().confluent_config()
    conf.update(
        {
            # A throwaway group: a reader never moves anyone else's offsets.
            "group.id": f"mfu-policies-reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            "enable.auto.commit": False,
        }
    )
    consumer = Consumer(conf)
    consumer.subscribe([topic])
    last = time.monotonic()
    try:
        while True:
            msg = consumer.poll(0.5)
            if msg is None:
                if idle_timeout and time.monotonic() - last > idle_timeout:
                    return
                continue
            if msg.error():
                continue
            last = time.monotonic()
            try:
                yield parse_event(msg.value())
            except ValueError:
                yield None
    finally:
        consumer.close()


def _topic(args: argparse.Namespace) -> str:
    from policies.settings import PolicySettings

    return args.topic or PolicySettings().policy_topic


def _tail(args: argparse.Namespace) -> int:
    from policies.cloudevents import format_line

    shown = 0
    for event in _consume(_topic(args), args.from_beginning, args.idle_timeout):
        if event is None or (args.types and event.type not in args.types):
            continue
        print(event.to_json().decode() if args.json else format_line(event), flush=True)
        shown += 1
        if args.max and shown >= args.max:
            break
    return 0


def _scaler(args: argparse.Namespace) -> int:
    from examples.scaler import Scaler

    scaler = Scaler(
        initial=args.initial,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        namespace=args.namespace,
        target_template=args.target_template,
        apply=args.apply,
    )
    done = 0
    for event in _consume(_topic(args), args.from_beginning, args.idle_timeout):
        decision = scaler.decide(event) if event is not None else None
        if decision is None:
            continue
        print(decision.line(), flush=True)
        if not args.no_kubectl:
            rc = scaler.execute(decision)
            if rc == 127:
                print("kubectl not found: printing decisions only", file=sys.stderr)
                args.no_kubectl = True
        done += 1
        if args.max_events and done >= args.max_events:
            break
    return 0
