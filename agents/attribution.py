"""Which workload a GPU process belongs to, from ``/proc/<pid>/environ`` and ``cgroup``.

Resolution order for one process (first hit wins):

1. the workload variable in its environment (default ``MFU_WORKLOAD``), verbatim;
2. ``SLURM_JOB_ID`` in its environment -> ``slurm-<job id>``;
3. its cgroup path: a Kubernetes pod (``kubepods...pod<uid>``) -> ``k8s-pod-<uid>``, or a
   Slurm job cgroup (``/job_<id>/``) -> ``slurm-<id>``;
4. otherwise :data:`UNATTRIBUTED`.

The FLOP reporter SDK resolves its default workload name with the same functions
(:func:`workload_from_environ`, :func:`workload_from_cgroup`) so telemetry and FLOP
reports name a job the same way. Stdlib only: the SDK imports this module.

The agent must see host pids (on Kubernetes: ``hostPID: true``) because NVML reports
host pids. Results are cached per pid while the pid stays on a GPU (:meth:`prune`);
a pid that leaves and is reused within one interval would keep the old name.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

DEFAULT_VARIABLE = "MFU_WORKLOAD"
UNATTRIBUTED = "unattributed"
MAX_NAME = 256

# Pod UID as the kubelet writes it into cgroup paths: dashes (cgroupfs driver) or
# underscores (systemd driver: kubepods-burstable-pod<uid with _>.slice).
_K8S_POD = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})"
)
_SLURM_JOB = re.compile(r"/job_(\d+)(?:/|$)")


def workload_from_environ(env: Mapping[str, str], variable: str = DEFAULT_VARIABLE) -> str | None:
    """Workload name from a process environment (steps 1-2 above), or None."""
    name = env.get(variable)
    if name:
        return name[:MAX_NAME]
    job = env.get("SLURM_JOB_ID")
    if job:
        return f"slurm-{job}"[:MAX_NAME]
    return None


def workload_from_cgroup(text: str) -> str | None:
    """Workload name from the text of ``/proc/<pid>/cgroup`` (step 3), or None."""
    if "kubepods" in text:
        m = _K8S_POD.search(text)
        if m:
            return "k8s-pod-" + m.group(1).replace("_", "-")
    m = _SLURM_JOB.search(text)
    if m:
        return f"slurm-{m.group(1)}"
    return None


def _environ_get(raw: bytes, names: tuple[bytes, ...]) -> dict[str, str]:
    """Pick ``names`` out of a NUL-separated environ block without splitting all of it."""
    out = {}
    block = b"\0" + raw
    for name in names:
        start = block.find(b"\0" + name + b"=")
        if start < 0:
            continue
        start += len(name) + 2
        end = block.find(b"\0", start)
        value = block[start:] if end < 0 else block[start:end]
        out[name.decode()] = value.decode("utf-8", "replace")
    return out


class ProcAttributor:
    """Maps GPU process ids to workload names by reading a ``/proc`` tree.

    ``proc_root``: the proc mount (a fake tree in tests). ``variable``: the environment
    variable naming the workload. Counters in ``stats``: ``("attribution", source)`` per
    resolution and ``("attribution_errors", reason)`` per unreadable process.
    """

    def __init__(self, proc_root: str | Path = "/proc", *, variable: str = DEFAULT_VARIABLE,
                 unattributed: str = UNATTRIBUTED) -> None:
        self.proc_root = Path(proc_root)
        self.variable = variable
        self.unattributed = unattributed
        self._names = (variable.encode(), b"SLURM_JOB_ID")
        self._cache: dict[int, str] = {}
        self.stats: Counter[tuple[str, ...]] = Counter()

    def workload(self, pid: int) -> str:
        """Workload of ``pid`` (cached while the pid is live)."""
        name = self._cache.get(pid)
        if name is None:
            name = self._cache[pid] = self._resolve(pid)
        return name

    def workloads(self, pids: Iterable[int]) -> list[str]:
        """Sorted distinct workloads of ``pids``."""
        return sorted({self.workload(pid) for pid in pids})

    def prune(self, live_pids: Iterable[int]) -> None:
        """Forget pids no longer on any GPU (call once per interval)."""
        live = set(live_pids)
        for pid in [p for p in self._cache if p not in live]:
            del self._cache[pid]

    def _resolve(self, pid: int) -> str:
        base = self.proc_root / str(pid)
        try:
            env = _environ_get((base / "environ").read_bytes(), self._names)
            name = workload_from_environ(env, self.variable)
            if name:
                self.stats[("attribution", "environ")] += 1
                return name
        except FileNotFoundError:
            self.stats[("attribution_errors", "no_process")] += 1
            return self.unattributed
        except PermissionError:
            self.stats[("attribution_errors", "environ_permission")] += 1
        except OSError:
            self.stats[("attribution_errors", "environ_unreadable")] += 1
        try:
            name = workload_from_cgroup((base / "cgroup").read_text())
            if name:
                self.stats[("attribution", "cgroup")] += 1
                return name
        except OSError:
            self.stats[("attribution_errors", "cgroup_unreadable")] += 1
        self.stats[("attribution", "unattributed")] += 1
        return self.unattributed
