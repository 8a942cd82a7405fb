"""Agent configuration: one pydantic-settings model, ``MFU_AGENT_*`` environment variables.

Precedence, highest first: values passed in code (the CLI's flags), environment
variables ``MFU_AGENT_<FIELD>`` (e.g. ``MFU_AGENT_INTERVAL_S=0.5``), the config file
(YAML or TOML, chosen by extension; path from ``config_file=`` or
``MFU_AGENT_CONFIG_FILE``), then the defaults below. Kafka connection settings are the
shared :class:`mfu.config.KafkaSettings` (``MFU_KAFKA_*``); a ``kafka:`` table in the
config file fills them too.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from agents.engines import EngineTarget
from mfu.config import KafkaSettings

ENV_PREFIX = "MFU_AGENT_"


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Values from the YAML/TOML file named by ``config_file`` (init) or the env."""

    def __init__(self, settings_cls: type[BaseSettings], path: str | None) -> None:
        super().__init__(settings_cls)
        self._values: dict[str, Any] = {}
        if not path:
            return
        file = Path(path)
        if not file.is_file():
            raise ValueError(f"agent config file {file} does not exist")
        suffix = file.suffix.lower()
        if suffix in (".yaml", ".yml"):
            source: PydanticBaseSettingsSource = YamlConfigSettingsSource(settings_cls, file)
        elif suffix == ".toml":
            source = TomlConfigSettingsSource(settings_cls, file)
        else:
            raise ValueError(f"agent config file {file}: expected .yaml, .yml or .toml")
        self._values = source()

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


class AgentSettings(BaseSettings):
    """Node agent settings (units in the names: seconds ``_s``, bytes ``_bytes``)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True,
                                      env_nested_delimiter="__")

    config_file: Path | None = Field(None, description="YAML or TOML file with these fields")
    node: str = Field(default_factory=socket.gethostname, min_length=1, max_length=200,
                      description="node name stamped on every event (default: host name)")
    interval_s: float = Field(1.0, gt=0, le=3600, description="sampling interval")
    envelope_s: float | None = Field(
        None, gt=0, le=3600, description="seconds of samples/reports per Kafka message "
        "(a whole number of intervals, <= the window grace); unset: the largest that "
        "divides the window and the grace (MFU_WINDOW_*), see agents/envelope.py")
    socket: str = Field("/run/mfu/agent.sock", description="FLOP report intake: Unix "
                        "datagram socket path or udp://127.0.0.1:PORT")
    workload_env: str = Field("MFU_WORKLOAD", min_length=1,
                              description="process environment variable naming the workload")
    proc_root: Path = Field(Path("/proc"), description="proc mount (host pids needed)")
    tenants: dict[str, str] = Field(
        default_factory=dict,
        description="configured workload owners, {workload glob: tenant} (fnmatch, first "
        "match in the order given), e.g. MFU_AGENT_TENANTS='{\"llm-*\": \"team-a\"}'; "
        "used after the Kubernetes namespace and the Slurm account (agents.attribution)")
    spool_dir: Path = Field(Path("/var/lib/mfu/spool"), description="on-disk buffer")
    spool_max_bytes: int = Field(256 << 20, gt=0, description="spool size bound")
    spool_segment_bytes: int = Field(4 << 20, gt=0, description="spool segment size")
    metrics_host: str = Field("127.0.0.1", description="bind address of /metrics, /healthz")
    metrics_port: int = Field(9108, ge=0, le=65535, description="0 picks a free port")
    message_timeout_s: float = Field(30.0, gt=0, description="Kafka delivery timeout; "
                                     "after it a message is spooled")
    retry_backoff_s: float = Field(5.0, gt=0, description="spool drain retry while down")
    shutdown_timeout_s: float = Field(10.0, ge=0, description="flush time on SIGTERM")
    compression: str = Field("lz4", description="Kafka compression.type")
    rediscover_s: float = Field(60.0, gt=0, description="GPU re-discovery period")
    dcgm: Literal["auto", "off"] = Field(
        "auto", description="pipe counters of GPUs without NVML GPM (before Hopper) from "
        "DCGM profiling fields: auto = where DCGM's Python bindings and nv-hostengine are "
        "present, off = never (the counters are then null)")
    dcgm_host: str = Field("localhost", description="nv-hostengine address (host[:port])")
    dcgm_bindings: str = Field("/usr/local/dcgm/bindings/python3",
                               description="directory of DCGM's Python bindings")
    max_datagram_bytes: int = Field(65536, ge=1024, le=212992)
    max_reports_per_interval: int = Field(50_000, ge=1, description="intake buffer bound")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    # Inference engines (vLLM, SGLang) whose FLOP/byte counters become flop_report/1
    # with source "engine" (see agents/engines.py and docs/inference.md).
    engines: list[EngineTarget] = Field(default_factory=list, description="configured "
                                        "engines: url, workload [, precision, gpu_uuids, phase]")
    engine_discovery: bool = Field(True, description="find engines above GPU processes "
                                   "(vllm serve / sglang.launch_server command lines)")
    engine_timeout_s: float = Field(0.5, gt=0, le=10, description="per engine scrape timeout")

    @field_validator("socket")
    @classmethod
    def _socket_address(cls, value: str) -> str:
        if value.startswith("udp://"):
            host, _, port = value[6:].rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected udp://HOST:PORT, got {value!r}")
        elif not value.startswith("/"):
            raise ValueError(f"expected an absolute socket path or udp://HOST:PORT, got {value!r}")
        return value

    @field_validator("tenants")
    @classmethod
    def _tenant_names(cls, value: dict[str, str]) -> dict[str, str]:
        for pattern, tenant in value.items():
            if not pattern or not tenant or len(tenant) > 256:
                raise ValueError(f"tenants: expected {{workload glob: tenant name of 1-256 "
                                 f"characters}}, got {pattern!r}: {tenant!r}")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        init_kwargs = getattr(init_settings, "init_kwargs", {})
        path = init_kwargs.get("config_file") or os.environ.get(ENV_PREFIX + "CONFIG_FILE")
        file_source = _ConfigFileSource(settings_cls, str(path) if path else None)
        return init_settings, env_settings, file_source
