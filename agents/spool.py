"""Bounded on-disk FIFO of Kafka messages for when the broker cannot be reached.

Messages are appended to segment files (``<seq>.seg``) in one directory; the publisher
takes the oldest whole segment (:meth:`Spool.head`), produces it, and removes it
(:meth:`Spool.remove`) only after every message in it was acknowledged. The total size
is bounded by ``max_bytes``: when an append would pass it, the oldest segments are
deleted and their messages and events counted in ``stats`` (``dropped_records``,
``dropped_events``) and logged; nothing is dropped silently.

Record layout (little endian): ``crc32 u32 | value_len u32 | events u32 | topic_len u16 |
key_len u16`` then topic, key, value; the CRC covers everything after itself. A torn or
corrupt record (crash mid-write) ends the segment's readable part and is counted
(``corrupt_records``). Appends are flushed to the OS at once and fsynced when a
segment is sealed or the spool closed: the spool rides out a broker outage and an agent
restart, not a power cut mid-segment.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import zlib
from collections import Counter, OrderedDict
from pathlib import Path
from typing import BinaryIO, NamedTuple

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<IIIHH")
_SUFFIX = ".seg"


class Record(NamedTuple):
    """One spooled Kafka message; ``events`` is how many events its value carries."""

    topic: str
    key: bytes
    value: bytes
    events: int


class _Segment:
    __slots__ = ("bytes", "events", "records")

    def __init__(self) -> None:
        self.bytes = 0
        self.records = 0
        self.events = 0


def _encode(record: Record) -> bytes:
    topic = record.topic.encode()
    body = _HEADER.pack(0, len(record.value), record.events, len(topic), len(record.key))[4:]
    payload = body + topic + record.key + record.value
    return struct.pack("<I", zlib.crc32(payload)) + payload


def _decode_all(data: bytes) -> tuple[list[Record], bool]:
    """Records in ``data`` and whether it ended cleanly (False: torn/corrupt tail)."""
    out = []
    pos = 0
    size = len(data)
    while pos < size:
        if pos + _HEADER.size > size:
            return out, False
        crc, vlen, events, tlen, klen = _HEADER.unpack_from(data, pos)
        end = pos + _HEADER.size + tlen + klen + vlen
        if end > size or zlib.crc32(data[pos + 4:end]) != crc:
            return out, False
        p = pos + _HEADER.size
        topic = data[p:p + tlen].decode()
        key = data[p + tlen:p + tlen + klen]
        value = data[p + tlen + klen:end]
        out.append(Record(topic, key, value, events))
        pos = end
    return out, True


class Spool:
    """Segment-file FIFO bounded to ``max_bytes`` (bytes on disk, all segments).

    ``segment_bytes``: a segment is sealed once it reaches this size (clamped to a
    quarter of ``max_bytes`` so dropping one segment frees room without emptying the
    spool). Not thread-safe: the agent calls it from its one publishing thread.
    """

    def __init__(self, directory: str | Path, *, max_bytes: int = 256 << 20,
                 segment_bytes: int = 4 << 20) -> None:
        if max_bytes <= 0:
            raise ValueError("spool max_bytes must be positive")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = max(1, min(segment_bytes, max_bytes // 4))
        self.stats: Counter[str] = Counter()
        self._segments: OrderedDict[int, _Segment] = OrderedDict()
        self._open_id: int | None = None
        self._file: BinaryIO | None = None
        self._bytes = 0
        self._load()

    # -- state -------------------------------------------------------------------------
    def _path(self, seg_id: int) -> Path:
        return self.directory / f"{seg_id:016d}{_SUFFIX}"

    def _load(self) -> None:
        """Index segments left by an earlier run (counting their records)."""
        for path in sorted(self.directory.glob("*" + _SUFFIX)):
            try:
                seg_id = int(path.stem)
            except ValueError:
                continue
            records, clean = _decode_all(path.read_bytes())
            if not clean:
                self.stats["corrupt_records"] += 1
            seg = _Segment()
            seg.bytes = path.stat().st_size
            seg.records = len(records)
            seg.events = sum(r.events for r in records)
            self._segments[seg_id] = seg
            self._bytes += seg.bytes
        if self._segments:
            log.info("spool_loaded dir=%s segments=%d records=%d bytes=%d", self.directory,
                     len(self._segments), self.records, self._bytes)

    @property
    def bytes(self) -> int:
        """Bytes on disk in all segments."""
        return self._bytes

    @property
    def records(self) -> int:
        return sum(s.records for s in self._segments.values())

    @property
    def events(self) -> int:
        return sum(s.events for s in self._segments.values())

    def __len__(self) -> int:
        return self.records

    def __bool__(self) -> bool:
        return any(s.records for s in self._segments.values())

    # -- writing -----------------------------------------------------------------------
    def append(self, topic: str, key: bytes, value: bytes, events: int = 1) -> None:
        """Add one message at the tail, dropping the oldest segments if over the bound."""
        data = _encode(Record(topic, key, value, events))
        if len(data) > self.max_bytes:
            self._count_drop(1, events, "record larger than the whole spool")
            return
        while self._bytes + len(data) > self.max_bytes and self._segments:
            self._drop_oldest()
        if self._file is None or self._segments[self._open_id].bytes >= self.segment_bytes:
            self._roll()
        assert self._file is not None and self._open_id is not None
        self._file.write(data)
        self._file.flush()
        seg = self._segments[self._open_id]
        seg.bytes += len(data)
        seg.records += 1
        seg.events += events
        self._bytes += len(data)
        self.stats["spooled_records"] += 1
        self.stats["spooled_events"] += events

    def _roll(self) -> None:
        self._seal()
        seg_id = (next(reversed(self._segments)) + 1) if self._segments else 1
        self._file = open(self._path(seg_id), "ab")  # noqa: SIM115 (lives across calls)
        self._open_id = seg_id
        self._segments[seg_id] = _Segment()

    def _seal(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            self._open_id = None

    def _drop_oldest(self) -> None:
        seg_id, seg = next(iter(self._segments.items()))
        if seg_id == self._open_id:
            self._seal()
        self._delete(seg_id)
        self._count_drop(seg.records, seg.events, "spool full")

    def _count_drop(self, records: int, events: int, why: str) -> None:
        self.stats["dropped_records"] += records
        self.stats["dropped_events"] += events
        log.warning("spool_dropped reason=%r records=%d events=%d dir=%s", why, records,
                    events, self.directory)

    def _delete(self, seg_id: int) -> None:
        seg = self._segments.pop(seg_id, None)
        if seg is None:
            return
        self._bytes -= seg.bytes
        with contextlib.suppress(FileNotFoundError):
            self._path(seg_id).unlink()

    # -- draining ----------------------------------------------------------------------
    def head(self) -> tuple[int, list[Record]] | None:
        """The oldest segment's id and records (sealing it if it is still open), or None.

        The records stay spooled until :meth:`remove`; reading the same head again
        returns the same records."""
        while self._segments:
            seg_id, seg = next(iter(self._segments.items()))
            if seg.records == 0 and seg_id != self._open_id:
                self._delete(seg_id)
                continue
            if seg.records == 0:
                return None
            if seg_id == self._open_id:
                self._seal()
            records, clean = _decode_all(self._path(seg_id).read_bytes())
            if not clean and len(records) < seg.records:
                self.stats["corrupt_records"] += seg.records - len(records)
            return seg_id, records
        return None

    def remove(self, seg_id: int) -> None:
        """Delete a segment whose messages were all delivered (no-op if already gone)."""
        self._delete(seg_id)

    def close(self) -> None:
        self._seal()
