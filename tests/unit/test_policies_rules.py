"""Rules files: validation with file/line/field messages, reload without restart, CLI."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from mfucli.main import main
from policies.evaluators import EVALUATORS
from policies.reload import RulesSource
from policies.rules import (
    DEFAULT_RULES_PATH,
    RULE_KINDS,
    RulesError,
    ThresholdRule,
    load_rules,
    parse_rules,
)


def problems(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(RulesError) as info:
        parse_rules(text, "r.yaml")
    return info.value.problems


def test_default_rules_are_valid_and_every_kind_has_an_evaluator() -> None:
    config = load_rules(DEFAULT_RULES_PATH)
    assert len({r.id for r in config.rules}) == len(config.rules)
    assert set(RULE_KINDS) == set(EVALUATORS)
    assert config.prices.price("NVIDIA H100 80GB HBM3") == 3.0
    assert config.prices.price("NVIDIA GB200") == 6.0  # first matching glob wins
    assert config.prices.price(None) == 2.0


def test_wrong_value_names_line_and_field() -> None:
    text = """version: 1
rules:
  - id: low
    kind: threshold
    scope: workload
    below: 0.2
    for_windows: 0
"""
    assert problems(text) == [
        (7, "rules[0](id=low).for_windows", "Input should be greater than or equal to 1")
    ]


def test_nested_detector_field_unknown_field_and_unknown_kind() -> None:
    text = """rules:
  - id: d
    kind: drift
    scope: workload
    detector:
      method: cusum
      h: -3
    sigmaa: 0.1
  - id: x
    kind: nope
    scope: node
"""
    got = problems(text)
    assert got[0] == (7, "rules[0](id=d).detector.h", "Input should be greater than 0")
    assert got[1] == (8, "rules[0](id=d).sigmaa", "unknown field (misspelt?)")
    line, field, msg = got[2]
    assert (line, field) == (10, "rules[1](id=x).kind") and "does not match" in msg


def test_cross_field_check_points_at_the_field_it_names() -> None:
    text = """rules:
  - id: low
    kind: threshold
    scope: workload
    below: 0.3
    clear_above: 0.2
"""
    assert problems(text) == [
        (6, "rules[0](id=low).clear_above", "clear_above (0.2) must be >= below (0.3)")
    ]


def test_missing_field_points_at_its_mapping() -> None:
    text = "rules:\n  - id: a\n    kind: idle\n"
    ((line, field, msg),) = problems(text)
    assert (line, field) == (2, "rules[0](id=a).scope") and "required" in msg


def test_duplicate_rule_ids_and_duplicate_keys() -> None:
    dup_id = """rules:
  - {id: a, kind: idle, scope: node}
  - {id: a, kind: idle, scope: workload}
"""
    assert problems(dup_id) == [(3, "rules[1].id", "duplicate rule id 'a' (first at line 2)")]
    dup_key = """rules:
  - id: a
    kind: idle
    scope: node
    scope: workload
"""
    assert problems(dup_key) == [(5, "rules[0].scope", "duplicate key")]


def test_yaml_syntax_error_and_empty_file() -> None:
    ((line, _, msg),) = problems("rules:\n  - id: a\n    kind: [idle\n")
    assert line == 4 and msg.startswith("not valid YAML")
    assert problems("") == [(1, "", "file is empty; expected a mapping with 'rules:'")]
    assert problems("- 1\n- 2\n")[0][2] == "expected a mapping with 'rules:'"


def test_error_text_is_file_line_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("rules:\n  - {id: a, kind: idle, scope: galaxy}\n")
    with pytest.raises(RulesError) as info:
        load_rules(path)
    assert str(info.value).startswith(f"{path}:2: rules[0](id=a).scope: Input should be")
    with pytest.raises(RulesError, match="cannot read"):
        load_rules(tmp_path / "missing.yaml")


def test_threshold_clear_defaults_to_the_trigger() -> None:
    rule = parse_rules("rules: [{id: a, kind: threshold, scope: node, below: 0.2}]").rules[0]
    assert isinstance(rule, ThresholdRule) and rule.clear_above == 0.2
    assert problems("rules: [{id: a, kind: threshold, scope: node}]")[0][2] == (
        "give exactly one of 'below' or 'above'"
    )


GOOD = "rules:\n  - {id: low, kind: threshold, scope: workload, below: 0.2, for_windows: 1}\n"


def _touch_later(path: Path, text: str) -> None:
    before = path.stat().st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


def test_reload_refuses_a_bad_file_and_keeps_the_running_rules(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(GOOD)
    source = RulesSource(path)
    engine = source.engine
    assert source.maybe_reload() is False  # unchanged
    _touch_later(path, GOOD.replace("below: 0.2", "below: 2x"))
    with caplog.at_level(logging.ERROR, logger="mfu.policies"):
        assert source.maybe_reload() is False
    assert source.engine is engine and source.generation == 1
    (record,) = caplog.records
    assert f"{path}:2: rules[0](id=low).below: Input should be a valid number" in record.message
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="mfu.policies"):
        assert source.maybe_reload() is False  # the same bad file is reported once
    assert caplog.records == []
    _touch_later(path, GOOD.replace("below: 0.2", "below: 0.3"))
    assert source.maybe_reload() is True
    assert source.engine is not engine and source.generation == 2
    assert source.engine.config.rules[0].below == 0.3  # type: ignore[union-attr]
    path.unlink()
    assert source.maybe_reload() is False and source.generation == 2  # deleted: keep
    assert source.maybe_reload(force=True) is False


def test_first_load_of_a_bad_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules: 3\n")
    with pytest.raises(RulesError, match=r"rules.yaml:1: rules: Input should be a valid list"):
        RulesSource(path)


def test_cli_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("scope: workload", "scope: cluster"))
    assert main(["policies", "check", str(good)]) == 0
    assert capsys.readouterr().out == f"{good}: ok, 1 rules (threshold)\n"
    assert main(["policies", "check", str(good), str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith(f"{bad}:2: rules[0](id=low).scope: Input should be")
    assert main(["policies", "check", str(DEFAULT_RULES_PATH)]) == 0
