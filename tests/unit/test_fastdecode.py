"""streams.fastdecode against the reference mfu.events.parse_events: the same accepted
events (equal objects, equal JSON) and the same dead letters on valid and mutated
input, plus proof that valid batches take the msgspec path (no fallback)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import streams.fastdecode as fd
from mfu.events import FlopReport, GpuSample, parse_events

T = 1_700_000_000.0

SAMPLE = {
    "schema": "gpu_sample/1", "event_id": "s-1", "node": "n1", "gpu_uuid": "GPU-1",
    "gpu_index": 3, "gpu_name": "NVIDIA H100 80GB HBM3", "mig_profile": None, "ts": T + 1,
    "interval_s": 1.0, "sm_util": 0.9, "mem_util": 0.4, "tensor_active": 0.4,
    "sm_clock_mhz": 1980, "max_sm_clock_mhz": 1980, "power_w": 690.0,
    "mem_used_bytes": 70_000_000_000, "mem_total_bytes": 80_000_000_000,
    "throttle_reasons": 0, "workloads": ["job-1"], "energy_j": 690.0,
    "energy_source": "counter", "dram_active": 0.3, "fp16_active": 0.2,
    "fp32_active": 0.1, "fp64_active": 0.0, "tenants": {"job-1": "team-a"},
}
REPORT = {
    "schema": "flop_report/1", "event_id": "r-1", "workload": "job-1", "rank": 0,
    "node": "n1", "gpu_uuid": "GPU-1", "start": T, "end": T + 1, "flops": 3.9e14,
    "precision": "bf16", "tokens": 160.0, "hardware_flops": 4.0e14, "expected_mfu": 0.5,
    "model": "llama", "batch_size": 8, "seq_len": 4096,
    "parallelism": {"tp": 8, "pp": 1, "dp": 2, "cp": 1, "ep": 1}, "phase": "train",
    "bytes": 1e12, "source": "sdk",
}

# Values each field may be mutated to: valid ones, boundaries on both sides, and every
# kind of wrong type (numeric strings, bools, floats for ints, non-finite, nested).
NUMBERS = [0, 1, -1, 0.0, -0.0, 0.5, 1.0, 1.0000001, 2, 1023, 1024, 3600, 3600.0001, 1e9,
           1e9 + 1, 1e10, 9.99e9, T, T + 1, T + 3601, 1e17, 1.1e17, 1e300, 2**63, 2**64,
           10**30, math.nan, math.inf, -math.inf, True, False, "1", "1.5", "1700000000",
           "nan", None, [], {}, [1], "x"]
STRINGS = ["", "a", "x" * 256, "x" * 257, "é" * 256, "\u2028", None, 1, True, ["a"], {"a": 1}]
LITERALS = ["bf16", "fp8", "BF16", "counter", "power", "train", "engine", "sdk",
            "gpu_sample/1", "flop_report/1", "batch/1", None, 1]
ANY = NUMBERS + STRINGS + LITERALS + [
    ["job-1", "job-2"], ["x"] * 65, [""], {"w": "t"}, {"": "t"}, {"w": ""},
    {f"w{i}": "t" for i in range(65)}, {"tp": 2}, {"tp": 0}, {"tp": 1.0}, {"tp": "2"},
    {"tp": 2, "extra": 1}, [None]]
MISSING = object()


def _mutated(base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    keys = [*base, "extra_field"]
    change = st.tuples(st.sampled_from(keys), st.sampled_from([MISSING, *ANY]))

    def apply(changes: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(base)
        for k, v in changes:
            if v is MISSING:
                obj.pop(k, None)
            else:
                obj[k] = v
        return obj

    return st.lists(change, max_size=3).map(apply)


def _value(events: list[Any], envelope: str) -> str:
    if envelope == "batch":
        return json.dumps({"schema": "batch/1", "events": events})
    if envelope == "single":
        return json.dumps(events[0] if events else {})
    if envelope == "bad-batch":
        return json.dumps({"schema": "batch/1", "events": {"0": events}})
    return json.dumps(events)[:-1]  # truncated: not valid JSON


def _same(raw: str | bytes, model: type) -> None:
    want = parse_events(raw, model)
    got = fd.decode(raw, model)
    assert got == want
    assert [e.to_json() for e in got[0]] == [e.to_json() for e in want[0]]
    assert [type(e) for e in got[0]] == [type(e) for e in want[0]]
    structs, bad = fd.decode_structs(raw, model)
    assert bad == want[1]
    assert [fd.to_model(e) for e in structs] == want[0]
    for s, w in zip(structs, want[0], strict=True):  # what the node stage reads
        assert (s.start, s.node, s.event_id) == (w.start, w.node, w.event_id)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(_mutated(SAMPLE), min_size=0, max_size=4),
       envelope=st.sampled_from(["batch"] * 6 + ["single", "bad-batch", "truncated"]),
       as_bytes=st.booleans())
def test_samples_decode_exactly_like_the_reference(events, envelope, as_bytes) -> None:
    raw = _value(events, envelope)
    _same(raw.encode() if as_bytes else raw, GpuSample)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(_mutated(REPORT), min_size=0, max_size=4),
       envelope=st.sampled_from(["batch"] * 6 + ["single", "bad-batch", "truncated"]),
       as_bytes=st.booleans())
def test_reports_decode_exactly_like_the_reference(events, envelope, as_bytes) -> None:
    raw = _value(events, envelope)
    _same(raw.encode() if as_bytes else raw, FlopReport)


@settings(max_examples=200, deadline=None)
@given(start=st.floats(min_value=1e9, max_value=1e10, allow_nan=False),
       duration=st.floats(min_value=-10, max_value=4000, allow_nan=False),
       flops=st.floats(min_value=0, max_value=1e21, allow_nan=False),
       hw=st.one_of(st.none(), st.floats(min_value=0, max_value=1e21, allow_nan=False)))
def test_report_cross_field_rules_match(start, duration, flops, hw) -> None:
    """Interval (end > start, <= 3600 s), rate cap (1e17 FLOP/s) and hardware >= model
    FLOPs, at and around their edges."""
    r = dict(REPORT, start=start, end=start + duration, flops=flops, hardware_flops=hw)
    _same(json.dumps({"schema": "batch/1", "events": [r]}), FlopReport)


def test_valid_batches_take_the_fast_path(monkeypatch) -> None:
    """The differential tests would pass trivially if everything fell back."""
    calls = []
    monkeypatch.setattr(fd, "parse_events", lambda *a: calls.append(a))
    samples = [dict(SAMPLE, event_id=f"s-{i}", gpu_index=i) for i in range(8)]
    minimal = {k: SAMPLE[k] for k in ("schema", "event_id", "node", "gpu_uuid", "gpu_index",
                                      "gpu_name", "ts", "interval_s", "sm_util", "mem_util")}
    got, bad = fd.decode(json.dumps({"schema": "batch/1", "events": [*samples, minimal],
                                     "extra": 1}).encode(), GpuSample)
    assert bad == [] and len(got) == 9 and calls == []
    assert got[3] == GpuSample.model_validate(samples[3])
    assert got[8].workloads == [] and got[8].tenants is None
    got, bad = fd.decode(json.dumps({"schema": "batch/1", "events": [REPORT]}), FlopReport)
    assert bad == [] and calls == []
    assert got[0] == FlopReport.model_validate(REPORT)
    assert got[0].parallelism.world_size == 16  # 8 x 1 x 2 x 1


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("ts", "1700000001", "ts: Input should be a valid number"),  # strict: no coercion
    ("gpu_index", 1.0, "gpu_index: Input should be a valid integer"),  # nor a float for an int
    ("ts", 1_700_000_001_000, "ts: Input should be less than 10000000000"),  # ms, not s
    ("sm_util", 1.5, "sm_util: Input should be less than or equal to 1"),
    ("power_w", math.inf, "power_w: Input should be a finite number"),
])
def test_edge_values_give_the_reference_result(field, value, reason) -> None:
    raw = json.dumps({"schema": "batch/1", "events": [dict(SAMPLE, **{field: value})]})
    got, bad = fd.decode(raw, GpuSample)
    assert (got, bad) == parse_events(raw, GpuSample)
    if reason is None:
        assert len(got) == 1 and bad == []
    else:
        assert got == [] and reason in bad[0].reason


def test_structs_have_the_models_fields_in_their_order() -> None:
    """A field added to mfu/events.py must be added to the Struct too (else it would be
    silently dropped on the fast path); the order makes the JSON identical."""
    assert fd._Sample.__struct_fields__ == tuple(GpuSample.model_fields)
    assert fd._Report.__struct_fields__ == tuple(FlopReport.model_fields)
    assert fd._Parallelism.__struct_fields__ == tuple(fd.Parallelism.model_fields)


@pytest.mark.parametrize(("base", "model"), [(SAMPLE, GpuSample), (REPORT, FlopReport)])
def test_every_single_field_mutation_matches(base, model) -> None:
    """Exhaustive over one change at a time: every field (and an extra one) set to every
    palette value or removed; hypothesis above covers combinations."""
    for k in [*base, "extra_field"]:
        for v in [MISSING, *ANY]:
            obj = dict(base)
            if v is MISSING:
                obj.pop(k, None)
            else:
                obj[k] = v
            _same(json.dumps({"schema": "batch/1", "events": [base, obj]}), model)


@pytest.mark.parametrize("raw", [
    b"", b" ", b"null", b"[]", b"{}", b'"batch/1"', b"\xef\xbb\xbf{}",  # BOM
    b'{"schema":"batch/1","events":[]}\x00',
    b'{"schema":"batch/1","events":[]} trailing',
    b'{"schema":"batch/1","events":[{"schema":"gpu_sample/1","node":"\xed\xa0\x80"}]}',
    b'{"schema":"batch/1","events":[]}'.replace(b"events", b"ev\xffents"),  # bad UTF-8
])
def test_odd_bytes_dead_letter_like_the_reference(raw) -> None:
    _same(raw, GpuSample)
    _same(raw, FlopReport)


@pytest.mark.parametrize("value", ["\ud800", "a\x00b", "\U0001F600" * 256,
                                   "\U0001F600" * 257])
def test_unusual_strings_match(value) -> None:
    """Lone surrogates (escaped, and raw in the bytes), NUL, astral characters at the
    256-character limit (pydantic and msgspec both count code points)."""
    obj = {"schema": "batch/1", "events": [dict(SAMPLE, node=value)]}
    _same(json.dumps(obj), GpuSample)
    _same(json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass"), GpuSample)


def test_node_window_gives_the_same_record_from_structs_as_from_models() -> None:
    """decode_structs' claim: the Structs carry everything NodeWindow reads."""
    from streams.aggregate import NodeWindow

    samples = [dict(SAMPLE, event_id=f"s-{i}", ts=T + 1 + i) for i in range(10)]
    reports = [dict(REPORT, event_id=f"r-{i}", start=T + i, end=T + 1 + i) for i in range(10)]
    records = []
    for decoder in (fd.decode, fd.decode_structs):
        w = NodeWindow("n1", T, T + 10)
        for s in decoder(json.dumps({"schema": "batch/1", "events": samples}), GpuSample)[0]:
            w.add_sample(s, 1.0)
        for r in decoder(json.dumps({"schema": "batch/1", "events": reports}), FlopReport)[0]:
            w.add_report(r, 1.0, 1.0)
        rec, partials = w.close("f", {"GPU-1": (SAMPLE["gpu_name"], None)})
        records.append((rec.model_dump(), [p.model_dump() for p in partials]))
    assert records[0] == records[1]
    # 10 reports of 3.9e14 FLOPs over 10 s of one H100 (bf16 dense peak P): MFU 3.9e14 / P
    from mfu.peaks import peak_flops_per_s

    assert records[0][0]["mfu"] == pytest.approx(3.9e14 / peak_flops_per_s(SAMPLE["gpu_name"],
                                                                           "bf16"))


