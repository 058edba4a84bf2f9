#!/usr/bin/env python3
"""MongoDB change events as Kafka Connect's Avro converter writes them,
keys and values, encoded by other people's code (confluent-kafka's
AvroSerializer against a schema registry), for sluice's tests.

    mongo_registry_events.py --registry URL --topic T --events EVENTS.jsonl --out OUT

EVENTS.jsonl holds the JSON converter's events (`mongo_patch_events.py`:
one {"key", "value"} per Kafka record, "" for a tombstone). Each is
re-encoded with the schemas Debezium's MongoDB connector registers: the
key under `<topic>-key` (a record with the document key `id` as
extended-JSON text), the value under `<topic>-value` (the envelope, whose
`after`, `patch` and `filter` are extended-JSON text and whose
`updateDescription` is a record). Frames are written to OUT as a 4-byte
big-endian length and the key's bytes, then the same for the value (a
tombstone's value is empty).
"""

import argparse
import json
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from debezium_avro_events import TRANSACTION_FIELD, source_record  # noqa: E402


def key_schema(topic):
    return {
        "type": "record", "name": "Key", "namespace": topic,
        "fields": [{"name": "id", "type": "string"}],
        "connect.name": f"{topic}.Key",
    }


def envelope_schema(topic):
    text = ["null", {"type": "string", "connect.version": 1, "connect.name": "io.debezium.data.Json"}]
    return {
        "type": "record",
        "name": "Envelope",
        "namespace": topic,
        "fields": [
            {"name": "after", "type": text, "default": None},
            {"name": "patch", "type": text, "default": None},
            {"name": "filter", "type": text, "default": None},
            {"name": "updateDescription", "default": None, "type": ["null", {
                "type": "record", "name": "updatedescription",
                "namespace": "io.debezium.connector.mongodb.changestream",
                "fields": [
                    {"name": "removedFields", "default": None,
                     "type": ["null", {"type": "array", "items": "string"}]},
                    {"name": "updatedFields", "type": text, "default": None},
                    {"name": "truncatedArrays", "default": None, "type": ["null", {
                        "type": "array", "items": {
                            "type": "record", "name": "truncatedarray",
                            "fields": [{"name": "field", "type": "string"},
                                       {"name": "size", "type": "int"}],
                        },
                    }]},
                ],
            }]},
            {"name": "source", "type": source_record("io.debezium.connector.mongo", [
                {"name": "rs", "type": "string"},
                {"name": "collection", "type": "string"},
                {"name": "ord", "type": "int"},
            ])},
            {"name": "op", "type": ["null", "string"], "default": None},
            {"name": "ts_ms", "type": ["null", "long"], "default": None},
            TRANSACTION_FIELD,
        ],
        "connect.name": f"{topic}.Envelope",
    }


def as_avro(value):
    """The JSON converter's envelope as the Avro schema's datum."""
    event = json.loads(value)
    description = event.get("updateDescription")
    if description is not None:
        description = {
            "removedFields": description.get("removedFields"),
            "updatedFields": description.get("updatedFields"),
            "truncatedArrays": [
                {"field": t["field"], "size": t.get("size", t.get("newSize"))}
                for t in description.get("truncatedArrays") or []
            ] or None,
        }
    source = {k: event["source"][k] for k in
              ("version", "connector", "name", "ts_ms", "snapshot", "db", "rs", "collection", "ord")}
    return {
        "after": event.get("after"), "patch": event.get("patch"), "filter": event.get("filter"),
        "updateDescription": description, "source": source, "op": event.get("op"),
        "ts_ms": event.get("ts_ms"), "transaction": None,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--events", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    client = SchemaRegistryClient({"url": args.registry})
    keys = AvroSerializer(client, json.dumps(key_schema(args.topic)))
    values = AvroSerializer(client, json.dumps(envelope_schema(args.topic)))
    key_context = SerializationContext(args.topic, MessageField.KEY)
    value_context = SerializationContext(args.topic, MessageField.VALUE)
    with open(args.events) as f, open(args.out, "wb") as out:
        for line in f:
            event = json.loads(line)
            key = keys(json.loads(event["key"]), key_context)
            value = values(as_avro(event["value"]), value_context) if event["value"] else b""
            for frame in (key, value):
                out.write(struct.pack(">I", len(frame)))
                out.write(frame)


if __name__ == "__main__":
    main()
