"""The registry of rule kinds: every module of :mod:`policies.kinds` that defines
``KIND`` (a :class:`RuleKind`). Discovered once, on first use, in module-name order."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, get_args

if TYPE_CHECKING:
    from policies.evaluation import Evaluator
    from policies.rulebase import RuleBase


@dataclass(frozen=True)
class RuleKind:
    """One rule kind: its name (the ``kind:`` value in a rules file), its pydantic model
    and its evaluator class."""

    name: str
    rule: type[RuleBase]
    evaluator: type[Evaluator]


@cache
def kinds() -> dict[str, RuleKind]:
    """Every rule kind, by name. Raises TypeError for a module whose ``KIND`` does not
    match its model (a wrong ``kind`` literal, a duplicate name), naming the module."""
    import policies.kinds as package

    found: dict[str, RuleKind] = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name == "registry":
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        kind = getattr(module, "KIND", None)
        if kind is None:
            continue  # a helper module, not a kind
        if not isinstance(kind, RuleKind):
            raise TypeError(f"{module.__name__}.KIND must be a RuleKind, got {type(kind)}")
        field = kind.rule.model_fields.get("kind")
        literal = get_args(field.annotation) if field is not None else ()
        if literal != (kind.name,):
            raise TypeError(
                f"{module.__name__}: {kind.rule.__name__}.kind must be "
                f"Literal[{kind.name!r}] (got {literal or 'no kind field'})"
            )
        if kind.name in found:
            raise TypeError(f"{module.__name__}: rule kind {kind.name!r} defined twice")
        found[kind.name] = kind
    return found
