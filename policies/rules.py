"""Rule models and the rules-file loader (pure: no Kafka, no Faust).

A rules file is YAML validated by pydantic. Every rule has an ``id`` (stable: it names
the rule's state and goes into event ids), a ``kind`` that selects its model below, the
``scope`` it watches (``workload``, ``node`` or ``fleet``) and an optional ``match``
filter. Ratios (MFU, utilisations) are 0..1; durations are event-time seconds.

:func:`load_rules` refuses a bad file with a :class:`RulesError` whose lines read
``FILE:LINE: FIELD: problem``: pydantic's error locations are mapped back to the YAML
node that holds the offending value, using the node marks of ``yaml.compose``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mfu.events import MfuWindow, Scope

DEFAULT_RULES_PATH = Path(__file__).with_name("default_rules.yaml")

Ratio = Annotated[float, Field(ge=0.0, le=1.0)]
Positive = Annotated[float, Field(gt=0.0)]
Windows = Annotated[int, Field(ge=1, le=10_000)]
RuleId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
# The <name> of the CloudEvent type io.mfu.<name>.v1.
EventName = Annotated[str, Field(pattern=r"^[a-z][a-z_]{0,39}$")]
Metric = Literal[
    "mfu",
    "hfu",
    "sm_util",
    "tensor_active",
    "mem_util",
    "mem_used_ratio",
    "allocation",
    "mfu_allocated",
]


class _Strict(BaseModel):
    # extra="forbid": a misspelt parameter must be an error, not a silently ignored key.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Match(_Strict):
    """Which entities a rule applies to. Globs (``fnmatch``) on the key and GPU model;
    a window lacking a field that a filter needs does not match that filter."""

    keys: list[str] = Field(default_factory=list, description="key globs; empty = all")
    exclude_keys: list[str] = Field(default_factory=list)
    phases: list[str] = Field(default_factory=list, description="e.g. [train, prefill]")
    exclude_phases: list[str] = Field(default_factory=list)
    gpu_models: list[str] = Field(default_factory=list, description="gpu_model globs")
    models: list[str] = Field(default_factory=list, description="model-name globs")
    min_gpus: int = Field(0, ge=0)

    def matches(self, w: MfuWindow) -> bool:
        if self.keys and not _any_glob(w.key, self.keys):
            return False
        if self.exclude_keys and _any_glob(w.key, self.exclude_keys):
            return False
        if self.phases and w.phase not in self.phases:
            return False
        if self.exclude_phases and w.phase in self.exclude_phases:
            return False
        if self.gpu_models and not (w.gpu_model and _any_glob(w.gpu_model, self.gpu_models)):
            return False
        if self.models and not (w.model and _any_glob(w.model, self.models)):
            return False
        return w.gpus >= self.min_gpus


def _any_glob(value: str, globs: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, g) for g in globs)


class RuleBase(_Strict):
    id: RuleId
    scope: Scope
    description: str = ""
    enabled: bool = True
    severity: Literal["info", "warning", "critical"] = "warning"
    match: Match = Field(default_factory=Match)


class Hysteresis(_Strict):
    """Open after ``for_windows`` consecutive bad windows, resolve after ``clear_windows``
    consecutive good ones; no new incident within ``cooldown_s`` of the last resolution."""

    for_windows: Windows = 3
    clear_windows: Windows = 3
    cooldown_s: float = Field(300.0, ge=0.0)


class ThresholdRule(RuleBase, Hysteresis):
    """``metric`` below ``below`` (or above ``above``) for ``for_windows`` windows opens
    an incident; it clears when the metric is above ``clear_above`` (below
    ``clear_below``) for ``clear_windows`` windows. The gap is the hysteresis band."""

    kind: Literal["threshold"]
    metric: Metric = "mfu"
    below: float | None = Field(None, ge=0.0)
    above: float | None = Field(None, ge=0.0)
    clear_above: float | None = Field(None, ge=0.0)
    clear_below: float | None = Field(None, ge=0.0)
    event: EventName = "threshold"

    @model_validator(mode="after")
    def _one_direction(self) -> ThresholdRule:
        if (self.below is None) == (self.above is None):
            raise ValueError("give exactly one of 'below' or 'above'")
        if self.below is not None:
            if self.clear_below is not None:
                raise ValueError("'clear_below' goes with 'above'; with 'below' use 'clear_above'")
            if self.clear_above is None:
                object.__setattr__(self, "clear_above", self.below)
            elif self.clear_above < self.below:
                raise ValueError(
                    f"clear_above ({self.clear_above}) must be >= below ({self.below})"
                )
        else:
            if self.clear_above is not None:
                raise ValueError("'clear_above' goes with 'below'; with 'above' use 'clear_below'")
            if self.clear_below is None:
                object.__setattr__(self, "clear_below", self.above)
            elif self.above is not None and self.clear_below > self.above:
                raise ValueError(
                    f"clear_below ({self.clear_below}) must be <= above ({self.above})"
                )
        return self


class CusumParams(_Strict):
    """One-sided tabular CUSUM on the standardised residual z = (x - baseline) / sigma.

    ``k`` is the reference value (half the shift to detect, in sigma), ``h`` the decision
    interval (sigma). After an alarm the statistic is capped at ``recover_h`` (default
    h/2); recovery is announced when it drains back to 0."""

    method: Literal["cusum"]
    k: float = Field(0.5, gt=0.0, le=5.0)
    h: float = Field(12.0, gt=0.0, le=100.0)
    recover_h: float | None = Field(None, gt=0.0)

    @model_validator(mode="after")
    def _recover_below_h(self) -> CusumParams:
        if self.recover_h is not None and self.recover_h > self.h:
            raise ValueError(f"recover_h ({self.recover_h}) must be <= h ({self.h})")
        return self


class EwmaParams(_Strict):
    """EWMA control chart on z: e = lam*z + (1-lam)*e; alarm when e is beyond
    ``L`` asymptotic standard deviations sqrt(lam/(2-lam)); recovery when back inside
    ``recover_L``."""

    method: Literal["ewma"]
    lam: float = Field(0.1, gt=0.0, le=1.0)
    L: float = Field(3.5, gt=0.0, le=20.0)
    recover_L: float = Field(1.0, ge=0.0, le=20.0)

    @model_validator(mode="after")
    def _recover_inside(self) -> EwmaParams:
        if self.recover_L >= self.L:
            raise ValueError(f"recover_L ({self.recover_L}) must be < L ({self.L})")
        return self


DetectorParams = Annotated[CusumParams | EwmaParams, Field(discriminator="method")]


class DriftRule(RuleBase):
    """Drift of observed MFU against a baseline.

    Baseline: ``declared`` = the record's ``expected_mfu``, else an ``expected`` entry of
    the rules file; ``learned`` = mean of the first ``baseline_windows`` windows (refined
    while detection already runs after ``warmup_windows``); ``auto`` = declared when
    known, else learned. Noise sigma: ``sigma`` if given, else learned
    from the moving range of successive windows (robust to a level offset), floored at
    ``min_sigma``; detection starts after ``warmup_windows`` (learned baseline) or
    ``declared_warmup_windows`` (declared baseline). Shifts smaller than ``min_shift`` x baseline are not worth an alarm:
    the detector's reference value grows to cover them when sigma is tiny."""

    kind: Literal["drift"]
    baseline: Literal["auto", "declared", "learned"] = "auto"
    direction: Literal["down", "up", "both"] = "down"
    detector: DetectorParams = Field(default_factory=lambda: CusumParams(method="cusum"))
    warmup_windows: Windows = 20
    # With a declared baseline only the noise must be learned: fewer windows will do.
    declared_warmup_windows: Windows = 5
    baseline_windows: Windows = 200
    sigma: float | None = Field(None, gt=0.0)
    min_sigma: float = Field(0.005, gt=0.0)
    min_shift: float = Field(0.05, ge=0.0, le=1.0)
    event: EventName = "drift"


