"""Old import path of the InfluxDB writer, kept for ``streams.app`` (being rewritten on
another branch) and external users: the writer lives in :mod:`mfuio.influx`, the shared
I/O package both stages use, so ``policies`` needs nothing from ``streams``."""

from mfuio.influx import (
    REPLACEMENT,
    RETRY_AFTER_MAX_S,
    TAG_FIELDS,
    InfluxConfigError,
    InfluxUnavailable,
    InfluxWriter,
    RejectedPoint,
    WriteResult,
    point_fields,
    to_line,
)

__all__ = [
    "REPLACEMENT",
    "RETRY_AFTER_MAX_S",
    "TAG_FIELDS",
    "InfluxConfigError",
    "InfluxUnavailable",
    "InfluxWriter",
    "RejectedPoint",
    "WriteResult",
    "point_fields",
    "to_line",
]
