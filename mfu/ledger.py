"""The useful-work ledger: GPU-hours, useful FLOPs, energy and cost per tenant (pure, no I/O).

Input: one :class:`LedgerPoint` per closed window and key, as the streams sink writes them
to InfluxDB (measurement ``mfu``, DESIGN.md §4 and §8). Output: one :class:`LedgerRow`
per group (tenant, workload or GPU model), a total over the groups, and the fleet's
unallocated capacity. Every quantity is a sum over windows, so a ledger over a month is
the sum of the ledgers of its days.

Definitions (units in the names):

- ``allocated_gpu_hours`` = Σ workload ``gpu_seconds`` / 3600: the GPU time the group held.
- ``measured_pflop`` = Σ achieved FLOPs / 1e15, where a window's achieved FLOPs =
  ``achieved_tflops`` x ``window_s`` x 1e12: model FLOPs *reported* by the SDK or an
  inference engine (FLOP sources ``reported`` + ``engine``). This is the useful work.
- ``estimated_pflop`` = Σ ``estimated_tflops`` x ``window_s`` x 1e12 / 1e15: the
  counter-based (OFU) estimate for busy GPU-seconds that reported nothing
  (source ``counters``). Shown next to the measured figure, never added to it.
- ``mfu`` = GPU-second-weighted mean of the windows' ``mfu`` over their *known*
  GPU-seconds (sources ``reported`` + ``engine`` + ``idle``): Σ mfu_w x known_s_w /
  Σ known_s_w. For a group on one GPU model this is exactly Σ measured FLOPs / Σ peak
  FLOPs of the known GPU-seconds (the contract's MFU, summed over windows). Windows
  whose ``mfu`` is null (no known FLOPs) add nothing; ``None`` when no window is known.
- ``mfu_estimated`` likewise from the windows' ``mfu_estimated`` over known + ``counters``
  GPU-seconds.
- ``energy_kwh`` = Σ ``energy_j`` / 3.6e6 over the windows that carry energy (a lower
  bound where some do not); ``flops_per_j`` = measured FLOPs / joules over those windows.
- ``cost_usd`` = Σ ``gpu_seconds`` / 3600 x price(``gpu_model``), price in USD per
  GPU-hour (:class:`Prices`). GPU-seconds on a model without a price are not costed:
  they are counted in ``unpriced_gpu_hours`` and left out of every cost figure (an
  unknown price is never a zero price, and never a guessed one).
- ``usd_per_useful_pflop_hour`` = ``cost_usd`` / (measured FLOPs of the priced windows /
  1e15 / 3600). One "useful PFLOP-hour" is 1e15 model FLOP/s sustained for an hour
  (3.6e18 FLOPs). With every window priced this is exactly the ``cost`` policy rule's
  "USD per effective PFLOP-hour" (policies/rules.py ``CostRule``: cost = gpu_seconds/3600
  x price, effective PFLOP-hours = achieved_flops / 1e15 / 3600). ``None`` when the group
  has no measured FLOPs or no price.
- ``wasted_usd`` ("idle or wasted") = Σ over windows of ``known_usd_w`` x max(0, 1 -
  ``mfu_w`` / ``reference_mfu``), where ``known_usd_w`` is the cost of the window's
  GPU-seconds whose MFU is known. Idle GPU-seconds are known zeros, so a tenant holding
  idle GPUs pays into it; a window at or above the reference MFU wastes nothing. Taken
  per window (not from the group's average MFU) so that it is additive: the rows of any
  grouping sum to the same total, and a month is the sum of its days.
- ``unknown_usd`` = cost of the GPU-seconds with no known MFU (busy and silent: sources
  ``counters`` and ``none``, or windows whose ``mfu`` is null). Neither useful nor
  wasted: a silent busy GPU is never counted as a zero. ``cost_usd`` = ``known_usd`` +
  ``unknown_usd``.
- Unallocated capacity (provider view, from node- or fleet-scope points):
  ``gpu_seconds`` x (1 - ``allocation``) per window, priced by that point's GPU model.
  Its whole cost is idle capacity.

Windows are attributed whole to the period that contains their ``window_start`` (the
point's timestamp). With hopping windows every instant is in size/hop windows: pass
``hop_s`` and each window counts hop_s/window_s of itself, so totals stay exact.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mfu.events import MfuWindow

GroupBy = Literal["tenant", "workload", "gpu-model"]
GROUP_BYS: tuple[str, ...] = ("tenant", "workload", "gpu-model")
NO_TENANT = "(no tenant)"
NO_MODEL = "(unknown model)"
TOTAL = "(all groups)"
UNALLOCATED = "(unallocated)"
J_PER_KWH = 3.6e6
FLOPS_PER_PFLOP_HOUR = 1e15 * 3600.0
SOURCES = ("reported", "engine", "idle", "counters", "none")


class Prices(BaseModel):
    """USD per GPU-hour by GPU model (the ``gpu_model`` tag, i.e. the NVML device name).

    Lookup: the exact name first, then the keys with glob characters (``*?[``) in the
    order written, and the bare ``"*"`` last whatever its position, so
    ``{"*": 2.0, "*H100*": 2.49}`` prices an H100 at 2.49. No match: unpriced
    (``None``), reported as ``unpriced_gpu_hours``, never costed at zero.
    """

    model_config = ConfigDict(frozen=True)
    usd_per_gpu_hour: dict[str, float] = Field(default_factory=dict)

    def price(self, gpu_model: str | None) -> float | None:
        table = self.usd_per_gpu_hour
        if gpu_model and gpu_model in table:
            return table[gpu_model]
        if gpu_model:
            for pattern, usd in table.items():
                if pattern != "*" and any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(
                    gpu_model, pattern
                ):
                    return usd
        return table.get("*")


class LedgerPoint(BaseModel):
    """One window of one key, as read back from InfluxDB (all totals over the window).

    ``achieved_flops`` are measured model FLOPs (sources reported + engine);
    ``estimated_flops`` the OFU estimate of the ``counters`` GPU-seconds; ``flop_sources_s``
    GPU-seconds per FLOP source (``None`` on points written before DESIGN.md §8).
    """

    model_config = ConfigDict(frozen=True)
    scope: Literal["workload", "node", "fleet"]
    key: str
    time_s: float = Field(description="window_start, Unix seconds")
    window_s: float = Field(gt=0)
    gpu_seconds: float = Field(ge=0)
    achieved_flops: float = Field(0.0, ge=0)
    estimated_flops: float | None = Field(None, ge=0)
    mfu: float | None = None
    mfu_estimated: float | None = None
    flop_sources_s: dict[str, float] | None = None
    energy_j: float | None = Field(None, ge=0)
    tokens: float | None = Field(None, ge=0)
    allocation: float | None = Field(None, ge=0, le=1)
    tenant: str | None = None
    gpu_model: str | None = None
    fleet: str | None = None

    @classmethod
    def from_influx(cls, time_s: float, tags: Mapping[str, Any], fields: Mapping[str, Any]
                    ) -> LedgerPoint:
        """From the point's tags and fields (contract names; TFLOP/s rates -> FLOPs)."""

        def num(name: str) -> float | None:
            v = fields.get(name)
            return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

        window_s = num("window_s")
        if window_s is None or window_s <= 0:
            raise ValueError(f"point {tags.get('scope')}/{tags.get('key')} at {time_s} has no "
                             "window_s field (not written by the mfu streams sink)")
        sources = {s: num(f"flop_sources_{s}") for s in SOURCES}
        tflops, etflops = num("achieved_tflops"), num("estimated_tflops")
        return cls(
            scope=tags.get("scope"),
            key=tags.get("key") or "",
            time_s=time_s,
            window_s=window_s,
            gpu_seconds=num("gpu_seconds") or 0.0,
            achieved_flops=(tflops or 0.0) * window_s * 1e12,
            estimated_flops=None if etflops is None else etflops * window_s * 1e12,
            mfu=num("mfu"),
            mfu_estimated=num("mfu_estimated"),
            flop_sources_s=(None if all(v is None for v in sources.values())
                            else {k: v or 0.0 for k, v in sources.items()}),
            energy_j=num("energy_j"),
            tokens=num("tokens"),
            allocation=num("allocation"),
            tenant=tags.get("tenant") or None,
            gpu_model=tags.get("gpu_model") or None,
            fleet=tags.get("fleet") or None,
        )

    @classmethod
    def from_window(cls, w: MfuWindow) -> LedgerPoint:
        """From an ``mfu_window/1`` record (the demo's summary ledger, without InfluxDB)."""
        fs = w.flop_sources
        return cls(
            scope=w.scope, key=w.key, time_s=w.window_start, window_s=w.window_s,
            gpu_seconds=w.gpu_seconds, achieved_flops=w.achieved_flops,
            estimated_flops=getattr(w, "estimated_flops", None), mfu=w.mfu,
            mfu_estimated=w.mfu_estimated,
            flop_sources_s=None if fs is None else {s: float(getattr(fs, s)) for s in SOURCES},
            energy_j=w.energy_j, tokens=w.tokens, allocation=w.allocation, tenant=w.tenant,
            gpu_model=w.gpu_model, fleet=w.fleet,
        )

    def known_s(self) -> float:
        """GPU-seconds of this window whose MFU is known (the MFU denominator's seconds)."""
        if self.mfu is None:
            return 0.0
        if self.flop_sources_s is None:  # written before §8: MFU was over every GPU-second
            return self.gpu_seconds
        fs = self.flop_sources_s
        return min(self.gpu_seconds, fs["reported"] + fs["engine"] + fs["idle"])

    def estimated_s(self) -> float:
        """GPU-seconds behind ``mfu_estimated`` (known + counters)."""
        if self.mfu_estimated is None:
            return 0.0
        if self.flop_sources_s is None:
            return self.known_s()
        fs = self.flop_sources_s
        return min(self.gpu_seconds,
                   fs["reported"] + fs["engine"] + fs["idle"] + fs["counters"])


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


@dataclass
class _Acc:
    """Running sums of one group (seconds, FLOPs, joules, USD)."""

    windows: int = 0
    gpu_s: float = 0.0
    known_s: float = 0.0
    mfu_x_s: float = 0.0
    est_s: float = 0.0
    mfu_est_x_s: float = 0.0
    measured_flops: float = 0.0
    estimated_flops: float = 0.0
    energy_j: float = 0.0
    energy_windows: int = 0
    energy_flops: float = 0.0
    tokens: float = 0.0
    token_windows: int = 0
    unpriced_s: float = 0.0
    reference_mfu: float = 0.4
    known_usd: float = 0.0
    unknown_usd: float = 0.0
    wasted_usd: float = 0.0
    priced_flops: float = 0.0
    sources_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SOURCES, 0.0))
    unpriced_models: set[str] = field(default_factory=set)

    def add(self, p: LedgerPoint, weight: float, price: float | None) -> None:
        self.windows += 1
        gpu_s = p.gpu_seconds * weight
        known_s = p.known_s() * weight
        self.gpu_s += gpu_s
        self.known_s += known_s
        if p.mfu is not None:
            self.mfu_x_s += p.mfu * known_s
        est_s = p.estimated_s() * weight
        if p.mfu_estimated is not None:
            self.est_s += est_s
            self.mfu_est_x_s += p.mfu_estimated * est_s
        flops = p.achieved_flops * weight
        self.measured_flops += flops
        self.estimated_flops += (p.estimated_flops or 0.0) * weight
        if p.energy_j is not None:
            self.energy_j += p.energy_j * weight
            self.energy_windows += 1
            self.energy_flops += flops
        if p.tokens is not None:
            self.tokens += p.tokens * weight
            self.token_windows += 1
        if p.flop_sources_s is not None:
            for s in SOURCES:
                self.sources_s[s] += p.flop_sources_s[s] * weight
        if price is None:
            self.unpriced_s += gpu_s
            self.unpriced_models.add(p.gpu_model or NO_MODEL)
        else:
            known_usd = known_s / 3600.0 * price
            self.known_usd += known_usd
            if p.mfu is not None:
                self.wasted_usd += known_usd * max(0.0, 1.0 - p.mfu / self.reference_mfu)
            self.unknown_usd += max(0.0, gpu_s - known_s) / 3600.0 * price
            self.priced_flops += flops

    def row(self, group: str) -> LedgerRow:
        mfu = _ratio(self.mfu_x_s, self.known_s)
        priced = self.gpu_s - self.unpriced_s > 0
        cost = self.known_usd + self.unknown_usd if priced else None
        per = (cost / (self.priced_flops / FLOPS_PER_PFLOP_HOUR)
               if cost is not None and self.priced_flops > 0 else None)
        return LedgerRow(
            group=group,
            windows=self.windows,
            allocated_gpu_hours=self.gpu_s / 3600.0,
            known_gpu_hours=self.known_s / 3600.0,
            idle_gpu_hours=self.sources_s["idle"] / 3600.0,
            unknown_gpu_hours=max(0.0, self.gpu_s - self.known_s) / 3600.0,
            measured_pflop=self.measured_flops / 1e15,
            estimated_pflop=self.estimated_flops / 1e15,
            mfu=mfu,
            mfu_estimated=_ratio(self.mfu_est_x_s, self.est_s),
            energy_kwh=self.energy_j / J_PER_KWH if self.energy_windows else None,
            flops_per_j=_ratio(self.energy_flops, self.energy_j) if self.energy_windows else None,
            tokens=self.tokens if self.token_windows else None,
            cost_usd=cost,
            usd_per_useful_pflop_hour=per,
            wasted_usd=self.wasted_usd if priced else None,
            unknown_usd=self.unknown_usd if priced else None,
            unpriced_gpu_hours=self.unpriced_s / 3600.0,
            unpriced_models=sorted(self.unpriced_models),
        )