class Hints(_Strict):
    """Thresholds for the tenant-facing hints of a busy-but-inefficient incident."""

    tensor_active_max: Ratio = 0.3
    mem_used_ratio_max: Ratio = 0.6
    tensor_core_gpus: list[str] = Field(
        default_factory=lambda: [
            "*V100*",
            "*T4*",
            "*A10*",
            "*A30*",
            "*A40*",
            "*A100*",
            "*A800*",
            "*L4*",
            "*L40*",
            "*H100*",
            "*H800*",
            "*H20*",
            "*H200*",
            "*GH200*",
            "*B100*",
            "*B200*",
            "*GB200*",
            "*B300*",
            "*RTX*",
        ]
    )


class BusyInefficientRule(RuleBase, Hysteresis):
    """High SM busy time with low MFU: the GPU looks busy but does little model math.
    ``decode`` says what to do for ``phase=decode`` (memory-bound: low MFU is expected):
    ``report`` emits ``io.mfu.report.v1`` (severity info) instead of an alarm."""

    kind: Literal["busy_inefficient"]
    sm_util_min: Ratio = 0.8
    mfu_max: Ratio = 0.25
    clear_mfu: Ratio | None = None
    decode: Literal["report", "alarm", "ignore"] = "report"
    hints: Hints = Field(default_factory=Hints)
    event: EventName = "inefficient"

    @model_validator(mode="after")
    def _clear_default(self) -> BusyInefficientRule:
        if self.clear_mfu is None:
            object.__setattr__(self, "clear_mfu", min(1.0, self.mfu_max + 0.05))
        elif self.clear_mfu < self.mfu_max:
            raise ValueError(f"clear_mfu ({self.clear_mfu}) must be >= mfu_max ({self.mfu_max})")
        return self


