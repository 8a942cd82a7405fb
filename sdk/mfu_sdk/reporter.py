"""FLOP reporter: a training or serving loop tells the node agent what it computed.

Usage::

    from mfu_sdk import FlopReporter

    reporter = FlopReporter(workload="job-42", model=hf_config_dict, seq_len=4096,
                            precision="bf16", mode="train")
    for batch in loader:
        loss = train_step(batch)
        reporter.step(tokens=batch.numel())     # ~1 µs; never blocks, never raises

``model`` is a Hugging Face config dict (or an ``mfu_sdk.flops.ModelConfig``): FLOPs per token
come from :func:`mfu_sdk.flops.flops_per_token` (imported only then). A number is taken as
model FLOPs per token. Without ``model``, pass FLOPs yourself: ``step(flops=...)``, e.g.
measured once with :func:`measure_flops` (PyTorch's ``FlopCounterMode``), or send whole
intervals with :meth:`FlopReporter.report`.

Bytes (the MBU numerator, ``flop_report/1`` field ``bytes``): in ``mode="decode"`` with a
model config, each token adds :func:`mfu_sdk.flops.decode_bytes` ``.bytes_per_token`` for
``batch_size`` (default 1) sequences of ``seq_len`` context tokens (weights read once per
step at the precision's width + the batch's KV cache); or pass ``bytes=`` to
:meth:`FlopReporter.step` / :meth:`FlopReporter.report` yourself.

``step()`` only adds to counters; once ``flush_interval_s`` (1 s) has passed since the
last report it sends one ``flop_report/1`` covering ``[last report, now)`` as a JSON
datagram to the agent: a Unix datagram socket (``$MFU_AGENT_SOCKET``, default
``/run/mfu/agent.sock``) or ``udp://127.0.0.1:PORT``. Sending uses ``MSG_DONTWAIT``:
when the agent is down or its socket buffer is full the report is dropped and counted
in ``reporter.stats``; nothing the SDK does raises into the caller's loop after
construction (bad arguments to the constructor do raise). What is accumulated when the
process exits is flushed then (``atexit``); call :meth:`FlopReporter.close` to do it sooner.

Intake contract (the node agent's ``agents.intake`` in the pipeline): the SDK omits ``node`` (the agent stamps
it). ``gpu_uuid`` is sent when known (argument, or a ``GPU-``/``MIG-`` entry of
``CUDA_VISIBLE_DEVICES`` picked by ``LOCAL_RANK``); otherwise the datagram carries the
``gpu_index`` hint (from ``CUDA_VISIBLE_DEVICES``/``LOCAL_RANK``) and the sender ``pid``
and the agent fills the UUID in. Defaults: ``workload`` from ``MFU_WORKLOAD``, then
``SLURM_JOB_ID``, then the Kubernetes pod (same rules as the agent's attribution);
``rank`` from ``RANK``.

Event ids are ``{workload}-r{rank}-{random 6 hex}-{sequence}``: unique across ranks,
restarts and replicas that share a rank number.

Standard library only (``pip install ./sdk`` installs nothing else); torch and
:mod:`mfu_sdk.flops` load on demand.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import socket
import time
import weakref
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mfu_sdk.attribution import UNATTRIBUTED, workload_from_cgroup, workload_from_environ

SOCKET_ENV = "MFU_AGENT_SOCKET"
DEFAULT_SOCKET = "/run/mfu/agent.sock"
SCHEMA = "flop_report/1"
PRECISIONS = ("fp64", "fp32", "tf32", "bf16", "fp16", "fp8", "int8")
PHASES = ("train", "prefill", "decode")
# A report may cover at most this long (mfu.events.MAX_INTERVAL_S, kept stdlib-only here).
_MAX_INTERVAL_S = 3600.0


def default_workload(env: Mapping[str, str] | None = None, proc_self: str = "/proc/self") -> str:
    """Workload name the agent's attribution would give this process."""
    name = workload_from_environ(os.environ if env is None else env)
    if name:
        return name
    try:
        name = workload_from_cgroup(Path(proc_self, "cgroup").read_text())
    except OSError:
        name = None
    return name or UNATTRIBUTED


