"""devenv.kafka provisioning without the network: cluster ids, the Maven pom, and the\ndirect-download fallback (no mvn) against a local HTTP repository."""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from devenv import kafka

ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{21}$")


def test_cluster_id_never_starts_with_dash_for_any_first_byte() -> None:
    # URL-safe base64: the first character is the first byte's top 6 bits; index 62 is
    # "-", i.e. first bytes 0xF8..0xFB (248..251) gave the old failing ids (4/256 = 1/64).
    for first in range(256):
        draws = [bytes([first]) + bytes(range(1, 16)), bytes([0x41]) + bytes(15)]

        def source(n: int, draws: list[bytes] = draws) -> bytes:
            assert n == 16
            return draws.pop(0)

        cid = kafka.new_cluster_id(source)
        assert ID_RE.match(cid), (first, cid)
        raw = base64.urlsafe_b64decode(cid + "==")
        assert len(raw) == 16
        if 248 <= first <= 251:
            assert raw[0] == 0x41  # drawn again: the second draw was used
        else:
            assert raw[0] == first


def test_cluster_ids_from_the_os_source_many_draws() -> None:
    ids = {kafka.new_cluster_id() for _ in range(20_000)}
    assert len(ids) == 20_000
    assert all(ID_RE.match(cid) for cid in ids)


def test_maven_pom_names_exactly_the_locked_jars_without_transitives() -> None:
    jars = kafka.read_lock()
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    root = ET.fromstring(kafka.maven_pom(jars))
    deps = root.findall("m:dependencies/m:dependency", ns)
    got = {(d.findtext("m:groupId", namespaces=ns), d.findtext("m:artifactId", namespaces=ns),
            d.findtext("m:version", namespaces=ns)) for d in deps}
    assert got == {(j.group, j.artifact, j.version) for j in jars}
    assert len(deps) == len(jars) == 46
    for d in deps:
        (excl,) = d.findall("m:exclusions/m:exclusion", ns)
        assert excl.findtext("m:groupId", namespaces=ns) == "*"
        assert excl.findtext("m:artifactId", namespaces=ns) == "*"


def _lock_of(tmp_path: Path, jars: dict[str, bytes], *, corrupt: str | None = None) -> Path:
    lines = ["# test lock"]
    for coords, data in jars.items():
        digest = hashlib.sha256(data if coords != corrupt else b"other").hexdigest()
        lines.append(f"{digest}  {coords}")
    path = tmp_path / "kafka-test.sha256"
    path.write_text("\n".join(lines) + "\n")
    return path


def _repo_server(files: dict[str, bytes]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = files.get(self.path)
            self.send_response(200 if data is not None else 404)
            self.send_header("Content-Length", str(len(data or b"")))
            self.end_headers()
            self.wfile.write(data or b"")

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def test_without_mvn_jars_are_downloaded_directly_and_verified(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jars = {"org.example:alpha:1.0": b"alpha-bytes", "org.example:beta:2.1": b"beta" * 100}
    files = {"/m2/org/example/alpha/1.0/alpha-1.0.jar": jars["org.example:alpha:1.0"],
             "/m2/org/example/beta/2.1/beta-2.1.jar": jars["org.example:beta:2.1"]}
    httpd = _repo_server(files)
    try:
        empty_bin = tmp_path / "bin"
        empty_bin.mkdir()
        monkeypatch.setenv("PATH", str(empty_bin))  # no mvn
        monkeypatch.setenv("MFU_CACHE_DIR", str(tmp_path / "cache"))
        monkeypatch.setenv("MFU_MAVEN_REPO", f"http://127.0.0.1:{httpd.server_address[1]}/m2")
        lock = _lock_of(tmp_path, jars)
        monkeypatch.setattr(kafka, "lock_path", lambda version="": lock)
        lines: list[str] = []
        libs = kafka.provision(lines.append, version="0.0-test")
        assert "mvn not found" in lines[0] and "/m2" in lines[0]
        assert sorted(p.name for p in libs.glob("*.jar")) == ["alpha-1.0.jar", "beta-2.1.jar"]
        assert (libs / "beta-2.1.jar").read_bytes() == b"beta" * 100
        # a jar that does not match the lock file is refused and nothing is cached
        monkeypatch.setenv("MFU_CACHE_DIR", str(tmp_path / "cache2"))
        lock = _lock_of(tmp_path, jars, corrupt="org.example:beta:2.1")
        with pytest.raises(kafka.KafkaError, match="sha256 mismatch"):
            kafka.provision(lambda _l: None, version="0.0-test")
        assert not (tmp_path / "cache2" / "kafka" / "0.0-test" / "libs").exists()
    finally:
        httpd.shutdown()
        httpd.server_close()
