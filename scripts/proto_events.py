#!/usr/bin/env python3
"""Ride events encoded by Google's Protobuf runtime, for sluice's tests.

    proto_events.py --out-dir D               # compile fixtures/proto with protoc
                                              # (grpcio-tools): D/rides.pb, D/*_pb2.py
    proto_events.py --out-dir D --start 0 --count 300 --frames F
    proto_events.py --out-dir D --registry URL --topic T --version v2 \
                    --start 0 --count 300 --frames F [--decode-check]

The descriptor set is written with --include_imports --include_source_info.
Frames go to F as a 4-byte big-endian length and the message bytes. Values
are a function of the event number n: see `event()`.

With --registry, rides/ride.proto of the chosen version (v1: fixtures/proto,
v2 and v3: fixtures/proto-versions/<version>) is compiled alone into
D/<version>, and events are written by confluent-kafka's ProtobufSerializer,
which registers the schema under `<T>-value` and frames each message (magic
byte, schema id, message indexes, body). v2 adds `promo_code` and
`Point.zone`; v3 makes `seats` a string. --decode-check reads the frames
back with ProtobufDeserializer. One version per process: the versions share
the message names.
"""

import argparse
import importlib
import pathlib
import struct
import sys

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "fixtures"
ROOT = FIXTURES / "proto"
VERSIONS = {"v1": ROOT, "v2": FIXTURES / "proto-versions" / "v2",
            "v3": FIXTURES / "proto-versions" / "v3"}


def compile_protos(out: pathlib.Path, root=ROOT, files=None):
    from grpc_tools import protoc
    import grpc_tools

    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    if files is None:
        files = [str(p.relative_to(root)) for p in root.rglob("*.proto")]
    args = ["protoc", f"-I{root}", f"-I{include}", f"--python_out={out}",
            f"--descriptor_set_out={out / 'rides.pb'}", "--include_imports",
            "--include_source_info", *files]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")


def event(module, n, version="v1"):
    from google.protobuf import struct_pb2

    e = module.RideEvent()
    e.event_id = f"e-{n}"
    e.user_id = f"u-{n % 97}"
    e.event_time.seconds = 1714564800 + n
    e.event_time.nanos = 123456000
    e.city = n % 3
    if n % 5 != 0:
        e.pickup.lat = 51.5 + n / 1e4
        e.pickup.lon = -0.1
    e.tags.extend([f"t{n % 4}"] * (n % 3))
    e.attributes["stops"] = n % 4
    if n % 2 == 0:
        e.tip_cents.value = n * 10
    if n % 4 != 0:
        e.rating = n % 5
    if n % 3 == 0:
        e.card.token = f"card-{n}"
    elif n % 3 == 1:
        e.account = n
    e.distance_mm = 2**63 + n
    e.seats = str(4000000000 + n) if version == "v3" else 4000000000 + n
    e.photo = bytes([n % 256, 1])
    e.extra.update({"promo": f"p{n}", "n": n})
    e.delta = -n
    e.stops.extend([n, n + 1])
    if version != "v1":
        e.promo_code = f"promo-{n}"
        if e.HasField("pickup"):
            e.pickup.zone = f"z{n % 3}"
    return e


def registry_frames(module, args):
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    client = SchemaRegistryClient({"url": args.registry})
    serializer = ProtobufSerializer(module.RideEvent, client, {"use.deprecated.format": False})
    context = SerializationContext(args.topic, MessageField.VALUE)
    return [serializer(event(module, n, args.version), context)
            for n in range(args.start, args.start + args.count)]


def decode_check(module, args, frames):
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    deserializer = ProtobufDeserializer(module.RideEvent, {"use.deprecated.format": False},
                                        SchemaRegistryClient({"url": args.registry}))
    context = SerializationContext(args.topic, MessageField.VALUE)
    for n, frame in zip(range(args.start, args.start + args.count), frames):
        if deserializer(frame, context) != event(module, n, args.version):
            sys.exit(f"event {n} does not decode to what was encoded")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--frames")
    parser.add_argument("--delimited", action="store_true",
                        help="write length-delimited messages (a varint length before each) instead of frames")
    parser.add_argument("--registry", help="schema registry URL: write Confluent-framed messages")
    parser.add_argument("--topic", default="rides")
    parser.add_argument("--version", default="v1", choices=sorted(VERSIONS))
    parser.add_argument("--decode-check", action="store_true",
                        help="decode the frames with ProtobufDeserializer and compare")
    args = parser.parse_args()
    if args.version != "v1" and not args.registry:
        parser.error("--version needs --registry")
    out = pathlib.Path(args.out_dir)
    if args.registry:
        out = out / args.version
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "rides.pb").exists():
        if args.registry:
            compile_protos(out, VERSIONS[args.version], ["rides/ride.proto"])
        else:
            compile_protos(out)
    if not args.frames:
        return
    sys.path.insert(0, str(out))
    module = importlib.import_module("rides.ride_pb2")
    from google.protobuf.internal.encoder import _VarintBytes

    if args.registry:
        messages = registry_frames(module, args)
        if args.decode_check:
            decode_check(module, args, messages)
    else:
        messages = (event(module, n).SerializeToString()
                    for n in range(args.start, args.start + args.count))
    with open(args.frames, "wb") as frames:
        for data in messages:
            if args.delimited:
                frames.write(_VarintBytes(len(data)))
            else:
                frames.write(struct.pack(">I", len(data)))
            frames.write(data)


if __name__ == "__main__":
    main()
