#!/usr/bin/env python3
"""Independent reader check: Spark reads sluice's Delta tables.

For every table listed in <dir>/manifest.jsonl ({"table": path, "expected_rows": n},
optionally "types": {column: Spark simpleString} and "comments": {column: text}),
replay the Delta log (JSON commits, and the last classic checkpoint if any,
read with Spark itself), parse the schema with Spark's own
`StructType.fromJson(schemaString)`, read every live data file with Spark's
Parquet reader (without the rows deletion vectors remove, matched by
Spark's `_metadata.row_index`), and check:
  - the row count equals the expected count,
  - every column Spark infers from the Parquet files has the Delta schema's
    type (timestamps come back as TimestampType, not TimestampNTZ),
  - every column can be decoded (count of non-nulls per column),
  - the listed columns have the listed types and comments (the comment
    `DESCRIBE TABLE` shows comes from the schema field's metadata).
Exits non-zero on any mismatch.
"""
import json
import sys
import zlib
from pathlib import Path
from urllib.parse import unquote
from uuid import UUID

from pyroaring import BitMap64

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType


Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"


def z85_decode(text: str) -> bytes:
    out = bytearray()
    for i in range(0, len(text), 5):
        value = 0
        for char in text[i:i + 5]:
            value = value * 85 + Z85.index(char)
        out += value.to_bytes(4, "big")
    return bytes(out)


def deleted_rows(table: Path, dv: dict) -> list:
    """Row indexes a deletion vector removes (Delta PROTOCOL.md, "Deletion
    Vector Format"), decoded with pyroaring (CRoaring)."""
    if dv["storageType"] == "i":
        framed = z85_decode(dv["pathOrInlineDv"])[:dv["sizeInBytes"]]
    else:
        assert dv["storageType"] == "u", f"{table}: deletion vector storage {dv['storageType']}"
        encoded = dv["pathOrInlineDv"]
        prefix, uuid = encoded[:-20], UUID(bytes=z85_decode(encoded[-20:]))
        name = f"deletion_vector_{uuid}.bin"
        data = (table / prefix / name if prefix else table / name).read_bytes()
        offset, size = dv.get("offset") or 1, dv["sizeInBytes"]
        assert int.from_bytes(data[offset:offset + 4], "big") == size, f"{table}: {name} size"
        framed = data[offset + 4:offset + 4 + size]
        crc = int.from_bytes(data[offset + 4 + size:offset + 8 + size], "big")
        assert zlib.crc32(framed) == crc, f"{table}: {name} checksum"
    assert int.from_bytes(framed[:4], "little") == 1681511377, f"{table}: deletion vector magic"
    rows = list(BitMap64.deserialize(framed[4:]))
    assert len(rows) == dv["cardinality"], f"{table}: deletion vector cardinality"
    return rows


def live_files(spark, table: Path):
    """Live files as {path: deletion vector or None}, and the metadata."""
    log = table / "_delta_log"
    files, metadata, start = {}, None, -1
    last_checkpoint = log / "_last_checkpoint"
    if last_checkpoint.exists():
        start = json.loads(last_checkpoint.read_text())["version"]
        checkpoint = spark.read.parquet(str(log / f"{start:020d}.checkpoint.parquet"))
        for row in checkpoint.collect():
            if row["add"] is not None:
                add = row["add"].asDict(recursive=True)
                files[add["path"]] = add.get("deletionVector")
            if row["metaData"] is not None:
                metadata = row["metaData"].asDict(recursive=True)
    for commit in sorted(log.glob("*.json")):
        if int(commit.stem) <= start:
            continue
        for line in commit.read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                files[action["add"]["path"]] = action["add"].get("deletionVector")
            elif "remove" in action:
                files.pop(action["remove"]["path"], None)
            elif "metaData" in action:
                metadata = action["metaData"]
    return metadata, {str(table / unquote(path)): dv for path, dv in files.items()}


