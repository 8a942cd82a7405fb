"""Node agent: one per GPU host (DESIGN.md §2).

- ``nvml`` — collector: one ``gpu_sample/1`` per GPU / MIG slice per interval
  (``mfu_testing.fake_nvml`` replays recorded NVML values for tests and benchmarks).
- ``attribution`` — GPU process -> workload name (environment, Slurm, Kubernetes).
- ``sdk`` — ``FlopReporter`` for training/serving loops: a re-export of the stdlib-only
  ``mfu-sdk`` distribution (``sdk/``, package ``mfu_sdk``).
- ``intake`` — the agent's datagram socket validating ``flop_report/1``.
- ``publisher`` + ``spool`` — idempotent Kafka producer with a bounded on-disk buffer.
- ``metrics`` — Prometheus ``/metrics`` and ``/healthz``.
- ``agent`` + ``settings`` — the loop tying them together; ``AgentSettings`` (``MFU_AGENT_*``).
- ``simulator`` — a deterministic fleet with known MFU, published the same way.

Benchmarks of the agent and the SDK live in ``bench.agent`` (``mfu bench agent|sdk``).
"""
