#!/usr/bin/env python3
"""Ride events encoded by other people's Avro code, for sluice's tests.

    avro_events.py --registry URL --topic T --version v1 --start 0 --count 500 --out F
    avro_events.py --wire plain --version v1 ... --out F   # bodies only (fastavro)
    avro_events.py --schema v1                             # print a schema

Frames are written to F as a 4-byte big-endian length and the message
bytes. `--wire confluent` (the default) uses confluent-kafka's
AvroSerializer against the registry (auto-registering the schema under
`<topic>-value`); `--wire plain` writes Avro bodies with fastavro's
schemaless writer. Values are a function of the event number n, so the
tests know every row: see `expected()`.
"""

import argparse
import copy
import datetime
import decimal
import io
import json
import struct
import sys

V1 = {
    "type": "record",
    "name": "Ride",
    "namespace": "rides",
    "doc": "A ride event.",
    "fields": [
        {"name": "event_id", "type": "string", "doc": "Unique id of the event"},
        {"name": "user_id", "type": "string", "doc": "The rider"},
        {"name": "event_time", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "ride_date", "type": {"type": "int", "logicalType": "date"}},
        {"name": "fare", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
        {"name": "city", "type": {"type": "enum", "name": "City", "symbols": ["LON", "PAR", "NYC"]}},
        {"name": "pickup", "type": {"type": "record", "name": "Point", "fields": [
            {"name": "lat", "type": "double", "doc": "Latitude of the pickup"},
            {"name": "lon", "type": "double"}]}},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "attributes", "type": {"type": "map", "values": "long"}},
        {"name": "rating", "type": ["null", "int"], "default": None},
        {"name": "payment", "type": ["string", "long"], "doc": "Card token or account number"},
        {"name": "photo", "type": ["null", "bytes"], "default": None},
        {"name": "code", "type": {"type": "fixed", "name": "Code", "size": 4}},
        {"name": "wait", "type": {"type": "int", "logicalType": "time-millis"}},
    ],
}


def v2():
    """v1 plus a top-level and a nested optional field."""
    schema = copy.deepcopy(V1)
    schema["fields"].append({"name": "tip", "type": ["null", "double"], "default": None,
                             "doc": "Tip added by the rider"})
    pickup = next(f for f in schema["fields"] if f["name"] == "pickup")
    pickup["type"]["fields"].append({"name": "zone", "type": ["null", "string"], "default": None})
    return schema


def v3():
    """v2 with a type change Delta readers cannot take: rating int -> string."""
    schema = v2()
    rating = next(f for f in schema["fields"] if f["name"] == "rating")
    rating["type"] = ["null", "string"]
    return schema


SCHEMAS = {"v1": V1, "v2": v2(), "v3": v3()}
EPOCH = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc)


def expected(n, version="v1"):
    """The record for event n."""
    record = {
        "event_id": f"e-{n}",
        "user_id": f"u-{n % 97}",
        "event_time": EPOCH + datetime.timedelta(seconds=n),
        "ride_date": (EPOCH + datetime.timedelta(days=n % 3)).date(),
        "fare": decimal.Decimal(n % 1000) + decimal.Decimal("0.25"),
        "city": ["LON", "PAR", "NYC"][n % 3],
        "pickup": {"lat": 51.5 + n / 1e4, "lon": -0.1},
        "tags": [f"t{n % 5}"] * (n % 3),
        "attributes": {"stops": n % 4},
        "rating": None if n % 4 == 0 else n % 5,
        "payment": f"card-{n}" if n % 2 == 0 else n,
        "photo": None if n % 2 else bytes([n % 256, 1]),
        "code": bytes([n % 256, 0, 0, 7]),
        "wait": datetime.time(0, 0, n % 60, 1000 * (n % 1000)),
    }
    if version in ("v2", "v3"):
        record["tip"] = n / 10
        record["pickup"]["zone"] = f"z{n % 7}"
    if version == "v3":
        record["rating"] = None if record["rating"] is None else str(record["rating"])
    return record


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry")
    parser.add_argument("--topic", default="rides")
    parser.add_argument("--version", default="v1", choices=sorted(SCHEMAS))
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--out")
    parser.add_argument("--wire", default="confluent", choices=["confluent", "plain", "ocf"])
    parser.add_argument("--codec", default="deflate", help="object container codec (--wire ocf)")
    parser.add_argument("--schema", choices=sorted(SCHEMAS))
    args = parser.parse_args()
    if args.schema:
        json.dump(SCHEMAS[args.schema], sys.stdout, indent=1)
        return
    schema = SCHEMAS[args.version]
    records = [expected(n, args.version) for n in range(args.start, args.start + args.count)]
    if args.wire == "confluent":
        from confluent_kafka.schema_registry import SchemaRegistryClient
        from confluent_kafka.schema_registry.avro import AvroSerializer
        from confluent_kafka.serialization import MessageField, SerializationContext

        client = SchemaRegistryClient({"url": args.registry})
        serializer = AvroSerializer(client, json.dumps(schema))
        context = SerializationContext(args.topic, MessageField.VALUE)
        frames = [serializer(r, context) for r in records]
    elif args.wire == "ocf":
        import fastavro

        with open(args.out, "wb") as out:
            fastavro.writer(out, fastavro.parse_schema(schema), records, codec=args.codec,
                            sync_interval=2000)
        return
    else:
        import fastavro

        parsed = fastavro.parse_schema(schema)
        frames = []
        for r in records:
            out = io.BytesIO()
            fastavro.schemaless_writer(out, parsed, r)
            frames.append(out.getvalue())
    with open(args.out, "wb") as out:
        for frame in frames:
            out.write(struct.pack(">I", len(frame)))
            out.write(frame)


if __name__ == "__main__":
    main()
