"""Per-partition event-time state machines for the two stream stages (pure, no I/O).

The Faust adapter (:mod:`streams.app`) feeds each input partition's events to one
:class:`NodeStage` (inputs keyed by node) or :class:`RollupStage` (partials keyed by
workload / fleet) and performs the effects these return. Keeping this free of Faust lets
the window semantics be tested exactly, event by event.

Event-time rules (DESIGN.md §5):

- The watermark of a partition is, per input topic, the highest event time seen (a
  sample's ``ts``, a report's ``end``), and the minimum of those over the topics that are
  not idle (Flink's rule for operators with several inputs: telemetry racing ahead of
  FLOP reports must not close windows the reports still belong to). Window ``[ws, ws + size)`` closes, once, when the watermark reaches
  ``ws + size + grace``. ``closed_through`` then moves past it: a later piece of an event
  that falls in a closed window is *late*: counted in ``late_events`` of that key's next
  result and routed to the late topic, never silently dropped.
- Recovery replays input from the committed offset (offsets are committed only once every
  window an event touched is closed and written). ``Progress`` (closed_through, watermark
  and the highest offset seen at the last close) is persisted per partition, so replayed
  pieces of already-closed windows are skipped instead of re-opening those windows.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mfu.config import WindowSettings
from mfu.events import FlopReport, GpuSample, MfuWindow
from mfu.windows import split_interval
from streams.aggregate import Marker, NodeWindow, Partial, RollupWindow

NEG_INF = -math.inf


class Progress(BaseModel):
    """What must survive a restart of one partition's stage (a few numbers)."""

    model_config = ConfigDict(ser_json_inf_nan="constants")

    closed_through: float = NEG_INF  # every window starting before this is closed
    watermarks: dict[str, float] = Field(default_factory=dict)  # input topic -> event time
    offsets: dict[str, int] = Field(default_factory=dict)  # topic -> highest offset seen
    sources: dict[int, float] = Field(default_factory=dict)  # roll-up: src -> closed_through
    idle: list[int] = Field(default_factory=list)  # roll-up: idle sources
    # Late events counted but not yet reported in a record: (scope, key, count). Kept
    # here so that a message carrying late events can be committed once this is
    # persisted, and a crash does not lose its count.
    late: list[tuple[str, str, int]] = Field(default_factory=list)


@dataclass
class Disposition:
    """What became of one input event."""

    max_window: float | None = None  # last window it counts in (ack once that closes)
    late: bool = False  # some piece fell in a closed window
    duplicate: bool = False
    skipped_replay: bool = False


@dataclass
class Closed:
    """One closed window: final records to publish and partials to re-key."""

    window_start: float
    records: list[MfuWindow] = field(default_factory=list)
    partials: list[Partial] = field(default_factory=list)


class _Base:
    def __init__(self, settings: WindowSettings, fleet: str, progress: Progress | None) -> None:
        self.size_s = settings.size_s
        self.hop_s = settings.hop_s
        self.step_s = settings.hop_s or settings.size_s
        self.grace_s = settings.grace_s
        self.fleet = fleet
        self.progress = progress.model_copy(deep=True) if progress else Progress()
        self.replay_offsets = dict(self.progress.offsets)  # offsets at the last durable close
        self.max_offsets: dict[str, int] = dict(self.progress.offsets)
        self.pending_late: Counter[tuple[str, str]] = Counter(
            {(scope, key): n for scope, key, n in self.progress.late})
        self.last_input_wall = 0.0

    def _seen_offset(self, topic: str, offset: int | None) -> bool:
        """True if this offset was processed before the last durable close (a replay)."""
        if offset is None:
            return False
        replayed = offset <= self.replay_offsets.get(topic, -1)
        if offset > self.max_offsets.get(topic, -1):
            self.max_offsets[topic] = offset
        return replayed

    def _is_closed(self, ws: float) -> bool:
        return ws < self.progress.closed_through

    def _mark_closed(self, ws: float) -> None:
        self.progress.closed_through = max(self.progress.closed_through, ws + self.step_s)

    def snapshot(self) -> Progress:
        """Progress to persist after a close (before acking its inputs)."""
        p = self.progress.model_copy(deep=True)
        p.offsets = dict(self.max_offsets)
        p.late = [(scope, key, n) for (scope, key), n in sorted(self.pending_late.items())]
        self.replay_offsets = dict(self.max_offsets)
        return p


