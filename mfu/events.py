"""Event models: the single definition of every event on the wire (DESIGN.md §3).

Every model validates strictly enough that a consumer can trust what it gets: NaN and
infinities, negative FLOPs, ``end <= start``, ratios outside 0..1 and unknown precisions
are refused with a message naming the field. Unknown extra fields are ignored (forward
compatibility). Times are event time, epoch seconds as float.

Use :func:`parse_events` to turn raw Kafka values (single events or ``batch/1``
envelopes) into models plus dead-letter reasons, one bad event never spoiling the rest.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mfu.precision import Precision

# Numbers are strict (the contract says wrong types are refused): a JSON string such as
# "5e14" or a boolean is never converted to a number; an integer is accepted for a float.
# A ratio 0..1 (utilisations, MFU).
Ratio = Annotated[float, Field(ge=0.0, le=1.0, strict=True)]
NonNegative = Annotated[float, Field(ge=0.0, strict=True)]
# Epoch seconds; 1e9 is 2001-09-09, 1e10 is year 2286: anything outside is a unit bug
# (milliseconds or nanoseconds sent as seconds) and is refused with that hint.
EpochSeconds = Annotated[float, Field(gt=1e9, lt=1e10, strict=True)]
# Names become Kafka keys and InfluxDB tag values: no control characters (newline, tab,
# NUL, ...), which break line protocol and logs. Checked by pattern (in Rust, fast);
# describe_validation_error turns its message into a readable reason.
NAME_PATTERN = r"^[^\x00-\x1f\x7f]+$"
Name = Annotated[str, Field(min_length=1, max_length=256, pattern=NAME_PATTERN)]

# No single GPU does more than this many dense FLOP/s (B200 fp8 dense is ~4.5e15);
# a report above it is a unit or counting bug, not a fast GPU.
MAX_FLOPS_PER_S_PER_GPU = 1e17
# Longest interval one sample or report may cover, seconds.
MAX_INTERVAL_S = 3600.0


class Event(BaseModel):
    """Base of every event: ``schema`` (name/version) and a unique ``event_id``."""

    model_config = ConfigDict(
        extra="ignore",
        frozen=True,
        allow_inf_nan=False,
        populate_by_name=True,
        serialize_by_alias=True,
    )
    SCHEMA: ClassVar[str] = ""

    schema_name: str = Field(alias="schema")
    event_id: Name

    @field_validator("schema_name")
    @classmethod
    def _schema_matches(cls, value: str) -> str:
        if cls.SCHEMA and value != cls.SCHEMA:
            raise ValueError(f"expected schema {cls.SCHEMA!r}, got {value!r}")
        return value

    def to_json(self) -> bytes:
        """Compact UTF-8 JSON with contract field names."""
        return self.model_dump_json(by_alias=True, exclude_none=False).encode()


class GpuSample(Event):
    """``gpu_sample/1`` on ``mfu.telemetry.v1``: one GPU (or MIG slice) over one interval.

    The sample covers event time ``[ts - interval_s, ts)``: the agent stamps it when the
    interval ends. Ratios are 0..1.
    """

    SCHEMA: ClassVar[str] = "gpu_sample/1"
    schema_name: Literal["gpu_sample/1"] = Field("gpu_sample/1", alias="schema")
    node: Name
    gpu_uuid: Name
    gpu_index: int = Field(ge=0, le=1023, strict=True)
    gpu_name: Name
    mig_profile: str | None = None
    ts: EpochSeconds
    interval_s: float = Field(gt=0.0, le=MAX_INTERVAL_S, strict=True)
    sm_util: Ratio | None
    mem_util: Ratio | None
    tensor_active: Ratio | None = None
    sm_clock_mhz: NonNegative | None = None
    max_sm_clock_mhz: NonNegative | None = None
    power_w: NonNegative | None = None
    mem_used_bytes: int | None = Field(None, ge=0, strict=True)
    mem_total_bytes: int | None = Field(None, ge=0, strict=True)
    throttle_reasons: int | None = Field(None, ge=0, strict=True)
    workloads: list[Name] = Field(default_factory=list, max_length=64)
    # DESIGN.md §8 (all optional). Energy the GPU used in the interval, joules: from
    # NVML's total-energy counter ("counter") or power x interval ("power") where the
    # part has no counter (or it went backwards).
    energy_j: NonNegative | None = None
    energy_source: Literal["counter", "power"] | None = None
    # Pipe activity ratios (NVML GPM on Hopper+, DCGM profiling fields elsewhere): the
    # fraction of the interval the DRAM interface / FP16 / FP32 / FP64 pipes were busy.
    dram_active: Ratio | None = None
    fp16_active: Ratio | None = None
    fp32_active: Ratio | None = None
    fp64_active: Ratio | None = None
    # Owner of each workload in ``workloads`` ({"workload": "tenant"}): Kubernetes
    # namespace, Slurm account or a configured owner.
    tenants: dict[Name, Name] | None = Field(None, max_length=64)

    @property
    def start(self) -> float:
        """Event time the interval starts, epoch seconds."""
        return self.ts - self.interval_s


class Parallelism(BaseModel):
    """Degrees of parallelism of a job (all >= 1)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    tp: int = Field(1, ge=1, strict=True)
    pp: int = Field(1, ge=1, strict=True)
    dp: int = Field(1, ge=1, strict=True)
    cp: int = Field(1, ge=1, strict=True)
    ep: int = Field(1, ge=1, strict=True)

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.dp * self.cp