class LedgerRow(BaseModel):
    """One line of the ledger (see the module docstring for every definition)."""

    model_config = ConfigDict(frozen=True)
    group: str
    windows: int
    allocated_gpu_hours: float
    known_gpu_hours: float
    idle_gpu_hours: float
    unknown_gpu_hours: float
    measured_pflop: float
    estimated_pflop: float
    mfu: float | None
    mfu_estimated: float | None
    energy_kwh: float | None
    flops_per_j: float | None
    tokens: float | None
    cost_usd: float | None
    usd_per_useful_pflop_hour: float | None
    wasted_usd: float | None
    unknown_usd: float | None
    unpriced_gpu_hours: float
    unpriced_models: list[str] = Field(default_factory=list)


class Capacity(BaseModel):
    """The provider's side, from node- (preferred) or fleet-scope points: installed GPU-hours,
    the share allocated, and the unallocated rest with its cost (all idle capacity)."""

    model_config = ConfigDict(frozen=True)
    source_scope: Literal["node", "fleet"]
    installed_gpu_hours: float
    allocated_gpu_hours: float
    unallocated_gpu_hours: float
    unallocated_usd: float | None
    unpriced_gpu_hours: float
    allocation: float | None


class Ledger(BaseModel):
    """The ledger of one period: rows per group, their total, and the fleet's capacity."""

    model_config = ConfigDict(frozen=True)
    group_by: GroupBy
    since_s: float | None = None
    until_s: float | None = None
    reference_mfu: float
    rows: list[LedgerRow]
    total: LedgerRow
    capacity: Capacity | None = None

    def provider_cost_usd(self) -> float | None:
        """What the fleet cost over the period: every group plus unallocated capacity."""
        parts = [self.total.cost_usd]
        if self.capacity is not None:
            parts.append(self.capacity.unallocated_usd)
        known = [p for p in parts if p is not None]
        return sum(known) if known else None