class StragglerRule(RuleBase, Hysteresis):
    """The slowest rank's MFU far below the median rank's (``rank_mfu_min /
    rank_mfu_median < ratio_max``): one rank holds the whole job back."""

    kind: Literal["straggler"]
    ratio_max: Ratio = 0.7
    clear_ratio: Ratio = 0.8
    min_ranks: int = Field(2, ge=2)
    event: EventName = "straggler"


class IdleRule(RuleBase, Hysteresis):
    """GPUs allocated (``gpus > 0``) doing ~no model math (``mfu <= mfu_max``)."""

    kind: Literal["idle"]
    mfu_max: Ratio = 0.01
    clear_mfu: Ratio = 0.03
    event: EventName = "idle"


class StallRule(RuleBase, Hysteresis):
    """Input-pipeline stalls: MFU dips below ``dip_ratio`` × its recent median in at least
    ``min_dips`` separate runs within the last ``history_windows`` windows, recovering in
    between (data loading, checkpoint writes, preemption pauses). Resolves when the
    history holds no dip. A steady low MFU is not a stall (no recovery between)."""

    kind: Literal["stall"]
    history_windows: Windows = 12
    dip_ratio: Ratio = 0.5
    min_dips: int = Field(2, ge=2)
    for_windows: Windows = 1
    clear_windows: Windows = 6
    event: EventName = "stall"


class AllocationGapRule(RuleBase, Hysteresis):
    """Provider view: a fleet (or node) highly allocated whose allocated GPUs deliver
    little (``allocation >= allocation_min`` and ``mfu_allocated <= mfu_allocated_max``)."""

    kind: Literal["allocation_gap"]
    allocation_min: Ratio = 0.8
    mfu_allocated_max: Ratio = 0.15
    clear_mfu_allocated: Ratio = 0.2
    event: EventName = "allocation_gap"


class ConsolidationRule(RuleBase, Hysteresis):
    """A node doing little (low MFU) with little memory in use: candidate for
    oversubscription or for consolidating its work elsewhere."""

    kind: Literal["consolidation"]
    mfu_max: Ratio = 0.1
    mem_used_ratio_max: Ratio = 0.3
    event: EventName = "consolidation"


class CostRule(RuleBase):
    """Economics, reported once per event-time ``period_s``: cost = gpu_seconds/3600 x
    price (USD per GPU-hour, from ``prices``); effective PFLOP-hours = achieved_flops /
    1e15 / 3600; and their ratio, USD per effective PFLOP-hour. With
    ``max_usd_per_pflop_hour`` a period above it is reported with the rule's severity,
    else as info."""

    kind: Literal["cost"]
    period_s: Positive = 3600.0
    max_usd_per_pflop_hour: Positive | None = None
    event: EventName = "cost"


class RightsizeRule(RuleBase, Hysteresis):
    """A workload on one whole GPU with low MFU and low memory use fits a MIG slice: the
    smallest profile whose compute share keeps the slice's MFU <= ``target_slice_mfu``
    and whose memory holds the used memory with ``mem_margin`` to spare."""

    kind: Literal["rightsize"]
    mfu_max: Ratio = 0.15
    mem_used_ratio_max: Ratio = 0.45
    target_slice_mfu: Ratio = 0.6
    mem_margin: Ratio = 0.1
    event: EventName = "rightsize"


