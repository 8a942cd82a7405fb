"""`mfu streams`: run stream-stage Faust worker(s)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "streams",
        help="run the stream workers (windowed MFU per workload/node/fleet)",
        description="Consume mfu.telemetry.v1 and mfu.flops.v1, publish mfu_window/1 records "
        "to mfu.{workload,node,fleet}.v1 and InfluxDB. Settings: MFU_KAFKA_*, MFU_INFLUX_*, "
        "MFU_WINDOW_*, MFU_STREAMS_* environment variables.",
    )
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes to run (each takes a share of the partitions)")
    p.add_argument("--log-level", default=None, help="worker log level (default WARNING)")
    p.set_defaults(func=run)


def _worker(log_level: str | None) -> int:
    from faust.worker import Worker

    from mfu.config import KafkaSettings
    from mfucli.main import CLIError
    from mfuio.kafka_admin import (
        PartitionCountError,
        ensure_topics,
        plan_partitions,
        topic_partition_counts,
    )
    from streams.app import StreamSettings, build_app

    settings = StreamSettings()
    kafka = KafkaSettings()
    # Partition counts: adopt the inputs' (or refuse with the fix) before Faust declares
    # anything; a mismatch used to crash-loop the worker ("Unrecognized partition").
    changelog = f"{settings.app_id}-progress-changelog"
    names = [*settings.all_topics(), changelog]
    counts = topic_partition_counts(kafka, names)
    try:
        n = plan_partitions(counts, inputs=[settings.telemetry_topic, settings.flops_topic],
                            copartitioned=[settings.partials_topic, changelog],
                            configured=kafka.partitions, bootstrap=kafka.bootstrap)
    except PartitionCountError as exc:
        raise CLIError(str(exc)) from None
    if n != kafka.partitions:
        print(f"mfu streams: input topics have {n} partitions; using {n} "
              f"(MFU_KAFKA_PARTITIONS={kafka.partitions} applies to new topics only)",
              file=sys.stderr)
        kafka = kafka.model_copy(update={"partitions": n})
    ensure_topics(kafka, settings.all_topics())
    app, _ = build_app(settings, kafka)
    level = log_level or settings.log_level
    logging.basicConfig(level=level.upper(),
                        format='{"ts":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s",'
                        '"msg":"%(message)s"}')
    worker = Worker(app, loglevel=level.upper(), quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0


def run(args: argparse.Namespace) -> int:
    from mfucli.main import CLIError

    if args.workers < 1:
        raise CLIError("--workers must be >= 1")
    if args.workers == 1:
        return _worker(args.log_level)
    cmd = [sys.executable, "-m", "mfucli", "streams", "--workers", "1"]
    if args.log_level:
        cmd += ["--log-level", args.log_level]
    procs = [subprocess.Popen(cmd, env=os.environ.copy()) for _ in range(args.workers)]

    def _stop(signum: int, _frame: object) -> None:
        for p in procs:
            p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    codes = [p.wait() for p in procs]
    return max(codes)