def group_of(p: LedgerPoint, by: GroupBy) -> str:
    if by == "tenant":
        return p.tenant or NO_TENANT
    if by == "workload":
        return p.key
    if by == "gpu-model":
        return p.gpu_model or NO_MODEL
    raise ValueError(f"unknown grouping {by!r}: use one of {', '.join(GROUP_BYS)}")


def _weight(p: LedgerPoint, hop_s: float | None) -> float:
    return 1.0 if hop_s is None else min(1.0, hop_s / p.window_s)


def capacity(points: Iterable[LedgerPoint], prices: Prices, *, hop_s: float | None = None
             ) -> Capacity | None:
    """Installed, allocated and unallocated GPU-hours from node-scope points (each node's
    GPU model prices its idle GPUs), or fleet-scope points when there are no node ones
    (a ``mixed`` fleet is then priced by ``"*"``). Points without ``allocation`` are
    skipped. ``None`` when no point carries allocation."""
    by_scope: dict[str, list[LedgerPoint]] = {"node": [], "fleet": []}
    for p in points:
        if p.scope in by_scope and p.allocation is not None:
            by_scope[p.scope].append(p)
    scope = "node" if by_scope["node"] else "fleet"
    chosen = by_scope[scope]
    if not chosen:
        return None
    installed = allocated = unpriced = usd = 0.0
    priced_any = False
    for p in chosen:
        w = _weight(p, hop_s)
        s = p.gpu_seconds * w
        free = s * (1.0 - (p.allocation or 0.0))
        installed += s
        allocated += s - free
        price = prices.price(p.gpu_model)
        if price is None:
            unpriced += free
        else:
            priced_any = True
            usd += free / 3600.0 * price
    return Capacity(
        source_scope=scope,  # type: ignore[arg-type]
        installed_gpu_hours=installed / 3600.0,
        allocated_gpu_hours=allocated / 3600.0,
        unallocated_gpu_hours=(installed - allocated) / 3600.0,
        unallocated_usd=None if unpriced > 0 and not priced_any else usd,
        unpriced_gpu_hours=unpriced / 3600.0,
        allocation=_ratio(allocated, installed),
    )


