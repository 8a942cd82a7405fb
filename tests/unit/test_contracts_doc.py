"""docs/contracts.md stays in step with the models: its generated tables are current."""

from __future__ import annotations

from pathlib import Path

from mfucli import contracts


def test_contract_tables_are_current() -> None:
    text = contracts.DOC.read_text(encoding="utf-8")
    assert contracts.render(text) == text, "docs/contracts.md is stale: run `mfu contracts --write`"


def test_every_block_is_generated_and_a_model_change_shows(tmp_path: Path) -> None:
    text = contracts.DOC.read_text(encoding="utf-8")
    names = {m["name"] for m in contracts.BLOCK.finditer(text)}
    assert names == set(contracts.GENERATORS)
    # A stale table (a field dropped by hand) is caught and rewritten.
    stale = text.replace("| `energy_j` |", "| `energy_joules` |", 1)
    assert stale != text
    doc = tmp_path / "contracts.md"
    doc.write_text(stale, encoding="utf-8")
    assert contracts.render(stale) == text


def test_influx_table_lists_the_contract_names() -> None:
    table = contracts.influx_table()
    for name in ("`scope`", "`key`", "`gpu_model`", "`precision`", "`fleet`", "`mfu`",
                 "`achieved_tflops`", "`peak_tflops`", "`gpu_seconds`", "`gpus`",
                 "`sm_util`", "`tensor_active`", "`window_s`"):
        assert name in table
