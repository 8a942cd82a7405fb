"""`provision()` fetches the locked Kafka jars through Maven itself, for real.

Into a temporary cache and a temporary local Maven repository (so it really downloads,
~45 MB from the Maven repositories this machine's Maven is configured with), then every
jar is checked against devenv/kafka-4.1.1.sha256. The shared running broker is untouched.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from devenv import kafka

pytestmark = pytest.mark.integration


def test_provision_through_maven_into_a_fresh_cache(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    assert shutil.which("mvn"), "mvn is needed for this test (apt-get install maven)"
    monkeypatch.setenv("MFU_CACHE_DIR", str(tmp_path / "cache"))
    # A direct download would need this host: make sure the Maven path is the one taken.
    monkeypatch.setenv("MFU_MAVEN_REPO", "http://127.0.0.1:9/not-used")
    lines: list[str] = []
    libs = kafka.provision(lines.append, maven_repo_local=tmp_path / "m2")
    assert libs == tmp_path / "cache" / "kafka" / kafka.KAFKA_VERSION / "libs"
    assert any("with mvn" in line for line in lines), lines
    jars = kafka.read_lock()
    names = sorted(p.name for p in libs.glob("*.jar"))
    assert names == sorted(j.filename for j in jars)
    for jar in jars:
        assert hashlib.sha256((libs / jar.filename).read_bytes()).hexdigest() == jar.sha256
    # The local Maven repository was used (a user's ~/.m2 is reused the same way).
    assert (tmp_path / "m2" / "org" / "apache" / "kafka" / "kafka_2.13" / "4.1.1").is_dir()
    # Second call: cached, no mvn run.
    again: list[str] = []
    assert kafka.provision(again.append, maven_repo_local=tmp_path / "m2") == libs
    assert again == []


def test_user_settings_mirror_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's ~/.m2/settings.xml mirror is what Maven uses: one that does not answer
    makes provisioning fail, and the error says what to check, with mvn's words."""
    home = tmp_path / "home"
    (home / ".m2").mkdir(parents=True)
    (home / ".m2" / "settings.xml").write_text(
        "<settings><mirrors><mirror><id>dead-mirror</id><mirrorOf>*</mirrorOf>"
        "<url>http://127.0.0.1:9/maven2</url></mirror></mirrors></settings>"
    )
    monkeypatch.setenv("MFU_CACHE_DIR", str(tmp_path / "cache"))
    # Maven finds ~/.m2 through the JVM's user.home.
    monkeypatch.setenv("MAVEN_OPTS", f"-Duser.home={home}")
    with pytest.raises(kafka.KafkaError, match=r"settings\.xml") as info:
        kafka.provision(lambda _line: None, maven_repo_local=tmp_path / "empty-m2")
    assert "dead-mirror" in str(info.value) or "127.0.0.1:9" in str(info.value)
    assert not (tmp_path / "cache" / "kafka" / kafka.KAFKA_VERSION / "libs").exists()


def test_kafka_storage_formats_with_a_redrawn_id(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The real StorageTool accepts the id drawn instead of one starting with '-'."""
    draws = [bytes([0xF8]) + bytes(15), bytes([0x10]) + bytes(range(1, 16))]
    cluster_id = kafka.new_cluster_id(lambda n: draws.pop(0))
    assert not cluster_id.startswith("-")
    libs = kafka.provision(lambda _line: None)  # the shared cache: already provisioned
    broker = kafka.LocalKafka(libs, tmp_path / "kafka")
    broker.data_dir.mkdir(parents=True)
    broker._choose_ports()
    broker._write_config()
    java = kafka.find_java()
    jvm = [str(java), "-Xmx256m", "-cp", f"{libs}/*"]
    monkeypatch.setattr(kafka, "new_cluster_id", lambda: cluster_id)
    broker._format(jvm)
    meta = (broker.log_dirs / "meta.properties").read_text()
    assert f"cluster.id={cluster_id}" in meta
