"""Agent and SDK overhead: ``mfu bench agent`` / ``mfu bench sdk``.

Agent: CPU time per interval of the NVML collector (a :class:`~mfu_testing.fake_nvml.FakeNvml`
of ``--gpus`` GPUs with GPM, one process each, attributed through a fake ``/proc``)
plus the publish path (``batch/1`` encoding and the producer call; librdkafka stubbed
unless ``--bootstrap`` names a broker), against a baseline in the same run: a bare loop
building the same sample dicts and JSON. Target: ``--gpus`` GPUs at 1 Hz under 1% of one
core. The fake stands in for the driver, so real NVML ioctls come on top (measure on a
GPU host with ``--real-nvml``).

SDK: nanoseconds per ``FlopReporter.step()`` (accumulating; one datagram a second)
against a bare ``acc += tokens * k`` loop, and microseconds per report sent (JSON +
``sendto``) to a live socket and to an absent agent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agents.attribution import ProcAttributor
from agents.nvml import NvmlCollector
from agents.publisher import Publisher, producer_config
from agents.sdk import FlopReporter
from agents.spool import Spool
from mfu.config import KafkaSettings
from mfu.topics import FLOPS, TELEMETRY
from mfu_testing.fake_nvml import FakeNvml, node_document

TARGET_CORE_FRACTION = 0.01


class _Msg:
    __slots__ = ("_key", "_topic", "_value")

    def __init__(self, topic: str, value: bytes, key: bytes) -> None:
        self._topic, self._value, self._key = topic, value, key

    def topic(self) -> str:
        return self._topic

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes:
        return self._key


class NullProducer:
    """Acknowledges everything on the next poll: isolates the agent's own cost."""

    def __init__(self, _config: dict[str, Any]) -> None:
        self._pending: list[tuple[Callable, _Msg]] = []
        self.bytes = 0

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Callable) -> None:
        self.bytes += len(value)
        self._pending.append((on_delivery, _Msg(topic, value, key)))

    def poll(self, timeout: float = 0.0) -> int:
        pending, self._pending = self._pending, []
        for callback, msg in pending:
            callback(None, msg)
        if not pending and timeout > 0:
            time.sleep(timeout)  # librdkafka's poll blocks too: the agent loop sleeps in it
        return len(pending)

    def flush(self, _timeout: float = 0.0) -> int:
        self.poll()
        return 0

    def purge(self, **_kw: Any) -> None:
        pass

    def __len__(self) -> int:
        return len(self._pending)


def _rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _fake_proc(root: Path, pids: list[int]) -> None:
    for pid in pids:
        d = root / str(pid)
        d.mkdir(parents=True, exist_ok=True)
        (d / "environ").write_bytes(
            b"PATH=/usr/bin\0HOME=/root\0MFU_WORKLOAD=job-%d\0RANK=0\0"
            b"SLURM_JOB_ACCOUNT=team-%d\0" % (pid % 3, pid % 3))  # exercises tenants
        (d / "cgroup").write_text("0::/system.slice/job.scope\n")


def _baseline_tick(n: int, ts: float, node: str) -> bytes:
    """The same sample content as plain dicts + json: the floor any agent pays."""
    events = []
    for i in range(n):
        events.append({
            "schema": "gpu_sample/1", "event_id": f"{node}-{i}-{int(ts * 1000)}", "node": node,
            "gpu_uuid": f"GPU-{i:08x}", "gpu_index": i, "gpu_name": "NVIDIA H100 80GB HBM3",
            "mig_profile": None, "ts": ts, "interval_s": 1.0, "sm_util": 0.97, "mem_util": 0.41,
            "tensor_active": 0.38, "sm_clock_mhz": 1980.0, "max_sm_clock_mhz": 1980.0,
            "power_w": 650.0, "mem_used_bytes": 70_000_000_000,
            "mem_total_bytes": 85_520_809_984, "throttle_reasons": 0, "workloads": ["job-1"],
            "energy_j": 650.0, "energy_source": "counter", "dram_active": 0.4,
            "fp16_active": 0.015, "fp32_active": 0.06, "fp64_active": 0.0,
            "tenants": {"job-1": "team-1"}})
    return json.dumps({"schema": "batch/1", "events": events}, separators=(",", ":")).encode()


