"""Micro-benchmark: microseconds per event to decode ``batch/1`` input values.

    PYTHONPATH=. python bench/decode_bench.py [--repeat 5] [--number 2000]

Decoders, on the values ``mfu bench streams`` sends (8 GPUs per node; one interval per
message and ``--envelope-s`` 5 and 10):

- ``parse_events``: the reference, ``json.loads`` + pydantic ``model_validate`` per event;
- ``pydantic validate_json``: :func:`streams.decode.validate_json_events` (the previous
  worker path), one
  pydantic-core call per value;
- ``msgspec``: :func:`streams.fastdecode.decode`, one msgspec call per value plus the
  pydantic objects built without re-validation;
- ``msgspec structs``: :func:`streams.fastdecode.decode_structs`, the checked Structs
  (what the node stage could consume after the runtime rewrite).

Prints the best of ``--repeat`` runs of ``--number`` decodes each (least disturbed by
the other processes of a shared machine).
"""

from __future__ import annotations

import argparse
import timeit

from bench.streams import report_batch, sample_batch
from mfu.events import FlopReport, GpuSample, parse_events
from streams import decode as pydantic_decode
from streams import fastdecode

T = 1_700_000_010.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--number", type=int, default=2000)
    args = parser.parse_args(argv)
    decoders = {"parse_events (reference)": parse_events,
                "pydantic validate_json": pydantic_decode.validate_json_events,
                "msgspec (fastdecode)": fastdecode.decode,
                "msgspec structs": fastdecode.decode_structs}
    print(f"{'value':<28} {'decoder':<26} {'us/event':>9}")
    for envelope_s in (1, 5, 10):
        values = {
            GpuSample: sample_batch("node-00001", T, "s", envelope_s),
            FlopReport: report_batch("node-00001", T, 3.9e14, "r", envelope_s),
        }
        for model, raw in values.items():
            want = parse_events(raw, model)
            events = len(want[0])
            for name, fn in decoders.items():
                got, bad = fn(raw, model)  # same result, or the timing is moot
                assert [fastdecode.to_model(e) for e in got] == want[0] and bad == want[1]
                best = min(timeit.repeat(lambda fn=fn, raw=raw, model=model: fn(raw, model),
                                         repeat=args.repeat, number=args.number))
                label = f"{model.SCHEMA} x{events} ({envelope_s} s)"
                print(f"{label:<28} {name:<26} {best / args.number / events * 1e6:>9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
