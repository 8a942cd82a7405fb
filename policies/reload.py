"""The rules in force, and their reload without restart (no Kafka, no Faust).

:class:`RulesSource` holds the current :class:`~policies.engine.Engine`. ``maybe_reload``
re-reads the rules file when its modification stamp changed (the adapter calls it on a
timer, and with ``force=True`` on SIGHUP). A file that does not validate is refused: each
problem is logged as one line with file, line and field, and the rules already running
stay in force. The same bad file is reported once, not at every poll.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from policies.engine import DEFAULT_SOURCE, Engine
from policies.rules import RulesError, load_rules

log = logging.getLogger("mfu.policies")

Stamp = tuple[int, int, int] | None


def _stamp(path: Path) -> Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class RulesSource:
    """Current rules engine for ``path``; raises :class:`RulesError` if the *first* load
    fails (a worker must not start without valid rules)."""

    def __init__(self, path: str | Path, source: str = DEFAULT_SOURCE):
        self.path = Path(path)
        self.source = source
        self._stamp = _stamp(self.path)
        self.engine = Engine(load_rules(self.path), source)
        self.generation = 1
        log.info("event=rules_loaded path=%s rules=%d", self.path, len(self.engine.config.rules))

    def maybe_reload(self, force: bool = False) -> bool:
        """Reload if the file changed (or ``force``). True if new rules are now in force."""
        stamp = _stamp(self.path)
        if not force and stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            config = load_rules(self.path)
        except RulesError as exc:
            for line in exc.describe().splitlines():
                log.error(
                    "event=rules_refused kept=generation-%d problem=%r", self.generation, line
                )
            return False
        self.engine = Engine(config, self.source)
        self.generation += 1
        log.info(
            "event=rules_reloaded path=%s rules=%d generation=%d",
            self.path,
            len(config.rules),
            self.generation,
        )
        return True