def bench_agent(gpus: int, ticks: int, bootstrap: str | None, real_nvml: bool) -> dict[str, Any]:
    node = "bench-node"
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if real_nvml:
            nvml: Any = None
            proc_root: Path = Path("/proc")
        else:
            nvml = FakeNvml(node_document(gpus))
            proc_root = tmp_path / "proc"
            _fake_proc(proc_root, [1000 + i for i in range(gpus)])
        collector = NvmlCollector(node, nvml=nvml, attributor=ProcAttributor(proc_root))
        if bootstrap:
            config = producer_config(KafkaSettings(bootstrap=bootstrap))
            publisher = Publisher(Spool(tmp_path / "spool"), config=config)
        else:
            publisher = Publisher(Spool(tmp_path / "spool"), config={},
                                  producer_factory=NullProducer)
        ts = 1_700_000_000.0
        collector.start(ts)
        # warm-up (first GPM/util marks, caches)
        for _ in range(5):
            ts += 1.0
            if nvml is not None:
                nvml.advance(1.0)
            publisher.publish(TELEMETRY, collector.collect(ts), key=node)
            publisher.poll(0)

        collect_cpu = publish_cpu = 0.0
        samples = 0
        wall0 = time.perf_counter()
        loop0 = time.process_time()  # all threads, librdkafka's included
        for _ in range(ticks):
            ts += 1.0
            if nvml is not None:
                nvml.advance(1.0)  # the fake's own clock: not agent work, not timed
            c0 = time.process_time()
            batch = collector.collect(ts)
            c1 = time.process_time()
            publisher.publish(TELEMETRY, batch, key=node)
            publisher.publish(FLOPS, [], key=node)
            publisher.poll(0)
            c2 = time.process_time()
            collect_cpu += c1 - c0
            publish_cpu += c2 - c1
            samples += len(batch)
        publisher.flush(10.0)
        loop_cpu = time.process_time() - loop0
        wall = time.perf_counter() - wall0
        publisher.close(5.0)
        collector.close()
        # the fake driver's clock is not agent work: take it out of the whole-loop figure
        a0 = time.process_time()
        for _ in range(ticks if nvml is not None else 0):
            nvml.advance(1.0)
        loop_cpu -= time.process_time() - a0

        b0 = time.process_time()
        for k in range(ticks):
            _baseline_tick(gpus, 1_700_000_000.0 + k, node)
        baseline_cpu = time.process_time() - b0

    per_tick = (collect_cpu + publish_cpu) / ticks
    return {
        "gpus": gpus, "ticks": ticks, "samples": samples,
        "nvml": "real" if real_nvml else "fake",
        "producer": f"kafka {bootstrap}" if bootstrap else "stub (no librdkafka)",
        "collect_us_per_sample": collect_cpu / samples * 1e6,
        "publish_us_per_sample": publish_cpu / samples * 1e6,
        "cpu_us_per_sample": (collect_cpu + publish_cpu) / samples * 1e6,
        "cpu_ms_per_tick": per_tick * 1e3,
        "process_cpu_ms_per_tick": loop_cpu / ticks * 1e3,
        "core_fraction_at_1hz": per_tick / 1.0,
        "baseline_us_per_sample": baseline_cpu / (ticks * gpus) * 1e6,
        "ratio_to_baseline": (collect_cpu + publish_cpu) / baseline_cpu if baseline_cpu else None,
        "wall_s": wall,
        "rss_mib": _rss_bytes() / 2**20,
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "target_core_fraction": TARGET_CORE_FRACTION,
        "target_met": max(per_tick, loop_cpu / ticks) < TARGET_CORE_FRACTION,
    }


def bench_paced(gpus: int, seconds: float, bootstrap: str | None) -> dict[str, Any]:
    """The whole agent (loop, intake and metrics threads, producer) at a 1 Hz interval on
    the wall clock for ``seconds``: process CPU time / wall time = share of one core."""
    from agents.agent import Agent
    from agents.settings import AgentSettings

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        _fake_proc(tmp_path / "proc", [1000 + i for i in range(gpus)])
        kafka = KafkaSettings(bootstrap=bootstrap or "127.0.0.1:9")
        settings = AgentSettings(node="bench-node", interval_s=1.0, metrics_port=0,
                                 socket=str(tmp_path / "agent.sock"), proc_root=tmp_path / "proc",
                                 spool_dir=tmp_path / "spool", kafka=kafka)
        agent = Agent(settings, nvml=FakeNvml(node_document(gpus), clock=time.time),
                      producer_factory=None if bootstrap else NullProducer)
        stop = threading.Event()
        runner = threading.Thread(target=agent.run, args=(stop,))
        runner.start()
        time.sleep(1.5)  # start-up (NVML discovery, sockets) is not steady state
        c0, w0, ticks0 = time.process_time(), time.perf_counter(), agent.stats[("ticks",)]
        time.sleep(seconds)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        ticks = agent.stats[("ticks",)] - ticks0
        stop.set()
        runner.join(15)
        delivered = sum(v for k, v in agent.publisher.stats.items() if k[0] == "delivered_events")
    return {"gpus": gpus, "seconds": wall, "intervals": ticks, "delivered_events": delivered,
            "producer": f"kafka {bootstrap}" if bootstrap else "stub (no librdkafka)",
            "core_fraction": cpu / wall, "cpu_ms_per_interval": cpu / max(ticks, 1) * 1e3,
            "rss_mib": _rss_bytes() / 2**20,
            "target_met": cpu / wall < TARGET_CORE_FRACTION}