class ScaleRule(RuleBase):
    """Replica-set scaling advice (``io.mfu.scale.v1``): sustained MFU above
    ``scale_out_above`` (below ``scale_in_below``) for ``for_windows`` windows. The event
    carries ``ratio = observed / target_mfu`` so a consumer can compute
    ``desired = ceil(current x ratio)`` (the Kubernetes HPA formula)."""

    kind: Literal["scale"]
    target_mfu: Positive = 0.4
    scale_out_above: Ratio = 0.6
    scale_in_below: Ratio = 0.2
    for_windows: Windows = 3
    cooldown_s: float = Field(300.0, ge=0.0)

    @model_validator(mode="after")
    def _band(self) -> ScaleRule:
        if not self.scale_in_below < self.target_mfu < self.scale_out_above:
            raise ValueError(
                f"need scale_in_below ({self.scale_in_below}) < target_mfu "
                f"({self.target_mfu}) < scale_out_above ({self.scale_out_above})"
            )
        return self


class AdmissionRule(RuleBase):
    """Admission advice for a node pool (a fleet key), ``io.mfu.admission.v1``, emitted
    when the advice changes and has held for ``for_windows`` windows:
    ``queue`` when allocation >= ``allocation_high`` and the allocated GPUs are busy
    (mfu_allocated >= ``mfu_allocated_busy``); ``admit_oversubscribe`` when allocation is
    high but the allocated GPUs idle (mfu_allocated < ``mfu_allocated_idle``); else
    ``admit``."""

    kind: Literal["admission"]
    allocation_high: Ratio = 0.9
    mfu_allocated_busy: Ratio = 0.35
    mfu_allocated_idle: Ratio = 0.1
    for_windows: Windows = 2

    @model_validator(mode="after")
    def _order(self) -> AdmissionRule:
        if self.mfu_allocated_idle > self.mfu_allocated_busy:
            raise ValueError("mfu_allocated_idle must be <= mfu_allocated_busy")
        return self


class PlacementRule(RuleBase, Hysteresis):
    """Communication-bound jobs (``io.mfu.placement.v1``: move to an NVLink topology).
    Evidence, either of: MFU at the current node count is below ``drop_ratio`` x the MFU
    the same workload reached on fewer nodes (EWMA per node count, each with at least
    ``min_samples`` windows); or the tensor/context-parallel group (tp x cp) is larger than
    the GPUs per node, so it crosses nodes."""

    kind: Literal["placement"]
    min_nodes: int = Field(2, ge=2)
    drop_ratio: Ratio = 0.8
    min_samples: Windows = 3
    ewma_alpha: float = Field(0.2, gt=0.0, le=1.0)


Rule = Annotated[
    ThresholdRule
    | DriftRule
    | BusyInefficientRule
    | StragglerRule
    | IdleRule
    | StallRule
    | AllocationGapRule
    | ConsolidationRule
    | CostRule
    | RightsizeRule
    | ScaleRule
    | AdmissionRule
    | PlacementRule,
    Field(discriminator="kind"),
]

RULE_KINDS: tuple[str, ...] = (
    "threshold",
    "drift",
    "busy_inefficient",
    "straggler",
    "idle",
    "stall",
    "allocation_gap",
    "consolidation",
    "cost",
    "rightsize",
    "scale",
    "admission",
    "placement",
)


class Expectation(_Strict):
    """A declared expected MFU for workloads matching all given globs (first match wins);
    used where the record carries no ``expected_mfu``."""

    key: str = "*"
    model: str | None = None
    phase: str | None = None
    mfu: Ratio

    def matches(self, w: MfuWindow) -> bool:
        if not fnmatch.fnmatchcase(w.key, self.key):
            return False
        if self.model is not None and not (w.model and fnmatch.fnmatchcase(w.model, self.model)):
            return False
        return self.phase is None or w.phase == self.phase


class Prices(_Strict):
    """USD per GPU-hour by ``gpu_model`` glob (first match wins), else ``default``."""

    usd_per_gpu_hour: dict[str, Positive] = Field(default_factory=dict)
    default: Positive | None = None

    def price(self, gpu_model: str | None) -> float | None:
        if gpu_model:
            for glob, usd in self.usd_per_gpu_hour.items():
                if fnmatch.fnmatchcase(gpu_model, glob):
                    return usd
        return self.default


class MigProfile(_Strict):
    """One MIG profile: ``name`` (e.g. 3g.40gb), its share of the GPU's compute
    (``compute``, SM slices / 7) and memory (GB)."""

    name: str
    compute: Ratio
    memory_gb: Positive


