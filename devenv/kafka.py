"""A local Apache Kafka broker (KRaft, single node) built from its Maven Central jars.

No Docker, no tarball: the broker's jars and their runtime dependencies are listed, with
their sha256, in ``devenv/kafka-<version>.sha256`` (a lock file). ``provision()`` fetches
the jars with Maven itself (``mvn dependency:copy-dependencies`` on a generated pom that
names exactly the locked coordinates), so a user's ``~/.m2/settings.xml`` mirrors, proxies
and credentials apply and the local Maven repository is reused; it then checks every jar
against the lock file's sha256 and caches the set under ``cache_dir()/kafka/<version>/libs``;
a second call returns at once. Only when ``mvn`` is not installed does it download the jars
directly from ``$MFU_MAVEN_REPO`` (default Maven Central), and it says so. ``LocalKafka``
then runs ``kafka.Kafka`` from that folder with the machine's Java (17+).

Regenerate the lock file for another version with Maven (checksums checked strictly):
``python -m devenv.kafka lock 4.1.1``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from devenv.paths import cache_dir

KAFKA_VERSION = "4.1.1"
SCALA_BINARY = "2.13"
# The broker logs through slf4j 1.x; this binding sends it to log4j2 (what Kafka's own
# distribution ships), so the broker's log file says why it stopped.
LOG4J_SLF4J = "org.apache.logging.log4j:log4j-slf4j-impl:2.24.3"
# Used only by the direct-download fallback (no mvn on the machine); with mvn the user's
# own Maven configuration decides where artifacts come from.
DEFAULT_MAVEN_REPO = "https://repo1.maven.org/maven2"
# Pinned so the copy goal behaves the same whatever Maven's default binding is.
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
DEFAULT_HEAP = "512m"
JAVA_CANDIDATES = ("/usr/lib/jvm/java-17-openjdk-amd64", "/usr/lib/jvm/java-17-openjdk-arm64")
MIN_JAVA = 17

Progress = Callable[[str], object]


class KafkaError(RuntimeError):
    """Provisioning or starting the local broker failed; the message says what to do."""


# --------------------------------------------------------------------------- provisioning


@dataclass(frozen=True)
class LockedJar:
    """One jar of the lock file: Maven coordinates and the expected sha256."""

    sha256: str
    group: str
    artifact: str
    version: str
    classifier: str = ""

    @property
    def filename(self) -> str:
        suffix = f"-{self.classifier}" if self.classifier else ""
        return f"{self.artifact}-{self.version}{suffix}.jar"

    def url(self, repo: str) -> str:
        return f"{repo.rstrip('/')}/{self.group.replace('.', '/')}/{self.artifact}/{self.version}/{self.filename}"

    def line(self) -> str:
        coords = f"{self.group}:{self.artifact}:{self.version}"
        return (
            f"{self.sha256}  {coords}:{self.classifier}"
            if self.classifier
            else f"{self.sha256}  {coords}"
        )


def lock_path(version: str = KAFKA_VERSION) -> Path:
    return Path(__file__).with_name(f"kafka-{version}.sha256")


def read_lock(version: str = KAFKA_VERSION) -> list[LockedJar]:
    """The jars pinned for ``version`` (raises KafkaError if the lock file is missing)."""
    path = lock_path(version)
    if not path.is_file():
        raise KafkaError(
            f"no lock file {path.name} for Kafka {version}: create it with "
            f"'python -m devenv.kafka lock {version}' (needs mvn)"
        )
    jars = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        digest, coords = line.split(maxsplit=1)
        parts = coords.split(":")
        jars.append(LockedJar(digest.lower(), *parts))
    return jars


def libs_dir(version: str = KAFKA_VERSION) -> Path:
    return cache_dir() / "kafka" / version / "libs"


def provision(progress: Progress = print, version: str = KAFKA_VERSION, *,
              maven_repo_local: Path | None = None) -> Path:
    """Fetch (once) and verify the broker's jars; return the folder holding them.

    With ``mvn`` on PATH the jars come through Maven (``maven_repo_local`` overrides its
    local repository, default Maven's own, ``~/.m2/repository``); without it, by direct
    download. Every jar is checked against the committed sha256 lock file either way.
    The cached folder carries a marker naming the lock file's digest, so a changed lock
    file provisions again.
    """
    jars = read_lock(version)
    target = libs_dir(version)
    marker = target / ".verified"
    lock_digest = hashlib.sha256(lock_path(version).read_bytes()).hexdigest()
    if marker.is_file() and marker.read_text().strip() == lock_digest:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / ".provision.lock"):
        if marker.is_file() and marker.read_text().strip() == lock_digest:
            return target  # another process provisioned it while we waited
        started = time.monotonic()
        staging = Path(tempfile.mkdtemp(prefix="libs-", dir=target.parent))
        staging.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        try:
            if shutil.which("mvn") is not None:
                progress(f"kafka {version}: fetching {len(jars)} jars with mvn "
                         "(your ~/.m2/settings.xml mirrors apply)")
                sizes = _maven_copy(jars, staging, repo_local=maven_repo_local)
            else:
                repo = os.environ.get("MFU_MAVEN_REPO", DEFAULT_MAVEN_REPO)
                progress(f"kafka {version}: mvn not found, downloading {len(jars)} jars "
                         f"directly from {repo} (set MFU_MAVEN_REPO for a mirror, or "
                         "install maven to use your Maven settings)")
                with ThreadPoolExecutor(max_workers=6) as pool:
                    sizes = list(pool.map(lambda jar: _download(jar, repo, staging), jars))
            marker_tmp = staging / ".verified"
            marker_tmp.write_text(lock_digest + "\n")
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        progress(
            f"kafka {version}: {len(jars)} jars, {sum(sizes) / 1e6:.1f} MB, sha256 verified "
            f"in {time.monotonic() - started:.1f} s -> {target}"
        )
    return target


def maven_pom(jars: list[LockedJar]) -> str:
    """A pom whose dependencies are exactly ``jars`` (each with every transitive dependency
    excluded: the lock file is the whole, already resolved, set)."""
    deps = []
    for jar in jars:
        classifier = f"<classifier>{jar.classifier}</classifier>" if jar.classifier else ""
        deps.append(
            f"    <dependency><groupId>{jar.group}</groupId><artifactId>{jar.artifact}"
            f"</artifactId><version>{jar.version}</version>{classifier}\n"
            "      <exclusions><exclusion><groupId>*</groupId><artifactId>*</artifactId>"
            "</exclusion></exclusions></dependency>\n"
        )
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
        "  <modelVersion>4.0.0</modelVersion>\n"
        "  <groupId>local.mfu</groupId><artifactId>kafka-broker-jars</artifactId>"
        "<version>1</version>\n  <packaging>pom</packaging>\n"
        f"  <dependencies>\n{''.join(deps)}  </dependencies>\n</project>\n"
    )


def _maven_copy(jars: list[LockedJar], dest: Path, *, repo_local: Path | None = None) -> list[int]:
    """Copy ``jars`` into ``dest`` with mvn (strict checksums), then check each sha256.

    Returns the jar sizes in bytes. Raises KafkaError with mvn's own output when it fails
    (an unreachable mirror, a missing artifact), or on a sha256 mismatch.
    """
    with tempfile.TemporaryDirectory(prefix="mfu-kafka-mvn-") as tmp:
        work = Path(tmp)
        (work / "pom.xml").write_text(maven_pom(jars))
        command = [
            "mvn", "-B", "-ntp", "-C", f"{DEPENDENCY_PLUGIN}:copy-dependencies",
            f"-DoutputDirectory={dest}", "-DexcludeTransitive=true", "-DincludeScope=runtime",
        ]
        if repo_local is not None:
            command.insert(1, f"-Dmaven.repo.local={repo_local}")
        done = subprocess.run(command, cwd=work, capture_output=True, text=True)
    if done.returncode != 0:
        errors = [line for line in done.stdout.splitlines() if "[ERROR]" in line]
        raise KafkaError(
            f"mvn could not fetch the Kafka jars (exit {done.returncode}); check the "
            "mirrors/proxy in ~/.m2/settings.xml or your network:\n"
            + "\n".join(errors[:15] or done.stdout.splitlines()[-15:]) + done.stderr[-1000:]
        )
    sizes = []
    for jar in jars:
        path = dest / jar.filename
        if not path.is_file():
            raise KafkaError(f"mvn reported success but {jar.filename} is not in {dest}")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != jar.sha256:
            raise KafkaError(
                f"sha256 mismatch for {jar.line().split()[1]} fetched by mvn: expected "
                f"{jar.sha256}, got {digest}; your Maven mirror serves a different file "
                "or the lock file is wrong"
            )
        sizes.append(path.stat().st_size)
    extra = {p.name for p in dest.glob("*.jar")} - {j.filename for j in jars}
    for name in extra:  # never put an unverified jar on the broker's classpath
        (dest / name).unlink()
    return sizes


def _download(jar: LockedJar, repo: str, dest: Path, attempts: int = 3) -> int:
    url = jar.url(repo)
    for attempt in range(1, attempts + 1):
        digest = hashlib.sha256()
        size = 0
        path = dest / jar.filename
        try:
            with urllib.request.urlopen(url, timeout=60) as response, path.open("wb") as out:
                while chunk := response.read(1 << 16):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
        except OSError as exc:
            if attempt == attempts:
                raise KafkaError(f"cannot download {url}: {exc}") from exc
            time.sleep(attempt)
            continue
        if digest.hexdigest() != jar.sha256:
            path.unlink(missing_ok=True)
            raise KafkaError(
                f"sha256 mismatch for {url}: expected {jar.sha256}, got {digest.hexdigest()}; "
                "the download was altered or the lock file is wrong"
            )
        return size
    raise AssertionError("unreachable")


def write_lock(version: str = KAFKA_VERSION, progress: Progress = print) -> Path:
    """Resolve kafka_2.13:<version> + runtime deps with Maven and write the lock file.

    Maven runs with strict checksum policy (``-C``): every artifact is checked against the
    repository's own checksums before its sha256 is recorded here.
    """
    if shutil.which("mvn") is None:
        raise KafkaError("mvn is not installed; it is needed only to (re)generate lock files")
    with tempfile.TemporaryDirectory(prefix="mfu-kafka-lock-") as tmp:
        work = Path(tmp)
        group, artifact, log4j_version = LOG4J_SLF4J.split(":")
        (work / "pom.xml").write_text(
            f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.mfu</groupId><artifactId>kafka-broker</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_{SCALA_BINARY}</artifactId>
      <version>{version}</version></dependency>
    <dependency><groupId>{group}</groupId><artifactId>{artifact}</artifactId>
      <version>{log4j_version}</version></dependency>
  </dependencies>
</project>
"""
        )
        progress(f"kafka {version}: resolving with mvn (strict checksums)")
        listing = work / "deps.txt"
        command = [
            "mvn", "-q", "-B", "-C", f"-Dmaven.repo.local={work / 'm2'}",
            "dependency:list", "-DincludeScope=runtime", f"-DoutputFile={listing}",
            "-DoutputAbsoluteArtifactFilename=true",
        ]  # fmt: skip
        done = subprocess.run(command, cwd=work, capture_output=True, text=True)
        if done.returncode != 0:
            raise KafkaError(
                f"mvn failed for Kafka {version}:\n{done.stdout[-3000:]}{done.stderr[-2000:]}"
            )
        jars = []
        for line in listing.read_text().splitlines():
            # group:artifact:type[:classifier]:version:scope:/abs/path (path has no ':' here)
            match = re.match(
                r"\s+([^:\s]+):([^:]+):jar:(?:([^:]+):)?([^:]+):(?:runtime|compile):(/.+)", line
            )
            if not match:
                continue
            g, a, classifier, v, path = match.groups()
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            jars.append(LockedJar(digest, g, a, v, classifier or ""))
    if not any(j.artifact == f"kafka_{SCALA_BINARY}" for j in jars):
        raise KafkaError(f"mvn listed no kafka_{SCALA_BINARY} jar; check the version {version}")
    jars.sort(key=lambda j: (j.group, j.artifact))
    header = (
        f"# Apache Kafka {version} broker (kafka_{SCALA_BINARY}) + runtime deps + {LOG4J_SLF4J}\n"
        "# sha256  groupId:artifactId:version[:classifier]  -- python -m devenv.kafka lock\n"
    )
    path = lock_path(version)
    path.write_text(header + "".join(j.line() + "\n" for j in jars))
    progress(f"kafka {version}: wrote {path} ({len(jars)} jars)")
    return path


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- java


