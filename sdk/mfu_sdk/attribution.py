"""Which workload a process belongs to, from its environment and cgroup (stdlib only).

The FLOP SDK names its default workload with these functions and the node agent
(:mod:`agents.attribution`) attributes GPU processes with the same ones, so telemetry and
FLOP reports name a job the same way. Resolution order (first hit wins):

1. the workload variable (default ``MFU_WORKLOAD``), verbatim;
2. ``SLURM_JOB_ID`` -> ``slurm-<job id>``;
3. the cgroup path: a Kubernetes pod (``kubepods...pod<uid>``) -> ``k8s-pod-<uid>``, or a
   Slurm job cgroup (``/job_<id>/``) -> ``slurm-<id>``;
4. otherwise :data:`UNATTRIBUTED`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

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