class MigCatalog(_Strict):
    """MIG profiles of one GPU family (``gpu_model`` glob); ``memory_gb`` of the whole GPU."""

    gpu_model: str
    memory_gb: Positive
    profiles: list[MigProfile] = Field(min_length=1)


def _p(name: str, slices: int, mem: float) -> MigProfile:
    return MigProfile(name=name, compute=slices / 7, memory_gb=mem)


# NVIDIA's MIG user guide, profiles of the GPUs that support MIG (compute share
# approximated as compute slices / 7).
DEFAULT_MIG: tuple[MigCatalog, ...] = (
    MigCatalog(
        gpu_model="*A100*40GB*",
        memory_gb=40,
        profiles=[
            _p("1g.5gb", 1, 5),
            _p("2g.10gb", 2, 10),
            _p("3g.20gb", 3, 20),
            _p("4g.20gb", 4, 20),
        ],
    ),
    MigCatalog(
        gpu_model="*A100*",
        memory_gb=80,
        profiles=[
            _p("1g.10gb", 1, 10),
            _p("2g.20gb", 2, 20),
            _p("3g.40gb", 3, 40),
            _p("4g.40gb", 4, 40),
        ],
    ),
    MigCatalog(
        gpu_model="*H100*NVL*",
        memory_gb=94,
        profiles=[
            _p("1g.12gb", 1, 12),
            _p("1g.24gb", 1, 24),
            _p("2g.24gb", 2, 24),
            _p("3g.47gb", 3, 47),
            _p("4g.47gb", 4, 47),
        ],
    ),
    MigCatalog(
        gpu_model="*H100*",
        memory_gb=80,
        profiles=[
            _p("1g.10gb", 1, 10),
            _p("1g.20gb", 1, 20),
            _p("2g.20gb", 2, 20),
            _p("3g.40gb", 3, 40),
            _p("4g.40gb", 4, 40),
        ],
    ),
    MigCatalog(
        gpu_model="*H200*",
        memory_gb=141,
        profiles=[
            _p("1g.18gb", 1, 18),
            _p("1g.35gb", 1, 35),
            _p("2g.35gb", 2, 35),
            _p("3g.71gb", 3, 71),
            _p("4g.71gb", 4, 71),
        ],
    ),
    MigCatalog(
        gpu_model="*B200*",
        memory_gb=180,
        profiles=[
            _p("1g.23gb", 1, 23),
            _p("1g.45gb", 1, 45),
            _p("2g.45gb", 2, 45),
            _p("3g.90gb", 3, 90),
            _p("4g.90gb", 4, 90),
        ],
    ),
    MigCatalog(
        gpu_model="*A30*", memory_gb=24, profiles=[_p("1g.6gb", 1, 6), _p("2g.12gb", 2, 12)]
    ),
)


class RulesConfig(_Strict):
    """A whole rules file."""

    version: Literal[1] = 1
    rules: list[Rule] = Field(default_factory=list)
    expected: list[Expectation] = Field(default_factory=list)
    prices: Prices = Field(default_factory=Prices)
    mig: list[MigCatalog] = Field(default_factory=lambda: list(DEFAULT_MIG))

    def expected_mfu(self, w: MfuWindow) -> float | None:
        """The declared expected MFU of ``w``: the record's own, else the file's."""
        if w.expected_mfu is not None:
            return w.expected_mfu
        for e in self.expected:
            if e.matches(w):
                return e.mfu
        return None

    def mig_catalog(self, gpu_model: str | None) -> MigCatalog | None:
        if not gpu_model:
            return None
        for cat in self.mig:
            if fnmatch.fnmatchcase(gpu_model, cat.gpu_model):
                return cat
        return None


# --- loading, with errors that name file, line and field ---------------------------


class RulesError(ValueError):
    """A rules file was refused. ``problems`` are ``(line, field, message)``; ``str()``
    gives one ``FILE:LINE: FIELD: message`` line each."""

    def __init__(self, path: str, problems: list[tuple[int | None, str, str]]):
        self.path = path
        self.problems = problems
        super().__init__(self.describe())

    def describe(self) -> str:
        lines = []
        for line, field, msg in self.problems:
            where = f"{self.path}:{line}" if line is not None else self.path
            lines.append(f"{where}: {field}: {msg}" if field else f"{where}: {msg}")
        return "\n".join(lines)


