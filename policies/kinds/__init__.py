"""Rule kinds, one module each, found through :mod:`policies.kinds.registry`.

A module here defines its rule model (a pydantic model with ``kind: Literal["<name>"]``),
its evaluator and ``KIND = RuleKind("<name>", Model, Evaluator)``. The rules file's
discriminated union, the list of kinds and the evaluator table are derived from these
modules: adding a kind is one module (plus its test); nothing else changes.
"""

from policies.kinds.registry import RuleKind, kinds

__all__ = ["RuleKind", "kinds"]
