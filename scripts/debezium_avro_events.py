#!/usr/bin/env python3
"""Debezium change events as Kafka Connect's Avro converter writes them,
encoded by other people's code (confluent-kafka's AvroSerializer against a
schema registry), for sluice's tests.

    debezium_avro_events.py --registry URL --topic T --changes F.json --out OUT [--add-field NAME]

F.json is a list of change events (`op`, `before`, `after`, `source`,
`ts_ms`, `transaction`), or null for a tombstone. The envelope schema is the
one Debezium's PostgreSQL connector registers under `<topic>-value`: the
row image as a nullable `Value` record (with a field doc), the
`io.debezium.connector.postgresql.Source` block, `op`, `ts_ms` and the
transaction block (`--add-field` gives the `Value` record one more
optional string field: the next version of the subject). Frames are written to OUT as a 4-byte big-endian length
and the message bytes (a tombstone is an empty message).
"""

import argparse
import json
import struct


# The source block's `snapshot` enum and the transaction block, as every
# Debezium connector registers them.
SNAPSHOT_FIELD = {"name": "snapshot", "default": "false", "type": [{
    "type": "string", "connect.version": 1,
    "connect.parameters": {"allowed": "true,last,false,incremental"},
    "connect.default": "false", "connect.name": "io.debezium.data.Enum",
}, "null"]}
TRANSACTION_FIELD = {"name": "transaction", "default": None, "type": ["null", {
    "type": "record", "name": "block", "namespace": "event",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "total_order", "type": "long"},
        {"name": "data_collection_order", "type": "long"},
    ],
}]}


def source_record(namespace, fields):
    """The connector's `source` block: the fields every connector has,
    then the connector's own."""
    return {
        "type": "record", "name": "Source", "namespace": namespace,
        "fields": [
            {"name": "version", "type": "string"},
            {"name": "connector", "type": "string"},
            {"name": "name", "type": "string"},
            {"name": "ts_ms", "type": "long"},
            SNAPSHOT_FIELD,
            {"name": "db", "type": "string"},
        ] + fields,
    }


def envelope_schema(topic, extra=None):
    value_fields = [
        {"name": "id", "type": "long"},
        {"name": "name", "type": "string", "doc": "The customer's name"},
        {"name": "balance", "type": ["null", "long"], "default": None},
    ]
    if extra:
        value_fields.append({"name": extra, "type": ["null", "string"], "default": None})
    return {
        "type": "record",
        "name": "Envelope",
        "namespace": topic,
        "fields": [
            {"name": "before", "default": None, "type": ["null", {
                "type": "record", "name": "Value", "connect.name": f"{topic}.Value",
                "fields": value_fields,
            }]},
            {"name": "after", "type": ["null", "Value"], "default": None},
            {"name": "source", "type": source_record("io.debezium.connector.postgresql", [
                {"name": "sequence", "type": ["null", "string"], "default": None},
                {"name": "schema", "type": "string"},
                {"name": "table", "type": "string"},
                {"name": "txId", "type": ["null", "long"], "default": None},
                {"name": "lsn", "type": ["null", "long"], "default": None},
                {"name": "xmin", "type": ["null", "long"], "default": None},
            ])},
            {"name": "op", "type": "string"},
            {"name": "ts_ms", "type": ["null", "long"], "default": None},
            TRANSACTION_FIELD,
        ],
        "connect.name": f"{topic}.Envelope",
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--changes", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--add-field")
    args = parser.parse_args()

    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    client = SchemaRegistryClient({"url": args.registry})
    serializer = AvroSerializer(client, json.dumps(envelope_schema(args.topic, args.add_field)))
    context = SerializationContext(args.topic, MessageField.VALUE)
    with open(args.changes) as f:
        changes = json.load(f)
    with open(args.out, "wb") as out:
        for change in changes:
            frame = b"" if change is None else serializer(change, context)
            out.write(struct.pack(">I", len(frame)))
            out.write(frame)


if __name__ == "__main__":
    main()
