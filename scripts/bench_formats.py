#!/usr/bin/env python3
"""Converts demo events (NDJSON) to the binary formats for `scripts/bench formats`:

    bench_formats.py EVENTS.ndjson OUT_DIR

writes OUT_DIR/events.avro (an object container file, uncompressed, written
by fastavro with fixtures/bench/ride.avsc) and OUT_DIR/events.binpb
(length-delimited demo.v1.Ride messages written by Google's runtime), and
OUT_DIR/rides.pb (the descriptor set, compiled by protoc).
"""
import datetime
import importlib
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main():
    events, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT / "scripts"))
    import proto_events

    proto_events.compile_protos(out)
    sys.path.insert(0, str(out))
    ride_pb2 = importlib.import_module("demo.ride_pb2")
    from google.protobuf.internal.encoder import _VarintBytes
    import fastavro

    schema = fastavro.parse_schema(json.loads((ROOT / "fixtures/bench/ride.avsc").read_text()))

    def records():
        with open(events) as lines:
            for line in lines:
                e = json.loads(line)
                t = e["event_time"]
                if isinstance(t, (int, float)):
                    # Epoch numbers, by magnitude, as sluice reads them.
                    seconds = t if t < 1e11 else t / 1e3 if t < 1e14 else t / 1e6
                    e["event_time"] = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
                else:
                    e["event_time"] = datetime.datetime.fromisoformat(t.replace("Z", "+00:00"))
                yield e

    with open(out / "events.avro", "wb") as avro:
        fastavro.writer(avro, schema, records(), codec="null")
    with open(out / "events.binpb", "wb") as proto:
        for e in records():
            m = ride_pb2.Ride()
            for key in ("event_id", "event_type", "user_id", "ride_id"):
                setattr(m, key, e[key])
            micros = int(e["event_time"].timestamp() * 1_000_000)
            m.event_time.seconds, m.event_time.nanos = divmod(micros, 1_000_000)
            m.event_time.nanos *= 1000
            for key in ("driver_id", "city", "fare_amount", "currency", "distance_km",
                        "surge_multiplier", "payment_method", "rating"):
                if e[key] is not None:
                    setattr(m, key, e[key])
            for key in ("pickup", "dropoff"):
                if e[key] is not None:
                    getattr(m, key).lat = e[key]["lat"]
                    getattr(m, key).lon = e[key]["lon"]
            m.tags.extend(e["tags"])
            data = m.SerializeToString()
            proto.write(_VarintBytes(len(data)))
            proto.write(data)


if __name__ == "__main__":
    main()
