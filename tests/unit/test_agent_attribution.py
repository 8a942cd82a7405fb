"""Workload attribution from a fake /proc tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.attribution import (
    UNATTRIBUTED,
    ProcAttributor,
    workload_from_cgroup,
    workload_from_environ,
)

K8S_SYSTEMD = (
    "0::/kubepods.slice/kubepods-burstable.slice/"
    "kubepods-burstable-pod4f9d8c1e_2b3a_4c5d_8e9f_0a1b2c3d4e5f.slice/"
    "cri-containerd-7d2f0c0b9a8e.scope\n"
)
K8S_CGROUPFS = (
    "12:devices:/kubepods/besteffort/pod0a1b2c3d-1111-4222-8333-444455556666/"
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n"
)
SLURM_V2 = "0::/system.slice/slurmstepd.scope/job_4242/step_0/user/task_0\n"


def make_proc(root: Path, pid: int, env: dict[str, str] | None, cgroup: str = "0::/\n") -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    if env is None:
        (d / "environ").mkdir()  # unreadable as a file
    else:
        (d / "environ").write_bytes(b"".join(f"{k}={v}\0".encode() for k, v in env.items()))
    (d / "cgroup").write_text(cgroup)


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    make_proc(root, 10, {"PATH": "/bin", "MFU_WORKLOAD": "job-42", "SLURM_JOB_ID": "9"})
    make_proc(root, 11, {"SLURM_JOB_ID": "123", "HOME": "/root"})
    make_proc(root, 12, {"PATH": "/bin"}, K8S_SYSTEMD)
    make_proc(root, 13, {}, K8S_CGROUPFS)
    make_proc(root, 14, None, SLURM_V2)  # environ unreadable: cgroup still answers
    make_proc(root, 15, {"PATH": "/bin"})
    make_proc(root, 16, {"TEAM_JOB": "custom-7", "MFU_WORKLOAD": "ignored"})
    return root


def test_resolution_order(proc: Path) -> None:
    a = ProcAttributor(proc)
    assert a.workload(10) == "job-42"  # MFU_WORKLOAD beats SLURM_JOB_ID
    assert a.workload(11) == "slurm-123"
    assert a.workload(12) == "k8s-pod-4f9d8c1e-2b3a-4c5d-8e9f-0a1b2c3d4e5f"
    assert a.workload(13) == "k8s-pod-0a1b2c3d-1111-4222-8333-444455556666"
    assert a.workload(14) == "slurm-4242"
    assert a.workload(15) == UNATTRIBUTED
    assert a.workload(999) == UNATTRIBUTED  # exited between NVML and /proc
    assert a.stats[("attribution", "environ")] == 2
    assert a.stats[("attribution", "cgroup")] == 3
    assert a.stats[("attribution_errors", "environ_unreadable")] == 1
    assert a.stats[("attribution_errors", "no_process")] == 1


def test_configurable_variable(proc: Path) -> None:
    a = ProcAttributor(proc, variable="TEAM_JOB")
    assert a.workload(16) == "custom-7"
    assert a.workload(10) == "slurm-9"  # its MFU_WORKLOAD is not the configured name


def test_workloads_sorted_distinct_and_cached_until_pruned(proc: Path) -> None:
    a = ProcAttributor(proc)
    assert a.workloads([11, 10, 10, 15]) == ["job-42", "slurm-123", UNATTRIBUTED]
    reads = sum(a.stats.values())
    (proc / "10" / "environ").write_bytes(b"MFU_WORKLOAD=renamed\0")
    assert a.workloads([10]) == ["job-42"]  # cached: no new read
    assert sum(a.stats.values()) == reads
    a.prune([11])  # pid 10 left the GPU
    assert a.workload(10) == "renamed"


def test_variable_at_start_of_block_and_value_with_equals() -> None:
    assert workload_from_environ({"MFU_WORKLOAD": "a=b"}) == "a=b"
    assert workload_from_environ({}) is None
    assert workload_from_environ({"MFU_WORKLOAD": ""}) is None


@pytest.mark.parametrize(("text", "expected"), [
    (K8S_SYSTEMD, "k8s-pod-4f9d8c1e-2b3a-4c5d-8e9f-0a1b2c3d4e5f"),
    (K8S_CGROUPFS, "k8s-pod-0a1b2c3d-1111-4222-8333-444455556666"),
    (SLURM_V2, "slurm-4242"),
    ("4:cpuset:/slurm/uid_1000/job_77/step_batch\n", "slurm-77"),
    ("0::/user.slice/user-1000.slice/session-3.scope\n", None),
])
def test_workload_from_cgroup(text: str, expected: str | None) -> None:
    assert workload_from_cgroup(text) == expected
