"""Rule models and the rules-file loader (pure: no Kafka, no Faust).

A rules file is YAML validated by pydantic. Every rule has an ``id`` (stable: it names
the rule's state and goes into event ids), a ``kind`` that selects its model below, the
``scope`` it watches (``workload``, ``node`` or ``fleet``) and an optional ``match``
filter. Ratios (MFU, utilisations) are 0..1; durations are event-time seconds.

The kinds come from the registry (:mod:`policies.kinds`): the discriminated union
:data:`Rule` and :data:`RULE_KINDS` are derived from it, so a new kind is one module.

:func:`load_rules` refuses a bad file with a :class:`RulesError` whose lines read
``FILE:LINE: FIELD: problem``: pydantic's error locations are mapped back to the YAML
node that holds the offending value, using the node marks of ``yaml.compose``.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import Field, ValidationError

from mfu.events import MfuWindow
from policies.gpus import MigCatalog, MigProfile, catalog_mig
from policies.kinds import kinds

# Rule models of the built-in kinds, importable from here as before (new kinds: import
# from their module under policies/kinds/).
from policies.kinds.admission import AdmissionRule
from policies.kinds.allocation_gap import AllocationGapRule
from policies.kinds.busy_inefficient import BusyInefficientRule, Hints
from policies.kinds.consolidation import ConsolidationRule
from policies.kinds.cost import CostRule
from policies.kinds.drift import CusumParams, DriftRule, EwmaParams
from policies.kinds.idle import IdleRule
from policies.kinds.placement import PlacementRule
from policies.kinds.rightsize import RightsizeRule
from policies.kinds.scale import ScaleRule
from policies.kinds.stall import StallRule
from policies.kinds.straggler import StragglerRule
from policies.kinds.threshold import ThresholdRule
from policies.rulebase import Positive, Ratio, Strict

DEFAULT_RULES_PATH = Path(__file__).with_name("default_rules.yaml")


# The discriminated union of every registered kind's model (selected by ``kind``).
RULE_KINDS: tuple[str, ...] = tuple(kinds())
Rule = Annotated[
    Union[tuple(k.rule for k in kinds().values())],  # noqa: UP007 (built at run time)
    Field(discriminator="kind"),
]

__all__ = [
    "DEFAULT_RULES_PATH",
    "RULE_KINDS",
    "AdmissionRule",
    "AllocationGapRule",
    "BusyInefficientRule",
    "ConsolidationRule",
    "CostRule",
    "CusumParams",
    "DriftRule",
    "EwmaParams",
    "Expectation",
    "Hints",
    "IdleRule",
    "MigCatalog",
    "MigProfile",
    "PlacementRule",
    "Prices",
    "RightsizeRule",
    "Rule",
    "RulesConfig",
    "RulesError",
    "ScaleRule",
    "StallRule",
    "StragglerRule",
    "ThresholdRule",
    "load_rules",
    "parse_rules",
]


class Expectation(Strict):
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


class Prices(Strict):
    """USD per GPU-hour by ``gpu_model`` glob (first match wins), else ``default``."""

    usd_per_gpu_hour: dict[str, Positive] = Field(default_factory=dict)
    default: Positive | None = None

    def price(self, gpu_model: str | None) -> float | None:
        if gpu_model:
            for glob, usd in self.usd_per_gpu_hour.items():
                if fnmatch.fnmatchcase(gpu_model, glob):
                    return usd
        return self.default


class RulesConfig(Strict):
    """A whole rules file."""

    version: Literal[1] = 1
    rules: list[Rule] = Field(default_factory=list)
    expected: list[Expectation] = Field(default_factory=list)
    prices: Prices = Field(default_factory=Prices)
    # An operator's own MIG shapes; where none matches, the shapes come from the GPU
    # catalog (mfu.peaks: SM share and memory of each profile).
    mig: list[MigCatalog] = Field(default_factory=list)

    def expected_mfu(self, w: MfuWindow) -> float | None:
        """The declared expected MFU of ``w``: the record's own, else the file's."""
        if w.expected_mfu is not None:
            return w.expected_mfu
        for e in self.expected:
            if e.matches(w):
                return e.mfu
        return None

    def mig_catalog(self, gpu_model: str | None) -> MigCatalog | None:
        """MIG shapes of a whole GPU: the first matching ``mig:`` entry, else the
        catalog's (None for a MIG slice, an unknown GPU or one without MIG)."""
        if not gpu_model:
            return None
        for cat in self.mig:
            if fnmatch.fnmatchcase(gpu_model, cat.gpu_model):
                return cat
        return catalog_mig(gpu_model)


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