def build_ledger(
    points: Iterable[LedgerPoint],
    prices: Prices,
    *,
    by: GroupBy = "tenant",
    reference_mfu: float = 0.4,
    hop_s: float | None = None,
    since_s: float | None = None,
    until_s: float | None = None,
) -> Ledger:
    """The ledger of ``points`` grouped ``by`` tenant, workload or GPU model.

    Workload-scope points make the rows; node/fleet-scope points only the capacity.
    Rows are sorted by cost (unpriced last), then by name.
    """
    if not 0 < reference_mfu <= 1:
        raise ValueError(f"reference_mfu must be in (0, 1], got {reference_mfu}")
    if by not in GROUP_BYS:
        raise ValueError(f"unknown grouping {by!r}: use one of {', '.join(GROUP_BYS)}")
    pts = list(points)
    # One point per (scope, key, fleet, window): a window written twice (a replay after a
    # worker restart, possibly with another tag set) counts once, the last copy wins.
    unique = list({(p.scope, p.key, p.fleet, p.time_s): p for p in pts}.values())
    groups: dict[str, _Acc] = {}
    total = _Acc(reference_mfu=reference_mfu)
    for p in unique:
        if p.scope != "workload":
            continue
        w = _weight(p, hop_s)
        price = prices.price(p.gpu_model)
        groups.setdefault(group_of(p, by), _Acc(reference_mfu=reference_mfu)).add(p, w, price)
        total.add(p, w, price)
    rows = [acc.row(name) for name, acc in groups.items()]
    rows.sort(key=lambda r: (r.cost_usd is None, -(r.cost_usd or 0.0), r.group))
    return Ledger(
        group_by=by, since_s=since_s, until_s=until_s, reference_mfu=reference_mfu,
        rows=rows, total=total.row(TOTAL),
        capacity=capacity(unique, prices, hop_s=hop_s),
    )


