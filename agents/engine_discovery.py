"""Finding inference engines by process: GPU pids -> their engine's launch command -> URL.

vLLM and SGLang run the model in child processes (vLLM's ``EngineCore``/workers, SGLang's
schedulers, one per TP rank); those are the pids NVML lists on a GPU. Their launch
command -- the HTTP server with ``--port`` -- is an ancestor. So for each GPU pid we walk
up ``/proc/<pid>/stat`` parents (at most :data:`MAX_DEPTH` steps) to the first process
whose ``/proc/<pid>/cmdline`` is an engine launch:

- vLLM: ``vllm serve ...`` (the ``vllm`` console script or ``-m vllm.entrypoints.cli.main``)
  or ``-m vllm.entrypoints.openai.api_server``; default port 8000;
- SGLang: ``-m sglang.launch_server`` (or ``.../sglang/launch_server.py``) or
  ``sglang serve``; default port 30000.

``--port N``/``--port=N`` and ``--host`` come from that command line. A wildcard host
(``0.0.0.0``/``::``, or none) is scraped on 127.0.0.1 when the engine shares the agent's
network namespace (``/proc/<pid>/ns/net``), else -- an engine in its own pod, the agent
with ``hostPID`` -- on the engine namespace's own address (the first non-loopback
``/32 host LOCAL`` entry of ``/proc/<pid>/net/fib_trie``, e.g. the pod IP). ``--dtype`` gives the precision
(bfloat16 -> bf16, float16/half -> fp16, float32/float -> fp32; ``--quantization fp8`` ->
fp8), else bf16. Every GPU any descendant uses belongs to that engine.

Stdlib only; the /proc root is a seam (a fake tree in tests).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

MAX_DEPTH = 16
DEFAULT_PORTS = {"vllm": 8000, "sglang": 30000}
_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]", "*"}
_DTYPES = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "half": "fp16",
           "fp16": "fp16", "float32": "fp32", "float": "fp32", "fp32": "fp32"}


@dataclass(frozen=True)
class EngineCommand:
    """What an engine's launch command line says."""

    engine: str  # "vllm" | "sglang"
    host: str
    port: int
    precision: str
    wildcard: bool = False  # no --host, or 0.0.0.0/:: (listens on every address)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"


