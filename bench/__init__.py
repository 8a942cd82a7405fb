"""Benchmarks (``mfu bench agent|sdk|streams``); no product package imports them.

- ``agent``: CPU time and memory of the NVML collector (on :mod:`mfu_testing.fake_nvml`),
  the agent loop and the FLOP SDK's ``step()`` (``mfu bench agent``, ``mfu bench sdk``);
- ``streams``: stream-stage throughput and latency against the real broker, with the
  quixstreams peer in ``peers/`` (``mfu bench streams``).
"""
