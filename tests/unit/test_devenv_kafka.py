"""devenv.kafka provisioning pieces that need no network: cluster ids and the Maven pom."""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET

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
