"""A real InfluxDB for the demo and the tests, provisioned without Docker.

``provision()`` builds ``influxd`` of InfluxDB OSS 1.8 from the Go module proxy (pure Go, no
cgo: Flux included) into ``cache_dir()/influxdb/<version>/bin/influxd``, once. InfluxDB 1.8
speaks the v2 write API that ``influxdb-client`` uses (``/api/v2/write``, token ``user:pass``,
bucket ``db/rp``, org ``-``) and Flux at ``/api/v2/query``.

Where no Go toolchain is found (or the build fails) it falls back to Debian's ``influxdb``
package (1.6.7, fetched with ``apt-get download``). That flavor is **v1-only**
(``InfluxInstall.api == "v1"``): ``/write`` and InfluxQL ``/query`` work, ``/api/v2/write``
answers 404, so the sink must be configured for the v1 API.

``LocalInflux`` runs one ``influxd`` on loopback, in its own session, with authentication on,
and creates database ``mfu`` (retention policy ``autogen``). It can be stopped from another
process with ``stop_pid(pid)``.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from devenv.paths import cache_dir

INFLUXDB_VERSION = "1.8.10"
INFLUXDB_GO_PACKAGE = "github.com/influxdata/influxdb/cmd/influxd"
DEBIAN_PACKAGE = "influxdb"
DATABASE = "mfu"
RETENTION_POLICY = "autogen"

Api = Literal["v2", "v1"]


class InfluxError(RuntimeError):
    """Provisioning, starting or setting up the local InfluxDB failed."""


@dataclass(frozen=True)
class InfluxInstall:
    binary: Path
    version: str
    api: Api  # "v2": /api/v2/write + Flux; "v1": only /write and InfluxQL /query


# --------------------------------------------------------------------------- provisioning


def install_dir(version: str = INFLUXDB_VERSION) -> Path:
    return cache_dir() / "influxdb" / version


def provision(
    progress: Callable[[str], None] = print, *, allow_v1_fallback: bool = True
) -> InfluxInstall:
    """Return the cached InfluxDB 1.8 build, building it first if needed (about a minute).

    Falls back to Debian's v1-only InfluxDB 1.6 when no Go toolchain can build 1.8 and
    ``allow_v1_fallback`` is true.
    """
    binary = install_dir() / "bin" / "influxd"
    with _locked(install_dir()):
        if _is_executable(binary):
            return InfluxInstall(binary, INFLUXDB_VERSION, "v2")
        go = _find_go()
        build_error: str
        if go is None:
            build_error = "no Go toolchain found (set MFU_GO or put `go` on PATH)"
        else:
            try:
                _build_with_go(go, binary, progress)
                return InfluxInstall(binary, INFLUXDB_VERSION, "v2")
            except InfluxError as exc:
                build_error = str(exc)
    if not allow_v1_fallback:
        raise InfluxError(f"cannot build InfluxDB {INFLUXDB_VERSION}: {build_error}")
    progress(f"influxdb: cannot build {INFLUXDB_VERSION} ({build_error.splitlines()[0]})")
    progress("influxdb: falling back to Debian's InfluxDB 1.6: v1-only, no /api/v2/write")
    return _provision_debian(progress)


def _find_go() -> str | None:
    for candidate in (os.environ.get("MFU_GO"), shutil.which("go"), "/usr/local/go/bin/go"):
        if candidate and _is_executable(Path(candidate)):
            return candidate
    return None


def _build_with_go(go: str, binary: Path, progress: Callable[[str], None]) -> None:
    """``go install <pkg>@v<version>`` with cgo off, into a temporary GOBIN, then move."""
    target = install_dir()
    target.mkdir(parents=True, exist_ok=True)
    log_path = target / "build.log"
    env = {
        **os.environ,
        "CGO_ENABLED": "0",  # flux 0.65 in 1.8.x is pure Go
        "GO111MODULE": "on",
        "GOWORK": "off",
        "GOFLAGS": "-buildvcs=false",
    }
    ldflags = f"-s -w -X main.version={INFLUXDB_VERSION} -X main.branch=1.8"
    progress(f"influxdb: building influxd {INFLUXDB_VERSION} with {go} (about a minute, once)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=target, prefix=".build-") as tmp:
        env["GOBIN"] = tmp
        cmd = [
            go,
            "install",
            "-trimpath",
            f"-ldflags={ldflags}",
            f"{INFLUXDB_GO_PACKAGE}@v{INFLUXDB_VERSION}",
        ]
        with log_path.open("w") as log:
            done = subprocess.run(
                cmd,
                cwd=tmp,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        built = Path(tmp) / "influxd"
        if done.returncode != 0 or not built.exists():
            raise InfluxError(f"go install failed (see {log_path}):\n{_tail(log_path)}")
        binary.parent.mkdir(parents=True, exist_ok=True)
        os.replace(built, binary)
    progress(f"influxdb: built {binary} in {time.monotonic() - started:.0f} s")


def _provision_debian(progress: Callable[[str], None]) -> InfluxInstall:
    root = cache_dir() / "influxdb" / "debian"
    binary = root / "usr" / "bin" / "influxd"
    with _locked(root):
        if not _is_executable(binary):
            if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
                raise InfluxError("no Go toolchain and no apt-get/dpkg-deb: cannot get InfluxDB")
            progress(f"influxdb: apt-get download {DEBIAN_PACKAGE}")
            with tempfile.TemporaryDirectory() as tmp:
                for cmd in (
                    ["apt-get", "download", DEBIAN_PACKAGE],
                    ["sh", "-c", f'dpkg-deb -x ./*.deb "{root}"'],
                ):
                    done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, check=False)
                    if done.returncode != 0:
                        raise InfluxError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
    out = subprocess.run([str(binary), "version"], capture_output=True, text=True, check=False)
    found = re.search(r"v(\d+\.\d+\.\d+)", out.stdout)
    version = found.group(1) if found else "unknown"
    api: Api = "v2" if _at_least(version, (1, 8)) else "v1"
    return InfluxInstall(binary, version, api)


def _at_least(version: str, minimum: tuple[int, int]) -> bool:
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= minimum


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialize provisioning between processes (two test workers, `mfu dev up`)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --------------------------------------------------------------------------- running


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalInflux:
    """One ``influxd`` on 127.0.0.1 with auth on, data and log under ``data_dir``.

    The admin password is ``password`` when given, else the one saved in
    ``data_dir/admin-password`` (mode 0600), else a new random one saved there: a restart on
    the same data dir keeps working. The password never appears in messages or logs.
    """

    def __init__(
        self,
        install: InfluxInstall,
        data_dir: Path,
        port: int | None = None,
        *,
        username: str = "mfu",
        password: str | None = None,
        flux: bool = True,
    ) -> None:
        self.install = install
        self.data_dir = Path(data_dir).resolve()
        self.port = port if port is not None else free_port()
        self.rpc_port = free_port()
        self._username = username
        self._password = password
        self.flux = flux and install.api == "v2"  # Flux costs ~2.5 s of startup
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None

    # -- connection details
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def username(self) -> str:
        return self._username

    @property
    def password(self) -> str:
        if self._password is None:
            self._password = self._load_or_create_password()
        return self._password

    @property
    def token(self) -> str:
        """InfluxDB 1.8 v2-API token: ``user:pass``."""
        return f"{self.username}:{self.password}"

    @property
    def bucket(self) -> str:
        return f"{DATABASE}/{RETENTION_POLICY}"

    @property
    def org(self) -> str:
        return "-"

    @property
    def database(self) -> str:
        return DATABASE

    @property
    def log_path(self) -> Path:
        return self.data_dir / "influxd.log"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "influxdb.conf"

    @property
    def password_path(self) -> Path:
        return self.data_dir / "admin-password"

    @property
    def pid(self) -> int | None:
        return self._pid

    def to_state(self) -> dict[str, Any]:
        """JSON-able description for a state file (no password: see ``password_path``)."""
        return {
            "pid": self.pid,
            "url": self.url,
            "port": self.port,
            "rpc_port": self.rpc_port,
            "username": self.username,
            "password_path": str(self.password_path),
            "bucket": self.bucket,
            "org": self.org,
            "database": self.database,
            "data_dir": str(self.data_dir),
            "log_path": str(self.log_path),
            "version": self.install.version,
            "api": self.install.api,
        }

    # -- lifecycle
    def start(self, timeout_s: float = 60) -> None:
        """Start influxd, wait for ``/ping``, ensure the admin user and database ``mfu``."""
        if self._proc is not None and self._proc.poll() is None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self._config())
        deadline = time.monotonic() + timeout_s
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [str(self.install.binary), "run", "-config", str(self.config_path)],
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._pid = self._proc.pid
        try:
            self._wait_for_ping(deadline)
            self._ensure_admin_and_database()
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout_s: float = 10) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``. Safe to call twice."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(5)
            self._proc = None
        elif self._pid is not None:
            stop_pid(self._pid, timeout_s)
        self._pid = None

    def __enter__(self) -> LocalInflux:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- HTTP helpers
    def query(self, q: str, *, db: str | None = None) -> dict[str, Any]:
        """Run InfluxQL through ``/query`` as the admin user; returns the decoded JSON."""
        fields = {"q": q, **({"db": db} if db else {})}
        status, body = self._post(
            "/query",
            urllib.parse.urlencode(fields).encode(),
            "application/x-www-form-urlencoded",
            auth=True,
        )
        if status != 200:
            raise InfluxError(f"query failed with HTTP {status}: {body[:300]}")
        result: dict[str, Any] = json.loads(body)
        return result

    def _wait_for_ping(self, deadline: float) -> None:
        assert self._proc is not None
        while True:
            if self._proc.poll() is not None:
                raise InfluxError(
                    f"influxd exited with code {self._proc.returncode}; "
                    f"log {self.log_path}:\n{_tail(self.log_path)}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=2) as resp:
                    if resp.status == 204:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise InfluxError(
                    f"influxd did not answer {self.url}/ping in time; "
                    f"log {self.log_path}:\n{_tail(self.log_path)}"
                )
            time.sleep(0.1)

    def _ensure_admin_and_database(self) -> None:
        # The first admin may be created without credentials. The statement goes as a
        # multipart *file*: influxd's access log prints form fields, which would leak it.
        escaped = self.password.replace("\\", "\\\\").replace("'", "\\'")
        statement = f"CREATE USER \"{self.username}\" WITH PASSWORD '{escaped}' WITH ALL PRIVILEGES"
        boundary = secrets.token_hex(16)
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="q"; filename="q"\r\n'
            f"Content-Type: text/plain\r\n\r\n{statement}\r\n--{boundary}--\r\n"
        ).encode()
        # 200: created (or already there); 401/403: an admin exists already.
        status, _ = self._post(
            "/query", body, f"multipart/form-data; boundary={boundary}", auth=False
        )
        if status not in (200, 401, 403):
            raise InfluxError(f"creating the admin user failed with HTTP {status}")
        try:
            self.query(f"CREATE DATABASE {DATABASE}")
        except InfluxError as exc:
            raise InfluxError(
                f"admin login as {self.username!r} failed; this data dir was "
                f"set up with another password ({self.password_path}): "
                f"{exc}"
            ) from None

    def _post(self, path: str, body: bytes, content_type: str, *, auth: bool) -> tuple[int, str]:
        headers = {"Content-Type": content_type}
        if auth:
            basic = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            headers["Authorization"] = f"Basic {basic}"
        request = urllib.request.Request(self.url + path, data=body, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                return resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def _load_or_create_password(self) -> str:
        path = self.password_path
        if path.exists():
            return path.read_text().strip()
        password = secrets.token_urlsafe(24)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(password + "\n")
        return password

    def _config(self) -> str:
        d = self.data_dir
        flux = "  flux-enabled = true\n" if self.flux else ""
        return (
            "reporting-disabled = true\n"
            f'bind-address = "127.0.0.1:{self.rpc_port}"\n\n'
            f'[meta]\n  dir = "{d / "meta"}"\n\n'
            f'[data]\n  dir = "{d / "data"}"\n  wal-dir = "{d / "wal"}"\n\n'
            "[monitor]\n  store-enabled = false\n\n"
            f'[http]\n  bind-address = "127.0.0.1:{self.port}"\n  auth-enabled = true\n'
            f"{flux}  log-enabled = true\n  pprof-enabled = false\n\n"
            "[logging]\n  suppress-logo = true\n"
        )


def stop_pid(pid: int, timeout_s: float = 10) -> bool:
    """Stop an ``influxd`` started by any process: SIGTERM, then SIGKILL after ``timeout_s``.

    Returns False (and signals nothing) when ``pid`` is gone or is not an influxd.
    """
    if not _is_live_influxd(pid):
        return False
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not _is_live_influxd(pid):
                return True
            time.sleep(0.05)
    raise InfluxError(f"influxd pid {pid} survived SIGKILL")


def _is_live_influxd(pid: int) -> bool:
    """True when ``pid`` runs influxd and is not a zombie (guards against pid reuse)."""
    proc = Path("/proc") / str(pid)
    try:
        cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and bool(cmdline) and Path(cmdline[0].decode()).name == "influxd"