NAME_FIELDS = [(SAMPLE, GpuSample, f) for f in ("event_id", "node", "gpu_uuid", "gpu_name",
                                                 "workloads", "tenants-key", "tenants-value")]
NAME_FIELDS += [(REPORT, FlopReport, f) for f in ("event_id", "workload", "node", "gpu_uuid")]


def _with_name(base: dict[str, Any], field: str, value: str) -> dict[str, Any]:
    if field == "workloads":
        return dict(base, workloads=["ok", value])
    if field == "tenants-key":
        return dict(base, tenants={"ok": "t", value: "t"})
    if field == "tenants-value":
        return dict(base, tenants={"ok": value})
    return dict(base, **{field: value})


@pytest.mark.parametrize(("base", "model", "field"), NAME_FIELDS)
@pytest.mark.parametrize("value", ["a\nb", "a\tb", "a\x00b", "a\x1fb", "a\x7fb", "node\n",
                                   "\x7f"])
def test_control_characters_in_names_are_refused_like_the_reference(base, model, field,
                                                                     value) -> None:
    """The name check is skipped for values without a backslash or DEL byte (no string in
    them can hold a control character); with one, every Name field is checked. A trailing
    newline too (Python's ``$`` would match before it). Escaped and raw (DEL) forms."""
    obj = {"schema": "batch/1", "events": [base, _with_name(base, field, value)]}
    for raw in (json.dumps(obj), json.dumps(obj, ensure_ascii=False).encode()):
        _same(raw, model)
        got, bad = fd.decode(raw, model)
        assert len(got) == 1 and len(bad) == 1
        assert "must not contain control characters" in bad[0].reason


def test_escapes_outside_names_keep_the_fast_path(monkeypatch) -> None:
    """A backslash escape (a quote in ``model``, non-ASCII written as \\u00e9) only turns
    the name check on; clean names still decode without the reference."""
    calls = []
    monkeypatch.setattr(fd, "parse_events", lambda *a: calls.append(a))
    report = dict(REPORT, model='say "hi"', workload="j\u00e9b")
    raw = json.dumps({"schema": "batch/1", "events": [report]})
    assert "\\" in raw
    got, bad = fd.decode(raw, FlopReport)
    assert bad == [] and calls == [] and got[0] == FlopReport.model_validate(report)
    sample = dict(SAMPLE, gpu_name="H\u00e9", tenants={"j\u00e9": "t\u00e9"})
    got, bad = fd.decode(json.dumps({"schema": "batch/1", "events": [sample]}), GpuSample)
    assert bad == [] and calls == [] and got[0] == GpuSample.model_validate(sample)
