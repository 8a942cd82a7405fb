"""Settings of the policies stage: one pydantic-settings model, env prefix ``MFU_POLICIES_``.

Kafka connection settings are :class:`mfu.config.KafkaSettings` (``MFU_KAFKA_*``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from mfu import topics
from policies.engine import DEFAULT_SOURCE
from policies.rules import DEFAULT_RULES_PATH


class PolicySettings(BaseSettings):
    """``mfu policies`` configuration (every field has a working default)."""

    model_config = SettingsConfigDict(env_prefix="MFU_POLICIES_", extra="ignore", frozen=True)

    rules_file: Path = Field(DEFAULT_RULES_PATH, description="YAML rules (reloaded on change)")
    app_id: str = Field("mfu-policies", description="Faust app id = consumer group")
    workload_topic: str = topics.WORKLOAD
    node_topic: str = topics.NODE
    fleet_topic: str = topics.FLEET
    policy_topic: str = topics.POLICY
    partitions: int | None = Field(
        None,
        ge=1,
        description="partition count of the input topics (tables are co-partitioned); "
        "default: MFU_KAFKA_PARTITIONS, what the streams stage creates its outputs with",
    )
    source: str = Field(DEFAULT_SOURCE, description="CloudEvents source prefix")
    reload_interval_s: float = Field(
        5.0, gt=0, description="how often the rules file's mtime is checked"
    )
    data_dir: Path | None = Field(None, description="Faust data dir; None = Faust default")
    influx_annotations: bool = Field(
        True, description="also write each event to InfluxDB measurement mfu_policy "
        "(best effort; uses MFU_INFLUX_*; off when MFU_INFLUX_ENABLED=false)"
    )
    loglevel: Literal["debug", "info", "warning", "error"] = "info"

    def input_topics(self) -> dict[str, str]:
        """scope -> input topic."""
        return {"workload": self.workload_topic, "node": self.node_topic, "fleet": self.fleet_topic}
