"""Building blocks every rule model shares (pure pydantic): strict base, the ``match``
filter, ratios/windows types and the hysteresis parameters. A rule kind's own model lives
in its module under :mod:`policies.kinds`."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from mfu.events import MfuWindow, Scope

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
    "mbu",
    "ofu",
    "mfu_estimated",
    "coverage",
]


class Strict(BaseModel):
    # extra="forbid": a misspelt parameter must be an error, not a silently ignored key.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Match(Strict):
    """Which entities a rule applies to. Globs (``fnmatch``) on the key and GPU model;
    a window lacking a field that a filter needs does not match that filter."""

    keys: list[str] = Field(default_factory=list, description="key globs; empty = all")
    exclude_keys: list[str] = Field(default_factory=list)
    phases: list[str] = Field(default_factory=list, description="e.g. [train, prefill]")
    exclude_phases: list[str] = Field(default_factory=list)
    regimes: list[str] = Field(default_factory=list, description="compute | memory | mixed")
    exclude_regimes: list[str] = Field(
        default_factory=list, description="e.g. [memory]: memory-bound work is judged on MBU"
    )
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
        if self.regimes and w.regime not in self.regimes:
            return False
        if self.exclude_regimes and w.regime in self.exclude_regimes:
            return False
        if self.gpu_models and not (w.gpu_model and _any_glob(w.gpu_model, self.gpu_models)):
            return False
        if self.models and not (w.model and _any_glob(w.model, self.models)):
            return False
        return w.gpus >= self.min_gpus


def _any_glob(value: str, globs: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, g) for g in globs)


class RuleBase(Strict):
    id: RuleId
    scope: Scope
    description: str = ""
    enabled: bool = True
    severity: Literal["info", "warning", "critical"] = "warning"
    match: Match = Field(default_factory=Match)


class Hysteresis(Strict):
    """Open after ``for_windows`` consecutive bad windows, resolve after ``clear_windows``
    consecutive good ones; no new incident within ``cooldown_s`` of the last resolution."""

    for_windows: Windows = 3
    clear_windows: Windows = 3
    cooldown_s: float = Field(300.0, ge=0.0)