class NodeStage(_Base):
    """Windows of one input partition (all telemetry and FLOP reports of its nodes).

    ``inputs`` names the input topics; one that sent nothing for ``idle_timeout_s`` of
    wall-clock time (``now``, monotonic seconds) stops holding the watermark back.
    """

    def __init__(
        self,
        settings: WindowSettings,
        fleet: str = "default",
        progress: Progress | None = None,
        *,
        inputs: tuple[str, ...] = ("",),
        now: float = 0.0,
    ) -> None:
        super().__init__(settings, fleet, progress)
        self.open: dict[float, dict[str, NodeWindow]] = {}
        self.registry: dict[str, tuple[str, str | None]] = {}  # gpu_uuid -> (name, mig)
        self.inputs = inputs
        self.idle_timeout_s = settings.idle_timeout_s
        self.last_seen: dict[str, float] = dict.fromkeys(inputs, now)

    def watermark(self, now: float | None = None, backlog: frozenset[str] = frozenset()) -> float:
        """Event time up to which every active input has advanced. An input with a
        ``backlog`` (unprocessed data waiting at the broker) counts as active however long
        it has been silent here: a slow consumer is not a quiet producer."""
        wms = self.progress.watermarks
        active = [
            wms.get(t, NEG_INF)
            for t in self.inputs
            if now is None or t in backlog
            or now - self.last_seen.get(t, NEG_INF) < self.idle_timeout_s
        ]
        if not active:
            return max(wms.values(), default=NEG_INF)
        return min(active)

    def add(
        self,
        event: GpuSample | FlopReport,
        *,
        topic: str = "",
        offset: int | None = None,
        now: float | None = None,
    ) -> Disposition:
        """Account one valid event from input ``topic``."""
        replay = self._seen_offset(topic, offset)
        if now is not None:
            self._touch(topic, now)
        d = Disposition()
        sample = isinstance(event, GpuSample)
        end = self._place(event, sample, replay, d)
        if d.late:
            self._count_late(event, sample)
        if end > self.progress.watermarks.get(topic, NEG_INF):
            self.progress.watermarks[topic] = end
        return d

    def add_many(
        self,
        events: list[GpuSample] | list[FlopReport],
        *,
        topic: str = "",
        offset: int | None = None,
        now: float | None = None,
        is_sample: bool | None = None,
    ) -> tuple[float | None, list[GpuSample | FlopReport], int]:
        """Account the valid events of one input message (all of one type, from
        ``topic``): the same as :meth:`add` on each, with the per-message work done once.

        ``is_sample`` says the events' type (GPU samples or FLOP reports) once for the
        message; the events may then be any objects with the models' attributes (the
        checked Structs of :func:`streams.fastdecode.decode_structs`). None: each event's
        type is taken from ``isinstance(event, GpuSample)``.

        Returns the last window any of them counts in, the late ones (as given: convert
        with :func:`streams.fastdecode.to_model` before serializing), and how many were
        duplicates.
        """
        replay = self._seen_offset(topic, offset)
        if now is not None:
            self._touch(topic, now)
        max_window: float | None = None
        late: list[GpuSample | FlopReport] = []
        duplicates = 0
        wm = self.progress.watermarks.get(topic, NEG_INF)
        place = self._place
        d = Disposition()
        # Fast path (tumbling windows, event inside one window: nearly every event) inlined,
        # the same arithmetic and bookkeeping as _place; anything else goes through _place.
        tumbling = self.hop_s is None
        size = self.size_s
        closed_through = self.progress.closed_through  # no window closes during this call
        open_ = self.open
        registry = self.registry
        floor = math.floor
        per_event = is_sample is None
        sample = bool(is_sample)
        last_ws: float | None = None
        last_node: str | None = None
        w: NodeWindow | None = None
        seen: set[str] = set()
        for event in events:
            if per_event:
                sample = isinstance(event, GpuSample)
            if sample:
                end = event.ts  # type: ignore[union-attr]
                start = end - event.interval_s  # type: ignore[union-attr]
            else:
                start, end = event.start, event.end  # type: ignore[union-attr]
            if tumbling and end > start:
                ws = float(floor((start - size) / size + 1) * size)
                if ws + size >= end:
                    if sample:
                        registry[event.gpu_uuid] = (event.gpu_name, event.mig_profile)  # type: ignore[union-attr]
                    # min(end, ws + size) - max(start, ws), with ws + size >= end here
                    overlap = end - (start if start > ws else ws)
                    if overlap > 0:
                        if ws < closed_through:
                            if not replay:
                                late.append(event)
                                self._count_late(event, sample)
                        else:
                            node = event.node
                            # A message's events are mostly one node's, in one window.
                            if ws != last_ws or node != last_node:
                                nodes = open_.get(ws)
                                if nodes is None:
                                    nodes = open_[ws] = {}
                                w = nodes.get(node)
                                if w is None:
                                    w = nodes[node] = NodeWindow(node, ws, ws + size)
                                last_ws, last_node, seen = ws, node, w.seen
                            event_id = event.event_id
                            if event_id in seen:
                                # Counted in this window's ``duplicates``: the message
                                # waits for this window like any other.
                                w.duplicates += 1
                                duplicates += 1
                                if max_window is None or ws > max_window:
                                    max_window = ws
                            else:
                                seen.add(event_id)
                                if sample:
                                    w.add_sample(event, overlap)  # type: ignore[arg-type]
                                else:
                                    w.add_report(event, overlap, overlap / (end - start))  # type: ignore[arg-type]
                                if max_window is None or ws > max_window:
                                    max_window = ws
                    if end > wm:
                        wm = end
                    continue
            d.max_window, d.late, d.duplicate, d.skipped_replay = None, False, False, False
            end = place(event, sample, replay, d)
            if d.max_window is not None and (max_window is None or d.max_window > max_window):
                max_window = d.max_window
            if d.late:
                late.append(event)
                self._count_late(event, sample)
            if d.duplicate:
                duplicates += 1
            if end > wm:
                wm = end
        if events:
            self.progress.watermarks[topic] = wm
        return max_window, late, duplicates

    def _touch(self, topic: str, now: float) -> None:
        if now - self.last_seen.get(topic, NEG_INF) >= self.idle_timeout_s:
            # This input resumes after a quiet spell: give the others a fresh timeout to
            # resume too before they stop counting, or it would race ahead of them.
            for t in self.inputs:
                self.last_seen[t] = max(self.last_seen.get(t, NEG_INF), now)
        self.last_seen[topic] = now

    def _count_late(self, event: GpuSample | FlopReport, sample: bool) -> None:
        self.pending_late[("node", event.node)] += 1
        if not sample:
            self.pending_late[("workload", event.workload)] += 1  # type: ignore[union-attr]

    def _place(self, event: GpuSample | FlopReport, sample: bool, replay: bool,
               d: Disposition) -> float:
        """Add ``event``'s pieces to their windows, recording what happened in ``d``.
        Returns the event's end time (its contribution to the watermark)."""
        if sample:
            end = event.ts  # type: ignore[union-attr]
            start = end - event.interval_s  # type: ignore[union-attr]
            self.registry[event.gpu_uuid] = (event.gpu_name, event.mig_profile)  # type: ignore[union-attr]
        else:
            start, end = event.start, event.end  # type: ignore[union-attr]
        size = self.size_s
        pieces: Any
        if self.hop_s is None and end > start:
            # Tumbling windows: most events lie in one window. Same arithmetic as
            # split_interval's first window, without the generator.
            first = float(math.floor((start - size) / size + 1) * size)
            if first + size >= end:
                overlap = min(end, first + size) - max(start, first)
                pieces = ((first, overlap, overlap / (end - start)),) if overlap > 0 else ()
            else:
                pieces = split_interval(start, end, size, None)
        else:
            pieces = split_interval(start, end, size, self.hop_s)
        first_piece = True
        closed_through = self.progress.closed_through
        for ws, overlap_s, fraction in pieces:
            if ws < closed_through:
                if replay:
                    d.skipped_replay = True
                else:
                    d.late = True
                continue
            nodes = self.open.get(ws)
            if nodes is None:
                nodes = self.open[ws] = {}
            w = nodes.get(event.node)
            if w is None:
                w = nodes[event.node] = NodeWindow(event.node, ws, ws + size)
            if event.event_id in w.seen:
                if first_piece:
                    w.duplicates += 1
                    d.duplicate = True
                    d.max_window = ws if d.max_window is None else max(d.max_window, ws)
                first_piece = False
                continue
            first_piece = False
            w.seen.add(event.event_id)
            if sample:
                w.add_sample(event, overlap_s)  # type: ignore[arg-type]
            else:
                w.add_report(event, overlap_s, fraction)  # type: ignore[arg-type]
            d.max_window = ws if d.max_window is None else max(d.max_window, ws)
        return end

    def due(self, now: float | None = None, backlog: frozenset[str] = frozenset()) -> list[float]:
        """Open windows the watermark has passed (end + grace), oldest first."""
        wm = self.watermark(now, backlog)
        return sorted(ws for ws in self.open if ws + self.size_s + self.grace_s <= wm)

    def close(self, ws: float) -> Closed:
        """Close window ``ws``: final node records and partials for the roll-up."""
        out = Closed(ws)
        for node, w in sorted(self.open.pop(ws, {}).items()):
            w.late_events = self.pending_late.pop(("node", node), 0)
            rec, partials = w.close(self.fleet, self.registry)
            out.records.append(rec)
            for p in partials:
                if p.scope == "workload":
                    p.late_events += self.pending_late.pop(("workload", p.key), 0)
            out.partials.extend(partials)
        self._mark_closed(ws)
        return out

    def flush_idle(self) -> list[float]:
        """Windows to close because input stopped: all open ones (the watermark jumps past
        them, so events for them arriving later are late)."""
        wins = sorted(self.open)
        if wins:
            jump = wins[-1] + self.size_s + self.grace_s
            for t in self.inputs:
                self.progress.watermarks[t] = max(self.progress.watermarks.get(t, NEG_INF), jump)
        return wins


