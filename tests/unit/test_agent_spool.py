"""On-disk spool: FIFO order, size bound (drop oldest, counted), restart, torn writes."""

from __future__ import annotations

from pathlib import Path

from agents.spool import Record, Spool


def drain_all(spool: Spool) -> list[Record]:
    out = []
    while (head := spool.head()) is not None:
        seg, records = head
        out.extend(records)
        spool.remove(seg)
    return out


def test_fifo_across_segments(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=300)
    for i in range(50):
        spool.append("t", b"n1", f"value-{i}".encode() * 5, events=i % 3 + 1)
    assert len(spool) == 50 and bool(spool)
    assert spool.events == sum(i % 3 + 1 for i in range(50))
    assert len(list(tmp_path.glob("*.seg"))) > 5
    values = [r.value for r in drain_all(spool)]
    assert values == [f"value-{i}".encode() * 5 for i in range(50)]
    assert not spool and spool.bytes == 0 and list(tmp_path.glob("*.seg")) == []


def test_head_is_stable_until_removed_and_appends_go_behind(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 16)
    spool.append("t", b"k", b"a")
    seg, first = spool.head()
    spool.append("t", b"k", b"b")  # the head segment was sealed: this starts a new one
    assert spool.head() == (seg, first)
    spool.remove(seg)
    assert [r.value for r in drain_all(spool)] == [b"b"]


def test_full_spool_drops_oldest_and_counts(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=4000, segment_bytes=1000)
    value = b"x" * 180
    for i in range(100):
        spool.append("t", b"k", value + str(i).encode(), events=2)
        assert spool.bytes <= 4000
    kept = drain_all(spool)
    dropped_records = spool.stats["dropped_records"]
    assert dropped_records > 0
    assert dropped_records + len(kept) == 100
    assert spool.stats["dropped_events"] == 2 * dropped_records
    # what survives is the newest, still in order
    assert [r.value for r in kept] == [value + str(i).encode()
                                       for i in range(100 - len(kept), 100)]


def test_record_larger_than_the_spool_is_dropped_and_counted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1000)
    spool.append("t", b"k", b"y" * 5000, events=7)
    assert len(spool) == 0
    assert spool.stats["dropped_events"] == 7


def test_survives_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=200)
    for i in range(20):
        spool.append("mfu.telemetry.v1", b"node-1", f"v{i}".encode(), events=3)
    spool.close()
    again = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=200)
    assert len(again) == 20 and again.events == 60
    again.append("mfu.flops.v1", b"node-1", b"after")
    records = drain_all(again)
    assert [r.value for r in records] == [f"v{i}".encode() for i in range(20)] + [b"after"]
    assert records[0] == Record("mfu.telemetry.v1", b"node-1", b"v0", 3)


def test_torn_tail_is_cut_and_counted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for i in range(3):
        spool.append("t", b"k", f"v{i}".encode())
    spool.close()
    [seg] = tmp_path.glob("*.seg")
    data = seg.read_bytes()
    seg.write_bytes(data[:-3])  # crash mid-write of the last record
    again = Spool(tmp_path, max_bytes=1 << 20)
    assert again.stats["corrupt_records"] == 1
    assert [r.value for r in drain_all(again)] == [b"v0", b"v1"]