# Stable CSV/JSON columns for finance: (column, LedgerRow attribute). Never rename; add.
COLUMNS: tuple[str, ...] = (
    "group", "windows", "allocated_gpu_hours", "known_gpu_hours", "idle_gpu_hours",
    "unknown_gpu_hours", "measured_pflop", "estimated_pflop", "mfu", "mfu_estimated",
    "energy_kwh", "flops_per_j", "tokens", "cost_usd", "usd_per_useful_pflop_hour",
    "wasted_usd", "unknown_usd", "unpriced_gpu_hours", "unallocated_gpu_hours",
)


def unallocated_row(cap: Capacity) -> dict[str, Any]:
    """The capacity's unallocated GPU-hours as a ledger line (CSV/table): held by nobody,
    so its whole cost is in ``wasted_usd``. Tenant rows leave ``unallocated_gpu_hours``
    empty; this row has ``allocated_gpu_hours`` 0."""
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(group=UNALLOCATED, windows=None, allocated_gpu_hours=0.0,
               unallocated_gpu_hours=cap.unallocated_gpu_hours, cost_usd=cap.unallocated_usd,
               wasted_usd=cap.unallocated_usd, unpriced_gpu_hours=cap.unpriced_gpu_hours)
    return row


def row_dict(row: LedgerRow) -> dict[str, Any]:
    """A group's line under the stable :data:`COLUMNS` names."""
    values = row.model_dump()
    return {c: values.get(c) for c in COLUMNS}