def gpu_from_environment(env: Mapping[str, str], device: int | None = None
                         ) -> tuple[str | None, int | None]:
    """(gpu_uuid, nvml_index) of this process's GPU, either may be None.

    ``device``: the CUDA ordinal in this process (default ``LOCAL_RANK``, else 0).
    ``CUDA_VISIBLE_DEVICES`` entries that are UUIDs (or UUID prefixes) give the UUID;
    integer entries give the NVML index (exact when ``CUDA_DEVICE_ORDER=PCI_BUS_ID``,
    which cluster launchers set).
    """
    if device is None:
        try:
            device = int(env.get("LOCAL_RANK", "0"))
        except ValueError:
            device = 0
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return None, device
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if not 0 <= device < len(entries):
        return None, None
    entry = entries[device]
    if entry.startswith(("GPU-", "MIG-")):
        return entry, None
    if entry.isdigit():
        return None, int(entry)
    return None, None


def _address(value: str) -> tuple[int, Any]:
    if value.startswith("udp://"):
        host, _, port = value[len("udp://"):].rpartition(":")
        return socket.AF_INET, (host.strip("[]") or "127.0.0.1", int(port))
    return socket.AF_UNIX, value


class FlopReporter:
    """Accumulates model FLOPs per step and reports them to the local agent.

    Units: FLOPs (not FLOP/s) per token and per step; times are epoch seconds.

    - ``model``: HF config dict, ``mfu_sdk.flops.ModelConfig``, model FLOPs per token (number),
      or None (then give ``flops=`` to :meth:`step`).
    - ``seq_len``, ``mode`` (``train``/``prefill``/``decode``), ``causal``, ``recompute``:
      passed to ``mfu_sdk.flops.flops_per_token``; ``mode`` is also sent as ``phase``.
    - ``precision``: one of ``fp64 fp32 tf32 bf16 fp16 fp8 int8`` (sets the peak the
      FLOPs are compared with).
    - ``expected_mfu``, ``batch_size``, ``parallelism`` (``{"tp":..,"pp":..,"dp":..}``),
      ``model_name``: optional context for model-aware policies.
    - ``socket_address``: Unix socket path or ``udp://host:port``; default
      ``$MFU_AGENT_SOCKET`` or ``/run/mfu/agent.sock``.
    """

    def __init__(
        self,
        workload: str | None = None,
        rank: int | None = None,
        *,
        model: Any = None,
        precision: str = "bf16",
        seq_len: int | None = None,
        mode: str = "train",
        causal: bool = False,
        recompute: str = "none",
        gpu_uuid: str | None = None,
        device: int | None = None,
        socket_address: str | None = None,
        flush_interval_s: float = 1.0,
        expected_mfu: float | None = None,
        batch_size: int | None = None,
        parallelism: Mapping[str, int] | None = None,
        model_name: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if not flush_interval_s > 0:
            raise ValueError("flush_interval_s must be > 0 seconds")
        env = os.environ
        self.workload = workload or default_workload()
        if rank is None:
            try:
                rank = int(env.get("RANK", "0"))
            except ValueError:
                rank = 0
        self.rank = int(rank)
        self.precision = precision
        self.flush_interval_s = float(flush_interval_s)
        self._clock = clock
        self.flops_per_token, self.hardware_flops_per_token = self._per_token(
            model, seq_len=seq_len, mode=mode, causal=causal, recompute=recompute)
        # Model bytes per token (decode with a model config only), bytes.
        self.bytes_per_token = self._bytes_per_token(
            model, mode=mode, seq_len=seq_len, batch_size=batch_size, precision=precision)
        if model_name is None and isinstance(model, Mapping):
            model_name = model.get("_name_or_path") or model.get("model_type")

        uuid, index = (gpu_uuid, None) if gpu_uuid else gpu_from_environment(env, device)
        static: dict[str, Any] = {"schema": SCHEMA, "workload": self.workload,
                                  "rank": self.rank, "precision": precision}
        if uuid:
            static["gpu_uuid"] = uuid
        else:
            static["pid"] = os.getpid()
            if index is not None:
                static["gpu_index"] = index
        for key, value in (("phase", mode if mode in PHASES else None),
                           ("seq_len", seq_len), ("batch_size", batch_size),
                           ("expected_mfu", expected_mfu), ("model", model_name),
                           ("parallelism", dict(parallelism) if parallelism else None)):
            if value is not None:
                static[key] = value
        self._static = static
        self._id_prefix = f"{self.workload}-r{self.rank}-{os.urandom(3).hex()}-"
        self._seq = 0

        address = socket_address or env.get(SOCKET_ENV) or DEFAULT_SOCKET
        self.socket_address = address
        self._family, self._addr = _address(address)
        self._sock: socket.socket | None = None

        self.stats: Counter[str] = Counter()
        atexit.register(_flush_at_exit, weakref.ref(self))  # the last partial interval
        self._start = clock()
        self._flops = 0.0
        self._hw_flops = 0.0
        self._tokens = 0.0
        self._steps = 0
        self._bytes = 0.0
        self._bytes_known = False

    @staticmethod
    def _per_token(model: Any, **kw: Any) -> tuple[float | None, float | None]:
        if model is None:
            return None, None
        if isinstance(model, int | float) and not isinstance(model, bool):
            if not (math.isfinite(model) and model > 0):
                raise ValueError(f"model FLOPs per token must be positive, got {model!r}")
            return float(model), None
        if kw["seq_len"] is None:
            raise ValueError("seq_len is required to count FLOPs from a model config")
        from mfu_sdk.flops import ModelConfig, flops_per_token

        cfg = model if isinstance(model, ModelConfig) else ModelConfig.from_hf_config(model)
        per_token = flops_per_token(cfg, **kw)
        return per_token.model_flops, per_token.hardware_flops

    @staticmethod
    def _bytes_per_token(model: Any, *, mode: str, seq_len: int | None,
                         batch_size: int | None, precision: str) -> float | None:
        if mode != "decode" or model is None or seq_len is None or (
                isinstance(model, int | float) and not isinstance(model, bool)):
            return None
        from mfu_sdk.flops import ModelConfig, decode_bytes

        cfg = model if isinstance(model, ModelConfig) else ModelConfig.from_hf_config(model)
        return decode_bytes(cfg, batch_size=batch_size or 1, context_len=seq_len,
                            precision=precision).bytes_per_token

    # -- the hot path ------------------------------------------------------------------
    def step(self, tokens: float | None = None, *, flops: float | None = None,
             bytes: float | None = None) -> None:
        """Record one step: ``tokens`` processed (FLOPs from the model), or ``flops``
        (model FLOPs, not FLOP/s) directly; ``bytes``: model bytes the step moved
        (default: tokens x the decode bytes per token, where known). Sends a report at
        most every ``flush_interval_s``. Never raises, never blocks."""
        try:
            if bytes is not None:
                self._bytes += bytes
                self._bytes_known = True
            elif tokens and self.bytes_per_token is not None:
                self._bytes += tokens * self.bytes_per_token
                self._bytes_known = True
            if flops is None:
                flops = tokens * self.flops_per_token  # type: ignore[operator]
                if self.hardware_flops_per_token is not None:
                    self._hw_flops += tokens * self.hardware_flops_per_token  # type: ignore[operator]
            else:
                self._hw_flops = math.nan  # unknown for this interval: not sent
            self._flops += flops
            if tokens:
                self._tokens += tokens
            self._steps += 1
            now = self._clock()
            if now - self._start >= self.flush_interval_s:
                self._emit(now)
        except Exception:
            self.stats["errors"] += 1

    def flush(self) -> None:
        """Send what was accumulated since the last report now (no-op if nothing)."""
        try:
            if self._steps:
                self._emit(self._clock())
        except Exception:
            self.stats["errors"] += 1

    def _emit(self, now: float) -> None:
        start = max(self._start, now - _MAX_INTERVAL_S + 1e-3)
        flops, hw, tokens = self._flops, self._hw_flops, self._tokens
        nbytes, bytes_known = self._bytes, self._bytes_known
        self._start, self._flops, self._hw_flops, self._tokens, self._steps = now, 0.0, 0.0, 0.0, 0
        self._bytes, self._bytes_known = 0.0, False
        if now <= start:
            self.stats["dropped_clock"] += 1
            return
        extra: dict[str, Any] = {"start": start, "end": now, "flops": flops}
        if tokens:
            extra["tokens"] = tokens
        if hw and math.isfinite(hw) and hw >= flops:
            extra["hardware_flops"] = hw
        if bytes_known:
            extra["bytes"] = nbytes
        self._send(extra)

    # -- explicit intervals ------------------------------------------------------------
    def report(self, *, flops: float, start: float, end: float, tokens: float | None = None,
               hardware_flops: float | None = None, bytes: float | None = None) -> bool:
        """Send one report of ``flops`` model FLOPs (and ``bytes`` model bytes moved, if
        given) done in ``[start, end)`` (epoch s) now. Returns whether the datagram left;
        never raises."""
        try:
            extra: dict[str, Any] = {"start": float(start), "end": float(end),
                                     "flops": float(flops)}
            if tokens is not None:
                extra["tokens"] = float(tokens)
            if hardware_flops is not None:
                extra["hardware_flops"] = float(hardware_flops)
            if bytes is not None:
                extra["bytes"] = float(bytes)
            return self._send(extra)
        except Exception:
            self.stats["errors"] += 1
            return False

    def _send(self, fields: dict[str, Any]) -> bool:
        event = {"event_id": f"{self._id_prefix}{self._seq}", **self._static, **fields}
        self._seq += 1
        try:
            data = json.dumps(event, separators=(",", ":"), allow_nan=False).encode()
        except ValueError:  # NaN/inf FLOPs: a caller bug; the agent would refuse it anyway
            self.stats["dropped_invalid"] += 1
            return False
        sock = self._sock
        if sock is None:
            try:
                sock = self._sock = socket.socket(self._family, socket.SOCK_DGRAM)
                sock.setblocking(False)
            except OSError:
                self.stats["dropped_no_socket"] += 1
                return False
        try:
            sock.sendto(data, socket.MSG_DONTWAIT, self._addr)
        except BlockingIOError:
            self.stats["dropped_busy"] += 1  # agent's buffer full: never wait
            return False
        except (FileNotFoundError, ConnectionRefusedError):
            self.stats["dropped_no_agent"] += 1
            return False
        except OSError:
            self.stats["dropped_error"] += 1
            return False
        self.stats["sent"] += 1
        return True

    def close(self) -> None:
        """Flush and close the socket."""
        self.flush()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> FlopReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _flush_at_exit(ref: weakref.ref[FlopReporter]) -> None:
    reporter = ref()
    if reporter is not None:
        reporter.flush()


def measure_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    """FLOPs (not FLOP/s) PyTorch counts while running ``fn(*args, **kwargs)`` once.

    Uses ``torch.utils.flop_counter.FlopCounterMode``; run one training step *without*
    activation recomputation (recomputed FLOPs would count as model FLOPs), then pass
    the result to ``reporter.step(flops=...)`` every step. Needs PyTorch.
    """
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError as exc:
        raise ImportError(
            "measure_flops needs PyTorch (torch.utils.flop_counter); install torch, or give "
            "FlopReporter a model config / FLOPs per token instead"
        ) from exc
    with FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return float(counter.get_total_flops())