def _option(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg[len(name) + 1:]
    return None


def _engine_of(argv: Sequence[str]) -> str | None:
    modules = {argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-m"}
    names = [Path(a).name for a in argv]
    if modules & {"vllm.entrypoints.openai.api_server", "vllm.entrypoints.api_server"}:
        return "vllm"
    if ("vllm" in names or "vllm.entrypoints.cli.main" in modules) and "serve" in argv:
        return "vllm"
    if "sglang.launch_server" in modules or any(
            a.endswith("sglang/launch_server.py") for a in argv):
        return "sglang"
    if "sglang" in names and "serve" in argv:
        return "sglang"
    return None


def parse_command(argv: Sequence[str]) -> EngineCommand | None:
    """The engine launched by ``argv`` (a process's arguments), or None."""
    engine = _engine_of(argv)
    if engine is None:
        return None
    port_text = _option(argv, "--port")
    try:
        port = int(port_text) if port_text is not None else DEFAULT_PORTS[engine]
    except ValueError:
        return None
    if not 0 < port < 65536:
        return None
    host = _option(argv, "--host") or ""
    wildcard = host in _WILDCARD_HOSTS
    if wildcard:
        host = "127.0.0.1"
    precision = _DTYPES.get((_option(argv, "--dtype") or "").lower(), "bf16")
    if (_option(argv, "--quantization") or "").lower().startswith("fp8"):
        precision = "fp8"
    return EngineCommand(engine, host, port, precision, wildcard)


def local_addresses(fib_trie: str) -> list[str]:
    """IPv4 addresses a network namespace owns (``/32 host LOCAL`` entries of
    ``/proc/<pid>/net/fib_trie``), loopback excluded, in order of appearance."""
    out: list[str] = []
    last: str | None = None
    for line in fib_trie.splitlines():
        text = line.strip()
        if text.startswith("|--"):
            last = text[3:].strip()
        elif (text.startswith("/32 host LOCAL") and last and not last.startswith("127.")
              and last not in out):
            out.append(last)
    return out


@dataclass(frozen=True)
class FoundEngine:
    """An engine found on this host: the launch process, its command, its GPUs
    (UUIDs sorted) and the GPU pids under it."""

    root_pid: int
    command: EngineCommand
    gpu_uuids: tuple[str, ...]
    pids: tuple[int, ...]
    url: str = ""  # where to scrape it from the agent (see the module docstring)


class ProcEngineFinder:
    """Finds engines above GPU pids in a ``/proc`` tree (cached per pid while it lives)."""

    def __init__(self, proc_root: str | Path = "/proc") -> None:
        self.proc_root = Path(proc_root)
        self._root_of: dict[int, int | None] = {}
        self._commands: dict[int, EngineCommand | None] = {}
        self._urls: dict[int, str] = {}
        self._own_netns = self._netns("self")

    def _netns(self, pid: int | str) -> str | None:
        try:
            return os.readlink(self.proc_root / str(pid) / "ns" / "net")
        except OSError:
            return None

    def _url(self, pid: int, command: EngineCommand) -> str:
        """The URL the agent reaches the engine at (cached per engine pid)."""
        url = self._urls.get(pid)
        if url is None:
            url = command.url
            netns = self._netns(pid)
            if command.wildcard and netns and self._own_netns and netns != self._own_netns:
                try:
                    trie = (self.proc_root / str(pid) / "net" / "fib_trie").read_text()
                except OSError:
                    trie = ""
                addresses = local_addresses(trie)
                if addresses:
                    url = replace(command, host=addresses[0]).url
            self._urls[pid] = url
        return url

    def _argv(self, pid: int) -> list[str]:
        try:
            raw = (self.proc_root / str(pid) / "cmdline").read_bytes()
        except OSError:
            return []
        return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]

    def _ppid(self, pid: int) -> int | None:
        try:
            stat = (self.proc_root / str(pid) / "stat").read_text()
        except OSError:
            return None
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat.rpartition(")")[2].split()
        try:
            ppid = int(fields[1])
        except (IndexError, ValueError):
            return None
        return ppid if ppid > 0 else None

    def _command(self, pid: int) -> EngineCommand | None:
        if pid not in self._commands:
            self._commands[pid] = parse_command(self._argv(pid))
        return self._commands[pid]

    def engine_root(self, pid: int) -> int | None:
        """The pid of the engine launch process at or above ``pid``, or None."""
        if pid in self._root_of:
            return self._root_of[pid]
        root: int | None = None
        current: int | None = pid
        for _ in range(MAX_DEPTH):
            if current is None:
                break
            if self._command(current) is not None:
                root = current
                break
            current = self._ppid(current)
        self._root_of[pid] = root
        return root

    def find(self, pid_to_uuid: Mapping[int, str]) -> list[FoundEngine]:
        """Engines of the GPU pids ``pid_to_uuid`` (NVML's pid -> GPU UUID), ordered by
        root pid. Forgets pids that left the GPUs."""
        for pid in [p for p in self._root_of if p not in pid_to_uuid]:
            del self._root_of[pid]
        live_roots = {r for r in self._root_of.values() if r is not None}
        groups: dict[int, dict[int, str]] = {}
        for pid, uuid in pid_to_uuid.items():
            root = self.engine_root(pid)
            if root is not None:
                groups.setdefault(root, {})[pid] = uuid
                live_roots.add(root)
        for pid in [p for p in self._commands if p not in live_roots]:
            del self._commands[pid]  # re-read a reused pid's command line
        for pid in [p for p in self._urls if p not in live_roots]:
            del self._urls[pid]
        out = []
        for root in sorted(groups):
            command = self._command(root)
            assert command is not None
            pids = groups[root]
            out.append(FoundEngine(root, command, tuple(sorted(set(pids.values()))),
                                   tuple(sorted(pids)), self._url(root, command)))
        return out