class RollupStage(_Base):
    """Merges node partials per workload and fleet; closes a window once every node-stage
    partition (``sources``) has closed it, ignoring sources that declared themselves idle."""

    def __init__(
        self,
        settings: WindowSettings,
        sources: int,
        fleet: str = "default",
        progress: Progress | None = None,
    ) -> None:
        super().__init__(settings, fleet, progress)
        self.n_sources = sources
        self.open: dict[float, dict[tuple[str, str], RollupWindow]] = {}

    def add_partial(self, p: Partial, *, topic: str = "", offset: int | None = None) -> Disposition:
        replay = self._seen_offset(topic, offset)
        d = Disposition()
        ws = p.window_start
        if self._is_closed(ws):
            if replay:
                d.skipped_replay = True
            else:
                d.late = True
                self.pending_late[(p.scope, p.key)] += 1
            return d
        wins = self.open.setdefault(ws, {})
        k = (p.scope, p.key)
        rw = wins.get(k)
        if rw is None:
            wins[k] = RollupWindow.start(p)
        elif not rw.add(p):
            d.duplicate = True
        d.max_window = ws
        return d

    def add_marker(self, m: Marker, *, topic: str = "", offset: int | None = None) -> None:
        self._seen_offset(topic, offset)
        prev = self.progress.sources.get(m.src, NEG_INF)
        self.progress.sources[m.src] = max(prev, m.closed_through)
        idle = set(self.progress.idle)
        if m.idle:
            idle.add(m.src)
        else:
            idle.discard(m.src)
        self.progress.idle = sorted(idle)

    def low_watermark(self) -> float:
        """Every source has closed all windows starting before this time."""
        if len(self.progress.sources) < self.n_sources:
            return NEG_INF  # not every source has reported yet: wait
        active = [t for s, t in self.progress.sources.items() if s not in self.progress.idle]
        if not active:
            return math.inf
        return min(active)

    def due(self) -> list[float]:
        lw = self.low_watermark()
        return sorted(ws for ws in self.open if ws < lw)

    def close(self, ws: float) -> Closed:
        out = Closed(ws)
        for (scope, key), rw in sorted(self.open.pop(ws, {}).items()):
            late = self.pending_late.pop((scope, key), 0)
            # A node's partial seen twice (rw.duplicates) is the node stage re-emitting a
            # window after a crash (at-least-once), not a duplicate input event: the first
            # copy counts, and the record is the same as without the crash.
            rec = rw.close(self.fleet, late_events=late)
            out.records.append(rec)
        self._mark_closed(ws)
        return out
