"""deploy/ and docker-compose.yml stay consistent with the code: commands exist and parse,
every MFU_* setting named there is a real setting, images are pinned, the dashboard only
queries fields the sink writes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from agents.settings import AgentSettings
from mfu.config import InfluxSettings, KafkaSettings, WindowSettings
from mfu.events import CloudEvent, FlopSources, MfuWindow
from mfucli.main import build_parser
from mfuio.health import PipelineMetrics, PoliciesHealthSettings, StreamsHealthSettings
from mfuio.influx import point_fields
from mfuio.sinks import SinkSettings
from policies.annotations import policy_line
from policies.settings import PolicySettings
from streams.app import StreamSettings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = [KafkaSettings, InfluxSettings, WindowSettings, StreamSettings, PolicySettings,
            AgentSettings, StreamsHealthSettings, PoliciesHealthSettings, SinkSettings]


def known_env_names() -> set[str]:
    names = set()
    for cls in SETTINGS:
        prefix = cls.model_config.get("env_prefix", "")
        names |= {f"{prefix}{field}".upper() for field in cls.model_fields}
    return names


def parses(argv: list[str]) -> None:
    try:
        build_parser(argv).parse_args(argv)
    except SystemExit as exc:  # argparse error
        pytest.fail(f"`mfu {' '.join(argv)}` does not parse (exit {exc.code})")


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def k8s_docs() -> list[dict]:
    docs = []
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _containers(doc: dict) -> list[dict]:
    return doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])


def test_compose_images_are_pinned() -> None:
    for name, svc in compose()["services"].items():
        if "image" in svc:
            image = svc["image"]
            assert ":" in image and not image.endswith(":latest"), f"{name}: {image} not pinned"


def test_compose_commands_exist_and_parse() -> None:
    built = [s for s in compose()["services"].values() if "build" in s]
    assert {s["command"][0] for s in built} >= {"streams", "policies", "simulate"}
    for svc in built:
        parses(list(svc["command"]))


def test_k8s_container_args_parse() -> None:
    seen = set()
    for doc in k8s_docs():
        for c in _containers(doc):
            parses(list(c["args"]))
            seen.add(c["args"][0])
    assert seen == {"agent", "streams", "policies"}


def test_every_mfu_variable_is_a_real_setting() -> None:
    names: list[str] = []
    names += [k for s in compose()["services"].values()
              for k in (s.get("environment") or {}) if k.startswith("MFU_")]
    for doc in k8s_docs():
        if doc["kind"] == "ConfigMap":
            names += [k for k in doc["data"] if k.startswith("MFU_")]
        for c in _containers(doc):
            names += [e["name"] for e in c.get("env", []) if e["name"].startswith("MFU_")]
    assert names
    unknown = sorted(set(names) - known_env_names() - {"MFU_INFLUX_PASSWORD"})
    assert unknown == []


def test_dashboard_queries_fields_the_sink_writes() -> None:
    rec = MfuWindow(event_id="x", scope="fleet", key="default", window_start=1.7e9,
                    window_end=1.7e9 + 10, mfu=0.3, achieved_flops=1, peak_flops=3,
                    gpu_seconds=10, gpus=1, sm_util=0.5, allocation=0.9, mfu_allocated=0.4,
                    # DESIGN.md §8 fields the dashboard charts (coverage, estimate, MBU)
                    coverage=0.7, ofu=0.35, mfu_estimated=0.32, mbu=0.6, regime="memory",
                    flop_sources=FlopSources(reported=4, engine=1, idle=2, counters=2, none=1))
    written = set(point_fields(rec)) | {"tensor_active"}
    dash = json.loads((ROOT / "deploy/grafana/dashboards/mfu-overview.json").read_text())
    queries = [t["query"] for panel in dash["panels"] for t in panel["targets"]]
    queries += [a["target"]["query"] for a in dash["annotations"]["list"]]
    queried: dict[str, set[str]] = {"mfu": set(), "mfu_policy": set()}
    for query in queries:
        (measurement,) = re.findall(r'r\._measurement == "(\w+)"', query)
        queried[measurement] |= set(re.findall(r'r\._field == "(\w+)"', query))
    assert queried["mfu"] and queried["mfu"] <= written
    ev = CloudEvent(id="1", source="s", type="io.mfu.drift.v1", subject="workload/j",
                    time="2026-11-26T10:12:00Z", data={"summary": "x"})
    policy_fields = set(re.findall(r"(\w+)=", policy_line(ev).split(" ")[1]))
    assert queried["mfu_policy"] and queried["mfu_policy"] <= policy_fields


def test_dockerfile_copies_every_package() -> None:
    text = (ROOT / "Dockerfile").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    packages = re.search(r"^include = \[(.*?)\]", pyproject, re.S | re.M).group(1)
    names = set(re.findall(r'"(\w+)\*?"', packages))
    assert {"mfu", "agents", "streams", "policies", "mfuio"} <= names
    for pkg in names | {"sdk"}:  # sdk/: the mfu-sdk distribution the image installs first
        assert f"COPY {pkg} ./{pkg}" in text


def _exported_metric_names() -> set[str]:
    """Every sample name mfuio.health exports once each API has been called."""
    from prometheus_client import generate_latest

    m = PipelineMetrics("streams")
    m.event_in("t")
    m.event_out("t")
    m.dead_letter("r: x")
    m.late("t")
    m.rebalance()
    m.window_closed("node", 0, 1.0)
    m.rule_evaluated("workload")
    m.policy_event("io.mfu.drift.v1")
    m.influx_observer("ok", 0.01, 1)
    m.influx_rejected(1)
    m.add_lag_source(lambda: [("t", 0, 1.0)])
    text = generate_latest(m.registry).decode()
    return set(re.findall(r"^(mfu_pipeline_\w+)", text, re.M))


def test_pipeline_health_dashboard_queries_exported_metrics() -> None:
    dash = json.loads((ROOT / "deploy/grafana/dashboards/pipeline-health.json").read_text())
    datasources = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yaml").read_text())
    (prom,) = datasources["datasources"]
    exprs = []
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == prom["uid"]
        exprs += [t["expr"] for t in panel["targets"]]
    queried = {name for e in exprs for name in re.findall(r"mfu_pipeline_\w+", e)}
    exported = _exported_metric_names()
    assert len(queried) >= 12 and queried <= exported, sorted(queried - exported)


def test_health_ports_agree_across_compose_prometheus_and_k8s() -> None:
    env = compose()["x-mfu-env"]
    ports = {"streams": int(env["MFU_STREAMS_METRICS_PORT"]),
             "policies": int(env["MFU_POLICIES_METRICS_PORT"])}
    assert "prometheus" in compose()["services"]
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    found = {job["job_name"].removeprefix("mfu-"): job["dns_sd_configs"][0]["port"]
             for job in scrape["scrape_configs"]}
    assert found == ports
    for doc in k8s_docs():
        if doc["kind"] != "Deployment":
            continue
        stage = doc["metadata"]["name"].removeprefix("mfu-")
        annotations = doc["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        (c,) = _containers(doc)
        env_port = {e["name"]: e["value"] for e in c["env"]}[
            f"MFU_{stage.upper()}_METRICS_PORT"]
        assert int(annotations["prometheus.io/port"]) == int(env_port) == ports[stage]
        assert {p["containerPort"] for p in c["ports"]} == {ports[stage]}
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