class FlopReport(Event):
    """``flop_report/1`` on ``mfu.flops.v1``: model FLOPs one rank did on one GPU.

    ``flops`` are *model* FLOPs (no recomputation) done in event time ``[start, end)``;
    ``hardware_flops`` (optional) includes recomputation and feeds HFU only.
    """

    SCHEMA: ClassVar[str] = "flop_report/1"
    schema_name: Literal["flop_report/1"] = Field("flop_report/1", alias="schema")
    workload: Name
    rank: int = Field(ge=0, strict=True)
    node: Name
    gpu_uuid: Name
    start: EpochSeconds
    end: EpochSeconds
    flops: NonNegative
    precision: Precision
    tokens: NonNegative | None = None
    hardware_flops: NonNegative | None = None
    expected_mfu: Ratio | None = None
    model: str | None = Field(None, max_length=256)
    batch_size: int | None = Field(None, ge=1, strict=True)
    seq_len: int | None = Field(None, ge=1, strict=True)
    parallelism: Parallelism | None = None
    phase: Literal["train", "prefill", "decode"] | None = None
    # DESIGN.md §8: model bytes moved in [start, end) (weights + KV cache read/written),
    # and who measured: the FLOP SDK / a framework hook ("sdk") or an inference server's
    # own counters scraped by the agent ("engine").
    bytes: NonNegative | None = None
    source: Literal["sdk", "engine"] = "sdk"

    @model_validator(mode="after")
    def _interval_and_rate(self) -> FlopReport:
        duration_s = self.end - self.start
        if duration_s <= 0:
            raise ValueError(f"end ({self.end}) must be after start ({self.start})")
        if duration_s > MAX_INTERVAL_S:
            raise ValueError(f"interval of {duration_s:.0f} s exceeds {MAX_INTERVAL_S:.0f} s")
        rate = self.flops / duration_s
        if rate > MAX_FLOPS_PER_S_PER_GPU:
            raise ValueError(
                f"flops/(end-start) = {rate:.3g} FLOP/s exceeds the plausible maximum "
                f"{MAX_FLOPS_PER_S_PER_GPU:.0e} FLOP/s for one GPU (unit or counting bug?)"
            )
        if self.hardware_flops is not None and self.hardware_flops < self.flops:
            raise ValueError("hardware_flops must be >= flops (recomputation only adds work)")
        return self

    @property
    def duration_s(self) -> float:
        return self.end - self.start


Scope = Literal["workload", "node", "fleet"]
FlopSource = Literal["reported", "engine", "idle", "counters", "none"]
FLOP_SOURCES: tuple[FlopSource, ...] = ("reported", "engine", "idle", "counters", "none")
Regime = Literal["compute", "memory", "mixed"]