def bench_sdk(calls: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "agent.sock")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        server.bind(path)
        server.settimeout(0.2)
        stop = threading.Event()

        def drain() -> None:
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    server.recv(70000)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        try:
            tokens = 4096.0
            reporter = FlopReporter("bench", 0, model=6 * 7e9, socket_address=path,
                                    gpu_uuid="GPU-bench")
            t0 = time.perf_counter_ns()
            for _ in range(calls):
                reporter.step(tokens)
            step_ns = (time.perf_counter_ns() - t0) / calls
            sent_during_steps = reporter.stats["sent"]

            acc = 0.0
            k = 6 * 7e9
            t0 = time.perf_counter_ns()
            for _ in range(calls):
                acc += tokens * k
            bare_ns = (time.perf_counter_ns() - t0) / calls

            n = min(calls, 20_000)
            now = time.time()
            t0 = time.perf_counter_ns()
            for i in range(n):
                reporter.report(flops=1e12, start=now + i, end=now + i + 1)
            send_live_us = (time.perf_counter_ns() - t0) / n / 1e3
            live_stats = dict(reporter.stats)

            absent = FlopReporter("bench", 0, model=6 * 7e9, gpu_uuid="GPU-bench",
                                  socket_address=os.path.join(tmp, "nobody.sock"))
            t0 = time.perf_counter_ns()
            for i in range(n):
                absent.report(flops=1e12, start=now + i, end=now + i + 1)
            send_absent_us = (time.perf_counter_ns() - t0) / n / 1e3
            absent_stats = dict(absent.stats)
            reporter.close()
            absent.close()
        finally:
            stop.set()
            reader.join(1.0)
            server.close()
    return {
        "step_ns": step_ns, "bare_loop_ns": bare_ns,
        "step_overhead_ns": step_ns - bare_ns, "ratio_to_bare_loop": step_ns / bare_ns,
        "reports_sent_during_steps": sent_during_steps,
        "report_us_live_agent": send_live_us, "report_us_agent_absent": send_absent_us,
        "live_stats": live_stats, "absent_stats": absent_stats,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mfu bench agent", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("agent", "sdk"), help="run one part")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=600, help="1 Hz intervals to run")
    parser.add_argument("--sdk-calls", type=int, default=1_000_000)
    parser.add_argument("--bootstrap", help="publish to this Kafka instead of a stub")
    parser.add_argument("--real-nvml", action="store_true", help="use pynvml (GPU host)")
    parser.add_argument("--paced-s", type=float, default=20.0,
                        help="also run the whole agent at 1 Hz on the wall clock this long "
                        "(0: skip)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    result: dict[str, Any] = {}
    if args.only in (None, "agent"):
        result["agent"] = bench_agent(args.gpus, args.seconds, args.bootstrap, args.real_nvml)
        if args.paced_s > 0 and not args.real_nvml:
            result["paced"] = bench_paced(args.gpus, args.paced_s, args.bootstrap)
    if args.only in (None, "sdk"):
        result["sdk"] = bench_sdk(args.sdk_calls)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        if "agent" in result:
            a = result["agent"]
            print(f"agent: {a['gpus']} GPUs x {a['ticks']} intervals, NVML {a['nvml']}, "
                  f"producer {a['producer']}")
            print(f"  collect            {a['collect_us_per_sample']:8.1f} us CPU / sample")
            print(f"  publish            {a['publish_us_per_sample']:8.1f} us CPU / sample")
            print(f"  total              {a['cpu_us_per_sample']:8.1f} us CPU / sample "
                  f"({a['ratio_to_baseline']:.1f}x the bare dict+json baseline of "
                  f"{a['baseline_us_per_sample']:.1f} us)")
            print(f"  per 1 Hz interval  {a['cpu_ms_per_tick']:8.3f} ms CPU = "
                  f"{a['core_fraction_at_1hz'] * 100:.3f}% of one core "
                  f"(target < {TARGET_CORE_FRACTION * 100:.0f}%: "
                  f"{'met' if a['target_met'] else 'MISSED'})")
            print(f"  whole process      {a['process_cpu_ms_per_tick']:8.3f} ms CPU / interval "
                  f"(all threads incl. librdkafka, fake driver's clock excluded)")
            print(f"  memory             {a['rss_mib']:8.1f} MiB RSS "
                  f"(peak {a['max_rss_mib']:.1f} MiB, whole process)")
        if "paced" in result:
            p = result["paced"]
            print(f"agent process, paced at 1 Hz for {p['seconds']:.0f} s "
                  f"({p['intervals']} intervals, producer {p['producer']}):")
            print(f"  CPU                {p['cpu_ms_per_interval']:8.3f} ms / interval = "
                  f"{p['core_fraction'] * 100:.3f}% of one core, all threads "
                  f"(target < {TARGET_CORE_FRACTION * 100:.0f}%: "
                  f"{'met' if p['target_met'] else 'MISSED'})")
        if "sdk" in result:
            s = result["sdk"]
            print("sdk:")
            print(f"  step()             {s['step_ns']:8.0f} ns / call "
                  f"(bare loop {s['bare_loop_ns']:.0f} ns; overhead "
                  f"{s['step_overhead_ns'] / 1e3:.2f} us, {s['ratio_to_bare_loop']:.1f}x)")
            print(f"  report sent        {s['report_us_live_agent']:8.2f} us / datagram "
                  f"(agent absent: {s['report_us_agent_absent']:.2f} us, dropped and counted)")
    met = all(result.get(k, {}).get("target_met", True) for k in ("agent", "paced"))
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
