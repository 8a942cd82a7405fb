"""Adding a sink is one module in mfuio/sinks/ (plus its test): the module's name is the
kind, its ``from_settings(settings, ctx)`` the factory.

The test writes the module a contributor would write (a JSON-lines file sink with its own
settings model) into a folder on ``mfuio.sinks``' search path, selects it by configuration
(``MFU_STREAMS_SINKS``) and sends windows through ``build_sinks``, the path the stream
stage takes. Nothing else is edited: no table, no registration.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

import mfuio.sinks
from mfu.config import InfluxSettings, KafkaSettings
from mfu.events import MfuWindow
from mfuio.sinks import Sink, SinkContext, SinkSettings, build_sinks, known_kinds

PLUGIN = textwrap.dedent('''
    """JSON-lines sink: every closed window as one line of a local file."""

    from __future__ import annotations

    from collections.abc import Sequence
    from pathlib import Path

    from pydantic_settings import BaseSettings, SettingsConfigDict

    from mfu.events import MfuWindow
    from mfuio.sinks.base import Rejection, SinkResult


    class JsonLinesSettings(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="MFU_STREAMS_SINK_JSONL_")

        path: Path  # the file windows are appended to


    class JsonLinesSink:
        name = "jsonl"

        def __init__(self, path: Path) -> None:
            self.path = path

        def write(self, batch: Sequence[MfuWindow]) -> SinkResult:
            result = SinkResult()
            with self.path.open("a", encoding="utf-8") as out:
                for record in batch:
                    if record.mfu is None:  # this sink's own rule, to show refusals
                        result.rejected.append(Rejection(record, "no MFU", self.name))
                        continue
                    out.write(record.model_dump_json() + "\\n")
                    result.written += 1
            return result

        def close(self) -> None:
            pass


    def from_settings(settings, ctx) -> JsonLinesSink:
        return JsonLinesSink(JsonLinesSettings().path)
''')


def window(key: str, mfu: float | None) -> MfuWindow:
    return MfuWindow(event_id=f"workload:{key}:0", scope="workload", key=key,
                     window_start=1.7e9, window_end=1.7e9 + 10, mfu=mfu,
                     achieved_flops=4e15, peak_flops=1e16, gpu_seconds=10.0, gpus=1)


def test_adding_a_sink_is_one_module(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "jsonl.py").write_text(PLUGIN, encoding="utf-8")  # the one module
    monkeypatch.setattr(mfuio.sinks, "__path__", [*mfuio.sinks.__path__, str(plugins)])
    monkeypatch.delitem(sys.modules, "mfuio.sinks.jsonl", raising=False)
    assert "jsonl" in known_kinds()

    out = tmp_path / "windows.jsonl"
    monkeypatch.setenv("MFU_STREAMS_SINKS", "jsonl")
    monkeypatch.setenv("MFU_STREAMS_SINK_JSONL_PATH", str(out))
    ctx = SinkContext(influx=InfluxSettings(enabled=False), kafka=KafkaSettings())
    fan = build_sinks(SinkSettings(), ctx)
    assert [s.name for s in fan.sinks] == ["jsonl"]
    assert isinstance(fan.sinks[0], Sink)

    result = fan.write([window("a", 0.4), window("b", None), window("c", 0.25)])
    # 3 records: b has no MFU and is refused by the sink, naming itself; a and c written
    assert [(r.record.key, r.reason, r.sink) for r in result.rejected] == [("b", "no MFU", "jsonl")]
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(d["key"], d["mfu"]) for d in lines] == [("a", 0.4), ("c", 0.25)]
    fan.close()
    sys.modules.pop("mfuio.sinks.jsonl", None)


def test_a_kind_without_a_module_is_refused_naming_the_known_ones() -> None:
    assert known_kinds() == ["influxdb", "kafka", "prometheus"]
    with pytest.raises(ValueError, match=r"unknown sink kind.*'jsonl'.*influxdb, kafka, prometheus"):
        SinkSettings(sinks="jsonl")


def test_a_module_without_a_factory_says_so(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "broken.py").write_text("X = 1\n", encoding="utf-8")
    monkeypatch.setattr(mfuio.sinks, "__path__", [*mfuio.sinks.__path__, str(plugins)])
    monkeypatch.delitem(sys.modules, "mfuio.sinks.broken", raising=False)
    ctx = SinkContext(influx=InfluxSettings(enabled=False), kafka=KafkaSettings())
    with pytest.raises(ValueError, match="has no from_settings"):
        build_sinks(SinkSettings(sinks="broken"), ctx)
    sys.modules.pop("mfuio.sinks.broken", None)