class FlopSources(BaseModel):
    """GPU-seconds of a window by where their model FLOPs come from (DESIGN.md §8).

    ``reported``: flop_report/1 from the SDK; ``engine``: an inference server's counters;
    ``idle``: no report and idle by its counters (a known zero); ``counters``: busy, no
    report, FLOPs estimated from pipe activity; ``none``: busy, no report, no counters.
    """

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)
    reported: NonNegative = 0.0
    engine: NonNegative = 0.0
    idle: NonNegative = 0.0
    counters: NonNegative = 0.0
    none: NonNegative = 0.0

    @property
    def total_s(self) -> float:
        return self.reported + self.engine + self.idle + self.counters + self.none

    @property
    def known_s(self) -> float:
        """GPU-seconds with known model FLOPs (reported + engine + idle)."""
        return self.reported + self.engine + self.idle


class MfuWindow(Event):
    """``mfu_window/1`` on ``mfu.{workload,node,fleet}.v1``: one closed window of one key.

    ``achieved_flops`` and ``peak_flops`` are totals over the window (FLOPs, not FLOP/s);
    ``mfu = achieved_flops / peak_flops``, null (never NaN) where no peak is known, with
    ``mfu_reason`` saying why.
    """

    SCHEMA: ClassVar[str] = "mfu_window/1"
    schema_name: Literal["mfu_window/1"] = Field("mfu_window/1", alias="schema")
    scope: Scope
    key: Name
    window_start: float
    window_end: float
    mfu: NonNegative | None
    achieved_flops: NonNegative
    peak_flops: NonNegative
    gpu_seconds: NonNegative
    gpus: int = Field(ge=0)
    sm_util: Ratio | None = None
    tensor_active: Ratio | None = None
    mem_util: Ratio | None = None
    precision: Precision | None = None
    late_events: int = Field(0, ge=0)
    duplicates: int = Field(0, ge=0)
    # Beyond the contract's example, all optional:
    mfu_reason: str | None = None
    hfu: NonNegative | None = None
    tokens: NonNegative | None = None
    expected_mfu: Ratio | None = None
    gpu_model: str | None = None
    fleet: str | None = None
    nodes: int | None = Field(None, ge=0)
    mem_used_ratio: Ratio | None = None
    # Fleet (and node) level: the provider's view next to the tenant's.
    allocated_gpus: int | None = Field(None, ge=0)
    allocation: Ratio | None = None
    mfu_allocated: NonNegative | None = None
    # Workload level: model context from the FLOP reports, for model-aware rules.
    model: str | None = None
    phase: str | None = None
    parallelism: Parallelism | None = None
    ranks: int | None = Field(None, ge=0)
    rank_mfu_min: NonNegative | None = None
    rank_mfu_median: NonNegative | None = None
    # DESIGN.md §8, every scope. FLOP sources and coverage: ``mfu`` is over the
    # GPU-seconds with known model FLOPs only; ``mfu_estimated`` adds the OFU estimate
    # of ``counters`` GPU-seconds; ``ofu`` is counter-derived FLOP utilisation.
    flop_sources: FlopSources | None = None
    coverage: Ratio | None = None
    ofu: NonNegative | None = None
    mfu_estimated: NonNegative | None = None
    # OFU-estimated model FLOPs of the ``counters`` GPU-seconds (total over the window,
    # FLOPs; 0 where there are none): ``mfu_estimated``'s addition to ``achieved_flops``.
    estimated_flops: NonNegative | None = None
    # Memory side: model bytes moved (total over the window, bytes) against peak
    # bandwidth x seconds; ``regime`` from arithmetic intensity vs the ridge point.
    mbu: NonNegative | None = None
    achieved_bytes: NonNegative | None = None
    peak_bytes: NonNegative | None = None
    dram_active: Ratio | None = None
    regime: Regime | None = None
    # Energy: joules in the window, model FLOPs per joule, tokens per joule.
    energy_j: NonNegative | None = None
    flops_per_j: NonNegative | None = None
    tokens_per_j: NonNegative | None = None
    # Workload scope: owner (Kubernetes namespace, Slurm account or configured owner).
    tenant: str | None = None

    @property
    def window_s(self) -> float:
        return self.window_end - self.window_start

    @staticmethod
    def make_event_id(scope: str, key: str, window_start: float) -> str:
        return f"{scope}:{key}:{window_start:.3f}"


