"""Test doubles shared by the test suite and the benchmarks; no product package imports them.

- ``fake_nvml``: an NVML-like object built from recorded ``nvmlDevice*`` values
  (``tests/unit/fixtures/nvml_*.json``), passed to :class:`agents.nvml.NvmlCollector`
  in place of ``pynvml``; ``python -m mfu_testing.fake_nvml`` records a real host.
- ``fake_engine``: a vLLM/SGLang-like ``/metrics`` endpoint serving given pages.
"""