def check_declared(table: Path, schema: StructType, entry: dict) -> list:
    problems = []
    fields = {f.name: f for f in schema.fields}
    for name, wanted in entry.get("types", {}).items():
        got = fields[name].dataType.simpleString() if name in fields else None
        if got != wanted:
            problems.append(f"{table}: column {name} is {got} for Spark, expected {wanted}")
    for name, wanted in entry.get("comments", {}).items():
        # A dotted name is a field of a struct column.
        field, *inner = name.split(".")
        found = fields.get(field)
        for part in inner:
            nested = {f.name: f for f in found.dataType.fields} if found and isinstance(found.dataType, StructType) else {}
            found = nested.get(part)
        got = found.metadata.get("comment") if found else None
        if got != wanted:
            problems.append(f"{table}: column {name} has comment {got!r} for Spark, expected {wanted!r}")
    return problems


def check(spark, table: Path, expected: int, entry: dict) -> list:
    problems = []
    metadata, files = live_files(spark, table)
    schema = StructType.fromJson(json.loads(metadata["schemaString"]))
    problems += check_declared(table, schema, entry)
    partitions = set(metadata.get("partitionColumns") or [])
    if not files:
        return [] if expected == 0 else [f"{table}: no live files, expected {expected} rows"]
    # Files written before the schema grew lack its new columns: merge the
    # file schemas, as Delta readers do with the table's schema.
    frame = spark.read.option("basePath", str(table)).option("mergeSchema", "true").parquet(*files)
    # Rows a deletion vector removes are dropped by (file name, row index),
    # with Spark's own `_metadata.row_index`.
    deleted = [(Path(path).name, row) for path, dv in files.items() if dv for row in deleted_rows(table, dv)]
    if deleted:
        gone = spark.createDataFrame(deleted, "dv_file string, dv_row long")
        frame = (frame.select("*", F.regexp_extract("_metadata.file_path", "[^/]+$", 0).alias("dv_file"),
                              F.col("_metadata.row_index").alias("dv_row"))
                 .join(gone, ["dv_file", "dv_row"], "left_anti")
                 .drop("dv_file", "dv_row"))
    inferred = {f.name: f.dataType for f in frame.schema.fields}
    for field in schema.fields:
        if field.name in partitions:
            continue
        got = inferred.get(field.name)
        if got is None or got.simpleString() != field.dataType.simpleString():
            problems.append(f"{table}: column {field.name} is {got} in Parquet, {field.dataType} in Delta")
    data_columns = [f.name for f in schema.fields if f.name not in partitions]
    row = frame.agg(F.count(F.lit(1)).alias("rows"), *[F.count(F.col(c)).alias(c) for c in data_columns]).collect()[0]
    if row["rows"] != expected:
        problems.append(f"{table}: Spark read {row['rows']} rows, expected {expected}")
    vectors = f", {len(deleted)} rows removed by deletion vectors" if deleted else ""
    print(f"spark: {table.name}: {row['rows']} rows in {len(files)} files{vectors}, {len(schema.fields)} columns"
          f" ({'ok' if not problems else 'MISMATCH'})")
    return problems


def main() -> int:
    root = Path(sys.argv[1])
    entries = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines() if line.strip()]
    if not entries:
        print("spark: no tables registered", file=sys.stderr)
        return 1
    import os
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    spark = (SparkSession.builder.master("local[2]").appName("sluice-spark-check")
             .config("spark.ui.enabled", "false")
             .config("spark.driver.host", "127.0.0.1")
             .config("spark.driver.bindAddress", "127.0.0.1")
             .config("spark.sql.session.timeZone", "UTC")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    problems = []
    for entry in entries:
        problems += check(spark, Path(entry["table"]), int(entry["expected_rows"]), entry)
    spark.stop()
    for problem in problems:
        print(f"spark: {problem}", file=sys.stderr)
    print(f"spark check: {len(entries)} tables read, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