class DeadLetter(Event):
    """Record on ``mfu.deadletter.v1``: the original bytes (as text), where they came
    from and why they were refused."""

    SCHEMA: ClassVar[str] = "deadletter/1"
    schema_name: Literal["deadletter/1"] = Field("deadletter/1", alias="schema")
    source_topic: str
    reason: str
    original: str
    ts: float
    partition: int | None = None
    offset: int | None = None
    # Size of the refused value in bytes and whether ``original`` was cut to fit the
    # producer's message size limit (the reason and size always survive).
    original_bytes: int | None = None
    truncated: bool = False


class CloudEvent(BaseModel):
    """CloudEvents 1.0, structured JSON mode, as emitted on ``mfu.policy.v1``."""

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)
    specversion: Literal["1.0"] = "1.0"
    id: Name
    source: Name
    type: Annotated[str, Field(pattern=r"^io\.mfu\.[a-z_]+\.v\d+$")]
    subject: Name
    time: str
    datacontenttype: Literal["application/json"] = "application/json"
    data: dict[str, Any]

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


# --- parsing raw Kafka values ------------------------------------------------------

E = TypeVar("E", bound=Event)
MAX_BATCH_EVENTS = 10_000


class Rejected(BaseModel):
    """One refused input: the text to keep and the reason, for a dead-letter record."""

    model_config = ConfigDict(frozen=True)
    original: str
    reason: str


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming each failing field and its problem."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "<event>"
        msg = err["msg"]
        if err["type"] == "string_pattern_mismatch" and \
                (err.get("ctx") or {}).get("pattern") == NAME_PATTERN:
            msg = f"must not contain control characters (newline, tab, NUL, ...): {err['input']!r}"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def _reject(original: Any, reason: str) -> Rejected:
    text = original if isinstance(original, str) else json.dumps(original, default=str)
    return Rejected(original=text, reason=reason)


def _validate_one(model: type[E], obj: Any) -> E | Rejected:
    if not isinstance(obj, dict):
        return _reject(obj, f"expected a JSON object, got {type(obj).__name__}")
    schema = obj.get("schema")
    if schema != model.SCHEMA:
        return _reject(obj, f"schema: expected {model.SCHEMA!r}, got {schema!r}")
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        return _reject(obj, f"invalid {model.SCHEMA}: {describe_validation_error(exc)}")




def parse_events(raw: bytes | str, model: type[E]) -> tuple[list[E], list[Rejected]]:
    """Decode one Kafka value holding a ``model`` event or a ``batch/1`` of them.

    Returns the valid events and one :class:`Rejected` per bad one; never raises on bad
    input. JSON's non-standard ``NaN``/``Infinity`` tokens decode, so that validation
    refuses them naming the field (the models do not allow non-finite numbers).
    """
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else raw
        obj = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        original = raw.decode("utf-8", "replace") if isinstance(raw, bytes | bytearray) else raw
        return [], [Rejected(original=original, reason=f"not valid JSON: {exc}")]
    if isinstance(obj, dict) and obj.get("schema") == "batch/1":
        items = obj.get("events")
        if not isinstance(items, list):
            return [], [_reject(obj, "batch/1: 'events' must be a list")]
        if len(items) > MAX_BATCH_EVENTS:
            return [], [_reject(obj, f"batch/1: {len(items)} events exceed {MAX_BATCH_EVENTS}")]
    else:
        items = [obj]
    good: list[E] = []
    bad: list[Rejected] = []
    for item in items:
        result = _validate_one(model, item)
        (bad if isinstance(result, Rejected) else good).append(result)  # type: ignore[arg-type]
    return good, bad


def batch(events: list[Event]) -> bytes:
    """Encode events as one ``batch/1`` value (what an agent sends per node per interval)."""
    body = ",".join(e.model_dump_json(by_alias=True) for e in events)
    return b'{"schema":"batch/1","events":[' + body.encode() + b"]}"
