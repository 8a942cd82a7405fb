"""The peer a user would otherwise pick: a quixstreams app doing the node-level job of
``mfu streams`` on the bench's input (``mfu bench streams`` runs it in its own venv,
because quixstreams pins older confluent-kafka and pydantic than this project).

The job, written the way quixstreams' docs write it: read ``mfu.telemetry.v1`` and
``mfu.flops.v1`` (``batch/1`` JSON), expand each batch into its events, take each event's
own event time, and per node (the message key) a 10 s event-time tumbling window with a
grace period that sums GPU-seconds, peak FLOPs and reported FLOPs, emitted once
(``final()``) to an output topic as node MFU. It does less than our worker (no
validation, de-duplication, dead letters, pro-rata splitting across windows, workload or
fleet roll-up, InfluxDB), so the comparison flatters the peer.

Environment: ``PEER_BOOTSTRAP``, ``PEER_TELEMETRY``, ``PEER_FLOPS``, ``PEER_OUTPUT``,
``PEER_GROUP``, ``PEER_WINDOW_S``, ``PEER_GRACE_S``, ``PEER_PEAK_FLOPS_PER_S`` (one GPU's
peak), ``PEER_LAST_WINDOW_S`` (start of the last data window), ``PEER_NODES``,
``PEER_EXPECT_MFU`` and ``PEER_EXPECT_GPU_S`` (what every node-window must hold: the
check that the peer computed the job, not just read it) and ``PEER_LOGLEVEL``. Prints
``PEER <wall seconds> <cpu seconds> <windows> <wrong windows>`` once every node's last
window is out, timed from the first message, then stops.

Windows close on the partition's event time (``final(closing_strategy="partition")``),
as our worker's do: with quixstreams' default (``"key"``) a node's last window closes
only when that same node sends a later event, so the last windows of a finished feed
never close (the peer then waited until the bench's timeout killed it, printing nothing).
"""

from __future__ import annotations

import os
import sys
import time

from quixstreams import Application

env = os.environ
window_ms = int(float(env["PEER_WINDOW_S"]) * 1000)
grace_ms = int(float(env["PEER_GRACE_S"]) * 1000)
peak = float(env["PEER_PEAK_FLOPS_PER_S"])
last_ms = int(float(env["PEER_LAST_WINDOW_S"]) * 1000)
nodes = int(env["PEER_NODES"])
expect_mfu = float(env.get("PEER_EXPECT_MFU", "nan"))
expect_gpu_s = float(env.get("PEER_EXPECT_GPU_S", "nan"))
state = {"t0": 0.0, "c0": 0.0, "windows": 0, "last": 0, "wrong": 0}

app = Application(broker_address=env["PEER_BOOTSTRAP"], consumer_group=env["PEER_GROUP"],
                  auto_offset_reset="earliest", loglevel=env.get("PEER_LOGLEVEL", "WARNING"),
                  state_dir=env.get("PEER_STATE_DIR", "state"))
telemetry = app.topic(env["PEER_TELEMETRY"], value_deserializer="json")
flops = app.topic(env["PEER_FLOPS"], value_deserializer="json")
output = app.topic(env["PEER_OUTPUT"], value_serializer="json")


def started(value: dict) -> dict:
    if not state["t0"]:
        state["t0"], state["c0"] = time.perf_counter(), time.process_time()
    return value


def sample_part(ev: dict) -> dict:
    return {"gpu_s": ev["interval_s"], "peak_flops": peak * ev["interval_s"], "flops": 0.0}


def report_part(ev: dict) -> dict:
    return {"gpu_s": 0.0, "peak_flops": 0.0, "flops": ev["flops"]}


def add(acc: dict, part: dict) -> dict:
    acc["gpu_s"] += part["gpu_s"]
    acc["peak_flops"] += part["peak_flops"]
    acc["flops"] += part["flops"]
    return acc


def record(win: dict) -> dict:
    v = win["value"]
    mfu = v["flops"] / v["peak_flops"] if v["peak_flops"] > 0 else None
    return {"window_start": win["start"] / 1000, "window_end": win["end"] / 1000,
            "mfu": mfu, "gpu_seconds": v["gpu_s"], "achieved_flops": v["flops"]}


def done(rec: dict) -> None:
    state["windows"] += 1
    if (rec["mfu"] is None or abs(rec["mfu"] - expect_mfu) > 1e-9
            or abs(rec["gpu_seconds"] - expect_gpu_s) > 1e-9):
        state["wrong"] += 1
        if state["wrong"] <= 3:
            sys.stderr.write(f"peer: wrong window {rec}\n")
    if rec["window_start"] * 1000 == last_ms:
        state["last"] += 1
        if state["last"] == nodes:
            wall = time.perf_counter() - state["t0"]
            cpu = time.process_time() - state["c0"]
            sys.stdout.write(f"PEER {wall} {cpu} {state['windows']} {state['wrong']}\n")
            sys.stdout.flush()
            app.stop()


samples = (app.dataframe(telemetry).apply(started)
           .apply(lambda v: v["events"], expand=True)
           .set_timestamp(lambda v, k, t, h: int((v["ts"] - v["interval_s"]) * 1000))
           .apply(sample_part))
reports = (app.dataframe(flops).apply(started)
           .apply(lambda v: v["events"], expand=True)
           .set_timestamp(lambda v, k, t, h: int(v["start"] * 1000))
           .apply(report_part))
windows = (samples.concat(reports)
           .tumbling_window(duration_ms=window_ms, grace_ms=grace_ms)
           .reduce(add, lambda part: dict(part))
           .final(closing_strategy="partition")
           .apply(record))
windows.update(done)
windows.to_topic(output)

if __name__ == "__main__":
    app.run()
