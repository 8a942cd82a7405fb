"""The FLOP SDK is its own distribution (``sdk/``, ``mfu-sdk``): stdlib only, installable alone.

The test builds the wheel from a copy of ``sdk/`` with the running interpreter's setuptools
(no network, no build isolation), installs it with ``--no-index`` into a bare venv (no
system site-packages), then checks that nothing but pip/setuptools is installed there and
that the installed ``mfu_sdk`` counts FLOPs and sends a ``flop_report/1`` the pipeline's
pydantic contract accepts. ``--no-index`` also proves the wheel declares no dependency:
pip would fail to resolve one offline.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

from mfu.events import FlopReport

REPO = Path(__file__).parents[2]

# Runs inside the bare venv: FLOPs of a 10-token step of a toy Llama, sent over UDP.
SCRIPT = textwrap.dedent("""
    import json, sys
    from mfu_sdk import FlopReporter
    import mfu_sdk
    try:
        import pydantic  # noqa: F401
        has_pydantic = True
    except ImportError:
        has_pydantic = False
    config = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64,
              "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 128,
              "vocab_size": 100, "tie_word_embeddings": False}
    times = iter([1.7e9, 1.7e9 + 2, 1.7e9 + 2])
    reporter = FlopReporter(workload="w-dist", rank=0, model=config, seq_len=8,
                            gpu_uuid="GPU-dist", socket_address=sys.argv[1],
                            clock=lambda: next(times))
    reporter.step(tokens=10)
    print(json.dumps({"file": mfu_sdk.__file__, "has_pydantic": has_pydantic,
                      "flops_per_token": reporter.flops_per_token,
                      "sent": reporter.stats["sent"]}))
""")


def _bare_env() -> dict[str, str]:
    """The environment without this suite's PYTHONPATH/virtualenv: only the venv counts."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PIP_CONSTRAINT"}}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def test_sdk_installs_alone_with_no_third_party_package(tmp_path: Path) -> None:
    source = tmp_path / "sdk"
    shutil.copytree(REPO / "sdk", source, ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "__pycache__"))
    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index",
                            "--no-build-isolation", "-q", "-w", str(wheels), str(source)],
                           capture_output=True, text=True, env=_bare_env())
    assert built.returncode == 0, (
        "building the mfu-sdk wheel offline needs setuptools and wheel in this venv "
        f"(the 'test' extra installs them):\n{built.stderr[-2000:]}")
    (wheel,) = wheels.glob("mfu_sdk-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=_bare_env())
    python = str(venv / "bin" / "python")
    installed = subprocess.run([python, "-m", "pip", "install", "--no-index", "-q", str(wheel)],
                               capture_output=True, text=True, env=_bare_env())
    # --no-index: a declared dependency could not be found, so this fails if there is one
    assert installed.returncode == 0, installed.stderr[-2000:]

    listed = subprocess.run([python, "-m", "pip", "list", "--format=json"], check=True,
                            capture_output=True, text=True, env=_bare_env()).stdout
    names = {p["name"].lower() for p in json.loads(listed)}
    assert names - {"pip", "setuptools"} == {"mfu-sdk"}

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as agent:
        agent.bind(("127.0.0.1", 0))
        agent.settimeout(10)
        port = agent.getsockname()[1]
        out = subprocess.run([python, "-c", SCRIPT, f"udp://127.0.0.1:{port}"], check=True,
                             capture_output=True, text=True, env=_bare_env(),
                             cwd=tmp_path).stdout
        datagram = json.loads(agent.recv(65536))

    result = json.loads(out)
    assert result["file"].startswith(str(venv))  # the installed copy, not the repo's
    assert result["has_pydantic"] is False
    # N (active matmul params) per layer: attention 4·d² = 4·64² = 16384 + gated MLP
    # 3·64·128 = 24576 -> 40960; x 2 layers = 81920; + unembedding 100·64 = 6400 -> 88320.
    # Train: 6·N = 529920; attention 3 · L·2·H·T·(16+16) = 3 · 2·2·4·8·32 = 12288.
    per_token_flops = 6 * 88320 + 3 * (2 * 2 * 4 * 8 * 32)
    assert per_token_flops == 542208
    assert result["flops_per_token"] == per_token_flops
    assert result["sent"] == 1
    assert datagram["flops"] == 10 * per_token_flops
    assert (datagram["start"], datagram["end"]) == (1.7e9, 1.7e9 + 2)
    # The agent stamps node; with it the datagram is a valid flop_report/1.
    report = FlopReport.model_validate({**datagram, "node": "n1"})
    assert report.gpu_uuid == "GPU-dist" and report.workload == "w-dist"