def java_version(java: str | Path) -> int | None:
    """The feature version of a ``java`` binary (17 for 17.0.15), or None if it won't run."""
    try:
        out = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_java() -> Path:
    """The ``java`` binary to run the broker with: ``$MFU_JAVA_HOME``, else a Java 17 install,
    else ``$JAVA_HOME``, else ``java`` on PATH; it must be Java 17 or newer."""
    configured = os.environ.get("MFU_JAVA_HOME")
    if configured:
        java = Path(configured) / "bin" / "java"
        found = java_version(java)
        if found is None or found < MIN_JAVA:
            raise KafkaError(
                f"MFU_JAVA_HOME={configured}: {java} is "
                f"{'not runnable' if found is None else f'Java {found}'}; Kafka 4 needs Java {MIN_JAVA}+"
            )
        return java
    candidates = [Path(home) / "bin" / "java" for home in JAVA_CANDIDATES]
    if os.environ.get("JAVA_HOME"):
        candidates.append(Path(os.environ["JAVA_HOME"]) / "bin" / "java")
    if shutil.which("java"):
        candidates.append(Path(shutil.which("java")))  # type: ignore[arg-type]
    seen = []
    for java in candidates:
        if not java.exists():
            continue
        found = java_version(java)
        seen.append(f"{java} ({'?' if found is None else found})")
        if found is not None and found >= MIN_JAVA:
            return java
    raise KafkaError(
        f"no Java {MIN_JAVA}+ found (looked at: {', '.join(seen) or 'nothing'}); install "
        f"openjdk-17-jre-headless or point MFU_JAVA_HOME at a Java {MIN_JAVA}+ home"
    )


