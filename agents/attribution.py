"""Which workload a GPU process belongs to, from ``/proc/<pid>/environ`` and ``cgroup``.

Resolution order for one process (first hit wins):

1. the workload variable in its environment (default ``MFU_WORKLOAD``), verbatim;
2. ``SLURM_JOB_ID`` in its environment -> ``slurm-<job id>``;
3. its cgroup path: a Kubernetes pod (``kubepods...pod<uid>``) -> ``k8s-pod-<uid>``, or a
   Slurm job cgroup (``/job_<id>/``) -> ``slurm-<id>``;
4. otherwise :data:`UNATTRIBUTED`.

Each attributed workload also gets an owner, its **tenant** (first hit wins):

1. Kubernetes: the namespace of the process's pod, read from the service-account mount
   inside its container (``/proc/<pid>/root/var/run/secrets/kubernetes.io/
   serviceaccount/namespace``; present unless the pod sets
   ``automountServiceAccountToken: false``), for processes in a ``kubepods`` cgroup;
2. Slurm: ``SLURM_JOB_ACCOUNT`` in its environment;
3. configuration: the first ``{glob: tenant}`` pattern (``fnmatch``, in the order given)
   matching the workload name, e.g. ``{"llm-*": "team-a"}``;
4. otherwise none: the workload is absent from :meth:`ProcAttributor.tenants`.
   :data:`UNATTRIBUTED` processes never get one (they are anyone's).

The FLOP reporter SDK resolves its default workload name with the same functions
(:func:`workload_from_environ`, :func:`workload_from_cgroup`) so telemetry and FLOP
reports name a job the same way; they live in :mod:`mfu_sdk.attribution` (the SDK
distribution, stdlib only) and are re-exported here.

The agent must see host pids (on Kubernetes: ``hostPID: true``) because NVML reports
host pids. Results are cached per pid while the pid stays on a GPU (:meth:`prune`);
a pid that leaves and is reused within one interval would keep the old name.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

from mfu_sdk.attribution import (
    DEFAULT_VARIABLE,
    MAX_NAME,
    UNATTRIBUTED,
    workload_from_cgroup,
    workload_from_environ,
)

# Workload naming (steps 1-3) is shared with the FLOP SDK, which must stay stdlib-only
# and installable alone: the one definition lives in mfu_sdk.attribution.
# Where the kubelet mounts a pod's service-account files inside its containers.
K8S_NAMESPACE_FILE = "var/run/secrets/kubernetes.io/serviceaccount/namespace"
SLURM_ACCOUNT = "SLURM_JOB_ACCOUNT"


def tenant_from_config(workload: str, patterns: Mapping[str, str]) -> str | None:
    """Tenant of ``workload`` from ``{glob: tenant}`` (first matching glob, in order)."""
    for pattern, tenant in patterns.items():
        if fnmatch.fnmatchcase(workload, pattern):
            return tenant[:MAX_NAME] or None
    return None


class Owner(NamedTuple):
    """What one process resolves to: its workload and, where known, its tenant."""

    workload: str
    tenant: str | None


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
    variable naming the workload. ``tenants``: ``{workload glob: tenant}``, the configured
    owners (step 3 of the tenant order). Counters in ``stats``: ``("attribution",
    source)`` per resolution, ``("attribution_errors", reason)`` per unreadable process,
    ``("tenant", source)`` per tenant resolution (``namespace``, ``slurm_account``,
    ``config``, ``unknown``) and ``("tenant_conflicts",)`` when processes of one workload
    name different tenants (the lowest pid's wins).
    """

    def __init__(self, proc_root: str | Path = "/proc", *, variable: str = DEFAULT_VARIABLE,
                 unattributed: str = UNATTRIBUTED,
                 tenants: Mapping[str, str] | None = None) -> None:
        self.proc_root = Path(proc_root)
        self.variable = variable
        self.unattributed = unattributed
        self.tenant_patterns = dict(tenants or {})
        self._names = (variable.encode(), b"SLURM_JOB_ID", SLURM_ACCOUNT.encode())
        self._cache: dict[int, Owner] = {}
        self.stats: Counter[tuple[str, ...]] = Counter()

    def owner(self, pid: int) -> Owner:
        """Workload and tenant of ``pid`` (cached while the pid is live)."""
        owner = self._cache.get(pid)
        if owner is None:
            owner = self._cache[pid] = self._resolve(pid)
        return owner

    def workload(self, pid: int) -> str:
        """Workload of ``pid`` (cached while the pid is live)."""
        return self.owner(pid).workload

    def workloads(self, pids: Iterable[int]) -> list[str]:
        """Sorted distinct workloads of ``pids``."""
        return sorted({self.workload(pid) for pid in pids})

    def tenants(self, pids: Iterable[int]) -> dict[str, str]:
        """``{workload: tenant}`` of the workloads of ``pids`` whose tenant is known."""
        out: dict[str, str] = {}
        for pid in sorted(set(pids)):
            workload, tenant = self.owner(pid)
            if tenant is None:
                continue
            seen = out.setdefault(workload, tenant)
            if seen != tenant:
                self.stats[("tenant_conflicts",)] += 1
        return out

    def prune(self, live_pids: Iterable[int]) -> None:
        """Forget pids no longer on any GPU (call once per interval)."""
        live = set(live_pids)
        for pid in [p for p in self._cache if p not in live]:
            del self._cache[pid]

    def _resolve(self, pid: int) -> Owner:
        base = self.proc_root / str(pid)
        env: dict[str, str] = {}
        name = None
        try:
            env = _environ_get((base / "environ").read_bytes(), self._names)
            name = workload_from_environ(env, self.variable)
        except FileNotFoundError:
            self.stats[("attribution_errors", "no_process")] += 1
            return Owner(self.unattributed, None)
        except PermissionError:
            self.stats[("attribution_errors", "environ_permission")] += 1
        except OSError:
            self.stats[("attribution_errors", "environ_unreadable")] += 1
        try:
            cgroup = (base / "cgroup").read_text()
        except OSError:
            cgroup = ""
            if name is None:
                self.stats[("attribution_errors", "cgroup_unreadable")] += 1
        if name:
            self.stats[("attribution", "environ")] += 1
        else:
            name = workload_from_cgroup(cgroup)
            if name:
                self.stats[("attribution", "cgroup")] += 1
            else:
                self.stats[("attribution", "unattributed")] += 1
                return Owner(self.unattributed, None)
        return Owner(name, self._tenant(base, name, env, cgroup))

    def _tenant(self, base: Path, workload: str, env: Mapping[str, str], cgroup: str
                ) -> str | None:
        """Tenant of one attributed process (order in the module docstring)."""
        if "kubepods" in cgroup:
            try:
                namespace = (base / "root" / K8S_NAMESPACE_FILE).read_text().strip()
            except OSError:  # no service-account mount, or no access to the container root
                namespace = ""
            if namespace:
                self.stats[("tenant", "namespace")] += 1
                return namespace[:MAX_NAME]
        account = env.get(SLURM_ACCOUNT)
        if account:
            self.stats[("tenant", "slurm_account")] += 1
            return account[:MAX_NAME]
        tenant = tenant_from_config(workload, self.tenant_patterns)
        self.stats[("tenant", "config" if tenant else "unknown")] += 1
        return tenant
