"""Node agent: one per GPU host (DESIGN.md §2).

- ``nvml`` — collector: one ``gpu_sample/1`` per GPU / MIG slice per interval
  (``fake_nvml`` replays recorded NVML values for tests and benchmarks).
- ``attribution`` — GPU process -> workload name (environment, Slurm, Kubernetes).
- ``sdk`` — ``FlopReporter`` for training/serving loops (stdlib-only import).
- ``intake`` — the agent's datagram socket validating ``flop_report/1``.
- ``publisher`` + ``spool`` — idempotent Kafka producer with a bounded on-disk buffer.
- ``metrics`` — Prometheus ``/metrics`` and ``/healthz``.
- ``agent`` + ``settings`` — the loop tying them together; ``AgentSettings`` (``MFU_AGENT_*``).
- ``simulator`` — a deterministic fleet with known MFU, published the same way.
- ``bench`` — CPU/memory overhead of the agent and the SDK (``mfu bench agent|sdk``).
"""