# --------------------------------------------------------------------------- processes


def pid_alive(pid: int) -> bool:
    """True if ``pid`` names a live process (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def process_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def rss_bytes(pid: int) -> int | None:
    """Resident memory of ``pid`` in bytes (Linux), or None if unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def is_kafka_process(pid: int) -> bool:
    """True if ``pid`` is a live broker JVM (``kafka.Kafka``): guards against pid reuse."""
    return pid_alive(pid) and "kafka.Kafka" in process_cmdline(pid)


def stop_pid(pid: int, timeout_s: float = 30.0) -> bool:
    """Stop a broker started by ``LocalKafka``, possibly from another process.

    SIGTERM to its process group (it leads its own session; Kafka shuts down cleanly),
    then SIGKILL after ``timeout_s``. Returns False, signalling nothing, when ``pid`` is
    not a live Kafka broker.
    """
    if not is_kafka_process(pid):
        return False
    try:
        group = os.getpgid(pid)
    except ProcessLookupError:
        return False

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if group == pid:
                os.killpg(group, sig)
            else:
                os.kill(pid, sig)

    send(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        if time.monotonic() > deadline:
            send(signal.SIGKILL)
            deadline = time.monotonic() + 10
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            break
        time.sleep(0.1)
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_free(port: int) -> bool:
    """Can a server bind ``port`` on 127.0.0.1? (SO_REUSEADDR, as servers do, so a port
    in TIME_WAIT after a restart counts as free.)"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_for_metadata(bootstrap: str, timeout_s: float = 30.0) -> float:
    """Block until a broker at ``bootstrap`` answers a metadata request; return seconds waited."""
    from confluent_kafka.admin import AdminClient

    started = time.monotonic()
    deadline = started + timeout_s
    host, port = bootstrap.rsplit(":", 1)
    # Wait for the socket first: librdkafka logs every refused connection to stderr.
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            break
        except OSError as exc:
            if time.monotonic() > deadline:
                raise KafkaError(
                    f"no broker listening on {bootstrap} after {timeout_s:.0f} s"
                ) from exc
            time.sleep(0.2)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    while True:
        try:
            metadata = admin.list_topics(timeout=max(1.0, min(5.0, deadline - time.monotonic())))
            if metadata.brokers:
                return time.monotonic() - started
        except Exception as exc:
            if time.monotonic() > deadline:
                raise KafkaError(f"broker at {bootstrap} answered no metadata: {exc}") from exc
        time.sleep(0.2)


# --------------------------------------------------------------------------- broker


LOG4J2_PROPERTIES = """\
status = warn
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.stdout.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.statechange.name = state.change.logger
logger.statechange.level = warn
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = warn
"""


def new_cluster_id(random_bytes: Callable[[int], bytes] = os.urandom) -> str:
    """A KRaft cluster id: a random UUID in URL-safe base64, 22 characters.

    Like Kafka's own ``Uuid.randomUuid()``, ids whose text starts with ``-`` are drawn
    again: ``kafka-storage format -t -xyz`` reads such an id as an option and fails
    ("argument --cluster-id/-t: expected one argument"), which happened on about one
    fresh ``mfu dev up`` in 64 (the first character is ``-`` for 4 of 256 first bytes).
    """
    while True:
        raw = bytearray(random_bytes(16))
        raw[6] = (raw[6] & 0x0F) | 0x40  # version 4 and RFC 4122 variant, as uuid4()
        raw[8] = (raw[8] & 0x3F) | 0x80
        text = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


class LocalKafka:
    """One Kafka broker+controller (KRaft) on 127.0.0.1, data and log under ``data_dir``.

    Ports: ``port`` (PLAINTEXT, clients) or a free one; the controller gets a free port.
    Ports chosen once are remembered in ``data_dir/ports.json`` and reused on restart
    while they are free, so a restarted broker keeps its address.
    """

    def __init__(
        self,
        libs_dir: Path | str,
        data_dir: Path | str,
        port: int | None = None,
        *,
        heap: str | None = None,
        java: Path | str | None = None,
    ) -> None:
        self.libs_dir = Path(libs_dir)
        self.data_dir = Path(data_dir)
        self.requested_port = port
        self.heap = heap or os.environ.get("MFU_KAFKA_HEAP", DEFAULT_HEAP)
        self._java = Path(java) if java else None
        self.port: int | None = None
        self.controller_port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None

    # paths -----------------------------------------------------------------
    @property
    def properties_path(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "kafka.log"

    @property
    def log_dirs(self) -> Path:
        return self.data_dir / "kraft-logs"

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise KafkaError("broker not started: no port yet")
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # lifecycle ---------------------------------------------------------------
    def start(self, timeout_s: float = 90.0) -> LocalKafka:
        """Format storage if needed, launch the broker, return once it answers metadata."""
        if self.running():
            return self
        started = time.monotonic()
        java = self._java or find_java()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._choose_ports()
        self._write_config()
        classpath = f"{self.libs_dir}/*"
        jvm = [
            str(java), f"-Xmx{self.heap}", "-Xms128m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-XX:+ExplicitGCInvokesConcurrent", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.data_dir}", "-cp", classpath,
        ]  # fmt: skip
        if not (self.log_dirs / "meta.properties").exists():
            self._format(jvm)
        with self.log_path.open("ab") as log:
            log.write(f"\n=== mfu devenv: starting Kafka at {time.ctime()} ===\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                [*jvm, "kafka.Kafka", str(self.properties_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.data_dir,
            )
        try:
            self._wait_ready(started + timeout_s)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - started
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (controlled shutdown), then SIGKILL after ``timeout_s``; waits for exit."""
        if self._proc is None:
            return
        stop_pid(self._proc.pid, timeout_s)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=10)
        self._proc = None

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # internals ---------------------------------------------------------------
    def _choose_ports(self) -> None:
        remembered = {}
        ports_file = self.data_dir / "ports.json"
        if ports_file.is_file():
            with contextlib.suppress(ValueError, OSError):
                remembered = json.loads(ports_file.read_text())
        port = self.requested_port or remembered.get("port")
        if port is None or (not self.requested_port and not port_free(port)):
            port = free_port()
        controller = remembered.get("controller_port")
        if controller is None or controller == port or not port_free(controller):
            controller = free_port()
            while controller == port:
                controller = free_port()
        self.port, self.controller_port = port, controller
        ports_file.write_text(json.dumps({"port": port, "controller_port": controller}) + "\n")

    def _write_config(self) -> None:
        partitions = os.environ.get("MFU_KAFKA_PARTITIONS", "4")
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.log_dirs),
            "num.partitions": partitions,
            "default.replication.factor": "1",
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "min.insync.replicas": "1",
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            "log.retention.hours": "24",
            "log.segment.bytes": str(64 * 1024 * 1024),
            "delete.topic.enable": "true",
        }
        text = "# generated by devenv.kafka: edits are overwritten on start\n"
        text += "".join(f"{key}={value}\n" for key, value in settings.items())
        self.properties_path.write_text(text)
        (self.data_dir / "log4j2.properties").write_text(LOG4J2_PROPERTIES)

    def _format(self, jvm: list[str]) -> None:
        cluster_id = new_cluster_id()
        command = [*jvm, "kafka.tools.StorageTool", "format", "--standalone",
                   "-t", cluster_id, "-c", str(self.properties_path)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise KafkaError(
                f"formatting Kafka storage in {self.log_dirs} failed "
                f"(exit {done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}"
            )

    def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None
        while True:
            code = self._proc.poll()
            if code is not None:
                raise KafkaError(
                    f"Kafka exited with code {code} while starting; last log lines "
                    f"({self.log_path}):\n{tail(self.log_path, 30)}"
                )
            try:
                wait_for_metadata(
                    self.bootstrap, timeout_s=min(2.0, max(0.1, deadline - time.monotonic()))
                )
                return
            except KafkaError:
                if time.monotonic() > deadline:
                    raise KafkaError(
                        f"Kafka on {self.bootstrap} not ready in time; last log lines "
                        f"({self.log_path}):\n{tail(self.log_path, 30)}"
                    ) from None


def tail(path: Path, lines: int = 50) -> str:
    """The last ``lines`` lines of a text file ('' if it does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 256 * 1024))
            data = handle.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devenv.kafka")
    sub = parser.add_subparsers(dest="cmd", required=True)
    lock = sub.add_parser("lock", help="(re)generate devenv/kafka-<version>.sha256 with mvn")
    lock.add_argument("version", nargs="?", default=KAFKA_VERSION)
    prov = sub.add_parser("provision", help="download and verify the jars into the cache")
    prov.add_argument("version", nargs="?", default=KAFKA_VERSION)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "lock":
            write_lock(args.version)
        else:
            print(provision(version=args.version))
    except KafkaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())
