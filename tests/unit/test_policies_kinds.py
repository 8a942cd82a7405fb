"""The rule-kind registry: kinds found as modules, the union and tables derived from it,
and a new kind added as one module (in a fresh interpreter, so the registry is rebuilt)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import policies.kinds as kinds_pkg
from policies.evaluators import EVALUATORS
from policies.kinds import kinds
from policies.rules import RULE_KINDS, RulesError, parse_rules

ROOT = Path(__file__).resolve().parents[2]


def test_every_module_is_a_kind_and_the_tables_are_derived() -> None:
    modules = {m.name for m in pkgutil.iter_modules(kinds_pkg.__path__)} - {"registry"}
    assert set(kinds()) == modules == set(RULE_KINDS) == set(EVALUATORS)
    assert {"reporter_mismatch", "flop_overhead"} <= modules
    for name, kind in kinds().items():
        assert kind.rule.model_fields["kind"].annotation.__args__ == (name,)
        assert EVALUATORS[name] is kind.evaluator


def test_new_kinds_validate_like_the_others() -> None:
    config = parse_rules("rules: [{id: rm, kind: reporter_mismatch, scope: workload}]")
    assert config.rules[0].kind == "reporter_mismatch"
    try:
        parse_rules("rules: [{id: rm, kind: reporter_mismatch, scope: workload, tolerence: 1}]")
    except RulesError as exc:
        assert exc.problems == [(1, "rules[0](id=rm).tolerence", "unknown field (misspelt?)")]
    else:
        raise AssertionError("a misspelt parameter must be refused")


PLUGIN = '''
"""A kind added as one module: MFU above a fixed ceiling."""
from typing import Literal
from policies.evaluation import Assessment, EpisodeEvaluator
from policies.kinds.registry import RuleKind
from policies.rulebase import Hysteresis, Ratio, RuleBase


class CeilingRule(RuleBase, Hysteresis):
    kind: Literal["ceiling"]
    above: Ratio = 0.9
    event: str = "ceiling"


class CeilingEvaluator(EpisodeEvaluator):
    def assess(self, w, state):
        if w.mfu is None:
            return None
        bad = w.mfu > self.rule.above
        return Assessment(bad, not bad, w.mfu, "mfu", {"mfu": w.mfu}, {"above": self.rule.above})

    def summary(self, a, mean, n, opened, facts):
        return f"MFU {mean:.2f} above the ceiling" if opened else "below the ceiling"


KIND = RuleKind("ceiling", CeilingRule, CeilingEvaluator)
'''


def test_adding_a_kind_is_one_module(tmp_path: Path) -> None:
    """The module goes into a folder on policies.kinds' search path (as a file dropped
    into policies/kinds/ would); nothing else is edited."""
    (tmp_path / "ceiling.py").write_text(PLUGIN)
    script = textwrap.dedent(f"""
        import policies.kinds
        policies.kinds.__path__.append({str(tmp_path)!r})
        from mfu.events import MfuWindow
        from policies.engine import Engine
        from policies.rules import RULE_KINDS, parse_rules
        assert "ceiling" in RULE_KINDS
        eng = Engine(parse_rules("rules: [{{id: c, kind: ceiling, scope: node, for_windows: 1}}]"))
        w = MfuWindow(event_id="1", scope="node", key="n1", window_start=0.0,
                      window_end=10.0, mfu=0.95, achieved_flops=0.95, peak_flops=1.0,
                      gpu_seconds=10.0, gpus=1)
        (e,) = eng.process(w, None).events
        print(e.type, e.data["rule_kind"], e.data["basis"])
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "io.mfu.ceiling.v1 ceiling reported"
