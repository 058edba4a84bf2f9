#!/usr/bin/env python3
"""Debezium change events as Kafka Connect's Protobuf converter writes them,
encoded by other people's code (Google's Protobuf runtime, with the message
compiled by protoc from grpcio-tools, and confluent-kafka's
ProtobufSerializer against a schema registry), for sluice's tests.

    debezium_protobuf_events.py --registry URL --topic T --changes F.json --out OUT [--add-field NAME]

F.json is a list of change events (`op`, `before`, `after`, `source`,
`ts_ms`, `transaction`), or null for a tombstone. The envelope is the
message the converter derives from Debezium's PostgreSQL envelope: the row
image as a `Value` message, the `Source` block, `op`, `ts_ms` and the
transaction `Block`, nullable scalars as proto3 `optional` fields, nested in
`Envelope` (the file's first message). `--add-field` gives `Value` one more
optional string field (the next version of the subject). Frames are written
to OUT as a 4-byte big-endian length and the message bytes (a tombstone is an
empty message).
"""

import argparse
import importlib
import json
import pathlib
import struct
import sys
import tempfile


def envelope_proto(topic, extra=None):
    extra_field = f"    optional string {extra} = 4;\n" if extra else ""
    return f"""syntax = "proto3";
package {topic};

message Envelope {{
  Value before = 1;
  Value after = 2;
  Source source = 3;
  string op = 4;
  optional int64 ts_ms = 5;
  Block transaction = 6;

  message Value {{
    int64 id = 1;
    // The customer's name
    string name = 2;
    optional int64 balance = 3;
{extra_field}  }}

  message Source {{
    string version = 1;
    string connector = 2;
    string name = 3;
    int64 ts_ms = 4;
    optional string snapshot = 5;
    string db = 6;
    optional string sequence = 7;
    string schema = 8;
    string table = 9;
    optional int64 txId = 10;
    optional int64 lsn = 11;
    optional int64 xmin = 12;
  }}

  message Block {{
    string id = 1;
    int64 total_order = 2;
    int64 data_collection_order = 3;
  }}
}}
"""


def without_nulls(value):
    """The change with null fields left out: unset in the message."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    return value


def compile_envelope(topic, extra, out):
    from grpc_tools import protoc

    (out / "envelope.proto").write_text(envelope_proto(topic, extra))
    if protoc.main(["protoc", f"-I{out}", f"--python_out={out}", "envelope.proto"]) != 0:
        sys.exit("protoc failed")
    sys.path.insert(0, str(out))
    return importlib.import_module("envelope_pb2")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--changes", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--add-field")
    args = parser.parse_args()

    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext
    from google.protobuf import json_format

    with tempfile.TemporaryDirectory() as work:
        module = compile_envelope(args.topic, args.add_field, pathlib.Path(work))
        client = SchemaRegistryClient({"url": args.registry})
        serializer = ProtobufSerializer(module.Envelope, client, {"use.deprecated.format": False})
        context = SerializationContext(args.topic, MessageField.VALUE)
        with open(args.changes) as f:
            changes = json.load(f)
        with open(args.out, "wb") as out:
            for change in changes:
                if change is None:
                    frame = b""
                else:
                    message = json_format.ParseDict(without_nulls(change), module.Envelope(),
                                                    ignore_unknown_fields=False)
                    frame = serializer(message, context)
                out.write(struct.pack(">I", len(frame)))
                out.write(frame)


if __name__ == "__main__":
    main()
