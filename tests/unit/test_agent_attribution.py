"""Workload attribution from a fake /proc tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.attribution import (
    K8S_NAMESPACE_FILE,
    UNATTRIBUTED,
    Owner,
    ProcAttributor,
    tenant_from_config,
    workload_from_cgroup,
    workload_from_environ,
)
from agents.settings import AgentSettings

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


def give_namespace(root: Path, pid: int, namespace: str) -> None:
    """The service-account mount as the kubelet writes it inside the pod's container."""
    f = root / str(pid) / "root" / K8S_NAMESPACE_FILE
    f.parent.mkdir(parents=True)
    f.write_text(namespace)


@pytest.fixture
def owners(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    # k8s pod in namespace "vision": the namespace beats its Slurm account and config
    make_proc(root, 20, {"SLURM_JOB_ACCOUNT": "ignored", "MFU_WORKLOAD": "llm-a"}, K8S_SYSTEMD)
    give_namespace(root, 20, "vision\n")
    # k8s pod without a service-account mount: falls through to configuration
    make_proc(root, 21, {}, K8S_CGROUPFS)
    # Slurm job charged to account "physics": the account beats configuration
    make_proc(root, 22, {"SLURM_JOB_ID": "501", "SLURM_JOB_ACCOUNT": "physics"}, SLURM_V2)
    # plain host processes named by MFU_WORKLOAD: configuration or nothing
    make_proc(root, 23, {"MFU_WORKLOAD": "llm-train-7"})
    make_proc(root, 24, {"MFU_WORKLOAD": "notebook"})
    make_proc(root, 25, {"PATH": "/bin"})  # unattributed
    # a namespace file outside a kubepods cgroup is not Kubernetes' word
    make_proc(root, 26, {"MFU_WORKLOAD": "docker-job"})
    give_namespace(root, 26, "not-k8s")
    return root


CONFIG = {"llm-*": "team-a", "k8s-pod-*": "platform", "*": "catch-all-never-for-unattributed"}


def test_tenant_order_namespace_slurm_account_configuration(owners: Path) -> None:
    a = ProcAttributor(owners, tenants=CONFIG)
    assert a.owner(20) == Owner("llm-a", "vision")
    assert a.owner(21) == Owner("k8s-pod-0a1b2c3d-1111-4222-8333-444455556666", "platform")
    assert a.owner(22) == Owner("slurm-501", "physics")
    assert a.owner(23) == Owner("llm-train-7", "team-a")  # first matching glob in order
    assert a.owner(24) == Owner("notebook", "catch-all-never-for-unattributed")
    assert a.owner(25) == Owner(UNATTRIBUTED, None)
    assert a.owner(26) == Owner("docker-job", "catch-all-never-for-unattributed")
    assert a.stats[("tenant", "namespace")] == 1
    assert a.stats[("tenant", "slurm_account")] == 1
    assert a.stats[("tenant", "config")] == 4


def test_without_configuration_unknown_owners_are_absent(owners: Path) -> None:
    a = ProcAttributor(owners)
    assert a.tenants([20, 21, 22, 23, 24, 25, 26]) == {"llm-a": "vision", "slurm-501": "physics"}
    assert a.stats[("tenant", "unknown")] == 4  # 21, 23, 24, 26 (25 is unattributed)


def test_tenants_of_one_workload_in_conflict_lowest_pid_wins(tmp_path: Path) -> None:
    root = tmp_path / "proc"
    make_proc(root, 31, {"MFU_WORKLOAD": "shared", "SLURM_JOB_ACCOUNT": "b"})
    make_proc(root, 30, {"MFU_WORKLOAD": "shared", "SLURM_JOB_ACCOUNT": "a"})
    a = ProcAttributor(root)
    assert a.tenants([31, 30, 30]) == {"shared": "a"}
    assert a.stats[("tenant_conflicts",)] == 1


def test_tenant_from_config_is_first_match_in_order() -> None:
    patterns = {"llm-eval-*": "eval-team", "llm-*": "team-a"}
    assert tenant_from_config("llm-eval-3", patterns) == "eval-team"
    assert tenant_from_config("llm-train", patterns) == "team-a"
    assert tenant_from_config("LLM-train", patterns) is None  # case matters
    assert tenant_from_config("bert", patterns) is None


def test_tenants_setting_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MFU_AGENT_TENANTS", '{"llm-*": "team-a", "*": "shared"}')
    assert list(AgentSettings().tenants.items()) == [("llm-*", "team-a"), ("*", "shared")]
    monkeypatch.setenv("MFU_AGENT_TENANTS", '{"llm-*": ""}')
    with pytest.raises(ValueError, match="tenant name of 1-256 characters"):
        AgentSettings()


def test_agent_passes_configured_tenants_to_samples(tmp_path: Path) -> None:
    from agents.agent import Agent
    from mfu_testing.fake_nvml import FakeNvml, node_document
    from tests.unit.test_agent_publisher import FakeBroker

    make_proc(tmp_path / "proc", 1000, {"MFU_WORKLOAD": "llm-chat"})
    make_proc(tmp_path / "proc", 1001, {"MFU_WORKLOAD": "other"})
    s = AgentSettings(node="n1", socket=str(tmp_path / "agent.sock"), metrics_port=0,
                      spool_dir=tmp_path / "spool", proc_root=tmp_path / "proc",
                      tenants={"llm-*": "team-a"})
    nvml = FakeNvml(node_document(2, first_pid=1000))
    agent = Agent(s, nvml=nvml, producer_factory=FakeBroker().factory)
    agent.collector.start(1_700_000_000.0)
    nvml.advance(1.0)
    first, second = agent.collector.collect(1_700_000_001.0)
    assert (first.workloads, first.tenants) == (["llm-chat"], {"llm-chat": "team-a"})
    assert (second.workloads, second.tenants) == (["other"], None)
    agent.collector.close()


def test_tenants_setting_from_a_config_file(tmp_path: Path) -> None:
    f = tmp_path / "agent.yaml"
    f.write_text('tenants: {"llm-eval-*": eval-team, "llm-*": team-a}\n')
    tenants = AgentSettings(config_file=f).tenants
    assert list(tenants.items()) == [("llm-eval-*", "eval-team"), ("llm-*", "team-a")]
    assert tenant_from_config("llm-eval-1", tenants) == "eval-team"