def _node_for(root: yaml.Node | None, loc: tuple[Any, ...]) -> tuple[yaml.Node | None, str]:
    """Follow a pydantic error location through the YAML node tree.

    Returns the deepest node reached and a readable field path. Location parts that are
    not keys of the node at hand (a discriminated union's tag, a validator's model name)
    are skipped; a missing field stops at the mapping that lacks it.
    """
    node = root
    parts: list[str] = []
    for part in loc:
        if isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if 0 <= part < len(node.value):
                node = node.value[part]
                item_id = _mapping_get(node, "id")
                parts.append(f"[{part}]" + (f"(id={item_id.value})" if item_id else ""))
            continue
        if isinstance(node, yaml.MappingNode):
            child = _mapping_get(node, str(part))
            if child is not None:
                node = child
                parts.append(f".{part}")
                continue
            if part in RULE_KINDS or part in ("cusum", "ewma"):
                continue  # the discriminator tag pydantic puts in the location
            parts.append(f".{part}")
            break
    return node, "".join(parts).lstrip(".")


def _mapping_get(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    for k, v in node.value:
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            return v
    return None


def _duplicate_keys(node: yaml.Node | None, path: str = "") -> list[tuple[int, str, str]]:
    """YAML silently keeps the last of two equal keys; a rules file must not."""
    found: list[tuple[int, str, str]] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            name = str(k.value)
            where = f"{path}.{name}" if path else name
            if name in seen:
                found.append((k.start_mark.line + 1, where, "duplicate key"))
            seen.add(name)
            found.extend(_duplicate_keys(v, where))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            found.extend(_duplicate_keys(v, f"{path}[{i}]"))
    return found


def parse_rules(text: str, path: str = "<rules>") -> RulesConfig:
    """Validate rules from YAML text; raise :class:`RulesError` naming line and field."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise RulesError(path, [(line, "", f"not valid YAML: {exc.problem or exc}")]) from None
    except yaml.YAMLError as exc:
        raise RulesError(path, [(None, "", f"not valid YAML: {exc}")]) from None
    if root is None:
        raise RulesError(path, [(1, "", "file is empty; expected a mapping with 'rules:'")])
    problems: list[tuple[int | None, str, str]] = list(_duplicate_keys(root))
    if problems:
        raise RulesError(path, problems)
    data = yaml.SafeLoader(text).get_single_data()
    if not isinstance(data, dict):
        raise RulesError(path, [(root.start_mark.line + 1, "", "expected a mapping with 'rules:'")])
    try:
        config = RulesConfig.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            node, field = _node_for(root, tuple(err["loc"]))
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] in ("value_error", "union_tag_invalid"):
                # A cross-field check names its field first ("clear_above (0.3) must
                # be ..."), a bad tag its discriminator: point at that field's line.
                first = msg.split(" ", 1)[0].strip("'\"")
                if err["type"] == "union_tag_invalid":
                    first = str(err.get("ctx", {}).get("discriminator", "")).strip("'")
                child = _mapping_get(node, first)
                if child is not None:
                    node, field = child, f"{field}.{first}"
            line = node.start_mark.line + 1 if node is not None else None
            if err["type"] == "missing":
                msg = f"required field missing (in the mapping starting at line {line})"
            elif err["type"] == "extra_forbidden":
                msg = "unknown field (misspelt?)"
            problems.append((line, field, msg))
        raise RulesError(path, problems) from None
    seen: dict[str, int] = {}
    rules_node = _mapping_get(root, "rules")
    for i, rule in enumerate(config.rules):
        id_node = _mapping_get(rules_node.value[i], "id") if rules_node is not None else None
        line = id_node.start_mark.line + 1 if id_node is not None else None
        if rule.id in seen:
            problems.append(
                (
                    line,
                    f"rules[{i}].id",
                    f"duplicate rule id {rule.id!r} (first at line {seen[rule.id]})",
                )
            )
        seen.setdefault(rule.id, line or 0)
    if problems:
        raise RulesError(path, problems)
    return config


def load_rules(path: str | Path) -> RulesConfig:
    """Read and validate a rules file; :class:`RulesError` if it cannot be used."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(str(path), [(None, "", f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        raise RulesError(str(path), [(None, "", f"not UTF-8: {exc}")]) from None
    return parse_rules(text, str(path))
