#!/usr/bin/env python3
"""Ride events encoded by Google's Protobuf runtime, for sluice's tests.

    proto_events.py --out-dir D               # compile fixtures/proto with protoc
                                              # (grpcio-tools): D/rides.pb, D/*_pb2.py
    proto_events.py --out-dir D --start 0 --count 300 --frames F

The descriptor set is written with --include_imports --include_source_info.
Frames go to F as a 4-byte big-endian length and the message bytes. Values
are a function of the event number n: see `event()`.
"""

import argparse
import importlib
import pathlib
import struct
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "proto"


def compile_protos(out: pathlib.Path):
    from grpc_tools import protoc
    import grpc_tools

    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    files = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.proto")]
    args = ["protoc", f"-I{ROOT}", f"-I{include}", f"--python_out={out}",
            f"--descriptor_set_out={out / 'rides.pb'}", "--include_imports",
            "--include_source_info", *files]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")


def event(module, n):
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
    e.seats = 4000000000 + n
    e.photo = bytes([n % 256, 1])
    e.extra.update({"promo": f"p{n}", "n": n})
    e.delta = -n
    e.stops.extend([n, n + 1])
    return e


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--frames")
    parser.add_argument("--delimited", action="store_true",
                        help="write length-delimited messages (a varint length before each) instead of frames")
    args = parser.parse_args()
    out = pathlib.Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "rides.pb").exists():
        compile_protos(out)
    if not args.frames:
        return
    sys.path.insert(0, str(out))
    module = importlib.import_module("rides.ride_pb2")
    from google.protobuf.internal.encoder import _VarintBytes

    with open(args.frames, "wb") as frames:
        for n in range(args.start, args.start + args.count):
            data = event(module, n).SerializeToString()
            if args.delimited:
                frames.write(_VarintBytes(len(data)))
            else:
                frames.write(struct.pack(">I", len(data)))
            frames.write(data)


if __name__ == "__main__":
    main()
