"""Where the locally provisioned services live: a cache folder outside the clone."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root: ``$MFU_CACHE_DIR`` or ``~/.cache/mfu-pipeline``."""
    configured = os.environ.get("MFU_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "mfu-pipeline"


def run_dir() -> Path:
    """Runtime state of `mfu dev up` (state file, data, logs): ``cache_dir()/run``."""
    return cache_dir() / "run"
