"""Settings shared by every component: one pydantic-settings model each, prefix ``MFU_``.

Secrets are ``SecretStr`` (never printed) and may come from a file (``*_FILE``), the
usual way Kubernetes Secrets and Docker secrets are mounted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _read_secret_file(path: Path | None) -> SecretStr | None:
    if path is None:
        return None
    try:
        return SecretStr(path.read_text().strip())
    except OSError as exc:
        raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from None


class KafkaSettings(BaseSettings):
    """Kafka connection, passed through to every client (confluent-kafka and Faust)."""

    model_config = SettingsConfigDict(env_prefix="MFU_KAFKA_", extra="ignore", frozen=True)

    bootstrap: str = Field("localhost:9092", description="host:port[,host:port...]")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = None
    ssl_ca_location: Path | None = None
    ssl_certificate_location: Path | None = None
    ssl_key_location: Path | None = None
    ssl_key_password: SecretStr | None = None
    client_id: str = "mfu"
    replication_factor: int = Field(1, ge=1, description="for topics the project creates")
    partitions: int = Field(8, ge=1, description="partition count of the input topics")

    @model_validator(mode="after")
    def _password_from_file(self) -> KafkaSettings:
        if self.sasl_password is None and self.sasl_password_file is not None:
            object.__setattr__(self, "sasl_password", _read_secret_file(self.sasl_password_file))
        return self

    def confluent_config(self) -> dict[str, Any]:
        """librdkafka properties for confluent-kafka clients."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": self.security_protocol,
            "client.id": self.client_id,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
            conf["sasl.username"] = self.sasl_username or ""
            if self.sasl_password is not None:
                conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_ca_location:
            conf["ssl.ca.location"] = str(self.ssl_ca_location)
        if self.ssl_certificate_location:
            conf["ssl.certificate.location"] = str(self.ssl_certificate_location)
        if self.ssl_key_location:
            conf["ssl.key.location"] = str(self.ssl_key_location)
        if self.ssl_key_password is not None:
            conf["ssl.key.password"] = self.ssl_key_password.get_secret_value()
        return conf

    def faust_url(self) -> str:
        """Broker URL list for faust.App(broker=...)."""
        return ";".join(f"kafka://{hp.strip()}" for hp in self.bootstrap.split(",") if hp.strip())


class InfluxSettings(BaseSettings):
    """InfluxDB sink. ``api='v2'`` works with 2.x/3.x/Cloud and 1.8+ (token ``user:pass``,
    bucket ``db/rp``, org ``-``); ``api='v1'`` uses ``/write`` for InfluxDB before 1.8."""

    model_config = SettingsConfigDict(env_prefix="MFU_INFLUX_", extra="ignore", frozen=True)

    url: str = "http://localhost:8086"
    api: Literal["v2", "v1"] = "v2"
    token: SecretStr | None = None
    token_file: Path | None = None
    org: str = "-"
    bucket: str = "mfu/autogen"
    measurement: str = "mfu"
    timeout_s: float = Field(10.0, gt=0)
    batch_size: int = Field(5000, ge=1)
    max_retry_delay_s: float = Field(30.0, gt=0)
    enabled: bool = True

    @model_validator(mode="after")
    def _token_from_file(self) -> InfluxSettings:
        if self.token is None and self.token_file is not None:
            object.__setattr__(self, "token", _read_secret_file(self.token_file))
        return self

    def v1_database(self) -> tuple[str, str | None]:
        """(database, retention policy) from ``bucket`` written as ``db/rp``."""
        db, _, rp = self.bucket.partition("/")
        return db, (rp or None)


class WindowSettings(BaseSettings):
    """Event-time windowing (seconds)."""

    model_config = SettingsConfigDict(env_prefix="MFU_WINDOW_", extra="ignore", frozen=True)

    size_s: float = Field(10.0, gt=0, description="window length")
    hop_s: float | None = Field(None, gt=0, description="hop for hopping windows; None = tumbling")
    grace_s: float = Field(5.0, ge=0, description="how long after window end events still count")
    idle_timeout_s: float = Field(
        15.0, gt=0, description="wall-clock seconds without input after which a partition's "
        "open windows are closed and it stops holding back the fleet roll-up"
    )
    max_future_skew_s: float = Field(
        300.0, gt=0, description="events stamped further ahead of the worker's clock are "
        "dead-lettered as clock skew"
    )

    @model_validator(mode="after")
    def _hop_divides(self) -> WindowSettings:
        if self.hop_s is not None:
            if self.hop_s > self.size_s:
                raise ValueError("hop_s must be <= size_s")
            ratio = self.size_s / self.hop_s
            if abs(ratio - round(ratio)) > 1e-9:
                raise ValueError("size_s must be a whole multiple of hop_s")
        return self


class LedgerSettings(BaseSettings):
    """`mfu ledger`: prices and the reference MFU of the "idle or wasted" cost.

    ``prices``: USD per GPU-hour by GPU model (the NVML device name, e.g. ``"NVIDIA H100
    80GB HBM3"``) or glob, ``"*"`` for every other model, as JSON in ``MFU_LEDGER_PRICES``.
    ``prices_file``: a YAML or TOML file (by suffix: ``.toml``, else YAML) holding the
    same mapping, or a ``usd_per_gpu_hour`` mapping with an optional ``default`` (the
    policies' ``prices`` block, so a rules file prices the ledger like the cost rule),
    at the top level or under ``prices``. Entries in ``prices`` override the file's.
    A model no entry matches is unpriced: never costed at zero.
    """

    model_config = SettingsConfigDict(env_prefix="MFU_LEDGER_", extra="ignore", frozen=True)

    prices: dict[str, float] = Field(default_factory=dict)
    prices_file: Path | None = None
    reference_mfu: float = Field(0.4, gt=0, le=1, description="MFU counted as fully useful")

    @model_validator(mode="after")
    def _merge_file(self) -> LedgerSettings:
        merged = dict(_read_prices_file(self.prices_file)) if self.prices_file else {}
        merged.update(self.prices)
        bad = {k: v for k, v in merged.items() if not v > 0}
        if bad:
            raise ValueError(f"prices must be positive USD per GPU-hour, got {bad}")
        object.__setattr__(self, "prices", merged)
        return self


def _read_prices_file(path: Path) -> dict[str, float]:
    """USD per GPU-hour by model from a YAML/TOML prices file (formats: LedgerSettings)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read prices file {path}: {exc.strerror}") from None
    try:
        if path.suffix == ".toml":
            import tomllib

            data: Any = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:
        raise ValueError(f"prices file {path} does not parse: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("prices"), dict):
        data = data["prices"]
    if isinstance(data, dict) and "usd_per_gpu_hour" in data:
        table = dict(data.get("usd_per_gpu_hour") or {})
        if data.get("default") is not None:
            table.setdefault("*", data["default"])
        data = table
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
        for k, v in data.items()
    ):
        raise ValueError(
            f"prices file {path} must map GPU model (or glob, '*' for the rest) to USD per "
            "GPU-hour, e.g. {\"NVIDIA H100 80GB HBM3\": 2.49, \"*\": 2.0}"
        )
    return {k: float(v) for k, v in data.items()}
